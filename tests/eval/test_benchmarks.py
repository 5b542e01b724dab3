"""Benchmark files in the Video-R1 record format: loading, filtering, errors, skipped media."""

import json

import pytest

from vlmrl.data.records import AnnotationError
from vlmrl.eval import EvalSettings, evaluate, load_benchmark

from .conftest import SMALL


def mvbench_like(fixtures_dir):
    return [
        {"problem_id": f"mv-{i}", "problem": "What happens first?", "data_type": "video",
         "problem_type": "multiple choice", "options": ["A. a", "B. b", "C. c", "D. d"],
         "solution": "<answer>B</answer>", "path": name, "data_source": "MVBench/action_sequence"}
        for i, name in enumerate(["video1.mp4", "nasa_13013.mp4", "h265_video.mp4"])
    ]


def vsi_like():
    return [
        {"problem_id": "vsi-0", "problem": "How many chairs?", "data_type": "video",
         "problem_type": "regression", "options": [], "solution": "<answer>4</answer>",
         "path": "video1.mp4", "data_source": "VSI-Bench/object_counting"},
        {"problem_id": "vsi-1", "problem": "Room size in square meters?", "data_type": "video",
         "problem_type": "regression", "options": [], "solution": "<answer>20.5</answer>",
         "path": "testsrc2_vp9.webm", "data_source": "VSI-Bench/room_size"},
        {"problem_id": "vsi-2", "problem": "Which is closer?", "data_type": "video",
         "problem_type": "multiple choice", "options": ["A. sofa", "B. tv"],
         "solution": "<answer>A</answer>", "path": "av1_video.mkv", "data_source": "VSI-Bench/rel_distance"},
    ]


def test_video_r1_format_benchmarks_load(fixtures_dir, tmp_path):
    for name, rows in (("mvbench", mvbench_like(fixtures_dir)), ("vsi_bench", vsi_like())):
        f = tmp_path / f"{name}.json"
        f.write_text(json.dumps(rows))
        bench = load_benchmark(f, name=name, media_root=fixtures_dir, frames=SMALL,
                               cache_dir=tmp_path / "cache", workers=1)
        assert len(bench.dataset) == len(rows) and bench.skipped == []
        assert bench.dataset[0]["frames"] and bench.manifest["options"]["max_pixels"] == SMALL.max_pixels


def test_mmvu_keeps_only_multiple_choice(fixtures_dir, tmp_path):
    f = tmp_path / "mmvu.json"
    f.write_text(json.dumps(vsi_like()))
    bench = load_benchmark(f, name="mmvu", media_root=fixtures_dir, frames=SMALL, cache_dir=tmp_path / "c", workers=1)
    assert [r["problem_type"] for r in bench.dataset] == ["multiple choice"]


def test_regression_scored_by_mra(fixtures_dir, tmp_path):
    f = tmp_path / "vsi.json"
    f.write_text(json.dumps(vsi_like()[:2]))
    bench = load_benchmark(f, name="vsi_bench", media_root=fixtures_dir, frames=SMALL, cache_dir=tmp_path / "c", workers=1)
    report = evaluate(bench, lambda rows, frames: ["<answer>5</answer>", "<answer>20.5</answer>"][: len(rows)],
                      tmp_path / "r", EvalSettings(shuffled_control=False, generation=__import__("vlmrl.eval", fromlist=["GenerationSettings"]).GenerationSettings(batch_size=2)),
                      progress=False)
    # 5 for 4 is 25 % off: MRA counts t in {.50,...,.70} -> 0.5; 20.5 exact -> 1.0
    assert report["summary"]["accuracy"]["mean"] == pytest.approx(0.75)


def test_malformed_benchmark_names_the_row(tmp_path, fixtures_dir):
    rows = mvbench_like(fixtures_dir)
    rows[2]["solution"] = "B"
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(rows))
    with pytest.raises(AnnotationError, match=r"bad\.json: row 2 .*field 'solution'"):
        load_benchmark(f, media_root=fixtures_dir, cache_dir=tmp_path / "c")


def test_missing_media_is_skipped_and_reported(tmp_path, fixtures_dir):
    rows = mvbench_like(fixtures_dir)
    rows[1]["path"] = "gone.mp4"
    f = tmp_path / "mv.json"
    f.write_text(json.dumps(rows))
    bench = load_benchmark(f, media_root=fixtures_dir, frames=SMALL, cache_dir=tmp_path / "c", workers=1)
    assert len(bench.dataset) == 2 and len(bench.skipped) == 1
    report = evaluate(bench, lambda rows, frames: ["<answer>B</answer>"] * len(rows), tmp_path / "r",
                      EvalSettings(shuffled_control=False), progress=False)
    assert report["benchmark"]["skipped"] == 1
    assert "gone.mp4" in report["benchmark"]["skipped_rows"][0]["reason"]
    assert "## Skipped samples" in (tmp_path / "r" / "report.md").read_text()


def test_frame_dataset_is_cached(tmp_path, fixtures_dir):
    f = tmp_path / "mv.json"
    f.write_text(json.dumps(mvbench_like(fixtures_dir)))
    a = load_benchmark(f, media_root=fixtures_dir, frames=SMALL, cache_dir=tmp_path / "c", workers=1)
    mtime = (tmp_path / "c").stat().st_mtime_ns
    b = load_benchmark(f, media_root=fixtures_dir, frames=SMALL, cache_dir=tmp_path / "c", workers=1)
    assert a.manifest["fingerprint"] == b.manifest["fingerprint"]
    assert len(list((tmp_path / "c").iterdir())) == 1 and (tmp_path / "c").stat().st_mtime_ns == mtime

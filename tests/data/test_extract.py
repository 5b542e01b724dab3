import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import vlmrl.data.extract as extract_mod
from vlmrl.data.extract import MANIFEST, extract_dataset, frames_array, load_frame_dataset
from vlmrl.data.frames import FrameOptions, decode_video, load_image

SMALL = FrameOptions(max_pixels=112 * 112, min_pixels=56 * 56, frame_format="png")


def row(pid, path, data_type="video", **kw):
    return {"problem_id": pid, "problem": "How many?", "data_type": data_type,
            "problem_type": "numerical", "solution": "<answer>1</answer>", "path": path, **kw}


def write_json(path: Path, rows) -> Path:
    path.write_text(json.dumps(rows))
    return path


def test_synthetic_split_roundtrip(synth_dir, tmp_path):
    res = extract_dataset(synth_dir / "sft.json", synth_dir, tmp_path / "sft", SMALL,
                          workers=2, progress=False)
    ds, manifest = load_frame_dataset(tmp_path / "sft")
    rows = json.loads((synth_dir / "sft.json").read_text())
    assert res.kept == len(ds) == len(rows) == manifest["counts"]["kept"]
    assert manifest["counts"]["rejected"] == 0 and manifest["rejected"] == []
    assert [r["problem_id"] for r in ds] == [r["problem_id"] for r in rows]  # order kept
    for i in (0, 5, len(ds) - 1):
        r = ds[i]
        assert r["process"].startswith("<think>")
        frames = frames_array(r)
        src = synth_dir / r["path"]
        ref = decode_video(src, SMALL) if r["data_type"] == "video" else load_image(src, SMALL)
        # PNG storage is lossless: stored frames are exactly the decoded ones
        assert np.array_equal(frames, ref.frames)
        assert list(r["frame_indices"]) == ref.frame_indices
        assert (r["height"], r["width"]) == frames.shape[1:3]
    assert manifest["options"] == SMALL.to_dict()
    assert set(manifest["media"]) == {r["path"] for r in rows}


def test_fingerprint_is_deterministic_and_content_sensitive(synth_dir, tmp_path):
    media = tmp_path / "media"
    shutil.copytree(synth_dir, media)
    ann = media / "bench.json"
    a = extract_dataset(ann, media, tmp_path / "a", SMALL, workers=1, progress=False)
    b = extract_dataset(ann, media, tmp_path / "b", SMALL, workers=2, progress=False)
    assert a.fingerprint == b.fingerprint
    # reformatting the annotation file (same rows) keeps the fingerprint
    write_json(ann, json.loads(ann.read_text()))
    assert extract_dataset(ann, media, tmp_path / "c", SMALL, workers=1, progress=False).fingerprint == a.fingerprint
    # one changed media byte changes it
    first = json.loads(ann.read_text())[0]["path"]
    data = bytearray((media / first).read_bytes())
    data[-1] ^= 0xFF
    (media / first).write_bytes(bytes(data))
    d = extract_dataset(ann, media, tmp_path / "d", SMALL, workers=1, progress=False)
    assert d.fingerprint != a.fingerprint
    # so does a frame option
    e = extract_dataset(ann, media, tmp_path / "e", FrameOptions(frame_format="png"), workers=1, progress=False)
    assert e.fingerprint not in (a.fingerprint, d.fingerprint)


def test_each_video_decoded_once(synth_dir, tmp_path):
    rows = json.loads((synth_dir / "rl.json").read_text())
    video = next(r for r in rows if r["data_type"] == "video")
    ann = write_json(tmp_path / "a.json", [
        {**video, "problem_id": "q1"}, {**video, "problem_id": "q2"}, {**video, "problem_id": "q3"},
    ])
    res = extract_dataset(ann, synth_dir, tmp_path / "out", SMALL, workers=1, progress=False)
    assert res.kept == 3 and res.manifest["counts"]["media_files"] == 1
    assert res.manifest["counts"]["frames"] == 8  # frames decoded once, not three times


def test_rejections_are_counted_and_named(fixtures_dir, tmp_path):
    names = sorted(p.name for p in fixtures_dir.iterdir())
    rows = [row(f"ok-{i}", n) for i, n in enumerate(names)]
    rows += [
        row("missing", "nope.mp4"),
        row("escape", "../DESIGN.md"),
        row("abs", "/etc/passwd"),
        {**row("badtype", names[0]), "problem_type": "essay"},
    ]
    ann = write_json(tmp_path / "fixtures.json", rows)
    res = extract_dataset(ann, fixtures_dir, tmp_path / "out", FrameOptions(), workers=2, progress=False)
    ds, manifest = load_frame_dataset(tmp_path / "out")
    assert res.kept == len(names) == len(ds)
    assert manifest["counts"] == {"rows": len(rows), "kept": len(names), "rejected": 4,
                                  "media_files": len(names), "frames": manifest["counts"]["frames"]}
    by_id = {r["problem_id"]: r for r in manifest["rejected"]}
    assert set(by_id) == {"missing", "escape", "abs", "badtype"}
    assert "not found" in by_id["missing"]["reason"]
    assert "escapes the media root" in by_id["escape"]["reason"]
    assert "absolute" in by_id["abs"]["reason"]
    assert by_id["badtype"]["field"] == "problem_type"
    # PyAV for the AV1 file decord cannot open and the HEVC file decord seeks wrongly in
    assert manifest["decoders"] == {"decord": len(names) - 2, "pyav": 2}


def test_broken_media_rejected_not_fatal(fixtures_dir, tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    data = (fixtures_dir / "video1.mp4").read_bytes()
    (media / "trunc.mp4").write_bytes(data[: len(data) // 3])
    (media / "empty.mp4").write_bytes(b"")
    avi = (fixtures_dir / "testsrc2_mpeg4.avi").read_bytes()
    (media / "half.avi").write_bytes(avi[: len(avi) // 2])
    (media / "bad.png").write_bytes(b"no png here")
    (media / "link.mp4").symlink_to(fixtures_dir / "h265_video.mp4")  # points outside root
    shutil.copy(fixtures_dir / "h265_video.mp4", media / "good.mp4")
    rows = [row("trunc", "trunc.mp4"), row("empty", "empty.mp4"), row("half", "half.avi"),
            row("img", "bad.png", "image"), row("link", "link.mp4"), row("good", "good.mp4")]
    res = extract_dataset(write_json(tmp_path / "a.json", rows), media, tmp_path / "out",
                          workers=2, progress=False)
    assert res.kept == 1
    reasons = {r["problem_id"]: r["reason"] for r in res.manifest["rejected"]}
    assert set(reasons) == {"trunc", "empty", "half", "img", "link"}
    assert "trunc.mp4" in reasons["trunc"] and "cannot decode" in reasons["trunc"]
    assert "empty file" in reasons["empty"]
    assert "truncated video" in reasons["half"]
    assert "cannot decode image" in reasons["img"]
    assert "outside the media root" in reasons["link"]


@pytest.mark.parametrize("workers", [1, 2])
def test_crash_leaves_no_complete_looking_dataset(synth_dir, tmp_path, monkeypatch, workers):
    ann = synth_dir / "bench.json"
    good = extract_dataset(ann, synth_dir, tmp_path / "out", SMALL, workers=workers, progress=False)
    calls = {"n": 0}
    real_row = extract_mod._row

    def crash_on_third(rec, media):  # fault injection: the writer dies mid-build
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated crash")
        return real_row(rec, media)

    monkeypatch.setattr(extract_mod, "_row", crash_on_third)
    with pytest.raises(KeyboardInterrupt):  # (with a pool too: it is stopped, nothing left)
        extract_dataset(ann, synth_dir, tmp_path / "new", SMALL, workers=workers, progress=False)
    calls["n"] = 0
    with pytest.raises(KeyboardInterrupt):  # a failed rebuild over an existing dataset
        extract_dataset(ann, synth_dir, tmp_path / "out", FrameOptions(), workers=workers,
                        progress=False, overwrite=True)
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging debris
    ds, manifest = load_frame_dataset(tmp_path / "out")  # the previous build is intact
    assert manifest["fingerprint"] == good.fingerprint and len(ds) == good.kept


def test_incomplete_directory_refused(tmp_path):
    (tmp_path / "half").mkdir()
    with pytest.raises(FileNotFoundError, match="not a complete frame dataset"):
        load_frame_dataset(tmp_path / "half")


def test_all_rows_rejected_gives_empty_dataset(tmp_path):
    (tmp_path / "m").mkdir()
    ann = write_json(tmp_path / "a.json", [row("x", "missing.mp4")])
    res = extract_dataset(ann, tmp_path / "m", tmp_path / "out", progress=False)
    ds, manifest = load_frame_dataset(tmp_path / "out")
    assert len(ds) == 0 and res.rejected == 1 and MANIFEST == "manifest.json"


def test_verify_detects_changed_dataset_file(synth_dir, tmp_path):
    from vlmrl.data.extract import verify_frame_dataset

    res = extract_dataset(synth_dir / "bench.json", synth_dir, tmp_path / "out", SMALL,
                          workers=1, progress=False)
    assert verify_frame_dataset(res.path) == []
    arrow = next(res.path.glob("data-*.arrow"))
    data = bytearray(arrow.read_bytes())
    data[len(data) // 2] ^= 0x01
    arrow.write_bytes(bytes(data))
    problems = verify_frame_dataset(res.path)
    assert len(problems) == 1 and arrow.name in problems[0] and "changed" in problems[0]


# -- the parallel build and the cheaper checks give what the plain ones give ------------------


def test_parallel_build_is_byte_identical(synth_dir, tmp_path):
    """This process and the pool share the files (largest first to the pool), and the
    dataset is still written in annotation order, byte for byte as with one process."""
    one = extract_dataset(synth_dir / "rl.json", synth_dir, tmp_path / "one", SMALL, workers=1,
                          progress=False)
    three = extract_dataset(synth_dir / "rl.json", synth_dir, tmp_path / "three", SMALL, workers=3,
                            progress=False)
    data = sorted(p.name for p in one.path.glob("data-*.arrow"))
    assert data and data == sorted(p.name for p in three.path.glob("data-*.arrow"))
    for name in data:
        assert (one.path / name).read_bytes() == (three.path / name).read_bytes()
    assert one.manifest["media"] == three.manifest["media"]
    assert one.manifest["decoders"] == three.manifest["decoders"]
    # where the time went, by step, summed over the processes (timings, not content)
    assert {"hash", "decode", "encode", "write"} <= set(three.cpu_seconds)
    assert all(v >= 0 for v in three.cpu_seconds.values())
    assert "cpu_seconds" not in one.manifest and "seconds" not in one.manifest


def _square(n: int) -> int:
    return n * n


def test_ordered_map_yields_in_input_order():
    from vlmrl.data.extract import _OrderedMap

    items = list(range(60))
    costs = [(7 * k) % 13 for k in items]  # the pool takes the costly ones first
    with _OrderedMap(_square, items, 3, costs=costs) as results:
        assert list(results) == [k * k for k in items]
    with _OrderedMap(_square, items[:1], 4) as results:  # one item: no pool at all
        assert list(results) == [0]


def test_repeated_pictures_counts_what_a_full_hash_counts():
    import hashlib

    from vlmrl.data.frames import _repeated_pictures

    def by_hash(frames, indices):
        first, repeats = {}, 0
        for frame, index in zip(frames, indices, strict=True):
            key = hashlib.blake2b(frame.tobytes(), digest_size=16).digest()
            repeats += first.setdefault(key, index) != index
        return repeats

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (5, 48, 64, 3), dtype=np.uint8)
    near = base[1].copy()
    near[47, 63, 2] ^= 1  # differs from base[1] off the coarse grid only
    for picks, indices in [([0, 1, 2, 3], [0, 5, 10, 15]), ([0, 0, 1, 0], [0, 3, 6, 9]),
                           ([0, 0, 0, 0], [0, 0, 0, 0]), ([1, 2, 1, 2, 1], [0, 1, 2, 3, 4])]:
        frames = base[picks]
        assert _repeated_pictures(frames, indices) == by_hash(frames, indices)
    frames = np.stack([base[1], near, base[1]])
    assert _repeated_pictures(frames, [0, 1, 2]) == by_hash(frames, [0, 1, 2]) == 1


def test_pyav_confirms_a_still_scene_without_rgb(tmp_path, fixtures_dir):
    """The in-order decode that confirms decord's repeated pictures makes RGB only when its
    own pictures may repeat less: never for a still scene, always for a decord mis-seek."""
    from vlmrl.data.frames import _decode_decord, _decode_pyav, _repeated_pictures
    from vlmrl.doctor.cases_data import write_video

    still = write_video(tmp_path / "still.mp4", still=True)
    frames, _, _, indices, _ = _decode_decord(still, FrameOptions())
    repeats = _repeated_pictures(frames, indices)
    assert repeats == len(indices) - 1
    assert _decode_pyav(still, FrameOptions(), beat=repeats)[0] is None
    full = _decode_pyav(still, FrameOptions())
    assert _repeated_pictures(full[0], full[3]) >= repeats  # so decord's frames are kept
    assert decode_video(still, FrameOptions()).decoder == "decord"

    hevc = fixtures_dir / "h265_video.mp4"  # decord seeks wrongly in it (test_bad_inputs)
    frames, _, _, indices, _ = _decode_decord(hevc, FrameOptions())
    repeats = _repeated_pictures(frames, indices)
    confirmed = _decode_pyav(hevc, FrameOptions(), beat=repeats)
    plain = _decode_pyav(hevc, FrameOptions())
    assert confirmed[0] is not None and np.array_equal(confirmed[0], plain[0])
    assert confirmed[1:] == plain[1:]

"""Scoring, intervals and reports, checked against fixed (hand-made) predictions."""

import json
import math

import pytest

from vlmrl.eval import EvalSettings, bootstrap_mean, evaluate, read_report
from vlmrl.eval.metrics import eval_score, temporal_sensitivity
from vlmrl.rewards import extract_answer


def oracle(correct_on_shuffled: bool, fmt: bool = True):
    """Answers right on ordered frames; on shuffled frames right or wrong as asked."""

    def answer(rows, frames):
        out = []
        for row, f in zip(rows, frames, strict=True):
            shuffled = any(a is not b for a, b in zip(f, row["frames"], strict=True))  # reordered objects
            gt = extract_answer(row["solution"])
            if shuffled and not correct_on_shuffled:
                gt = {"multiple choice": "Z", "numerical": "999", "regression": "-5"}.get(row["problem_type"], "nothing")
            text = f"<answer>{gt}</answer>"
            out.append(f"<think>look</think>{text}" if fmt else text)
        return out

    return answer


def test_perfect_temporal_model(bench, tmp_path):
    report = evaluate(bench, oracle(False), tmp_path / "r", EvalSettings(), progress=False)
    s = report["summary"]
    assert s["accuracy"]["mean"] == 1.0 and s["mc_accuracy"]["mean"] == 1.0
    assert s["format_compliance"]["mean"] == 1.0
    assert s["n"] == len(bench.dataset) and s["chance"] == pytest.approx(0.25)
    sens = report["temporal"]["sensitivity"]
    assert sens["all"]["mean"] == 1.0 and sens["multiple choice"]["mean"] == 1.0
    assert set(sens) == {"all", "multiple choice", "numerical", "regression"}
    assert report["temporal"]["summary"]["n"] == sum(r["data_type"] == "video" for r in bench.dataset)
    by_source = s["by_data_source"]
    assert {"synthetic/motion", "synthetic/order", "synthetic/count", "synthetic/position"} <= set(by_source)


def test_order_blind_model_has_zero_sensitivity(bench, tmp_path):
    report = evaluate(bench, oracle(True, fmt=False), tmp_path / "r", EvalSettings(), progress=False)
    assert report["temporal"]["sensitivity"]["all"]["mean"] == 0.0
    assert report["summary"]["format_compliance"]["mean"] == 0.0  # no <think>: not compliant
    assert report["summary"]["accuracy"]["mean"] == 1.0  # answers still scored


def test_half_right_and_intervals(bench, tmp_path):
    state = {"i": 0}

    def alternate(rows, frames):
        out = []
        for row in rows:
            state["i"] += 1
            gt = extract_answer(row["solution"]) if state["i"] % 2 else "wrong"
            out.append(f"<think>t</think><answer>{gt}</answer>")
        return out

    report = evaluate(bench, alternate, tmp_path / "r", EvalSettings(shuffled_control=False), progress=False)
    preds = [json.loads(line) for line in (tmp_path / "r" / "predictions.jsonl").read_text().splitlines()]
    expected = sum(p["score"] for p in preds) / len(preds)
    acc = report["summary"]["accuracy"]
    assert acc["mean"] == pytest.approx(expected)
    assert acc["ci"][0] < acc["mean"] < acc["ci"][1]
    assert "temporal" not in report


def test_report_files_and_contents(bench, tmp_path):
    evaluate(bench, oracle(False), tmp_path / "r", EvalSettings(), checkpoint=None, stage="rl", progress=False)
    out = tmp_path / "r"
    report = read_report(out)
    for key in ("benchmark", "checkpoint", "settings", "summary", "temporal", "throughput", "created_at"):
        assert key in report
    assert report["benchmark"]["sha256"] == bench.source_sha256 and report["benchmark"]["skipped"] == 0
    assert report["benchmark"]["dataset_fingerprint"] == bench.manifest["fingerprint"]
    assert report["settings"]["generation"]["do_sample"] is False
    md = (out / "report.md").read_text()
    assert "| multiple-choice accuracy | 100.0" in md and "## By problem type" in md
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == report["summary"]["n"] + report["temporal"]["summary"]["n"]


@pytest.mark.parametrize(
    "ptype, completion, solution, expected",
    [
        ("multiple choice", "<think>x</think><answer>B</answer>", "<answer>B</answer>", 1.0),
        ("multiple choice", "<answer>C</answer>", "<answer>B</answer>", 0.0),
        ("numerical", "<answer>3.0</answer>", "<answer>3</answer>", 1.0),
        ("regression", "<answer>108</answer>", "<answer>100</answer>", 0.9),  # MRA, not 1-rel
        ("regression", "<answer>150</answer>", "<answer>100</answer>", 0.0),
        ("grounding", "<answer>[0, 0, 10, 10]</answer>", "<answer>[0, 0, 10, 12]</answer>", 1.0),  # IoU .83 > .5
        ("grounding", "<answer>[0, 0, 10, 10]</answer>", "<answer>[5, 0, 15, 10]</answer>", 0.0),  # IoU 1/3
        ("OCR", "<answer>hello world</answer>", "<answer>hello there world</answer>", pytest.approx(2 / 3)),
        ("classification", "<answer></answer>", "<answer>cat</answer>", 0.0),
    ],
)
def test_eval_score_by_type(ptype, completion, solution, expected):
    assert eval_score(ptype, completion, solution) == expected


def test_bootstrap_mean_interval_covers_mean_and_shrinks():
    small = bootstrap_mean([0, 1] * 10)
    large = bootstrap_mean([0, 1] * 500)
    assert small.mean == large.mean == 0.5
    assert small.low < 0.5 < small.high and large.low < 0.5 < large.high
    assert (large.high - large.low) < (small.high - small.low) / 4
    single = bootstrap_mean([1.0])
    assert single.mean == 1.0 and math.isnan(single.low)


def test_temporal_sensitivity_is_paired_per_question():
    ordered = [{"problem_id": str(i), "problem_type": "numerical", "data_type": "video", "score": 1.0} for i in range(10)]
    shuffled = [{"problem_id": str(i), "problem_type": "numerical", "data_type": "video", "score": float(i < 3)} for i in range(10)]
    sens = temporal_sensitivity(ordered, shuffled)
    assert sens["all"]["mean"] == pytest.approx(0.7) and sens["numerical"]["n"] == 10


def test_a_report_replaces_only_a_report_and_only_when_asked(bench, tmp_path):
    """`--out ~` must not scatter report files into (and hash) a user's directory: the report
    directory is refused before a single question is answered."""
    calls = []

    def counting(rows, frames):
        calls.append(len(rows))
        return oracle(False)(rows, frames)

    user = tmp_path / "home"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a benchmark report written by vlmrl"):
        evaluate(bench, counting, user, EvalSettings(), progress=False)
    assert not calls and sorted(p.name for p in user.iterdir()) == ["notes.txt"]

    out = tmp_path / "r"
    first = evaluate(bench, counting, out, EvalSettings(shuffled_control=False), progress=False)
    calls.clear()
    with pytest.raises(FileExistsError, match="already holds"):
        evaluate(bench, counting, out, EvalSettings(shuffled_control=False), progress=False)
    assert not calls and read_report(out)["created_at"] == first["created_at"]
    evaluate(bench, counting, out, EvalSettings(shuffled_control=False), progress=False, overwrite=True)
    assert calls and sorted(p.name for p in out.iterdir()) == [
        "accuracy.png", "predictions.jsonl", "report.json", "report.md"]

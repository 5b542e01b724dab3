"""The typed views of what is written once and read many times: reports, frame manifests
and the stage summary built from reports."""

import json

import pytest

from vlmrl.data.extract import MANIFEST, Counts, FrameManifest, read_frame_manifest
from vlmrl.eval import EvalSettings, evaluate, read_report
from vlmrl.eval.report import REPORT, Report, read_predictions
from vlmrl.eval.summary import format_stage_summary, stage_summary


def _est(mean, low=None, high=None, n=4):
    return {"mean": mean, "ci": [low if low is not None else mean, high if high is not None else mean], "n": n}


def _report(mc: float, sens: float | None = None, sampled: float | None = None) -> Report:
    """A hand-made report: the fields a reader uses, nothing more."""
    data = {
        "summary": {"n": 4, "accuracy": _est(mc), "mc_accuracy": _est(mc, mc - 0.1, mc + 0.1),
                    "format_compliance": _est(1.0), "chance": 0.25,
                    "by_problem_type": {"multiple choice": _est(mc)},
                    "by_data_source": {"synthetic/count": _est(mc)}},
        "benchmark": {"name": "b", "skipped": 0}, "checkpoint": {"kind": "rl", "lineage_sha256": "x"},
        "throughput": {"samples_per_s": 2.0},
    }
    if sens is not None:
        data["temporal"] = {"summary": {"by_problem_type": {"multiple choice": _est(mc - sens)}},
                            "sensitivity": {"all": _est(sens), "multiple choice": _est(sens)}}
    if sampled is not None:
        data["sampled"] = {"temperature": 1.0, "summary": {"mc_accuracy": _est(sampled)}}
    return Report(data)


def test_report_view_reads_what_evaluate_wrote(bench, tmp_path):
    written = evaluate(bench, lambda rows, frames: ["<answer>A</answer>"] * len(rows), tmp_path / "r",
                       EvalSettings(), progress=False)
    report = read_report(tmp_path / "r")
    assert isinstance(report, Report)
    assert json.dumps(dict(report)) == json.dumps(json.loads((tmp_path / "r" / REPORT).read_text()))
    same = lambda a, b: json.dumps(a) == json.dumps(b)  # noqa: E731 (NaN intervals compare unequal)
    assert same(report.summary, written["summary"]) and report.n == len(bench.dataset)
    assert same(report.sensitivity(), written["temporal"]["sensitivity"]["all"])
    assert same(report.shuffled_by_problem_type, written["temporal"]["summary"]["by_problem_type"])
    assert report.file_sha256 and report.missing() == []
    assert report.headline()["samples"] == report.n
    rows = read_predictions(tmp_path / "r")
    assert len(rows) == report.n + sum(r["data_type"] == "video" for r in bench.dataset)
    assert sum(r["shuffled"] for r in rows) == report.temporal["summary"]["n"]


def test_an_old_report_without_optional_sections_still_reads():
    report = _report(0.5)
    assert report.temporal is None and report.sensitivity() is None and report.sampled() is None
    assert report.shuffled_by_problem_type == {} and report.file_sha256 is None
    assert report.missing() == ["settings", "temporal"]
    assert report.headline()["temporal_sensitivity"] is None


def test_stage_summary_is_built_from_typed_reports():
    summary = stage_summary({"base": _report(0.25), "rl": _report(0.75, sens=0.5, sampled=0.5)})
    assert summary["chance"] == 0.25
    assert summary["stages"]["base"]["temporal_sensitivity"] is None
    assert summary["stages"]["rl"] == {
        "mc_accuracy": 0.75, "mc_accuracy_ci": [0.65, 0.85], "mc_accuracy_sampled": 0.5,
        "mc_accuracy_sampled_ci": [0.5, 0.5], "format_compliance": 1.0, "temporal_sensitivity": 0.5,
        "temporal_sensitivity_ci": [0.5, 0.5], "families": {"count": 0.75},
        "problem_types": {"multiple choice": 0.75}}
    table = format_stage_summary("synthetic", summary).splitlines()
    assert table[0] == "synthetic: (MC chance  25.0 %)"
    assert table[2] == "  base   25.0 [ 15.0,  35.0]     –     100.0     –  "
    assert table[3] == "  rl     75.0 [ 65.0,  85.0]    50.0   100.0    50.0"


def test_frame_manifest_view(bench):
    manifest = bench.manifest  # as load_frame_dataset read it
    assert isinstance(manifest, FrameManifest) and manifest.fingerprint == manifest["fingerprint"]
    assert manifest.counts == Counts(**manifest["counts"]) and manifest.counts.kept == len(bench.dataset)
    assert manifest.reject_rate == manifest.counts.rejected / manifest.counts.rows
    assert manifest.options == manifest["options"] and manifest.files == manifest["files"]
    assert manifest.annotations["sha256"] == bench.source_sha256


def test_a_manifest_of_another_kind_is_refused(tmp_path):
    (tmp_path / MANIFEST).write_text("[1, 2]")
    with pytest.raises(ValueError, match="unknown format"):
        read_frame_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"format": "other/1"}))
    with pytest.raises(ValueError, match="other/1"):
        read_frame_manifest(tmp_path)

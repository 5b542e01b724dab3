"""Report artefacts: report.json, report.md, predictions.jsonl and PNG plots.

A report is written into its own directory, atomically enough for readers: every file
is written to a temporary name and renamed, report.json last (its presence means the
report is complete).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlmrl.atomic import OutputKind, atomic_directory, check_output
from vlmrl.data.extract import MANIFEST
from vlmrl.hashing import relative_ref, sha256_file, sha256_tree

REPORT = "report.json"
FORMAT = "vlmrl.report/1"
REPORT_DIR = OutputKind("benchmark report", REPORT, values=(("format", FORMAT),))


def _pct(est: dict[str, Any] | None) -> str:
    if not est or est.get("mean") is None or (isinstance(est["mean"], float) and math.isnan(est["mean"])):
        return "–"
    low, high = est.get("ci", [float("nan")] * 2)
    if low is None or math.isnan(low):
        return f"{100 * est['mean']:.1f}"
    return f"{100 * est['mean']:.1f} [{100 * low:.1f}, {100 * high:.1f}]"


def markdown(report: dict[str, Any]) -> str:
    """The human-readable report: headline, per type, per source, temporal control."""
    s = report["summary"]
    b = report["benchmark"]
    lines = [
        f"# {b['name']}: {report['checkpoint'].get('kind') or 'model'} checkpoint",
        "",
        f"checkpoint `{report['checkpoint']['path']}` (lineage {str(report['checkpoint'].get('lineage_sha256'))[:12]}), "
        f"benchmark file sha256 {str(b.get('sha256'))[:12]}, {b['n']} samples scored, {b['skipped']} skipped.",
        "",
        "| metric | value (95 % CI) |",
        "|---|---|",
        f"| accuracy (all types) | {_pct(s['accuracy'])} |",
        f"| multiple-choice accuracy | {_pct(s['mc_accuracy'])} |",
        f"| format compliance | {_pct(s['format_compliance'])} |",
    ]
    if s.get("chance") is not None:
        lines.append(f"| multiple-choice chance | {100 * s['chance']:.1f} |")
    temporal = report.get("temporal")
    if temporal:
        lines.append(f"| temporal sensitivity (video, ordered − shuffled) | {_pct(temporal['sensitivity'].get('all'))} |")
    lines += ["", "## By problem type", "", "| problem type | n | accuracy | shuffled | sensitivity |",
              "|---|---|---|---|---|"]
    shuffled = (temporal or {}).get("summary", {}).get("by_problem_type", {})
    sens = (temporal or {}).get("sensitivity", {})
    for name, est in s["by_problem_type"].items():
        lines.append(f"| {name} | {est['n']} | {_pct(est)} | {_pct(shuffled.get(name))} | {_pct(sens.get(name))} |")
    lines += ["", "## By data source", "", "| data source | n | accuracy |", "|---|---|---|"]
    for name, est in s["by_data_source"].items():
        lines.append(f"| {name} | {est['n']} | {_pct(est)} |")
    if b.get("skipped_rows"):
        lines += ["", "## Skipped samples", "", "| row | problem_id | reason |", "|---|---|---|"]
        for r in b["skipped_rows"][:50]:
            lines.append(f"| {r.get('row')} | {r.get('problem_id')} | {str(r.get('reason'))[:150]} |")
    g = report.get("settings", {}).get("generation", {})
    t = report.get("throughput", {})
    lines += ["", "## Settings", "", f"generation: `{json.dumps(g, sort_keys=True)}`",
              f"frames: `{json.dumps(report.get('settings', {}).get('frames', {}), sort_keys=True)}`",
              f"throughput: {t.get('samples_per_s')} samples/s over {t.get('seconds')} s"]
    return "\n".join(lines) + "\n"


def plot_report(report: dict[str, Any], path: Path) -> Path:
    """Accuracy per problem type (ordered vs shuffled frames) with 95 % error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_type = report["summary"]["by_problem_type"]
    shuffled = (report.get("temporal") or {}).get("summary", {}).get("by_problem_type", {})
    names = list(by_type)
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(names) + 2), 3.6), dpi=120)
    width = 0.38 if shuffled else 0.6
    for offset, (label, data, color) in enumerate(
        [("ordered frames", by_type, "#3a6ea5"), ("shuffled frames", shuffled, "#d98c3a")]
    ):
        if not data:
            continue
        xs = [i + (offset - 0.5) * width if shuffled else i for i in range(len(names))]
        means = [100 * data.get(n, {}).get("mean", float("nan")) for n in names]
        errs = [[max(0.0, m - 100 * (data.get(n, {}).get("ci") or [m / 100] * 2)[0]) for m, n in zip(means, names, strict=True)],
                [max(0.0, 100 * (data.get(n, {}).get("ci") or [m / 100] * 2)[1] - m) for m, n in zip(means, names, strict=True)]]
        errs = [[0.0 if math.isnan(e) else e for e in side] for side in errs]
        ax.bar(xs, means, width=width, yerr=errs, capsize=3, color=color, label=label)
    chance = report["summary"].get("chance")
    if chance:
        ax.axhline(100 * chance, color="gray", linestyle="--", linewidth=1, label="MC chance")
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title(f"{report['benchmark']['name']} · {report['checkpoint'].get('kind') or 'model'}")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _inputs(report: dict[str, Any], out: Path) -> dict[str, Any]:
    """The checkpoint and benchmark entries with references relative to the report directory,
    and the benchmark frame dataset's manifest hash, so the audit can follow them in a copy."""
    ckpt, bench = dict(report.get("checkpoint") or {}), dict(report.get("benchmark") or {})
    if ckpt.get("path"):
        ckpt["ref"] = relative_ref(ckpt["path"], out)
    source = Path(str(bench.get("source") or ""))
    if bench.get("source") and (source / MANIFEST).is_file():  # a frame dataset directory
        bench["dataset_ref"] = relative_ref(source, out)
        bench["dataset_manifest_sha256"] = sha256_file(source / MANIFEST)
    elif bench.get("source") and source.is_file():  # an annotation file (frames cached elsewhere)
        bench["source_ref"] = relative_ref(source, out)
    return {"checkpoint": ckpt, "benchmark": bench}


def check_report_dir(out_dir: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Fail before an evaluation unless its report may go to `out_dir` (see atomic.check_output):
    a new or empty directory, or, with overwrite, a previous report."""
    return check_output(out_dir, REPORT_DIR, overwrite=overwrite)


def write_report(out_dir: str | os.PathLike[str], report: dict[str, Any],
                 predictions: Sequence[dict[str, Any]], overwrite: bool = False) -> Path:
    """Write predictions.jsonl, report.md, accuracy.png and report.json into a new report
    directory, atomically; it replaces only a previous report, and only with overwrite."""
    out = Path(out_dir).resolve()
    with atomic_directory(out, overwrite=overwrite, kind=REPORT_DIR) as staging:
        (staging / "predictions.jsonl").write_text(
            "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions), encoding="utf-8")
        (staging / "report.md").write_text(markdown(report), encoding="utf-8")
        plot_report(report, staging / "accuracy.png")
        report = {**report, "format": FORMAT, **_inputs(report, out),
                  "files": {"predictions": "predictions.jsonl", "markdown": "report.md",
                            "plot": "accuracy.png"},
                  # what the lineage audit re-hashes (report.json itself is the report's identity)
                  "file_sha256": sha256_tree(staging, exclude=(REPORT,))}
        (staging / REPORT).write_text(json.dumps(report, indent=1, default=float) + "\n",
                                      encoding="utf-8")
    return out / REPORT


def read_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / REPORT
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no report (incomplete or never written)")
    report = json.loads(path.read_text(encoding="utf-8"))
    if report.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown report format {report.get('format')!r}")
    return report

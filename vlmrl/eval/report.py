"""Report artefacts: report.json, report.md, predictions.jsonl and PNG plots.

A report is written into its own directory, atomically enough for readers: every file
is written to a temporary name and renamed, report.json last (its presence means the
report is complete). `read_report` and `read_predictions` are the only readers; what
eval, ablation, lineage and orchestration read goes through the typed `Report`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vlmrl.atomic import OutputKind, atomic_directory, check_output
from vlmrl.data.extract import MANIFEST
from vlmrl.hashing import relative_ref, sha256_file, sha256_tree
from vlmrl.json_view import JsonView

REPORT = "report.json"
FORMAT = "vlmrl.report/1"
PREDICTIONS = "predictions.jsonl"
REPORT_DIR = OutputKind("benchmark report", REPORT, values=(("format", FORMAT),))
# the sections a complete report has (older reports may lack "sampled")
REQUIRED = ("benchmark", "checkpoint", "settings", "summary", "temporal", "throughput")


class Report(JsonView):
    """Typed view of one report.json. The mapping is the JSON exactly as written (the audit
    re-hashes the file, and reports written before a section existed still load); the
    properties name what readers use, so no reader digs through the nesting by hand."""

    def __repr__(self) -> str:
        return f"Report({self.benchmark.get('name')!r}, {self.checkpoint_kind!r})"

    @property
    def summary(self) -> dict[str, Any]:
        """Ordered-frame figures: n, accuracy, format_compliance, mc_accuracy, chance, by_*."""
        return self._data["summary"]

    @property
    def n(self) -> int:
        return self.summary["n"]

    @property
    def chance(self) -> float | None:
        return self.summary.get("chance")

    def figure(self, metric: str) -> dict[str, Any]:
        """One headline estimate ({"mean", "ci", "n"}): accuracy, mc_accuracy, format_compliance."""
        return self.summary[metric]

    def mean(self, metric: str) -> float:
        return self.figure(metric)["mean"]

    @property
    def by_problem_type(self) -> dict[str, dict[str, Any]]:
        return self.summary["by_problem_type"]

    @property
    def by_data_source(self) -> dict[str, dict[str, Any]]:
        return self.summary["by_data_source"]

    @property
    def benchmark(self) -> dict[str, Any]:
        return self._data.get("benchmark") or {}

    @property
    def checkpoint(self) -> dict[str, Any]:
        return self._data.get("checkpoint") or {}

    @property
    def checkpoint_kind(self) -> str:
        return self.checkpoint.get("kind") or "model"

    @property
    def settings(self) -> dict[str, Any]:
        return self._data.get("settings") or {}

    @property
    def throughput(self) -> dict[str, Any]:
        return self._data.get("throughput") or {}

    @property
    def created_at(self) -> str | None:
        return self._data.get("created_at")

    @property
    def file_sha256(self) -> dict[str, str] | None:
        """What the audit re-hashes; None for reports written before reports were audited."""
        return self._data.get("file_sha256")

    @property
    def temporal(self) -> dict[str, Any] | None:
        """The shuffled-frame control (None when it was not run)."""
        return self._data.get("temporal") or None

    def sensitivity(self, group: str = "all") -> dict[str, Any] | None:
        """Temporal sensitivity (ordered minus shuffled) of one problem type, or of all video rows."""
        return ((self.temporal or {}).get("sensitivity") or {}).get(group)

    @property
    def shuffled_by_problem_type(self) -> dict[str, dict[str, Any]]:
        return ((self.temporal or {}).get("summary") or {}).get("by_problem_type", {})

    def sampled(self, metric: str = "mc_accuracy") -> dict[str, Any] | None:
        """A figure at the sampling temperature (None when no sampled pass was run)."""
        return ((self._data.get("sampled") or {}).get("summary") or {}).get(metric)

    def missing(self) -> list[str]:
        """The sections of a complete report that this one lacks."""
        return [k for k in REQUIRED if k not in self._data]

    def headline(self) -> dict[str, Any]:
        """The figures a dashboard shows for one report."""
        return {"accuracy": self.mean("accuracy"), "mc_accuracy": self.mean("mc_accuracy"),
                "format_compliance": self.mean("format_compliance"),
                "temporal_sensitivity": (self.sensitivity() or {}).get("mean"), "samples": self.n,
                "skipped": self.benchmark["skipped"], "samples_per_s": self.throughput["samples_per_s"]}


def pct(est: Mapping[str, Any] | None) -> str:
    """An estimate ({"mean", "ci"}) as "mean [low, high]" in percent ("–" when absent)."""
    if not est or est.get("mean") is None or (isinstance(est["mean"], float) and math.isnan(est["mean"])):
        return "–"
    low, high = est.get("ci", [float("nan")] * 2)
    if low is None or math.isnan(low):
        return f"{100 * est['mean']:.1f}"
    return f"{100 * est['mean']:.1f} [{100 * low:.1f}, {100 * high:.1f}]"


def markdown(data: Mapping[str, Any]) -> str:
    """The human-readable report: headline, per type, per source, temporal control."""
    report = Report(data)
    s = report.summary
    b = report.benchmark
    lines = [
        f"# {b['name']}: {report.checkpoint_kind} checkpoint",
        "",
        f"checkpoint `{report.checkpoint['path']}` (lineage {str(report.checkpoint.get('lineage_sha256'))[:12]}), "
        f"benchmark file sha256 {str(b.get('sha256'))[:12]}, {b['n']} samples scored, {b['skipped']} skipped.",
        "",
        "| metric | value (95 % CI) |",
        "|---|---|",
        f"| accuracy (all types) | {pct(s['accuracy'])} |",
        f"| multiple-choice accuracy | {pct(s['mc_accuracy'])} |",
        f"| format compliance | {pct(s['format_compliance'])} |",
    ]
    if report.chance is not None:
        lines.append(f"| multiple-choice chance | {100 * report.chance:.1f} |")
    if report.temporal:
        lines.append(f"| temporal sensitivity (video, ordered − shuffled) | {pct(report.sensitivity())} |")
    lines += ["", "## By problem type", "", "| problem type | n | accuracy | shuffled | sensitivity |",
              "|---|---|---|---|---|"]
    shuffled = report.shuffled_by_problem_type
    for name, est in report.by_problem_type.items():
        lines.append(f"| {name} | {est['n']} | {pct(est)} | {pct(shuffled.get(name))} | "
                     f"{pct(report.sensitivity(name))} |")
    lines += ["", "## By data source", "", "| data source | n | accuracy |", "|---|---|---|"]
    for name, est in report.by_data_source.items():
        lines.append(f"| {name} | {est['n']} | {pct(est)} |")
    if b.get("skipped_rows"):
        lines += ["", "## Skipped samples", "", "| row | problem_id | reason |", "|---|---|---|"]
        for r in b["skipped_rows"][:50]:
            lines.append(f"| {r.get('row')} | {r.get('problem_id')} | {str(r.get('reason'))[:150]} |")
    g = report.settings.get("generation", {})
    t = report.throughput
    lines += ["", "## Settings", "", f"generation: `{json.dumps(g, sort_keys=True)}`",
              f"frames: `{json.dumps(report.settings.get('frames', {}), sort_keys=True)}`",
              f"throughput: {t.get('samples_per_s')} samples/s over {t.get('seconds')} s"]
    return "\n".join(lines) + "\n"


def plot_report(data: Mapping[str, Any], path: Path) -> Path:
    """Accuracy per problem type (ordered vs shuffled frames) with 95 % error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report = Report(data)
    by_type = report.by_problem_type
    shuffled = report.shuffled_by_problem_type
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
    chance = report.chance
    if chance:
        ax.axhline(100 * chance, color="gray", linestyle="--", linewidth=1, label="MC chance")
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title(f"{report.benchmark['name']} · {report.checkpoint_kind}")
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
        (staging / PREDICTIONS).write_text(
            "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions), encoding="utf-8")
        (staging / "report.md").write_text(markdown(report), encoding="utf-8")
        plot_report(report, staging / "accuracy.png")
        report = {**report, "format": FORMAT, **_inputs(report, out),
                  "files": {"predictions": PREDICTIONS, "markdown": "report.md",
                            "plot": "accuracy.png"},
                  # what the lineage audit re-hashes (report.json itself is the report's identity)
                  "file_sha256": sha256_tree(staging, exclude=(REPORT,))}
        (staging / REPORT).write_text(json.dumps(report, indent=1, default=float) + "\n",
                                      encoding="utf-8")
    return out / REPORT


def read_report(path: str | os.PathLike[str]) -> Report:
    """The report in a report directory (or at a report.json path), checked complete and known."""
    path = Path(path)
    if path.is_dir():
        path = path / REPORT
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no report (incomplete or never written)")
    report = json.loads(path.read_text(encoding="utf-8"))
    if report.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown report format {report.get('format')!r}")
    return Report(report)


def read_predictions(report_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The scored prediction rows of a report directory (ordered, then shuffled-frame rows)."""
    text = (Path(report_dir) / PREDICTIONS).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]

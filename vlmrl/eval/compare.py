"""Comparing reports: stages side by side (base / SFT / RL) and a report against an
earlier one of the same checkpoint (drift, for scheduled re-evaluations)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vlmrl.eval.metrics import bootstrap_delta
from vlmrl.eval.report import pct, read_predictions, read_report


def _scores(report_dir: Path) -> dict[str, float]:
    return {r["problem_id"]: float(r["score"]) for r in read_predictions(report_dir) if not r.get("shuffled")}


def delta(report_a: str | os.PathLike[str], report_b: str | os.PathLike[str]) -> dict[str, Any]:
    """Accuracy of B minus A on the questions both answered, with a paired 95 % interval."""
    a_dir, b_dir = Path(report_a), Path(report_b)
    a, b = _scores(a_dir), _scores(b_dir)
    common = sorted(set(a) & set(b))
    est = bootstrap_delta([a[k] for k in common], [b[k] for k in common], paired=True)
    ra, rb = read_report(a_dir), read_report(b_dir)
    return {
        "a": str(a_dir), "b": str(b_dir), "common": len(common),
        "delta": est.as_dict(),
        "same_benchmark_file": ra.benchmark.get("sha256") == rb.benchmark.get("sha256"),
        "same_checkpoint": ra.checkpoint.get("lineage_sha256") == rb.checkpoint.get("lineage_sha256"),
        "significant": not math.isnan(est.low) and (est.low > 0 or est.high < 0),
    }


def stage_table(reports: Mapping[str, str | os.PathLike[str]]) -> str:
    """Markdown table of stages (e.g. base, sft, rl) side by side on one benchmark."""
    loaded = {stage: read_report(path) for stage, path in reports.items()}
    rows = ["| stage | accuracy | MC accuracy | format | temporal sensitivity |", "|---|---|---|---|---|"]
    for stage, r in loaded.items():
        rows.append(f"| {stage} | {pct(r.figure('accuracy'))} | {pct(r.figure('mc_accuracy'))} | "
                    f"{pct(r.figure('format_compliance'))} | {pct(r.sensitivity())} |")
    types = sorted({t for r in loaded.values() for t in r.by_problem_type})
    rows += ["", "| problem type | " + " | ".join(loaded) + " |", "|---|" + "---|" * len(loaded)]
    for t in types:
        rows.append(f"| {t} | " + " | ".join(pct(r.by_problem_type.get(t)) for r in loaded.values()) + " |")
    return "\n".join(rows) + "\n"


def plot_stages(reports: Mapping[str, str | os.PathLike[str]], path: str | os.PathLike[str],
                metric: str = "mc_accuracy") -> Path:
    """Bar chart of one headline metric per stage with 95 % error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages, means, lows, highs = [], [], [], []
    for stage, p in reports.items():
        est = read_report(p).figure(metric)
        stages.append(stage)
        m = 100 * est["mean"]
        lo, hi = (100 * v if v is not None else m for v in est["ci"])
        means.append(m)
        lows.append(0 if math.isnan(lo) else max(0.0, m - lo))
        highs.append(0 if math.isnan(hi) else max(0.0, hi - m))
    fig, ax = plt.subplots(figsize=(4.5, 3.4), dpi=120)
    ax.bar(stages, means, yerr=[lows, highs], capsize=4, color=["#9aa5b1", "#3a6ea5", "#2a9d5c"][: len(stages)])
    ax.set_ylabel(f"{metric.replace('_', ' ')} (%)")
    ax.set_ylim(0, 105)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)

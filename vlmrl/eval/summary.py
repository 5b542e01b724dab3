"""The stage summary: base / SFT / RL figures of one benchmark, as `summary.json` holds
them and as `make run` prints them.

Built from typed reports (`vlmrl.eval.report.Report`), so it reads the same fields, the
same way, as the rest of evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vlmrl.data.records import family_of
from vlmrl.eval.report import Report


def stage_summary(reports: Mapping[str, Report]) -> dict[str, Any]:
    """Per stage: MC accuracy and its interval, format compliance, temporal sensitivity, families."""
    stages = {}
    chance = None
    for stage, r in reports.items():
        chance = chance if chance is not None else r.chance
        sens = r.sensitivity() or {}
        sampled = r.sampled("mc_accuracy") or {}
        stages[stage] = {
            "mc_accuracy": r.mean("mc_accuracy"),
            "mc_accuracy_ci": r.figure("mc_accuracy")["ci"],
            "mc_accuracy_sampled": sampled.get("mean"),
            "mc_accuracy_sampled_ci": sampled.get("ci"),
            "format_compliance": r.mean("format_compliance"),
            "temporal_sensitivity": sens.get("mean"),
            "temporal_sensitivity_ci": sens.get("ci"),
            "families": {family_of(name): est["mean"] for name, est in r.by_data_source.items()},
            "problem_types": {name: est["mean"] for name, est in r.by_problem_type.items()},
        }
    return {"chance": chance, "stages": stages}


def percent(x: float | None) -> str:
    """A fraction as a fixed-width percentage ("  –  " when absent)."""
    return "  –  " if x is None else f"{100 * x:5.1f}"


def format_stage_summary(benchmark: str, summary: Mapping[str, Any]) -> str:
    """The console table of one benchmark's stage summary (as `stage_summary` returns it)."""
    lines = [f"{benchmark}: (MC chance {percent(summary['chance'])} %)",
             "  stage  MC acc [95% CI]          sampled  format  temporal sens."]
    for stage, f in summary["stages"].items():
        lo, hi = f["mc_accuracy_ci"]
        lines.append(f"  {stage:<5} {percent(f['mc_accuracy'])} [{percent(lo)}, {percent(hi)}]   "
                     f"{percent(f.get('mc_accuracy_sampled'))}   {percent(f['format_compliance'])}   "
                     f"{percent(f['temporal_sensitivity'])}")
    return "\n".join(lines)

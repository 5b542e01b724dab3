# No `from __future__ import annotations` here: Dagster reads annotations at runtime.
"""Report assets: each checkpoint evaluated per benchmark, and the stages compared.

``base_report``, ``sft_report`` and ``rl_report`` (one partition per benchmark) follow
their checkpoints: an eager automation condition re-materializes them when the
checkpoint or the benchmark frames change, and the nightly schedule re-evaluates them.
Each writes a fresh report directory and, when an earlier report of the same asset and
partition exists, the paired accuracy delta to it (drift). ``benchmark_report`` puts the
three stages side by side.
"""

import json
from pathlib import Path
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetKey,
    AssetRecordsFilter,
    AutomationCondition,
    MetadataValue,
    asset,
    asset_check,
)

from orchestration.assets.common import log_metrics, result
from orchestration.assets.data import BENCHMARKS, benchmark_frames
from orchestration.assets.models import base_model, rl_checkpoint, sft_checkpoint
from orchestration.executors import GPU_POOL, gpu_tags
from orchestration.resources import ArtifactStore, RecipeResource
from orchestration.tracking import MlflowTracker
from vlmrl.data.records import family_of
from vlmrl.hashing import sha256_file

STAGES = {"base": base_model, "sft": sft_checkpoint, "rl": rl_checkpoint}
MIN_FORMAT_COMPLIANCE = 0.95  # for trained checkpoints; the base model is not held to it
EVAL_CODE_VERSION = "eval-1"


def _latest_path(instance: Any, key: AssetKey, partition: str | None) -> str | None:
    """Path of the newest materialization of ``key`` (in ``partition``) whose files exist."""
    only = AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition else None)
    for record in instance.fetch_materializations(only, limit=100).records:
        mat = record.asset_materialization
        if mat and "path" in mat.metadata:
            path = mat.metadata["path"].value
            if Path(path).exists():
                return path
    return None


def _evaluate_stage(context: AssetExecutionContext, stage: str, recipe: RecipeResource,
                    artifacts: ArtifactStore, tracker: MlflowTracker):
    from vlmrl.eval import delta, evaluate_checkpoint, load_benchmark

    r = recipe.load()
    bench_name = context.partition_key
    checkpoint = artifacts.checkpoint(stage)
    out = artifacts.report(bench_name, stage, context.run_id)
    previous = _latest_path(context.instance, context.asset_key, bench_name)  # before this run's
    with tracker.start_run(context, params={"eval": r.to_dict()["eval"], "stage": stage,
                                            "benchmark": bench_name}) as run:
        bench = load_benchmark(artifacts.frames(f"bench-{bench_name}"), name=bench_name)
        report = evaluate_checkpoint(r, checkpoint, bench, out, stage=stage, overwrite=True)
        s = report["summary"]
        sens = (report.get("temporal") or {}).get("sensitivity", {}).get("all", {})
        headline = {"accuracy": s["accuracy"]["mean"], "mc_accuracy": s["mc_accuracy"]["mean"],
                    "format_compliance": s["format_compliance"]["mean"],
                    "temporal_sensitivity": sens.get("mean"), "samples": s["n"],
                    "skipped": report["benchmark"]["skipped"],
                    "samples_per_s": report["throughput"]["samples_per_s"]}
        log_metrics(headline)
        meta: dict[str, Any] = {k: v for k, v in headline.items() if v is not None}
        meta["checkpoint_lineage_sha256"] = str(report["checkpoint"]["lineage_sha256"])
        meta["report"] = MetadataValue.md((out / "report.md").read_text())
        if previous:
            d = delta(previous, out)
            meta["drift_vs_previous"] = d["delta"]["mean"]
            meta["drift_ci"] = json.dumps(d["delta"]["ci"])
            meta["drift_significant"] = d["significant"]
            meta["previous_report"] = MetadataValue.path(previous)
        return result(context, artifacts, out, sha256_file(out / "report.json"), meta, run)


def _stage_report(stage: str):
    @asset(
        name=f"{stage}_report",
        group_name="reports",
        deps=[STAGES[stage], benchmark_frames],
        partitions_def=BENCHMARKS,
        code_version=EVAL_CODE_VERSION,
        automation_condition=AutomationCondition.eager(),
        op_tags=gpu_tags(),
        pool=GPU_POOL,
        kinds={"pytorch"},
        description=f"The {stage} checkpoint evaluated on one benchmark (ordered and shuffled frames).",
    )
    def _report(context: AssetExecutionContext, recipe: RecipeResource, artifacts: ArtifactStore,
                tracker: MlflowTracker):
        return _evaluate_stage(context, stage, recipe, artifacts, tracker)

    return _report


base_report, sft_report, rl_report = (_stage_report(s) for s in STAGES)
STAGE_REPORTS = {"base": base_report, "sft": sft_report, "rl": rl_report}


@asset(group_name="reports", deps=list(STAGE_REPORTS.values()), partitions_def=BENCHMARKS,
       code_version=EVAL_CODE_VERSION, automation_condition=AutomationCondition.eager(), kinds={"python"})
def benchmark_report(context: AssetExecutionContext, artifacts: ArtifactStore, tracker: MlflowTracker):
    """Base, SFT and RL side by side on one benchmark: table, plot and summary.json."""
    from vlmrl.eval import plot_stages, read_report, stage_table

    reports = {stage: _latest_path(context.instance, a.key, context.partition_key)
               for stage, a in STAGE_REPORTS.items()}
    if missing := [stage for stage, path in reports.items() if path is None]:
        raise FileNotFoundError(f"no {', '.join(missing)} report for {context.partition_key} yet")
    out = artifacts.path("reports", context.partition_key, "comparison")
    out.mkdir(parents=True, exist_ok=True)
    with tracker.start_run(context, params={"reports": reports}) as run:
        table = stage_table(reports)
        (out / "stages.md").write_text(table)
        plot_stages(reports, out / "stages.png")
        summary = stage_summary({s: read_report(p) for s, p in reports.items()})
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        log_metrics({f"{s}_{k}": v for s, fig in summary["stages"].items() for k, v in fig.items()
                     if isinstance(v, float)})
        meta = {"comparison": MetadataValue.md(table), "plot": MetadataValue.path(str(out / "stages.png")),
                **{f"{s}_mc_accuracy": fig["mc_accuracy"] for s, fig in summary["stages"].items()}}
        return result(context, artifacts, out, sha256_file(out / "summary.json"), meta, run)


def stage_summary(reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per stage: MC accuracy and its interval, format compliance, temporal sensitivity, families."""
    stages = {}
    chance = None
    for stage, r in reports.items():
        s = r["summary"]
        chance = chance if chance is not None else s.get("chance")
        sens = (r.get("temporal") or {}).get("sensitivity", {}).get("all", {})
        sampled = (r.get("sampled") or {}).get("summary", {}).get("mc_accuracy", {})
        stages[stage] = {
            "mc_accuracy": s["mc_accuracy"]["mean"],
            "mc_accuracy_ci": s["mc_accuracy"]["ci"],
            "mc_accuracy_sampled": sampled.get("mean"),
            "mc_accuracy_sampled_ci": sampled.get("ci"),
            "format_compliance": s["format_compliance"]["mean"],
            "temporal_sensitivity": sens.get("mean"),
            "temporal_sensitivity_ci": sens.get("ci"),
            "families": {family_of(name): est["mean"] for name, est in s["by_data_source"].items()},
            "problem_types": {name: est["mean"] for name, est in s["by_problem_type"].items()},
        }
    return {"chance": chance, "stages": stages}


def _report_complete(context: Any, stage: str, min_format: float | None) -> AssetCheckResult:
    """The newest report of the stage (any benchmark) is complete and well formatted."""
    from vlmrl.eval import read_report

    try:
        path = _latest_path(context.instance, STAGE_REPORTS[stage].key, None)
        report = read_report(path or "<none>")
    except (FileNotFoundError, ValueError, KeyError) as exc:
        return AssetCheckResult(passed=False, metadata={"error": str(exc)})
    s = report["summary"]
    missing = [k for k in ("benchmark", "checkpoint", "settings", "summary", "temporal", "throughput")
               if k not in report]
    fmt = s["format_compliance"]["mean"]
    ok = not missing and s["n"] > 0 and (min_format is None or fmt >= min_format)
    return AssetCheckResult(passed=ok, severity=AssetCheckSeverity.WARN,
                            metadata={"format_compliance": fmt, "min_format_compliance": min_format or 0.0,
                                      "missing_fields": ", ".join(missing) or "none", "samples": s["n"]})


def _report_check(stage: str, min_format: float | None):
    @asset_check(asset=STAGE_REPORTS[stage], name=f"{stage}_report_complete",
                 description="report complete" + (" and format compliance above threshold" if min_format else ""))
    def _check(context) -> AssetCheckResult:
        return _report_complete(context, stage, min_format)

    return _check


REPORT_ASSETS = [*STAGE_REPORTS.values(), benchmark_report]
REPORT_CHECKS = [_report_check("base", None), _report_check("sft", MIN_FORMAT_COMPLIANCE),
                 _report_check("rl", MIN_FORMAT_COMPLIANCE)]

# No `from __future__ import annotations` here: Dagster reads annotations at runtime.
"""Report assets: each checkpoint evaluated per benchmark, and the stages compared.

``base_report``, ``sft_report`` and ``rl_report`` (one partition per benchmark) follow
their checkpoints: an eager automation condition re-materializes them when the
checkpoint or the benchmark frames change, and the nightly schedule re-evaluates them.
Each writes a fresh report directory and, when an earlier report of the same asset and
partition exists, the paired accuracy delta to it (drift). ``benchmark_report`` puts the
three stages side by side. All are partitioned by the recipe's benchmarks, given to
``report_assets`` when the definitions are built (nothing here reads the recipe at import).
"""

import json
from functools import partial
from pathlib import Path
from typing import Any

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetKey,
    AssetRecordsFilter,
    AssetsDefinition,
    AutomationCondition,
    MetadataValue,
    PartitionsDefinition,
    asset,
)

from orchestration.assets.common import log_metrics, result
from orchestration.assets.models import CHECKPOINTS
from orchestration.checks import artifact_check
from orchestration.executors import GPU_POOL, gpu_tags
from orchestration.launcher import StageLauncher
from orchestration.resources import ArtifactStore, RecipeResource
from orchestration.tracking import MlflowTracker
from vlmrl.eval.summary import stage_summary
from vlmrl.hashing import sha256_file

STAGE_REPORT_KEYS = {stage: AssetKey(f"{stage}_report") for stage in CHECKPOINTS}
MIN_FORMAT_COMPLIANCE = 0.95  # for trained checkpoints; the base model is not held to it
EVAL_CODE_VERSION = "eval-1"


def _latest_path(instance: Any, artifacts: ArtifactStore, key: AssetKey, partition: str | None) -> str | None:
    """Path of the newest materialization of ``key`` (in ``partition``) whose files exist
    (on object storage: which is published, pulled into the local cache)."""
    from vlmrl.storage import NotPublishedError

    only = AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition else None)
    for record in instance.fetch_materializations(only, limit=100).records:
        mat = record.asset_materialization
        if mat and artifacts.remote and "artifact_path" in mat.metadata:
            try:
                return str(artifacts.pull(artifacts.path(mat.metadata["artifact_path"].value)))
            except (NotPublishedError, ValueError):
                continue
        if mat and "path" in mat.metadata:
            path = mat.metadata["path"].value
            if Path(path).exists():
                return path
    return None


def _evaluate_stage(context: AssetExecutionContext, stage: str, recipe: RecipeResource,
                    artifacts: ArtifactStore, tracker: MlflowTracker, launcher: StageLauncher):
    from vlmrl.eval import delta, load_benchmark, read_report
    from vlmrl.eval.report import Report
    from vlmrl.stages.evaluation import evaluate_checkpoint

    r = recipe.load()
    bench_name = context.partition_key
    checkpoint = artifacts.pull(artifacts.checkpoint(stage))
    out = artifacts.report(bench_name, stage, context.run_id)
    previous = _latest_path(context.instance, artifacts, context.asset_key, bench_name)  # before this run's
    with tracker.start_run(context, params={"eval": r.to_dict()["eval"], "stage": stage,
                                            "benchmark": bench_name}) as run:
        frames = artifacts.pull(artifacts.frames(f"bench-{bench_name}"))
        extra: dict[str, Any] = {}
        if launcher.as_command(r):  # `vlmrl eval` under accelerate launch, as a step pod runs it
            reported = launcher.run(context, ["eval", "--recipe-settings", "--checkpoint", str(checkpoint),
                                              "--benchmark", str(frames), "--name", bench_name, "--stage", stage,
                                              "--out", str(out), "--overwrite"], r, env=run.env)
            if Path(reported["report_dir"]) != out.resolve() or \
                    reported["report_sha256"] != sha256_file(out / "report.json"):
                raise RuntimeError(f"the eval command reported {reported}, not the report at {out}")
            report = Report(read_report(out))
            extra = {"launched_processes": reported["world_size"], "rows_per_rank": reported["rows_per_rank"]}
        else:
            bench = load_benchmark(frames, name=bench_name)
            report = Report(evaluate_checkpoint(r, checkpoint, bench, out, stage=stage, overwrite=True))
        headline = report.headline()
        log_metrics(headline)
        meta: dict[str, Any] = {k: v for k, v in headline.items() if v is not None} | extra
        meta["checkpoint_lineage_sha256"] = str(report.checkpoint["lineage_sha256"])
        meta["report"] = MetadataValue.md((out / "report.md").read_text())
        if previous:
            d = delta(previous, out)
            meta["drift_vs_previous"] = d["delta"]["mean"]
            meta["drift_ci"] = json.dumps(d["delta"]["ci"])
            meta["drift_significant"] = d["significant"]
            meta["previous_report"] = MetadataValue.path(previous)
        return result(context, artifacts, out, sha256_file(out / "report.json"), meta, run)


def _stage_report(stage: str, benchmarks: PartitionsDefinition) -> AssetsDefinition:
    @asset(
        name=f"{stage}_report",
        group_name="reports",
        deps=[CHECKPOINTS[stage], "benchmark_frames"],
        partitions_def=benchmarks,
        code_version=EVAL_CODE_VERSION,
        automation_condition=AutomationCondition.eager(),
        op_tags=gpu_tags(),
        pool=GPU_POOL,
        kinds={"pytorch"},
        description=f"The {stage} checkpoint evaluated on one benchmark (ordered and shuffled frames).",
    )
    def _report(context: AssetExecutionContext, recipe: RecipeResource, artifacts: ArtifactStore,
                tracker: MlflowTracker, launcher: StageLauncher):
        return _evaluate_stage(context, stage, recipe, artifacts, tracker, launcher)

    return _report


def benchmark_report(context: AssetExecutionContext, artifacts: ArtifactStore, tracker: MlflowTracker):
    """Base, SFT and RL side by side on one benchmark: table, plot and summary.json."""
    from vlmrl.eval import plot_stages, read_report, stage_table

    reports = {stage: _latest_path(context.instance, artifacts, key, context.partition_key)
               for stage, key in STAGE_REPORT_KEYS.items()}
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


def report_assets(benchmarks: PartitionsDefinition) -> list[AssetsDefinition]:
    """The per-stage reports and their comparison, one partition per benchmark."""
    comparison = asset(group_name="reports", deps=list(STAGE_REPORT_KEYS.values()), partitions_def=benchmarks,
                       code_version=EVAL_CODE_VERSION, automation_condition=AutomationCondition.eager(),
                       kinds={"python"})(benchmark_report)
    return [*(_stage_report(stage, benchmarks) for stage in CHECKPOINTS), comparison]


def _report_complete(context: AssetCheckExecutionContext, artifacts: ArtifactStore, stage: str,
                     min_format: float | None) -> AssetCheckResult:
    """The newest report of the stage (any benchmark) is complete and well formatted."""
    from vlmrl.eval import read_report

    try:
        path = _latest_path(context.instance, artifacts, STAGE_REPORT_KEYS[stage], None)
        report = read_report(path or "<none>")
    except (FileNotFoundError, ValueError, KeyError) as exc:
        return AssetCheckResult(passed=False, metadata={"error": str(exc)})
    missing = report.missing()
    fmt = report.mean("format_compliance")
    ok = not missing and report.n > 0 and (min_format is None or fmt >= min_format)
    return AssetCheckResult(passed=ok, severity=AssetCheckSeverity.WARN,
                            metadata={"format_compliance": fmt, "min_format_compliance": min_format or 0.0,
                                      "missing_fields": ", ".join(missing) or "none", "samples": report.n})


# The base model is not held to the format threshold (it has not learnt the format yet).
REPORT_CHECKS = [
    artifact_check(f"{stage}_report", "complete", partial(_report_complete, stage=stage, min_format=min_format),
                   blocking=False,
                   description="report complete" + (" and format compliance above threshold" if min_format else ""))
    for stage, min_format in (("base", None), ("sft", MIN_FORMAT_COMPLIANCE), ("rl", MIN_FORMAT_COMPLIANCE))]

"""All Dagster definitions, assembled in one place (loaded by workspace.yaml)."""

from __future__ import annotations

from dagster import (
    AssetSelection,
    AutomationConditionSensorDefinition,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    Definitions,
    RunRequest,
    ScheduleEvaluationContext,
    define_asset_job,
    schedule,
)

from orchestration.assets.data import BENCHMARKS, DATA_ASSETS, DATA_CHECKS
from orchestration.assets.models import MODEL_ASSETS, MODEL_CHECKS
from orchestration.assets.reports import REPORT_ASSETS, REPORT_CHECKS
from orchestration.executors import executor_from_env
from orchestration.resources import (
    ArtifactStore,
    RecipeResource,
    default_artifact_root,
    default_recipe,
)
from orchestration.tracking import MlflowTracker

PER_BENCHMARK = AssetSelection.groups("reports") | AssetSelection.keys("benchmark_frames")

# The pipeline in two jobs: the unpartitioned graph (data -> checkpoints), then one run per
# benchmark (frames -> per-stage reports -> comparison).
pipeline_job = define_asset_job(
    "pipeline", selection=AssetSelection.all() - PER_BENCHMARK,
    description="Data, base model, SFT and RL checkpoints on the recipe (make run, step 1).",
)
benchmarks_job = define_asset_job(
    "benchmarks", selection=PER_BENCHMARK, partitions_def=BENCHMARKS,
    description="Per benchmark: frames, base/SFT/RL reports and their comparison (make run, step 2).",
)
reevaluation_job = define_asset_job(
    "reevaluation", selection=AssetSelection.groups("reports"), partitions_def=BENCHMARKS,
    description="Re-evaluate the latest checkpoints on a benchmark (the nightly schedule).",
)


@schedule(job=reevaluation_job, cron_schedule="0 3 * * *", default_status=DefaultScheduleStatus.RUNNING,
          description="Nightly re-evaluation of the latest checkpoints on every benchmark (drift).")
def nightly_reevaluation(context: ScheduleEvaluationContext):
    stamp = context.scheduled_execution_time.strftime("%Y-%m-%d")
    for key in BENCHMARKS.get_partition_keys():
        yield RunRequest(run_key=f"{stamp}-{key}", partition_key=key)


# Reports follow their checkpoints: eager automation conditions on the report assets,
# evaluated by this sensor, which runs as soon as the daemon does (`make ui`).
reports_follow_checkpoints = AutomationConditionSensorDefinition(
    "reports_follow_checkpoints", target=AssetSelection.groups("reports"),
    default_status=DefaultSensorStatus.RUNNING,
)

defs = Definitions(
    assets=[*DATA_ASSETS, *MODEL_ASSETS, *REPORT_ASSETS],
    asset_checks=[*DATA_CHECKS, *MODEL_CHECKS, *REPORT_CHECKS],
    jobs=[pipeline_job, benchmarks_job, reevaluation_job],
    schedules=[nightly_reevaluation],
    sensors=[reports_follow_checkpoints],
    resources={
        "artifacts": ArtifactStore(root=default_artifact_root()),
        "recipe": RecipeResource(recipe=default_recipe()),
        "tracker": MlflowTracker.from_env(),
    },
    # Set on Definitions (not only on a job) so UI materializations and automation use it
    # too; chosen by VLMRL_EXECUTOR (in-process by default, k8s at scale).
    executor=executor_from_env(),
)

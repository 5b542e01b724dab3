"""All Dagster definitions, assembled in one place (loaded by workspace.yaml).

``build_definitions`` resolves the recipe (its benchmarks are the partitions of the
per-benchmark assets); the asset modules read none at import, so another recipe is another
call, not a re-import. ``defs`` is the graph on ``VLMRL_RECIPE`` (default ``tiny-cpu``).
"""

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

from orchestration.assets.data import DATA_ASSETS, DATA_CHECKS, benchmark_frames_asset
from orchestration.assets.models import MODEL_ASSETS, MODEL_CHECKS
from orchestration.assets.reports import REPORT_CHECKS, report_assets
from orchestration.executors import executor_from_env, gpu_asset_names
from orchestration.launcher import StageLauncher
from orchestration.resources import (
    ArtifactStore,
    RecipeResource,
    default_artifact_root,
    default_recipe,
)
from orchestration.tracking import MlflowTracker

PER_BENCHMARK = AssetSelection.groups("reports") | AssetSelection.keys("benchmark_frames")


def build_definitions(recipe: RecipeResource | None = None) -> Definitions:
    """The asset graph, jobs, schedule and sensor on ``recipe`` (default: ``VLMRL_RECIPE``)."""
    recipe = recipe or RecipeResource(recipe=default_recipe())
    benchmarks = recipe.benchmark_partitions()

    # The pipeline in two jobs: the unpartitioned graph (data -> checkpoints), then one run per
    # benchmark (frames -> per-stage reports -> comparison).
    pipeline_job = define_asset_job(
        "pipeline", selection=AssetSelection.all() - PER_BENCHMARK,
        description="Data, base model, SFT and RL checkpoints on the recipe (make run, step 1).",
    )
    benchmarks_job = define_asset_job(
        "benchmarks", selection=PER_BENCHMARK, partitions_def=benchmarks,
        description="Per benchmark: frames, base/SFT/RL reports and their comparison (make run, step 2).",
    )
    reevaluation_job = define_asset_job(
        "reevaluation", selection=AssetSelection.groups("reports"), partitions_def=benchmarks,
        description="Re-evaluate the latest checkpoints on a benchmark (the nightly schedule).",
    )

    @schedule(job=reevaluation_job, cron_schedule="0 3 * * *", default_status=DefaultScheduleStatus.RUNNING,
              description="Nightly re-evaluation of the latest checkpoints on every benchmark (drift).")
    def nightly_reevaluation(context: ScheduleEvaluationContext):
        stamp = context.scheduled_execution_time.strftime("%Y-%m-%d")
        for key in benchmarks.get_partition_keys():
            yield RunRequest(run_key=f"{stamp}-{key}", partition_key=key)

    # Reports follow their checkpoints: eager automation conditions on the report assets,
    # evaluated by this sensor, which runs as soon as the daemon does (`make ui`).
    reports_follow_checkpoints = AutomationConditionSensorDefinition(
        "reports_follow_checkpoints", target=AssetSelection.groups("reports"),
        default_status=DefaultSensorStatus.RUNNING,
    )

    return Definitions(
        assets=[*DATA_ASSETS, benchmark_frames_asset(benchmarks), *MODEL_ASSETS, *report_assets(benchmarks)],
        asset_checks=[*DATA_CHECKS, *MODEL_CHECKS, *REPORT_CHECKS],
        jobs=[pipeline_job, benchmarks_job, reevaluation_job],
        schedules=[nightly_reevaluation],
        sensors=[reports_follow_checkpoints],
        resources={
            "artifacts": ArtifactStore(root=default_artifact_root()),
            "recipe": recipe,
            "tracker": MlflowTracker.from_env(),
            "launcher": StageLauncher.from_env(),
        },
        # Set on Definitions (not only on a job) so UI materializations and automation use it
        # too; chosen by VLMRL_EXECUTOR (in-process by default, k8s at scale).
        executor=executor_from_env(),
    )


defs = build_definitions()
# make run's benchmarks (one `benchmarks` run each): the partitions of `defs`.
BENCHMARKS = defs.resolve_job_def("benchmarks").partitions_def
# The steps that need a GPU, read from the assets' own pool (docs/deploy.md).
GPU_ASSET_NAMES = gpu_asset_names(defs.assets or ())

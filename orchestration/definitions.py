"""All Dagster definitions, assembled in one place (loaded by workspace.yaml)."""

from __future__ import annotations

from dagster import AssetSelection, Definitions, define_asset_job

from orchestration.assets.data import BENCHMARKS, DATA_ASSETS, DATA_CHECKS, benchmark_frames
from orchestration.executors import executor_from_env
from orchestration.resources import ArtifactStore, default_artifact_root
from orchestration.tracking import MlflowTracker

# The whole pipeline in two jobs: everything unpartitioned, then one run per benchmark.
pipeline_job = define_asset_job(
    "pipeline", selection=AssetSelection.all() - AssetSelection.assets(benchmark_frames),
    description="The embedded default end to end (make run).",
)
benchmarks_job = define_asset_job(
    "benchmarks", selection=AssetSelection.assets(benchmark_frames), partitions_def=BENCHMARKS,
    description="Per-benchmark assets, one partition per benchmark.",
)

defs = Definitions(
    assets=DATA_ASSETS,
    asset_checks=DATA_CHECKS,
    jobs=[pipeline_job, benchmarks_job],
    resources={
        "artifacts": ArtifactStore(root=default_artifact_root()),
        "tracker": MlflowTracker.from_env(),
    },
    # Set on Definitions (not only on a job) so UI materializations and automation use it
    # too; chosen by VLMRL_EXECUTOR (in-process by default, k8s at scale).
    executor=executor_from_env(),
)

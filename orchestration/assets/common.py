"""What every asset does the same way: tracking, the asset index, data versions."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dagster import AssetExecutionContext, DataVersion, MaterializeResult, MetadataValue

from orchestration.resources import ArtifactStore
from vlmrl.lineage import record_asset


def index_asset(context: AssetExecutionContext, artifacts: ArtifactStore, path: Path,
                data_version: str, mlflow_run_id: str | None) -> None:
    """Let `vlmrl lineage <asset key>` find this materialization without Dagster."""
    key = context.asset_key.to_user_string()
    if context.has_partition_key:
        key += f"[{context.partition_key}]"
    record_asset(artifacts.asset_index(), key, {
        "path": str(Path(path).resolve()), "data_version": data_version,
        "dagster_run_id": context.run_id, "mlflow_run_id": mlflow_run_id,
    })


def result(context: AssetExecutionContext, artifacts: ArtifactStore, path: Path, version: str,
           metadata: Mapping[str, Any], run: Any) -> MaterializeResult:
    """The MaterializeResult every asset returns: content version, path, MLflow link."""
    index_asset(context, artifacts, path, version, run.run_id if run else None)
    meta = {"path": MetadataValue.path(str(path)), "content_hash": version, **metadata}
    if run is not None:
        meta.update(run.metadata)
    return MaterializeResult(data_version=DataVersion(version[:16]), metadata=meta)


def log_metrics(metrics: Mapping[str, Any]) -> None:
    """Numeric entries into the active MLflow run (the tracker's)."""
    import mlflow

    clean = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and v == v}
    if clean and mlflow.active_run() is not None:
        mlflow.log_metrics(clean)

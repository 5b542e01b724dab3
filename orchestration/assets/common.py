"""What every asset does the same way: tracking, the asset index, data versions."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dagster import AssetExecutionContext, DataVersion, MaterializeResult, MetadataValue

from orchestration.resources import ArtifactStore
from vlmrl.hashing import relative_ref
from vlmrl.lineage import CONTENT_TAG


def index_asset(context: AssetExecutionContext, artifacts: ArtifactStore, path: Path,
                data_version: str, mlflow_run_id: str | None) -> None:
    """Let `vlmrl lineage <asset key>` find this materialization without Dagster."""
    key = context.asset_key.to_user_string()
    if context.has_partition_key:
        key += f"[{context.partition_key}]"
    artifacts.record(key, {
        "path": str(Path(path).resolve()), "data_version": data_version,
        "dagster_run_id": context.run_id, "mlflow_run_id": mlflow_run_id,
    })


def result(context: AssetExecutionContext, artifacts: ArtifactStore, path: Path, version: str,
           metadata: Mapping[str, Any], run: Any) -> MaterializeResult:
    """The MaterializeResult every asset returns: content version, path, MLflow link. The
    artifact is published first (object storage: marker last), then indexed."""
    uri = artifacts.push(path)
    index_asset(context, artifacts, path, version, run.run_id if run else None)
    # artifact_path: where it is inside the artifacts tree, so an audit can find it in a copy
    meta = {"path": MetadataValue.path(str(path)), "uri": uri,
            "artifact_path": relative_ref(path, artifacts.local_root), "content_hash": version, **metadata}
    if run is not None:
        # the content hash outside the artifacts tree too: `vlmrl lineage --tracking-uri` checks it
        run.set_tag(CONTENT_TAG, version)
        meta.update(run.metadata)
    return MaterializeResult(data_version=DataVersion(version[:16]), metadata=meta)


def log_metrics(metrics: Mapping[str, Any]) -> None:
    """Numeric entries into the tracked run of this materialization; a failing store is
    reported on the run, never fatal to the materialization."""
    from orchestration.tracking import active_tracked_run

    run = active_tracked_run()
    if run is not None:
        run.log_metrics({k: float(v) for k, v in metrics.items()
                         if isinstance(v, int | float) and v == v})

# No `from __future__ import annotations` here: Dagster reads annotations at runtime.
"""Model assets: the base model, the SFT checkpoint and the RL checkpoint.

Each is one call into vlmrl.stages.training inside one MLflow run (the trainer's metrics
arrive through transformers' MLflow callback), or, for a recipe launched on several
processes, the `vlmrl train` command through dagster-pipes (orchestration.launcher). The checkpoint's lineage.json records the
MLflow and Dagster run ids; its hash is the data version; the checkpoint is also an
MLflow logged model linked to its input datasets and parent model.
"""

import json
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetKey,
    MetadataValue,
    asset,
)

from orchestration.assets.common import log_metrics, result
from orchestration.assets.data import rl_frames, sft_frames
from orchestration.checks import artifact_check
from orchestration.executors import GPU_POOL, gpu_tags
from orchestration.launcher import StageLauncher, tracking_args
from orchestration.resources import ArtifactStore, RecipeResource
from orchestration.tracking import MlflowTracker
from vlmrl.lineage import audit, lineage_hash, read_manifest

TRAINING_CODE_VERSION = "train-1"
# Per stage, its checkpoint's asset (reports evaluate them); a trained stage starts from its parent.
CHECKPOINTS = {"base": "base_model", "sft": "sft_checkpoint", "rl": "rl_checkpoint"}
PARENTS = {"sft": "base", "rl": "sft"}


def _tracking(context: AssetExecutionContext, run: Any) -> dict[str, Any]:
    return {"mlflow_run_id": run.run_id, "dagster_run_id": context.run_id,
            "asset_key": context.asset_key.to_user_string()}


def _with_mlflow(recipe: Any) -> Any:
    """The recipe with the trainers reporting to MLflow (the tracker's active run)."""
    changes: dict[str, Any] = {"rl": {"report_to": ["mlflow"]}}
    if recipe.sft is not None:
        changes["sft"] = {"report_to": ["mlflow"]}
    return recipe.override(changes)


def _upstream_model_id(context: AssetExecutionContext, key: str) -> list[str]:
    event = context.instance.get_latest_materialization_event(AssetKey(key))
    meta = event.asset_materialization.metadata if event and event.asset_materialization else {}
    value = meta.get("mlflow_model_id")
    return [value.value] if value is not None else []


def _weight_stats(path: Path) -> dict[str, int]:
    """Parameter count and bytes of the safetensors weights (headers only, no loading)."""
    from safetensors import safe_open

    params = 0
    files = sorted(Path(path).glob("*.safetensors"))
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():  # noqa: SIM118 (safe_open is not a mapping)
                n = 1
                for dim in st.get_slice(name).get_shape():
                    n *= dim
                params += n
    return {"parameters": params, "weight_bytes": sum(f.stat().st_size for f in files)}


def _where(artifacts: ArtifactStore, path: str) -> str:
    """A dataset's URI when it is in the artifacts tree, else its recorded path."""
    try:
        return artifacts.uri(Path(path))
    except ValueError:
        return path


def _checkpoint_result(context: AssetExecutionContext, artifacts: ArtifactStore, tracker: MlflowTracker,
                       run: Any, path: Path, name: str, parent_key: str | None,
                       extra: dict[str, Any] | None = None):
    manifest = read_manifest(path)
    # the URIs every reader uses (object storage: s3://...), the same as the assets' metadata
    datasets = [{"name": f"{d['role']}:{Path(d['path']).name}", "digest": d["fingerprint"][:16],
                 "source": _where(artifacts, d["path"])} for d in manifest["datasets"]]
    model = tracker.log_checkpoint(run, artifacts.uri(path), name, datasets=datasets,
                                   params={"lineage_sha256": lineage_hash(path)},
                                   input_models=_upstream_model_id(context, parent_key) if parent_key else [])
    metrics = {k: v for k, v in manifest.get("metrics", {}).items() if isinstance(v, int | float)}
    metrics.update(_weight_stats(path))
    log_metrics(metrics)
    meta = {"lineage_sha256": lineage_hash(path), "kind": manifest["kind"],
            "parent": (manifest.get("parent") or {}).get("path", ""),
            "datasets": json.dumps({d["role"]: d["fingerprint"][:16] for d in manifest["datasets"]}),
            "code_commit": str(manifest["code"].get("git_commit")), **metrics, **model, **(extra or {})}
    return result(context, artifacts, path, lineage_hash(path), meta, run)


def _train_stage(context: AssetExecutionContext, stage: str, recipe: RecipeResource,
                 artifacts: ArtifactStore, tracker: MlflowTracker, launcher: StageLauncher,
                 before: Callable[[Any, ArtifactStore], dict[str, Any]] | None = None,
                 after: Callable[[Path, ArtifactStore], dict[str, Any]] | None = None):
    """The body of both trained checkpoints: train ``stage`` from its parent on its frames in
    one MLflow run, log the checkpoint, return its result; ``before`` / ``after`` add
    diagnostics (metadata) around the training, inside the same run."""
    from vlmrl.stages.training import train_rl, train_sft

    train = {"sft": train_sft, "rl": train_rl}[stage]
    parent = PARENTS[stage]
    r = _with_mlflow(recipe.load())
    with tracker.start_run(context, params=r.to_dict()) as run:
        parent_dir, frames = artifacts.pull(artifacts.checkpoint(parent)), artifacts.pull(artifacts.frames(stage))
        out = artifacts.checkpoint(stage)
        extra = before(r, artifacts) if before else {}
        if launcher.as_command(r):  # `vlmrl train` under accelerate launch, as a step pod runs it
            reported = launcher.run(context, ["train", stage, f"--{parent}", str(parent_dir),
                                              "--frames", str(frames), "--out", str(out), "--overwrite",
                                              *tracking_args(_tracking(context, run))], r, env=run.env)
            path = Path(reported["checkpoint"])
            if path != out.resolve() or reported["lineage_sha256"] != lineage_hash(path):
                raise RuntimeError(f"the {stage} command reported {reported}, not the checkpoint at {out}")
            extra.update(launched_processes=reported["world_size"])
        else:
            path = train(r, parent_dir, frames, out, tracking=_tracking(context, run),
                         overwrite=True)  # a rematerialization replaces its own checkpoint
        if after:
            extra.update(after(path, artifacts))
        return _checkpoint_result(context, artifacts, tracker, run, path, CHECKPOINTS[stage],
                                  CHECKPOINTS[parent], extra)


def _rl_headroom(recipe: Any, artifacts: ArtifactStore) -> dict[str, Any]:
    """What RL can learn from: the SFT model's sampled pass@1 vs pass@k on the RL split."""
    from vlmrl.stages.headroom import rl_headroom

    headroom = rl_headroom(recipe, artifacts.checkpoint("sft"), artifacts.frames("rl"),
                           _rl_training(artifacts))
    log_metrics({f"sft_rl_split_{k.replace('@', '_at_')}": v for k, v in headroom.items()
                 if isinstance(v, float)})
    return {"sft_pass@1_rl_split": headroom["pass@1"],
            f"sft_pass@{headroom['k']}_rl_split": headroom[f"pass@{headroom['k']}"]}


def _training_curves(path: Path, artifacts: ArtifactStore) -> dict[str, Any]:
    """RL's reward per function and family, no-signal groups and p / p~, plotted."""
    from vlmrl.train.diagnostics import write_training_curves

    plot = write_training_curves(path, _rl_training(artifacts))
    return {"training_curves": MetadataValue.path(str(plot)), "training_report": artifacts.push(_rl_training(artifacts))}


def _rl_training(artifacts: ArtifactStore) -> Path:
    return artifacts.path("reports", "rl_training")


@asset(group_name="models", deps=[sft_frames, rl_frames], code_version=TRAINING_CODE_VERSION,
       kinds={"pytorch"})
def base_model(context: AssetExecutionContext, recipe: RecipeResource, artifacts: ArtifactStore,
               tracker: MlflowTracker):
    """The starting checkpoint: the tiny demo model built here, or a local model linked in."""
    from vlmrl.stages.training import build_base_model

    r = recipe.load()
    with tracker.start_run(context, params=r.to_dict()) as run:
        corpus = [artifacts.pull(artifacts.frames(s)) for s in ("sft", "rl")] if r.model.tiny else []
        path = build_base_model(r, artifacts.checkpoint("base"), corpus, overwrite=True)
        return _checkpoint_result(context, artifacts, tracker, run, path, "base_model", None)


@asset(group_name="models", deps=[base_model, sft_frames], code_version=TRAINING_CODE_VERSION,
       op_tags=gpu_tags(), pool=GPU_POOL, kinds={"pytorch"})
def sft_checkpoint(context: AssetExecutionContext, recipe: RecipeResource, artifacts: ArtifactStore,
                   tracker: MlflowTracker, launcher: StageLauncher):
    """Supervised fine-tuning on the chain-of-thought split (prompt tokens masked)."""
    return _train_stage(context, "sft", recipe, artifacts, tracker, launcher)


@asset(group_name="models", deps=[sft_checkpoint, rl_frames], code_version=TRAINING_CODE_VERSION,
       op_tags=gpu_tags(), pool=GPU_POOL, kinds={"pytorch"})
def rl_checkpoint(context: AssetExecutionContext, recipe: RecipeResource, artifacts: ArtifactStore,
                  tracker: MlflowTracker, launcher: StageLauncher):
    """GRPO-family RL (T-GRPO by default) from the SFT checkpoint, with the SFT model's
    headroom on the RL split before it and the training curves after it."""
    return _train_stage(context, "rl", recipe, artifacts, tracker, launcher, before=_rl_headroom,
                        after=_training_curves)


def _verify(context: AssetCheckExecutionContext, artifacts: ArtifactStore, stage: str) -> AssetCheckResult:
    """Loads (config + safetensors headers, no weights) and the lineage audit passes (no media)."""
    from safetensors import safe_open
    from transformers import AutoConfig

    from vlmrl.models.loading import CheckpointError, check_checkpoint_dir
    from vlmrl.storage import NotPublishedError

    path = artifacts.checkpoint(stage)
    problems: list[str] = []
    try:
        path = artifacts.pull(path)
    except (NotPublishedError, FileNotFoundError) as exc:
        return AssetCheckResult(passed=False, severity=AssetCheckSeverity.ERROR, metadata={"problems": str(exc)})
    try:
        check_checkpoint_dir(path)
        AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        tensors = 0
        for f in sorted(Path(path).glob("*.safetensors")):
            with safe_open(str(f), framework="pt") as st:
                tensors += len(list(st.keys()))
        if tensors == 0:
            problems.append(f"{path}: no tensors in the safetensors files")
    except (CheckpointError, OSError, ValueError) as exc:
        problems.append(str(exc))
    # Media are not re-hashed here: each dataset's manifest and files are, and re-reading every
    # video for every checkpoint check would dominate at scale (`vlmrl lineage` does it all).
    report = audit(path, check_media=False)
    problems += report.problems
    return AssetCheckResult(passed=not problems, severity=AssetCheckSeverity.ERROR,
                            metadata={"problems": "\n".join(problems) or "none",
                                      "chain": " <- ".join(n.manifest.get("kind", "?") for n in report.chain)})


MODEL_ASSETS = [base_model, sft_checkpoint, rl_checkpoint]
MODEL_CHECKS = [artifact_check(key, "verifies", partial(_verify, stage=stage), blocking=True,
                               description="loads; lineage manifest verifies")
                for stage, key in CHECKPOINTS.items()]

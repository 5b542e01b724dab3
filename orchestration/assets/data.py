# No `from __future__ import annotations` here: Dagster reads Config annotations at runtime.
"""Data assets: the raw annotations + media and the frame-extracted datasets.

Thin wrappers: each calls one vlmrl function and reports its manifest as metadata, with
the content fingerprint as the Dagster data version. The recipe says what the data is
(the synthetic demo, or annotation files) and how frames are sampled. Nothing here reads
the recipe at import: its benchmarks, the partitions, are given to ``benchmark_frames_asset``
when the definitions are built.
"""

from functools import partial
from typing import Any

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetsDefinition,
    Config,
    MetadataValue,
    PartitionsDefinition,
    asset,
)

from orchestration.assets.common import log_metrics, result
from orchestration.checks import artifact_check
from orchestration.resources import ArtifactStore, RecipeResource
from orchestration.tracking import MlflowTracker
from vlmrl.data.extract import ExtractResult, extract_dataset, read_frame_manifest
from vlmrl.data.synth import generate
from vlmrl.hashing import sha256_file, sha256_json, sha256_tree
from vlmrl.recipes import SYNTHETIC_BENCHMARK

MAX_REJECT_RATE = 0.05


class ExtractConfig(Config):
    """Per-run knobs that do not change the data: worker processes (None: all cores)."""

    workers: int | None = None


def _sources(recipe: Any, artifacts: ArtifactStore) -> dict[str, tuple[str, str]]:
    """(annotation file, media root) for sft, rl and every benchmark."""
    d = recipe.data
    if d.synthetic is not None:
        raw = artifacts.raw()
        out = {s: (str(raw / f"{s}.json"), str(raw)) for s in ("sft", "rl")}
        out[SYNTHETIC_BENCHMARK] = (str(raw / "bench.json"), str(raw))
    else:
        out = {s: (src.annotations, src.media_root) for s, src in (("sft", d.sft), ("rl", d.rl)) if src}
    out.update({name: (src.annotations, src.media_root) for name, src in d.benchmarks.items()})
    return out


@asset(group_name="data", code_version="raw-1", kinds={"python"})
def raw_data(context: AssetExecutionContext, recipe: RecipeResource, artifacts: ArtifactStore,
             tracker: MlflowTracker):
    """Annotations + media the recipe names; the synthetic demo generates them here."""
    r = recipe.load()
    with tracker.start_run(context, params=r.to_dict()) as run:
        if r.data.synthetic is not None:
            generate(artifacts.raw(), seed=r.data.synthetic.seed, sizes=r.data.synthetic.sizes,
                     progress=False)
        files = {name: sha256_file(ann) for name, (ann, _) in _sources(r, artifacts).items()}
        media = sha256_tree(artifacts.raw(), exclude=("synth_summary.json",)) if r.data.synthetic else {}
        version = sha256_json({"annotations": files, "media": media})
        meta = {"annotation_files": len(files), "media_files": len(media)}
        log_metrics(meta)
        return result(context, artifacts, artifacts.raw(), version, meta, run)


def _extract(context: AssetExecutionContext, name: str, split: str, recipe: RecipeResource,
             artifacts: ArtifactStore, tracker: MlflowTracker, config: ExtractConfig, train: bool):
    r = recipe.load()
    if r.data.synthetic is not None:
        artifacts.pull(artifacts.raw())
    ann, root = _sources(r, artifacts)[split]
    opts = r.frames.train if train else r.frames.eval
    with tracker.start_run(context, params={"frames": opts.to_dict(), "annotations": ann}) as run:
        # a rematerialization replaces this asset's own previous dataset (and nothing else)
        res = extract_dataset(ann, root, artifacts.frames(name), opts, workers=config.workers,
                              progress=False, overwrite=True)
        meta = _metadata(res)
        log_metrics({k: v for k, v in meta.items() if isinstance(v, int | float)})
        return result(context, artifacts, res.path, res.fingerprint, meta, run)


def _metadata(res: ExtractResult) -> dict[str, Any]:
    m = res.manifest
    c = m.counts
    meta: dict[str, Any] = {
        "fingerprint": m.fingerprint,
        "kept": c.kept,
        "rejected": c.rejected,
        "frames": c.frames,
        "reject_rate": m.reject_rate,
        "frames_per_second": m.frames_per_second,
        "annotations_sha256": m.annotations["sha256"],
    }
    if m.rejected:
        meta["rejected_rows"] = MetadataValue.md("\n".join(
            ["| row | problem_id | field | reason |", "|---|---|---|---|"]
            + [f"| {r['row']} | {r.get('problem_id')} | {r['field']} | {r['reason'][:120]} |"
               for r in m.rejected[:50]]))
    return meta


@asset(group_name="data", deps=[raw_data], code_version="frames-1", kinds={"python"})
def sft_frames(context: AssetExecutionContext, config: ExtractConfig, recipe: RecipeResource,
               artifacts: ArtifactStore, tracker: MlflowTracker):
    """Frame-extracted SFT split (with chain-of-thought), decoded once."""
    return _extract(context, "sft", "sft", recipe, artifacts, tracker, config, train=True)


@asset(group_name="data", deps=[raw_data], code_version="frames-1", kinds={"python"})
def rl_frames(context: AssetExecutionContext, config: ExtractConfig, recipe: RecipeResource,
              artifacts: ArtifactStore, tracker: MlflowTracker):
    """Frame-extracted RL split (no chain-of-thought), decoded once."""
    return _extract(context, "rl", "rl", recipe, artifacts, tracker, config, train=True)


def benchmark_frames(context: AssetExecutionContext, config: ExtractConfig, recipe: RecipeResource,
                     artifacts: ArtifactStore, tracker: MlflowTracker):
    """One frame dataset per benchmark, with the recipe's evaluation frame settings."""
    bench = context.partition_key
    return _extract(context, f"bench-{bench}", bench, recipe, artifacts, tracker, config, train=False)


def benchmark_frames_asset(benchmarks: PartitionsDefinition) -> AssetsDefinition:
    """``benchmark_frames`` partitioned by the recipe's benchmarks (see ``build_definitions``)."""
    return asset(group_name="data", deps=[raw_data], code_version="frames-1", partitions_def=benchmarks,
                 kinds={"python"})(benchmark_frames)


def _usable(context: AssetCheckExecutionContext, artifacts: ArtifactStore, name: str) -> AssetCheckResult:
    manifest = read_frame_manifest(artifacts.pull(artifacts.frames(name)))
    kept, rate = manifest.counts.kept, manifest.reject_rate
    return AssetCheckResult(
        passed=kept > 0 and rate <= MAX_REJECT_RATE,
        severity=AssetCheckSeverity.ERROR,
        metadata={"kept": kept, "reject_rate": rate, "max_reject_rate": MAX_REJECT_RATE},
    )


# Unpartitioned; benchmark_frames_asset(partitions) completes the group.
DATA_ASSETS = [raw_data, sft_frames, rl_frames]
DATA_CHECKS = [artifact_check(f"{name}_frames", "usable", partial(_usable, name=name), blocking=True,
                              description="non-empty, reject rate under the threshold")
               for name in ("sft", "rl")]

# No `from __future__ import annotations` here: Dagster reads Config annotations at runtime.
"""Data assets: the synthetic demo media and the frame-extracted datasets.

Thin wrappers: each calls one vlmrl function and reports its manifest as metadata, with
the dataset's content fingerprint as the Dagster data version.
"""


from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetKey,
    Config,
    DataVersion,
    MaterializeResult,
    MetadataValue,
    StaticPartitionsDefinition,
    asset,
    asset_check,
)

from orchestration.resources import ArtifactStore
from vlmrl.data.extract import ExtractResult, extract_dataset, load_frame_dataset
from vlmrl.data.frames import FrameOptions
from vlmrl.data.synth import SynthSizes, generate
from vlmrl.hashing import sha256_json, sha256_tree

BENCHMARKS = StaticPartitionsDefinition(["synthetic"])
MAX_REJECT_RATE = 0.05


class SynthConfig(Config):
    """The embedded demo's data: sizes per split and the seed."""

    seed: int = 0
    sizes: str = "sft=64,rl=256,bench=128"


class FramesConfig(Config):
    """Frame options (see vlmrl.data.frames.FrameOptions); defaults suit the tiny model."""

    fps: float = 2.0
    min_frames: int = 4
    max_frames: int = 16
    min_pixels: int = 56 * 56
    max_pixels: int = 112 * 112
    frame_format: str = "png"
    workers: int | None = None

    def options(self) -> FrameOptions:
        return FrameOptions(fps=self.fps, min_frames=self.min_frames, max_frames=self.max_frames,
                            min_pixels=self.min_pixels, max_pixels=self.max_pixels,
                            frame_format=self.frame_format)


@asset(group_name="data", code_version="synth-1", kinds={"python"})
def synthetic_media(config: SynthConfig, artifacts: ArtifactStore) -> MaterializeResult:
    """Synthetic temporal video QA: MP4s, PNGs and sft/rl/bench annotation files."""
    root = artifacts.path("demo", "raw")
    summary = generate(root, seed=config.seed, sizes=SynthSizes.parse(config.sizes), progress=False)
    hashes = sha256_tree(root, exclude=("synth_summary.json",))
    return MaterializeResult(
        data_version=DataVersion(sha256_json(hashes)[:16]),
        metadata={
            "path": MetadataValue.path(str(root)),
            "files": len(hashes),
            **{f"{s}_samples": info["samples"] for s, info in summary["splits"].items()},
        },
    )


def _report(result: ExtractResult) -> MaterializeResult:
    m = result.manifest
    c = m["counts"]
    rejected = m["rejected"]
    table = "\n".join(
        ["| row | problem_id | field | reason |", "|---|---|---|---|"]
        + [f"| {r['row']} | {r.get('problem_id')} | {r['field']} | {r['reason'][:120]} |" for r in rejected[:50]]
    )
    meta: dict[str, Any] = {
        "path": MetadataValue.path(str(result.path)),
        "fingerprint": m["fingerprint"],
        "kept": c["kept"],
        "rejected": c["rejected"],
        "frames": c["frames"],
        "reject_rate": c["rejected"] / max(1, c["rows"]),
        "frames_per_second": m["frames_per_second"],
        "annotations_sha256": m["annotations"]["sha256"],
    }
    if rejected:
        meta["rejected_rows"] = MetadataValue.md(table)
    return MaterializeResult(data_version=DataVersion(m["fingerprint"][:16]), metadata=meta)


def _extract(artifacts: ArtifactStore, split: str, out: str, config: FramesConfig) -> MaterializeResult:
    raw = artifacts.path("demo", "raw")
    result = extract_dataset(raw / f"{split}.json", raw, artifacts.path("demo", "frames", out),
                             config.options(), workers=config.workers, progress=False)
    return _report(result)


@asset(group_name="data", deps=[synthetic_media], code_version="frames-1", kinds={"python"})
def sft_frames(config: FramesConfig, artifacts: ArtifactStore) -> MaterializeResult:
    """Frame-extracted SFT split (with chain-of-thought)."""
    return _extract(artifacts, "sft", "sft", config)


@asset(group_name="data", deps=[synthetic_media], code_version="frames-1", kinds={"python"})
def rl_frames(config: FramesConfig, artifacts: ArtifactStore) -> MaterializeResult:
    """Frame-extracted RL split (no chain-of-thought)."""
    return _extract(artifacts, "rl", "rl", config)


@asset(group_name="data", deps=[synthetic_media], code_version="frames-1",
       partitions_def=BENCHMARKS, kinds={"python"})
def benchmark_frames(context: AssetExecutionContext, config: FramesConfig,
                     artifacts: ArtifactStore) -> MaterializeResult:
    """One frame dataset per benchmark partition."""
    return _extract(artifacts, "bench", f"bench-{context.partition_key}", config)


def _dataset_check(path, key: str) -> AssetCheckResult:
    _, manifest = load_frame_dataset(path)
    c = manifest["counts"]
    rate = c["rejected"] / max(1, c["rows"])
    ok = c["kept"] > 0 and rate <= MAX_REJECT_RATE
    return AssetCheckResult(
        passed=ok,
        severity=AssetCheckSeverity.ERROR,
        metadata={"kept": c["kept"], "reject_rate": rate, "max_reject_rate": MAX_REJECT_RATE,
                  "dataset": key},
    )


@asset_check(asset=sft_frames, blocking=True, description="non-empty, reject rate under the threshold")
def sft_frames_usable(artifacts: ArtifactStore) -> AssetCheckResult:
    return _dataset_check(artifacts.path("demo", "frames", "sft"), "sft")


@asset_check(asset=rl_frames, blocking=True, description="non-empty, reject rate under the threshold")
def rl_frames_usable(artifacts: ArtifactStore) -> AssetCheckResult:
    return _dataset_check(artifacts.path("demo", "frames", "rl"), "rl")


DATA_ASSETS = [synthetic_media, sft_frames, rl_frames, benchmark_frames]
DATA_CHECKS = [sft_frames_usable, rl_frames_usable]
DATA_KEYS = [AssetKey(a.key.path) for a in DATA_ASSETS]

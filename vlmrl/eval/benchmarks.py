"""Benchmarks: the Video-R1 line's evaluation sets and how to load them.

Every benchmark is a file in the Video-R1 record format plus a media root; loading runs
it through the same frame extraction as training (with evaluation frame settings of its
own) and caches the frame dataset by content, so re-evaluations never decode again.
A malformed row fails loudly (file, row, field); a sample whose media is missing or
undecodable is skipped and counted in the report.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vlmrl.data.extract import MANIFEST, FrameManifest, extract_dataset, load_frame_dataset
from vlmrl.data.frames import FrameOptions
from vlmrl.data.records import AnnotationError, load_annotations
from vlmrl.hashing import sha256_file, sha256_json

# Video-R1's evaluation frames: up to 256*28*28 pixels per frame, 16 frames by default.
EVAL_FRAMES = FrameOptions(max_frames=16, max_pixels=256 * 28 * 28, min_pixels=4 * 28 * 28,
                           image_max_pixels=256 * 28 * 28)


@dataclass(frozen=True)
class BenchmarkSpec:
    """What distinguishes one benchmark: which problem types count and its frame settings."""

    name: str
    description: str
    problem_types: tuple[str, ...] | None = None  # None: every type in the file
    frames: FrameOptions = field(default=EVAL_FRAMES)


BENCHMARKS: dict[str, BenchmarkSpec] = {
    s.name: s
    for s in (
        BenchmarkSpec("vsi_bench", "VSI-Bench: spatial; multiple choice + regression scored by MRA"),
        BenchmarkSpec("videommmu", "VideoMMMU: knowledge from lecture videos"),
        BenchmarkSpec("mmvu", "MMVU, multiple-choice part", problem_types=("multiple choice",)),
        BenchmarkSpec("mvbench", "MVBench: temporal multiple choice"),
        BenchmarkSpec("tempcompass", "TempCompass: temporal perception"),
        BenchmarkSpec("videomme", "VideoMME without subtitles"),
        BenchmarkSpec("synthetic", "the embedded demo's held-out synthetic split",
                      frames=FrameOptions(min_pixels=56 * 56, max_pixels=112 * 112, frame_format="png")),
    )
}


@dataclass
class LoadedBenchmark:
    """A benchmark's frame dataset plus what the report needs to say about it."""

    name: str
    dataset: Any  # datasets.Dataset
    manifest: FrameManifest
    source: str
    source_sha256: str | None

    @property
    def skipped(self) -> list[dict[str, Any]]:
        return self.manifest.rejected


def spec_for(name: str) -> BenchmarkSpec:
    """The spec of a known benchmark, or a generic one for any other name."""
    return BENCHMARKS.get(name) or BenchmarkSpec(name, "custom benchmark")


def load_benchmark(
    source: str | os.PathLike[str],
    *,
    name: str | None = None,
    media_root: str | os.PathLike[str] | None = None,
    frames: FrameOptions | None = None,
    cache_dir: str | os.PathLike[str] = "artifacts/cache/benchmarks",
    workers: int | None = None,
) -> LoadedBenchmark:
    """Load a benchmark from a frame-dataset directory or an annotation file.

    An annotation file is validated strictly (any bad row raises `AnnotationError` naming
    file, row and field), then extracted into ``cache_dir`` keyed by the file's hash, the
    media root and the frame options; missing media become skipped samples.
    """
    source = Path(source)
    if source.is_dir():
        ds, manifest = load_frame_dataset(source)
        return LoadedBenchmark(name or source.name, _filter(ds, spec_for(name or source.name)),
                               manifest, str(source), manifest.get("annotations", {}).get("sha256"))
    if not source.is_file():
        raise FileNotFoundError(f"benchmark {source} is neither a frame dataset nor an annotation file")
    name = name or source.stem
    spec = spec_for(name)
    opts = frames or spec.frames
    loaded = load_annotations(source)
    if loaded.errors:
        raise AnnotationError(loaded.errors)
    root = Path(media_root) if media_root is not None else source.parent
    digest = sha256_file(source)
    key = sha256_json({"file": digest, "root": str(root.resolve()), "frames": opts.to_dict()})[:16]
    out = Path(cache_dir) / f"{name}-{key}"
    if not (out / MANIFEST).is_file():
        extract_dataset(source, root, out, opts, workers=workers, progress=True)
    ds, manifest = load_frame_dataset(out)
    return LoadedBenchmark(name, _filter(ds, spec), manifest, str(source), digest)


def _filter(ds: Any, spec: BenchmarkSpec) -> Any:
    if spec.problem_types is None:
        return ds
    keep = set(spec.problem_types)
    return ds.filter(lambda t: t in keep, input_columns=["problem_type"], keep_in_memory=True)


def with_frames(spec: BenchmarkSpec, **changes: Any) -> BenchmarkSpec:
    """A spec with some frame options changed (e.g. 32 or 64 frames)."""
    return replace(spec, frames=replace(spec.frames, **changes))

"""Frame cost at training time: a frame-dataset read vs the reference per-step decode.

    .venv/bin/python bench/bench_frames.py [--quick] [--json OUT]

On the same samples, side by side in one run (compare ratios, not absolute times):

- reference: what a pipeline without frame datasets does every step (Video-R1's design):
  open the video with decord, take the same frame indices, decode, resize to the same
  pixels (`vlmrl.data.frames.resize_frames`);
- dataset row: what training did per sample until the RL trainer read frames itself,
  ``frames_array(ds[i])`` (datasets decodes every column and builds one PIL image per frame);
- frames read: what the RL trainer does now (`vlmrl.train.grpo.FrameSource`: the frames
  column only, PNGs decoded straight into one array), checked equal to the dataset row's.

Sets: the demo's RL split (tiny-cpu recipe: 112x112 H.264, 8 frames of 56x56 PNG) and
the real fixtures in ../shared/fixtures/real at Video-R1's training options (JPEG, and
the same as PNG). Target: the read >= 20x cheaper than the reference.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vlmrl.data.extract import extract_dataset, frames_array, load_frame_dataset
from vlmrl.data.frames import FrameOptions, resize_frames
from vlmrl.data.synth import generate
from vlmrl.recipes import load_recipe

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "real"
TARGET = 20.0


def _per_sample_ms(fn: Callable[[int], Any], rows: list[int], passes: int) -> list[float]:
    """Milliseconds per sample of each full pass over `rows`."""
    out = []
    for _ in range(passes):
        start = time.perf_counter()
        for i in rows:
            fn(i)
        out.append((time.perf_counter() - start) / len(rows) * 1e3)
    return out


def measure_set(name: str, frames_dir: Path, media_root: Path, passes: int) -> dict[str, Any]:
    import decord

    from vlmrl.train.grpo import FrameSource

    ds, _ = load_frame_dataset(frames_dir)
    light, source = FrameSource.split(ds)
    assert source is not None, f"{name}: problem ids repeat, training would not use the fast read"
    meta = ds.select_columns(["path", "decoder", "frame_indices", "height", "width"])
    # the reference decodes with decord: rows decord could not read (PyAV fallback) are left out
    rows = [i for i, d in enumerate(meta["decoder"]) if d == "decord"]
    paths = [str(media_root / p) for p in meta["path"]]
    indices, heights, widths = meta["frame_indices"], meta["height"], meta["width"]

    def reference(i: int) -> np.ndarray:
        reader = decord.VideoReader(paths[i], num_threads=1)
        return resize_frames(reader.get_batch(indices[i]).asnumpy(), heights[i], widths[i])

    def dataset_row(i: int) -> np.ndarray:
        return frames_array(ds[i])

    ids = light["problem_id"]

    def frames_read(i: int) -> np.ndarray:
        return source.frames({"problem_id": ids[i]})

    same_as_reference = 0
    for i in rows:  # the fast read must give the arrays training got, byte for byte
        old, new = dataset_row(i), frames_read(i)
        if old.dtype != new.dtype or old.shape != new.shape or not np.array_equal(old, new):
            raise AssertionError(f"{name}: row {i} frames differ between the two read paths")
        same_as_reference += int(np.array_equal(new, reference(i)))
    times: dict[str, list[float]] = {"reference": [], "dataset_row": [], "frames_read": []}
    for _ in range(passes):  # interleaved, so drift on a shared machine hits all three
        for key, fn in (("reference", reference), ("dataset_row", dataset_row),
                        ("frames_read", frames_read)):
            times[key] += _per_sample_ms(fn, rows, 1)
    ms = {key: statistics.median(v) for key, v in times.items()}
    frames = sum(len(indices[i]) for i in rows)
    return {
        "set": name,
        "samples": len(rows),
        "frames_per_sample": round(frames / max(len(rows), 1), 1),
        "frame_size": sizes.pop() if len(sizes := {f"{heights[i]}x{widths[i]}" for i in rows}) == 1
        else "mixed",
        "reference_ms": round(ms["reference"], 3),
        "dataset_row_ms": round(ms["dataset_row"], 3),
        "frames_read_ms": round(ms["frames_read"], 3),
        "speedup_before": round(ms["reference"] / ms["dataset_row"], 2),  # the datasets row
        "speedup": round(ms["reference"] / ms["frames_read"], 2),  # the frames read
        "target": TARGET,
        "pixels_equal_reference": f"{same_as_reference}/{len(rows)}",
    }


def _fixture_annotations(path: Path) -> None:
    path.write_text(json.dumps([
        {"problem_id": p.name, "problem": "?", "data_type": "video", "problem_type": "free-form",
         "solution": "<answer>x</answer>", "path": p.name} for p in sorted(FIXTURES.iterdir())
    ]))


def measure(quick: bool = False) -> dict[str, Any]:
    """The figures for `make bench`: per set, ms per sample and reference / read ratios."""
    recipe = load_recipe("tiny-cpu")
    sizes = recipe.data.synthetic.sizes if recipe.data.synthetic else None
    assert sizes is not None, "tiny-cpu is the synthetic demo"
    passes = 3 if quick else 7
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rl = 48 if quick else 192
        generate(root / "synth", seed=0, progress=False,
                 sizes=dataclasses.replace(sizes, sft=0, rl=rl, bench=0))
        extract_dataset(root / "synth" / "rl.json", root / "synth", root / "demo",
                        recipe.frames.train, workers=1, progress=False)
        results["demo RL split"] = measure_set("demo RL split", root / "demo", root / "synth", passes)
        if FIXTURES.is_dir():
            _fixture_annotations(root / "fixtures.json")
            for fmt in ("jpeg", "png"):
                out = root / f"fixtures-{fmt}"
                extract_dataset(root / "fixtures.json", FIXTURES, out, FrameOptions(frame_format=fmt),
                                workers=1, progress=False)
                results[f"real fixtures ({fmt})"] = measure_set(f"real fixtures ({fmt})", out, FIXTURES,
                                                                passes)
    worst = min(r["speedup"] for r in results.values())
    return {"measure": "frame cost at training time", "target": f">= {TARGET:g}x",
            "ratio": worst, "met": worst >= TARGET, "sets": results}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer samples and passes")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()
    result = measure(args.quick)
    print(f"{'set':<22}{'samples':>8}{'frames':>7}{'size':>9}{'reference':>11}{'ds row':>9}"
          f"{'read':>8}{'before':>8}{'after':>8}  target")
    for r in result["sets"].values():
        print(f"{r['set']:<22}{r['samples']:>8}{r['frames_per_sample']:>7}{r['frame_size']:>9}"
              f"{r['reference_ms']:>9.3f}ms{r['dataset_row_ms']:>7.3f}ms{r['frames_read_ms']:>6.3f}ms"
              f"{r['speedup_before']:>7.1f}x{r['speedup']:>7.1f}x  >= {TARGET:g}x")
    print(f"worst ratio after: {result['ratio']:.1f}x ({'met' if result['met'] else 'missed'})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

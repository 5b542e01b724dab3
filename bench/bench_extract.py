"""Frame-extraction throughput on the synthetic demo set and on the real fixtures.

    .venv/bin/python bench/bench_extract.py [--sizes sft=64,rl=256,bench=128]

Measured side by side in one run: `vlmrl data extract` with every core and with one, against
the reference design's bare single-core decord loop over the same files and frame indices
(target: >= 1.5x). Compare the ratios, not absolute numbers: the machines are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from vlmrl.data.extract import extract_dataset
from vlmrl.data.frames import FrameOptions
from vlmrl.data.synth import SynthSizes, generate

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "real"


def run(name: str, ann: Path, root: Path, out: Path, opts: FrameOptions, workers: int) -> dict:
    t0 = time.perf_counter()
    res = extract_dataset(ann, root, out, opts, workers=workers, progress=False)
    dt = time.perf_counter() - t0
    c = res.manifest["counts"]
    row = {"set": name, "workers": workers, "samples": c["kept"], "rejected": c["rejected"],
           "frames": c["frames"], "seconds": round(dt, 2),
           "frames_per_s": round(c["frames"] / dt, 1), "samples_per_s": round(c["kept"] / dt, 1)}
    print(f"{name:<10} workers={workers}  {c['kept']:>4} samples  {c['frames']:>5} frames  "
          f"{dt:6.2f} s  {row['frames_per_s']:>8.1f} frames/s  {row['samples_per_s']:>7.1f} samples/s")
    return row


def bare_decord(paths: list[Path], opts: FrameOptions) -> float:
    """The reference: one core, decord only, the same files and frame indices, no resize,
    no encoding, no dataset. Returns seconds."""
    import decord

    from vlmrl.data.frames import sample_indices

    t0 = time.perf_counter()
    for path in paths:
        try:
            reader = decord.VideoReader(str(path), num_threads=1)
            indices = sample_indices(len(reader), float(reader.get_avg_fps()), opts)
            reader.get_batch(indices).asnumpy()
        except Exception:  # noqa: BLE001 - the fixtures include files decord cannot read
            continue  # (extraction rejects them too, after trying PyAV)
    return time.perf_counter() - t0


def _videos(ann: Path, root: Path) -> list[Path]:
    rows = json.loads(ann.read_text())
    return [root / r["path"] for r in rows if r.get("data_type", "video") == "video"]


def measure(quick: bool = False, sizes: str | None = None) -> dict:
    """Extraction with every core vs a bare single-core decord loop, on the demo's RL split
    and the real fixtures. Target: >= 1.5x."""
    cores = os.cpu_count() or 1
    sizes = sizes or ("sft=4,rl=64,bench=4" if quick else "sft=32,rl=160,bench=32")
    out: dict = {"cores": cores, "sets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate(tmp / "synth", seed=0, sizes=SynthSizes.parse(sizes), progress=False)
        demo = FrameOptions(min_pixels=3136, max_pixels=12544, frame_format="png")
        sets = [("synthetic", tmp / "synth" / "rl.json", tmp / "synth", demo)]
        if FIXTURES.is_dir():
            ann = tmp / "fixtures.json"
            ann.write_text(json.dumps([
                {"problem_id": p.name, "problem": "?", "data_type": "video", "problem_type": "free-form",
                 "solution": "<answer>x</answer>", "path": p.name} for p in sorted(FIXTURES.iterdir())]))
            sets.append(("fixtures", ann, FIXTURES, FrameOptions()))
        for name, ann, root, opts in sets:
            bare = bare_decord(_videos(ann, root), opts)
            one = run(name, ann, root, tmp / f"{name}-1", opts, 1)
            all_cores = run(name, ann, root, tmp / f"{name}-{cores}", opts, cores)
            out["sets"][name] = {"bare_decord_s": round(bare, 3), "extract_1_worker": one,
                                 "extract_all_cores": all_cores,
                                 "speedup_vs_bare_decord": round(bare / all_cores["seconds"], 3)}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="sft=32,rl=160,bench=32")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    result = measure(sizes=args.sizes)
    for name, r in result["sets"].items():
        print(f"{name}: extract with {result['cores']} workers {r['extract_all_cores']['seconds']:.2f} s, "
              f"1 worker {r['extract_1_worker']['seconds']:.2f} s, bare single-core decord loop "
              f"{r['bare_decord_s']:.2f} s: {r['speedup_vs_bare_decord']:.2f}x (target >= 1.5x)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

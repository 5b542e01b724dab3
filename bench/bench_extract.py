"""Frame-extraction throughput on the synthetic demo set and on the real fixtures.

    .venv/bin/python bench/bench_extract.py [--sizes sft=64,rl=256,bench=128]

Prints frames/s and samples/s for 1 worker and for all cores, measured side by side in
one run (compare the ratio, not absolute numbers: the machines are noisy).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="sft=32,rl=160,bench=32")
    args = p.parse_args()
    cores = os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate(tmp / "synth", seed=0, sizes=SynthSizes.parse(args.sizes), progress=False)
        demo = FrameOptions(min_pixels=3136, max_pixels=12544, frame_format="png")
        for w in (1, cores):
            rows.append(run("synthetic", tmp / "synth" / "rl.json", tmp / "synth", tmp / f"s{w}", demo, w))
        if FIXTURES.is_dir():
            ann = tmp / "fixtures.json"
            ann.write_text(json.dumps([
                {"problem_id": p.name, "problem": "?", "data_type": "video", "problem_type": "free-form",
                 "solution": "<answer>x</answer>", "path": p.name} for p in sorted(FIXTURES.iterdir())]))
            for w in (1, cores):
                rows.append(run("fixtures", ann, FIXTURES, tmp / f"f{w}", FrameOptions(), w))
        else:
            print(f"fixtures not found at {FIXTURES}", file=sys.stderr)
    for name in ("synthetic", "fixtures"):
        sel = [r for r in rows if r["set"] == name]
        if len(sel) == 2:
            print(f"{name}: {cores} workers vs 1: {sel[1]['frames_per_s'] / sel[0]['frames_per_s']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

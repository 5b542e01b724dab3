"""Frame-extraction throughput on the synthetic demo set and on the real fixtures.

    .venv/bin/python bench/bench_extract.py [--sizes sft=32,rl=160,bench=32] [--repeats 4]

Measured side by side in one run: `vlmrl data extract` with every core and with one, against
the reference design's bare single-core decord loop over the same files and frame indices
(target: >= 1.5x). Compare the ratios, not absolute numbers: the machines are noisy.

Each repeat runs the bare loop and then the extraction with every core, back to back; the
figure is the median of the repeats' ratios. The first repeat also pays the process's
one-time start-up (the pool's forkserver importing decord and PyAV), shown apart as the
cold figure; the one-worker extraction runs first, so `datasets` is imported by then.

The bare loop does much less than extraction, so the split is printed too, in CPU seconds
(robust to other load): extraction's steps (hash, container probe, decode with its checks,
PyAV's confirming decode, resize, images, encode, write) next to the bare loop's decode,
and the best ratio those allow with every core busy and no overhead at all.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from vlmrl.data.extract import extract_dataset, load_frame_dataset
from vlmrl.data.frames import FrameOptions
from vlmrl.data.synth import SynthSizes, generate

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "real"
STEPS = ("hash", "probe", "decode", "confirm", "resize", "image", "encode", "rejected", "write")


def run(name: str, ann: Path, root: Path, out: Path, opts: FrameOptions, workers: int,
        quiet: bool = False) -> dict:
    t0 = time.perf_counter()
    res = extract_dataset(ann, root, out, opts, workers=workers, progress=False)
    dt = time.perf_counter() - t0
    c = res.manifest["counts"]
    row = {"set": name, "workers": workers, "samples": c["kept"], "rejected": c["rejected"],
           "frames": c["frames"], "seconds": round(dt, 3),
           "frames_per_s": round(c["frames"] / dt, 1), "samples_per_s": round(c["kept"] / dt, 1),
           "cpu_s": {k: round(v, 4) for k, v in res.cpu_seconds.items()}}
    if not quiet:
        print(f"{name:<10} workers={workers}  {c['kept']:>4} samples  {c['frames']:>5} frames  "
              f"{dt:6.2f} s  {row['frames_per_s']:>8.1f} frames/s  {row['samples_per_s']:>7.1f} samples/s")
    return row


def bare_decord(paths: list[Path], opts: FrameOptions) -> dict:
    """The reference: one core, decord only, the same files and frame indices, no resize,
    no encoding, no dataset. Returns wall and CPU seconds, and what it decoded."""
    import decord

    from vlmrl.data.frames import sample_indices

    indices: dict[str, list[int]] = {}
    pixels = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for path in paths:
        try:
            reader = decord.VideoReader(str(path), num_threads=1)
            idx = sample_indices(len(reader), float(reader.get_avg_fps()), opts)
            frames = reader.get_batch(idx).asnumpy()
        except Exception:  # noqa: BLE001 - the fixtures include files decord cannot read
            continue  # (extraction rejects them too, after trying PyAV)
        indices[path.name] = idx
        pixels += frames.shape[0] * frames.shape[1] * frames.shape[2]
    return {"seconds": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
            "files": len(indices), "frames": sum(map(len, indices.values())), "pixels": pixels,
            "indices": indices}


def _videos(ann: Path, root: Path) -> list[Path]:
    rows = json.loads(ann.read_text())
    return [root / r["path"] for r in rows if r.get("data_type", "video") == "video"]


def _like_for_like(out: Path, bare: dict) -> dict:
    """What extraction stored next to what the bare loop decoded: the same frame indices
    for every file decord decoded in both; the rest named."""
    ds, _ = load_frame_dataset(out)
    cols = ds.select_columns(["path", "data_type", "decoder", "frame_indices", "height", "width"])
    stored = {Path(r["path"]).name: r for r in cols}
    same = [n for n, idx in bare["indices"].items()
            if n in stored and stored[n]["decoder"] == "decord" and list(stored[n]["frame_indices"]) == idx]
    return {
        "videos_same_indices": len(same),
        "bare_only": sorted(n for n in bare["indices"] if n not in same),
        "extraction_only": sorted(n for n, r in stored.items()
                                  if r["data_type"] == "video" and n not in bare["indices"]),
        "images": sum(r["data_type"] == "image" for r in stored.values()),
        "stored_pixels": sum(len(r["frame_indices"]) * r["height"] * r["width"] for r in stored.values()),
    }


def split(bare: dict, one: dict, cores: int) -> dict:
    """Extraction's CPU by step (one worker, so all in one process) against the bare loop's."""
    steps = {k: one["cpu_s"].get(k, 0.0) for k in STEPS if k in one["cpu_s"]}
    total = sum(steps.values())
    return {"bare_decord_cpu_s": round(bare["cpu_s"], 3), "steps_cpu_s": steps,
            "extraction_cpu_s": round(total, 3),
            "times_bare": round(total / bare["cpu_s"], 2),
            # perfect scaling on every core, no start-up, no waiting: the most the ratio can be
            "ceiling": round(cores * bare["cpu_s"] / total, 2)}


def measure(quick: bool = False, sizes: str | None = None, repeats: int | None = None) -> dict:
    """Extraction with every core vs a bare single-core decord loop, on the demo's RL split
    and the real fixtures. Target: >= 1.5x."""
    cores = os.cpu_count() or 1
    sizes = sizes or ("sft=4,rl=64,bench=4" if quick else "sft=32,rl=160,bench=32")
    repeats = repeats or (2 if quick else 4)
    out: dict = {"cores": cores, "repeats": repeats, "sets": {}}
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
            videos = _videos(ann, root)
            bare = bare_decord(videos, opts)
            one = run(name, ann, root, tmp / f"{name}-1", opts, 1)
            pairs = []
            for k in range(repeats):
                b = bare_decord(videos, opts) if k else bare  # the first bare run is the one above
                a = run(name, ann, root, tmp / f"{name}-{cores}-{k}", opts, cores, quiet=k > 0)
                pairs.append((b["seconds"], a["seconds"]))
            ratios = [b / a for b, a in pairs]
            med = round(statistics.median(x for _, x in pairs), 3)
            warm = ratios[1:] or ratios
            out["sets"][name] = {
                "bare_decord_s": round(statistics.median(b for b, _ in pairs), 3),
                "extract_1_worker": one,
                "extract_all_cores": {**a, "seconds": med, "frames_per_s": round(a["frames"] / med, 1),
                                      "samples_per_s": round(a["samples"] / med, 1)},
                "ratios": [round(r, 3) for r in ratios],
                "speedup_vs_bare_decord": round(statistics.median(warm), 3),
                "speedup_cold": round(ratios[0], 3),
                "like_for_like": {"bare_files": bare["files"], "bare_frames": bare["frames"],
                                  "bare_pixels": bare["pixels"],
                                  **_like_for_like(tmp / f"{name}-1", bare)},
                "split": split(bare, one, cores),
            }
    return out


def report(result: dict) -> str:
    lines = []
    for name, r in result["sets"].items():
        s, like = r["split"], r["like_for_like"]
        lines.append(
            f"{name}: extract with {result['cores']} workers {r['extract_all_cores']['seconds']:.2f} s "
            f"(median of {result['repeats']}), 1 worker {r['extract_1_worker']['seconds']:.2f} s, "
            f"bare single-core decord loop {r['bare_decord_s']:.2f} s: "
            f"{r['speedup_vs_bare_decord']:.2f}x (target >= 1.5x; first, cold run: {r['speedup_cold']:.2f}x; "
            f"all: {', '.join(f'{x:.2f}' for x in r['ratios'])})")
        lines.append(
            f"  like for like: {like['videos_same_indices']} videos decoded by both at the same indices; "
            f"bare loop only: {like['bare_only'] or 'none'}; extraction only: "
            f"{like['extraction_only'] or 'none'} (+{like['images']} images); bare loop "
            f"{like['bare_frames']} frames at source size ({like['bare_pixels'] / 1e6:.1f} Mpx), "
            f"extraction stores {r['extract_1_worker']['frames']} ({like['stored_pixels'] / 1e6:.1f} Mpx)")
        steps = ", ".join(f"{k} {v:.3f}" for k, v in s["steps_cpu_s"].items())
        lines.append(
            f"  CPU s, one worker: bare decord loop {s['bare_decord_cpu_s']:.3f}; extraction "
            f"{s['extraction_cpu_s']:.3f} = {s['times_bare']:.2f}x that ({steps}); so with "
            f"{result['cores']} cores and no overhead at most {s['ceiling']:.2f}x")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="sft=32,rl=160,bench=32")
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    result = measure(sizes=args.sizes, repeats=args.repeats)
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

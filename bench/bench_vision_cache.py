"""RL step time with the vision-embedding cache vs without, on the tiny recipe's model.

    .venv/bin/python bench/bench_vision_cache.py [--quick]

The tiny-cpu recipe's RL stage (T-GRPO, G = 8, frozen vision tower, 8 frames of 56x56)
on moving-square videos, same seed, in fresh processes alternating cache off / on. Reports
the median step time of each and their ratio, the seconds spent inside the vision tower,
and whether both runs logged the same losses (they must: the cache changes no result, see
tests/train/test_grpo.py). The tiny model's vision tower is a sliver of its compute, so the
speed-up here is small; docs/performance.md models the Video-R1 7B setting, where the
tower's share is what the cache removes.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import run_one, synthetic_rows  # noqa: E402


def run(quick: bool) -> dict:
    from vlmrl.models import build_tiny_model
    from vlmrl.recipes import load_recipe
    from vlmrl.train.prompts import tokenizer_corpus

    recipe = load_recipe("tiny-cpu")
    rl = recipe.rl
    frames = recipe.frames.train.max_frames
    args = {
        "generations": rl.num_generations, "frames": frames, "size": 56,
        "max_completion_length": rl.max_completion_length, "threads": 1, "cpu": True,
        "steps": 3 if quick else 6, "rows": 16, "freeze_vision": True,
        "rl": {"temporal": rl.temporal, "per_device_train_batch_size": 2 * rl.num_generations,
               "beta": rl.beta, "temperature": rl.temperature, "top_p": rl.top_p,
               "learning_rate": rl.learning_rate, "reward_funcs": ["accuracy", "format"]},
    }
    ctx = mp.get_context("spawn")
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        rows = synthetic_rows(16, frames, 56)
        model_dir = build_tiny_model(Path(tmp) / "model", tokenizer_corpus(rows) * 4,
                                     recipe.model.tiny, seed=0)
        for _ in range(1 if quick else 2):
            for variant, mb in (("off", 0.0), ("on", rl.vision_cache_mb)):
                queue = ctx.Queue()
                child_args = {**args, "rl": {**args["rl"], "vision_cache_mb": mb}}
                proc = ctx.Process(target=run_one, args=(rl.algorithm, str(model_dir),
                                                         child_args, queue))
                proc.start()
                result = queue.get()
                proc.join()
                runs[variant].append(result)
                print(f"cache {variant:<3} median step {result['median_step_s']:.3f} s, "
                      f"vision tower {result['vision_s']:.2f} s of {result['train_s']:.1f} s",
                      flush=True)

    def median(variant: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[variant])

    off, on = median("off", "median_step_s"), median("on", "median_step_s")
    same = all(a["losses"] == runs["off"][0]["losses"] or
               max(abs(x - y) for x, y in zip(a["losses"], runs["off"][0]["losses"], strict=True))
               < 1e-4 for a in runs["on"] + runs["off"])
    return {
        "recipe": "tiny-cpu", "algorithm": rl.algorithm, "G": rl.num_generations,
        "frames": frames, "steps": args["steps"],
        "step_s_uncached": round(off, 4), "step_s_cached": round(on, 4),
        "speedup": round(off / on, 3),
        "vision_share_uncached": round(median("off", "vision_s") / median("off", "train_s"), 4),
        "vision_share_cached": round(median("on", "vision_s") / median("on", "train_s"), 4),
        "same_losses": same,
        "losses": {k: [r["losses"] for r in v] for k, v in runs.items()},
    }


def measure(quick: bool = False) -> dict:
    return run(quick)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    result = run(p.parse_args().quick)
    print(json.dumps({k: v for k, v in result.items() if k != "losses"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Per-step time and peak memory of GRPO vs T-GRPO at the same G on the tiny model.

    .venv/bin/python bench/bench_train.py [--generations 8] [--steps 6] [--repeats 2]

Both algorithms train on the same synthetic video set (moving squares, every prompt a
video, so T-GRPO's extra G/2 shuffled rollouts are always paid) with the same seed. Each
run is a fresh child process (so peak memory is per algorithm); runs alternate
GRPO, T-GRPO, GRPO, ... within one invocation and the ratio of the median step times is
reported (compare ratios, not absolute numbers: machines are noisy). The first step of
each run (warm-up) is excluded. Target: T-GRPO <= 1.25 x GRPO.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

TARGET_RATIO = 1.25


def synthetic_rows(n: int, frames: int, size: int) -> list[dict]:
    import numpy as np
    from PIL import Image

    rows = []
    for i in range(n):
        direction = "right" if i % 2 else "left"
        video = []
        for t in range(frames):
            frame = np.zeros((size, size, 3), dtype=np.uint8)
            span = size - 12
            x = round(t * span / max(frames - 1, 1))
            x = x if direction == "right" else span - x
            frame[size // 3 : size // 3 + 12, x : x + 12] = 255
            video.append(Image.fromarray(frame))
        rows.append(
            {
                "problem_id": f"motion-{i}",
                "problem": "Which way does the square move?",
                "data_type": "video",
                "problem_type": "multiple choice",
                "options": ["A. left", "B. right"],
                "solution": "<answer>B</answer>" if direction == "right" else "<answer>A</answer>",
                "path": f"{i}.mp4",
                "data_source": "bench",
                "process": f"<think>The square moves {direction}.</think>",
                "frames": video,
                "fps": 2.0,
                "frame_indices": list(range(frames)),
                "timestamps": [t / 2 for t in range(frames)],
            }
        )
    return rows


def run_one(algorithm: str, model_dir: str, args: dict, queue: mp.Queue) -> None:
    """Child process: train `steps` steps, report per-step times and peak memory.

    Optional `args` keys (bench_vision_cache): "rl" (RLConfig overrides), "freeze_vision",
    "rows" (prompts in the dataset); the seconds spent in the vision tower are reported.
    """
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback

    from vlmrl.models import load_model
    from vlmrl.models.loading import freeze_vision_tower
    from vlmrl.train.grpo import build_grpo_trainer
    from vlmrl.train.rl_config import RLConfig

    torch.set_num_threads(args["threads"])
    rows = synthetic_rows(args.get("rows", 16), args["frames"], args["size"])
    dataset = Dataset.from_list(rows)

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self._start = 0.0

        def on_step_begin(self, *a, **k):
            self._start = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self._start)

    device = "cuda" if torch.cuda.is_available() and not args["cpu"] else "cpu"
    loaded = load_model(model_dir, device=device)
    g = args["generations"]
    config = RLConfig(**{
        "algorithm": algorithm,
        "num_generations": g,
        "per_device_train_batch_size": g,
        "max_completion_length": args["max_completion_length"],
        "max_steps": args["steps"],
        "learning_rate": 1e-4,
        "beta": 0.04,
        "seed": 0,
        "trainer_kwargs": {"disable_tqdm": True, "use_cpu": device == "cpu",
                           "logging_strategy": "steps", "logging_steps": 1},
        **args.get("rl", {}),
    })
    if args.get("freeze_vision"):
        freeze_vision_tower(loaded.model)
    vision_s = [0.0]
    tower = loaded.model.model.visual
    tower.register_forward_pre_hook(lambda *a: vision_s.append(-time.perf_counter()))
    tower.register_forward_hook(lambda *a: vision_s.append(time.perf_counter()))
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        trainer = build_grpo_trainer(
            loaded.model, loaded.processor, dataset, out, config, callbacks=[timer]
        )
        trainer.remove_callback(PrinterCallback)  # keep the bench output to our own lines
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    result = {
        "algorithm": algorithm,
        "device": device,
        "losses": losses,
        "vision_s": sum(vision_s),
        "train_s": sum(timer.times),
        "step_times": timer.times,
        "median_step_s": statistics.median(timer.times[1:] or timer.times),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if device == "cuda":
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    queue.put(result)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--generations", type=int, default=8, help="G (T-GRPO adds G/2 shuffled rollouts)"
    )
    p.add_argument(
        "--steps", type=int, default=6, help="training steps per run (the first is warm-up)"
    )
    p.add_argument("--repeats", type=int, default=2, help="runs per algorithm, alternating")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=56, help="frame side in pixels")
    p.add_argument("--max-completion-length", type=int, default=48)
    p.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1)))
    p.add_argument("--cpu", action="store_true", help="stay on CPU even when a GPU is present")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p


def main() -> int:
    summary, results = run(vars(parser().parse_args()))
    print(json.dumps(summary))
    ratio = summary["ratio"]
    print(
        f"T-GRPO / GRPO step time: {ratio:.3f} (target <= {TARGET_RATIO}): {'OK' if ratio <= TARGET_RATIO else 'OVER'}"
    )
    return 0


def measure(quick: bool = False) -> dict:
    """The summary of one side-by-side run (quick: one run of each algorithm)."""
    args = vars(parser().parse_args(["--repeats", "1" if quick else "2"]))
    return run(args)[0]


def run(args: dict) -> tuple[dict, list[dict]]:
    from vlmrl.models import TinyModelSpec, build_tiny_model
    from vlmrl.train.prompts import tokenizer_corpus

    ctx = mp.get_context("spawn")
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        rows = synthetic_rows(16, args["frames"], args["size"])
        model_dir = build_tiny_model(
            Path(tmp) / "model", tokenizer_corpus(rows) * 4, TinyModelSpec(), seed=0
        )
        for _ in range(args["repeats"]):
            for algorithm in ("grpo", "t_grpo"):
                queue = ctx.Queue()
                proc = ctx.Process(target=run_one, args=(algorithm, str(model_dir), args, queue))
                proc.start()
                result = queue.get()
                proc.join()
                results.append(result)
                print(
                    f"{algorithm:<7} {result['device']}  median step {result['median_step_s']:.3f} s  "
                    f"steps {[round(t, 3) for t in result['step_times']]}  "
                    f"peak RSS {result['peak_rss_mb']:.0f} MB"
                    + (
                        f"  peak CUDA {result['peak_cuda_mb']:.0f} MB"
                        if "peak_cuda_mb" in result
                        else ""
                    )
                )

    def median_of(algorithm: str, key: str) -> float:
        return statistics.median(r[key] for r in results if r["algorithm"] == algorithm)

    grpo, tgrpo = median_of("grpo", "median_step_s"), median_of("t_grpo", "median_step_s")
    ratio = tgrpo / grpo
    summary = {
        "G": args["generations"],
        "G_shuffled": args["generations"] // 2,
        "grpo_step_s": round(grpo, 4),
        "t_grpo_step_s": round(tgrpo, 4),
        "ratio": round(ratio, 3),
        "target": TARGET_RATIO,
        "grpo_peak_rss_mb": round(median_of("grpo", "peak_rss_mb")),
        "t_grpo_peak_rss_mb": round(median_of("t_grpo", "peak_rss_mb")),
    }
    if any("peak_cuda_mb" in r for r in results):
        summary["grpo_peak_cuda_mb"] = round(median_of("grpo", "peak_cuda_mb"))
        summary["t_grpo_peak_cuda_mb"] = round(median_of("t_grpo", "peak_cuda_mb"))
    if args["json"]:
        args["json"].write_text(json.dumps({"summary": summary, "runs": results}, indent=2))
    return summary, results


if __name__ == "__main__":
    sys.exit(main())

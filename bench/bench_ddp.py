"""GRPO step time with 2 data-parallel processes vs 1, at the same global batch.

    .venv/bin/python bench/bench_ddp.py [--quick]

The tiny model on moving-square videos, GRPO with G = 4, 8 completions per step in all
(one process x 8, or two processes x 4 under `accelerate launch --multi_gpu`, DDP over
gloo on CPU), 32-token completions, one torch thread per process, alternating rounds in
fresh launches. Reports the median step time of each (first step excluded) and the ratio.
On the tiny model a step is mostly per-step overhead (the all-reduce, Python), so the
ratio shows that the path scales at all, not how a 7B model would.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import synthetic_rows  # noqa: E402

GLOBAL_BATCH, G, STEPS = 8, 4, 8


def child(model_dir: str, per_device: int) -> None:
    """One process of a launch: train STEPS steps, rank 0 prints its step times as JSON."""
    from accelerate import PartialState
    from datasets import Dataset
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback

    from vlmrl.models import load_model
    from vlmrl.train.grpo import build_grpo_trainer
    from vlmrl.train.rl_config import RLConfig

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_begin(self, *a, **k):
            self._start = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self._start)

    loaded = load_model(model_dir)
    config = RLConfig(algorithm="grpo", num_generations=G, per_device_train_batch_size=per_device,
                      max_completion_length=32, max_steps=STEPS, learning_rate=1e-4, beta=0.0,
                      seed=0, reward_funcs=["accuracy", "format"],
                      trainer_kwargs={"disable_tqdm": True, "use_cpu": True,
                                      "logging_strategy": "no"})
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        trainer = build_grpo_trainer(loaded.model, loaded.processor,
                                     Dataset.from_list(synthetic_rows(16, 8, 56)), out, config,
                                     callbacks=[timer])
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    state = PartialState()
    if state.is_main_process:
        print("@@RESULT@@" + json.dumps({"processes": state.num_processes, "times": timer.times}),
              flush=True)


def launch(processes: int, model_dir: Path) -> dict:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mode = (["--cpu"] if processes == 1 else
            ["--multi_gpu", "--main_process_ip", "127.0.0.1", "--main_process_port", str(port)])
    command = [sys.executable, "-m", "accelerate.commands.launch", *mode, "--num_processes",
               str(processes), "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", __file__, "--child", "--model", str(model_dir),
               "--per-device", str(GLOBAL_BATCH // processes)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0 or "@@RESULT@@" not in proc.stdout:
        raise RuntimeError(f"{processes}-process launch failed: {proc.stderr[-1500:]}")
    result = json.loads(proc.stdout.rsplit("@@RESULT@@", 1)[1].splitlines()[0])
    if result["processes"] != processes:
        raise RuntimeError(f"asked for {processes} processes, got {result['processes']}")
    return result


def measure(quick: bool = False) -> dict:
    from vlmrl.models import TinyModelSpec, build_tiny_model
    from vlmrl.train.prompts import tokenizer_corpus

    runs: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(Path(tmp) / "model",
                                     tokenizer_corpus(synthetic_rows(16, 8, 56)) * 4,
                                     TinyModelSpec(), seed=0)
        for _ in range(1 if quick else 2):
            for processes in (1, 2):
                times = launch(processes, model_dir)["times"]
                runs[processes].append(statistics.median(times[1:]))
                print(f"{processes} process(es): median step {runs[processes][-1]:.3f} s",
                      flush=True)
    one, two = statistics.median(runs[1]), statistics.median(runs[2])
    return {"global_batch": GLOBAL_BATCH, "G": G, "steps": STEPS, "step_s_1": round(one, 4),
            "step_s_2": round(two, 4), "speedup": round(one / two, 3)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--per-device", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.model, args.per_device)
        return 0
    print(json.dumps(measure(args.quick)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Data wait: the share of SFT and RL step time the trainer spends waiting for its data.

    .venv/bin/python bench/bench_datawait.py [--quick] [--json OUT]

The demo's settings (tiny-cpu recipe: its tiny model, its frames, 8 frames of 56x56 PNG
per video, SFT batch 8, RL batch 64 = 8 prompts x G 8, 64 completion tokens, one torch
thread) on a small synthetic set extracted here. A few SFT steps, then a few RL steps
(the recipe's algorithm, T-GRPO), each in a fresh process, logging every step. The
figure is the trainer's own ``perf/data_wait_fraction`` (vlmrl.train.data_wait: the time
in the dataloader's ``next()`` over the step time, the rollout not counted as data wait),
summed over the steps after the first (warm-up); the first step's share is reported next
to it. SFT also runs once with its data path as it was before `decode_frames` (datasets
decoding each frame into a PIL image), in its own process of the same run, for the
before/after. Target: < 5 % for both.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import sys
import tempfile
from pathlib import Path
from typing import Any

TARGET = 0.05


def run_stage(kind: str, root: str, steps: int, queue: Any) -> None:
    """Child process: `steps` steps of SFT or RL from the base model; the per-step figures."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from transformers.trainer_callback import PrinterCallback

    from vlmrl.data.extract import load_frame_dataset
    from vlmrl.models.loading import freeze_vision_tower, load_model
    from vlmrl.recipes import load_recipe
    from vlmrl.train import data_wait

    recipe = load_recipe("tiny-cpu")
    recipe.model.apply_threads()
    base, out = Path(root) / "base", Path(root) / f"out-{kind}"
    dataset, _ = load_frame_dataset(Path(root) / kind.split("-")[0])
    loaded = load_model(base, dtype=recipe.model.dtype)
    short = {"max_steps": steps, "logging_steps": 1, "save_strategy": "no", "report_to": "none"}
    if kind.startswith("sft"):
        from vlmrl.train.sft import build_sft_trainer

        config = dataclasses.replace(recipe.sft, curriculum=[], **short)
        trainer = build_sft_trainer(loaded.model, loaded.processor, dataset, out, config)
    else:
        from vlmrl.train.grpo import build_grpo_trainer

        config = dataclasses.replace(recipe.rl, **short)
        if config.freeze_vision:
            freeze_vision_tower(loaded.model)
        trainer = build_grpo_trainer(loaded.model, loaded.processor, dataset, out, config)
    if kind == "sft-datasets":  # the data path before: datasets decodes each frame to PIL
        trainer.train_dataset = datasets_path(dataset, config.prompt)
    trainer.remove_callback(PrinterCallback)  # keep the bench output to our own lines
    trainer.train()
    logged = [e for e in trainer.state.log_history if data_wait.FRACTION in e]
    queue.put({
        "kind": kind,
        "wait_s": [e[data_wait.WAIT_SECONDS] for e in logged],
        "step_s": [e[data_wait.STEP_SECONDS] for e in logged],
    })


def datasets_path(frames: Any, prompt: Any) -> Any:
    """SFT examples as `sft_dataset` built them before it used `decode_frames`: datasets
    decodes every column of the row, one PIL image per frame, then `sft_example`."""
    from vlmrl.train.sft import sft_example

    def transform(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        n = len(next(iter(batch.values())))
        examples = [sft_example({k: v[i] for k, v in batch.items()}, prompt) for i in range(n)]
        return {k: [ex[k] for ex in examples] for k in ("prompt", "completion", "images")}

    return frames.with_transform(transform)


def _figures(result: dict[str, Any]) -> dict[str, Any]:
    wait, step = result["wait_s"], result["step_s"]
    if len(step) < 2:
        raise RuntimeError(f"{result['kind']}: {len(step)} step(s) logged, need 2 or more")
    figures = {
        "steps": len(step),
        "data_wait_fraction": round(sum(wait[1:]) / sum(step[1:]), 4),  # warm-up left out
        "first_step_fraction": round(wait[0] / step[0], 4),
        "data_wait_ms_per_step": round(1e3 * sum(wait[1:]) / len(wait[1:]), 2),
        "step_ms": round(1e3 * sum(step[1:]) / len(step[1:]), 1),
    }
    return figures


def _run_child(ctx: Any, kind: str, root: Path, steps: int) -> dict[str, Any]:
    queue = ctx.Queue()
    proc = ctx.Process(target=run_stage, args=(kind, str(root), steps, queue))
    proc.start()
    while True:
        try:
            result = queue.get(timeout=5)
            break
        except Exception:  # queue.Empty: the child is still training, or has died
            if not proc.is_alive():
                raise RuntimeError(f"the {kind} run died (exit code {proc.exitcode})") from None
    proc.join()
    return result


def measure(quick: bool = False) -> dict[str, Any]:
    """SFT and RL data-wait fractions on the demo's settings (quick: fewer steps)."""
    from vlmrl.data.extract import extract_dataset
    from vlmrl.data.synth import generate
    from vlmrl.recipes import load_recipe
    from vlmrl.stages.training import build_base_model

    recipe = load_recipe("tiny-cpu")
    sizes = recipe.data.synthetic.sizes if recipe.data.synthetic else None
    assert sizes is not None, "tiny-cpu is the synthetic demo"
    # SFT steps are short (~0.15 s): many of them, over a few epochs of a small split
    steps = {"sft": 16 if quick else 48, "rl": 2 if quick else 6}
    sft_rows = (4 if quick else 8) * recipe.sft.per_device_train_batch_size
    rl_rows = steps["rl"] * recipe.rl.per_device_train_batch_size // recipe.rl.num_generations
    ctx = mp.get_context("spawn")
    stages: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate(root / "synth", seed=0, progress=False,
                 sizes=dataclasses.replace(sizes, sft=sft_rows, rl=rl_rows, bench=0))
        for split in ("sft", "rl"):
            extract_dataset(root / "synth" / f"{split}.json", root / "synth", root / split,
                            recipe.frames.train, workers=1, progress=False)
        build_base_model(recipe, root / "base", [root / "sft", root / "rl"])
        for kind in ("sft-datasets", "sft", "rl"):
            stages[kind] = _figures(_run_child(ctx, kind, root, steps[kind.split("-")[0]]))
    before = stages.pop("sft-datasets")
    stages["sft"]["data_wait_fraction_datasets_path"] = before["data_wait_fraction"]
    stages["sft"]["data_wait_ms_per_step_datasets_path"] = before["data_wait_ms_per_step"]
    worst = max(s["data_wait_fraction"] for s in stages.values())
    return {"measure": "data wait in SFT / RL steps", "target": f"< {TARGET:.0%}",
            "fraction": worst, "met": worst < TARGET, "stages": stages}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer steps")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()
    result = measure(args.quick)
    for kind, s in result["stages"].items():
        print(f"{kind:<4} data wait {s['data_wait_fraction']:7.2%} of step time "
              f"({s['data_wait_ms_per_step']:.1f} ms of {s['step_ms']:.0f} ms per step, "
              f"{s['steps'] - 1} steps after warm-up; first step {s['first_step_fraction']:.2%})"
              f"  target < {TARGET:.0%}")
        if "data_wait_fraction_datasets_path" in s:
            print(f"     before decode_frames (datasets' PIL frames): "
                  f"{s['data_wait_fraction_datasets_path']:.2%} "
                  f"({s['data_wait_ms_per_step_datasets_path']:.1f} ms per step)")
    print(f"worst: {result['fraction']:.2%} ({'met' if result['met'] else 'missed'})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

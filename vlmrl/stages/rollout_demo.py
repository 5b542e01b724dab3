"""The tiny recipe's rollout inputs, built locally: for rollout tests and benchmarks.

The same stages `make run` uses (synthetic set -> frame dataset -> base checkpoint), cut
to a few rows: a Qwen2.5-VL-architecture checkpoint with the recipe's model spec (head
dim 32: vLLM's CPU attention has no kernel for the default spec's 16) and frame-dataset
rows with the recipe's frames (fps, frame count, pixel budget).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class RolloutDemo:
    model_dir: Path
    rows: list[dict[str, Any]]  # frame-dataset rows (frames as PIL images)
    recipe: Any  # vlmrl.recipes.Recipe


def build_rollout_demo(
    workdir: str | os.PathLike[str],
    num_rows: int = 8,
    recipe: str = "tiny-cpu",
    seed: int = 0,
    video_fraction: float = 1.0,
) -> RolloutDemo:
    """`num_rows` RL rows of the recipe's synthetic set (`video_fraction` of them videos, the
    rest images) and its base checkpoint, under workdir."""
    from vlmrl.data.extract import extract_dataset, load_frame_dataset
    from vlmrl.data.synth import SynthSizes, generate
    from vlmrl.recipes import load_recipe
    from vlmrl.stages.training import build_base_model

    workdir = Path(workdir)
    loaded = load_recipe(recipe)
    sizes = SynthSizes(sft=num_rows, rl=num_rows, bench=num_rows,
                       video_fraction=video_fraction)
    generate(workdir / "synth", seed=seed, sizes=sizes, progress=False)
    frames = workdir / "frames_rl"
    extract_dataset(workdir / "synth" / "rl.json", workdir / "synth", frames,
                    loaded.frames.train, workers=1, progress=False, overwrite=True)
    model_dir = build_base_model(loaded, workdir / "base", [frames], overwrite=True)
    dataset, _ = load_frame_dataset(frames)
    return RolloutDemo(Path(model_dir), [dataset[i] for i in range(len(dataset))], loaded)

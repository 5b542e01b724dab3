"""Before RL, what RL has to work with: the SFT model's sampled pass@1 and pass@k on the
RL split's multiple-choice questions (the signal GRPO has to work with)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vlmrl.recipes import Recipe
from vlmrl.stages.evaluation import recipe_generation

HEADROOM_FILE = "headroom.json"


def rl_headroom(recipe: Recipe, sft_dir: str | os.PathLike[str], rl_frames_dir: str | os.PathLike[str],
                out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """pass@1 / pass@k (recipe.eval.headroom_*) of the SFT checkpoint, sampled at the RL
    temperature on the RL split's first multiple-choice questions; written to headroom.json."""
    from vlmrl.eval.benchmarks import load_benchmark
    from vlmrl.eval.passk import pass_at_k
    from vlmrl.eval.runner import model_answerer

    e = recipe.eval
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {"k": e.headroom_k, "n": 0}
    if e.headroom_questions > 0:
        recipe.model.apply_threads()
        dataset = load_benchmark(rl_frames_dir, name="rl-split").dataset
        mc = [i for i, t in enumerate(dataset["problem_type"]) if t == "multiple choice"]
        rows = [dataset[i] for i in mc[: e.headroom_questions]]
        answer = model_answerer(sft_dir, recipe_generation(recipe), dtype=recipe.model.dtype,
                                prompt=recipe.rl.prompt)
        figures = pass_at_k(answer, rows, k=e.headroom_k, temperature=recipe.rl.temperature,
                            batch_size=e.batch_size, seed=recipe.seed)
    (out / HEADROOM_FILE).write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")
    return figures

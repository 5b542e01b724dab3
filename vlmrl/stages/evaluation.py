"""Evaluation the way a recipe says (vlmrl.eval.evaluate takes explicit settings)."""

from __future__ import annotations

import os
from typing import Any

from vlmrl.eval.benchmarks import LoadedBenchmark
from vlmrl.eval.runner import EvalSettings, GenerationSettings, evaluate, model_answerer
from vlmrl.recipes import Recipe


def recipe_generation(recipe: Recipe) -> GenerationSettings:
    """The generation settings of a recipe's ``eval`` section (seeded by the recipe seed)."""
    return recipe.eval.generation(recipe.seed)


def evaluate_checkpoint(recipe: Recipe, checkpoint: str | os.PathLike[str], benchmark: LoadedBenchmark,
                        out_dir: str | os.PathLike[str], stage: str | None = None,
                        progress: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Evaluate a checkpoint the way `recipe` says: its generation settings, its prompt (the
    one the checkpoint was trained with), its dtype and thread count; shuffled control on, and
    one sampled answer per question at the RL temperature next to the greedy one."""
    recipe.model.apply_threads()
    gen = recipe_generation(recipe)
    answer = model_answerer(checkpoint, gen, dtype=recipe.model.dtype, prompt=recipe.rl.prompt)
    # the untrained base model never answers in format: its sampled answers would only cost time
    settings = EvalSettings(generation=gen, sampled=stage != "base",
                            sampled_temperature=recipe.rl.temperature)
    return evaluate(benchmark, answer, out_dir, settings, checkpoint=checkpoint,
                    stage=stage, progress=progress, overwrite=overwrite)

"""Evaluation the way a recipe says (vlmrl.eval.evaluate takes explicit settings)."""

from __future__ import annotations

import os
from typing import Any

from vlmrl.eval.benchmarks import LoadedBenchmark
from vlmrl.eval.runner import (
    EvalSettings,
    GenerationSettings,
    check_report_dir_all,
    evaluate,
    launched,
    model_answerer,
    process_device,
)
from vlmrl.recipes import Recipe


def recipe_generation(recipe: Recipe) -> GenerationSettings:
    """The generation settings of a recipe's ``eval`` section (seeded by the recipe seed)."""
    return recipe.eval.generation(recipe.seed)


def evaluate_checkpoint(recipe: Recipe, checkpoint: str | os.PathLike[str], benchmark: LoadedBenchmark,
                        out_dir: str | os.PathLike[str], stage: str | None = None,
                        progress: bool = False, overwrite: bool = False,
                        limit: int | None = None) -> dict[str, Any]:
    """Evaluate a checkpoint the way `recipe` says: its generation settings, its prompt (the
    one the checkpoint was trained with), its dtype and thread count; shuffled control on, and
    one sampled answer per question at the RL temperature next to the greedy one. `limit`:
    only the first N questions (smoke runs).

    In a launched group (torchrun / accelerate launch) every process evaluates its share of
    the batches on its own device (the CPU when the recipe's model.device says so), and the
    main process writes the one report (vlmrl.eval.runner.evaluate)."""
    # joining a CPU group sets torch's thread count when OMP_NUM_THREADS is unset: the recipe's after it
    device = process_device(cpu=recipe.model.device == "cpu") if launched() else recipe.model.device
    recipe.model.apply_threads()
    check_report_dir_all(out_dir, overwrite)  # before the model is loaded, in every process
    gen = recipe_generation(recipe)
    answer = model_answerer(checkpoint, gen, device=device, dtype=recipe.model.dtype, prompt=recipe.rl.prompt)
    # the untrained base model never answers in format: its sampled answers would only cost time
    settings = EvalSettings(generation=gen, sampled=stage != "base",
                            sampled_temperature=recipe.rl.temperature, limit=limit)
    return evaluate(benchmark, answer, out_dir, settings, checkpoint=checkpoint,
                    stage=stage, progress=progress, overwrite=overwrite)

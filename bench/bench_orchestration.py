"""Orchestration overhead: the same pipeline steps through Dagster vs called directly.

    .venv/bin/python bench/bench_orchestration.py [--recipe tiny-cpu] [--short]

Runs the recipe's whole pipeline twice in one process, side by side: once by calling the
vlmrl functions the assets wrap (synth, extract, base model, SFT, RL, three evaluations),
once by materializing the Dagster jobs in a temporary instance (with MLflow tracking,
checks and the asset index). Prints both wall times and the ratio; the target is an
overhead under 10 %. `--short` uses a shortened recipe (a quick look, less meaningful).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

SHORT = {
    "data": {"synthetic": {"sizes": {"sft": 16, "rl": 32, "bench": 16}}},
    "sft": {"num_train_epochs": 1, "save_strategy": "no", "curriculum": []},
    "rl": {"max_steps": 4, "save_strategy": "no"},
    "eval": {"max_new_tokens": 16},
}


def direct(recipe, root: Path) -> float:
    from vlmrl.data.extract import extract_dataset
    from vlmrl.data.synth import generate
    from vlmrl.eval import (
        EvalSettings,
        evaluate,
        load_benchmark,
        model_answerer,
    )
    from vlmrl.stages.training import build_base_model, train_rl, train_sft

    t0 = time.perf_counter()
    raw = root / "raw"
    generate(raw, seed=recipe.data.synthetic.seed, sizes=recipe.data.synthetic.sizes, progress=False)
    for split, opts in (("sft", recipe.frames.train), ("rl", recipe.frames.train), ("bench", recipe.frames.eval)):
        extract_dataset(raw / f"{split}.json", raw, root / "frames" / split, opts, progress=False)
    base = build_base_model(recipe, root / "ckpt" / "base", [root / "frames" / "sft", root / "frames" / "rl"])
    sft = train_sft(recipe, base, root / "frames" / "sft", root / "ckpt" / "sft")
    rl = train_rl(recipe, sft, root / "frames" / "rl", root / "ckpt" / "rl")
    gen = recipe.eval.generation(recipe.seed)
    recipe.model.apply_threads()
    bench = load_benchmark(root / "frames" / "bench", name="synthetic")
    for stage, ckpt in (("base", base), ("sft", sft), ("rl", rl)):
        evaluate(bench, model_answerer(ckpt, gen, prompt=recipe.rl.prompt), root / "reports" / stage,
                 EvalSettings(generation=gen), checkpoint=ckpt, stage=stage, progress=False)
    return time.perf_counter() - t0


def through_dagster(recipe_name: str, overrides: dict, root: Path) -> float:
    from dagster import DagsterInstance

    from orchestration.definitions import defs  # imported before timing, like `direct`'s modules
    from orchestration.resources import ArtifactStore, RecipeResource
    from orchestration.tracking import MlflowTracker

    home = root / "dagster_home"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    resources = {"artifacts": ArtifactStore(root=str(root / "artifacts")),
                 "recipe": RecipeResource(recipe=recipe_name, overrides=json.dumps(overrides)),
                 "tracker": MlflowTracker(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")}
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    resources["tracker"].client().search_experiments()  # a store is created once, not per run
    with DagsterInstance.from_config(str(home)) as instance:
        t0 = time.perf_counter()
        assert defs.resolve_job_def("pipeline").execute_in_process(
            run_config=quiet, instance=instance, resources=resources).success
        assert defs.resolve_job_def("benchmarks").execute_in_process(
            run_config=quiet, instance=instance, resources=resources, partition_key="synthetic").success
        return time.perf_counter() - t0


def measure(quick: bool = False, recipe_name: str = "tiny-cpu", short: bool = True,
            repeats: int | None = None) -> dict:
    """Direct vs through Dagster, alternating pairs; the minimum of each (quick: one pair).
    `make bench` uses the short recipe (the whole tiny recipe twice would take 25 minutes;
    run this script without --short for it). Target: overhead < 10 % of wall time."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from vlmrl.recipes import load_recipe

    repeats = (1 if quick else 2) if repeats is None else repeats
    overrides = SHORT if short else {}
    recipe = load_recipe(recipe_name, overrides)
    # Alternate the two so that load from other processes hits both alike; report the minimum.
    directs, dagsters = [], []
    for i in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            directs.append(direct(recipe, Path(tmp) / "direct"))
            dagsters.append(through_dagster(recipe_name, overrides, Path(tmp) / "dagster"))
        print(f"pair {i + 1}: direct {directs[-1]:7.1f} s   through Dagster {dagsters[-1]:7.1f} s", flush=True)
    t_direct, t_dagster = min(directs), min(dagsters)
    return {"recipe": recipe_name, "short": short, "direct_s": round(t_direct, 2),
            "dagster_s": round(t_dagster, 2), "overhead": round(t_dagster / t_direct - 1, 4),
            "fixed_cost_s": round(t_dagster - t_direct, 2), "target": 0.10}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="tiny-cpu")
    p.add_argument("--short", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=2, help="alternating direct/Dagster pairs")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    r = measure(recipe_name=args.recipe, short=args.short, repeats=args.repeats)
    print(f"best: direct {r['direct_s']:.1f} s, Dagster {r['dagster_s']:.1f} s; overhead "
          f"{100 * r['overhead']:+.1f} % (target < 10 %)")
    if args.json:
        args.json.write_text(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Orchestration overhead: the same pipeline steps through Dagster vs called directly.

    .venv/bin/python bench/bench_orchestration.py [--recipe tiny-cpu] [--short]

Runs the recipe's whole pipeline twice in one process, side by side: once by calling the
vlmrl functions the assets wrap, as they call them (synth, extract, base model, SFT, the RL
headroom, RL, its training curves, three `evaluate_checkpoint`s, the stage comparison),
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


def direct(recipe, root: Path, parts: dict[str, float] | None = None) -> float:
    """The library calls the assets make, in their order, in this process (nothing of
    Dagster or MLflow: no tracking, no checks, no asset index, no content hashes). The
    frames are read once for the three evaluations (each asset reads them again).
    ``parts`` gets the seconds of the calls that only some assets make around their main one
    (headroom, curves, comparison), to show what a bare pipeline would leave out."""
    from vlmrl.data.extract import extract_dataset
    from vlmrl.data.synth import generate
    from vlmrl.eval import load_benchmark, plot_stages, read_report, stage_table
    from vlmrl.eval.summary import stage_summary
    from vlmrl.stages.evaluation import evaluate_checkpoint
    from vlmrl.stages.headroom import rl_headroom
    from vlmrl.stages.training import build_base_model, train_rl, train_sft
    from vlmrl.train.diagnostics import write_training_curves

    parts = {} if parts is None else parts

    def timed(name, fn, *args, **kwargs):
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        parts[name] = parts.get(name, 0.0) + time.perf_counter() - t
        return out

    t0 = time.perf_counter()
    raw, frames, ckpt = root / "raw", root / "frames", root / "ckpt"
    generate(raw, seed=recipe.data.synthetic.seed, sizes=recipe.data.synthetic.sizes, progress=False)
    for split, opts in (("sft", recipe.frames.train), ("rl", recipe.frames.train), ("bench", recipe.frames.eval)):
        extract_dataset(raw / f"{split}.json", raw, frames / split, opts, progress=False)
    base = build_base_model(recipe, ckpt / "base", [frames / "sft", frames / "rl"])
    sft = train_sft(recipe, base, frames / "sft", ckpt / "sft")
    rl_dir = root / "reports" / "rl_training"  # rl_checkpoint: headroom before, curves after
    timed("rl_headroom", rl_headroom, recipe, sft, frames / "rl", rl_dir)
    rl = train_rl(recipe, sft, frames / "rl", ckpt / "rl")
    timed("training_curves", write_training_curves, rl, rl_dir)
    bench = load_benchmark(frames / "bench", name="synthetic")
    reports = {}
    for stage, path in (("base", base), ("sft", sft), ("rl", rl)):
        reports[stage] = root / "reports" / "synthetic" / stage
        evaluate_checkpoint(recipe, path, bench, reports[stage], stage=stage)
    out = root / "reports" / "synthetic" / "comparison"  # benchmark_report

    def compare():
        out.mkdir(parents=True, exist_ok=True)
        (out / "stages.md").write_text(stage_table(reports))
        plot_stages(reports, out / "stages.png")
        summary = stage_summary({s: read_report(p) for s, p in reports.items()})
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")

    timed("comparison", compare)
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
    # The first run in the process also pays the lazy imports (trl, matplotlib, decoders...):
    # Dagster goes first in odd pairs (so one pair alone overstates the overhead, never hides
    # it) and second in even ones (so each side has a run after the other).
    # CPU seconds of this process too (torch's and MLflow's threads included, extraction's
    # worker processes not, alike on both sides): less moved by other load than wall time.
    directs, dagsters, parts, cpu = [], [], [], {"direct": [], "dagster": []}

    def run_dagster(tmp: str) -> None:
        c0 = time.process_time()
        dagsters.append(through_dagster(recipe_name, overrides, Path(tmp) / "dagster"))
        cpu["dagster"].append(time.process_time() - c0)

    for i in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            if i % 2 == 0:
                run_dagster(tmp)
            parts.append({})
            c0 = time.process_time()
            directs.append(direct(recipe, Path(tmp) / "direct", parts[-1]))
            cpu["direct"].append(time.process_time() - c0)
            if i % 2 == 1:
                run_dagster(tmp)
        print(f"pair {i + 1}: direct {directs[-1]:7.1f} s ({cpu['direct'][-1]:.1f} s CPU)   through "
              f"Dagster {dagsters[-1]:7.1f} s ({cpu['dagster'][-1]:.1f} s CPU)   (direct's "
              f"{', '.join(f'{k} {v:.1f} s' for k, v in parts[-1].items())})", flush=True)
    t_direct, t_dagster = min(directs), min(dagsters)
    c_direct, c_dagster = min(cpu["direct"]), min(cpu["dagster"])
    return {"recipe": recipe_name, "short": short, "direct_s": round(t_direct, 2),
            "dagster_s": round(t_dagster, 2), "overhead": round(t_dagster / t_direct - 1, 4),
            "fixed_cost_s": round(t_dagster - t_direct, 2), "target": 0.10,
            "direct_cpu_s": round(c_direct, 2), "dagster_cpu_s": round(c_dagster, 2),
            "overhead_cpu": round(c_dagster / c_direct - 1, 4),
            # in the fastest direct run: library calls some assets make besides their main one
            "direct_parts_s": {k: round(v, 2) for k, v in parts[directs.index(t_direct)].items()}}


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
          f"{100 * r['overhead']:+.1f} % (target < 10 %); CPU: direct {r['direct_cpu_s']:.1f} s, "
          f"Dagster {r['dagster_cpu_s']:.1f} s, {100 * r['overhead_cpu']:+.1f} %")
    if args.json:
        args.json.write_text(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

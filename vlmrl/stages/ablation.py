"""RL ablation: the same budget with different algorithms and seeds, from one SFT checkpoint.

The question it answers (issue 7): does T-GRPO's temporal bonus make the model rely more
on temporal order than plain GRPO does, and does Reg-GRPO differ from GRPO? Every run
starts from the same SFT checkpoint, trains on the same RL split with the recipe's RL
settings (steps, G, batch, learning rate) and only the algorithm and seed changed, then
is evaluated on the same held-out benchmark with the shuffled-frame control.

Figures per variant: MC accuracy and temporal sensitivity (ordered minus shuffled
accuracy on the video questions) per seed, each with its bootstrap interval over
questions, and pooled over seeds (per-question scores averaged over the seeds, then
bootstrapped over questions). Each comparison (e.g. t_grpo vs grpo) is a paired
bootstrap of the per-question difference of those seed averages.

Runs are independent processes (``workers``), one torch thread each by the recipe, and
resumable: a finished run (its report present) is not redone; an interrupted one resumes
from its trainer checkpoints.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmrl.atomic import atomic_write_text
from vlmrl.data.records import family_of
from vlmrl.eval.metrics import Estimate, bootstrap_delta, bootstrap_mean
from vlmrl.eval.report import PREDICTIONS, pct, read_predictions

VARIANTS: dict[str, dict[str, Any]] = {
    "grpo": {"algorithm": "grpo"},
    "t_grpo": {"algorithm": "t_grpo"},
    "reg_grpo": {"algorithm": "reg_grpo"},
}
COMPARISONS: tuple[tuple[str, str], ...] = (("grpo", "t_grpo"), ("grpo", "reg_grpo"))
REPORT_DIR = "report"


@dataclass
class AblationPlan:
    """What to run: recipe (a Recipe), inputs, variants x seeds, and where to write.

    variants: names from VARIANTS (each an `rl` override of the recipe).
    seeds: recipe seeds; each reseeds the RL trainer (sampling, shuffles), not the data.
    workers: runs in parallel (processes).
    """

    recipe: Any
    sft_dir: Path
    rl_frames: Path
    bench_frames: Path
    out_dir: Path
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    workers: int = 1
    benchmark_name: str = "synthetic"

    def __post_init__(self) -> None:
        unknown = sorted(set(self.variants) - set(VARIANTS))
        if unknown:
            raise ValueError(f"unknown ablation variants {unknown}; known: {', '.join(VARIANTS)}")
        if not self.seeds:
            raise ValueError("an ablation needs at least one seed")
        for name in ("sft_dir", "rl_frames", "bench_frames", "out_dir"):
            setattr(self, name, Path(getattr(self, name)).resolve())

    def run_dir(self, variant: str, seed: int) -> Path:
        return self.out_dir / variant / f"seed-{seed}"


def _run_one(recipe_dict: dict[str, Any], variant: str, seed: int, sft_dir: str, rl_frames: str,
             bench_frames: str, bench_name: str, run_dir: str) -> str:
    """Train one variant / seed and evaluate it (in a worker process)."""
    from vlmrl.eval.benchmarks import load_benchmark
    from vlmrl.recipes import Recipe
    from vlmrl.stages.evaluation import evaluate_checkpoint
    from vlmrl.stages.training import train_rl

    recipe = Recipe.from_dict(recipe_dict).override({"seed": seed, "rl": VARIANTS[variant]})
    out = Path(run_dir)
    checkpoint = out / "checkpoint"
    if not (checkpoint / "lineage.json").is_file():
        train_rl(recipe, sft_dir, rl_frames, checkpoint, resume=True)
    bench = load_benchmark(bench_frames, name=bench_name)
    evaluate_checkpoint(recipe, checkpoint, bench, out / REPORT_DIR, stage=f"{variant}/seed-{seed}",
                        overwrite=True)  # the ablation owns its run directories
    return str(out)


def run_ablation(plan: AblationPlan) -> dict[str, Any]:
    """Run every variant x seed not done yet, then write ablation.json / .md / .png."""
    from tqdm.auto import tqdm

    todo = [(v, s) for v in plan.variants for s in plan.seeds
            if not (plan.run_dir(v, s) / REPORT_DIR / "report.json").is_file()]
    args = [(plan.recipe.to_dict(), v, s, str(plan.sft_dir), str(plan.rl_frames),
             str(plan.bench_frames), plan.benchmark_name, str(plan.run_dir(v, s))) for v, s in todo]
    bar = tqdm(total=len(args), desc="ablation runs", unit="run")
    if plan.workers <= 1:
        for a in args:
            _run_one(*a)
            bar.update()
    else:  # spawn: fresh interpreters, no forked torch / OpenMP state
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(plan.workers, mp_context=ctx) as pool:
            for future in [pool.submit(_run_one, *a) for a in args]:
                future.result()
                bar.update()
    bar.close()
    return write_ablation(plan)


# ---------------------------------------------------------------- aggregation


@dataclass
class RunScores:
    """Per-question scores of one evaluated run."""

    ordered: dict[str, float]
    shuffled: dict[str, float]
    problem_type: dict[str, str]
    family: dict[str, str]

    @classmethod
    def read(cls, report_dir: Path) -> RunScores:
        ordered, shuffled, ptype, family = {}, {}, {}, {}
        for r in read_predictions(report_dir):
            (shuffled if r["shuffled"] else ordered)[r["problem_id"]] = float(r["score"])
            ptype[r["problem_id"]] = r["problem_type"]
            family[r["problem_id"]] = family_of(r.get("data_source"))
        return cls(ordered, shuffled, ptype, family)

    def mc(self) -> dict[str, float]:
        return {k: v for k, v in self.ordered.items() if self.problem_type[k] == "multiple choice"}

    def sensitivity(self) -> dict[str, float]:
        """Ordered minus shuffled score per video question (those with a shuffled answer)."""
        return {k: self.ordered[k] - s for k, s in self.shuffled.items() if k in self.ordered}


def _seed_average(maps: Sequence[Mapping[str, float]]) -> dict[str, float]:
    common = set(maps[0]).intersection(*maps[1:])
    return {k: sum(m[k] for m in maps) / len(maps) for k in sorted(common)}


def _est(values: Mapping[str, float]) -> dict[str, Any]:
    return bootstrap_mean(list(values.values())).as_dict()


def _variant_summary(runs: dict[int, RunScores]) -> tuple[dict[str, Any], dict[str, float],
                                                          dict[str, float]]:
    """The variant's figures, and its seed-averaged MC and sensitivity scores per question."""
    seeds = sorted(runs)
    mc = _seed_average([runs[s].mc() for s in seeds])
    sens = _seed_average([runs[s].sensitivity() for s in seeds])
    ordered = _seed_average([runs[s].ordered for s in seeds])
    family = runs[seeds[0]].family
    by_family: dict[str, list[str]] = defaultdict(list)
    for k in ordered:
        by_family[family[k]].append(k)
    families: dict[str, dict[str, Any]] = {}
    for fam, keys in sorted(by_family.items()):
        sen = {k: v for k, v in sens.items() if family[k] == fam}
        families[fam] = {"accuracy": _est({k: ordered[k] for k in keys}),
                         "temporal_sensitivity": _est(sen) if sen else None}
    summary = {
        "seeds": seeds,
        "per_seed": {
            str(s): {"mc_accuracy": _est(runs[s].mc()), "temporal_sensitivity": _est(runs[s].sensitivity())}
            for s in seeds
        },
        "mc_accuracy": _est(mc),
        "temporal_sensitivity": _est(sens),
        "by_family": families,
    }
    return summary, mc, sens


def _paired(a: Mapping[str, float], b: Mapping[str, float]) -> dict[str, Any]:
    keys = sorted(set(a) & set(b))
    est: Estimate = bootstrap_delta([a[k] for k in keys], [b[k] for k in keys], paired=True)
    out = est.as_dict()
    out["significant"] = not math.isnan(est.low) and (est.low > 0 or est.high < 0)
    return out


def summarize_ablation(plan: AblationPlan) -> dict[str, Any]:
    """Aggregate every finished run under plan.out_dir (missing runs are listed, not guessed)."""
    variants: dict[str, Any] = {}
    scores: dict[str, tuple[dict[str, float], dict[str, float]]] = {}  # MC, sensitivity
    missing = []
    for v in plan.variants:
        runs = {}
        for s in plan.seeds:
            report = plan.run_dir(v, s) / REPORT_DIR
            if (report / PREDICTIONS).is_file():
                runs[s] = RunScores.read(report)
            else:
                missing.append(f"{v}/seed-{s}")
        if runs:
            variants[v], *scores[v] = _variant_summary(runs)
    comparisons = []
    for a, b in COMPARISONS:
        if a in variants and b in variants:
            comparisons.append({
                "a": a, "b": b,
                "mc_accuracy_delta": _paired(scores[a][0], scores[b][0]),
                "temporal_sensitivity_delta": _paired(scores[a][1], scores[b][1]),
            })
    r = plan.recipe.rl
    return {
        "recipe": plan.recipe.name,
        "recipe_sha256": plan.recipe.sha256,
        "sft_checkpoint": str(plan.sft_dir),
        "rl_frames": str(plan.rl_frames),
        "benchmark": str(plan.bench_frames),
        "budget": {"max_steps": r.max_steps, "num_generations": r.num_generations,
                   "per_device_train_batch_size": r.per_device_train_batch_size,
                   "learning_rate": r.learning_rate},
        "seeds": plan.seeds,
        "variants": variants,
        "comparisons": comparisons,
        "missing": missing,
    }


def ablation_markdown(summary: Mapping[str, Any]) -> str:
    b = summary["budget"]
    lines = [
        f"# RL ablation ({summary['recipe']})",
        "",
        f"From `{summary['sft_checkpoint']}`; each run: {b['max_steps']} steps, G = {b['num_generations']}, "
        f"batch {b['per_device_train_batch_size']}, lr {b['learning_rate']}; seeds {summary['seeds']}.",
        "Percentages with 95 % bootstrap intervals over questions; pooled = per-question scores "
        "averaged over seeds.",
        "",
        "| variant | MC accuracy (pooled) | temporal sensitivity (pooled) | per seed: MC / sensitivity |",
        "|---|---|---|---|",
    ]
    for name, v in summary["variants"].items():
        seeds = "; ".join(f"s{s}: {pct(x['mc_accuracy'])} / {pct(x['temporal_sensitivity'])}"
                          for s, x in v["per_seed"].items())
        lines.append(f"| {name} | {pct(v['mc_accuracy'])} | {pct(v['temporal_sensitivity'])} | {seeds} |")
    if summary["comparisons"]:
        lines += ["", "| comparison | MC accuracy difference | temporal sensitivity difference |", "|---|---|---|"]
        for c in summary["comparisons"]:
            def cell(d: Mapping[str, Any]) -> str:
                return pct(d) + (" (significant)" if d["significant"] else "")
            lines.append(f"| {c['b']} - {c['a']} | {cell(c['mc_accuracy_delta'])} | "
                         f"{cell(c['temporal_sensitivity_delta'])} |")
    families = sorted({f for v in summary["variants"].values() for f in v["by_family"]})
    if families:
        lines += ["", "Per family, pooled accuracy / temporal sensitivity:", "",
                  "| variant | " + " | ".join(families) + " |", "|---" * (len(families) + 1) + "|"]
        for name, v in summary["variants"].items():
            cells = []
            for f in families:
                x = v["by_family"].get(f)
                cells.append("–" if x is None else
                             f"{pct(x['accuracy'])} / {pct(x['temporal_sensitivity'])}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if summary["missing"]:
        lines += ["", f"Missing runs: {', '.join(summary['missing'])}"]
    return "\n".join(lines) + "\n"


def plot_ablation(summary: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Bars with 95 % intervals: pooled MC accuracy and temporal sensitivity per variant,
    seeds as dots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary["variants"])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, title in ((axes[0], "mc_accuracy", "MC accuracy"),
                           (axes[1], "temporal_sensitivity", "temporal sensitivity")):
        means = [100 * summary["variants"][n][key]["mean"] for n in names]
        lows = [100 * summary["variants"][n][key]["ci"][0] for n in names]
        highs = [100 * summary["variants"][n][key]["ci"][1] for n in names]
        err = [[m - lo for m, lo in zip(means, lows, strict=True)],
               [hi - m for m, hi in zip(means, highs, strict=True)]]
        ax.bar(names, means, yerr=err, capsize=4, color="#7aa6c2")
        for i, n in enumerate(names):
            dots = [100 * x[key]["mean"] for x in summary["variants"][n]["per_seed"].values()]
            ax.scatter([i] * len(dots), dots, color="#1f3b4d", zorder=3, s=14)
        ax.set_title(f"{title} (%, pooled, 95 % CI)")
        ax.axhline(0, color="black", linewidth=0.5)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_ablation(plan: AblationPlan) -> dict[str, Any]:
    summary = summarize_ablation(plan)
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(plan.out_dir / "ablation.json", json.dumps(summary, indent=1) + "\n")
    atomic_write_text(plan.out_dir / "ablation.md", ablation_markdown(summary))
    if summary["variants"]:
        plot_ablation(summary, plan.out_dir / "ablation.png")
    return summary

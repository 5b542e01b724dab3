"""Scoring predictions and summarizing them with bootstrap confidence intervals.

Per-sample scores come from the reward library (one answer-extraction implementation
for training and evaluation). Evaluation uses each problem type's benchmark metric,
which for a few types differs from the training reward: regression is scored by
VSI-Bench's mean relative accuracy, grounding by IoU > 0.5 (VLM-R1's accuracy),
detection by R_IoU alone (0..1) and open-vocabulary detection by COCO mAP.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlmrl.rewards import score_sample
from vlmrl.rewards.text import format_ok

EVAL_METRIC: dict[str, str | None] = {
    "regression": "mra",
    "grounding": "iou",
    "detection": "iou",
    "ovd": "od_map",
}
GROUNDING_THRESHOLD = 0.5
BOOTSTRAP_SAMPLES = 2000


def eval_score(problem_type: str, completion: str, solution: str) -> float:
    """The benchmark score of one prediction, in [0, 1]."""
    score = score_sample(problem_type, completion, solution, metric=EVAL_METRIC.get(problem_type))
    if problem_type == "grounding":
        return float(score > GROUNDING_THRESHOLD)
    return float(score)


@dataclass(frozen=True)
class Estimate:
    """A mean with its 95 % percentile-bootstrap interval over samples."""

    mean: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "ci": [self.low, self.high], "n": self.n}

    def __str__(self) -> str:
        return f"{100 * self.mean:.1f} [{100 * self.low:.1f}, {100 * self.high:.1f}] (n={self.n})"


def bootstrap_mean(values: Sequence[float], *, seed: int = 0,
                   samples: int = BOOTSTRAP_SAMPLES) -> Estimate:
    """Mean and 95 % percentile-bootstrap interval (NaN interval for fewer than two values)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    mean = float(x.mean())
    if x.size < 2:
        return Estimate(mean, float("nan"), float("nan"), int(x.size))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(samples, x.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return Estimate(mean, float(low), float(high), int(x.size))


def bootstrap_delta(a: Sequence[float], b: Sequence[float], *, paired: bool, seed: int = 0,
                    samples: int = BOOTSTRAP_SAMPLES) -> Estimate:
    """mean(b) - mean(a) with a 95 % interval; ``paired`` resamples aligned pairs together."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if paired:
        if x.shape != y.shape:
            raise ValueError("paired bootstrap needs aligned samples of equal length")
        return bootstrap_mean(y - x, seed=seed, samples=samples)
    if x.size < 2 or y.size < 2:
        return Estimate(float(y.mean() - x.mean()) if x.size and y.size else float("nan"),
                        float("nan"), float("nan"), int(min(x.size, y.size)))
    rng = np.random.default_rng(seed)
    dx = x[rng.integers(0, x.size, size=(samples, x.size))].mean(axis=1)
    dy = y[rng.integers(0, y.size, size=(samples, y.size))].mean(axis=1)
    low, high = np.percentile(dy - dx, [2.5, 97.5])
    return Estimate(float(y.mean() - x.mean()), float(low), float(high), int(min(x.size, y.size)))


def score_predictions(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ``score`` and ``format_ok`` to prediction rows (problem_type, completion, solution)."""
    out = []
    for row in rows:
        completion = row["completion"]
        out.append({**row, "score": eval_score(row["problem_type"], completion, row["solution"]),
                    "format_ok": bool(format_ok(completion))})
    return out


def group_estimates(rows: Sequence[dict[str, Any]], key: Callable[[dict[str, Any]], str],
                    value: str = "score", seed: int = 0) -> dict[str, dict[str, Any]]:
    """Bootstrap estimates of ``value`` per group (sorted by group name)."""
    groups: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        groups[key(row)].append(float(row[value]))
    return {name: bootstrap_mean(vals, seed=seed).as_dict() for name, vals in sorted(groups.items())}


def chance_level(rows: Sequence[dict[str, Any]]) -> float | None:
    """Expected multiple-choice accuracy of uniform guessing over each question's options."""
    mc = [1.0 / len(r["options"]) for r in rows if r["problem_type"] == "multiple choice" and r.get("options")]
    return float(np.mean(mc)) if mc else None


def summarize(rows: Sequence[dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    """Overall, per problem type, per data source and multiple-choice figures of scored rows."""
    mc = [r for r in rows if r["problem_type"] == "multiple choice"]
    return {
        "n": len(rows),
        "accuracy": bootstrap_mean([r["score"] for r in rows], seed=seed).as_dict(),
        "format_compliance": bootstrap_mean([float(r["format_ok"]) for r in rows], seed=seed).as_dict(),
        "mc_accuracy": bootstrap_mean([r["score"] for r in mc], seed=seed).as_dict(),
        "chance": chance_level(rows),
        "by_problem_type": group_estimates(rows, lambda r: r["problem_type"], seed=seed),
        "by_data_source": group_estimates(rows, lambda r: r.get("data_source") or "unknown", seed=seed),
    }


def temporal_sensitivity(ordered: Sequence[dict[str, Any]], shuffled: Sequence[dict[str, Any]],
                         seed: int = 0) -> dict[str, dict[str, Any]]:
    """Accuracy on ordered minus shuffled frames, per problem type and overall (video rows).

    Paired by problem_id: each question is answered once on ordered and once on shuffled
    frames, so the interval is a paired bootstrap of the per-question difference.
    """
    by_id = {r["problem_id"]: r for r in shuffled}
    pairs = [(o, by_id[o["problem_id"]]) for o in ordered
             if o["problem_id"] in by_id and o.get("data_type") == "video"]
    groups: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for o, s in pairs:
        groups[o["problem_type"]].append((o["score"], s["score"]))
        groups["all"].append((o["score"], s["score"]))
    out = {}
    for name, vals in sorted(groups.items()):
        a = [v[0] for v in vals]
        b = [v[1] for v in vals]
        out[name] = bootstrap_delta(b, a, paired=True, seed=seed).as_dict()
    return out

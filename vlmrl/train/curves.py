"""RL training curves from a trainer's log history: per-reward means, the share of prompt
groups with no learning signal (all rewards equal: zero advantage), T-GRPO's p and p~."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ZERO_ADVANTAGE = "frac_reward_zero_std"  # TRL: share of groups whose rewards are all equal
FAMILY_PREFIX = "accuracy_by_family/"  # VideoGRPOTrainer: the accuracy reward per data family


def training_curves(log_history: Sequence[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """{series: [(step, value)]} for every reward mean, the accuracy per data family, the
    zero-advantage fraction and T-GRPO's ordered / shuffled accuracies, in step order."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for log in log_history:
        for key, value in log.items():
            name = None
            if key.startswith("rewards/") and key.endswith("/mean"):
                name = key[len("rewards/") : -len("/mean")]
            elif key.startswith(FAMILY_PREFIX):  # the accuracy reward per data family
                name = "accuracy: " + key[len(FAMILY_PREFIX):]
            elif key in (ZERO_ADVANTAGE, "temporal/p", "temporal/p_shuffled"):
                name = key
            if name is not None and isinstance(value, int | float) and "step" in log:
                curves.setdefault(name, []).append((int(log["step"]), float(value)))
    return curves


def plot_training_curves(log_history: Sequence[dict[str, Any]], path: str | os.PathLike[str],
                         title: str = "RL training") -> Path:
    """Two panels: reward means per reward function; zero-advantage fraction and p / p~."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = training_curves(log_history)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=120)
    for name, points in curves.items():
        axis = right if name in (ZERO_ADVANTAGE, "temporal/p", "temporal/p_shuffled") else left
        label = {ZERO_ADVANTAGE: "zero-advantage groups", "temporal/p": "p (ordered)",
                 "temporal/p_shuffled": "p~ (shuffled)"}.get(name, name)
        axis.plot(*zip(*points, strict=True), marker=".", label=label)
    left.set_title("mean training reward per function")
    right.set_title("signal")
    for axis in (left, right):
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)

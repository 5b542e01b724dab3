"""T-GRPO helpers: which shuffled-frame rollouts to add, and the per-group temporal bonus.

The bonus rule itself is `vlmrl.rewards.shaping.temporal_bonus` (shared with evaluation
and documented there); this module plans the extra rollouts and applies the rule group by
group on the trainer's reward tensors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vlmrl.rewards.shaping import temporal_bonus


@dataclass(frozen=True)
class ShuffledRollout:
    """One extra rollout: row `row` of local group `group`, frames shown in `order`."""

    group: int
    row: int
    order: tuple[int, ...]


def non_identity_permutation(n: int, generator: torch.Generator) -> tuple[int, ...] | None:
    """A uniformly random permutation of range(n) other than the identity (None if n < 2)."""
    if n < 2:
        return None
    while True:
        order = tuple(torch.randperm(n, generator=generator).tolist())
        if order != tuple(range(n)):
            return order


def plan_shuffled_rollouts(
    rows: Sequence[Mapping[str, Any]],
    group_size: int,
    num_shuffled: int,
    generator: torch.Generator,
) -> list[ShuffledRollout]:
    """G~ shuffled rollouts per video group (one frame order per group), none for images."""
    plan: list[ShuffledRollout] = []
    for group, start in enumerate(range(0, len(rows), group_size)):
        row = rows[start]
        if row["data_type"] != "video":
            continue
        order = non_identity_permutation(len(row["frames"]), generator)
        if order is None:
            continue  # a one-frame "video" has no order to break
        plan.extend(
            ShuffledRollout(group, start + k % group_size, order) for k in range(num_shuffled)
        )
    return plan


def shuffled_accuracy_table(
    plan: Sequence[ShuffledRollout], accuracy: Sequence[float], num_groups: int, num_shuffled: int
) -> torch.Tensor:
    """[num_groups, G~] accuracies of the shuffled rollouts, NaN where a group has none."""
    table = torch.full((num_groups, num_shuffled), math.nan)
    filled = [0] * num_groups
    for rollout, acc in zip(plan, accuracy, strict=True):
        table[rollout.group, filled[rollout.group]] = 0.0 if acc is None else float(acc)
        filled[rollout.group] += 1
    return table


@dataclass
class TemporalStats:
    bonus: torch.Tensor  # [N] per ordered completion; NaN for groups without shuffled rollouts
    p: list[float]  # per video group
    p_shuffled: list[float]
    applied: list[bool]  # p >= mu * p~ held
    rewarded: list[bool]  # some ordered completion actually got the bonus


def apply_temporal_bonus(
    ordered_accuracy: torch.Tensor,
    shuffled_table: torch.Tensor,
    group_size: int,
    alpha: float,
    mu: float,
    correct_threshold: float,
) -> TemporalStats:
    """Per-group temporal bonus for all ordered completions (rows in group order)."""
    acc = torch.nan_to_num(ordered_accuracy.float().cpu(), nan=0.0).view(-1, group_size)
    bonus = torch.full(acc.shape, math.nan)
    stats = TemporalStats(bonus=bonus, p=[], p_shuffled=[], applied=[], rewarded=[])
    for g in range(acc.size(0)):
        shuffled = shuffled_table[g]
        shuffled = shuffled[~torch.isnan(shuffled)].tolist()
        if not shuffled:
            continue  # image prompt (or no usable frame order): not applicable
        result = temporal_bonus(acc[g].tolist(), shuffled, alpha, mu, correct_threshold)
        bonus[g] = torch.tensor(result.bonus)
        stats.p.append(result.p)
        stats.p_shuffled.append(float(result.p_shuffled))
        stats.applied.append(result.applied)
        stats.rewarded.append(any(b > 0 for b in result.bonus))
    stats.bonus = bonus.view(-1)
    return stats

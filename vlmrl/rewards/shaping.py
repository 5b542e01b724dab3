"""Shaping terms: per-completion length rewards and group-level bonuses (T-GRPO temporal, Video-R1 length).

The group-level terms need a whole prompt group (and, for the temporal one, the shuffled-frame
rollouts), so they are pure functions over a group's accuracies and lengths that the trainer calls
in ``_calculate_rewards``; they are not TRL reward functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def cosine_length_scale(
    length: int,
    correct: bool,
    max_length: int = 1024,
    min_value_correct: float = 0.5,
    max_value_correct: float = 1.0,
    min_value_wrong: float = -0.5,
    max_value_wrong: float = 0.0,
) -> float:
    """Cosine length reward (Yeo et al. 2025, as in VLM-R1) with the length clamped to ``max_length``.

    With t = (1 - cos(pi * min(L, max_length) / max_length)) / 2, a correct answer gets
    max_value_correct -> min_value_correct as t goes 0 -> 1 (brevity rewarded), a wrong one
    min_value_wrong -> max_value_wrong (thinking longer penalised less). Corrections to the
    reference: ``correct`` is the real correctness (the reference forces it to 1) and L is clamped
    (the reference's reward is periodic past max_length).

    >>> cosine_length_scale(0, True), cosine_length_scale(1024, True), cosine_length_scale(4096, False)
    (1.0, 0.5, 0.0)
    """
    t = (1.0 - math.cos(math.pi * min(max(length, 0), max_length) / max_length)) / 2
    if correct:
        return max_value_correct + (min_value_correct - max_value_correct) * t
    return min_value_wrong + (max_value_wrong - min_value_wrong) * t


def overlong_penalty(length: int, max_completion_length: int, soft_punish_cache: int) -> float:
    """DAPO soft overlong punishment: 0 up to L_max - L_c, then linear down to -1 at L_max, -1 beyond.

    >>> [overlong_penalty(n, 100, 20) for n in (80, 90, 100, 101)]
    [0.0, -0.5, -1.0, -1.0]
    """
    start = max_completion_length - soft_punish_cache
    if length <= start:
        return 0.0
    if length <= max_completion_length:
        return (start - length) / soft_punish_cache
    return -1.0


def _finite(values: Sequence[float], name: str) -> list[float]:
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        out = [math.nan]
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"{name} must be finite numbers, got {list(values)!r}")
    return out


@dataclass(frozen=True)
class TemporalBonus:
    """Result of :func:`temporal_bonus`: the bonus per ordered completion and what to log."""

    bonus: list[float]
    #: Mean accuracy of the ordered completions (p).
    p: float
    #: Mean accuracy of the shuffled-frame completions (p~); None without shuffled rollouts.
    p_shuffled: float | None
    #: Whether p >= mu * p~ held, i.e. correct ordered completions got alpha.
    applied: bool


def temporal_bonus(
    ordered_acc: Sequence[float],
    shuffled_acc: Sequence[float],
    alpha: float = 0.3,
    mu: float = 1.0,
    correct_threshold: float = 0.1,
) -> TemporalBonus:
    """T-GRPO temporal reward for one prompt group.

    p and p~ are the mean accuracies of the ordered and shuffled-frame completions of this group
    (the reference pools them over the whole batch). If p >= mu * p~, every ordered completion with
    accuracy > ``correct_threshold`` gets ``alpha``. Without shuffled completions (an image prompt,
    or G~ = 0) there is no temporal evidence and no bonus.

    >>> r = temporal_bonus([1, 0, 0.5, 1], [1, 0])
    >>> r.bonus, r.p, r.p_shuffled, r.applied
    ([0.3, 0.0, 0.3, 0.3], 0.625, 0.5, True)
    """
    ordered = _finite(ordered_acc, "ordered_acc")
    shuffled = _finite(shuffled_acc, "shuffled_acc")
    p = sum(ordered) / len(ordered) if ordered else 0.0
    if not shuffled:
        return TemporalBonus([0.0] * len(ordered), p, None, False)
    p_shuffled = sum(shuffled) / len(shuffled)
    applied = p >= mu * p_shuffled
    bonus = [alpha if applied and a > correct_threshold else 0.0 for a in ordered]
    return TemporalBonus(bonus, p, p_shuffled, applied)


def length_bonus(
    acc: Sequence[float],
    lengths: Sequence[int],
    l_min: int = 320,
    l_max: int = 512,
    omega: float = 0.2,
    min_correct: int = 2,
    correct_threshold: float = 0.1,
) -> list[float]:
    """Video-R1 length reward for one prompt group.

    Only if at least ``min_correct`` completions are correct (accuracy > ``correct_threshold``, as
    the reference's mask), each correct completion whose token length lies in [l_min, l_max]
    gets ``omega``.

    >>> length_bonus([1, 1, 0, 1], [400, 100, 400, 512])
    [0.2, 0.0, 0.0, 0.2]
    """
    values = _finite(acc, "acc")
    if len(values) != len(lengths):
        raise ValueError(f"acc and lengths differ in size: {len(values)} != {len(lengths)}")
    correct = [a > correct_threshold for a in values]
    if sum(correct) < min_correct:
        return [0.0] * len(values)
    return [
        omega if ok and l_min <= n <= l_max else 0.0 for ok, n in zip(correct, lengths, strict=True)
    ]

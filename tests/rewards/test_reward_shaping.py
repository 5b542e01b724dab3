"""Length rewards (cosine, DAPO overlong) and the group-level temporal and length bonuses."""

import math

import pytest

from vlmrl.rewards.shaping import (
    cosine_length_scale,
    length_bonus,
    overlong_penalty,
    temporal_bonus,
)


def test_cosine_length_scale_endpoints_and_midpoint():
    assert cosine_length_scale(0, True) == 1.0
    assert cosine_length_scale(512, True) == pytest.approx(0.75)  # t = 1/2
    assert cosine_length_scale(1024, True) == pytest.approx(0.5)
    assert cosine_length_scale(0, False) == -0.5
    assert cosine_length_scale(512, False) == pytest.approx(-0.25)
    assert cosine_length_scale(1024, False) == pytest.approx(0.0)
    t = (1 - math.cos(math.pi * 256 / 1024)) / 2
    assert cosine_length_scale(256, True) == pytest.approx(1 - 0.5 * t)


def test_cosine_length_is_clamped_not_periodic():
    # Defect fixed: past max_length the reference cosine comes back up (periodic).
    for length in (1025, 1536, 2048, 10_000):
        assert cosine_length_scale(length, True) == pytest.approx(0.5)
        assert cosine_length_scale(length, False) == pytest.approx(0.0)


def test_cosine_length_is_monotone():
    correct = [cosine_length_scale(n, True) for n in range(0, 1100, 50)]
    wrong = [cosine_length_scale(n, False) for n in range(0, 1100, 50)]
    assert correct == sorted(correct, reverse=True)
    assert wrong == sorted(wrong)
    assert min(correct) >= max(wrong)  # a correct answer always beats a wrong one


def test_cosine_length_custom_values():
    assert cosine_length_scale(
        100, True, max_length=100, min_value_correct=0.2, max_value_correct=2.0
    ) == pytest.approx(0.2)
    assert (
        cosine_length_scale(0, False, max_length=100, min_value_wrong=-2.0, max_value_wrong=-1.0)
        == -2.0
    )


def test_overlong_penalty():
    # L_max = 768, L_c = 128: free up to 640, then linear to -1 at 768, -1 beyond.
    assert overlong_penalty(0, 768, 128) == 0.0
    assert overlong_penalty(640, 768, 128) == 0.0
    assert overlong_penalty(641, 768, 128) == pytest.approx(-1 / 128)
    assert overlong_penalty(704, 768, 128) == pytest.approx(-0.5)
    assert overlong_penalty(768, 768, 128) == pytest.approx(-1.0)
    assert overlong_penalty(769, 768, 128) == -1.0


def test_temporal_bonus_applies_to_correct_ordered_completions():
    result = temporal_bonus([1.0, 0.0, 0.5, 0.1, 0.11], [1.0, 0.0, 0.0, 0.0])
    assert result.p == pytest.approx(0.342)
    assert result.p_shuffled == 0.25
    assert result.applied
    # accuracy > 0.1 counts as correct (partial credit); exactly 0.1 does not.
    assert result.bonus == [0.3, 0.0, 0.3, 0.0, 0.3]


def test_temporal_bonus_withheld_when_shuffled_frames_do_as_well():
    result = temporal_bonus([1.0, 0.0], [1.0, 1.0])
    assert not result.applied
    assert result.bonus == [0.0, 0.0]


def test_temporal_bonus_boundary_p_equals_mu_times_p_shuffled():
    # p = 0.5, p~ = 0.5, mu = 1: p >= mu * p~ holds.
    assert temporal_bonus([1.0, 0.0], [0.0, 1.0]).applied
    # mu = 0.8 (the reference): p = 0.4 = 0.8 * 0.5.
    result = temporal_bonus([1, 1, 0, 0, 0], [1, 0], mu=0.8)
    assert result.applied and result.bonus == [0.3, 0.3, 0.0, 0.0, 0.0]
    # Just below the boundary.
    assert not temporal_bonus([1, 1, 0, 0, 0], [1, 0], mu=0.81).applied


def test_temporal_bonus_without_shuffled_rollouts():
    result = temporal_bonus([1.0, 1.0, 0.0], [])
    assert result.bonus == [0.0, 0.0, 0.0]
    assert result.p_shuffled is None and not result.applied
    assert result.p == pytest.approx(2 / 3)


def test_temporal_bonus_parameters_and_edge_cases():
    result = temporal_bonus([1.0, 0.6], [0.0], alpha=0.5, correct_threshold=0.7)
    assert result.bonus == [0.5, 0.0]
    empty = temporal_bonus([], [1.0])
    assert empty.bonus == [] and empty.p == 0.0
    with pytest.raises(ValueError, match="finite"):
        temporal_bonus([float("nan")], [1.0])
    with pytest.raises(ValueError, match="finite"):
        temporal_bonus([1.0], [None])  # type: ignore[list-item]


def test_length_bonus():
    # Two correct: each correct completion in [320, 512] gets 0.2; boundaries inclusive.
    assert length_bonus([1, 1, 1, 0, 1], [320, 512, 513, 400, 100]) == [0.2, 0.2, 0.0, 0.0, 0.0]
    # Only one correct completion: no bonus at all.
    assert length_bonus([1, 0, 0], [400, 400, 400]) == [0.0, 0.0, 0.0]
    # Partial credit above the threshold counts as correct.
    assert length_bonus([0.5, 0.2, 0.1], [400, 400, 400]) == [0.2, 0.2, 0.0]
    assert length_bonus([1, 1], [10, 20], l_min=0, l_max=15, omega=1.0) == [1.0, 0.0]
    assert length_bonus([1, 1, 1], [400] * 3, min_correct=4) == [0.0] * 3
    assert length_bonus([], []) == []
    with pytest.raises(ValueError, match="differ"):
        length_bonus([1, 1], [400])

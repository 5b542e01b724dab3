"""Reward library: Video-R1, Visual-RFT and VLM-R1 rewards as TRL reward functions.

- :mod:`~vlmrl.rewards.answers`: answer extraction and parsing (shared with evaluation).
- :mod:`~vlmrl.rewards.text`, :mod:`~vlmrl.rewards.detection`, :mod:`~vlmrl.rewards.ovd`:
  per-sample scores; :mod:`~vlmrl.rewards.boxes`: IoU and matching.
- :mod:`~vlmrl.rewards.accuracy`: :func:`score_sample`, accuracy by problem type.
- :mod:`~vlmrl.rewards.shaping`: length rewards and group-level bonuses (temporal, length).
- :mod:`~vlmrl.rewards.registry`: the TRL reward functions, :data:`REWARDS`, :func:`get_reward`.
"""

from vlmrl.data.records import PROBLEM_TYPES
from vlmrl.rewards.accuracy import METRICS, check_solution, score_sample
from vlmrl.rewards.answers import (
    completion_text,
    extract_answer,
    parse_box,
    parse_choice,
    parse_detection,
    parse_number,
    parse_ovd,
    solution_answer,
)
from vlmrl.rewards.registry import REWARD_RANGES, REWARDS, BoundReward, get_reward, reward_params
from vlmrl.rewards.shaping import TemporalBonus, length_bonus, temporal_bonus
from vlmrl.rewards.text import mean_relative_accuracy

__all__ = [
    "METRICS",
    "PROBLEM_TYPES",
    "REWARDS",
    "REWARD_RANGES",
    "BoundReward",
    "TemporalBonus",
    "check_solution",
    "completion_text",
    "extract_answer",
    "get_reward",
    "length_bonus",
    "mean_relative_accuracy",
    "parse_box",
    "parse_choice",
    "parse_detection",
    "parse_number",
    "parse_ovd",
    "reward_params",
    "score_sample",
    "solution_answer",
    "temporal_bonus",
]

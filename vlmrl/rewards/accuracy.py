"""Accuracy by problem type: one entry point, :func:`score_sample`, for rewards and evaluation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vlmrl.data.records import PROBLEM_TYPES
from vlmrl.rewards import detection, ovd, text
from vlmrl.rewards.answers import _CLOSE, _OPEN, completion_text, extract_answer, solution_answer

Scorer = Callable[[str, str], float]

#: Scorers per problem type; the first metric of each type is its default.
METRICS: dict[str, dict[str, Scorer]] = {
    "multiple choice": {"exact": text.multiple_choice},
    "numerical": {"exact": text.numerical},
    "OCR": {"wer": text.ocr},
    "free-form": {"rouge": text.free_form},
    "regression": {"relative": text.regression, "mra": text.mra},
    "classification": {"cls": text.classification},
    "grounding": {"iou": detection.grounding_iou},
    "detection": {
        "iou_confidence": detection.iou_confidence,
        "iou": detection.detection_iou,
        "confidence": detection.detection_confidence,
    },
    "ovd": {
        "od_length": ovd.od_length,
        "od_map": ovd.od_map,
        "od_ap50": ovd.od_ap50,
        "od_weighted": ovd.od_weighted,
    },
}
assert tuple(METRICS) == PROBLEM_TYPES

#: Upper bound of each type's default metric (detection adds R_IoU and R_conf); the rest is 1.
MAX_SCORE: dict[str, float] = {"detection": 2.0}

# Visual-RFT repairs truncated box lists, so a truncated (unclosed) answer is still read.
_UNCLOSED_OK = frozenset({"detection"})


def check_problem_type(problem_type: Any) -> str:
    """Return ``problem_type`` if it is one of :data:`PROBLEM_TYPES`, else raise ``ValueError``."""
    if problem_type not in METRICS:
        raise ValueError(f"unknown problem_type {problem_type!r}; valid: {list(PROBLEM_TYPES)}")
    return problem_type


def check_metric(problem_type: str, metric: str | None) -> Scorer:
    """The scorer of ``metric`` (default: the type's first) or a ``ValueError`` naming the choices."""
    metrics = METRICS[check_problem_type(problem_type)]
    if metric is None:
        return next(iter(metrics.values()))
    if metric not in metrics:
        raise ValueError(f"unknown metric {metric!r} for {problem_type!r}; valid: {list(metrics)}")
    return metrics[metric]


def check_solution(problem_type: str, solution: Any) -> str:
    """The answer of a ground-truth ``solution``, once every metric of ``problem_type`` has read it.

    Runs the same solution parsers the rewards and evaluation run (each scorer parses its ground
    truth before looking at the answer), so data that would raise inside RL or evaluation fails
    here, at load time. A solution also needs exactly one ``<answer>`` block: the rewards read the
    first one, so a second one would be silently ignored. Raises ``ValueError`` with the reason.

    >>> check_solution("numerical", "<answer>1,000</answer>")
    '1,000'
    """
    scorers = METRICS[check_problem_type(problem_type)]
    answer = solution_answer(solution)
    if solution.count(_OPEN) > 1 or solution.count(_CLOSE) > 1:
        raise ValueError(f"solution has more than one {_OPEN} tag: {solution[:200]!r}")
    for scorer in scorers.values():
        scorer("", answer)  # an empty answer scores 0 after the solution has been parsed
    return answer


def score_sample(
    problem_type: str, completion: Any, solution: str, metric: str | None = None
) -> float:
    """Accuracy of one completion (text or conversation) against its ``<answer>`` solution.

    No ``<answer>`` tag in the completion scores 0. ``metric`` selects a variant where a type has
    several (regression: ``relative`` | ``mra``; detection: ``iou_confidence`` | ``iou`` |
    ``confidence``; ovd: ``od_length`` | ``od_map`` | ``od_ap50`` | ``od_weighted``).

    >>> score_sample("multiple choice", "<think>...</think><answer>B.</answer>", "<answer>B</answer>")
    1.0
    >>> score_sample("regression", "<answer>10.6</answer>", "<answer>10</answer>", metric="mra")
    0.9
    """
    scorer = check_metric(problem_type, metric)
    answer = extract_answer(
        completion_text(completion), allow_unclosed=problem_type in _UNCLOSED_OK
    )
    # Every scorer gives 0 for "" and still parses the solution, so malformed data never hides.
    return scorer(answer or "", solution_answer(solution))

"""TRL reward functions and their registry.

Every function here follows TRL's convention, ``fn(completions, **columns) -> list[float | None]``,
so it plugs into ``trl.GRPOTrainer`` unchanged: columns (``solution``, ``problem_type``,
``completion_ids``, ...) are lists aligned with ``completions``, unused columns are ignored, and
``None`` means "does not apply to this sample". Configuration parameters are keyword-only; bind
them with :func:`get_reward`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

from vlmrl.rewards import text
from vlmrl.rewards.accuracy import MAX_SCORE, check_metric, check_problem_type, score_sample
from vlmrl.rewards.answers import completion_text
from vlmrl.rewards.shaping import cosine_length_scale, overlong_penalty

RewardFn = Callable[..., list[float | None]]


def _column(values: Any, n: int, name: str) -> Sequence[Any]:
    if values is None:
        raise ValueError(f"this reward needs a {name!r} column (a list aligned with completions)")
    if isinstance(values, str | bytes) or not hasattr(values, "__len__") or len(values) != n:
        raise ValueError(
            f"column {name!r} must be a list of {n} values (one per completion), got {values!r}"
        )
    return values


def _score(
    completions: Sequence[Any],
    solution: Any,
    problem_type: Any,
    only: str | None = None,
    metrics: dict[str, str] | None = None,
) -> list[float | None]:
    """score_sample per completion; with ``only``, None for samples of another problem type."""
    n = len(completions)
    if n == 0:
        return []
    solutions = _column(solution, n, "solution")
    if problem_type is None and only is None:
        raise ValueError(
            "this reward needs a 'problem_type' column (a list aligned with completions)"
        )
    types = [only] * n if problem_type is None else _column(problem_type, n, "problem_type")
    metrics = metrics or {}
    out: list[float | None] = []
    for completion, sol, ptype in zip(completions, solutions, types, strict=True):
        if only is not None and ptype != only:
            check_problem_type(ptype)
            out.append(None)
        else:
            out.append(score_sample(ptype, completion, sol, metrics.get(ptype)))
    return out


def _lengths(n: int, completion_ids: Any, completion_length: Any) -> list[int]:
    if completion_ids is not None:
        return [len(ids) for ids in _column(completion_ids, n, "completion_ids")]
    if completion_length is not None:
        return [int(v) for v in _column(completion_length, n, "completion_length")]
    raise ValueError(
        "this reward needs completion lengths: 'completion_ids' (TRL passes it) or a 'completion_length' column"
    )


def format_reward(completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
    """1 if a completion is ``<think>...</think>`` then ``<answer>...</answer>`` (each tag once), else 0.

    >>> format_reward(["<think>look</think> <answer>B</answer>", "<answer>B</answer>"])
    [1.0, 0.0]
    """
    return [float(text.format_ok(completion_text(c))) for c in completions]


def accuracy_reward(
    completions: Sequence[Any],
    solution: Sequence[str] | None = None,
    problem_type: Sequence[str] | None = None,
    *,
    ovd_metric: str = "od_length",
    regression_metric: str = "relative",
    **kwargs: Any,
) -> list[float | None]:
    """Accuracy by ``problem_type`` (0..1; detection R_IoU + R_conf is 0..2); no answer tag scores 0.

    multiple choice, numerical, OCR, free-form, regression (Video-R1 rules), classification
    (Visual-RFT CLS), grounding (REC IoU), detection (Visual-RFT R_IoU + R_conf), ovd (VLM-R1,
    ``ovd_metric``: od_length | od_map | od_ap50 | od_weighted). ``regression_metric``: relative
    (1 - relative error) | mra.

    >>> accuracy_reward(
    ...     ["<answer>(B) dog</answer>", "<answer>3.14</answer>", "no tags"],
    ...     solution=["<answer>B</answer>", "<answer>3.140</answer>", "<answer>A</answer>"],
    ...     problem_type=["multiple choice", "numerical", "multiple choice"],
    ... )
    [1.0, 1.0, 0.0]
    """
    check_metric("ovd", ovd_metric)
    check_metric("regression", regression_metric)
    metrics = {"ovd": ovd_metric, "regression": regression_metric}
    return _score(completions, solution, problem_type, metrics=metrics)


def iou_confidence_reward(
    completions: Sequence[Any], solution: Any = None, problem_type: Any = None, **kwargs: Any
) -> list[float | None]:
    """Visual-RFT detection reward R_IoU + R_conf in [0, 2]; None for non-detection samples.

    >>> iou_confidence_reward(
    ...     ['<answer>[{"Position": [0, 0, 10, 10], "Confidence": 0.9}]</answer>', "<answer>No Objects</answer>"],
    ...     solution=["<answer>[{'Position': [0, 0, 10, 10]}]</answer>", "<answer>No Objects</answer>"],
    ... )
    [1.9, 2.0]
    """
    return _score(completions, solution, problem_type, "detection")


def detection_iou_reward(
    completions: Sequence[Any], solution: Any = None, problem_type: Any = None, **kwargs: Any
) -> list[float | None]:
    """Visual-RFT R_IoU in [0, 1]: matched IoUs summed over max(N_gt, N_pred).

    >>> detection_iou_reward(
    ...     ['<answer>[{"Position": [0, 0, 10, 10], "Confidence": 0.9}, {"Position": [50, 50, 60, 60], "Confidence": 0.1}]</answer>'],
    ...     solution=["<answer>[{'Position': [0, 0, 10, 10]}]</answer>"], problem_type=["detection"],
    ... )
    [0.5]
    """
    return _score(completions, solution, problem_type, "detection", {"detection": "iou"})


def detection_confidence_reward(
    completions: Sequence[Any], solution: Any = None, problem_type: Any = None, **kwargs: Any
) -> list[float | None]:
    """Visual-RFT R_conf in [0, 1]: mean of c (matched) or 1 - c (unmatched) over predictions.

    >>> detection_confidence_reward(
    ...     ['<answer>[{"Position": [0, 0, 10, 10], "Confidence": 0.9}, {"Position": [50, 50, 60, 60], "Confidence": 0.1}]</answer>'],
    ...     solution=["<answer>[{'Position': [0, 0, 10, 10]}]</answer>"],
    ... )
    [0.9]
    """
    return _score(completions, solution, problem_type, "detection", {"detection": "confidence"})


def classification_reward(
    completions: Sequence[Any], solution: Any = None, problem_type: Any = None, **kwargs: Any
) -> list[float | None]:
    """Visual-RFT CLS reward (substring match after normalising), 0 for an empty answer.

    >>> classification_reward(["<answer>Golden_Retriever</answer>", "<answer></answer>"],
    ...                       solution=["<answer>golden retriever</answer>"] * 2)
    [1.0, 0.0]
    """
    return _score(completions, solution, problem_type, "classification")


def grounding_iou_reward(
    completions: Sequence[Any], solution: Any = None, problem_type: Any = None, **kwargs: Any
) -> list[float | None]:
    """VLM-R1 REC reward: IoU of the first predicted box with the ground truth, in [0, 1].

    >>> grounding_iou_reward(['<answer>{"bbox_2d": [0, 0, 10, 10]}</answer>', "<answer>[0, 0, 10, 20]</answer>"],
    ...                      solution=["<answer>[0, 0, 10, 20]</answer>"] * 2, problem_type=["grounding"] * 2)
    [0.5, 1.0]
    """
    return _score(completions, solution, problem_type, "grounding")


def od_map_reward(
    completions: Sequence[Any], solution: Any = None, problem_type: Any = None, **kwargs: Any
) -> list[float | None]:
    """VLM-R1 OVD COCO mAP@[.5:.95] in [0, 1]; a label absent from the ground truth costs nothing.

    >>> od_map_reward(['<answer>```json\\n[{"bbox_2d": [0, 0, 10, 10], "label": "dog"}]\\n```</answer>'],
    ...               solution=['<answer>[{"bbox_2d": [0, 0, 10, 10], "label": "dog"}]</answer>'])
    [1.0]
    """
    return _score(completions, solution, problem_type, "ovd", {"ovd": "od_map"})


def od_ap50_reward(
    completions: Sequence[Any], solution: Any = None, problem_type: Any = None, **kwargs: Any
) -> list[float | None]:
    """VLM-R1 OVD COCO AP50 in [0, 1].

    >>> od_ap50_reward(['<answer>[{"bbox_2d": [0, 0, 10, 6], "label": "dog"}]</answer>'],
    ...                solution=['<answer>[{"bbox_2d": [0, 0, 10, 10], "label": "dog"}]</answer>'])
    [1.0]
    """
    return _score(completions, solution, problem_type, "ovd", {"ovd": "od_ap50"})


def od_length_reward(
    completions: Sequence[Any], solution: Any = None, problem_type: Any = None, **kwargs: Any
) -> list[float | None]:
    """VLM-R1 odLength, min(1, N_gt / N_pred) * mAP in [0, 1]; "None" for nothing present is correct.

    >>> od_length_reward(['<answer>[{"bbox_2d": [0, 0, 10, 10], "label": "dog"}, {"bbox_2d": [0, 0, 5, 5], "label": "cat"}]</answer>',
    ...                   "<answer>None</answer>"],
    ...                  solution=['<answer>[{"bbox_2d": [0, 0, 10, 10], "label": "dog"}]</answer>', "<answer>None</answer>"])
    [0.5, 1.0]
    """
    return _score(completions, solution, problem_type, "ovd", {"ovd": "od_length"})


def od_weighted_reward(
    completions: Sequence[Any], solution: Any = None, problem_type: Any = None, **kwargs: Any
) -> list[float | None]:
    """VLM-R1 weighted sum 0.7 * position + 0.3 * completeness in [0, 1].

    >>> od_weighted_reward(['<answer>[{"bbox_2d": [0, 0, 10, 10], "label": "dog"}]</answer>'],
    ...                    solution=['<answer>[{"bbox_2d": [0, 0, 10, 10], "label": "dog"}]</answer>'])
    [1.0]
    """
    return _score(completions, solution, problem_type, "ovd", {"ovd": "od_weighted"})


def mra_reward(
    completions: Sequence[Any], solution: Any = None, problem_type: Any = None, **kwargs: Any
) -> list[float | None]:
    """VSI-Bench mean relative accuracy of a numeric answer, in [0, 1]; None for non-regression samples.

    >>> mra_reward(["<answer>10.6</answer>", "<answer>B</answer>"],
    ...            solution=["<answer>10</answer>", "<answer>B</answer>"], problem_type=["regression", "multiple choice"])
    [0.9, None]
    """
    return _score(completions, solution, problem_type, "regression", {"regression": "mra"})


def cosine_length_reward(
    completions: Sequence[Any],
    solution: Any = None,
    problem_type: Any = None,
    completion_ids: Any = None,
    completion_length: Any = None,
    *,
    max_length: int = 1024,
    min_value_correct: float = 0.5,
    max_value_correct: float = 1.0,
    min_value_wrong: float = -0.5,
    max_value_wrong: float = 0.0,
    correct_threshold: float = 0.5,
    **kwargs: Any,
) -> list[float | None]:
    """Cosine length-scaled correctness (VLM-R1's "cosine" reward) with real correctness.

    Correct means the sample's default accuracy, divided by its maximum (2 for detection), reaches
    ``correct_threshold``. Length in tokens: ``len(completion_ids)`` (TRL passes it), else a
    ``completion_length`` column; clamped at ``max_length``. Corrections to the reference: it forced
    correctness to 1 and let the cosine run periodic past ``max_length``.

    >>> cosine_length_reward(["<answer>B</answer>", "<answer>A</answer>"], solution=["<answer>B</answer>"] * 2,
    ...                      problem_type=["multiple choice"] * 2, completion_ids=[[0] * 1024, [0] * 2000])
    [0.5, 0.0]
    """
    if not (isinstance(max_length, int) and max_length > 0):
        raise ValueError(f"max_length must be a positive int, got {max_length!r}")
    values = (
        min_value_correct,
        max_value_correct,
        min_value_wrong,
        max_value_wrong,
        correct_threshold,
    )
    if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
        raise ValueError(
            f"cosine_length values and threshold must be finite numbers, got {values!r}"
        )
    n = len(completions)
    if n == 0:
        return []
    lengths = _lengths(n, completion_ids, completion_length)
    types = _column(problem_type, n, "problem_type")
    accuracy = _score(completions, solution, types)
    return [
        cosine_length_scale(
            length,
            acc / MAX_SCORE.get(ptype, 1.0) >= correct_threshold,
            max_length,
            min_value_correct,
            max_value_correct,
            min_value_wrong,
            max_value_wrong,
        )
        for length, acc, ptype in zip(lengths, accuracy, types, strict=True)
    ]


def overlong_reward(
    completions: Sequence[Any],
    completion_ids: Any = None,
    completion_length: Any = None,
    *,
    max_completion_length: int = 768,
    soft_punish_cache: int = 128,
    **kwargs: Any,
) -> list[float | None]:
    """DAPO soft overlong punishment in [-1, 0] (length from ``completion_ids`` or ``completion_length``).

    >>> overlong_reward(["a", "b", "c"], completion_ids=[[0] * 600, [0] * 704, [0] * 800])
    [0.0, -0.5, -1.0]
    """
    if not (
        isinstance(max_completion_length, int)
        and isinstance(soft_punish_cache, int)
        and 0 < soft_punish_cache <= max_completion_length
    ):
        raise ValueError(
            "need ints 0 < soft_punish_cache <= max_completion_length, got "
            f"soft_punish_cache={soft_punish_cache!r}, max_completion_length={max_completion_length!r}"
        )
    lengths = _lengths(len(completions), completion_ids, completion_length) if completions else []
    return [overlong_penalty(n, max_completion_length, soft_punish_cache) for n in lengths]


def repetition_reward(
    completions: Sequence[Any], *, ngram_size: int = 6, **kwargs: Any
) -> list[float | None]:
    """VLM-R1 repetition penalty in [-1, 0]: -(1 - unique / total) over OVD box items or word n-grams.

    >>> repetition_reward(["a b c d e f a b c d e f", "all different words in this one"])
    [-0.1428571428571429, 0.0]
    """
    if not (isinstance(ngram_size, int) and ngram_size > 0):
        raise ValueError(f"ngram_size must be a positive int, got {ngram_size!r}")
    return [text.repetition(completion_text(c), ngram_size) for c in completions]


#: Registry name -> reward function (call it directly, or bind parameters with :func:`get_reward`).
REWARDS: dict[str, RewardFn] = {
    "format": format_reward,
    "accuracy": accuracy_reward,
    "iou_confidence": iou_confidence_reward,
    "detection_iou": detection_iou_reward,
    "detection_confidence": detection_confidence_reward,
    "classification": classification_reward,
    "grounding_iou": grounding_iou_reward,
    "od_map": od_map_reward,
    "od_ap50": od_ap50_reward,
    "od_length": od_length_reward,
    "od_weighted": od_weighted_reward,
    "cosine_length": cosine_length_reward,
    "overlong": overlong_reward,
    "repetition": repetition_reward,
    "mra": mra_reward,
}

#: Documented value range of each reward with default parameters (None results aside).
REWARD_RANGES: dict[str, tuple[float, float]] = {name: (0.0, 1.0) for name in REWARDS} | {
    "accuracy": (0.0, 2.0),
    "iou_confidence": (0.0, 2.0),
    "cosine_length": (-0.5, 1.0),
    "overlong": (-1.0, 0.0),
    "repetition": (-1.0, 0.0),
}


def reward_params(name: str) -> dict[str, Any]:
    """The bindable parameters of a registered reward and their defaults."""
    fn = _lookup(name)
    return {
        p.name: p.default
        for p in inspect.signature(fn).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def _lookup(name: str) -> RewardFn:
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; valid: {sorted(REWARDS)}")
    return REWARDS[name]


class BoundReward:
    """A registered reward with bound parameters: a TRL reward function named after the registry
    entry (TRL logs rewards by ``__name__``), and picklable."""

    def __init__(self, name: str, func: RewardFn, params: dict[str, Any]) -> None:
        self.__name__ = self.__qualname__ = name
        self.__doc__ = func.__doc__
        self.func = func
        self.params = dict(params)

    def __call__(self, completions: Sequence[Any], **columns: Any) -> list[float | None]:
        return self.func(completions, **{**columns, **self.params})

    def __repr__(self) -> str:
        args = "".join(f", {k}={v!r}" for k, v in self.params.items())
        return f"get_reward({self.__name__!r}{args})"


def get_reward(name: str, **params: Any) -> BoundReward:
    """The reward ``name`` with ``params`` bound, ready for ``GRPOTrainer(reward_funcs=[...])``.

    Unknown names, unknown parameters and invalid values raise ``ValueError`` listing the valid ones.

    >>> fn = get_reward("overlong", max_completion_length=100, soft_punish_cache=20)
    >>> fn.__name__, fn(["x"], completion_ids=[[0] * 90])
    ('overlong', [-0.5])
    """
    fn = _lookup(name)
    valid = reward_params(name)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(f"reward {name!r} has no parameter(s) {unknown}; valid: {sorted(valid)}")
    fn([], **params)  # every reward validates its parameters before looking at completions
    return BoundReward(name, fn, params)

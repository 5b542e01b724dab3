"""The TRL-facing reward functions: registry, parameters, columns, doctests, import weight."""

import doctest
import importlib
import pickle
import subprocess
import sys

import pytest

from vlmrl.rewards import (
    PROBLEM_TYPES,
    REWARD_RANGES,
    REWARDS,
    get_reward,
    reward_params,
    score_sample,
)
from vlmrl.rewards.registry import BoundReward

MODULES = ["answers", "boxes", "text", "detection", "ovd", "accuracy", "shaping", "registry"]


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples_run(module):
    mod = importlib.import_module(f"vlmrl.rewards.{module}")
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_every_reward_is_documented_with_an_example():
    for name, fn in REWARDS.items():
        assert fn.__doc__ and ">>>" in fn.__doc__, name
    assert set(REWARD_RANGES) == set(REWARDS)


def test_registry_names():
    assert set(REWARDS) == {
        "format", "accuracy", "iou_confidence", "detection_iou", "detection_confidence",
        "classification", "grounding_iou", "od_map", "od_ap50", "od_length", "od_weighted",
        "cosine_length", "overlong", "repetition", "mra",
    }  # fmt: skip


def test_get_reward_binds_params_and_keeps_a_name():
    fn = get_reward("cosine_length", max_length=100)
    assert isinstance(fn, BoundReward)
    assert fn.__name__ == "cosine_length"
    assert fn.__doc__ == REWARDS["cosine_length"].__doc__
    out = fn(
        ["<answer>B</answer>"],
        solution=["<answer>B</answer>"],
        problem_type=["multiple choice"],
        completion_ids=[[1] * 100],
    )
    assert out == [pytest.approx(0.5)]
    assert "max_length=100" in repr(fn)
    assert get_reward("format").__name__ == "format"


def test_bound_params_win_over_same_named_columns():
    fn = get_reward("overlong", max_completion_length=10, soft_punish_cache=5)
    assert fn(["x"], completion_ids=[[0] * 20], max_completion_length=1000) == [-1.0]


def test_get_reward_errors_list_valid_choices():
    with pytest.raises(ValueError, match="unknown reward 'nope'.*accuracy"):
        get_reward("nope")
    with pytest.raises(ValueError, match=r"no parameter\(s\) \['alpha'\].*max_length"):
        get_reward("cosine_length", alpha=1)
    with pytest.raises(ValueError, match=r"no parameter\(s\)"):
        get_reward("format", anything=1)
    with pytest.raises(ValueError, match="unknown metric 'map'.*od_length"):
        get_reward("accuracy", ovd_metric="map")
    with pytest.raises(ValueError, match="unknown metric"):
        get_reward("accuracy", regression_metric="absolute")
    with pytest.raises(ValueError, match="soft_punish_cache"):
        get_reward("overlong", max_completion_length=100, soft_punish_cache=200)
    with pytest.raises(ValueError, match="max_length"):
        get_reward("cosine_length", max_length=0)
    with pytest.raises(ValueError, match="finite numbers"):
        get_reward("cosine_length", correct_threshold=float("nan"))
    with pytest.raises(ValueError, match="ngram_size"):
        get_reward("repetition", ngram_size=0)


def test_reward_params():
    assert reward_params("overlong") == {"max_completion_length": 768, "soft_punish_cache": 128}
    assert reward_params("accuracy") == {"ovd_metric": "od_length", "regression_metric": "relative"}
    assert reward_params("format") == {}


def test_bound_rewards_pickle():
    fn = get_reward("accuracy", ovd_metric="od_map")
    clone = pickle.loads(pickle.dumps(fn))
    assert clone.__name__ == "accuracy" and clone.params == {"ovd_metric": "od_map"}


def test_accuracy_metric_params():
    completion = '<answer>[{"bbox_2d": [0, 0, 10, 10], "label": "dog"}, {"bbox_2d": [20, 20, 30, 30], "label": "cat"}]</answer>'
    sol = '<answer>[{"bbox_2d": [0, 0, 10, 10], "label": "dog"}]</answer>'
    kwargs = {"solution": [sol], "problem_type": ["ovd"]}
    assert REWARDS["accuracy"]([completion], **kwargs) == [
        pytest.approx(0.5)
    ]  # od_length by default
    assert get_reward("accuracy", ovd_metric="od_map")([completion], **kwargs) == [
        pytest.approx(1.0)
    ]
    reg = {"solution": ["<answer>10</answer>"], "problem_type": ["regression"]}
    assert REWARDS["accuracy"](["<answer>10.8</answer>"], **reg) == [pytest.approx(0.92)]
    assert get_reward("accuracy", regression_metric="mra")(["<answer>10.8</answer>"], **reg) == [
        pytest.approx(0.9)
    ]


def test_type_specific_rewards_return_none_for_other_types():
    completions = [
        "<answer>B</answer>",
        '<answer>[{"Position": [0, 0, 10, 10], "Confidence": 0.9}]</answer>',
    ]
    cols = {
        "solution": ["<answer>B</answer>", "<answer>[{'Position': [0, 0, 10, 10]}]</answer>"],
        "problem_type": ["multiple choice", "detection"],
    }
    assert REWARDS["iou_confidence"](completions, **cols) == [None, pytest.approx(1.9)]
    assert REWARDS["od_length"](completions, **cols) == [None, None]
    assert REWARDS["accuracy"](completions, **cols) == [1.0, pytest.approx(1.9)]
    # Without a problem_type column every sample is taken to be of the reward's type.
    assert REWARDS["classification"](
        ["<answer>cat</answer>"], solution=["<answer>cat</answer>"]
    ) == [1.0]


def test_column_errors():
    with pytest.raises(ValueError, match="'solution' column"):
        REWARDS["accuracy"](["<answer>B</answer>"], problem_type=["multiple choice"])
    with pytest.raises(ValueError, match="'problem_type' column"):
        REWARDS["accuracy"](["<answer>B</answer>"], solution=["<answer>B</answer>"])
    with pytest.raises(ValueError, match="list of 2 values"):
        REWARDS["accuracy"](
            ["a", "b"], solution=["<answer>B</answer>"], problem_type=["multiple choice"] * 2
        )
    with pytest.raises(ValueError, match="list of 1 values"):
        REWARDS["accuracy"](["a"], solution="<answer>B</answer>", problem_type=["multiple choice"])
    with pytest.raises(ValueError, match="unknown problem_type 'mcq'"):
        REWARDS["accuracy"](["a"], solution=["<answer>B</answer>"], problem_type=["mcq"])
    with pytest.raises(ValueError, match="unknown problem_type"):
        REWARDS["od_map"](["a"], solution=["<answer>B</answer>"], problem_type=["mcq"])
    with pytest.raises(ValueError, match="completion lengths"):
        REWARDS["overlong"](["a"])
    assert REWARDS["overlong"](["a", "b"], completion_length=[10, 1000]) == [0.0, -1.0]


def test_empty_batch():
    for name, fn in REWARDS.items():
        assert fn([]) == [], name


def test_solution_errors_surface_even_without_an_answer():
    with pytest.raises(ValueError, match="option letter"):
        score_sample("multiple choice", "no tags at all", "<answer>a dog</answer>")
    with pytest.raises(ValueError, match="not a finite number"):
        score_sample("numerical", "", "<answer>n/a</answer>")


@pytest.mark.parametrize("problem_type", PROBLEM_TYPES)
def test_no_answer_tag_scores_zero(problem_type):
    solutions = {
        "multiple choice": "B", "numerical": "3", "OCR": "text", "free-form": "a cat",
        "regression": "3", "classification": "cat", "grounding": "[0, 0, 10, 10]",
        "detection": "No Objects", "ovd": "None",
    }  # fmt: skip
    solution = f"<answer>{solutions[problem_type]}</answer>"
    completion = f"<think>x</think>{solutions[problem_type]}"  # right answer, no tags
    assert score_sample(problem_type, completion, solution) == 0.0


def test_conversational_completions():
    conv = [
        [
            {
                "role": "assistant",
                "content": [{"type": "text", "text": "<think>a</think><answer>B</answer>"}],
            }
        ]
    ]
    assert REWARDS["format"](conv) == [1.0]
    assert REWARDS["accuracy"](
        conv, solution=["<answer>B</answer>"], problem_type=["multiple choice"]
    ) == [1.0]


def test_import_is_light():
    code = (
        "import sys, vlmrl.rewards; "
        "heavy = [m for m in ('torch', 'dagster', 'transformers', 'trl', 'pycocotools', 'rouge_score', 'nltk') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"

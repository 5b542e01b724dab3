"""Answer extraction and parsing (shared by rewards and evaluation)."""

import pytest

from vlmrl.rewards import PROBLEM_TYPES
from vlmrl.rewards.answers import (
    MAX_BOXES,
    completion_text,
    extract_answer,
    load_json_list,
    parse_box,
    parse_box_solution,
    parse_choice,
    parse_detection,
    parse_detection_solution,
    parse_number,
    parse_ovd,
    parse_ovd_solution,
    solution_answer,
)


def test_problem_types_are_the_schema_values():
    assert PROBLEM_TYPES == (
        "multiple choice", "numerical", "OCR", "free-form", "regression",
        "classification", "grounding", "detection", "ovd",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("plain", "plain"),
        ([{"role": "assistant", "content": "conv"}], "conv"),
        (
            [
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": "a"},
                        {"type": "image"},
                        {"type": "text", "text": "b"},
                    ],
                }
            ],
            "ab",
        ),
        (
            [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "first"},
                {"role": "tool", "content": "t"},
                {"role": "assistant", "content": "last"},
            ],
            "last",
        ),
        ([{"type": "text", "text": "parts"}], "parts"),
        ({"role": "assistant", "content": "dict"}, "dict"),
        ([{"role": "assistant", "content": None}], ""),
        ([{"role": "assistant", "content": [{"type": "text", "text": 3}]}], ""),
        ([], ""),
        (None, ""),
        (42, ""),
        (["not", "messages"], ""),
    ],
)
def test_completion_text(completion, expected):
    assert completion_text(completion) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>x</think><answer> B </answer>", "B"),
        ("<answer>A</answer><answer>B</answer>", "A"),  # first pair
        ("<answer><answer>C</answer></answer>", "C"),  # nested: innermost before first closer
        ("<answer>outer <answer>D</answer>", "D"),
        ("</answer> stray <answer>E</answer>", "E"),
        ("<answer></answer>", ""),
        ("<answer>\n multi\nline \n</answer>", "multi\nline"),
        ("no tags", None),
        ("<answer>unclosed", None),
        ("</answer>", None),
        ("", None),
        ("<ANSWER>B</ANSWER>", None),  # tags are case-sensitive, as the format reward
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extract_answer_unclosed_for_truncated_generations():
    assert (
        extract_answer("<answer>[{'Position': [1, 2", allow_unclosed=True) == "[{'Position': [1, 2"
    )
    assert extract_answer("<answer>x</answer>", allow_unclosed=True) == "x"
    assert extract_answer("no tags", allow_unclosed=True) is None
    assert extract_answer(None) is None  # type: ignore[arg-type]


def test_extract_answer_is_linear_on_huge_outputs():
    text = "<answer>" * 200_000 + "x" + "</answer>" * 200_000
    assert extract_answer(text) == "x"


def test_solution_answer():
    assert solution_answer("<answer> B </answer>") == "B"
    assert solution_answer(" 3.5 ") == "3.5"  # untagged solutions are used whole, as the reference
    for bad in [None, 3, "<answer> </answer>", "   "]:
        with pytest.raises(ValueError, match="solution"):
            solution_answer(bad)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("42", 42.0), (" -3.14 ", -3.14), ("+2", 2.0), ("1,234.5", 1234.5), ("1e3", 1000.0),
        (".5", 0.5), ("5.", 5.0), ("0", 0.0), ("1,23", None), ("42 meters", None), ("forty", None),
        ("nan", None), ("inf", None), ("1e999", None), ("1_000", None), ("", None), (None, None),
        ("9" * 400, None), ("3.14.15", None), ("--1", None),
    ],
)  # fmt: skip
def test_parse_number(text, expected):
    assert parse_number(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("B", "B"), ("B.", "B"), ("(B)", "B"), ("B. a dog", "B"), ("(B) a dog", "B"), ("[C]", "C"),
        ("D)", "D"), ("A: yes", "A"), (" E ", "E"), ("Bread", None), ("B text", None), ("b", None),
        ("", None), ("The answer is B", None), (None, None),
    ],
)  # fmt: skip
def test_parse_choice(text, expected):
    assert parse_choice(text) == expected


def test_parse_box():
    assert parse_box("[1, 2, 3, 4]") == (1.0, 2.0, 3.0, 4.0)
    assert parse_box('{"bbox_2d": [1.5, 2, 30, 40], "label": "x"}') == (1.5, 2.0, 30.0, 40.0)
    assert parse_box('[{"bbox_2d": [5, 6, 7, 8]}, {"bbox_2d": [1, 1, 2, 2]}]') == (
        5.0,
        6.0,
        7.0,
        8.0,
    )
    assert parse_box("(1,2),(3,4)") is None
    assert parse_box("[1, 2, 3]") is None
    assert parse_box("[1e999, 2, 3, 4]") is None
    assert parse_box(None) is None


def test_load_json_list():
    assert load_json_list('[{"a": 1}]') == [{"a": 1}]
    assert load_json_list("[{'a': 1}]") == [{"a": 1}]
    assert load_json_list('```json\n[{"a": 1}]\n```') == [{"a": 1}]
    assert load_json_list('{"a": 1}') == [{"a": 1}]
    assert load_json_list('[{"a": 1}, {"a": 2}, {"a": 3') == [{"a": 1}, {"a": 2}]  # truncated
    assert load_json_list('here: [{"a": 1}] done') == [{"a": 1}]
    assert load_json_list('[{"a": 1}, {"a": 2') is not None
    assert load_json_list('[{"a": 1}, {"a": 2', repair=False) is None
    assert load_json_list('"a string"') is None
    assert load_json_list("[" * 100_000) is None  # deep nesting: no RecursionError
    assert load_json_list(None) is None


def test_parse_detection():
    text = "[{'Position': [10, 10, 50, 50], 'Confidence': 0.9}, {'Position': [10, 10, 50, 50], 'Confidence': 0.3}, {'Position': [0, 0, 5, 5], 'Confidence': 7}]"
    # Duplicate position dropped (first kept), confidence clipped to [0, 1].
    assert parse_detection(text) == [((10.0, 10.0, 50.0, 50.0), 0.9), ((0.0, 0.0, 5.0, 5.0), 1.0)]
    truncated = '[{"Position": [1, 1, 2, 2], "Confidence": 0.5}, {"Position": [3, 3, 4'
    assert parse_detection(truncated) == [((1.0, 1.0, 2.0, 2.0), 0.5)]
    for nothing in ["No Objects", "no objects.", "None", "[]", "```json\nNone\n```"]:
        assert parse_detection(nothing) == []
    for bad in [
        "[{'Position': [1, 2, 3], 'Confidence': 0.5}]",
        "[{'Position': [1, 2, 3, 4]}]",  # a prediction needs a confidence
        "[{'Position': [1, 2, 3, 4], 'Confidence': NaN}]",
        "[{'Position': [1, 2, 3, 4], 'Confidence': true}]",
        "[{'Position': [1, 2, true, 4], 'Confidence': 0.5}]",
        "[{'Position': [1, 2, 3, Infinity], 'Confidence': 0.5}]",
        "[{'Position': [1, 2, 3, 1" + "0" * 400 + "], 'Confidence': 0.5}]",  # int beyond float
        "[{'Position': [1, 2, 3, 4], 'Confidence': 1" + "0" * 400 + "}]",
        "[[1, 2, 3, 4]]",
        "there are two cats",
        "",
    ]:
        assert parse_detection(bad) is None, bad


def test_parse_detection_caps_boxes():
    many = (
        "["
        + ",".join(f'{{"Position": [{i}, 0, {i + 1}, 1], "Confidence": 0.5}}' for i in range(300))
        + "]"
    )
    boxes = parse_detection(many)
    assert boxes is not None and 0 < len(boxes) <= MAX_BOXES


def test_parse_detection_solution():
    assert parse_detection_solution("[{'Position': [1, 2, 3, 4], 'Confidence': 1}]") == [
        (1.0, 2.0, 3.0, 4.0)
    ]
    assert (
        parse_detection_solution("[{'Position': [1, 2, 3, 4]}, {'Position': [1, 2, 3, 4]}]")
        == [(1.0, 2.0, 3.0, 4.0)] * 2
    )
    assert parse_detection_solution("No Objects") == []
    truncated = "[{'Position': [1, 2, 3, 4]}, {'Posi"
    with pytest.raises(ValueError, match="malformed detection solution"):
        parse_detection_solution(truncated)  # no repair for ground truth
    with pytest.raises(ValueError, match="x2 < x1"):
        parse_detection_solution("[{'Position': [5, 2, 3, 4]}]")
    long = "[" + ",".join(f'{{"Position": [{i}, 0, {i + 1}, 1]}}' for i in range(500)) + "]"
    assert len(parse_detection_solution(long)) == 500  # ground truth is never cut


def test_parse_ovd():
    text = '```json\n[{"bbox_2d": [1, 2, 3, 4], "label": " Dog "}, {"bbox_2d": [1, 2, 3, 4], "label": "dog"}]\n```'
    assert parse_ovd(text) == [((1.0, 2.0, 3.0, 4.0), "dog")] * 2  # no de-duplication for OVD
    assert parse_ovd("None") == []
    assert parse_ovd("[{'bbox_2d': [1, 2, 3, 4], 'label': 'cat'}]") == [
        ((1.0, 2.0, 3.0, 4.0), "cat")
    ]
    assert parse_ovd('[{"bbox_2d": [1, 2, 3, 4], "label": "person\'s hat"}]') == [
        ((1.0, 2.0, 3.0, 4.0), "person's hat")
    ]
    for bad in [
        '[{"bbox_2d": [1, 2, 3, 1' + "0" * 400 + '], "label": "a"}]',
        '[{"bbox_2d": [1, 2, 3, 4]}]',
        '[{"bbox_2d": [1, 2, 3, 4], "label": 5}]',
        '[{"bbox_2d": [1, 2, 3, 4], "label": "a"}',
        "dog",
    ]:
        assert parse_ovd(bad) is None, bad
    with pytest.raises(ValueError, match="malformed ovd solution"):
        parse_ovd_solution("dog at the left")


def test_parse_box_solution():
    assert parse_box_solution("[1, 2, 3, 4]") == (1.0, 2.0, 3.0, 4.0)
    with pytest.raises(ValueError, match="malformed grounding solution"):
        parse_box_solution("left")
    with pytest.raises(ValueError, match="x2 < x1"):
        parse_box_solution("[5, 2, 3, 4]")

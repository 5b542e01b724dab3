"""Solutions are validated by the rewards' own parsers, at load time (issue 13, finding 3).

Before: a numerical answer "banana", malformed or NaN boxes, an empty answer or a
multiple-choice solution with two answer tags passed `validate_row` and then raised
inside RL or evaluation (or, for two tags, silently scored against the first one).
"""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlmrl.data.records import PROBLEM_TYPES, Record, RowError, load_annotations, validate_row
from vlmrl.rewards import get_reward
from vlmrl.rewards.accuracy import METRICS, check_solution, score_sample

OPTIONS = ["A. left", "B. right"]


def row(problem_type, solution, **extra):
    return {"problem_id": "p1", "problem": "Where?", "data_type": "image",
            "problem_type": problem_type, "solution": solution, "path": "a.png", **extra}


# (problem_type, solution, what the error must say)
BAD = [
    ("numerical", "<answer>banana</answer>", "not a finite number: 'banana'"),
    ("numerical", "<answer>1e999</answer>", "not a finite number"),
    ("regression", "<answer>nan</answer>", "not a finite number: 'nan'"),
    ("regression", "<answer>12 metres</answer>", "not a finite number"),
    ("OCR", "<answer>   </answer>", "empty answer"),
    ("free-form", "<answer></answer>", "empty answer"),
    ("classification", "<answer>_ _</answer>", "classification solution is empty"),
    ("grounding", "<answer>[nan, 1, 2, 3]</answer>", "malformed grounding solution"),
    ("grounding", "<answer>[1, 2, 3]</answer>", "malformed grounding solution"),
    ("grounding", "<answer>[10, 10, 0, 0]</answer>", "x2 < x1"),
    ("detection", "<answer>[{'Position': [1, 2]}]</answer>", "malformed detection solution"),
    ("detection", '<answer>[{"Position": [NaN, 0, 1, 1]}]</answer>', "malformed detection solution"),
    ("detection", "<answer>a dog</answer>", "malformed detection solution"),
    ("ovd", '<answer>[{"bbox_2d": [1, 2, 3], "label": "dog"}]</answer>', "malformed ovd solution"),
    ("ovd", '<answer>[{"bbox_2d": [NaN, 2, 3, 4], "label": "dog"}]</answer>', "malformed ovd solution"),
    ("ovd", '<answer>[{"bbox_2d": [1, 2, 3, 4]}]</answer>', "malformed ovd solution"),
    ("ovd", '<answer>[{"bbox_2d": [5, 5, 1, 1], "label": "dog"}]</answer>', "x2 < x1"),
    ("multiple choice", "<answer>A</answer><answer>B</answer>", "more than one <answer> tag"),
    ("multiple choice", "<answer>Bread</answer>", "no option letter: 'Bread'"),
    ("multiple choice", "<answer></answer>", "empty answer"),
    ("numerical", "<answer>3</answer> <answer>4</answer>", "more than one <answer> tag"),
]


@pytest.mark.parametrize(("ptype", "solution", "reason"), BAD,
                         ids=[f"{p}:{s[8:30]}" for p, s, _ in BAD])
def test_solutions_the_rewards_cannot_read_are_rejected_at_load(ptype, solution, reason):
    options = {"options": OPTIONS} if ptype == "multiple choice" else {}
    result = validate_row(row(ptype, solution, **options), "ann.json", 3)
    assert isinstance(result, RowError)
    assert (result.file, result.row, result.field) == ("ann.json", 3, "solution")
    assert reason in result.message and f"the {ptype!r} reward cannot read it" in result.message
    # The same solution given to the reward as ground truth: it raises, or (two answer tags)
    # silently reads only the first. Validation is what stops it now.
    accuracy = get_reward("accuracy")
    try:
        scores = accuracy(["<answer>B</answer>"], solution=[solution], problem_type=[ptype])
    except ValueError as exc:
        assert str(exc) in result.message  # the very same parser said the same thing
    else:
        assert "more than one" in reason and scores in ([0.0], [1.0])


GOOD = [
    ("multiple choice", "<answer>B</answer>"),
    ("multiple choice", "<answer>(A) left</answer>"),
    ("numerical", "<answer>1,000.5</answer>"),
    ("regression", "<answer>-3e2</answer>"),
    ("OCR", "<answer>STOP</answer>"),
    ("free-form", "<answer>a red car</answer>"),
    ("classification", "<answer>golden retriever</answer>"),
    ("grounding", "<answer>[1, 2, 30, 40]</answer>"),
    ("detection", "<answer>[{'Position': [1, 2, 3, 4]}]</answer>"),
    ("detection", "<answer>No Objects</answer>"),
    ("ovd", '<answer>[{"bbox_2d": [1, 2, 3, 4], "label": "dog"}]</answer>'),
    ("ovd", "<answer>None</answer>"),
]


@pytest.mark.parametrize(("ptype", "solution"), GOOD, ids=[p for p, _ in GOOD])
def test_readable_solutions_pass_and_every_metric_scores_them(ptype, solution):
    options = {"options": OPTIONS} if ptype == "multiple choice" else {}
    assert isinstance(validate_row(row(ptype, solution, **options), "a.json", 0), Record)
    for metric in METRICS[ptype]:
        assert score_sample(ptype, solution, solution, metric) >= 0


def test_multiple_choice_letter_is_read_as_the_reward_reads_it():
    # "(C) left" names C, which is not among the options; before, only the first character
    # was compared ("(" -> rejected for the wrong reason, "Bread" -> accepted as B).
    result = validate_row(row("multiple choice", "<answer>(C) up</answer>", options=OPTIONS), "a", 0)
    assert isinstance(result, RowError) and "not one of the option letters ['A', 'B']" in result.message


def test_a_file_keeps_good_rows_and_counts_each_bad_solution(tmp_path):
    rows = [row("numerical", "<answer>3</answer>", problem_id=f"good-{i}") for i in range(3)]
    rows += [row(p, s, problem_id=f"bad-{i}", **({"options": OPTIONS} if p == "multiple choice" else {}))
             for i, (p, s, _) in enumerate(BAD)]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(rows))
    loaded = load_annotations(path)
    assert [r.problem_id for r in loaded.records] == ["good-0", "good-1", "good-2"]
    assert [e.row for e in loaded.errors] == list(range(3, 3 + len(BAD)))
    assert {e.field for e in loaded.errors} == {"solution"}


answers = st.one_of(
    st.text(max_size=30),
    st.from_regex(r"\[\s*-?\d{1,3}(\.\d)?(\s*,\s*-?\d{1,3}(\.\d)?){0,4}\s*\]", fullmatch=True),
    st.lists(st.fixed_dictionaries({"bbox_2d": st.lists(st.floats(allow_nan=True), max_size=5),
                                    "label": st.text(max_size=5)}), max_size=3).map(json.dumps),
    st.lists(st.fixed_dictionaries({"Position": st.lists(st.integers(-5, 50), max_size=5)}),
             max_size=3).map(json.dumps),
    st.sampled_from(["A", "B", "(A)", "None", "No Objects", "nan", "1,5", "", " "]),
)


@settings(max_examples=300, deadline=None)
@given(ptype=st.sampled_from(PROBLEM_TYPES), answer=answers, completion=answers)
def test_what_validation_accepts_every_metric_can_score(ptype, answer, completion):
    """The property: a row validation accepts never makes a reward raise, whatever the model
    writes; a row it rejects is one check_solution (the rewards' parsers) refuses."""
    solution = f"<answer>{answer}</answer>"
    options = {"options": ["A. x", "B. y"]} if ptype == "multiple choice" else {}
    result = validate_row(row(ptype, solution, **options), "a.json", 0)
    if isinstance(result, Record):
        for metric in METRICS[ptype]:
            score = score_sample(ptype, f"<answer>{completion}</answer>", solution, metric)
            assert 0.0 <= score <= 2.0
    elif ptype != "multiple choice" or "option letters" not in result.message:
        with pytest.raises(ValueError):
            check_solution(ptype, solution)

"""Format, Video-R1 accuracy by type, MRA, classification and repetition: hand-computed values."""

import pytest

from vlmrl.rewards.text import (
    classification,
    format_ok,
    free_form,
    mean_relative_accuracy,
    mra,
    multiple_choice,
    numerical,
    ocr,
    regression,
    repetition,
)


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("<think>reason</think><answer>B</answer>", True),
        ("<think>a\nb</think>\n\n <answer>\nB\n</answer>", True),
        ("  <think>a</think><answer>B</answer>\n", True),  # surrounding whitespace tolerated
        ("<think></think><answer></answer>", True),
        ("<answer>B</answer>", False),
        ("<think>a</think>", False),
        ("<think>a</think> text <answer>B</answer>", False),
        ("<think>a</think><answer>B</answer> trailing", False),
        ("preamble <think>a</think><answer>B</answer>", False),
        ("<answer>B</answer><think>a</think>", False),
        ("<think>a</think><answer>A</answer><answer>B</answer>", False),  # repeated answers
        ("<think><think>a</think></think><answer>B</answer>", False),
        ("<think>a<answer>x</answer></think><answer>B</answer>", False),
        ("<think>a</think><answer>B", False),
        ("", False),
    ],
)
def test_format(text, ok):
    assert format_ok(text) is ok


def test_format_is_fast_on_pathological_input():
    assert not format_ok("<think>" + "</think><answer>" * 100_000)


def test_multiple_choice():
    assert multiple_choice("B", "B") == 1.0
    for variant in ["B.", "(B)", "B. the dog", "[B]", "B)"]:
        assert multiple_choice(variant, "B") == 1.0
    assert multiple_choice("C", "B") == 0.0
    assert multiple_choice("", "B") == 0.0
    assert multiple_choice("Because", "B") == 0.0
    assert multiple_choice("B", "B. a dog") == 1.0  # solution written with its option text
    with pytest.raises(ValueError, match="option letter"):
        multiple_choice("B", "a dog")


def test_numerical_rounds_to_two_decimals_without_decimal_point_rule():
    assert numerical("3.14159", "3.14") == 1.0
    assert numerical("3", "3.0") == 1.0  # the reference's decimal-point quirk would give 0
    assert numerical("3.0", "3") == 1.0
    assert numerical("1,000", "1000") == 1.0
    assert numerical("3.15", "3.14") == 0.0
    assert numerical("three", "3") == 0.0
    assert numerical("nan", "3") == 0.0
    with pytest.raises(ValueError, match="not a finite number"):
        numerical("3", "three")


def test_ocr_word_error_rate():
    assert ocr("the cat sat", "the cat sat") == 1.0
    assert ocr("the cat sat", "the cat sat down") == pytest.approx(0.75)  # 1 deletion / 4
    assert ocr("the dog sat", "the cat sat") == pytest.approx(2 / 3)  # 1 substitution / 3
    assert ocr("The cat", "the cat") == pytest.approx(0.5)  # case-sensitive, like the reference
    assert ocr("", "the cat") == 0.0
    assert ocr("a b c d e f g h", "x") == 0.0  # WER 8 -> floored at 0


def test_free_form_rouge_mean():
    assert free_form("the black cat", "the black cat") == pytest.approx(1.0)
    # Stemming: "sleeps"/"sleeping" -> "sleep". R1 F = 2/3, R2 F = 2/7, RL F = 2/3.
    expected = (2 / 3 + 2 / 7 + 2 / 3) / 3
    assert free_form("a black cat sleeps", "the black cat is sleeping") == pytest.approx(expected)
    assert free_form("", "the black cat") == 0.0
    assert free_form("totally unrelated", "the black cat") == 0.0


def test_free_form_equals_plain_rouge_score():
    import random

    from rouge_score import rouge_scorer

    reference = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    vocab = ["running", "runs", "ran", "the", "cats", "cat's", "Sleeping", "sleeps", "happily", "dog.", "42", "x-ray"]  # fmt: skip
    rng = random.Random(0)
    for _ in range(200):
        gt = " ".join(rng.choices(vocab, k=rng.randint(1, 12)))
        answer = " ".join(rng.choices(vocab, k=rng.randint(0, 12)))
        scores = reference.score(gt, answer)
        expected = sum(scores[k].fmeasure for k in ("rouge1", "rouge2", "rougeL")) / 3
        assert free_form(answer, gt) == pytest.approx(expected, abs=1e-12)


def test_regression():
    assert regression("9", "10") == pytest.approx(0.9)
    assert regression("11", "10") == pytest.approx(0.9)
    assert regression("30", "10") == 0.0  # floored
    assert regression("-10", "-8") == pytest.approx(0.75)
    assert regression("x", "10") == 0.0
    # Defect fixed: an exact answer to a ground truth of 0 is correct.
    assert regression("0", "0") == 1.0
    assert regression("0.0", "0") == 1.0
    assert regression("0.001", "0") == 0.0


def methods_mra(pred, target):
    """METHODS.md's MRA written out with exact fractions: mean of [|p - g| / |g| < 1 - t]."""
    from fractions import Fraction

    err = Fraction(abs(pred - target), abs(target))
    return sum(err < 1 - Fraction(t, 100) for t in range(50, 100, 5)) / 10


def test_mra_matches_methods_formula_on_boundaries():
    # Integer answers hit thresholds exactly (e.g. counting: 5 for 4 is 25 % off).
    for gt in range(1, 41):
        for pred in range(0, 2 * gt + 2):
            assert mean_relative_accuracy(pred, gt) == pytest.approx(methods_mra(pred, gt)), (pred, gt)
    assert mean_relative_accuracy(5, 4) == pytest.approx(0.5)  # 0.25 < 1 - t for t < 0.75 only
    assert mean_relative_accuracy(15, 10) == 0.0  # 0.5 is not < 0.5


def test_mean_relative_accuracy():
    assert mean_relative_accuracy(100, 100) == 1.0
    assert mean_relative_accuracy(104, 100) == 1.0  # 0.04 < 0.05
    assert mean_relative_accuracy(108, 100) == pytest.approx(0.9)
    assert mean_relative_accuracy(135, 100) == pytest.approx(0.3)  # 0.35 < 0.5, .45, .4 (not .35)
    assert mean_relative_accuracy(65, 100) == pytest.approx(0.3)
    assert mean_relative_accuracy(160, 100) == 0.0
    assert mean_relative_accuracy(-100, -100) == 1.0
    assert mean_relative_accuracy(0, 0) == 1.0
    assert mean_relative_accuracy(1, 0) == 0.0
    assert mra("1.33", "1") == pytest.approx(0.4)
    assert mra("no", "1") == 0.0


def test_classification():
    assert classification("golden retriever", "Golden_Retriever") == 1.0
    assert classification("It is a golden retriever dog", "golden retriever") == 1.0  # gt in answer
    assert classification("retriever", "golden retriever") == 1.0  # answer in gt (reference rule)
    assert classification("poodle", "golden retriever") == 0.0
    # Defect fixed: an empty answer is a substring of everything but scores 0.
    assert classification("", "cat") == 0.0
    assert classification(" _ ", "cat") == 0.0
    with pytest.raises(ValueError, match="empty"):
        classification("cat", " _ ")


def test_repetition():
    assert repetition("one two three four five six seven") == 0.0
    assert repetition("too short") == 0.0
    assert repetition("a b c d e f " * 3) == pytest.approx(6 / 13 - 1)  # 13 6-grams, 6 distinct
    assert repetition("x " * 50) == pytest.approx(1 / 45 - 1)
    assert repetition("A B C D E F a b c d e f") == pytest.approx(6 / 7 - 1)  # case-insensitive
    box = '{"bbox_2d": [1, 2, 3, 4], "label": "dog"}'
    assert repetition(
        f"<answer>```json\n[{box}, {box}, {box}, {box}]\n```</answer>"
    ) == pytest.approx(1 / 4 - 1)
    other = '{"bbox_2d": [1, 2, 3, 4], "label": "cat"}'
    assert repetition(f"<answer>[{box}, {other}]</answer>") == 0.0
    assert -1.0 <= repetition("w " * 1_000_000) <= 0.0  # bounded work on runaway output

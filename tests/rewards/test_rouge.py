"""free_form (a fast ROUGE-1/2/L) equals rouge-score's RougeScorer with stemming, pair by pair."""

import random

import pytest
from rouge_score import rouge_scorer

from vlmrl.rewards.answers import MAX_ANSWER_CHARS
from vlmrl.rewards.text import free_form

# Stemming variants, punctuation, digits, case, short (unstemmed) words, non-ASCII.
VOCAB = ["running", "runs", "ran", "run", "the", "cats", "cat's", "Sleeping", "sleeps", "sleep", "happily", "happy", "dog.", "dogs,", "42", "x-ray", "generalizations", "generously", "A", "is", "was", "café", "--", "(", "ponies", "caresses", "\n"]  # fmt: skip


def reference(answer: str, gt: str) -> float:
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    scores = scorer.score(gt, answer[:MAX_ANSWER_CHARS])
    return sum(scores[k].fmeasure for k in ("rouge1", "rouge2", "rougeL")) / 3


def text(rng: random.Random, high: int) -> str:
    return " ".join(rng.choices(VOCAB, k=rng.randint(0, high)))


def test_free_form_equals_rouge_score_on_random_pairs():
    rng = random.Random(0)
    for _ in range(3000):
        gt = text(rng, 15)
        roll = rng.random()
        if roll < 0.1:
            answer = gt  # identical
        elif roll < 0.2:
            answer = " ".join([rng.choice(VOCAB)] * rng.randint(1, 10))  # repeated tokens
        else:
            answer = text(rng, 15)
        assert free_form(answer, gt) == pytest.approx(reference(answer, gt), abs=1e-9), (answer, gt)


def test_free_form_equals_rouge_score_on_long_answers_cut_at_max_chars():
    rng = random.Random(1)
    for _ in range(5):
        gt = text(rng, 40)
        answer = " ".join(rng.choices(VOCAB, k=3000))  # longer than MAX_ANSWER_CHARS
        assert len(answer) > MAX_ANSWER_CHARS
        assert free_form(answer, gt) == pytest.approx(reference(answer, gt), abs=1e-9)


def test_free_form_edge_cases():
    assert free_form("", "") == 0.0 == reference("", "")
    assert free_form("!!", "the cat") == 0.0
    assert free_form("the cat", "the cat") == pytest.approx(1.0)
    assert free_form("cat the", "the cat") == pytest.approx(reference("cat the", "the cat"))

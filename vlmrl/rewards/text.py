"""Text scores: format, Video-R1 accuracy by answer type, MRA, Visual-RFT classification, repetition.

Answer scorers take ``(answer, gt)``, the extracted answer texts of the completion and of the
solution, and return a float in [0, 1]. Unreadable answers score 0; malformed ground truth raises
``ValueError``.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from functools import cache, lru_cache
from typing import NamedTuple

from vlmrl.rewards.answers import (
    MAX_ANSWER_CHARS,
    extract_answer,
    parse_choice,
    parse_number,
    parse_ovd,
)

_FORMAT_RE = re.compile(r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*", re.DOTALL)
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
# VSI-Bench MRA thresholds t = 0.50, 0.55, ..., 0.95 as tolerances 1 - t, rounded to two
# decimals so a relative error that lands exactly on a tolerance compares as written.
_MRA_TOLERANCES = tuple(round(1.0 - t / 100, 2) for t in range(50, 100, 5))
#: Repetition is measured on at most this many words, bounding work on runaway output.
MAX_REPETITION_WORDS = 4096


def format_ok(text: str) -> bool:
    """``<think>...</think>`` then (whitespace allowed) ``<answer>...</answer>``, and nothing else.

    Stricter than the reference regex on one point: each tag must appear exactly once, so a second
    ``<answer>`` block (a way to hedge between answers) is not well formatted.

    >>> format_ok("<think>a</think>\\n<answer>B</answer>"), format_ok("<answer>B</answer>")
    (True, False)
    """
    if not isinstance(text, str) or any(text.count(tag) != 1 for tag in _TAGS):
        return False
    return _FORMAT_RE.fullmatch(text) is not None


def _gt_choice(gt: str) -> str:
    letter = parse_choice(gt)
    if letter is None:
        raise ValueError(f"multiple-choice solution has no option letter: {gt!r}")
    return letter


def _numeric(answer: str, gt: str, score: Callable[[float, float], float]) -> float:
    """``score(pred, gt)`` on the parsed numbers; 0 when the answer is not a number."""
    expected = parse_number(gt)
    if expected is None:
        raise ValueError(f"solution is not a finite number: {gt!r}")
    value = parse_number(answer)
    return 0.0 if value is None else score(value, expected)


def multiple_choice(answer: str, gt: str) -> float:
    """1 if the answer's option letter equals the solution's (``B``, ``B.``, ``(B)``, ``B. text``).

    >>> multiple_choice("(B) a dog", "B"), multiple_choice("C", "B")
    (1.0, 0.0)
    """
    return float(parse_choice(answer) == _gt_choice(gt))


def numerical(answer: str, gt: str) -> float:
    """1 if both are numbers equal after rounding to 2 decimals (no decimal-point rule).

    >>> numerical("3.141", "3.14"), numerical("3", "3.0"), numerical("three", "3")
    (1.0, 1.0, 0.0)
    """
    return _numeric(answer, gt, lambda pred, exp: float(round(pred, 2) == round(exp, 2)))


def ocr(answer: str, gt: str) -> float:
    """1 - word error rate (jiwer; case-sensitive, whitespace-split), floored at 0.

    >>> ocr("the cat sat", "the cat sat down")
    0.75
    """
    import jiwer  # lazy: keep `import vlmrl.rewards` light

    return max(0.0, 1.0 - jiwer.wer(gt, answer[:MAX_ANSWER_CHARS]))


# rouge-score's tokenizer, reimplemented: after lower-casing, the words are the runs of [a-z0-9]
# (its substitute-then-split), each longer than 3 characters replaced by its Porter stem, and any
# token that is not [a-z0-9]+ dropped.
_ROUGE_WORD_RE = re.compile(r"[a-z0-9]+")
_ROUGE_VALID_RE = re.compile(r"^[a-z0-9]+$")  # rouge-score's VALID_TOKEN_RE, `$` included
#: Bounds the ROUGE caches: stems by word, tokens and n-gram counts by text.
ROUGE_WORD_CACHE, ROUGE_TEXT_CACHE = 1 << 16, 1 << 10


@cache
def _rouge_backend() -> tuple[Callable[[str], str], Callable[[list[int], list[int]], int]]:
    """nltk's Porter stemmer (rouge-score's) and rapidfuzz's LCS length, imported on first use:
    nltk alone takes a second to import."""
    from nltk.stem import porter
    from rapidfuzz.distance import LCSseq

    return porter.PorterStemmer().stem, LCSseq.similarity


@lru_cache(maxsize=ROUGE_WORD_CACHE)
def _rouge_token(word: str) -> str | None:
    """The token rouge-score makes of ``word`` (stemming dominates its cost and words repeat)."""
    token = _rouge_backend()[0](word) if len(word) > 3 else word
    return token if _ROUGE_VALID_RE.match(token) else None


@lru_cache(maxsize=ROUGE_TEXT_CACHE)
def _rouge_tokens(text: str) -> tuple[str, ...]:
    """rouge-score's ``tokenize(text, PorterStemmer())``; cached, as a group's G completions share
    one ground truth and often repeat an answer."""
    tokens = (_rouge_token(word) for word in _ROUGE_WORD_RE.findall(text.lower()))
    return tuple(token for token in tokens if token is not None)


class _RougeReference(NamedTuple):
    """A ground truth's tokens as ids (``vocab`` numbers its distinct tokens) and its n-gram counts."""

    vocab: dict[str, int]
    ids: list[int]
    unigrams: list[int]  # occurrences of each id
    bigrams: Counter[tuple[int, int]]


@lru_cache(maxsize=ROUGE_TEXT_CACHE)
def _rouge_reference(gt: str) -> _RougeReference:
    vocab: dict[str, int] = {}
    ids = [vocab.setdefault(token, len(vocab)) for token in _rouge_tokens(gt)]
    unigrams = [0] * len(vocab)
    for i in ids:
        unigrams[i] += 1
    return _RougeReference(vocab, ids, unigrams, Counter(zip(ids, ids[1:], strict=False)))


def _rouge_f(overlap: int, n_pred: int, n_ref: int) -> float:
    """rouge-score's F-measure from the overlap and the counts, with its exact arithmetic."""
    precision, recall = overlap / max(n_pred, 1), overlap / max(n_ref, 1)
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def free_form(answer: str, gt: str) -> float:
    """Mean of the ROUGE-1, ROUGE-2 and ROUGE-L F-measures (rouge-score's, stemming on).

    The same metric as ``rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"],
    use_stemmer=True)`` (a test checks it on thousands of pairs), computed on token ids: n-gram
    overlaps from counts, and the LCS by rapidfuzz's bit-parallel algorithm instead of a Python
    O(n * m) table.

    >>> round(free_form("a black cat sleeps", "the black cat is sleeping"), 4)
    0.5397
    """
    ref = _rouge_reference(gt)
    # A token absent from the ground truth (id -1) matches nothing: it counts in the answer's
    # length and breaks its bigrams, and is left out of the counts and of the LCS.
    ids = [ref.vocab.get(token, -1) for token in _rouge_tokens(answer[:MAX_ANSWER_CHARS])]
    shared = [i for i in ids if i >= 0]
    n, n_ref = len(ids), len(ref.ids)

    rouge1 = sum(min(count, ref.unigrams[i]) for i, count in Counter(shared).items())
    bigrams = Counter(pair for pair in zip(ids, ids[1:], strict=False) if pair in ref.bigrams)
    rouge2 = sum(min(count, ref.bigrams[pair]) for pair, count in bigrams.items())
    lcs = _rouge_backend()[1](ref.ids, shared) if shared else 0
    return (
        _rouge_f(rouge1, n, n_ref)
        + _rouge_f(rouge2, max(n - 1, 0), max(n_ref - 1, 0))
        + _rouge_f(lcs, n, n_ref)
    ) / 3


def relative_error(pred: float, gt: float) -> float:
    """|pred - gt| / |gt|; for gt = 0 it is 0 for an exact answer, else infinite."""
    if gt == 0:
        return 0.0 if pred == 0 else math.inf
    return abs(pred - gt) / abs(gt)


def regression(answer: str, gt: str) -> float:
    """1 - |pred - gt| / |gt|, floored at 0.

    Correction to the reference: an exact answer to a ground truth of 0 scores 1 (the reference's
    epsilon trick scores it 0).

    >>> regression("9", "10"), regression("0", "0"), regression("1", "0")
    (0.9, 1.0, 0.0)
    """
    return _numeric(answer, gt, lambda pred, exp: max(0.0, 1.0 - relative_error(pred, exp)))


def mean_relative_accuracy(pred: float, gt: float) -> float:
    """VSI-Bench MRA: mean over t in {0.50, 0.55, ..., 0.95} of [|pred - gt| / |gt| < 1 - t].

    Strict ``<`` as METHODS.md states it (some copies of the VSI-Bench evaluator use ``<=``; the
    two differ only when the relative error equals a threshold exactly, e.g. 5 for 4). A ground
    truth of 0 needs an exact answer (a plain division would divide by 0).

    >>> mean_relative_accuracy(108, 100), mean_relative_accuracy(0, 0)
    (0.9, 1.0)
    """
    error = relative_error(pred, gt)
    return sum(error < tol for tol in _MRA_TOLERANCES) / len(_MRA_TOLERANCES)


def mra(answer: str, gt: str) -> float:
    """MRA of a numeric answer; 0 when the answer is not a number.

    >>> mra("10.6", "10")
    0.9
    """
    return _numeric(answer, gt, mean_relative_accuracy)


def _normalise_label(text: str) -> str:
    return text.replace(" ", "").replace("_", "").lower()


def classification(answer: str, gt: str) -> float:
    """Visual-RFT CLS: 1 if either normalised string (lower case, no spaces or underscores)
    contains the other.

    Correction to the reference: an empty answer scores 0 (the reference scores it 1, the empty
    string being a substring of everything).

    >>> classification("Golden_Retriever", "golden retriever"), classification(" ", "cat")
    (1.0, 0.0)
    """
    expected = _normalise_label(gt)
    if not expected:
        raise ValueError(f"classification solution is empty: {gt!r}")
    got = _normalise_label(answer[:MAX_ANSWER_CHARS])
    return float(bool(got) and (got in expected or expected in got))


def repetition(text: str, ngram: int = 6) -> float:
    """VLM-R1 repetition penalty -(1 - unique / total) in [-1, 0].

    Over the (bbox, label) items when the answer is an OVD box list, else over lower-cased word
    ``ngram``-grams of the whole completion (0 for fewer than ``ngram`` words).

    >>> repetition("a b c d e f a b c d e f"), repetition("short text")
    (-0.1428571428571429, 0.0)
    """
    answer = extract_answer(text)
    boxes = parse_ovd(answer) if answer and "bbox_2d" in answer else None
    if boxes:
        unique, total = len(set(boxes)), len(boxes)
    else:
        words = text.lower().split(maxsplit=MAX_REPETITION_WORDS)[:MAX_REPETITION_WORDS]
        total = len(words) - ngram + 1
        if total <= 0:
            return 0.0
        unique = len(set(zip(*(words[i:] for i in range(ngram)), strict=False)))
    return unique / total - 1.0

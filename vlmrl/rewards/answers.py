"""Answer extraction and parsing: the one implementation shared by every reward and by evaluation.

Model output is never trusted: the ``parse_*`` functions return ``None`` for anything they cannot
read and never raise. Solutions (ground truth) are data: :func:`solution_answer` and the callers
that parse it raise ``ValueError`` naming the offending value, because a bad solution is a data bug.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

#: Parsers only look at this much of an answer, so a runaway generation costs bounded work.
MAX_ANSWER_CHARS = 10_000
#: At most this many boxes are read from one predicted list (a longer list is cut, not rejected).
MAX_BOXES = 100

Box = tuple[float, float, float, float]

_OPEN, _CLOSE = "<answer>", "</answer>"
_NUMBER_RE = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+(?:\.\d*)?|\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
# "B", "B.", "(B)", "[B]", "B)", "B:", "B. text", "(B) text"; not "Bread" nor "B text".
_CHOICE_RE = re.compile(r"[(\[]?([A-Z])(?:[)\].:,]|$)")
_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_BOX_RE = re.compile(rf"\[\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*\]")
_FENCE_RE = re.compile(r"```(?:json)?\s*(.*?)\s*(?:```|$)", re.DOTALL)
_NO_OBJECTS = frozenset({"no objects", "no object", "none", "null"})


def completion_text(completion: Any) -> str:
    """Text of one TRL completion: a string, or a conversation whose last assistant message is used.

    Message content may be a string or a list of parts (only ``{"type": "text"}`` parts count).
    Anything unreadable gives ``""``.

    >>> completion_text([{"role": "assistant", "content": [{"type": "text", "text": "hi"}]}])
    'hi'
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return _content_text(completion.get("content"))
    if isinstance(completion, list | tuple):
        for message in reversed(completion):
            if not isinstance(message, dict):
                return ""
            if "content" not in message and "type" in message:  # a bare list of content parts
                return _content_text(completion)
            if message.get("role", "assistant") == "assistant":
                return _content_text(message.get("content"))
    return ""


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list | tuple):
        return "".join(
            p["text"]
            for p in content
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        )
    return ""


def extract_answer(text: str, *, allow_unclosed: bool = False) -> str | None:
    """Stripped text inside the first ``<answer>...</answer>`` pair, or ``None`` without one.

    With nested openers (``<answer><answer>x</answer>``) the innermost one before the first closer
    wins. ``allow_unclosed`` accepts an opener without closer (a truncated generation) and returns
    the rest of the text; the detection reward uses it to repair truncated box lists.

    >>> extract_answer("<think>hmm</think><answer> B </answer>")
    'B'
    >>> extract_answer("no tags") is None
    True
    """
    if not isinstance(text, str):
        return None
    start = text.find(_OPEN)
    if start < 0:
        return None
    end = text.find(_CLOSE, start)
    if end < 0:
        if not allow_unclosed:
            return None
        end = len(text)
    start = text.rfind(_OPEN, start, end)
    return text[start + len(_OPEN) : end].strip()


def solution_answer(solution: Any) -> str:
    """The answer text of a solution (``<answer>X</answer>``; an untagged solution is used whole).

    Raises ``ValueError`` for a solution that is not a non-empty string.
    """
    if not isinstance(solution, str):
        raise ValueError(f"solution must be a string, got {solution!r}")
    answer = extract_answer(solution)
    answer = solution.strip() if answer is None else answer
    if not answer:
        raise ValueError(f"solution has an empty answer: {solution!r}")
    return answer


def parse_number(text: str | None) -> float | None:
    """A finite number written as the whole answer (``42``, ``-3.14``, ``1,000``, ``2e3``), else None.

    >>> parse_number(" 1,234.5 "), parse_number("42 meters"), parse_number("nan")
    (1234.5, None, None)
    """
    if not isinstance(text, str) or len(text) > 100:
        return None
    text = text.strip()
    if not _NUMBER_RE.fullmatch(text):
        return None
    value = float(text.replace(",", ""))
    return value if math.isfinite(value) else None


def parse_choice(text: str | None) -> str | None:
    """The option letter an answer starts with: ``B``, ``B.``, ``(B)``, ``B. text`` -> ``'B'``.

    >>> parse_choice("(C) a red car"), parse_choice("Bread")
    ('C', None)
    """
    if not isinstance(text, str):
        return None
    match = _CHOICE_RE.match(text.strip()[:8])
    return match.group(1) if match else None


def _finite_box(value: Any) -> Box | None:
    if not isinstance(value, list | tuple) or len(value) != 4:
        return None
    box = tuple(_real(v) for v in value)
    return None if None in box else box  # type: ignore[return-value]


def parse_box(text: str | None) -> Box | None:
    """The first ``[x1, y1, x2, y2]`` in the text (plain or inside ``{"bbox_2d": [...]}``).

    >>> parse_box('{"bbox_2d": [10, 20, 30, 40], "label": "cat"}')
    (10.0, 20.0, 30.0, 40.0)
    """
    if not isinstance(text, str):
        return None
    match = _BOX_RE.search(text[:MAX_ANSWER_CHARS])
    if match is None:
        return None
    box = tuple(float(v) for v in match.groups())
    return box if all(math.isfinite(v) for v in box) else None  # type: ignore[return-value]


def _loads(text: str) -> Any:
    """``json.loads`` that tolerates single quotes; ``None`` when it is not JSON."""
    for candidate in (text, text.replace("'", '"')):
        try:
            return json.loads(candidate)
        except (ValueError, RecursionError):
            continue
    return None


def load_json_list(
    text: str | None, *, repair: bool = True, max_chars: int | None = MAX_ANSWER_CHARS
) -> list | None:
    """A JSON list from an answer: ```` ```json ```` fences stripped, single quotes tolerated.

    With ``repair`` a truncated or wrapped list is cut at its last complete ``}`` element. A single
    object is read as a one-element list. ``None`` when no list can be read.

    >>> load_json_list("[{'a': 1}, {'a': 2}, {'a'")
    [{'a': 1}, {'a': 2}]
    """
    if not isinstance(text, str):
        return None
    text = text[:max_chars]
    fenced = _FENCE_RE.search(text)
    if fenced:
        text = fenced.group(1)
    value = _loads(text)
    if value is None and repair:
        start, cut = text.find("["), text.rfind("}")
        if 0 <= start < cut:
            value = _loads(text[start : cut + 1] + "]")
    if isinstance(value, dict):
        value = [value]
    return value if isinstance(value, list) else None


def _is_nothing(text: str) -> bool:
    """The explicit 'nothing here' answers: "No Objects" (Visual-RFT), None / null (VLM-R1)."""
    text = text.strip().strip("`").removeprefix("json").strip().rstrip(".").lower()
    return text in _NO_OBJECTS


def _real(value: Any) -> float | None:
    """A finite int/float (not bool) as float, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        value = float(value)
    except OverflowError:  # a JSON integer with hundreds of digits
        return None
    return value if math.isfinite(value) else None


def _box_items(
    text: Any, read: Callable[[dict], Any], *, prediction: bool, repair: bool = False
) -> list | None:
    """Shared skeleton of the box-list parsers: "nothing" answers, JSON loading, per-item ``read``.

    Predictions are read from a bounded prefix (``repair``: see :func:`load_json_list`); solutions
    are read whole. Any unreadable item makes the whole list unreadable: a malformed list earns
    nothing, rather than being scored on the items that happen to parse.
    """
    if not isinstance(text, str):
        return None
    if _is_nothing(text):
        return []
    items = load_json_list(text, repair=repair, max_chars=MAX_ANSWER_CHARS if prediction else None)
    if items is None:
        return None
    out = [read(item) if isinstance(item, dict) else None for item in items]
    return None if None in out else out


def _detection_prediction(item: dict) -> tuple[Box, float] | None:
    box = _finite_box(item.get("Position", item.get("position")))
    conf = _real(item.get("Confidence", item.get("confidence")))
    return None if box is None or conf is None else (box, min(1.0, max(0.0, conf)))


def _detection_truth(item: dict) -> Box | None:
    return _finite_box(item.get("Position", item.get("position")))


def parse_detection(text: str | None) -> list[tuple[Box, float]] | None:
    """Visual-RFT boxes ``[{"Position": [x1, y1, x2, y2], "Confidence": 0.93}, ...]`` with confidences.

    "No Objects" or ``[]`` gives ``[]``. Duplicate positions are dropped (first kept), a truncated
    list is cut at its last complete element, confidences are clipped to [0, 1], at most
    :data:`MAX_BOXES` boxes are kept. Any element without a 4-number ``Position`` and a finite
    ``Confidence`` makes the whole answer unreadable (``None``).

    >>> parse_detection("[{'Position': [1, 2, 3, 4], 'Confidence': 1.5}]")
    [((1.0, 2.0, 3.0, 4.0), 1.0)]
    """
    boxes = _box_items(text, _detection_prediction, prediction=True, repair=True)
    if boxes is None:
        return None
    first = {}
    for box, conf in boxes:
        first.setdefault(box, conf)
    return list(first.items())[:MAX_BOXES]


def parse_detection_solution(text: str) -> list[Box]:
    """Ground-truth boxes in the Visual-RFT format (confidences ignored); ``ValueError`` if malformed."""
    boxes = _box_items(text, _detection_truth, prediction=False)
    if boxes is None:
        raise ValueError(f"malformed detection solution: {text!r}")
    _check_solution_boxes(boxes, text)
    return boxes


def _ovd_item(item: dict) -> tuple[Box, str] | None:
    box, label = _finite_box(item.get("bbox_2d")), item.get("label")
    return None if box is None or not isinstance(label, str) else (box, label.strip().lower())


def parse_ovd(text: str | None) -> list[tuple[Box, str]] | None:
    """VLM-R1 open-vocabulary boxes: ```` ```json [{"bbox_2d": [...], "label": "dog"}] ``` ````.

    ``None`` / "No Objects" / ``[]`` give ``[]``; labels are lower-cased and stripped; at most
    :data:`MAX_BOXES` boxes are kept. An element without a 4-number ``bbox_2d`` or a string
    ``label`` makes the answer unreadable (``None``).

    >>> parse_ovd('```json\\n[{"bbox_2d": [1, 2, 3, 4], "label": " Dog"}]\\n```')
    [((1.0, 2.0, 3.0, 4.0), 'dog')]
    """
    boxes = _box_items(text, _ovd_item, prediction=True)
    return None if boxes is None else boxes[:MAX_BOXES]


def parse_ovd_solution(text: str) -> list[tuple[Box, str]]:
    """Ground-truth OVD boxes; ``ValueError`` if malformed."""
    boxes = _box_items(text, _ovd_item, prediction=False)
    if boxes is None:
        raise ValueError(f"malformed ovd solution: {text!r}")
    _check_solution_boxes([b for b, _ in boxes], text)
    return boxes


def parse_box_solution(text: str) -> Box:
    """Ground-truth grounding box ``[x1, y1, x2, y2]``; ``ValueError`` if malformed."""
    box = parse_box(text)
    if box is None:
        raise ValueError(f"malformed grounding solution: {text!r}")
    _check_solution_boxes([box], text)
    return box


def _check_solution_boxes(boxes: list[Box], text: str) -> None:
    for x1, y1, x2, y2 in boxes:
        if x2 < x1 or y2 < y1:
            raise ValueError(f"solution box {[x1, y1, x2, y2]} has x2 < x1 or y2 < y1 in {text!r}")

"""Visual-RFT detection (R_IoU, R_conf) and VLM-R1 grounding (REC IoU) scores for one sample.

Scorers take the completion's answer text and the solution's answer text and return a float;
unreadable predictions score 0, malformed solutions raise ``ValueError``.
"""

from __future__ import annotations

from functools import lru_cache

from vlmrl.rewards.answers import (
    Box,
    parse_box,
    parse_box_solution,
    parse_detection,
    parse_detection_solution,
)
from vlmrl.rewards.boxes import iou, match_by_confidence

#: Visual-RFT's match threshold (a match needs IoU strictly above it).
DETECTION_IOU_THRESHOLD = 0.5


@lru_cache(maxsize=4096)
def _gt_boxes(solution: str) -> tuple[Box, ...]:
    # A group's G completions share one solution: parse it once.
    return tuple(parse_detection_solution(solution))


def detection_scores(answer: str, solution: str) -> tuple[float, float]:
    """``(R_IoU, R_conf)`` of a Visual-RFT answer against the ground-truth list.

    R_IoU = sum of matched IoUs / max(N_gt, N_pred); R_conf = mean over predictions of c if matched
    else 1 - c. Correction to the reference: "No Objects" against an empty ground truth is a perfect
    answer, (1, 1), instead of never scoring.

    >>> detection_scores('[{"Position": [0, 0, 10, 10], "Confidence": 0.8}]', "[{'Position': [0, 0, 10, 10]}]")
    (1.0, 0.8)
    >>> detection_scores("No Objects", "No Objects")
    (1.0, 1.0)
    """
    gts = _gt_boxes(solution)
    preds = parse_detection(answer)
    if preds is None:
        return 0.0, 0.0
    if not preds:
        return (1.0, 1.0) if not gts else (0.0, 0.0)
    matches = match_by_confidence(preds, gts, DETECTION_IOU_THRESHOLD)
    r_iou = sum(v for _, v in matches) / max(len(gts), len(preds))
    r_conf = sum(c if v > 0 else 1.0 - c for c, v in matches) / len(matches)
    return min(1.0, r_iou), min(1.0, max(0.0, r_conf))


def iou_confidence(answer: str, solution: str) -> float:
    """Visual-RFT detection accuracy R_IoU + R_conf, in [0, 2].

    >>> iou_confidence('[{"Position": [0, 0, 10, 10], "Confidence": 0.8}]', "[{'Position': [0, 0, 10, 10]}]")
    1.8
    """
    r_iou, r_conf = detection_scores(answer, solution)
    return r_iou + r_conf


def detection_iou(answer: str, solution: str) -> float:
    """R_IoU alone, in [0, 1]."""
    return detection_scores(answer, solution)[0]


def detection_confidence(answer: str, solution: str) -> float:
    """R_conf alone, in [0, 1]."""
    return detection_scores(answer, solution)[1]


@lru_cache(maxsize=4096)
def _gt_box(solution: str) -> Box:
    return parse_box_solution(solution)


def grounding_iou(answer: str, solution: str) -> float:
    """VLM-R1 REC reward: IoU of the first predicted box with the ground-truth box, no threshold.

    >>> grounding_iou('{"bbox_2d": [0, 0, 10, 10], "label": "cup"}', "[0, 0, 10, 20]")
    0.5
    """
    gt = _gt_box(solution)
    box = parse_box(answer)
    return 0.0 if box is None else iou(box, gt)

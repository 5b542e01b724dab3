"""Box geometry: IoU and the two greedy matchings the detection rewards use.

Boxes are ``(x1, y1, x2, y2)`` in any consistent unit, continuous convention (area = w * h, as
COCO). A box with x2 < x1 or y2 < y1 has no area, so its IoU with anything is 0: a model gains
nothing from inverted boxes, and they still count as predictions.
"""

from __future__ import annotations

from collections.abc import Sequence

from vlmrl.rewards.answers import Box


def box_area(box: Box) -> float:
    """Area of a box; 0 for an inverted or degenerate box.

    >>> box_area((0, 0, 10, 5)), box_area((10, 0, 0, 5))
    (50, 0.0)
    """
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (0 when either has no area).

    >>> iou((0, 0, 10, 10), (5, 0, 15, 10))
    0.3333333333333333
    """
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = box_area(a) + box_area(b) - inter
    # `union > 0` is False for NaN (overflowing coordinates); min() guards a one-ulp excess.
    return min(1.0, inter / union) if union > 0 else 0.0


def match_by_confidence(
    preds: Sequence[tuple[Box, float]], gts: Sequence[Box], threshold: float = 0.5
) -> list[tuple[float, float]]:
    """Visual-RFT matching: ``(confidence, iou)`` per prediction, in descending confidence order.

    Each prediction, most confident first (stable on ties), takes the still-unmatched ground-truth
    box with the highest IoU (first on ties); above ``threshold`` it is a match, recorded with that
    IoU and consuming the ground truth, else it records IoU 0. Greedy, not Hungarian.

    >>> match_by_confidence([((0, 0, 10, 10), 0.2), ((0, 0, 10, 9), 0.9)], [(0, 0, 10, 10)])
    [(0.9, 0.9), (0.2, 0.0)]
    """
    free = list(gts)
    out = []
    for box, conf in sorted(preds, key=lambda p: -p[1]):
        best, best_i = 0.0, -1
        for i, gt in enumerate(free):
            value = iou(box, gt)
            if value > best:
                best, best_i = value, i
        if best > threshold:
            del free[best_i]
            out.append((conf, best))
        else:
            out.append((conf, 0.0))
    return out


def match_globally(
    preds: Sequence[Box], gts: Sequence[Box], threshold: float = 0.5
) -> list[tuple[int, int, float]]:
    """VLM-R1 matching: repeatedly take the highest-IoU unmatched (pred, gt) pair with IoU >= threshold.

    Returns ``(pred_index, gt_index, iou)`` triples; ties go to the lower prediction, then gt, index.

    >>> match_globally([(0, 0, 10, 8), (0, 0, 10, 10)], [(0, 0, 10, 9)])
    [(1, 0, 0.9)]
    """
    pairs = sorted(
        (
            (-v, p, g)
            for p, pb in enumerate(preds)
            for g, gb in enumerate(gts)
            if (v := iou(pb, gb)) >= threshold
        ),
    )
    used_p: set[int] = set()
    used_g: set[int] = set()
    out = []
    for neg, p, g in pairs:
        if p not in used_p and g not in used_g:
            used_p.add(p)
            used_g.add(g)
            out.append((p, g, -neg))
    return out

"""VLM-R1 open-vocabulary detection (OVD) scores for one sample: od_map, od_ap50, od_length, od_weighted.

COCO mAP is computed here rather than by building pycocotools objects for every completion (which
costs milliseconds per sample): :func:`coco_ap` reproduces pycocotools' single-image bbox
evaluation (greedy matching per category in score order, IoU thresholds 0.50:0.05:0.95, maxDets 100,
101-point interpolated precision, mean over the categories present in the ground truth), and the
tests check it against pycocotools on random cases. All prediction scores are 1.0, so ties keep the
order of the answer, as pycocotools' stable sort does.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import defaultdict
from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np

from vlmrl.rewards.answers import Box, parse_ovd, parse_ovd_solution
from vlmrl.rewards.boxes import box_area, iou, match_globally

# The exact float grids pycocotools uses (Params.setDetParams).
_IOU_THRS = [min(float(t), 1 - 1e-10) for t in np.linspace(0.5, 0.95, 10)]
_REC_THRS = [float(r) for r in np.linspace(0.0, 1.0, 101)]
_MAX_DETS = 100
_MAX_AREA = 1e5**2  # COCO's "all" area range: an unmatched larger detection is ignored
_EPS = float(np.spacing(1))

Labelled = Sequence[tuple[Box, str]]


def _interpolated_ap(tp_fp: list[tuple[int, int]], n_gt: int) -> float:
    """101-point interpolated AP from cumulative (tp, fp) counts in score order (pycocotools)."""
    recall = [tp / n_gt for tp, _ in tp_fp]
    precision = [tp / (tp + fp + _EPS) for tp, fp in tp_fp]
    for i in range(len(precision) - 1, 0, -1):  # make precision non-increasing
        if precision[i] > precision[i - 1]:
            precision[i - 1] = precision[i]
    # Recall threshold r takes the precision at the first index whose recall reaches r.
    total, covered = 0.0, 0
    for r, p in zip(recall, precision, strict=True):
        reached = bisect_right(_REC_THRS, r)
        if reached > covered:
            total += p * (reached - covered)
            covered = reached
    return total / len(_REC_THRS)


def _category_aps(gts: list[Box], dts: list[Box]) -> list[float]:
    """AP of one category at each IoU threshold."""
    dts = dts[:_MAX_DETS]
    ious = [[iou(d, g) for g in gts] for d in dts]
    ignorable = [box_area(d) > _MAX_AREA for d in dts]
    aps = []
    for thr in _IOU_THRS:
        taken = [False] * len(gts)
        tp = fp = 0
        tp_fp = []
        for row, ignore in zip(ious, ignorable, strict=True):
            best, m = thr, -1
            for g, value in enumerate(row):
                # pycocotools keeps the last gt among equal IoUs (it tests `< best`).
                if not taken[g] and value >= best:
                    best, m = value, g
            if m >= 0:
                taken[m] = True
                tp += 1
            elif not ignore:
                fp += 1
            tp_fp.append((tp, fp))
        aps.append(_interpolated_ap(tp_fp, len(gts)))
    return aps


def coco_ap(gt: Labelled, pred: Labelled) -> tuple[float, float]:
    """``(mAP@[.5:.95], AP50)`` of predicted labelled boxes (all scored 1.0) on one image.

    Per-category AP averaged over the categories present in ``gt``; predictions with other labels
    cannot change it (as in COCO). ``gt`` must not be empty.

    >>> coco_ap([((0, 0, 10, 10), "dog")], [((0, 0, 9, 8), "dog"), ((50, 50, 60, 60), "cat")])
    (0.5, 1.0)
    """
    by_gt: dict[str, list[Box]] = defaultdict(list)
    for box, label in gt:
        by_gt[label].append(box)
    by_pred: dict[str, list[Box]] = defaultdict(list)
    for box, label in pred:
        by_pred[label].append(box)
    per_category = [_category_aps(boxes, by_pred.get(label, [])) for label, boxes in by_gt.items()]
    mean_ap = sum(sum(aps) for aps in per_category) / (len(per_category) * len(_IOU_THRS))
    ap50 = sum(aps[0] for aps in per_category) / len(per_category)
    # COCO's precision tp / (tp + fp + eps) leaves a perfect answer at 1 - 2e-16: round that away.
    return round(mean_ap, 12), round(ap50, 12)


@lru_cache(maxsize=4096)
def _gt(solution: str) -> tuple[tuple[Box, str], ...]:
    # A group's G completions share one solution: parse it once.
    return tuple(parse_ovd_solution(solution))


def _score(answer: str, solution: str, score: Callable[[Labelled, Labelled], float]) -> float:
    """``score(gt, pred)`` for two non-empty lists; the shared edge cases otherwise: unreadable
    answer 0, both empty 1 (correction: "None" when nothing is present is a correct answer), exactly
    one empty 0."""
    gt, pred = _gt(solution), parse_ovd(answer)
    if pred is None:
        return 0.0
    if not gt or not pred:
        return float(not gt and not pred)
    return score(gt, pred)


def od_map(answer: str, solution: str) -> float:
    """COCO mAP@[.5:.95] of the answer's boxes; a wrong label cannot lower it (see od_length).

    >>> od_map('```json\\n[{"bbox_2d": [0, 0, 9, 8], "label": "dog"}]\\n```', '[{"bbox_2d": [0, 0, 10, 10], "label": "dog"}]')
    0.5
    """
    return _score(answer, solution, lambda gt, pred: coco_ap(gt, pred)[0])


def od_ap50(answer: str, solution: str) -> float:
    """COCO AP at IoU 0.5 of the answer's boxes.

    >>> od_ap50('[{"bbox_2d": [0, 0, 10, 6], "label": "dog"}]', '[{"bbox_2d": [0, 0, 10, 10], "label": "dog"}]')
    1.0
    """
    return _score(answer, solution, lambda gt, pred: coco_ap(gt, pred)[1])


def od_length(answer: str, solution: str) -> float:
    """VLM-R1's odLength: min(1, N_gt / N_pred) * mAP, N_pred counting every predicted box.

    Unlike plain mAP, boxes with labels absent from the ground truth are paid for.

    >>> gt = '[{"bbox_2d": [0, 0, 10, 10], "label": "dog"}]'
    >>> od_length('[{"bbox_2d": [0, 0, 10, 10], "label": "dog"}, {"bbox_2d": [0, 0, 5, 5], "label": "cat"}]', gt)
    0.5
    >>> od_length("None", "None")
    1.0
    """
    return _score(
        answer, solution, lambda gt, pred: min(1.0, len(gt) / len(pred)) * coco_ap(gt, pred)[0]
    )


def _weighted(gt: Labelled, pred: Labelled) -> float:
    matches = match_globally([b for b, _ in pred], [b for b, _ in gt])
    position = sum(v for p, g, v in matches if pred[p][1] == gt[g][1]) / len(gt)
    unmatched = (len(gt) - len(matches)) / len(gt) + (len(pred) - len(matches)) / len(pred)
    return 0.7 * position + 0.3 * (1.0 - unmatched / 2)


def od_weighted(answer: str, solution: str) -> float:
    """VLM-R1's weighted sum: 0.7 * position + 0.3 * completeness over a greedy global matching.

    Pairs with IoU >= 0.5 are matched greedily by IoU regardless of label; a label mismatch keeps
    the match but contributes IoU 0. position = sum IoU / N_gt; completeness = 1 - (unmatched_gt /
    N_gt + unmatched_pred / N_pred) / 2. Empty ground truth: 1 if nothing predicted else 0; an empty
    prediction against a non-empty ground truth scores 0.

    >>> od_weighted('[{"bbox_2d": [0, 0, 10, 10], "label": "cat"}]', '[{"bbox_2d": [0, 0, 10, 10], "label": "dog"}]')
    0.3
    """
    return _score(answer, solution, _weighted)

"""VLM-R1 OVD rewards: hand-computed cases, the reference defects, and coco_ap against pycocotools."""

import contextlib
import io
import json
import random

import pytest

from vlmrl.rewards.ovd import coco_ap, od_ap50, od_length, od_map, od_weighted


def ovd(*items: tuple[list[float], str]) -> str:
    return "```json\n" + json.dumps([{"bbox_2d": b, "label": lab} for b, lab in items]) + "\n```"


DOG = ([0, 0, 100, 100], "dog")
CAT = ([200, 200, 300, 300], "cat")


def pycocotools_ap(gt, pred) -> tuple[float, float]:
    """The reference: pycocotools COCOeval on one in-memory image, all prediction scores 1.0."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    labels = sorted({lab for _, lab in gt} | {lab for _, lab in pred})
    cat = {lab: i + 1 for i, lab in enumerate(labels)}

    def xywh(b):
        return [b[0], b[1], b[2] - b[0], b[3] - b[1]]

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {
            "images": [{"id": 1}],
            "categories": [{"id": i} for i in cat.values()],
            "annotations": [
                {
                    "id": k + 1,
                    "image_id": 1,
                    "category_id": cat[lab],
                    "bbox": xywh(b),
                    "area": (b[2] - b[0]) * (b[3] - b[1]),
                    "iscrowd": 0,
                }
                for k, (b, lab) in enumerate(gt)
            ],
        }
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(
            [
                {"image_id": 1, "category_id": cat[lab], "bbox": xywh(b), "score": 1.0}
                for b, lab in pred
            ]
        )
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0]), float(ev.stats[1])


def random_case(rng: random.Random):
    labels = ["a", "b", "c"]

    def box(near=None):
        if (
            near is not None and rng.random() < 0.7
        ):  # a jittered copy: IoUs spread over the thresholds
            return [max(0, v + rng.randint(-15, 15)) for v in near]
        x, y = rng.randint(0, 150), rng.randint(0, 150)
        return [x, y, x + rng.randint(5, 60), y + rng.randint(5, 60)]

    gt = [(box(), rng.choice(labels)) for _ in range(rng.randint(1, 6))]
    pred = []
    for _ in range(rng.randint(1, 8)):
        b, lab = rng.choice(gt)
        b = box(near=b)
        if b[2] <= b[0] or b[3] <= b[1]:
            b = [b[0], b[1], b[0] + 5, b[1] + 5]
        pred.append((b, lab if rng.random() < 0.8 else rng.choice(labels + ["z"])))
    return gt, pred


def test_coco_ap_matches_pycocotools_on_random_cases():
    rng = random.Random(0)
    for _ in range(150):
        gt, pred = random_case(rng)
        ours = coco_ap(
            [(tuple(map(float, b)), lab) for b, lab in gt],
            [(tuple(map(float, b)), lab) for b, lab in pred],
        )
        assert ours == pytest.approx(pycocotools_ap(gt, pred), abs=1e-9), (gt, pred)


def test_coco_ap_matches_pycocotools_on_duplicates_and_ties():
    gt = [([0, 0, 10, 10], "a"), ([0, 0, 10, 10], "a"), ([5, 0, 15, 10], "a")]
    pred = [
        ([0, 0, 10, 10], "a"),
        ([0, 0, 10, 10], "a"),
        ([0, 0, 10, 10], "a"),
        ([5, 0, 15, 10], "b"),
    ]
    ours = coco_ap(
        [(tuple(map(float, b)), lab) for b, lab in gt],
        [(tuple(map(float, b)), lab) for b, lab in pred],
    )
    assert ours == pytest.approx(pycocotools_ap(gt, pred), abs=1e-9)


def test_perfect_and_partial_map():
    assert od_map(ovd(DOG, CAT), ovd(DOG, CAT)) == 1.0
    # IoU 0.72 passes thresholds 0.50..0.70: 5 of 10.
    assert od_map(ovd(([0, 0, 90, 80], "dog")), ovd(DOG)) == pytest.approx(0.5)
    assert od_ap50(ovd(([0, 0, 90, 80], "dog")), ovd(DOG)) == 1.0
    # One of two categories found: the mean over GT categories halves.
    assert od_map(ovd(DOG), ovd(DOG, CAT)) == pytest.approx(0.5)


def test_map_ignores_wrong_labels_but_od_length_pays_for_them():
    spam = ovd(DOG, ([0, 0, 10, 10], "zebra"), ([5, 5, 50, 50], "car"), ([1, 1, 2, 2], "tree"))
    assert od_map(spam, ovd(DOG)) == 1.0
    assert od_length(spam, ovd(DOG)) == pytest.approx(0.25)  # N_pred counts all 4 boxes


def test_od_length_does_not_reward_under_prediction_beyond_map():
    # s = min(1, N_gt / N_pred) = 1 when predicting fewer boxes; mAP alone penalises the miss.
    assert od_length(ovd(DOG), ovd(DOG, CAT)) == pytest.approx(0.5)


@pytest.mark.parametrize("fn", [od_map, od_ap50, od_length, od_weighted])
def test_empty_cases(fn):
    # Defect fixed: "None" when nothing is present is a correct answer.
    assert fn("None", "None") == 1.0
    assert fn("```json\nNone\n```", "[]") == 1.0
    assert fn("[]", "None") == 1.0
    assert fn(ovd(DOG), "None") == 0.0
    assert fn("None", ovd(DOG)) == 0.0
    assert fn("garbage {", "None") == 0.0
    assert fn("", ovd(DOG)) == 0.0


def test_od_weighted_hand_computed():
    gt = ovd(DOG, CAT)
    # Perfect.
    assert od_weighted(gt, gt) == pytest.approx(1.0)
    # DOG exact, CAT labelled "dog": matched with IoU 0; pos = 1/2, compl = 1.
    assert od_weighted(ovd(DOG, ([200, 200, 300, 300], "dog")), gt) == pytest.approx(
        0.7 * 0.5 + 0.3
    )
    # DOG only, plus a far box: matched 1; unmatched_gt 1/2, unmatched_pred 1/2 -> compl 0.5.
    far = ([900, 900, 950, 950], "dog")
    assert od_weighted(ovd(DOG, far), gt) == pytest.approx(0.7 * 0.5 + 0.3 * 0.5)
    # IoU 0.5 exactly is a match (>=): box [0, 0, 100, 50] vs DOG.
    assert od_weighted(ovd(([0, 0, 100, 50], "dog")), ovd(DOG)) == pytest.approx(0.7 * 0.5 + 0.3)


def test_od_weighted_matches_greedily_by_highest_iou():
    gt = ovd(([0, 0, 100, 100], "a"), ([0, 0, 100, 60], "a"))
    # Pred 0 overlaps gt0 (0.8) and gt1 (0.75); pred 1 overlaps gt1 exactly. Global greedy takes
    # (pred1, gt1) = 1.0 first, then (pred0, gt0) = 0.8.
    pred = ovd(([0, 0, 100, 80], "a"), ([0, 0, 100, 60], "a"))
    assert od_weighted(pred, gt) == pytest.approx(0.7 * (1.0 + 0.8) / 2 + 0.3)


def test_malformed_ovd_solution_raises():
    with pytest.raises(ValueError, match="malformed ovd solution"):
        od_map(ovd(DOG), "[{'bbox_2d': [1, 2, 3]}]")
    with pytest.raises(ValueError, match="x2 < x1"):
        od_map(ovd(DOG), ovd(([10, 0, 0, 10], "dog")))


def test_unreadable_predictions_score_zero():
    gt = ovd(DOG)
    for bad in [
        "[{'bbox_2d': [0, 0, 100, 100]}]",
        '[{"bbox_2d": [0, 0, "x", 1], "label": "dog"}]',
        "[1, 2]",
        "{{{{",
        "[" * 5000,
    ]:
        assert od_length(bad, gt) == 0.0


def test_inverted_predicted_boxes_count_but_never_match():
    # The inverted box ranks first (answer order) and is a false positive: precision 1/2 at recall 1.
    inverted = ovd(([100, 100, 0, 0], "dog"), DOG)
    assert od_map(inverted, ovd(DOG)) == pytest.approx(0.5)
    assert od_length(inverted, ovd(DOG)) == pytest.approx(0.25)

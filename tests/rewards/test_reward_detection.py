"""IoU, matching, Visual-RFT detection and VLM-R1 grounding: hand-computed values and defect cases."""

import json

import pytest

from vlmrl.rewards.accuracy import score_sample
from vlmrl.rewards.boxes import iou, match_by_confidence, match_globally
from vlmrl.rewards.detection import detection_scores, grounding_iou, iou_confidence


def det(*boxes: tuple[list[float], float]) -> str:
    return json.dumps([{"Position": b, "Confidence": c} for b, c in boxes])


def gt(*boxes: list[float]) -> str:
    return str(
        [{"Position": b} for b in boxes]
    )  # Python repr: single quotes, as in Visual-RFT data


def test_iou():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0  # touching
    assert iou((0, 0, 10, 10), (5, 5, 15, 15)) == pytest.approx(25 / 175)
    assert iou((10, 10, 0, 0), (0, 0, 10, 10)) == 0.0  # inverted box: no area
    assert iou((10, 10, 0, 0), (10, 10, 0, 0)) == 0.0
    assert iou((5, 5, 5, 5), (5, 5, 5, 5)) == 0.0  # degenerate
    assert iou((0, 0, 1e308, 1e308), (0, 0, 1, 1)) == 0.0  # overflowing areas: no NaN
    assert iou((0, 0, 1e200, 1e200), (0, 0, 1e200, 1e200)) == 0.0


# 1-D layout (all boxes span y 0..10): A = [0, 10], B = [4, 14]; P1 = [3, 13] overlaps A by 0.538
# and B by 0.818; P2 = B exactly, overlaps A by 0.43.
A, B = [0, 0, 10, 10], [4, 0, 14, 10]
P1, P2 = [3, 0, 13, 10], [4, 0, 14, 10]


def test_match_by_confidence_is_greedy_not_hungarian():
    matches = match_by_confidence([(tuple(P2), 0.8), (tuple(P1), 0.9)], [tuple(A), tuple(B)])
    # P1 (most confident) takes B; P2 is left with A at IoU 0.43 <= 0.5: no match.
    assert matches == [(0.9, pytest.approx(90 / 110)), (0.8, 0.0)]


def test_detection_scores_greedy_case():
    r_iou, r_conf = detection_scores(det((P2, 0.8), (P1, 0.9)), gt(A, B))
    assert r_iou == pytest.approx((90 / 110) / 2)  # a Hungarian assignment would give 0.77
    assert r_conf == pytest.approx((0.9 + (1 - 0.8)) / 2)


def test_detection_scores_extra_and_missing_boxes():
    # One extra low-confidence box: R_IoU over max(N_gt, N_pred) = 2; R_conf rewards its low confidence.
    assert detection_scores(det((A, 1.0), ([50, 50, 60, 60], 0.2)), gt(A)) == pytest.approx(
        (0.5, 0.9)
    )
    # One of two ground-truth boxes found.
    assert detection_scores(det((A, 0.7)), gt(A, [50, 50, 60, 60])) == pytest.approx((0.5, 0.7))


def test_detection_threshold_is_strict():
    half = [0, 0, 10, 5]  # IoU exactly 0.5 with A
    assert detection_scores(det((half, 0.6)), gt(A)) == pytest.approx((0.0, 0.4))
    just_over = [0, 0, 10, 5.1]
    assert detection_scores(det((just_over, 0.6)), gt(A)) == pytest.approx((0.51, 0.6))


def test_no_objects():
    # Defect fixed: nothing to find and "No Objects" answered is a perfect answer.
    assert detection_scores("No Objects", "No Objects") == (1.0, 1.0)
    assert detection_scores("[]", "[]") == (1.0, 1.0)
    assert iou_confidence("No Objects", "[]") == 2.0
    # Predicting boxes when there is nothing: R_IoU 0, R_conf rewards low confidence.
    assert detection_scores(det((A, 0.3)), "No Objects") == pytest.approx((0.0, 0.7))
    # Answering "No Objects" when there is something.
    assert detection_scores("No Objects", gt(A)) == (0.0, 0.0)


def test_unreadable_answers_score_zero():
    for bad in [
        "",
        "a cat",
        "[{'Position': [1, 2, 3], 'Confidence': 0.5}]",
        "[{'Position': [0, 0, 10, 10]}]",
        "{" * 10_000,
    ]:
        assert detection_scores(bad, gt(A)) == (0.0, 0.0), bad
        assert detection_scores(bad, "No Objects") == (0.0, 0.0), bad


def test_duplicates_inverted_boxes_and_confidence_clipping():
    assert detection_scores(det((A, 0.9), (A, 0.5)), gt(A)) == pytest.approx((1.0, 0.9))
    inverted = [10, 10, 0, 0]
    assert detection_scores(det((inverted, 0.9), (A, 0.9)), gt(A)) == pytest.approx((0.5, 0.5))
    assert detection_scores(det((A, 93)), gt(A)) == pytest.approx((1.0, 1.0))
    assert detection_scores(det((A, -1)), gt(A)) == pytest.approx((1.0, 0.0))


def test_truncated_completion_is_repaired():
    completion = "<think>two</think><answer>" + det((A, 0.9), ([50, 50, 60, 60], 0.9))[:-20]
    assert "</answer>" not in completion
    # The second box is cut: only A is read, and it matches.
    assert score_sample("detection", completion, f"<answer>{gt(A)}</answer>") == pytest.approx(1.9)


def test_malformed_detection_solution_raises():
    with pytest.raises(ValueError, match="malformed detection solution"):
        iou_confidence(det((A, 0.9)), "[{'Position': 'left'}]")


def test_grounding_iou():
    solution = "[0, 0, 10, 20]"
    assert grounding_iou('{"bbox_2d": [0, 0, 10, 10], "label": "cup"}', solution) == pytest.approx(
        0.5
    )
    assert grounding_iou("[0, 0, 10, 20]", solution) == 1.0
    assert grounding_iou(
        '[{"bbox_2d": [0, 0, 10, 5]}, {"bbox_2d": [0, 0, 10, 20]}]', solution
    ) == pytest.approx(0.25)  # first box
    assert grounding_iou("[0, 0, 10, 20", solution) == 0.0
    assert grounding_iou("[10, 20, 0, 0]", solution) == 0.0  # inverted
    assert grounding_iou("[50, 50, 60, 60]", solution) == 0.0
    assert grounding_iou("", solution) == 0.0
    assert grounding_iou("(0,0),(10,20)", solution) == 0.0
    with pytest.raises(ValueError, match="malformed grounding solution"):
        grounding_iou("[0, 0, 1, 1]", "the cup")


def test_match_globally_thresholds_and_ties():
    assert match_globally([(0, 0, 10, 5)], [(0, 0, 10, 10)]) == [(0, 0, 0.5)]  # >= 0.5 matches
    assert match_globally([(0, 0, 10, 4.9)], [(0, 0, 10, 10)]) == []
    # Two identical predictions for one box: the first wins.
    assert match_globally([(0, 0, 10, 10), (0, 0, 10, 10)], [(0, 0, 10, 10)]) == [(0, 0, 1.0)]

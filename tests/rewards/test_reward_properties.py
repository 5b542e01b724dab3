"""Property tests: on anything a model can emit, every reward stays in its documented range and never raises."""

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# The format pieces, solutions and adversarial outputs are the campaign's (`vlmrl doctor`).
from vlmrl.doctor.cases_rewards import ADVERSARIAL, FRAGMENTS, SOLUTIONS
from vlmrl.rewards import METRICS, PROBLEM_TYPES, REWARD_RANGES, REWARDS, score_sample
from vlmrl.rewards.accuracy import MAX_SCORE
from vlmrl.rewards.ovd import od_length, od_map

model_text = st.one_of(
    st.text(max_size=200),
    st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=4)), max_size=40).map("".join),
)
completion = st.one_of(
    model_text,
    model_text.map(lambda t: [{"role": "assistant", "content": t}]),
    model_text.map(lambda t: [{"role": "assistant", "content": [{"type": "text", "text": t}]}]),
)

sample = st.sampled_from(PROBLEM_TYPES).flatmap(
    lambda t: st.tuples(
        st.just(t), st.sampled_from(SOLUTIONS[t]).map(lambda s: f"<answer>{s}</answer>")
    )
)
# No example database: every run draws afresh from a fixed budget of examples.
FAST = settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


@pytest.mark.parametrize("name", sorted(REWARDS))
@FAST
@given(batch=st.lists(st.tuples(completion, sample, st.integers(0, 3000)), min_size=1, max_size=4))
def test_reward_in_documented_range(name, batch):
    completions = [c for c, _, _ in batch]
    columns = {
        "problem_type": [t for _, (t, _), _ in batch],
        "solution": [s for _, (_, s), _ in batch],
        "completion_ids": [[0] * n for _, _, n in batch],
        "prompts": ["q"] * len(batch),
        "unused_column": [None] * len(batch),
    }
    low, high = REWARD_RANGES[name]
    out = REWARDS[name](completions, **columns)
    assert len(out) == len(batch)
    for value in out:
        assert value is None or (
            isinstance(value, float) and math.isfinite(value) and low <= value <= high
        )


@FAST
@given(text=model_text, case=sample, data=st.data())
def test_score_sample_every_metric_in_range(text, case, data):
    problem_type, solution = case
    metric = data.draw(st.sampled_from(list(METRICS[problem_type])))
    value = score_sample(problem_type, f"<think>x</think><answer>{text}</answer>", solution, metric)
    assert 0.0 <= value <= MAX_SCORE.get(problem_type, 1.0)


boxes = st.lists(
    st.tuples(
        st.lists(st.integers(0, 60), min_size=4, max_size=4), st.sampled_from(["dog", "cat", "car"])
    ),
    max_size=6,
)


def ovd_json(items):
    return "[" + ", ".join(f'{{"bbox_2d": {b}, "label": "{lab}"}}' for b, lab in items) + "]"


@FAST
@given(pred=boxes, gt=boxes)
def test_od_length_never_exceeds_od_map(pred, gt):
    gt = [
        ([min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])], lab) for b, lab in gt
    ]
    answer, solution = ovd_json(pred), ovd_json(gt)
    assert 0.0 <= od_length(answer, solution) <= od_map(answer, solution) <= 1.0


@pytest.mark.parametrize("name", sorted(REWARDS))
def test_adversarial_outputs(name):
    import time

    for ptype, solutions in SOLUTIONS.items():
        n = len(ADVERSARIAL)
        columns = {
            "problem_type": [ptype] * n,
            "solution": [f"<answer>{solutions[-1]}</answer>"] * n,
            "completion_ids": [list(range(len(c) % 5000)) for c in ADVERSARIAL],
        }
        start = time.perf_counter()
        out = REWARDS[name](ADVERSARIAL, **columns)
        assert time.perf_counter() - start < 5.0, (name, ptype)
        low, high = REWARD_RANGES[name]
        assert all(v is None or low <= v <= high for v in out), (name, ptype, out)

"""RL diagnostics from fixed answerers: sampled accuracy next to greedy, pass@1 vs pass@k,
and the training curves read from a trainer log."""

import pytest

from vlmrl.eval import EvalSettings, evaluate
from vlmrl.eval.passk import pass_at_k
from vlmrl.rewards import extract_answer
from vlmrl.train.curves import plot_training_curves, training_curves


def coin(rows, frames, *, temperature=None, seed=None):
    """Greedy: always right. Sampled: right when (seed + row index) is even."""
    out = []
    for i, row in enumerate(rows):
        right = temperature is None or (seed + i) % 2 == 0
        gt = extract_answer(row["solution"]) if right else "Z"
        out.append(f"<think>t</think><answer>{gt}</answer>")
    return out


def test_sampled_accuracy_is_reported_next_to_greedy(bench, tmp_path):
    report = evaluate(bench, coin, tmp_path / "r", EvalSettings(sampled=True), progress=False)
    assert report["summary"]["mc_accuracy"]["mean"] == 1.0
    sampled = report["sampled"]["summary"]["mc_accuracy"]["mean"]
    assert 0.0 < sampled < 1.0  # about half the sampled answers are wrong
    plain = evaluate(bench, coin, tmp_path / "p", EvalSettings(), progress=False)
    assert "sampled" not in plain


def test_pass_at_k_counts_any_right_sample(bench):
    rows = [bench.dataset[i] for i in range(8)]
    out = pass_at_k(coin, rows, k=4, batch_size=3)
    # seeds step by 1000 per sample: for a row, every sample has the same parity -> a row is
    # right in all 4 samples or in none, so pass@1 == pass@4 and no group carries signal
    assert out["pass@1"] == pytest.approx(out["pass@4"]) and out["mixed_groups"] == 0.0

    def alternating(rows, frames, *, temperature=None, seed=None):
        alternating.calls += 1
        gt = [extract_answer(r["solution"]) if alternating.calls % 2 else "Z" for r in rows]
        return [f"<answer>{g}</answer>" for g in gt]

    alternating.calls = 0
    out = pass_at_k(alternating, rows, k=4, batch_size=8)
    assert out["pass@1"] == pytest.approx(0.5) and out["pass@4"] == 1.0
    assert out["mixed_groups"] == 1.0 and out["n"] == 8
    assert sum(f["n"] for f in out["families"].values()) == 8
    with pytest.raises(ValueError, match="k must be"):
        pass_at_k(coin, rows, k=0)


def test_training_curves_from_a_log(tmp_path):
    history = [
        {"step": 10, "rewards/accuracy/mean": 0.5, "rewards/format/mean": 0.9,
         "frac_reward_zero_std": 0.25, "temporal/p": 0.5, "temporal/p_shuffled": 0.4},
        {"step": 20, "rewards/accuracy/mean": 0.6, "rewards/format/mean": 1.0,
         "frac_reward_zero_std": 0.2, "loss": 0.1, "accuracy_by_family/motion": 0.7},
        {"train_runtime": 12.0},  # the final summary row has no step
    ]
    curves = training_curves(history)
    assert curves["accuracy"] == [(10, 0.5), (20, 0.6)]
    assert curves["frac_reward_zero_std"] == [(10, 0.25), (20, 0.2)]
    assert curves["temporal/p_shuffled"] == [(10, 0.4)] and "loss" not in curves
    assert curves["accuracy: motion"] == [(20, 0.7)]
    path = plot_training_curves(history, tmp_path / "curves.png")
    assert path.stat().st_size > 1000

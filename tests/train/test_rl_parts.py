"""Unit tests of the pieces of the GRPO-family trainer (no model needed)."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from vlmrl.train.augment import DifficultyAugmenter, RewardReplayBuffer, perturb_frames
from vlmrl.train.groups import (
    group_ids,
    select_informative_groups,
    select_rows,
    zero_advantage_groups,
)
from vlmrl.train.regression import group_standardize, reg_grpo_loss, sequence_log_ratio
from vlmrl.train.rl_config import AugmentConfig, RLConfig
from vlmrl.train.temporal import (
    ShuffledRollout,
    apply_temporal_bonus,
    non_identity_permutation,
    plan_shuffled_rollouts,
    shuffled_accuracy_table,
)

# ---------------------------------------------------------------- Reg-GRPO


def test_reg_grpo_is_finite_at_step_one_with_nonzero_grads():
    torch.manual_seed(0)
    logits = torch.randn(8, 5, requires_grad=True)
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5, 1.2, -0.4, -0.4, -0.4])
    mask = torch.ones(8, 5)
    mask[0, 3:] = 0
    groups = group_ids(8, 4)
    for reduction in ("sum", "mean"):
        per_token = torch.log_softmax(logits, -1)  # stand-in for per-token log-probs
        old = per_token.detach()  # first update: pi_theta == pi_old, every rho is 0
        out = reg_grpo_loss(per_token, old, advantages, mask, groups, eps=1e-4, reduction=reduction)
        assert torch.isfinite(out.loss)
        assert out.loss.item() == pytest.approx((advantages**2).mean().item())  # A^theta = 0
        (grad,) = torch.autograd.grad(out.loss, logits)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_reg_grpo_gradient_pushes_towards_positive_advantage():
    token_logps = torch.zeros(4, 3, requires_grad=True)
    advantages = torch.tensor([1.5, -0.5, -0.5, -0.5])
    out = reg_grpo_loss(
        token_logps, token_logps.detach(), advantages, torch.ones(4, 3), group_ids(4, 4)
    )
    (grad,) = torch.autograd.grad(out.loss, token_logps)
    assert (grad[0] < 0).all() and (
        grad[1:] > 0
    ).all()  # descent raises log-prob of the good sample


def test_reg_grpo_kl_term_and_sequence_reductions():
    per_token = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]])
    old = torch.full_like(per_token, -1.5)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    assert sequence_log_ratio(per_token, old, mask, "sum").tolist() == [0.0, 1.5]
    assert sequence_log_ratio(per_token, old, mask, "mean").tolist() == [0.0, 0.5]
    with pytest.raises(ValueError):
        sequence_log_ratio(per_token, old, mask, "max")
    out = reg_grpo_loss(
        per_token,
        old,
        torch.zeros(2),
        mask,
        torch.tensor([0, 0]),
        beta=0.1,
        ref_per_token_logps=old,
    )
    assert out.kl is not None and out.kl > 0
    with pytest.raises(ValueError, match="reference"):
        reg_grpo_loss(per_token, old, torch.zeros(2), mask, torch.tensor([0, 0]), beta=0.1)


def test_group_standardize_matches_per_group_formula_in_any_order():
    values = torch.tensor([1.0, 5.0, 2.0, 7.0, 3.0, 9.0])
    groups = torch.tensor([0, 1, 0, 1, 0, 1])
    out = group_standardize(values, groups, eps=0.0)
    for g in (0, 1):
        x = values[groups == g]
        assert torch.allclose(out[groups == g], (x - x.mean()) / x.std(unbiased=False))
    assert torch.isfinite(group_standardize(torch.zeros(4), group_ids(4, 2), eps=1e-4)).all()


# ---------------------------------------------------------------- T-GRPO


def test_shuffle_plan_covers_video_groups_only():
    gen = torch.Generator().manual_seed(0)
    rows = [{"data_type": "video", "frames": [0] * 4}] * 4 + [
        {"data_type": "image", "frames": [0]}
    ] * 4
    rows += [{"data_type": "video", "frames": [0]}] * 4  # one frame: nothing to shuffle
    plan = plan_shuffled_rollouts(rows, group_size=4, num_shuffled=2, generator=gen)
    assert [r.group for r in plan] == [0, 0] and len({r.order for r in plan}) == 1
    assert non_identity_permutation(1, gen) is None
    for n in (2, 3, 5):
        order = non_identity_permutation(n, gen)
        assert sorted(order) == list(range(n)) and order != tuple(range(n))


def test_temporal_bonus_per_group_with_images_untouched():
    plan = [
        ShuffledRollout(0, 0, (1, 0)),
        ShuffledRollout(0, 1, (1, 0)),
        ShuffledRollout(2, 8, (1, 0)),
    ]
    table = shuffled_accuracy_table(plan, [0.0, 1.0, 1.0], num_groups=3, num_shuffled=2)
    assert table[0].tolist() == [0.0, 1.0] and math.isnan(table[1, 0]) and table[2, 0] == 1.0
    ordered = torch.tensor([1.0, 1.0, 0.0, 0.05] + [1.0] * 4 + [0.0, 0.0, 0.0, 1.0])
    stats = apply_temporal_bonus(
        ordered, table, group_size=4, alpha=0.3, mu=1.0, correct_threshold=0.1
    )
    bonus = stats.bonus.tolist()
    # group 0: p = 0.5125 >= p~ = 0.5 -> correct completions (acc > 0.1) get 0.3
    assert bonus[:4] == pytest.approx([0.3, 0.3, 0.0, 0.0])
    assert all(math.isnan(b) for b in bonus[4:8])  # image group: not applicable
    assert bonus[8:] == [0.0] * 4  # p = 0.25 < p~ = 1: no bonus
    assert stats.p == pytest.approx([0.5125, 0.25]) and stats.p_shuffled == [0.5, 1.0]
    assert stats.applied == [True, False] and stats.rewarded == [True, False]


def test_num_shuffled_defaults_to_half_of_g():
    assert RLConfig(num_generations=8).num_shuffled == 4
    assert RLConfig(num_generations=8, algorithm="grpo").temporal_enabled is False
    with pytest.raises(ValueError):
        RLConfig(algorithm="ppo")
    with pytest.raises(ValueError, match="scale_rewards"):
        RLConfig(algorithm="reg_grpo", scale_rewards="none")
    assert RLConfig(algorithm="reg_grpo").to_trl("/tmp/x").steps_per_generation == 1


# ---------------------------------------------------------------- dynamic sampling


def test_zero_advantage_groups_are_dropped_with_their_rows():
    advantages = torch.tensor([0.0, 0.0, 1.0, -1.0, 0.0, 0.0])
    zero = zero_advantage_groups(advantages, 2)
    assert zero.tolist() == [True, False, True]
    batch = {
        "advantages": advantages,
        "completion_ids": torch.arange(12).view(6, 2),
        "visual_rows": list("abcdef"),
        "num_items_in_batch": torch.tensor(12),
    }
    kept = select_rows(batch, (~zero).repeat_interleave(2))
    assert kept["advantages"].tolist() == [1.0, -1.0]
    assert kept["completion_ids"].tolist() == [[4, 5], [6, 7]]
    assert kept["visual_rows"] == ["c", "d"] and kept["num_items_in_batch"] == 12


def test_informative_groups_are_padded_to_the_common_count():
    zero = torch.tensor([True, False, True, True])
    assert select_informative_groups(zero, 1).tolist() == [False, True, False, False]
    assert select_informative_groups(zero, 3).tolist() == [True, True, True, False]
    assert select_informative_groups(torch.tensor([True, True]), 0).tolist() == [True, True]


# ---------------------------------------------------------------- augmentation


def _row(pid="p", data_type="video", n=4):
    frames = [Image.fromarray(np.full((28, 28, 3), 120, np.uint8)) for _ in range(n)]
    return {
        "problem_id": pid,
        "data_type": data_type,
        "frames": frames,
        "process": "<think>" + " ".join(f"w{i}" for i in range(20)) + "</think>",
    }


def test_replay_buffer_keeps_the_last_window():
    buf = RewardReplayBuffer(window=3)
    buf.extend([1.0, 2.0, float("nan"), 3.0, 4.0])
    assert len(buf) == 3 and buf.mean() == pytest.approx(3.0)


def test_augmentation_direction_and_strength():
    aug = DifficultyAugmenter(AugmentConfig(enabled=True, min_history=4, window=100), seed=0)
    assert aug.augmentation(_row()).kind == "none"  # unseen prompt
    aug.update(["warmup"], [[1.0, 1.0, 1.0, 1.0]])  # buffer mean 1.0
    deltas = aug.update(
        ["hard", "harder", "easy", "easier", "ok"],
        [[0.8] * 4, [0.2] * 4, [1.3] * 4, [1.9] * 4, [1.0] * 4],
    )
    assert deltas == pytest.approx([0.2, 0.8, -0.3, -0.9, 0.0])
    assert "ok" not in aug.levels  # inside the dead zone

    hint, longer = aug.augmentation(_row("hard")).hint, aug.augmentation(_row("harder")).hint
    assert hint and longer and len(longer.split()) > len(hint.split())  # harder -> longer hint
    assert longer.startswith("w0 w1") and "<think>" not in longer

    def distortion(pid):
        a = aug.augmentation(_row(pid))
        assert a.kind == "perturb" and a.hint is None
        return np.mean([np.abs(np.asarray(f, float) - 120).mean() for f in a.frames])

    assert 0 < distortion("easy") < distortion("easier")  # easier -> stronger perturbation


def test_levels_accumulate_and_clip():
    aug = DifficultyAugmenter(AugmentConfig(enabled=True, min_history=1, gain=1.0), seed=0)
    aug.update(["a"], [[2.0]])
    for _ in range(5):
        aug.update(["x"], [[0.0]])
    assert aug.level("x") == 1.0  # clipped


def test_frame_masking_keeps_one_frame():
    cfg = AugmentConfig(max_noise_std=0.0, max_mask_prob=1.0)
    frames = perturb_frames(_row()["frames"], 1.0, True, cfg, np.random.default_rng(0))
    kept = [np.asarray(f).any() for f in frames]
    assert sum(kept) == 1
    image = perturb_frames(_row(n=1)["frames"], 1.0, False, cfg, np.random.default_rng(0))
    assert np.asarray(image[0]).any()  # images are never masked


def test_configs_from_recipe_mappings():
    from vlmrl.train.config_io import config_from_dict, config_to_dict
    from vlmrl.train.sft import SFTTrainConfig

    cfg = config_from_dict(
        RLConfig,
        {
            "algorithm": "reg_grpo",
            "num_generations": 4,
            "regression": {"sequence_logprob": "sum"},
            "augment": {"enabled": True, "window": 50},
            "prompt": {"hint_prefix": "Clue: "},
        },
    )
    assert cfg.regression.sequence_logprob == "sum" and cfg.augment.window == 50
    assert cfg.prompt.hint_prefix == "Clue: " and cfg.temporal.alpha == 0.3
    assert config_from_dict(RLConfig, config_to_dict(cfg)) == cfg
    with pytest.raises(ValueError, match=r"augment\.windw: unknown key \(did you mean .window.\?\)"):
        config_from_dict(RLConfig, {"augment": {"windw": 3}})
    sft = config_from_dict(
        SFTTrainConfig, {"learning_rate": 1e-5, "prompt": {"system_prompt": "Hi"}}
    )
    assert sft.prompt.system_prompt == "Hi" and sft.to_trl("/tmp/x").max_length is None

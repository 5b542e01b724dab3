"""The GRPO-family trainer on the tiny model, on CPU: a few real steps each."""

import json
import math

import numpy as np
import pytest
import torch
from trl import GRPOTrainer

from vlmrl.models import encode_chats, load_model
from vlmrl.models.loading import freeze_vision_tower
from vlmrl.train.grpo import build_grpo_trainer
from vlmrl.train.rl_config import AugmentConfig, LengthBonusConfig, RLConfig, TemporalConfig


def varied_reward(completions, **kwargs):
    """Depends on the sampled text, so groups get non-zero advantages."""
    return [float(len(c[0]["content"]) % 5) / 4 for c in completions]


def ordered_frames_accuracy(prompts, completions, frames, data_type, **kwargs):
    """1 when the prompt shows the row's frames in their true order, 0 when shuffled."""
    scores = []
    for prompt, row_frames, kind in zip(prompts, frames, data_type, strict=True):
        part = prompt[-1]["content"][0]
        if kind == "image":
            scores.append(1.0)
            continue
        shown = [np.asarray(f) for f in part["video"]]
        truth = [np.asarray(f) for f in row_frames]
        scores.append(float(all(np.array_equal(a, b) for a, b in zip(shown, truth, strict=True))))
    return scores


def make_trainer(model_dir, dataset, tmp_path, reward_funcs=(varied_reward,), freeze_vision=False,
                 **overrides):
    loaded = load_model(model_dir)
    if freeze_vision:
        freeze_vision_tower(loaded.model)
    settings = dict(
        algorithm="grpo",
        num_generations=4,
        max_completion_length=8,
        per_device_train_batch_size=8,
        max_steps=2,
        learning_rate=1e-3,
        beta=0.0,
        logging_steps=1,
        accuracy_reward=reward_funcs[0].__name__,
        trainer_kwargs={"disable_tqdm": True, "use_cpu": True},
    )
    settings.update(overrides)
    config = RLConfig(**settings)
    return build_grpo_trainer(
        loaded.model,
        loaded.processor,
        dataset,
        tmp_path / "out",
        config,
        reward_funcs=list(reward_funcs),
    )


def group_batch(dataset, video=0, image=4, g=4):
    return [dataset[video] for _ in range(g)] + [dataset[image] for _ in range(g)]


def forward_logps(trainer, output, visual_rows):
    ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
    mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
    trainer._forward_visual = visual_rows
    try:
        with torch.no_grad():
            logps, _, _ = trainer._get_per_token_logps_and_entropies(
                trainer.model, ids, mask, output["completion_ids"].size(1)
            )
    finally:
        trainer._forward_visual = None
    return logps * output["completion_mask"]


def test_visual_inputs_reach_the_loss_forward(tiny_rl_model_dir, frame_dataset, tmp_path):
    trainer = make_trainer(tiny_rl_model_dir, frame_dataset, tmp_path)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = (
        1  # set by Trainer.train; we call the loss directly
    )
    output = trainer._generate_and_score_completions(group_batch(frame_dataset))
    rows = output["visual_rows"]
    assert ["pixel_values_videos" in r for r in rows] == [True] * 4 + [False] * 4
    assert ["pixel_values" in r for r in rows] == [False] * 4 + [True] * 4
    base = forward_logps(trainer, output, rows)

    # the same completions scored with different frames: the video rows change, the image rows do not
    reversed_video = encode_chats(
        trainer.processing_class,
        [
            [
                {
                    "role": "user",
                    "content": [{"type": "video", "video": frame_dataset[0]["frames"][::-1]}],
                }
            ]
        ],
    ).visual_rows()[0]
    swapped = [
        {**r, "pixel_values_videos": reversed_video["pixel_values_videos"]} if i < 4 else r
        for i, r in enumerate(rows)
    ]
    changed = forward_logps(trainer, output, swapped)
    assert not torch.allclose(base[:4], changed[:4])
    assert torch.allclose(base[4:], changed[4:])
    noisy_image = [
        {**r, "pixel_values": torch.randn_like(r["pixel_values"])} if i >= 4 else r
        for i, r in enumerate(rows)
    ]
    assert not torch.allclose(base[4:], forward_logps(trainer, output, noisy_image)[4:])

    # the policy loss forward runs the vision tower on exactly the rows' patches
    seen = []
    hook = trainer.model.model.visual.register_forward_hook(
        lambda m, args, out: seen.append(args[0].shape[0])
    )
    try:
        loss = trainer._compute_loss(trainer.model, output)
    finally:
        hook.remove()
    expected = sum(r["pixel_values_videos"].shape[0] for r in rows[:4]) + sum(
        r["pixel_values"].shape[0] for r in rows[4:]
    )
    assert sum(seen) == expected
    assert torch.isfinite(loss)

    # TRL 1.16's own forward has no video: its log-probs differ from the video-aware ones
    with torch.no_grad():
        ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
        mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
        stock, _, _ = GRPOTrainer._get_per_token_logps_and_entropies(
            trainer, trainer.model, ids[:4], mask[:4], output["completion_ids"].size(1)
        )
    assert not torch.allclose(stock * output["completion_mask"][:4], base[:4])


def test_loss_forward_matches_a_plain_model_forward(tiny_rl_model_dir, frame_dataset, tmp_path):
    """Padding, visual tensors and 3D positions in the chunked forward equal a one-row forward."""
    trainer = make_trainer(tiny_rl_model_dir, frame_dataset, tmp_path)
    trainer.model.train()
    batch = group_batch(frame_dataset)
    output = trainer._generate_and_score_completions(batch)
    logps = forward_logps(trainer, output, output["visual_rows"])
    for i in (0, 5):
        prompt = trainer.last_prompts[i]
        enc = encode_chats(trainer.processing_class, [prompt])
        completion = output["completion_ids"][i][output["completion_mask"][i].bool()]
        ids = torch.cat([enc.input_ids[0], completion]).unsqueeze(0)
        types = torch.cat([enc.mm_token_type_ids[0], torch.zeros_like(completion)]).unsqueeze(0)
        with torch.no_grad():
            logits = trainer.model(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                mm_token_type_ids=types,
                **enc.visual,
            ).logits
        ref = torch.log_softmax(logits[0, -len(completion) - 1 : -1], -1).gather(
            1, completion[:, None]
        )[:, 0]
        assert torch.allclose(logps[i][: len(completion)], ref, atol=1e-4)


def test_shuffled_rollouts_share_the_generate_call(tiny_rl_model_dir, frame_dataset, tmp_path):
    trainer = make_trainer(tiny_rl_model_dir, frame_dataset, tmp_path, algorithm="t_grpo")
    trainer.model.train()
    calls = []
    generate = trainer.model.generate

    def spy(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return generate(*args, **kwargs)

    trainer.model.generate = spy
    output = trainer._generate_and_score_completions(group_batch(frame_dataset))
    assert calls == [8 + 2]  # 8 ordered + G~ = G/2 = 2 shuffled for the one video group
    assert output["completion_ids"].shape[0] == 8  # shuffled rollouts are not trained on
    assert len(output["visual_rows"]) == 8
    assert {r.group for r in trainer._shuffle_plan} == {0} and all(
        r.row < 4 for r in trainer._shuffle_plan
    )
    (order,) = {r.order for r in trainer._shuffle_plan}  # one frame order per group
    assert sorted(order) == [0, 1, 2, 3] and order != (0, 1, 2, 3)


def test_temporal_and_length_bonus_per_group(tiny_rl_model_dir, frame_dataset, tmp_path):
    trainer = make_trainer(
        tiny_rl_model_dir,
        frame_dataset,
        tmp_path,
        reward_funcs=(ordered_frames_accuracy,),
        algorithm="t_grpo",
        length_bonus=LengthBonusConfig(enabled=True, l_min=1, l_max=1000),
    )
    trainer.model.train()
    trainer._generate_and_score_completions(group_batch(frame_dataset))
    metrics = trainer._metrics["train"]
    # ordered frames: p = 1; shuffled frames: p~ = 0 -> every ordered video completion gets +0.3
    assert metrics["temporal/p"][-1] == 1.0 and metrics["temporal/p_shuffled"][-1] == 0.0
    assert metrics["temporal/bonus_group_fraction"][-1] == 1.0
    assert metrics["rewards/temporal_bonus/mean"][-1] == pytest.approx(0.3)  # video rows only
    bonus = list(trainer._logs["rewards"]["temporal_bonus"])
    assert bonus[-8:-4] == pytest.approx([0.3] * 4) and all(math.isnan(b) for b in bonus[-4:])
    # every ordered completion is correct (>= 2 per group) and within [1, 1000] tokens: +0.2 each
    assert list(trainer._logs["rewards"]["length_bonus"])[-8:] == pytest.approx([0.2] * 8)

    # mu > p / p~ switches the bonus off (p~ = 1 when frames order does not matter)
    trainer = make_trainer(
        tiny_rl_model_dir,
        frame_dataset,
        tmp_path,
        reward_funcs=(lambda completions, **k: [1.0] * len(completions),),
        algorithm="t_grpo",
        accuracy_reward="<lambda>",
        temporal=TemporalConfig(mu=1.5),
    )
    trainer.model.train()
    trainer._generate_and_score_completions(group_batch(frame_dataset))
    assert trainer._metrics["train"]["temporal/bonus_group_fraction"][-1] == 0.0


@pytest.mark.parametrize(
    "overrides",
    [
        dict(algorithm="grpo", loss_type="dapo", epsilon_high=0.28, beta=0.04),
        dict(algorithm="t_grpo", beta=0.04),
        dict(algorithm="reg_grpo", dynamic_sampling=True, beta=0.04),
    ],
    ids=["grpo-dapo", "t_grpo", "reg_grpo+dynamic"],
)
def test_algorithms_train_two_steps(tiny_rl_model_dir, frame_dataset, tmp_path, overrides):
    trainer = make_trainer(tiny_rl_model_dir, frame_dataset, tmp_path, **overrides)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert len(logs) == 2
    assert all(math.isfinite(log["loss"]) and math.isfinite(log["grad_norm"]) for log in logs)
    assert any(log["grad_norm"] > 0 for log in logs)
    assert any(
        not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True)
    )
    # the accuracy reward per data family (the fixture mixes motion videos and colour images)
    families = [{k for k in log if k.startswith("accuracy_by_family/")} for log in logs]
    assert all(families) and set().union(*families) <= {
        "accuracy_by_family/motion", "accuracy_by_family/color"}
    if overrides["algorithm"] == "t_grpo":
        assert all("temporal/p" in log or log.get("temporal/video_groups") == 0 for log in logs)
    if overrides.get("dynamic_sampling"):
        assert all("dynamic_sampling/kept_group_fraction" in log for log in logs)


def test_augmentation_adds_hints_and_perturbs_frames(tiny_rl_model_dir, frame_dataset, tmp_path):
    trainer = make_trainer(
        tiny_rl_model_dir,
        frame_dataset,
        tmp_path,
        augment=AugmentConfig(enabled=True, min_history=0),
    )
    trainer.model.train()
    hard, easy = frame_dataset[0]["problem_id"], frame_dataset[4]["problem_id"]
    trainer._augmenter.levels.update({hard: 1.0, easy: -1.0})
    trainer._generate_and_score_completions(group_batch(frame_dataset))
    prompts = trainer.last_prompts
    assert list(trainer._logs["prompt"])[0][-1]["content"][0] == {"type": "video"}  # no pixels kept
    video_text = prompts[-8][-1]["content"][1]["text"]
    assert "Hint: The square starts on one side" in video_text
    shown = np.asarray(prompts[-1][-1]["content"][0]["image"], dtype=float)
    assert np.abs(shown - np.asarray(frame_dataset[4]["frames"][0], dtype=float)).mean() > 10
    # all G rows of a group see the same augmentation
    assert all(
        np.array_equal(np.asarray(p[-1]["content"][0]["image"]), shown) for p in prompts[-4:]
    )
    metrics = trainer._metrics["train"]
    assert (
        metrics["augment/hint_fraction"][-1] == 0.5
        and metrics["augment/perturb_fraction"][-1] == 0.5
    )
    assert metrics["augment/buffer_mean"][-1] == pytest.approx(
        np.mean(trainer._augmenter.buffer._values)
    )


def test_group_layout_is_checked(tiny_rl_model_dir, frame_dataset, tmp_path):
    with pytest.raises(
        ValueError, match="divisible by num_generations|multiple of num_generations"
    ):
        make_trainer(
            tiny_rl_model_dir,
            frame_dataset,
            tmp_path,
            algorithm="t_grpo",
            per_device_train_batch_size=6,
        )
    with pytest.raises(ValueError, match="accuracy_reward"):
        make_trainer(
            tiny_rl_model_dir, frame_dataset, tmp_path, algorithm="t_grpo", accuracy_reward="nope"
        )
    with pytest.raises(ValueError, match="steps_per_generation = 1"):
        make_trainer(
            tiny_rl_model_dir,
            frame_dataset,
            tmp_path,
            algorithm="reg_grpo",
            gradient_accumulation_steps=2,
            trainer_kwargs={"disable_tqdm": True, "use_cpu": True, "steps_per_generation": 2},
        )


def test_checkpoints_carry_the_rollout_state(tiny_rl_model_dir, frame_dataset, tmp_path):
    # T-GRPO's shuffle generator and the augmentation controller are saved with each
    # trainer checkpoint and restored on resume (a resumed run continues them).
    settings = dict(
        algorithm="t_grpo",
        max_steps=1,
        save_strategy="steps",
        save_steps=1,
        augment=AugmentConfig(enabled=True, min_history=0),
    )
    trainer = make_trainer(tiny_rl_model_dir, frame_dataset, tmp_path, **settings)
    trainer.train()
    checkpoint = tmp_path / "out" / "checkpoint-1"
    saved = json.loads((checkpoint / "vlmrl_rl_state_0.json").read_text())
    assert saved["augmenter"]["buffer"] and saved["shuffle_generator"]

    fresh = make_trainer(tiny_rl_model_dir, frame_dataset, tmp_path, **settings)
    assert fresh._augmenter.state_dict() != saved["augmenter"]
    restored = {}
    load = fresh._load_optimizer_and_scheduler

    def load_and_record(path):  # what the resumed run starts from, before it trains on
        load(path)
        restored["shuffle_generator"] = fresh._shuffle_generator.get_state().tolist()
        restored["augmenter"] = json.loads(json.dumps(fresh._augmenter.state_dict()))

    fresh._load_optimizer_and_scheduler = load_and_record
    fresh.train(resume_from_checkpoint=str(checkpoint))
    assert restored == saved


# ---------------------------------------------------------------- vision-embedding cache


def tower_patches(model):
    """A list that receives the number of patches of every vision-tower call."""
    seen = []
    handle = model.model.visual.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[0]))
    return seen, handle


def rollout(trainer, batch, seed=0):
    """One generation + scoring, the policy log-probs and the loss, as a training step has them."""
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    torch.manual_seed(seed)
    output = trainer._generate_and_score_completions(batch)
    logps = forward_logps(trainer, output, output["visual_rows"])
    loss = trainer._compute_loss(trainer.model, output)
    return output, logps, loss


def frozen_trainer(model_dir, dataset, tmp_path, **overrides):
    trainer = make_trainer(model_dir, dataset, tmp_path, **overrides)
    freeze_vision_tower(trainer.model)
    return trainer


def test_cached_rollout_equals_the_uncached_one(tiny_rl_model_dir, frame_dataset, tmp_path):
    batch = group_batch(frame_dataset)  # 4 copies of a video, 4 of an image
    plain = frozen_trainer(tiny_rl_model_dir, frame_dataset, tmp_path / "a", vision_cache_mb=0)
    cached = frozen_trainer(tiny_rl_model_dir, frame_dataset, tmp_path / "b", vision_cache_mb=64)
    assert plain.vision_cache is None and cached.vision_cache is not None

    seen_plain, h1 = tower_patches(plain.model)
    seen_cached, h2 = tower_patches(cached.model)
    try:
        out_a, logps_a, loss_a = rollout(plain, batch)
        out_b, logps_b, loss_b = rollout(cached, batch)
    finally:
        h1.remove()
        h2.remove()

    # the same sampled completions, and log-probs / loss equal up to float32 rounding: the
    # tower sees 2 distinct items instead of 8 copies, and a matmul's rounding depends on
    # the batch it is part of
    assert torch.equal(out_a["completion_ids"], out_b["completion_ids"])
    assert torch.allclose(logps_a, logps_b, atol=1e-5, rtol=0)
    assert torch.allclose(loss_a, loss_b, atol=1e-6, rtol=0)
    assert (logps_a != 0).any()

    # uncached: 8 items for generation, 8 for the log-prob forward, 8 for the loss; cached:
    # the video and the image once, for everything
    rows = out_a["visual_rows"]
    one_video = rows[0]["pixel_values_videos"].shape[0]
    one_image = rows[4]["pixel_values"].shape[0]
    assert sum(seen_plain) == 3 * 4 * (one_video + one_image)
    assert sum(seen_cached) == one_video + one_image
    stats = cached.vision_cache.stats
    assert (stats.misses, stats.hits, stats.bypassed) == (2, 3 * 8 - 2, 0)


def test_a_trainable_tower_is_never_cached(tiny_rl_model_dir, frame_dataset, tmp_path):
    trainer = make_trainer(tiny_rl_model_dir, frame_dataset, tmp_path, vision_cache_mb=64)
    assert any(p.requires_grad for p in trainer.model.model.visual.parameters())
    seen, handle = tower_patches(trainer.model)
    try:
        output, _, _ = rollout(trainer, group_batch(frame_dataset))
    finally:
        handle.remove()
    rows = output["visual_rows"]
    per_pass = sum(r.get("pixel_values_videos", r.get("pixel_values")).shape[0] for r in rows)
    assert sum(seen) == 3 * per_pass
    assert trainer.vision_cache.stats.hits == 0 and len(trainer.vision_cache) == 0
    assert trainer.vision_cache.stats.bypassed >= 3


# ---------------------------------------------------------------- frames read at rollout time


def test_rollout_frames_are_read_from_arrow_with_equal_model_inputs(
    tiny_rl_model_dir, frame_dataset, tmp_path
):
    from vlmrl.train.prompts import build_prompt

    trainer = make_trainer(tiny_rl_model_dir, frame_dataset, tmp_path)
    assert "frames" not in trainer.train_dataset.column_names  # the dataloader yields no pixels
    assert "frames" in frame_dataset.column_names  # the caller's dataset is untouched
    for i in (0, 4):  # a video row and an image row
        light = dict(trainer.train_dataset[i])
        light["frames"] = trainer._frame_source.frames(light)
        prompts = [build_prompt(r, trainer.rl.prompt) for r in (light, frame_dataset[i])]
        fast, slow = (encode_chats(trainer.processing_class, [p]) for p in prompts)
        assert torch.equal(fast.input_ids, slow.input_ids)
        assert fast.visual.keys() == slow.visual.keys()
        assert all(torch.equal(fast.visual[k], slow.visual[k]) for k in fast.visual)


def test_rows_keep_their_frames_when_problem_ids_repeat(tiny_rl_model_dir, frame_dataset, tmp_path):
    from datasets import concatenate_datasets

    doubled = concatenate_datasets([frame_dataset, frame_dataset])
    trainer = make_trainer(tiny_rl_model_dir, doubled, tmp_path)
    assert trainer._frame_source is None and "frames" in trainer.train_dataset.column_names


def test_an_extracted_dataset_is_read_without_writing_into_it(
    tiny_rl_model_dir, stage_frames, tmp_path
):
    from vlmrl.data.extract import load_frame_dataset

    folder = stage_frames["rl"]
    before = sorted((p.name, p.stat().st_size) for p in folder.iterdir())
    dataset, _ = load_frame_dataset(folder)
    trainer = make_trainer(tiny_rl_model_dir, dataset, tmp_path, max_steps=1)
    trainer.train()
    assert trainer.state.global_step == 1
    assert sorted((p.name, p.stat().st_size) for p in folder.iterdir()) == before

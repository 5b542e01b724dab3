"""The trainers' data-wait figure (vlmrl.train.data_wait) and the SFT data path it measures."""

import time

import pytest
import torch

from tests.train.conftest import make_dataset
from vlmrl.data.extract import extract_dataset, load_frame_dataset
from vlmrl.data.frames import FrameOptions
from vlmrl.models import load_model
from vlmrl.train import data_wait
from vlmrl.train.grpo import VideoGRPOTrainer, resolve_reward_funcs
from vlmrl.train.rl_config import RLConfig
from vlmrl.train.sft import (
    SFTTrainConfig,
    VisionSFTCollator,
    build_sft_trainer,
    sft_dataset,
    sft_example,
)

SLEEP = 0.3


def sft_trainer(model_dir, dataset, out, steps=3, accumulation=1):
    config = SFTTrainConfig(
        max_steps=steps,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=accumulation,
        logging_steps=1,
        trainer_kwargs={"disable_tqdm": True, "use_cpu": True},
    )
    loaded = load_model(model_dir)
    return build_sft_trainer(loaded.model, loaded.processor, dataset, out, config)


def logged(trainer):
    return [e for e in trainer.state.log_history if "loss" in e]


class SlowCollator:
    """The trainer's collator, `SLEEP` seconds slower: a slow dataloader."""

    def __init__(self, collator):
        self.collator, self.calls = collator, 0

    def __call__(self, examples):
        self.calls += 1
        time.sleep(SLEEP)
        return self.collator(examples)


def test_sft_logs_data_wait_and_it_grows_with_a_slow_dataloader(tiny_rl_model_dir, frame_dataset,
                                                                 tmp_path):
    fast = sft_trainer(tiny_rl_model_dir, frame_dataset, tmp_path / "fast", accumulation=2)
    metrics = fast.train().metrics
    logs = logged(fast)
    assert len(logs) == 3  # every training log carries the figures of its step
    for e in logs:
        assert 0.0 <= e[data_wait.FRACTION] <= 1.0
        assert 0.0 < e[data_wait.WAIT_SECONDS] <= e[data_wait.STEP_SECONDS]
        assert e[data_wait.FRACTION] == pytest.approx(
            e[data_wait.WAIT_SECONDS] / e[data_wait.STEP_SECONDS], rel=2e-2, abs=1e-4)  # logged rounded
    assert 0.0 <= metrics[data_wait.RUN_FRACTION] <= 1.0  # the whole train() call
    assert metrics[data_wait.RUN_SECONDS] == pytest.approx(
        sum(e[data_wait.WAIT_SECONDS] for e in logs), rel=1e-2, abs=1e-3)

    slow = sft_trainer(tiny_rl_model_dir, frame_dataset, tmp_path / "slow", accumulation=2)
    slow.data_collator = collator = SlowCollator(slow.data_collator)
    slow.train()
    slow_logs = logged(slow)
    # every batch is collated inside a timed next() (accelerate's loader reads one batch
    # ahead, so a batch's wait may land in the step before the one that trains on it)
    assert collator.calls >= 2 * len(slow_logs)
    assert sum(e[data_wait.WAIT_SECONDS] for e in slow_logs) >= collator.calls * SLEEP
    assert all(e[data_wait.STEP_SECONDS] >= e[data_wait.WAIT_SECONDS] for e in slow_logs)
    fast_share = sum(e[data_wait.WAIT_SECONDS] for e in logs) / sum(e[data_wait.STEP_SECONDS] for e in logs)
    slow_share = (sum(e[data_wait.WAIT_SECONDS] for e in slow_logs)
                  / sum(e[data_wait.STEP_SECONDS] for e in slow_logs))
    assert slow_share > fast_share
    assert max(e[data_wait.FRACTION] for e in slow_logs) <= 1.0


def sleepy_reward(completions, **kwargs):
    """A slow reward: part of the rollout, never data wait."""
    time.sleep(SLEEP)
    return [float(len(c[0]["content"]) % 5) / 4 for c in completions]


def test_grpo_rollout_is_not_data_wait(tiny_rl_model_dir, frame_dataset, tmp_path):
    config = RLConfig(algorithm="grpo", num_generations=4, max_completion_length=8,
                      per_device_train_batch_size=8, max_steps=2, learning_rate=1e-3, beta=0.0,
                      logging_steps=1, trainer_kwargs={"disable_tqdm": True, "use_cpu": True})
    loaded = load_model(tiny_rl_model_dir)
    trainer = VideoGRPOTrainer(model=loaded.model, reward_funcs=resolve_reward_funcs([sleepy_reward]),
                               args=config.to_trl(tmp_path / "out"), train_dataset=frame_dataset,
                               processing_class=loaded.processor, rl=config)
    trainer.train()
    logs = logged(trainer)
    assert len(logs) == 2
    for e in logs:
        assert e[data_wait.STEP_SECONDS] >= SLEEP  # the reward sleeps inside the step...
        assert e[data_wait.WAIT_SECONDS] < SLEEP  # ...not inside the dataloader
        assert 0.0 <= e[data_wait.FRACTION] < 1.0


def old_examples(frames, indices, prompt=None):
    """What the SFT dataset gave before: sft_example on datasets' decoded row (PIL frames)."""
    return [sft_example(frames[i], prompt) for i in indices]


def assert_same_batches(processor, frames, batch=4):
    collator = VisionSFTCollator(processor)
    examples = sft_dataset(frames)
    assert len(examples) == len(frames)
    kinds = set(frames["data_type"])
    for start in range(0, len(frames), batch):
        indices = list(range(start, min(start + batch, len(frames))))
        old = collator(old_examples(frames, indices))
        new = collator([examples[i] for i in indices])
        assert old.keys() == new.keys()
        for key in old:
            assert old[key].dtype == new[key].dtype, key
            assert torch.equal(old[key], new[key]), (key, indices)
    return kinds


def test_sft_batches_identical_to_the_datasets_path(tiny_rl_model_dir, frame_dataset, stage_frames,
                                                    synth_dir, tmp_path):
    processor = load_model(tiny_rl_model_dir).processor
    kinds = assert_same_batches(processor, frame_dataset)  # PIL-built rows: images and videos
    assert kinds == {"image", "video"}
    extracted, _ = load_frame_dataset(stage_frames["sft"])  # extracted PNG frames
    assert_same_batches(processor, extracted)
    jpeg = tmp_path / "jpeg"  # extracted JPEG frames (decoded the general way)
    extract_dataset(synth_dir / "sft.json", synth_dir, jpeg, FrameOptions(frame_format="jpeg", max_frames=4),
                    workers=1, progress=False)
    jpeg_frames, _ = load_frame_dataset(jpeg)
    assert set(jpeg_frames["data_type"]) >= {"video"}
    assert_same_batches(processor, jpeg_frames)
    # a selection (an indices mapping, as curriculum phases and require_process make)
    picked = extracted.select([5, 0, 3])
    assert_same_batches(processor, picked, batch=3)


def test_sft_frames_stored_by_path_are_read_by_datasets(tiny_rl_model_dir, rows, tmp_path):
    for r, row in enumerate(rows):  # frames as files the dataset only points to
        paths = []
        for t, frame in enumerate(row["frames"]):
            frame.save(path := str(tmp_path / f"{r}-{t}.png"))
            paths.append({"path": path, "bytes": None})
        row["frames"] = paths
    by_path = make_dataset(rows)
    stored = by_path.select_columns(["frames"]).with_format("arrow")[0].column(0).to_pylist()[0]
    assert stored[0]["bytes"] is None  # really stored by path
    assert_same_batches(load_model(tiny_rl_model_dir).processor, by_path)

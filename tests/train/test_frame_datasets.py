"""SFT and T-GRPO on frame datasets built by vlmrl.data (all problem types, images + videos)."""

import math

import pytest

from vlmrl.models import build_tiny_model, load_model
from vlmrl.train import (
    LengthBonusConfig,
    RLConfig,
    SFTTrainConfig,
    build_grpo_trainer,
    build_sft_trainer,
    tokenizer_corpus,
)


@pytest.fixture(scope="module")
def extracted(synth_dir, tmp_path_factory):
    from vlmrl.data.extract import extract_dataset, load_frame_dataset
    from vlmrl.data.frames import FrameOptions

    out = tmp_path_factory.mktemp("frames")
    options = FrameOptions(min_pixels=56 * 56, max_pixels=112 * 112, max_frames=8)
    splits = {}
    for split in ("sft", "rl"):
        extract_dataset(
            synth_dir / f"{split}.json", synth_dir, out / split, options, workers=1, progress=False
        )
        splits[split], _ = load_frame_dataset(out / split)
    rows = [r for ds in splits.values() for r in ds]
    model_dir = build_tiny_model(out / "model", tokenizer_corpus(rows), seed=0)
    return splits, model_dir


def test_sft_then_t_grpo_on_extracted_frames(extracted, tmp_path):
    splits, model_dir = extracted
    assert {"image", "video"} <= set(splits["rl"]["data_type"])
    loaded = load_model(model_dir)
    sft = build_sft_trainer(
        loaded.model,
        loaded.processor,
        splits["sft"],
        tmp_path / "sft",
        SFTTrainConfig(
            max_steps=2,
            per_device_train_batch_size=4,
            gradient_accumulation_steps=1,
            learning_rate=1e-3,
            logging_steps=1,
            trainer_kwargs={"disable_tqdm": True, "use_cpu": True},
        ),
    )
    sft.train()
    config = RLConfig(
        algorithm="t_grpo",
        num_generations=4,
        per_device_train_batch_size=8,
        max_completion_length=16,
        max_steps=2,
        learning_rate=1e-4,
        logging_steps=1,
        length_bonus=LengthBonusConfig(enabled=True),
        trainer_kwargs={"disable_tqdm": True, "use_cpu": True},
    )
    trainer = build_grpo_trainer(sft.model, loaded.processor, splits["rl"], tmp_path / "rl", config)
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert len(logs) == 2 and all(math.isfinite(log["loss"]) for log in logs)
    assert {"rewards/accuracy/mean", "rewards/format/mean", "temporal/video_groups"} <= set(logs[0])

import torch

from vlmrl.models import load_model
from vlmrl.train.sft import (
    SFTTrainConfig,
    VisionSFTCollator,
    build_sft_trainer,
    run_sft,
    sft_dataset,
)


def test_collator_masks_prompt_and_mixes_images_and_videos(tiny_rl_model_dir, frame_dataset):
    loaded = load_model(tiny_rl_model_dir)
    examples = sft_dataset(frame_dataset)
    batch = VisionSFTCollator(loaded.processor)(
        [examples[0], examples[4]]
    )  # a video and an image row
    assert batch["video_grid_thw"].shape == (1, 3) and batch["image_grid_thw"].shape == (1, 3)
    assert "pixel_values" in batch and "pixel_values_videos" in batch
    tok = loaded.tokenizer
    video_token = loaded.model.config.video_token_id
    for i, row in enumerate([frame_dataset[0], frame_dataset[4]]):
        ids, labels = batch["input_ids"][i], batch["labels"][i]
        supervised = labels != -100
        first = int(supervised.nonzero()[0])
        # every prompt token (visual placeholders included) is masked, every completion token is not
        assert not supervised[:first].any()
        assert torch.equal(labels[supervised], ids[supervised])
        assert (batch["mm_token_type_ids"][i][ids == video_token] == 2).all()
        assert (ids[first:][supervised[first:]] != video_token).all()
        text = tok.decode(labels[supervised])
        assert text.startswith(row["process"]) and row["solution"] in text
        assert text.rstrip().endswith("<|im_end|>")
        # the prompt ends with the assistant header, so the model learns only the answer turn
        assert tok.decode(ids[:first]).endswith("<|im_start|>assistant\n")
    assert (batch["mm_token_type_ids"][1] == 1).sum() > 0  # image placeholders on the image row


def test_sft_loss_falls_and_checkpoint_reloads(tiny_rl_model_dir, frame_dataset, tmp_path):
    config = SFTTrainConfig(
        learning_rate=1e-2,
        max_steps=12,
        per_device_train_batch_size=6,  # the whole set: images and videos in every batch
        gradient_accumulation_steps=1,
        lr_scheduler_type="constant",
        logging_steps=1,
        trainer_kwargs={"disable_tqdm": True, "use_cpu": True},
    )
    loaded = load_model(tiny_rl_model_dir)
    trainer = build_sft_trainer(
        loaded.model, loaded.processor, frame_dataset, tmp_path / "run", config
    )
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 12
    assert losses[-1] < 0.5 * losses[0]

    out = run_sft(
        tiny_rl_model_dir,
        frame_dataset,
        tmp_path / "run2",
        SFTTrainConfig(
            max_steps=1,
            per_device_train_batch_size=2,
            gradient_accumulation_steps=1,
            trainer_kwargs={"disable_tqdm": True, "use_cpu": True},
        ),
    )
    reloaded = load_model(out)
    assert type(reloaded.model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert (out / "model.safetensors").exists()

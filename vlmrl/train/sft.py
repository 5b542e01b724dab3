"""Supervised fine-tuning on a frame dataset with chain-of-thought targets (TRL SFTTrainer).

Each row becomes a conversational prompt/completion pair: the prompt is `build_prompt(row)`
(frames inline, images and videos mixed freely in one run), the completion is the row's
CoT (`process`) followed by its `solution`. Only completion tokens carry loss (the
Video-R1 reference trains on the prompt too; we do not). Frames come from the dataset, so
no video is decoded during training, only the stored PNG/JPEG frames (`sft_dataset`).

TRL 1.16's vision collator passes only images to the processor for prompt/completion data,
so a video prompt fails there; `VisionSFTCollator` is our replacement: it encodes prompts
with their images and videos in one processor call (video frame rates included, so
M-RoPE time positions are right), appends the completion tokens and masks the prompt.
It never truncates: visual tokens cannot be cut.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import PreTrainedModel, ProcessorMixin
from trl import SFTConfig, SFTTrainer

from vlmrl.data.extract import encoded_frames, read_frames
from vlmrl.data.records import family_of
from vlmrl.models.loading import load_model
from vlmrl.models.multimodal import chat_media, encode_texts, render_chats
from vlmrl.models.saving import save_model_dir
from vlmrl.train.data_wait import DataWaitMixin
from vlmrl.train.prompts import PromptConfig, build_prompt, sft_target
from vlmrl.train.resume import ConvertedResumeMixin
from vlmrl.train.training_args import FIXED_SFT_KWARGS, TrainingSettings, training_kwargs


@dataclass
class SFTPhase:
    """One curriculum phase: SFT on some question families only, before the full mix.

    families: the families it trains on, matched against the last part of a row's
    data_source ("motion" matches "synthetic/motion") or the whole data_source.
    max_steps: its length in optimizer steps.
    learning_rate: None: the main phase's. lr_scheduler_type: "constant" by default (a
    phase that only has to break a plateau gains nothing from decaying).
    Batch size, clipping, precision and seed are the main phase's.

    Why phases exist: the embedded tiny model only learns to read its frames when SFT
    starts on one family alone (docs/results.md); mixing families from the first step
    keeps it blind to the video however long it trains.
    """

    families: list[str] = field(default_factory=list)
    max_steps: int = 0
    learning_rate: float | None = None
    lr_scheduler_type: str = "constant"

    def __post_init__(self) -> None:
        if not self.families:
            raise ValueError("a curriculum phase needs at least one family")
        if self.max_steps < 1:
            raise ValueError("a curriculum phase needs max_steps >= 1")


@dataclass
class SFTTrainConfig(TrainingSettings):
    """SFT hyper-parameters (defaults: Video-R1's SFT stage, scaled by the recipe).

    Optimisation (learning_rate, batch, schedule, clipping, epochs / max_steps): see
    `TrainingSettings`; Video-R1's SFT batch is 1 per device, 8 accumulated. Seed,
    precision, logging and checkpointing: see `RunSettings`.
    require_process: drop rows without a CoT trace (a Video-R1 SFT set has one everywhere).
    curriculum: phases (`SFTPhase`) run in order before the main phase on all rows; each
    starts from the previous one's weights with a fresh optimizer.
    prompt: how rows become prompts (shared with RL and evaluation).
    trainer_kwargs: any other SFTConfig field, passed through unchanged.
    """

    per_device_train_batch_size: int = 1
    gradient_accumulation_steps: int = 8
    require_process: bool = False
    curriculum: list[SFTPhase] = field(default_factory=list)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    trainer_kwargs: dict[str, Any] = field(default_factory=dict)

    def phase(self, phase: SFTPhase) -> SFTTrainConfig:
        """The config one curriculum phase trains with (no nested curriculum)."""
        return dataclasses.replace(
            self,
            curriculum=[],
            max_steps=phase.max_steps,
            learning_rate=self.learning_rate if phase.learning_rate is None else phase.learning_rate,
            lr_scheduler_type=phase.lr_scheduler_type,
            warmup_steps=0.0,
        )

    def to_trl(self, output_dir: str | os.PathLike) -> SFTConfig:
        return SFTConfig(**training_kwargs(self, output_dir, FIXED_SFT_KWARGS), **self.trainer_kwargs)


def sft_example(row: Mapping[str, Any], prompt: PromptConfig | None = None) -> dict[str, Any]:
    """A frame-dataset row as a conversational prompt/completion example.

    `images` is there for TRL: its presence marks the dataset as a vision dataset (the
    frames themselves travel inside the prompt's content parts).
    """
    messages = build_prompt(row, prompt)
    completion = [{"role": "assistant", "content": [{"type": "text", "text": sft_target(row)}]}]
    images = [row["frames"][0]] if row["data_type"] == "image" else []
    return {"prompt": messages, "completion": completion, "images": images}


def select_families(frames: Dataset, families: Sequence[str]) -> Dataset:
    """The rows whose data_source (or its family) is one of `families`; each must match some row."""
    wanted = set(families)
    sources = frames.unique("data_source")
    matched = {f for f in wanted for s in sources if f in (s, family_of(s))}
    missing = sorted(wanted - matched)
    if missing:
        raise ValueError(
            f"curriculum families {missing} match no row's data_source; "
            f"the dataset has: {', '.join(sorted(sources))}"
        )
    keep = [i for i, s in enumerate(frames["data_source"]) if s in wanted or family_of(s) in wanted]
    return frames.select(keep)  # an in-memory index: nothing is written into the dataset's folder


def sft_dataset(
    frames: Dataset, prompt: PromptConfig | None = None, require_process: bool = False
) -> Dataset:
    """The frame dataset viewed (lazily, no copy) as SFT prompt/completion examples.

    The view is an in-memory dataset of row positions whose transform reads the rows it is
    asked for: the frames straight from their stored bytes into one [T, H, W, 3] array per
    row (`vlmrl.data.extract.read_frames`: the pixels datasets' Image feature gives, without
    a PIL image per frame), the other columns through datasets. This is the SFT dataloader's
    work (see vlmrl.train.data_wait); `sft_example` on a datasets row gives the same example.
    """
    if require_process:
        # in memory: a cache file in the dataset's folder would break its content hash
        frames = frames.filter(lambda p: bool(p and p.strip()), input_columns="process",
                               keep_in_memory=True)
    if len(frames) == 0:
        raise ValueError("no SFT rows left (require_process drops rows without a CoT trace)")
    columns = frames.select_columns([c for c in frames.column_names if c != "frames"])
    stored = encoded_frames(frames)

    def transform(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        positions = batch["row"]
        rows = columns[positions]
        examples = []
        for i, position in enumerate(positions):
            row = {k: v[i] for k, v in rows.items()}
            row["frames"] = read_frames(stored, position)
            examples.append(sft_example(row, prompt))
        return {k: [ex[k] for ex in examples] for k in ("prompt", "completion", "images")}

    return Dataset.from_dict({"row": list(range(len(frames)))}).with_transform(transform)


@dataclass
class VisionSFTCollator:
    """Prompt/completion batches with images and videos; labels are -100 on the prompt."""

    processor: ProcessorMixin

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        prompts = [ex["prompt"] for ex in examples]
        prompt_texts = render_chats(self.processor, prompts, add_generation_prompt=True)
        full_texts = render_chats(
            self.processor,
            [ex["prompt"] + ex["completion"] for ex in examples],
            add_generation_prompt=False,
        )
        completion_texts = []
        for prompt_text, full_text in zip(prompt_texts, full_texts, strict=True):
            if not full_text.startswith(prompt_text):
                raise ValueError(
                    "chat template renders the prompt differently inside the full conversation"
                )
            completion_texts.append(full_text[len(prompt_text) :])

        encoded = encode_texts(self.processor, prompt_texts, [chat_media(p) for p in prompts])
        tokenizer = self.processor.tokenizer
        completion_ids = tokenizer(completion_texts, add_special_tokens=False)["input_ids"]
        prompt_ids = encoded.token_lists()
        prompt_types = encoded.mm_type_lists()

        rows = [p + c for p, c in zip(prompt_ids, completion_ids, strict=True)]
        width = max(len(r) for r in rows)
        pad = tokenizer.pad_token_id
        batch = len(rows)
        input_ids = torch.full((batch, width), pad, dtype=torch.long)
        attention_mask = torch.zeros((batch, width), dtype=torch.long)
        labels = torch.full((batch, width), -100, dtype=torch.long)
        mm_types = torch.zeros((batch, width), dtype=torch.long)
        for i, (p, c, t) in enumerate(zip(prompt_ids, completion_ids, prompt_types, strict=True)):
            n = len(p) + len(c)
            input_ids[i, :n] = torch.tensor(p + c)
            attention_mask[i, :n] = 1
            labels[i, len(p) : n] = torch.tensor(c)
            mm_types[i, : len(p)] = torch.tensor(t)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "mm_token_type_ids": mm_types,
            **encoded.visual,
        }


class VisionSFTTrainer(DataWaitMixin, ConvertedResumeMixin, SFTTrainer):
    """TRL's SFTTrainer whose resume restores the model weights (see vlmrl.train.resume)
    and whose logs carry the dataloader's share of step time (vlmrl.train.data_wait)."""


def build_sft_trainer(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    train_dataset: Dataset,
    output_dir: str | os.PathLike,
    config: SFTTrainConfig | None = None,
    callbacks: list[Any] | None = None,
) -> SFTTrainer:
    """A TRL SFTTrainer wired for frame datasets (prompt masking, images + videos)."""
    config = config or SFTTrainConfig()
    return VisionSFTTrainer(
        model=model,
        args=config.to_trl(output_dir),
        train_dataset=sft_dataset(train_dataset, config.prompt, config.require_process),
        processing_class=processor,
        data_collator=VisionSFTCollator(processor),
        callbacks=callbacks,
    )


def run_sft(
    model_dir: str | os.PathLike,
    train_dataset: Dataset,
    output_dir: str | os.PathLike,
    config: SFTTrainConfig | None = None,
    callbacks: list[Any] | None = None,
) -> Path:
    """Fine-tune the checkpoint in `model_dir` and save the result to `output_dir/final`."""
    config = config or SFTTrainConfig()
    loaded = load_model(model_dir, dtype="float32")
    trainer = build_sft_trainer(
        loaded.model, loaded.processor, train_dataset, output_dir, config, callbacks
    )
    trainer.train()
    # replaces the final model of an earlier run here, never the model it started from
    return save_model_dir(trainer.model, loaded.processor, Path(output_dir) / "final",
                          overwrite=True, protected=[("starting model", model_dir)])

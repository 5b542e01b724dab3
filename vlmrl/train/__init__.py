"""Training: SFT (TRL SFTTrainer) and the GRPO family (TRL GRPOTrainer subclass) on frame datasets.

- :mod:`~vlmrl.train.prompts`: the one row -> prompt conversion (shared with evaluation).
- :mod:`~vlmrl.train.sft`: SFT with CoT targets, prompt tokens masked, images + videos.
- :mod:`~vlmrl.train.grpo`: :class:`VideoGRPOTrainer` (video in the loss, T-GRPO, Reg-GRPO,
  dynamic sampling, difficulty-aware augmentation); configured by :class:`RLConfig`.
- :mod:`~vlmrl.train.config_io`: build the config dataclasses from recipe mappings, with
  key-path errors.
- :mod:`~vlmrl.train.diagnostics`: the RL training curves written next to the reports.
- :mod:`~vlmrl.train.resume`: resume that really restores the model weights.

The algorithms only: turning a recipe into a checkpoint is the stages package (a layer
above, the only one that knows recipes).
"""

from vlmrl.train.config_io import ConfigError, config_from_dict, config_to_dict
from vlmrl.train.grpo import VideoGRPOTrainer, build_grpo_trainer, resolve_reward_funcs, run_grpo
from vlmrl.train.prompts import PromptConfig, build_prompt, sft_target, tokenizer_corpus
from vlmrl.train.rl_config import (
    AugmentConfig,
    LengthBonusConfig,
    RegressionConfig,
    RLConfig,
    TemporalConfig,
)
from vlmrl.train.sft import (
    SFTTrainConfig,
    VisionSFTCollator,
    VisionSFTTrainer,
    build_sft_trainer,
    run_sft,
    sft_dataset,
)

__all__ = [
    "AugmentConfig",
    "ConfigError",
    "LengthBonusConfig",
    "PromptConfig",
    "RLConfig",
    "RegressionConfig",
    "SFTTrainConfig",
    "TemporalConfig",
    "VideoGRPOTrainer",
    "VisionSFTCollator",
    "VisionSFTTrainer",
    "build_grpo_trainer",
    "build_prompt",
    "build_sft_trainer",
    "config_from_dict",
    "config_to_dict",
    "resolve_reward_funcs",
    "run_grpo",
    "run_sft",
    "sft_dataset",
    "sft_target",
    "tokenizer_corpus",
]

"""Resuming from a trainer checkpoint with the model weights actually restored.

transformers 5 writes checkpoints in the original (Hub) key layout: save_pretrained
reverts the model's weight conversions (Qwen2.5-VL: ``model.visual.*`` -> ``visual.*``,
``model.language_model.*`` -> ``model.*``). ``Trainer._load_from_checkpoint`` reloads
them with a plain ``load_state_dict(strict=False)``, so no key matches and a resumed run
silently continues from its initial weights with the optimizer state of the trained ones
(huggingface/transformers#43701, still open in 5.23).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class ConvertedResumeMixin:
    """Trainer mixin: reload checkpoint weights through from_pretrained (key conversion included)."""

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        sharded = model is not None or self.is_deepspeed_enabled or self.is_fsdp_enabled
        if sharded or not (Path(resume_from_checkpoint) / "config.json").is_file():
            # DeepSpeed / FSDP / adapter checkpoints have their own formats and loaders.
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        target = self.accelerator.unwrap_model(self.model)
        saved = type(target).from_pretrained(
            resume_from_checkpoint,
            dtype=target.dtype,
            local_files_only=True,
            trust_remote_code=False,
            use_safetensors=True,
        )
        target.load_state_dict(saved.state_dict(), strict=True)

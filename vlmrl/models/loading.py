"""Loading local vision-language checkpoints: offline, safetensors only, never remote code."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, PreTrainedModel, ProcessorMixin

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


class CheckpointError(ValueError):
    """A model directory that cannot be loaded safely."""


@dataclass
class LoadedModel:
    """A model and the processor that prepares its inputs, plus where they came from."""

    model: PreTrainedModel
    processor: ProcessorMixin
    path: Path

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str:
    """Map a recipe's dtype string ("bf16", "float32", "auto", ...) to what transformers takes."""
    if dtype is None or dtype == "auto":
        return "auto"
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[dtype.lower()]
    except KeyError:
        raise ValueError(
            f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)} or 'auto'"
        ) from None


def check_checkpoint_dir(path: str | os.PathLike) -> Path:
    """Return the resolved directory, or raise CheckpointError naming what is wrong with it.

    A loadable directory has a config.json and its weights as safetensors (a single file or
    an index of shards). Pickle-based weights (*.bin, *.pt) are refused: loading them can
    run arbitrary code.
    """
    directory = Path(path).expanduser().resolve()
    if not directory.is_dir():
        raise CheckpointError(f"model directory not found: {directory}")
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"no config.json in model directory {directory}")
    has_safetensors = any(directory.glob("*.safetensors")) or any(
        directory.glob("*.safetensors.index.json")
    )
    if not has_safetensors:
        pickled = sorted(p.name for p in directory.iterdir() if p.suffix in {".bin", ".pt", ".pth"})
        hint = f" (found pickle weights {pickled}; convert them to safetensors)" if pickled else ""
        raise CheckpointError(f"no safetensors weights in model directory {directory}{hint}")
    return directory


def load_model(
    path: str | os.PathLike,
    dtype: str | torch.dtype | None = "float32",
    attn_implementation: str | None = None,
    device: str | torch.device | None = None,
    device_map: str | dict | None = None,
) -> LoadedModel:
    """Load an image-text-to-text model (Qwen2-VL, Qwen2.5-VL, ...) and its processor.

    Everything is read from `path` only (local_files_only, no Hub access), remote code is
    never executed and only safetensors weights are accepted.

    Args:
        path: local checkpoint directory (a save_pretrained output).
        dtype: "float32" (default), "bf16"/"bfloat16", "fp16"/"float16", a torch.dtype, or
            "auto" for the dtype recorded in the config.
        attn_implementation: e.g. "sdpa", "eager", "flash_attention_2"; None lets
            transformers choose.
        device: where to move the model after loading ("cpu", "cuda:0", ...); ignored when
            device_map is given.
        device_map: passed to from_pretrained for multi-device placement (e.g. "auto").
    """
    directory = check_checkpoint_dir(path)
    kwargs: dict[str, Any] = {
        "local_files_only": True,
        "trust_remote_code": False,
        "use_safetensors": True,
        "dtype": resolve_dtype(dtype),
    }
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if device_map is not None:
        kwargs["device_map"] = device_map
    model = AutoModelForImageTextToText.from_pretrained(directory, **kwargs)
    if device is not None and device_map is None:
        model = model.to(device)
    model.eval()
    processor = AutoProcessor.from_pretrained(
        directory, local_files_only=True, trust_remote_code=False
    )
    if not isinstance(processor, ProcessorMixin):
        raise CheckpointError(
            f"{directory} has no multimodal processor (got {type(processor).__name__}); "
            "an image-text-to-text checkpoint needs preprocessor/processor configs"
        )
    return LoadedModel(model=model, processor=processor, path=directory)


def load_processor(path: str | os.PathLike) -> ProcessorMixin:
    """The processor alone (for data preparation or evaluation setup)."""
    directory = check_checkpoint_dir(path)
    return AutoProcessor.from_pretrained(directory, local_files_only=True, trust_remote_code=False)


def freeze_vision_tower(model: Any) -> int:
    """Stop gradients into the vision encoder (Qwen2.5-VL's ``model.visual``, patch merger
    included); returns how many parameters were frozen. Raises if the model has none."""
    inner = getattr(model, "model", model)
    visual = getattr(inner, "visual", None)
    if visual is None:
        raise ValueError(f"{type(model).__name__} has no vision tower (`model.visual`) to freeze")
    frozen = 0
    for p in visual.parameters():
        p.requires_grad_(False)
        frozen += p.numel()
    return frozen

"""Writing model directories atomically: a crash never leaves a half-written checkpoint."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vlmrl.atomic import atomic_directory


def save_model_dir(
    model: Any, processor: Any, out_dir: str | os.PathLike, overwrite: bool = False
) -> Path:
    """save_pretrained the model (safetensors) and its processor into `out_dir`, atomically."""
    with atomic_directory(out_dir, overwrite) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        processor.save_pretrained(staging)
    return Path(out_dir).resolve()

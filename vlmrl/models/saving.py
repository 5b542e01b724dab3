"""Writing model directories atomically: a crash never leaves a half-written checkpoint."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vlmrl.atomic import OutputKind, Protected, atomic_directory

# A saved model directory: config.json with a model type (what save_pretrained writes).
MODEL_DIR = OutputKind("model directory", "config.json", keys=("model_type",))


def save_model_dir(
    model: Any, processor: Any, out_dir: str | os.PathLike, overwrite: bool = False,
    protected: Protected = (),
) -> Path:
    """save_pretrained the model (safetensors) and its processor into `out_dir`, atomically.

    Only a model directory is ever replaced (with overwrite), never a `protected` input.
    """
    with atomic_directory(out_dir, overwrite, kind=MODEL_DIR, protected=protected) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        processor.save_pretrained(staging)
    return Path(out_dir).resolve()

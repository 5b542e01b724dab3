"""What each training process saw and ended with, checked when a multi-process run ends.

Data-parallel training (DDP) keeps one full copy of the weights per process and averages
gradients, so after every optimizer step all copies must be equal; a desynchronised
process (a skipped all-reduce, a rank-dependent branch) trains silently wrong otherwise.
At the end of a run each process reports how many rows it trained on, a digest of their
problem ids and a digest of its weights; the main process records the reports in the
checkpoint's lineage and refuses to save when full replicas disagree. Sharded engines
(FSDP, DeepSpeed ZeRO-3) hold different shards per process by design: their weight
digests are recorded but not compared.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

import torch
from accelerate.utils import gather_object


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 over every parameter's name and bytes, in name order."""
    digest = hashlib.sha256()
    for name, p in sorted(model.named_parameters(), key=lambda item: item[0]):
        digest.update(name.encode())
        digest.update(p.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def replica_report(trainer: Any, rows_seen: Sequence[str] | None) -> list[dict[str, Any]]:
    """Every process's {rank, rows, ids_sha256, weights_sha256}, in rank order (a collective:
    all processes must call it). `rows_seen`: the problem ids this process trained on in
    this session (None: the trainer does not record them)."""
    accelerator = trainer.accelerator
    model = accelerator.unwrap_model(trainer.model)
    mine: dict[str, Any] = {"rank": accelerator.process_index, "rows": None, "ids_sha256": None}
    if rows_seen is not None:
        mine["rows"] = len(rows_seen)
        mine["ids_sha256"] = hashlib.sha256("\n".join(sorted(rows_seen)).encode()).hexdigest()
    mine["weights_sha256"] = weights_digest(model)
    return sorted(gather_object([mine]), key=lambda r: r["rank"])


def check_replicas(report: Sequence[dict[str, Any]], sharded: bool) -> None:
    """Raise when full-replica processes ended with different weights."""
    if sharded or len(report) < 2:
        return
    digests = {r["weights_sha256"] for r in report}
    if len(digests) > 1:
        ranks = ", ".join(f"rank {r['rank']}: {r['weights_sha256'][:12]}" for r in report)
        raise RuntimeError(f"the training processes ended with different weights ({ranks}): "
                           "data-parallel replicas diverged, the checkpoint is not saved")


# what `accelerate launch` sets for a config's engine -> the trainer's flag that it took effect
_ENGINES = {"ACCELERATE_USE_FSDP": ("FSDP", "is_fsdp_enabled"),
            "ACCELERATE_USE_DEEPSPEED": ("DeepSpeed", "is_deepspeed_enabled")}


def check_engine(trainer: Any) -> None:
    """Raise when the launch config asked for FSDP / DeepSpeed and the trainer runs without it.

    accelerate applies neither on CPU (with ``use_cpu`` its state is MULTI_CPU and the
    Trainer wraps the model in DDP), so such a run would train with full replicas while its
    config says sharded: refuse rather than report the wrong engine.
    """
    for env, (engine, flag) in _ENGINES.items():
        if os.environ.get(env, "").lower() in ("1", "true") and not getattr(trainer, flag):
            mode = trainer.accelerator.distributed_type.value
            raise RuntimeError(f"the accelerate config asks for {engine} but the trainer runs "
                               f"{mode} (accelerate applies {engine} on GPUs only; on CPU use "
                               "the ddp config)")

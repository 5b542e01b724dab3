"""Prompt-group bookkeeping for a GRPO batch: rows i*G .. i*G+G-1 answer the same prompt."""

from __future__ import annotations

from typing import Any

import torch


def group_ids(
    num_rows: int, group_size: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Group index of each row of a locally complete batch (rows in group order)."""
    if num_rows % group_size:
        raise ValueError(f"{num_rows} rows do not split into groups of {group_size}")
    return torch.arange(num_rows, device=device) // group_size


def zero_advantage_groups(advantages: torch.Tensor, group_size: int) -> torch.Tensor:
    """True for groups whose advantages are all zero (equal rewards: no learning signal)."""
    return (advantages.view(-1, group_size) == 0).all(dim=1)


def select_informative_groups(zero: torch.Tensor, keep_count: int) -> torch.Tensor:
    """Which groups to keep: all informative ones, padded with zero-advantage groups to
    `keep_count` (the largest informative count over processes: every process must keep
    the same number of rows for the collective ops in the loss). Keeps everything when no
    process has an informative group (only KL / entropy terms act then)."""
    if keep_count == 0:
        return torch.ones_like(zero)
    keep = ~zero
    padding = keep_count - int(keep.sum())
    if padding > 0:
        keep[zero.nonzero(as_tuple=True)[0][:padding]] = True
    return keep


def select_rows(batch: dict[str, Any], keep: torch.Tensor) -> dict[str, Any]:
    """Keep the rows where `keep` is True in every per-row entry of a trainer batch.

    Per-row entries are tensors or lists whose first dimension is the batch size; scalars
    and anything else are carried over unchanged.
    """
    size = keep.numel()
    index = keep.nonzero(as_tuple=True)[0]
    picked = index.tolist()
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.ndim > 0 and value.size(0) == size:
            out[key] = value.index_select(0, index.to(value.device))
        elif isinstance(value, list) and len(value) == size:
            out[key] = [value[i] for i in picked]
        else:
            out[key] = value
    return out

"""Reg-GRPO (DeepVideo-R1): regress the group-normalised advantage instead of clipping.

    rho_i     = log pi_theta(o_i | q) - log pi_old(o_i | q)             (one value per sequence)
    A^theta_i = (rho_i - mean_g(rho)) / sqrt(var_g(rho) + eps)         (g: o_i's prompt group)
    L         = mean_i (A_i - A^theta_i)^2 + beta * KL(pi_theta || pi_ref)

No ratio clipping, no min. The variance floor `eps` keeps everything finite at an
on-policy step, where all rho are exactly 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def sequence_log_ratio(
    per_token_logps: torch.Tensor,
    old_per_token_logps: torch.Tensor,
    mask: torch.Tensor,
    reduction: str = "mean",
) -> torch.Tensor:
    """rho per sequence: masked token sum, or mean over the completion's tokens."""
    diff = (per_token_logps - old_per_token_logps) * mask
    total = diff.sum(dim=-1)
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / mask.sum(dim=-1).clamp(min=1.0)
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")


def group_standardize(values: torch.Tensor, groups: torch.Tensor, eps: float) -> torch.Tensor:
    """(x - group mean) / sqrt(group variance + eps), population variance, any group order."""
    _, inverse, counts = torch.unique(groups, return_inverse=True, return_counts=True)
    counts = counts.to(values.dtype)
    sums = torch.zeros_like(counts).index_add(0, inverse, values)
    mean = (sums / counts)[inverse]
    centred = values - mean
    var = torch.zeros_like(counts).index_add(0, inverse, centred * centred) / counts
    return centred / torch.sqrt(var[inverse] + eps)


@dataclass
class RegressionLoss:
    loss: torch.Tensor
    predicted_advantages: torch.Tensor
    kl: torch.Tensor | None


def reg_grpo_loss(
    per_token_logps: torch.Tensor,
    old_per_token_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    groups: torch.Tensor,
    eps: float = 1e-4,
    reduction: str = "mean",
    beta: float = 0.0,
    ref_per_token_logps: torch.Tensor | None = None,
) -> RegressionLoss:
    """The Reg-GRPO loss for a batch of whole prompt groups.

    per_token_logps / old / ref: [B, T] completion-token log-probs; mask: [B, T];
    advantages: [B] group-normalised advantages; groups: [B] group id of each row.
    The KL term is TRL's k3 estimator averaged over each completion's tokens.
    """
    mask = mask.to(per_token_logps.dtype)
    rho = sequence_log_ratio(per_token_logps, old_per_token_logps, mask, reduction)
    predicted = group_standardize(rho, groups, eps)
    loss = ((advantages.to(predicted.dtype) - predicted) ** 2).mean()
    kl = None
    if beta != 0.0:
        if ref_per_token_logps is None:
            raise ValueError("beta != 0 needs reference log-probs")
        delta = ref_per_token_logps - per_token_logps
        per_token_kl = torch.exp(delta) - delta - 1
        kl = ((per_token_kl * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
        loss = loss + beta * kl
    return RegressionLoss(loss=loss, predicted_advantages=predicted, kl=kl)

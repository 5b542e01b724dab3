"""Agreement between vLLM rollouts and the trainer's model: prompt ids and log-probs.

GRPO's importance ratio assumes the rollout's log-probs are the policy's. These checks
say where vLLM and transformers part: the expanded prompt ids (placeholders, frame
count, grid), then the per-token log-probs of the sampled completions recomputed by the
HF model (vision encoder, positions, weights).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vlmrl.models.multimodal import collate_visual_rows, mm_token_types
from vlmrl.rollout.inputs import RolloutPrompt


class PromptIdsMismatch(ValueError):
    """vLLM expanded a prompt into other ids than the trainer's processor did."""


def check_prompt_ids(vllm_ids: Sequence[int], hf_ids: Sequence[int], index: int = 0) -> None:
    """Raise PromptIdsMismatch naming the first differing position (and both tokens)."""
    vllm_ids, hf_ids = list(vllm_ids), list(hf_ids)
    if vllm_ids == hf_ids:
        return
    pos = next(
        (i for i, (a, b) in enumerate(zip(vllm_ids, hf_ids, strict=False)) if a != b),
        min(len(vllm_ids), len(hf_ids)),
    )
    got = vllm_ids[pos] if pos < len(vllm_ids) else "<end>"
    want = hf_ids[pos] if pos < len(hf_ids) else "<end>"
    raise PromptIdsMismatch(
        f"prompt {index}: vLLM's expanded prompt ids differ from the processor's at position "
        f"{pos} (vLLM {got}, processor {want}; lengths {len(vllm_ids)} vs {len(hf_ids)}): "
        "check for pre-expanded placeholders, frame count / fps metadata, or pixel budgets"
    )


def vision_token_ids(config: object) -> list[int]:
    """The placeholder and vision start/end ids: the tokens a rollout must never sample
    (the trainer suppresses them; a sampled placeholder has no visual features to match)."""
    names = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    return sorted({int(i) for i in (getattr(config, n, None) for n in names) if i is not None})


@dataclass(frozen=True)
class LogprobGap:
    """|vLLM - HF| per sampled token over a set of completions."""

    max_abs: float
    mean_abs: float
    num_tokens: int

    def within(self, max_abs: float) -> bool:
        return self.max_abs <= max_abs


def logprob_gap(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> LogprobGap:
    """Max / mean absolute per-token difference between two sets of per-token log-probs."""
    diffs: list[float] = []
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if len(x) != len(y):
            raise ValueError(f"completion {i}: {len(x)} vs {len(y)} log-probs")
        diffs += [abs(float(p) - float(q)) for p, q in zip(x, y, strict=True)]
    if not diffs:
        raise ValueError("no tokens to compare")
    t = torch.tensor(diffs, dtype=torch.float64)
    return LogprobGap(float(t.max()), float(t.mean()), len(diffs))


def filter_top_k_top_p(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Logits outside the top-k / top-p set at -inf: the distribution a sampler with those
    settings draws from, and whose log-probs vLLM returns (processed_logprobs).

    vLLM 0.32's rule (`apply_top_k_top_p_pytorch`), which is also transformers' (TopK / TopP
    logits processors): sort ascending; top-k keeps values >= the k-th largest; top-p drops
    the low end whose cumulative probability is <= 1 - p, always keeping the largest.
    """
    if top_k <= 0 and top_p >= 1.0:
        return logits
    values, order = logits.sort(dim=-1, descending=False)
    if top_k > 0:
        kth = values[..., -min(top_k, values.size(-1))].unsqueeze(-1)
        values = values.masked_fill(values < kth, float("-inf"))
    if top_p < 1.0:
        low = values.softmax(dim=-1).cumsum(dim=-1) <= 1 - top_p
        low[..., -1] = False
        values = values.masked_fill(low, float("-inf"))
    return logits.scatter(-1, order, values)


@torch.no_grad()
def hf_completion_logprobs(
    model: torch.nn.Module,
    prompt: RolloutPrompt,
    completions: Sequence[Sequence[int]],
    *,
    temperature: float = 1.0,
    suppress_token_ids: Sequence[int] = (),
    top_p: float = 1.0,
    top_k: int = 0,
    pad_token_id: int = 0,
) -> list[list[float]]:
    """The HF model's log-probs of each completion's tokens after `prompt` (pixels in).

    The trainer's forward: processor ids, the prompt's visual tensors, mm_token_type_ids,
    logits / temperature. `suppress_token_ids` are masked out, then the top-k / top-p
    filter applied, before the softmax: the distribution vLLM sampled from and reports
    (processed log-probs).
    """
    if not completions:
        return []
    config = getattr(model, "config", None)
    banned = set(vision_token_ids(config))
    for i, c in enumerate(completions):
        if banned & set(c):
            raise ValueError(
                f"completion {i} holds vision token(s) {sorted(banned & set(c))}: sample with "
                "suppress_token_ids=vision_token_ids(config), as the trainer does"
            )
    device = next(model.parameters()).device
    p = len(prompt.hf_prompt_ids)
    width = p + max(len(c) for c in completions)
    # Right padding: causal attention keeps pads after a sequence out of its logits.
    ids = torch.full((len(completions), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, c in enumerate(completions):
        seq = [*prompt.hf_prompt_ids, *c]
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
    inputs = {"input_ids": ids, "attention_mask": mask}
    if prompt.visual:
        inputs.update(collate_visual_rows([prompt.visual] * len(completions)))
        inputs["mm_token_type_ids"] = mm_token_types(
            ids, getattr(config, "image_token_id", None), getattr(config, "video_token_id", None)
        )
    inputs = {k: v.to(device) for k, v in inputs.items()}
    logits = model(**inputs, use_cache=False).logits.float()
    logits = logits[:, p - 1 : -1] / temperature
    if suppress_token_ids:
        logits[..., list(suppress_token_ids)] = float("-inf")
    logps = filter_top_k_top_p(logits, top_k, top_p).log_softmax(-1)
    out = []
    for i, c in enumerate(completions):
        target = torch.tensor(list(c), device=logps.device)
        out.append(logps[i, : len(c)].gather(-1, target[:, None])[:, 0].cpu().tolist())
    return out

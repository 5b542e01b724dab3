"""Chat prompts with inline images and frame lists -> Qwen2-VL-family model inputs.

A conversation is a list of messages whose content parts may be
``{"type": "image", "image": PIL.Image}`` or
``{"type": "video", "video": frames, "fps": sampled_fps}`` where ``frames`` is a list of PIL
images or a uint8 array [T, H, W, 3] of already-sampled frames. ``fps`` (optional) is the
rate of the sampled frames; it sets the M-RoPE time step of the video
(``second_per_grid_ts``), so temporal positions match real time.

The visual tensors of a Qwen-style processor are flat over patches (``pixel_values`` is
[sum of patches, D]) and described by grid rows (``image_grid_thw``); `split_visual_rows`
and `collate_visual_rows` cut them per conversation and glue any subset back together in
the order the model expects, which is what a trainer needs when it shuffles or chunks a
batch of rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

Conversation = list[dict[str, Any]]

IMAGE_KEYS = ("pixel_values", "image_grid_thw")
VIDEO_KEYS = ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")
VISUAL_KEYS = IMAGE_KEYS + VIDEO_KEYS
# Qwen2.5-VL's M-RoPE assumes 2 fps sampling when a video arrives without a rate.
DEFAULT_VIDEO_FPS = 2.0


@dataclass
class ChatMedia:
    """The images and videos of one conversation, in the order they appear."""

    images: list[Image.Image] = field(default_factory=list)
    videos: list[np.ndarray] = field(default_factory=list)
    video_fps: list[float] = field(default_factory=list)


def as_video_array(frames: Any) -> np.ndarray:
    """Frames (list of PIL images or arrays, or one [T, H, W, 3] array) as uint8 [T, H, W, 3]."""
    if isinstance(frames, torch.Tensor):
        frames = frames.cpu().numpy()
    if isinstance(frames, np.ndarray):
        array = frames
    else:
        array = np.stack(
            [
                np.asarray(f.convert("RGB")) if isinstance(f, Image.Image) else np.asarray(f)
                for f in frames
            ]
        )
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"video frames must be [T, H, W, 3], got shape {array.shape}")
    return array.astype(np.uint8, copy=False)


def chat_media(conversation: Conversation) -> ChatMedia:
    media = ChatMedia()
    for message in conversation:
        content = message.get("content")
        if isinstance(content, str) or content is None:
            continue
        for part in content:
            kind = part.get("type")
            if kind == "image":
                image = part["image"]
                media.images.append(
                    image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
                )
            elif kind == "video":
                media.videos.append(as_video_array(part["video"]))
                media.video_fps.append(float(part.get("fps") or DEFAULT_VIDEO_FPS))
    return media


def video_metadata(videos: Sequence[np.ndarray], fps: Sequence[float]) -> list[dict[str, Any]]:
    # Frames are all "sampled" frames already: sampled_fps == fps, no resampling.
    return [
        {"fps": rate, "total_num_frames": len(v), "frames_indices": list(range(len(v)))}
        for v, rate in zip(videos, fps, strict=True)
    ]


@dataclass
class EncodedChats:
    """Processor output for a batch of conversations plus per-row media counts."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    mm_token_type_ids: torch.Tensor | None
    visual: dict[str, torch.Tensor]
    num_images: list[int]
    num_videos: list[int]

    def token_lists(self) -> list[list[int]]:
        """Unpadded token ids per row (works for either padding side)."""
        return [
            ids[mask.bool()].tolist()
            for ids, mask in zip(self.input_ids, self.attention_mask, strict=True)
        ]

    def mm_type_lists(self) -> list[list[int]]:
        if self.mm_token_type_ids is None:
            raise ValueError("processor returned no mm_token_type_ids")
        return [
            t[m.bool()].tolist()
            for t, m in zip(self.mm_token_type_ids, self.attention_mask, strict=True)
        ]

    def visual_rows(self) -> list[dict[str, torch.Tensor]]:
        return split_visual_rows(self.visual, self.num_images, self.num_videos)

    def model_inputs(self) -> dict[str, torch.Tensor]:
        out = {"input_ids": self.input_ids, "attention_mask": self.attention_mask, **self.visual}
        if self.mm_token_type_ids is not None:
            out["mm_token_type_ids"] = self.mm_token_type_ids
        return out


def render_chats(
    processor: Any,
    conversations: Sequence[Conversation],
    add_generation_prompt: bool = True,
    **template_kwargs: Any,
) -> list[str]:
    return [
        processor.apply_chat_template(
            conv, tokenize=False, add_generation_prompt=add_generation_prompt, **template_kwargs
        )
        for conv in conversations
    ]


def encode_texts(
    processor: Any,
    texts: Sequence[str],
    media: Sequence[ChatMedia],
    padding_side: str = "left",
) -> EncodedChats:
    """Tokenise rendered texts with their media in one processor call."""
    images = [im for m in media for im in m.images]
    videos = [v for m in media for v in m.videos]
    kwargs: dict[str, Any] = {}
    if videos:
        kwargs["video_metadata"] = video_metadata(videos, [f for m in media for f in m.video_fps])
    out = processor(
        text=list(texts),
        images=images or None,
        videos=videos or None,
        padding=True,
        padding_side=padding_side,
        return_tensors="pt",
        add_special_tokens=False,
        **kwargs,
    )
    visual = {k: out[k] for k in VISUAL_KEYS if k in out}
    if "second_per_grid_ts" in visual and not isinstance(
        visual["second_per_grid_ts"], torch.Tensor
    ):
        visual["second_per_grid_ts"] = torch.tensor(
            visual["second_per_grid_ts"], dtype=torch.float32
        )
    return EncodedChats(
        input_ids=out["input_ids"],
        attention_mask=out["attention_mask"],
        mm_token_type_ids=out.get("mm_token_type_ids"),
        visual=visual,
        num_images=[len(m.images) for m in media],
        num_videos=[len(m.videos) for m in media],
    )


def render_and_encode(
    processor: Any,
    conversations: Sequence[Conversation],
    add_generation_prompt: bool = True,
    padding_side: str = "left",
    **template_kwargs: Any,
) -> tuple[list[str], list[ChatMedia], EncodedChats]:
    """`encode_chats` keeping what it built on the way: the rendered texts and each
    conversation's media (what vLLM's prompts are made of, without a second encode)."""
    texts = render_chats(processor, conversations, add_generation_prompt, **template_kwargs)
    media = [chat_media(c) for c in conversations]
    return texts, media, encode_texts(processor, texts, media, padding_side)


def encode_chats(
    processor: Any,
    conversations: Sequence[Conversation],
    add_generation_prompt: bool = True,
    padding_side: str = "left",
    **template_kwargs: Any,
) -> EncodedChats:
    """Render conversations with the chat template and encode text + frames in one call."""
    return render_and_encode(processor, conversations, add_generation_prompt, padding_side,
                             **template_kwargs)[2]


def _split_by_grid(
    flat: torch.Tensor, grid: torch.Tensor, counts: Sequence[int]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Split flat patches and grid rows into per-row chunks given items per row."""
    patches_per_item = grid.prod(-1).tolist()
    bounds = np.cumsum([0, *counts]).tolist()
    sections = [sum(patches_per_item[bounds[i] : bounds[i + 1]]) for i in range(len(counts))]
    if sum(sections) != flat.size(0):
        raise ValueError(f"grid describes {sum(sections)} patches but got {flat.size(0)}")
    return list(torch.split(flat, sections)), list(torch.split(grid, list(counts)))


def split_visual_rows(
    visual: dict[str, torch.Tensor], num_images: Sequence[int], num_videos: Sequence[int]
) -> list[dict[str, torch.Tensor]]:
    """Cut batched visual tensors into one dict per row (rows without media get empty dicts)."""
    rows: list[dict[str, torch.Tensor]] = [{} for _ in num_images]
    if "pixel_values" in visual:
        pixels, grids = _split_by_grid(visual["pixel_values"], visual["image_grid_thw"], num_images)
        for row, p, g, n in zip(rows, pixels, grids, num_images, strict=True):
            if n:
                row.update(pixel_values=p, image_grid_thw=g)
    if "pixel_values_videos" in visual:
        pixels, grids = _split_by_grid(
            visual["pixel_values_videos"], visual["video_grid_thw"], num_videos
        )
        seconds = visual.get("second_per_grid_ts")
        seconds = (
            list(torch.split(seconds, list(num_videos)))
            if seconds is not None
            else [None] * len(rows)
        )
        for row, p, g, s, n in zip(rows, pixels, grids, seconds, num_videos, strict=True):
            if n:
                row.update(pixel_values_videos=p, video_grid_thw=g)
                if s is not None:
                    row["second_per_grid_ts"] = s
    return rows


def collate_visual_rows(
    rows: Sequence[dict[str, torch.Tensor]], device: torch.device | str | None = None
) -> dict[str, torch.Tensor]:
    """Concatenate per-row visual tensors in row order (the order the model consumes grids)."""
    out: dict[str, torch.Tensor] = {}
    for key in VISUAL_KEYS:
        parts = [row[key] for row in rows if key in row]
        if parts:
            out[key] = torch.cat(parts).to(device) if device is not None else torch.cat(parts)
    return out


def mm_token_types(
    input_ids: torch.Tensor, image_token_id: int | None, video_token_id: int | None
) -> torch.Tensor:
    """Qwen's modality map per token: 0 text, 1 image placeholder, 2 video placeholder."""
    types = torch.zeros_like(input_ids)
    if image_token_id is not None:
        types[input_ids == image_token_id] = 1
    if video_token_id is not None:
        types[input_ids == video_token_id] = 2
    return types

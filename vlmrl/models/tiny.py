"""The tiny demo model: a Qwen2.5-VL-architecture model small enough to train on a CPU.

Nothing is downloaded. The tokenizer is a byte-level BPE trained here on the recipe's own
annotation text, the processor is assembled from the Qwen2-VL image and video processors,
and the weights are a seeded random initialisation. The result is a normal checkpoint
directory (safetensors + JSON) that `vlmrl.models.loading.load_model` reloads offline with
the Auto classes, exactly like a real Qwen2.5-VL checkpoint.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

from vlmrl.atomic import OutputKind, atomic_directory, check_output

# Qwen's control tokens: they must exist so the processor and the model agree on ids.
# what build_tiny_model writes (tiny_spec.json last): the only kind it may replace
TINY_MODEL = OutputKind("tiny model", "tiny_spec.json", keys=("spec", "seed"))
PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD)
# Reasoning tags are ordinary (non-special) added tokens: one token each makes the format
# easy to learn for a tiny model, and they survive `skip_special_tokens=True` decoding,
# which the reward functions rely on.
REASONING_TOKENS = ("<think>", "</think>", "<answer>", "</answer>")

# Qwen-style chat template. Image and video parts become one placeholder each between
# vision start/end markers; the processor expands the placeholder to the right number of
# visual tokens. No default system prompt: every token counts for a tiny model.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or 'image' in part -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'video' or 'video' in part -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif 'text' in part -%}"
    "{{- part['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)


@dataclass
class TinyModelSpec:
    """Sizes of the tiny Qwen2.5-VL model and of its tokenizer and processor.

    The defaults give roughly 0.25M parameters: it trains a GRPO step in well under a
    second on one CPU core while keeping the real architecture (vision tower with window
    attention and patch merger, M-RoPE text decoder).

    Text decoder:
        vocab_size: target size of the BPE vocabulary trained on the given texts (the
            256 byte symbols included). The final vocabulary adds the special and
            reasoning tokens, and can be smaller when the texts have few distinct pairs;
            the model's embedding matrix is sized to the final tokenizer.
        hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
        num_key_value_heads: the usual decoder sizes; head_dim = hidden / heads.
        mrope_section: split of head_dim/2 rotary frequencies into (time, height, width);
            must sum to head_dim/2. None derives Qwen's 1/4, 3/8, 3/8 proportions.
        rope_theta, max_position_embeddings: rotary base and position budget.
        initializer_range: std of the random init (Qwen's 0.02). Tiny models learn to
            read the visual tokens much sooner with a larger scale (e.g. 0.08).
    Vision tower:
        vision_depth, vision_hidden_size, vision_intermediate_size, vision_num_heads.
        patch_size: pixels per patch side (14 as in Qwen).
        spatial_merge_size: 2x2 patches merge into one language token.
        temporal_patch_size: frames per temporal patch (2): videos need an even number
            of frames, images are repeated.
        tokens_per_second: M-RoPE temporal position step per second of video.
        window_size: window-attention size in pixels.
    Processor:
        min_pixels, max_pixels: per-frame pixel budget for images and video frames after
            Qwen's "smart resize" (multiples of patch_size * spatial_merge_size = 28).
            56x56 .. 112x112 gives 4 .. 16 visual tokens per image / temporal patch.
    """

    vocab_size: int = 1024
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    mrope_section: tuple[int, int, int] | None = None
    rope_theta: float = 10000.0
    max_position_embeddings: int = 4096
    vision_depth: int = 2
    vision_hidden_size: int = 32
    vision_intermediate_size: int = 64
    vision_num_heads: int = 2
    patch_size: int = 14
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    tokens_per_second: int = 2
    window_size: int = 112
    min_pixels: int = 56 * 56
    max_pixels: int = 112 * 112
    initializer_range: float = 0.02
    extra_tokens: tuple[str, ...] = field(default_factory=tuple)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def resolved_mrope_section(self) -> list[int]:
        half = self.head_dim // 2
        if self.mrope_section is not None:
            section = [int(x) for x in self.mrope_section]
        else:
            t = half // 4
            h = (half - t) // 2
            section = [t, h, half - t - h]
        if len(section) != 3 or sum(section) != half:
            raise ValueError(
                f"mrope_section {section} must have 3 entries summing to head_dim/2 = {half}"
            )
        return section

    def validate(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be divisible by num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be divisible by num_key_value_heads")
        if self.vision_hidden_size % self.vision_num_heads:
            raise ValueError("vision_hidden_size must be divisible by vision_num_heads")
        factor = self.patch_size * self.spatial_merge_size
        if self.min_pixels < factor * factor or self.max_pixels < self.min_pixels:
            raise ValueError(f"need {factor * factor} <= min_pixels <= max_pixels")
        self.resolved_mrope_section()


def build_tokenizer(texts: Iterable[str], spec: TinyModelSpec) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts` and wrap it with Qwen's special tokens and template."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Sorted input makes the merges independent of the caller's order (repeats are kept:
    # frequencies decide the merges).
    corpus = sorted(t for t in texts if t)
    bpe.train_from_iterator(corpus, trainer=trainer)
    extra = [t for t in (*REASONING_TOKENS, *spec.extra_tokens) if bpe.token_to_id(t) is None]
    bpe.add_tokens([AddedToken(t, special=False, normalized=False) for t in extra])

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        padding_side="left",
        model_max_length=spec.max_position_embeddings,
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )
    return tokenizer


def build_processor(tokenizer: PreTrainedTokenizerFast, spec: TinyModelSpec) -> Qwen2_5_VLProcessor:
    """Qwen2.5-VL processor for tiny frames; videos arrive as already-sampled frames."""
    common = dict(
        min_pixels=spec.min_pixels,
        max_pixels=spec.max_pixels,
        patch_size=spec.patch_size,
        temporal_patch_size=spec.temporal_patch_size,
        merge_size=spec.spatial_merge_size,
    )
    image_processor = Qwen2VLImageProcessor(**common)
    # Frames were sampled when the frame dataset was built: never resample here.
    video_processor = Qwen2VLVideoProcessor(
        **common, do_sample_frames=False, cap_pixels_per_frame=False, min_frames=1
    )
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )


def build_config(tokenizer: PreTrainedTokenizerFast, spec: TinyModelSpec) -> Qwen2_5_VLConfig:
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text_config = dict(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        max_window_layers=spec.num_hidden_layers,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": spec.rope_theta,
            "mrope_section": spec.resolved_mrope_section(),
        },
        bos_token_id=None,
        eos_token_id=ids[IM_END],
        pad_token_id=ids[PAD_TOKEN],
        tie_word_embeddings=True,
        initializer_range=spec.initializer_range,
    )
    vision_config = dict(
        depth=spec.vision_depth,
        hidden_size=spec.vision_hidden_size,
        intermediate_size=spec.vision_intermediate_size,
        num_heads=spec.vision_num_heads,
        patch_size=spec.patch_size,
        spatial_merge_size=spec.spatial_merge_size,
        temporal_patch_size=spec.temporal_patch_size,
        tokens_per_second=spec.tokens_per_second,
        window_size=spec.window_size,
        out_hidden_size=spec.hidden_size,
        fullatt_block_indexes=[spec.vision_depth - 1],
        initializer_range=spec.initializer_range,
    )
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids[IMAGE_PAD],
        video_token_id=ids[VIDEO_PAD],
        vision_start_token_id=ids[VISION_START],
        vision_end_token_id=ids[VISION_END],
        tie_word_embeddings=True,
        initializer_range=spec.initializer_range,
    )


def build_tiny_model(
    out_dir: str | os.PathLike,
    texts: Iterable[str],
    spec: TinyModelSpec | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Build the tiny model, tokenizer and processor and save them to `out_dir`.

    Deterministic for a given (texts, spec, seed). The directory is assembled next to the
    target and moved into place with one rename, so an interrupted build never leaves a
    directory that looks like a complete checkpoint. Returns the directory path.
    """
    spec = spec or TinyModelSpec()
    spec.validate()
    out = check_output(out_dir, TINY_MODEL, overwrite=overwrite)  # fail before the build

    tokenizer = build_tokenizer(texts, spec)
    processor = build_processor(tokenizer, spec)
    config = build_config(tokenizer, spec)

    # Seeded init on a private generator state: the caller's RNG is left untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32)
    model.generation_config = GenerationConfig(
        eos_token_id=config.text_config.eos_token_id,
        pad_token_id=config.text_config.pad_token_id,
        bos_token_id=None,
        do_sample=False,
    )

    with atomic_directory(out, overwrite, kind=TINY_MODEL) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        processor.save_pretrained(staging)
        (staging / "tiny_spec.json").write_text(_spec_json(spec, seed))
    return out


def _spec_json(spec: TinyModelSpec, seed: int) -> str:
    return json.dumps({"spec": asdict(spec), "seed": seed}, indent=2, sort_keys=True) + "\n"

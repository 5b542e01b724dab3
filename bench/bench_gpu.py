"""Measure 8: one GRPO step of a Qwen2.5-VL-7B-shaped model on one GPU, by phase.

    .venv/bin/python bench/bench_gpu.py [--quick] [--json out.json]   # needs CUDA (an H200)
    .venv/bin/python bench/bench_gpu.py --tiny                        # CPU smoke run
    .venv/bin/python bench/bench_gpu.py --shrink   # the GPU code path, narrow dims (CPU ok)

The model has Qwen2.5-VL-7B's published dimensions (8.29 B parameters: text 3584 hidden,
28 layers, 28 heads, 4 KV heads, 18944 intermediate, 152064 vocabulary, M-RoPE sections
16/24/24, theta 1e6; vision 32 blocks of 1280, 16 heads, out 3584, window 112, full
attention in blocks 7/15/23/31) with random weights in bf16. The tokenizer and processor
are the tiny checkpoint's (`vlmrl.models.tiny`, Qwen2.5-VL's format). Each prompt is a
16-frame video at 224 x 448 pixels (= max_pixels 128 * 28 * 28: 512 patches, 128 merged
tokens per frame; temporal patches of 2 frames -> 8 x 128 = 1024 video tokens) and the
question text. Per step, for P prompts (default 1) and G = 8 completions each:

- prepare: `encode_chats` (the processor) on the P * G conversations, one video each, as
  the GRPO trainer does;
- generation: `model.generate`, sampling, exactly 768 new tokens per row
  (min_new_tokens = max_new_tokens, EOS and the visual placeholders suppressed);
- scoring: decode, the format + accuracy rewards (`vlmrl.rewards`), group advantages;
- log-probs: a no-grad forward of prompt + completion with each row's video
  (`collate_visual_rows`, `mm_token_types`, TRL's fused LM head: the old-policy
  log-probs);
- update: the clipped GRPO loss, backward, optimizer step on the language model, the
  vision tower frozen (`freeze_vision_tower`); gradient checkpointing on the GPU.
  Log-probs and update run in micro-batches of --micro-batch rows (default 4).

The first step is a warm-up with short completions (kernels, allocator, optimizer
states); the figures are means over the measured steps, and the peak memory is over them.

Figures (N_lm: language-model parameters that multiply, i.e. without the input embedding
table, lm_head included; N_vis: vision-tower parameters; T: real tokens, prompt + completion
of all rows; P_vis: vision patches in a forward; attention-score FLOPs are not counted):

- rollout tokens/s = generated tokens / generation time (prefill and vision included);
- training tokens/s = T / update time; step tokens/s = T / step time, the figure comparable
  to EasyR1's 1,600-2,000 tokens/s per H100 for Qwen2.5-VL-7B GRPO (verl's throughput:
  prompt + response tokens per second per GPU, whole step; their rollout is vLLM);
- MFU = model FLOPs / (time * peak), peak = H200 dense bf16 989 TFLOP/s (--peak-tflops),
  model FLOPs: generation 2 * N_lm * (prompt + generated tokens) + 2 * N_vis * P_vis;
  log-probs 2 * N_lm * T + 2 * N_vis * P_vis; update 6 * N_lm * T + 2 * N_vis * P_vis
  (gradient checkpointing's recomputed forward is not counted: this is MFU, not HFU);
- rollout fraction of the HBM roofline: decoding is bandwidth-bound, each decode step reads
  every weight once (N_lm * bytes per parameter) plus the KV cache of every row
  (rows * context * layers * 2 * kv_heads * head_dim * bytes); roofline tokens/s = rows *
  HBM bandwidth / bytes per step at the mean context (prompt + half the completion),
  HBM 4.8 TB/s (--hbm-tbps). The measured rate includes the prefill, so the fraction is a
  lower bound on the decode loop's.

Optimizer: AdamW with bf16 parameters keeps its two states in bf16 (the parameters'
dtype): 2 + 2 + 4 = 8 bytes per trainable parameter, about 57 GiB for the 7.6 B of the
language model (input embedding included). Mixed precision (fp32 weights, gradients and
states, 16 bytes per parameter) would take 113 GiB of the H200's ~139 GiB before the
activations, the KV cache and the allocator's slack: too tight to rely on, so the
bf16-state AdamW is the default (lr 1e-6 updates mostly round away in bf16 weights: this
is a speed measure, not a training recipe); --optimizer sgd is leaner still.
The choice is printed. On CPU (--tiny: the tiny demo model, 4 frames, G = 2, 8 tokens)
every figure is computed the same way so the script cannot rot; the MFU and roofline
figures are then against the H200's peaks and mean nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

H200_PEAK_BF16_TFLOPS = 989.0  # dense, no sparsity
H200_HBM_TBPS = 4.8
EASYR1_ANCHOR = "EasyR1: 1,600-2,000 tokens/s per H100 (Qwen2.5-VL-7B GRPO)"
PARTS = ("prepare", "generation", "scoring", "logprobs", "update")
FRAME_PIXELS_7B = 128 * 28 * 28  # the processor's max_pixels per frame
FRAME_HW_7B = (224, 448)  # 8 x 16 blocks of 28 pixels = 128 merged tokens, no resize


@dataclass
class Settings:
    tiny: bool = False
    shrink: bool = False  # the 7B code path with narrow dims (a CPU dry run of the GPU path)
    frames: int = 16
    height: int = FRAME_HW_7B[0]
    width: int = FRAME_HW_7B[1]
    prompts: int = 1
    generations: int = 8
    completion_tokens: int = 768
    warmup_tokens: int = 32
    steps: int = 2  # measured steps, after the warm-up step
    micro_batch: int = 4
    optimizer: str = "adamw"
    learning_rate: float = 1e-6
    gradient_checkpointing: bool = True
    attn: str = "sdpa"
    peak_tflops: float = H200_PEAK_BF16_TFLOPS
    hbm_tbps: float = H200_HBM_TBPS
    seed: int = 0

    @classmethod
    def tiny_cpu(cls, steps: int = 1) -> Settings:
        return cls(
            tiny=True,
            frames=4,
            height=56,
            width=56,
            generations=2,
            completion_tokens=8,
            warmup_tokens=4,
            steps=steps,
            micro_batch=2,
            gradient_checkpointing=False,
            learning_rate=1e-4,
        )

    @classmethod
    def shrunk(cls, steps: int = 1) -> Settings:
        """The GPU path (bf16, 16 frames of 224 x 448, checkpointing) on narrow dims, G = 2."""
        return cls(
            shrink=True,
            generations=2,
            completion_tokens=8,
            warmup_tokens=4,
            steps=steps,
            micro_batch=1,
            learning_rate=1e-4,
        )


def qwen25vl_7b_config(token_ids: dict[str, int], shrink: bool = False) -> Any:
    """Qwen2.5-VL-7B-Instruct's published dimensions, with the given special-token ids.

    ``token_ids``: eos, pad, image, video, vision_start, vision_end (the tokenizer's).
    ``shrink``: the same config with narrow widths, few layers and a 4096 vocabulary
    (patch, merge, window and rope layout kept), for a CPU dry run of the GPU code path.
    """
    from transformers import Qwen2_5_VLConfig

    text = dict(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        hidden_act="silu",
        max_position_embeddings=128000,
        rms_norm_eps=1e-6,
        use_sliding_window=False,
        sliding_window=32768,
        max_window_layers=28,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 1000000.0,
            "mrope_section": [16, 24, 24],
        },
        bos_token_id=None,
        eos_token_id=token_ids["eos"],
        pad_token_id=token_ids["pad"],
        tie_word_embeddings=False,
    )
    vision = dict(
        depth=32,
        hidden_size=1280,
        intermediate_size=3420,
        num_heads=16,
        in_channels=3,
        out_hidden_size=3584,
        hidden_act="silu",
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        tokens_per_second=2,
        window_size=112,
        fullatt_block_indexes=[7, 15, 23, 31],
    )
    if shrink:
        # a small vocabulary too: off CUDA, TRL's fused head scores every position
        text.update(
            vocab_size=4096,
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_window_layers=2,
            rope_parameters={**text["rope_parameters"], "mrope_section": [4, 6, 6]},
        )
        vision.update(
            depth=4,
            hidden_size=64,
            intermediate_size=128,
            num_heads=2,
            out_hidden_size=128,
            fullatt_block_indexes=[1, 3],
        )
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=token_ids["image"],
        video_token_id=token_ids["video"],
        vision_start_token_id=token_ids["vision_start"],
        vision_end_token_id=token_ids["vision_end"],
        tie_word_embeddings=False,
    )


def special_token_ids(tokenizer: Any) -> dict[str, int]:
    from vlmrl.models.tiny import IM_END, IMAGE_PAD, PAD_TOKEN, VIDEO_PAD, VISION_END, VISION_START

    names = {
        "eos": IM_END,
        "pad": PAD_TOKEN,
        "image": IMAGE_PAD,
        "video": VIDEO_PAD,
        "vision_start": VISION_START,
        "vision_end": VISION_END,
    }
    return {k: tokenizer.convert_tokens_to_ids(t) for k, t in names.items()}


def video_rows(n: int, s: Settings) -> list[dict]:
    """Frame-dataset rows, one video of `s.frames` random frames each (content is irrelevant)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(s.seed)
    rows = []
    for i in range(n):
        frames = [
            Image.fromarray(rng.integers(0, 256, (s.height, s.width, 3), dtype=np.uint8))
            for _ in range(s.frames)
        ]
        rows.append(
            {
                "problem_id": f"bench-{i}",
                "problem": "Which way does the square move?",
                "data_type": "video",
                "problem_type": "multiple choice",
                "options": ["A. left", "B. right"],
                "solution": "<answer>B</answer>",
                "path": f"{i}.mp4",
                "data_source": "bench",
                "process": "<think>The square moves right.</think>",
                "frames": frames,
                "fps": 2.0,
                "frame_indices": list(range(s.frames)),
                "timestamps": [t / 2 for t in range(s.frames)],
            }
        )
    return rows


def processor_spec(s: Settings) -> Any:
    from vlmrl.models import TinyModelSpec

    if s.tiny:
        return TinyModelSpec()
    return TinyModelSpec(max_pixels=FRAME_PIXELS_7B)


def build_model(s: Settings, model_dir: Path, device: str) -> tuple[Any, Any]:
    """(model, processor): the tiny checkpoint itself (--tiny), else the 7B shape in bf16."""
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    from vlmrl.models import load_model, load_processor

    if s.tiny:
        loaded = load_model(model_dir, dtype="float32", device=device, attn_implementation=s.attn)
        return loaded.model, loaded.processor
    processor = load_processor(model_dir)
    ids = special_token_ids(processor.tokenizer)
    config = qwen25vl_7b_config(ids, shrink=s.shrink)
    torch.manual_seed(s.seed)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(
            config, dtype=torch.bfloat16, attn_implementation=s.attn
        )
    model.generation_config = GenerationConfig(
        eos_token_id=ids["eos"], pad_token_id=ids["pad"], bos_token_id=None
    )
    model.eval()
    return model, processor


def parameter_counts(model: Any) -> dict[str, int]:
    """n_lm: language-model parameters that multiply (no input embedding, lm_head once);
    n_vis: the vision tower's; n_total: all (tied weights once)."""
    inner = model.model
    embed = inner.language_model.embed_tokens.weight
    lm_head = model.lm_head.weight
    n_lm = sum(p.numel() for p in inner.language_model.parameters()) - embed.numel()
    n_lm += lm_head.numel()
    n_vis = sum(p.numel() for p in inner.visual.parameters())
    return {"n_lm": n_lm, "n_vis": n_vis, "n_total": sum(p.numel() for p in model.parameters())}


def kv_bytes_per_token(config: Any, bytes_per_value: int) -> int:
    text = config.get_text_config()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return text.num_hidden_layers * 2 * text.num_key_value_heads * head_dim * bytes_per_value


def decode_roofline_tokens_per_s(
    rows: int, weight_bytes: float, kv_per_token: float, mean_context: float, hbm_bytes_per_s: float
) -> float:
    """Bandwidth roofline of decoding: each step reads the weights once and every row's KV."""
    bytes_per_step = weight_bytes + rows * mean_context * kv_per_token
    return rows * hbm_bytes_per_s / bytes_per_step


def make_optimizer(name: str, params: list, lr: float, device: str) -> tuple[Any, str]:
    import torch

    if name == "adamw":
        fused = device == "cuda"
        dtype = params[0].dtype
        note = (
            f"AdamW (torch, fused={fused}), states in {str(dtype).removeprefix('torch.')} "
            "(the parameters' dtype)"
        )
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=fused), note
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr), "SGD (no optimizer state)"
    raise ValueError(f"unknown optimizer {name!r}: adamw or sgd")


class Clock:
    """Wall time of phases, synchronising the device at each boundary."""

    def __init__(self, sync: Callable[[], None]) -> None:
        self.sync = sync
        self.parts: dict[str, float] = {}

    def phase(self, name: str) -> _Phase:
        return _Phase(self, name)


class _Phase:
    def __init__(self, clock: Clock, name: str) -> None:
        self.clock, self.name = clock, name

    def __enter__(self) -> None:
        self.clock.sync()
        self.start = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        self.clock.sync()
        self.clock.parts[self.name] = time.perf_counter() - self.start


class GRPOStep:
    """One GRPO step on fixed prompts, timed by phase (the trainer's work, without TRL's loop)."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        rows: list[dict],
        s: Settings,
        device: str,
        rewards: list[Callable[..., list]] | None = None,
    ) -> None:
        import torch
        from trl.trainer.utils import add_fused_lm_head

        from vlmrl.models.loading import freeze_vision_tower
        from vlmrl.rewards import get_reward
        from vlmrl.train.prompts import build_prompt

        self.model, self.processor, self.rows, self.s, self.device = (
            model,
            processor,
            rows,
            s,
            device,
        )
        self.tokenizer = processor.tokenizer
        config = model.config
        self.image_id, self.video_id = config.image_token_id, config.video_token_id
        eos = model.generation_config.eos_token_id
        self.suppress = sorted(
            {
                eos,
                self.image_id,
                self.video_id,
                config.vision_start_token_id,
                config.vision_end_token_id,
            }
        )
        self.pad_id = model.generation_config.pad_token_id
        self.frozen = freeze_vision_tower(model)
        add_fused_lm_head(model)  # the trainer's log-prob path: no [B, T, V] logits
        if s.gradient_checkpointing:
            model.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False}
            )
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer, self.optimizer_note = make_optimizer(
            s.optimizer, self.trainable, s.learning_rate, device
        )
        # the GRPO batch: every prompt repeated G times, each row with its own video
        self.batch_rows = [r for r in rows for _ in range(s.generations)]
        self.conversations = [build_prompt(r) for r in self.batch_rows]
        # TRL-convention reward functions, summed (random weights score 0: zero advantages)
        self.rewards = rewards or [get_reward("format"), get_reward("accuracy")]
        self.sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def _forward_logps(self, ids, mask, visual_rows, prompt_len: int):
        from vlmrl.models.multimodal import collate_visual_rows, mm_token_types

        types = mm_token_types(ids, self.image_id, self.video_id)
        types[:, prompt_len:] = 0
        labels = ids.masked_fill(mask == 0, -100)
        labels[:, :prompt_len] = -100
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            mm_token_type_ids=types,
            **collate_visual_rows(visual_rows, ids.device),
            labels=labels,
            fused_lm_head=True,
        )
        return out.log_probs[:, prompt_len - 1 :]  # the log-prob of completion token t

    def run(self, completion_tokens: int) -> dict[str, Any]:
        import torch

        from vlmrl.models.multimodal import encode_chats

        s, model, clock = self.s, self.model, Clock(self.sync)
        torch.manual_seed(s.seed)
        self.sync()
        start = time.perf_counter()
        with clock.phase("prepare"):
            enc = encode_chats(self.processor, self.conversations)
            inputs = {k: v.to(self.device) for k, v in enc.model_inputs().items()}
            visual_rows = enc.visual_rows()
        with clock.phase("generation"):
            model.eval()
            with torch.inference_mode():
                out = model.generate(
                    **inputs,
                    max_new_tokens=completion_tokens,
                    min_new_tokens=completion_tokens,
                    do_sample=True,
                    temperature=1.0,
                    top_p=1.0,
                    top_k=0,
                    suppress_tokens=self.suppress,
                    pad_token_id=self.pad_id,
                    use_cache=True,
                )
        prompt_len = inputs["input_ids"].size(1)
        completion = out[:, prompt_len:].clone()
        if completion.size(1) != completion_tokens:
            raise RuntimeError(f"generated {completion.size(1)} tokens, asked {completion_tokens}")
        with clock.phase("scoring"):
            # random weights sample the 7B vocabulary; decode ids into the tokenizer's range
            ids_for_text = (completion % len(self.tokenizer)).tolist()
            texts = self.tokenizer.batch_decode(ids_for_text, skip_special_tokens=True)
            columns = {
                "solution": [r["solution"] for r in self.batch_rows],
                "problem_type": [r["problem_type"] for r in self.batch_rows],
            }
            total = [0.0] * len(texts)
            for fn in self.rewards:
                for i, v in enumerate(fn(texts, **columns)):
                    total[i] += v or 0.0
            rewards = torch.tensor(total).view(s.prompts, s.generations)
            advantages = (rewards - rewards.mean(1, keepdim=True)) / (
                rewards.std(1, keepdim=True) + 1e-4
            )
            advantages = advantages.flatten().to(self.device)
        ids = torch.cat([inputs["input_ids"], completion], dim=1)
        mask = torch.cat([inputs["attention_mask"], torch.ones_like(completion)], dim=1)
        n = ids.size(0)
        chunks = [(a, min(a + s.micro_batch, n)) for a in range(0, n, s.micro_batch)]
        with clock.phase("logprobs"), torch.no_grad():
            old = torch.cat(
                [
                    self._forward_logps(ids[a:b], mask[a:b], visual_rows[a:b], prompt_len)
                    for a, b in chunks
                ]
            )
        with clock.phase("update"):
            model.train()
            losses = []
            for a, b in chunks:
                logps = self._forward_logps(ids[a:b], mask[a:b], visual_rows[a:b], prompt_len)
                ratio = torch.exp(logps.float() - old[a:b].float())
                adv = advantages[a:b, None]
                per_token = -torch.min(ratio * adv, ratio.clamp(0.8, 1.2) * adv)
                loss = per_token.mean() * (b - a) / n
                loss.backward()
                losses.append(loss.detach())
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            model.eval()
            loss_value = float(torch.stack(losses).sum())
        self.sync()
        step = time.perf_counter() - start
        if not math.isfinite(loss_value):
            raise RuntimeError(f"non-finite loss {loss_value}")
        return {
            "step_s": step,
            "parts": clock.parts,
            "loss": loss_value,
            "reward_mean": float(rewards.mean()),
            "prompt_tokens": int(inputs["attention_mask"].sum()),
            "prompt_len": prompt_len,
            "rows": n,
            "video_tokens": int((inputs["input_ids"][0] == self.video_id).sum()),
            "patches": int(inputs["pixel_values_videos"].size(0)),
        }


def setup(s: Settings, rewards: list[Callable[..., list]] | None = None) -> GRPOStep:
    """The model (tiny, or 7B-shaped on the GPU), its processor and the step, ready to run."""
    import torch

    from vlmrl.models import build_tiny_model
    from vlmrl.train.prompts import tokenizer_corpus

    if s.generations < 2:
        raise ValueError("GRPO needs G >= 2 completions per prompt (group advantages)")
    device = "cuda" if torch.cuda.is_available() and not s.tiny else "cpu"
    if device == "cpu" and not (s.tiny or s.shrink):
        raise RuntimeError(no_cuda_reason())
    s = replace(s, micro_batch=min(s.micro_batch, s.prompts * s.generations))
    torch.manual_seed(s.seed)
    rows = video_rows(s.prompts, s)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(
            Path(tmp) / "model", tokenizer_corpus(rows) * 4, processor_spec(s), seed=s.seed
        )
        model, processor = build_model(s, model_dir, device)
    return GRPOStep(model, processor, rows, s, device, rewards)


def run(s: Settings) -> dict[str, Any]:
    """Build, warm up, measure `s.steps` steps; the summary (see the module docstring)."""
    import torch

    step = setup(s)
    s, model, device = step.s, step.model, step.device
    counts = parameter_counts(model)
    print(
        f"bench_gpu: {device}, {model_name(s)}, "
        f"{counts['n_total'] / 1e9:.3f} B params (LM {counts['n_lm'] / 1e9:.3f} B, vision "
        f"{counts['n_vis'] / 1e9:.3f} B frozen), optimizer: {step.optimizer_note}",
        flush=True,
    )

    warm = step.run(min(s.warmup_tokens, s.completion_tokens))
    print(
        f"warm-up step {warm['step_s']:.2f} s  "
        + "  ".join(f"{k} {v:.2f}" for k, v in warm["parts"].items()),
        flush=True,
    )
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    results = []
    for i in range(s.steps):
        r = step.run(s.completion_tokens)
        results.append(r)
        print(
            f"step {i + 1}: {r['step_s']:.2f} s  "
            + "  ".join(f"{k} {v:.2f}" for k, v in r["parts"].items()),
            flush=True,
        )
    summary = summarize(s, results, counts, model, device)
    summary["optimizer"] = step.optimizer_note
    if device == "cuda":
        summary["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
        summary["gpu"] = torch.cuda.get_device_name()
    summary["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return summary


def model_name(s: Settings) -> str:
    return "tiny" if s.tiny else "qwen2.5-vl-7b-shape" + (" (shrunk)" if s.shrink else "")


def sig(x: float, digits: int = 4) -> float:
    """`x` rounded to `digits` significant figures (small figures stay non-zero)."""
    return float(f"{x:.{digits}g}")


def summarize(
    s: Settings, results: list[dict], counts: dict[str, int], model: Any, device: str
) -> dict[str, Any]:
    def mean(values) -> float:
        values = list(values)
        return sum(values) / len(values)

    first = results[0]
    rows, n_lm, n_vis = first["rows"], counts["n_lm"], counts["n_vis"]
    step_s = mean(r["step_s"] for r in results)
    parts = {k: mean(r["parts"][k] for r in results) for k in PARTS}
    generated = rows * s.completion_tokens
    tokens = first["prompt_tokens"] + generated  # real tokens, prompt + completion, all rows
    patches = first["patches"]
    peak = s.peak_tflops * 1e12
    flops = {
        "generation": 2 * n_lm * tokens + 2 * n_vis * patches,
        "logprobs": 2 * n_lm * tokens + 2 * n_vis * patches,
        "update": 6 * n_lm * tokens + 2 * n_vis * patches,
    }
    bytes_per_param = next(model.parameters()).element_size()
    mean_context = first["prompt_len"] + (s.completion_tokens + 1) / 2
    roofline = decode_roofline_tokens_per_s(
        rows,
        n_lm * bytes_per_param,
        kv_bytes_per_token(model.config, bytes_per_param),
        mean_context,
        s.hbm_tbps * 1e12,
    )
    rollout = generated / parts["generation"]
    return {
        "device": device,
        "model": model_name(s),
        "params_b": sig(counts["n_total"] / 1e9),
        "params_lm_b": sig(n_lm / 1e9),
        "params_vision_b": sig(n_vis / 1e9),
        "frames": s.frames,
        "frame_hw": [s.height, s.width],
        "video_tokens": first["video_tokens"],
        "prompt_len": first["prompt_len"],
        "prompts": s.prompts,
        "G": s.generations,
        "completion_tokens": s.completion_tokens,
        "steps": len(results),
        "micro_batch": s.micro_batch,
        "gradient_checkpointing": s.gradient_checkpointing,
        "step_s": sig(step_s, 6),
        "parts_s": {k: sig(v, 6) for k, v in parts.items()},
        "other_s": sig(step_s - sum(parts.values()), 6),
        "rollout_tokens_per_s": sig(rollout, 6),
        "train_tokens_per_s": sig(tokens / parts["update"], 6),
        "step_tokens_per_s": sig(tokens / step_s, 6),
        "mfu": {
            **{k: sig(flops[k] / (parts[k] * peak)) for k in flops},
            "step": sig(sum(flops.values()) / (step_s * peak)),
        },
        "peak_tflops": s.peak_tflops,
        "hbm_tbps": s.hbm_tbps,
        "rollout_roofline_tokens_per_s": sig(roofline),
        "rollout_roofline_fraction": sig(rollout / roofline),
        "anchor": EASYR1_ANCHOR,
        "loss": sig(mean(r["loss"] for r in results)),
        "reward_mean": sig(mean(r["reward_mean"] for r in results)),
    }


def table(r: dict[str, Any]) -> str:
    parts = r["parts_s"]
    lines = [
        f"{'figure':<40} value",
        f"{'device / model':<40} {r.get('gpu', r['device'])} / {r['model']} ({r['params_b']:.2f} B)",
        f"{'batch':<40} {r['prompts']} prompt(s) x G={r['G']}, {r['frames']} frames "
        f"({r['video_tokens']} video tokens), prompt {r['prompt_len']}, completion {r['completion_tokens']}",
        f"{'step time':<40} {r['step_s']:.3f} s",
    ]
    lines += [f"{'  ' + k:<40} {v:.3f} s ({100 * v / r['step_s']:.1f} %)" for k, v in parts.items()]
    lines += [
        f"{'  other (not in a phase)':<40} {r['other_s']:.3f} s",
        f"{'rollout tokens/s':<40} {r['rollout_tokens_per_s']:,.1f}",
        f"{'training tokens/s (update)':<40} {r['train_tokens_per_s']:,.1f}",
        f"{'step tokens/s (prompt + completion)':<40} {r['step_tokens_per_s']:,.1f}   [{r['anchor']}]",
        f"{'rollout HBM roofline tokens/s':<40} {r['rollout_roofline_tokens_per_s']:,.1f} "
        f"({r['hbm_tbps']} TB/s) -> {100 * r['rollout_roofline_fraction']:.2f} % of it",
    ]
    lines += [
        f"{'MFU ' + k:<40} {100 * v:.3f} % (of {r['peak_tflops']:g} TFLOP/s)"
        for k, v in r["mfu"].items()
    ]
    if "peak_cuda_mb" in r:
        lines.append(
            f"{'peak memory (max_memory_allocated)':<40} {r['peak_cuda_mb'] / 1024:.1f} GiB"
        )
    lines.append(f"{'peak RSS':<40} {r['peak_rss_mb']:,} MB")
    lines.append(f"{'optimizer':<40} {r['optimizer']}")
    return "\n".join(lines)


def no_cuda_reason() -> str | None:
    import torch

    if torch.cuda.is_available():
        return None
    return (
        "no CUDA device: the 7B-shaped run needs a GPU (an H200); "
        "run with --tiny for the CPU smoke run"
    )


def measure(quick: bool = False, tiny: bool = False) -> dict:
    """The summary of one run (quick: one measured step). Without CUDA (and not tiny):
    {"skipped": reason}, so `make bench` can list the measure as not measured."""
    if not tiny and (reason := no_cuda_reason()):
        return {"skipped": reason}
    steps = 1 if quick else 2
    return run(Settings.tiny_cpu(steps) if tiny else Settings(steps=steps))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    d = Settings()
    p.add_argument(
        "--tiny", action="store_true", help="the tiny model on CPU (4 frames, G=2, 8 tokens)"
    )
    p.add_argument(
        "--shrink",
        action="store_true",
        help="the GPU code path on narrow dims (CPU allowed): a dry run, G=2, 8 tokens",
    )
    p.add_argument("--quick", action="store_true", help="one measured step")
    p.add_argument(
        "--steps", type=int, help="measured steps after the warm-up (default 2, quick 1)"
    )
    p.add_argument("--prompts", type=int, default=d.prompts)
    p.add_argument("--generations", type=int, help=f"G (default {d.generations})")
    p.add_argument("--completion-tokens", type=int, help=f"(default {d.completion_tokens})")
    p.add_argument("--micro-batch", type=int, help=f"rows per forward (default {d.micro_batch})")
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default=d.optimizer)
    p.add_argument("--no-gradient-checkpointing", action="store_true")
    p.add_argument(
        "--attn", default=d.attn, help="attention implementation (sdpa, flash_attention_2)"
    )
    p.add_argument("--peak-tflops", type=float, default=d.peak_tflops)
    p.add_argument("--hbm-tbps", type=float, default=d.hbm_tbps)
    p.add_argument("--json", type=Path, help="also write the summary here")
    return p


def settings_from(args: argparse.Namespace) -> Settings:
    steps = args.steps or (1 if args.quick else 2)
    if args.tiny:
        s = Settings.tiny_cpu(steps)
    elif args.shrink:
        s = Settings.shrunk(steps)
    else:
        s = Settings(steps=steps)
    s = replace(
        s,
        prompts=args.prompts,
        optimizer=args.optimizer,
        attn=args.attn,
        peak_tflops=args.peak_tflops,
        hbm_tbps=args.hbm_tbps,
    )
    if args.generations:
        s = replace(s, generations=args.generations)
    if args.completion_tokens:
        s = replace(s, completion_tokens=args.completion_tokens)
    if args.micro_batch:
        s = replace(s, micro_batch=args.micro_batch)
    if args.no_gradient_checkpointing:
        s = replace(s, gradient_checkpointing=False)
    return s


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not (args.tiny or args.shrink) and (reason := no_cuda_reason()):
        print(f"bench_gpu: {reason}", file=sys.stderr)
        return 2
    s = settings_from(args)
    print("settings: " + json.dumps(asdict(s)), flush=True)
    summary = run(s)
    print(json.dumps(summary))
    print(table(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

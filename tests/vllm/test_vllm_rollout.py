"""vLLM rollouts against the trainer's model (issue 17), on the tiny recipe's checkpoint.

Runs in the vLLM environment: `make vllm`, then `.venv-vllm/bin/python -m pytest tests/vllm`.
"""

from __future__ import annotations

import copy
import os

import pytest

pytest.importorskip(
    "vllm",
    reason="vLLM environment absent: build it with `make vllm`, then run "
    "`.venv-vllm/bin/python -m pytest tests/vllm`",
)

import torch  # noqa: E402

from tests.vllm.conftest import conversations, hf_gap  # noqa: E402
from vlmrl.rollout import (  # noqa: E402
    PromptIdsMismatch,
    RolloutPrompt,
    VllmRollout,
    build_rollout_prompts,
    hf_completion_logprobs,
    language_model_weights,
    logprob_gap,
    vision_token_ids,
)
from vlmrl.train.prompts import build_prompt, sampled_fps  # noqa: E402
from vlmrl.train.temporal import non_identity_permutation  # noqa: E402

# The agreement gate's threshold on the embedding path: float32 on both sides, so the
# gap is rounding (text-only prompts measured 2e-6); a wrong position, grid or weight
# moves some token by > 1e-2.
MAX_GAP = 1e-4
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def sample(hf, engine):
    """engine.generate with the trainer's suppressed tokens (placeholders, vision markers)."""
    banned = vision_token_ids(hf[0].config)

    def run(prompts, n, max_tokens=MAX_TOKENS, seed=0):
        return engine.generate(prompts, n, max_tokens, seed=seed, suppress_token_ids=banned)

    return run


@pytest.fixture(scope="module")
def engine(demo):
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    engine = VllmRollout(demo.model_dir, max_model_len=2048, seed=0)
    yield engine
    engine.close()


@pytest.mark.parametrize("vision", ["pixels", "embeddings"])
def test_prompt_ids_equal_the_processors(demo, hf, engine, vision):
    model, processor = hf
    convs = conversations(demo, "video") + conversations(demo, "image")
    prompts = build_rollout_prompts(processor, convs, vision=vision, model=model)
    outputs = engine.generate(prompts, 1, 1, seed=0)  # raises PromptIdsMismatch on a difference
    for prompt, out in zip(prompts, outputs, strict=True):
        assert out.prompt_ids == prompt.hf_prompt_ids
        assert prompt.text.count("<|video_pad|>") + prompt.text.count("<|image_pad|>") == 1


def test_pre_expanded_prompt_is_caught(demo, hf, engine):
    # TRL's way: the processor's expanded ids as the prompt. vLLM expands again.
    model, processor = hf
    prompt = build_rollout_prompts(processor, conversations(demo, "video")[:1])[0]
    expanded = RolloutPrompt(
        processor.tokenizer.decode(prompt.hf_prompt_ids), prompt.multi_modal_data,
        prompt.hf_prompt_ids, prompt.visual,
    )
    with pytest.raises(PromptIdsMismatch, match="first|position"):
        engine.generate([expanded], 1, 1, seed=0)


@pytest.mark.parametrize("kind", ["video", "image"])
def test_embedding_path_rollouts_agree_with_transformers(demo, hf, sample, kind):
    model, processor = hf
    prompts = build_rollout_prompts(processor, conversations(demo, kind), vision="embeddings",
                                    model=model)
    assert all("pixel_values" not in str(p.multi_modal_data) for p in prompts)
    key = f"{kind}_embeds"
    assert all(key in p.multi_modal_data[kind] for p in prompts)
    outputs = sample(prompts, 4, seed=1)
    assert [len(o.completion_ids) for o in outputs] == [4] * len(prompts)
    assert all(len(c) > 0 for o in outputs for c in o.completion_ids)
    gap = hf_gap(model, prompts, outputs)
    assert gap.num_tokens >= 4 * len(prompts)
    assert gap.max_abs <= MAX_GAP, gap


def test_nucleus_sampling_logprobs_are_the_filtered_distributions(demo, hf, engine):
    """With top_p < 1 vLLM reports the log-probs of the nucleus it sampled from; the HF
    recomputation with the same filter agrees, without it every token is off by the kept
    mass (>= -log top_p)."""
    model, processor = hf
    banned = vision_token_ids(model.config)
    prompts = build_rollout_prompts(processor, conversations(demo, "video"), vision="embeddings",
                                    model=model)
    outputs = engine.generate(prompts, 4, MAX_TOKENS, top_p=0.9, seed=3, suppress_token_ids=banned)
    ours, filtered, unfiltered = [], [], []
    for prompt, out in zip(prompts, outputs, strict=True):
        ours += out.logprobs
        filtered += hf_completion_logprobs(model, prompt, out.completion_ids, top_p=0.9,
                                           suppress_token_ids=banned)
        unfiltered += hf_completion_logprobs(model, prompt, out.completion_ids,
                                             suppress_token_ids=banned)
    assert logprob_gap(ours, filtered).max_abs <= MAX_GAP
    assert logprob_gap(ours, unfiltered).max_abs > 1e-2


def test_video_timing_reaches_the_embedding_path(demo, hf, sample):
    # At 4 fps the M-RoPE time step is 1 (0.5 s per temporal patch * 2 tokens per second);
    # without second_per_grid_ts vLLM assumes 1 s per patch, a step of 2: other positions.
    model, processor = hf
    row = dict(next(r for r in demo.rows if r["data_type"] == "video"))
    row["timestamps"] = [0.25 * i for i in range(len(row["frames"]))]
    assert sampled_fps(row) == 4.0
    prompt = build_rollout_prompts(processor, [build_prompt(row, demo.recipe.rl.prompt)],
                                   vision="embeddings", model=model)[0]
    assert prompt.multi_modal_data["video"]["second_per_grid_ts"].tolist() == [0.5]
    untimed = RolloutPrompt(
        prompt.text,
        {"video": {k: v for k, v in prompt.multi_modal_data["video"].items()
                   if k != "second_per_grid_ts"}},
        prompt.hf_prompt_ids, prompt.visual,
    )
    timed_gap = hf_gap(model, [prompt], sample([prompt], 4, seed=2))
    untimed_gap = hf_gap(model, [prompt], sample([untimed], 4, seed=2))
    assert timed_gap.max_abs <= MAX_GAP, timed_gap
    assert untimed_gap.max_abs > 100 * MAX_GAP, untimed_gap


def test_tgrpo_ordered_and_shuffled_prompts_in_one_call(demo, hf, sample):
    model, processor = hf
    row = next(r for r in demo.rows if r["data_type"] == "video")
    order = non_identity_permutation(len(row["frames"]), torch.Generator().manual_seed(0))
    ordered = build_prompt(row, demo.recipe.rl.prompt)
    shuffled = build_prompt(row, demo.recipe.rl.prompt, frames=[row["frames"][i] for i in order])
    prompts = build_rollout_prompts(processor, [ordered, shuffled], vision="embeddings",
                                    model=model)
    a, b = (p.multi_modal_data["video"]["video_embeds"] for p in prompts)
    assert a.shape == b.shape and not torch.equal(a, b)  # the shuffled frames reached vLLM
    assert prompts[0].hf_prompt_ids == prompts[1].hf_prompt_ids  # same text, same grid
    outputs = sample(prompts, [8, 4], seed=3)
    assert [len(o.completion_ids) for o in outputs] == [8, 4]
    gap = hf_gap(model, prompts, outputs)
    assert gap.max_abs <= MAX_GAP, gap


def test_weight_sync_in_process(demo, hf, engine, sample):
    model, processor = hf
    prompts = build_rollout_prompts(
        processor, conversations(demo, "video")[:1] + conversations(demo, "image")[:1]
    )  # pixels: vLLM's own vision tower must survive a language-model-only update
    outputs = sample(prompts, 2, seed=4)
    updated = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in updated.named_parameters():
            if "visual" not in name:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
    try:
        stale = hf_gap(updated, prompts, outputs)
        assert stale.max_abs > 1e-2, stale  # the update is visible to the check
        engine.update_weights(language_model_weights(updated))
        fresh = sample(prompts, 2, seed=4)
        gap = hf_gap(updated, prompts, fresh)
        assert gap.max_abs <= MAX_GAP, gap
    finally:
        engine.update_weights(language_model_weights(model))
    restored = sample(prompts, 2, seed=4)
    assert hf_gap(model, prompts, restored).max_abs <= MAX_GAP

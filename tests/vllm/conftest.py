"""Shared by the vLLM tests: the tiny recipe's rollout inputs, the HF model beside them, and
the per-token gap between a rollout's log-probs and the HF model's recomputation."""

from __future__ import annotations

import pytest
import torch

from vlmrl.rollout import hf_completion_logprobs, logprob_gap, vision_token_ids
from vlmrl.train.prompts import build_prompt


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """4 RL rows (2 videos, 2 images) and the base checkpoint; a module may override it."""
    from vlmrl.stages.rollout_demo import build_rollout_demo

    return build_rollout_demo(tmp_path_factory.mktemp("vllm_demo"), num_rows=4, video_fraction=0.5)


@pytest.fixture(scope="module")
def hf(demo):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(demo.model_dir, dtype=torch.float32)
    return model.eval(), AutoProcessor.from_pretrained(demo.model_dir)


def conversations(demo, kind: str) -> list:
    """The trainer's prompts for the demo rows of one kind ("video" or "image")."""
    rows = [r for r in demo.rows if r["data_type"] == kind]
    assert rows, f"the demo set has no {kind} rows"
    return [build_prompt(r, demo.recipe.rl.prompt) for r in rows]


def hf_gap(model, prompts, outputs):
    """|rollout - HF| per sampled token over every completion of `outputs`."""
    banned = vision_token_ids(model.config)
    rollout, ours = [], []
    for prompt, out in zip(prompts, outputs, strict=True):
        rollout += out.logprobs
        ours += hf_completion_logprobs(model, prompt, out.completion_ids, suppress_token_ids=banned)
    return logprob_gap(rollout, ours)

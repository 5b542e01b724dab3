"""Shared by the vLLM tests: the tiny recipe's rollout inputs, the HF model beside them, and
the per-token gap between a rollout's log-probs and the HF model's recomputation."""

from __future__ import annotations

import pytest
import torch
from transformers import TrainerCallback

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


# ---------------------------------------------------------------- the trainer on vLLM rollouts


@pytest.fixture(scope="module")
def trainer_demo(tmp_path_factory):
    """8 RL rows (half videos) and the base checkpoint: two T-GRPO groups of 4 per step."""
    from vlmrl.stages.rollout_demo import build_rollout_demo

    return build_rollout_demo(tmp_path_factory.mktemp("vllm_trainer"), num_rows=8, video_fraction=0.5)


def t_grpo_settings(steps: int, top_p: float = 1.0, **rollout) -> dict:
    """Recipe overrides: `steps` T-GRPO steps on vLLM rollouts, the gate at every step."""
    return {"rl": {
        "algorithm": "t_grpo", "max_steps": steps, "top_p": top_p, "num_generations": 4, "per_device_train_batch_size": 8,
        "max_completion_length": 24, "learning_rate": 1e-2, "logging_steps": 1, "save_strategy": "no",
        "temporal": {"num_shuffled": 2}, "report_to": [],
        "rollout": {"engine": "vllm", "check_every": 1, **rollout}}}


def vllm_trainer(demo, tmp_path, steps: int, top_p: float = 1.0, **rollout):
    """A VideoGRPOTrainer on the demo's rows and checkpoint, vision tower frozen."""
    from vlmrl.data.extract import load_frame_dataset
    from vlmrl.models.loading import freeze_vision_tower, load_model
    from vlmrl.train.grpo import build_grpo_trainer

    rl = demo.recipe.override(t_grpo_settings(steps, top_p, **rollout)).rl
    loaded = load_model(demo.model_dir)
    freeze_vision_tower(loaded.model)
    dataset, _ = load_frame_dataset(demo.model_dir.parent / "frames_rl")
    return build_grpo_trainer(loaded.model, loaded.processor, dataset, tmp_path / "out", rl)


def logged(trainer, key: str) -> list[float]:
    return [e[key] for e in trainer.state.log_history if key in e]


class Perturb(TrainerCallback):
    """Move the language model's weights after every step: the tiny model's groups often
    carry no reward signal, so the optimizer alone may leave the weights where they were,
    and agreement after a step would then not show that the new weights reached vLLM."""

    def on_step_end(self, args, state, control, model=None, **kwargs):
        g = torch.Generator().manual_seed(state.global_step)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.05)

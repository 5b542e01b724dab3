"""VideoGRPOTrainer rolling out through vLLM (rl.rollout.engine = vllm), in .venv-vllm.

T-GRPO on the tiny recipe's videos and images: ordered and shuffled prompts in one vLLM call
on the embedding path (frozen tower), weights synced after every optimizer step, and the
agreement gate run at every step; a gate that cannot be met stops the run.
"""

import pytest

pytest.importorskip("vllm", reason="vLLM environment absent: build it with `make vllm`, then run "
                    "`.venv-vllm/bin/python -m pytest tests/vllm`")

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from vlmrl.data.extract import load_frame_dataset  # noqa: E402
from vlmrl.models.loading import freeze_vision_tower, load_model  # noqa: E402
from vlmrl.train.grpo import build_grpo_trainer  # noqa: E402
from vlmrl.train.vllm_generation import RolloutDisagreement  # noqa: E402

STEPS = 3


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from vlmrl.stages.rollout_demo import build_rollout_demo

    return build_rollout_demo(tmp_path_factory.mktemp("vllm_trainer"), num_rows=8, video_fraction=0.5)


def _trainer(demo, tmp_path, **rollout):
    rl = demo.recipe.override({"rl": {
        "algorithm": "t_grpo", "max_steps": STEPS, "num_generations": 4, "per_device_train_batch_size": 8,
        "max_completion_length": 24, "learning_rate": 1e-2, "logging_steps": 1, "save_strategy": "no",
        "temporal": {"num_shuffled": 2}, "report_to": [],
        "rollout": {"engine": "vllm", "check_every": 1, **rollout}}}).rl
    loaded = load_model(demo.model_dir)
    freeze_vision_tower(loaded.model)
    dataset, _ = load_frame_dataset(demo.model_dir.parent / "frames_rl")
    return build_grpo_trainer(loaded.model, loaded.processor, dataset, tmp_path / "out", rl)


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


def test_t_grpo_steps_roll_out_through_vllm(demo, tmp_path):
    trainer = _trainer(demo, tmp_path)
    trainer.add_callback(Perturb())
    assert trainer._vllm.vision == "embeddings"  # frozen tower: vLLM gets the trainer's embeddings
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    log = trainer.state.log_history
    gaps = [e["rollout/logprob_gap_max"] for e in log if "rollout/logprob_gap_max" in e]
    # the gate ran at every step, after every weight sync, and vLLM agreed with the policy
    assert len(gaps) == STEPS and max(gaps) < 1e-3, gaps
    assert trainer._vllm.synced_step == STEPS - 1
    changed = max((p.detach() - before[n]).abs().max().item()
                  for n, p in trainer.model.named_parameters() if n in before)
    assert changed > 1e-2  # the weights moved, so agreement after step 1 proves the sync
    groups = [e["temporal/video_groups"] for e in log if "temporal/video_groups" in e]
    assert groups and max(groups) >= 1  # shuffled-frame rollouts came back and were scored
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in log if "loss" in e)


def test_a_gate_that_cannot_be_met_stops_the_run(demo, tmp_path):
    trainer = _trainer(demo, tmp_path, max_logprob_gap=1e-12)
    with pytest.raises(RolloutDisagreement, match=r"step 0: vLLM's sampled log-probs differ .* "
                       r"vision inputs \(rl.rollout.vision = embeddings\), the positions \(transformers M-RoPE "
                       r"rule\), or the weights .* "
                       r"rl.rollout.importance_sampling"):
        trainer.train()

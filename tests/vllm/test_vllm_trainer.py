"""VideoGRPOTrainer rolling out through vLLM (rl.rollout.engine = vllm), in .venv-vllm.

T-GRPO on the tiny recipe's videos and images: ordered and shuffled prompts in one vLLM call
on the embedding path (frozen tower), weights synced after every optimizer step, and the
agreement gate run at every step; a gate that cannot be met stops the run.
"""

import pytest

pytest.importorskip("vllm", reason="vLLM environment absent: build it with `make vllm`, then run "
                    "`.venv-vllm/bin/python -m pytest tests/vllm`")

import torch  # noqa: E402

from tests.vllm.conftest import Perturb, vllm_trainer  # noqa: E402
from vlmrl.train.vllm_generation import RolloutDisagreement  # noqa: E402

STEPS = 3


def test_t_grpo_steps_roll_out_through_vllm(trainer_demo, tmp_path):
    # nucleus sampling as the 7B recipes have it: the gate filters the policy's
    # distribution as vLLM's sampler does (without, the gap would be -log 0.95 per token)
    trainer = vllm_trainer(trainer_demo, tmp_path, STEPS, top_p=0.95)
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


def test_a_gate_that_cannot_be_met_stops_the_run(trainer_demo, tmp_path):
    trainer = vllm_trainer(trainer_demo, tmp_path, STEPS, max_logprob_gap=1e-12)
    with pytest.raises(RolloutDisagreement, match=r"step 0: vLLM's sampled log-probs differ .* "
                       r"vision inputs \(rl.rollout.vision = embeddings\), the positions \(transformers M-RoPE "
                       r"rule\), or the weights .* "
                       r"rl.rollout.importance_sampling"):
        trainer.train()

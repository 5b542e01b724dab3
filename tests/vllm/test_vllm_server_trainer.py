"""The trainer against a `vlmrl rollout-serve` process (rl.rollout.mode = server).

- T-GRPO steps through a server: its weights follow the policy (gate gap < 1e-3 after
  every perturbed step, one weight update per step);
- importance-sampling acceptance: a server sampling under vLLM's own M-RoPE positions
  disagrees with the trainer on videos; without a stated correction the gate stops the
  run naming the positions, with one the run trains and TRL's truncated ratio stays in
  its bound;
- two DDP training processes share one server through `vlmrl train rl` (the main process
  sends the weights, both roll out).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("vllm", reason="vLLM environment absent: build it with `make vllm`, then run "
                    "`.venv-vllm/bin/python -m pytest tests/vllm`")

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from tests.train.test_distributed import free_port  # noqa: E402
from tests.vllm.conftest import Perturb, logged, t_grpo_settings, vllm_trainer  # noqa: E402
from vlmrl.lineage import read_manifest  # noqa: E402
from vlmrl.rollout import RolloutClient, start_rollout_server  # noqa: E402
from vlmrl.train.vllm_generation import RolloutDisagreement  # noqa: E402

STEPS = 2
CAP = 2.0


@pytest.fixture(scope="module")
def server(trainer_demo):
    with start_rollout_server(trainer_demo.model_dir, timeout=300) as handle:
        yield handle


@pytest.fixture(scope="module")
def vllm_positions_server(trainer_demo):
    """A server sampling under vLLM's own M-RoPE rule (after a video: off by up to ~1 per token)."""
    with start_rollout_server(trainer_demo.model_dir, engine_kwargs={"mrope": "vllm"},
                              timeout=300) as handle:
        yield handle


def _trainer(trainer_demo, tmp_path, url: str, **rollout):
    return vllm_trainer(trainer_demo, tmp_path, STEPS, mode="server", server_url=url, **rollout)


def test_t_grpo_steps_through_a_rollout_server(trainer_demo, server, tmp_path):
    client = server.client()
    version = client.health()["weights_version"]
    trainer = _trainer(trainer_demo, tmp_path, server.url)
    trainer.add_callback(Perturb())
    trainer.train()
    gaps = logged(trainer, "rollout/logprob_gap_max")
    assert len(gaps) == STEPS and max(gaps) < 1e-3, gaps  # the server holds the policy's weights
    assert client.health()["weights_version"] == version + STEPS  # one update per step
    assert max(logged(trainer, "temporal/video_groups")) >= 1


def test_a_disagreeing_server_stops_the_run_naming_the_positions(trainer_demo, vllm_positions_server, tmp_path):
    trainer = _trainer(trainer_demo, tmp_path, vllm_positions_server.url)
    with pytest.raises(RolloutDisagreement, match=r"the positions \(vllm M-RoPE rule\)"):
        trainer.train()


def test_importance_sampling_trains_through_a_bounded_gap(trainer_demo, vllm_positions_server, tmp_path):
    trainer = _trainer(trainer_demo, tmp_path, vllm_positions_server.url,
                       importance_sampling="token_truncate", importance_sampling_max=CAP,
                       check_samples=64)
    trainer.train()
    gaps = logged(trainer, "rollout/logprob_gap_max")
    # the gate saw the gap (on the steps with a video prompt) and let it pass
    assert len(gaps) == STEPS and max(gaps) > 1e-2, gaps
    # TRL's correction ran on every sample: vLLM's and the policy's log-probs differ, the
    # truncated ratio pi_policy / pi_vllm stays within its stated bound
    assert max(logged(trainer, "sampling/sampling_logp_difference/max")) > 1e-2
    ratios = logged(trainer, "sampling/importance_sampling_ratio/max")
    print(f"IS: gate gaps {gaps}, ratio min {logged(trainer, 'sampling/importance_sampling_ratio/min')}"
          f" max {ratios}, |logp diff| max {logged(trainer, 'sampling/sampling_logp_difference/max')}")
    assert len(ratios) == STEPS and max(ratios) <= CAP + 1e-6, ratios
    assert min(logged(trainer, "sampling/importance_sampling_ratio/min")) < 1.0
    assert all(torch.isfinite(torch.tensor(v)) for v in logged(trainer, "loss"))


class ForeignUpdate(TrainerCallback):
    """Another client moves the server's vision tower after step 0 (a second run on the
    same server, or a restart from another checkpoint)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == 1:
            g = torch.Generator().manual_seed(0)
            tower = [(n, t + 0.5 * torch.randn(t.shape, generator=g, dtype=t.dtype))
                     for n, t in model.state_dict().items() if ".visual." in f".{n}"]
            RolloutClient(self.url).update_weights(tower)


def test_a_server_changed_by_someone_else_gets_every_weight_again(trainer_demo, server, tmp_path):
    """Frozen tower, pixels to vLLM: after the first sync only the language model is sent,
    unless the server's weights version shows that someone else changed it."""
    version = server.client().health()["weights_version"]
    trainer = _trainer(trainer_demo, tmp_path, server.url, vision="pixels")
    trainer.add_callback(ForeignUpdate(server.url))
    trainer.train()
    gaps = logged(trainer, "rollout/logprob_gap_max")
    assert len(gaps) == STEPS and max(gaps) < 1e-3, gaps  # vLLM's tower is the policy's again
    assert server.client().health()["weights_version"] == version + STEPS + 1


def test_two_training_processes_share_one_server(trainer_demo, server, tmp_path):
    version = server.client().health()["weights_version"]
    out = tmp_path / "rl"
    settings = t_grpo_settings(STEPS, mode="server", server_url=server.url)
    settings["rl"]["per_device_train_batch_size"] = 4  # one group of G = 4 per process and step
    command = [sys.executable, "-m", "vlmrl.cli", "train", "rl", "--recipe", "tiny-cpu",
               "--sft", str(trainer_demo.model_dir),
               "--frames", str(trainer_demo.model_dir.parent / "frames_rl"),
               "--out", str(out), "--set", "launch.accelerate_config=ddp",
               "--set", "launch.num_processes=2"]
    for path, value in _flatten(settings):
        command += ["--set", f"{'.'.join(path)}={json.dumps(value)}"]  # JSON is YAML
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                               "OMP_NUM_THREADS": "1", "VLMRL_ACCELERATE_ARGS":
                               f"--main_process_ip 127.0.0.1 --main_process_port {free_port()}"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "vlmrl: 2 processes" in proc.stdout
    replicas = read_manifest(out)["metrics"]["replicas"]
    assert [r["rank"] for r in replicas] == [0, 1]
    assert replicas[0]["ids_sha256"] != replicas[1]["ids_sha256"]  # each rolled out its own rows
    assert replicas[0]["weights_sha256"] == replicas[1]["weights_sha256"]
    assert server.client().health()["weights_version"] == version + STEPS  # the main process sent them
    log = json.loads((out / "train_log.json").read_text())
    gaps = [e["rollout/logprob_gap_max"] for e in log if "rollout/logprob_gap_max" in e]
    assert len(gaps) == STEPS and max(gaps) < 1e-3, gaps


def _flatten(tree: dict, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], object]]:
    out = []
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out += _flatten(value, (*prefix, key))
        else:
            out.append(((*prefix, key), value))
    return out

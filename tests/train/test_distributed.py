"""Two training processes through the CLI, as a step pod runs them: `vlmrl train rl` with a
recipe whose launch section asks for 2 processes re-runs itself under `accelerate launch`.

DDP over gloo on CPU: the shipped ddp config starts torch's elastic launcher, and without
CUDA each process trains on the CPU (accelerate's `--cpu` would start a single process).
"""

import json
import socket
import subprocess
import sys

import pytest
import yaml

from vlmrl.lineage import read_manifest
from vlmrl.models import load_model

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], tmp_path, config: str = "ddp", ok: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "vlmrl.cli", *args,
               "--set", f"launch.accelerate_config={config}", "--set", "launch.num_processes=2"]
    extra = f"--main_process_ip 127.0.0.1 --main_process_port {free_port()}"
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
                               "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                               "VLMRL_ACCELERATE_ARGS": extra})
    assert (proc.returncode == 0) == ok, proc.stderr[-3000:]
    assert "vlmrl: 2 processes: -m accelerate.commands.launch" in proc.stdout
    return proc


@pytest.fixture(scope="module")
def recipe_file(short_recipe, tmp_path_factory):
    path = tmp_path_factory.mktemp("recipe") / "short.yaml"
    path.write_text(yaml.safe_dump(short_recipe.to_dict()))
    return path


def test_two_process_rl_and_sft(recipe_file, stage_base, stage_sft, stage_frames, tmp_path):
    # T-GRPO, G = 4, two groups per process and step: every statistic over groups must
    # cover both processes' groups
    rl_out = tmp_path / "rl"
    launch(["train", "rl", "--recipe", str(recipe_file), "--sft", str(stage_sft),
            "--frames", str(stage_frames["rl"]), "--out", str(rl_out),
            "--set", "rl.max_steps=2", "--set", "rl.num_generations=4",
            "--set", "rl.temporal.num_shuffled=2", "--set", "rl.per_device_train_batch_size=8",
            "--set", "rl.dynamic_sampling=true", "--set", "rl.save_strategy='no'"], tmp_path)
    manifest = read_manifest(rl_out)
    replicas = manifest["metrics"]["replicas"]
    assert [r["rank"] for r in replicas] == [0, 1]
    assert all(r["rows"] == 2 * 2 for r in replicas)  # 2 steps x 2 groups per process
    assert replicas[0]["ids_sha256"] != replicas[1]["ids_sha256"]  # different data
    assert replicas[0]["weights_sha256"] == replicas[1]["weights_sha256"]  # averaged gradients
    assert manifest["metrics"]["global_step"] == 2
    log = json.loads((rl_out / "train_log.json").read_text())
    video_groups = [e["temporal/video_groups"] for e in log if "temporal/video_groups" in e]
    assert video_groups and max(video_groups) > 2  # more groups than one process holds
    # dynamic sampling on: each process may keep a different number of groups, so the kept
    # count is equalized across processes (else DDP's collectives would hang and the replicas
    # above would differ); the logged fraction is the mean over both processes' 4 groups
    kept = [e["dynamic_sampling/kept_group_fraction"] for e in log if "dynamic_sampling/kept_group_fraction" in e]
    assert len(kept) == 2 and all(0.0 <= k <= 1.0 and (4 * k).is_integer() for k in kept)  # 4 groups in all
    load_model(rl_out)  # the saved checkpoint loads

    sft_out = tmp_path / "sft"
    launch(["train", "sft", "--recipe", str(recipe_file), "--base", str(stage_base),
            "--frames", str(stage_frames["sft"]), "--out", str(sft_out),
            "--set", "sft.max_steps=2", "--set", "sft.curriculum=[]",
            "--set", "sft.save_strategy='no'"], tmp_path)
    manifest = read_manifest(sft_out)
    replicas = manifest["metrics"]["replicas"]
    assert [r["rank"] for r in replicas] == [0, 1]
    assert replicas[0]["weights_sha256"] == replicas[1]["weights_sha256"]
    assert manifest["metrics"]["global_step"] == 2
    load_model(sft_out)


def test_fsdp_on_cpu_is_refused_not_run_as_ddp(recipe_file, stage_sft, stage_frames, tmp_path):
    """accelerate applies FSDP on GPUs only: on CPU the Trainer would silently wrap the model in
    DDP. The stage refuses before training, and no checkpoint appears. (The shipped fsdp.yaml
    stops even earlier on CPU: torch refuses its sync_module_states there; this copy turns that
    off so that the run reaches the trainer.)"""
    from vlmrl.recipes import ACCELERATE_DIR

    config = yaml.safe_load((ACCELERATE_DIR / "fsdp.yaml").read_text())
    config["fsdp_config"].update(fsdp_sync_module_states=False, fsdp_cpu_ram_efficient_loading=False)
    path = tmp_path / "fsdp-cpu.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "rl"
    proc = launch(["train", "rl", "--recipe", str(recipe_file), "--sft", str(stage_sft),
                   "--frames", str(stage_frames["rl"]), "--out", str(out),
                   "--set", "rl.max_steps=1"], tmp_path, config=str(path), ok=False)
    assert "asks for FSDP but the trainer runs MULTI_CPU" in proc.stderr, proc.stderr[-4000:]
    assert not (out / "lineage.json").exists()

"""`vlmrl train base|sft|rl`: the stages from the command line, including a killed run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from vlmrl.cli import main
from vlmrl.lineage import audit, read_manifest
from vlmrl.stages.training import work_dir_for

REPO = Path(__file__).resolve().parents[2]
SHORT = ["--set", "frames.train.max_frames=4", "--set", "sft.per_device_train_batch_size=4",
         "--set", "rl.max_completion_length=8", "--set", "rl.logging_steps=1",
         "--set", "sft.logging_steps=1",
         "--set", "sft.curriculum=[]"]  # tiny-cpu's 1,000-step phase (test_pipeline covers phases)


def test_train_commands_run_every_stage(stage_frames, tmp_path, capsys):
    base, sft, rl = tmp_path / "base", tmp_path / "sft", tmp_path / "rl"
    frames = [str(stage_frames["sft"]), str(stage_frames["rl"])]
    assert main(["train", "base", "--recipe", "tiny-cpu", *SHORT, "--frames", *frames,
                 "--out", str(base)]) == 0
    assert main(["train", "sft", "--recipe", "tiny-cpu", *SHORT, "--set", "sft.max_steps=1",
                 "--base", str(base), "--frames", frames[0], "--out", str(sft),
                 "--tracking", "mlflow_run_id=r1", "--tracking", "dagster_run_id=d1"]) == 0
    assert main(["train", "rl", "--recipe", "tiny-cpu", *SHORT, "--set", "rl.max_steps=1",
                 "--sft", str(sft), "--frames", frames[1], "--out", str(rl), "--no-resume"]) == 0
    out = capsys.readouterr().out
    assert f"base checkpoint: {base}" in out and f"rl checkpoint: {rl}" in out
    assert '"global_step": 1' in out
    assert read_manifest(sft)["tracking"] == {"mlflow_run_id": "r1", "dagster_run_id": "d1"}
    assert read_manifest(rl)["recipe"]["rl"]["max_completion_length"] == 8
    assert audit(rl).ok


def test_train_command_errors(stage_base, stage_frames, tmp_path, capsys):
    args = ["train", "sft", "--base", str(stage_base), "--frames", str(stage_frames["sft"]),
            "--out", str(tmp_path / "sft")]
    assert main([*args, "--recipe", "tiny-cpu", "--set", "sft.max_step=1"]) == 2
    assert "sft.max_step: unknown key (did you mean 'max_steps'?)" in capsys.readouterr().err
    assert main([*args, "--recipe", "tiny-cpu", "--set", "sft"]) == 2
    assert "--set 'sft': expected KEY=VALUE" in capsys.readouterr().err
    assert main([*args, "--recipe", "nope"]) == 2
    assert "no shipped recipe named 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "sft").exists()


def test_killed_run_resumes_from_the_command_line(stage_base, stage_frames, tmp_path, capsys):
    out = tmp_path / "sft"
    args = ["train", "sft", "--recipe", "tiny-cpu", *SHORT, "--set", "sft.max_steps=6",
            "--set", "sft.save_steps=2", "--base", str(stage_base),
            "--frames", str(stage_frames["sft"]), "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "vlmrl.cli", *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ)
    marker = work_dir_for(out) / "checkpoint-2" / "trainer_state.json"
    deadline = time.monotonic() + 300
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # no clean-up handlers run
    proc.wait()
    assert marker.exists() and proc.returncode == -signal.SIGKILL
    assert not out.exists()

    assert main(args) == 0
    metrics = read_manifest(out)["metrics"]
    assert metrics["global_step"] == 6 and metrics["resumed_from_step"] in (2, 4)
    steps = [e["step"] for e in json.loads((out / "train_log.json").read_text()) if "loss" in e]
    assert steps == list(range(1, 7))  # logged before the kill, or after the resume
    assert audit(out).ok

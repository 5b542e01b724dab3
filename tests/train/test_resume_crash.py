"""A run killed after a trainer checkpoint, rerun: it ends exactly at max_steps and records
the whole run's metrics; training outputs never replace anything but their own kind."""

import json

import pytest
import torch
from transformers import TrainerCallback

from vlmrl.lineage import read_manifest
from vlmrl.models import load_model
from vlmrl.stages.training import train_rl, train_sft, work_dir_for
from vlmrl.train.diagnostics import TRAIN_LOG
from vlmrl.train.resume import checkpoint_state, run_loss


class Killed(RuntimeError):
    pass


class KillAfterSave(TrainerCallback):
    """Dies right after the trainer checkpoint of step `at` is on disk; records steps taken."""

    def __init__(self, at=None):
        self.at, self.steps = at, []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            raise Killed(f"killed after saving step {self.at}")


def stage_args(stage, short_recipe, stage_base, stage_sft):
    if stage == "sft":  # no curriculum: one trainer, so the kill point is the run's
        return train_sft, short_recipe.override({"sft": {"curriculum": []}}), stage_base
    return train_rl, short_recipe, stage_sft


@pytest.mark.parametrize("stage, kill_at", [("sft", 4), ("rl", 3), ("sft", 2)])
def test_killed_run_resumes_to_exactly_max_steps_with_whole_run_metrics(
    stage, kill_at, short_recipe, stage_base, stage_sft, stage_frames, tmp_path
):
    train, recipe, parent = stage_args(stage, short_recipe, stage_base, stage_sft)
    max_steps = getattr(recipe, stage).max_steps
    out = tmp_path / stage
    with pytest.raises(Killed):
        train(recipe, parent, stage_frames[stage], out, callbacks=[KillAfterSave(kill_at)])
    checkpoint = work_dir_for(out) / f"checkpoint-{kill_at}"
    saved = checkpoint_state(checkpoint)
    first_session = saved["stateful_callbacks"]["RunClock"]["attributes"]["seconds"]
    assert saved["global_step"] == kill_at and first_session > 0
    weights = load_model(checkpoint).model.state_dict() if kill_at == max_steps else None

    probe = KillAfterSave()
    train(recipe, parent, stage_frames[stage], out, callbacks=[probe])
    assert probe.steps == list(range(kill_at + 1, max_steps + 1))  # never past max_steps
    metrics = read_manifest(out)["metrics"]
    log = json.loads((out / TRAIN_LOG).read_text())
    logged = [e for e in log if "loss" in e]
    assert [e["step"] for e in logged] == list(range(1, max_steps + 1))
    assert metrics["global_step"] == max_steps and metrics["resumed_from_step"] == kill_at
    # every step is logged (logging_steps=1): the run's loss is the mean over all of them
    assert metrics["train_loss"] == pytest.approx(sum(e["loss"] for e in logged) / max_steps)
    assert metrics["train_loss"] == pytest.approx(run_loss(log))
    assert metrics["train_runtime"] >= first_session  # both sessions, not the last one only
    assert metrics["last_loss"] == logged[-1]["loss"]
    if stage == "rl":
        assert metrics["last_reward"] == logged[-1]["reward"]
    if weights is not None:  # finished without training: the final weights are the checkpoint's
        final = load_model(out).model.state_dict()
        assert all(torch.equal(final[k], v) for k, v in weights.items())
    assert not work_dir_for(out).exists()


def test_run_loss_weights_entries_by_the_steps_they_cover():
    log = [{"loss": 4.0, "step": 3}, {"eval": 1, "step": 3}, {"loss": 1.0, "step": 4}]
    assert run_loss(log) == pytest.approx((4.0 * 3 + 1.0) / 4)
    assert run_loss([{"train_runtime": 1.0}]) is None


def test_training_outputs_never_replace_what_they_did_not_write(
    short_recipe, stage_base, stage_sft, stage_frames, tmp_path
):
    frames = stage_frames["sft"]
    cases = {  # all refused before any training
        stage_base: "is the parent checkpoint",
        stage_base / "sub": "lies inside the parent checkpoint",
        frames: "is the training dataset",
        frames.parent: "contains the training dataset",
    }
    for out, says in cases.items():
        with pytest.raises(ValueError, match=says):
            train_sft(short_recipe, stage_base, frames, out, overwrite=True)
    user = tmp_path / "mine"
    user.mkdir()
    (user / "results.csv").write_text("keep")
    with pytest.raises(FileExistsError, match="not a sft checkpoint written by vlmrl"):
        train_sft(short_recipe, stage_base, frames, user, overwrite=True)
    # an rl checkpoint is not an sft one; an sft one is replaced only when asked
    with pytest.raises(FileExistsError, match="not a rl checkpoint"):
        train_rl(short_recipe, stage_base, stage_frames["rl"], stage_sft, overwrite=True)
    with pytest.raises(FileExistsError, match="already holds a sft checkpoint; pass overwrite"):
        train_sft(short_recipe, stage_base, frames, stage_sft)
    # a user directory where the work directory would go is not emptied either
    work = work_dir_for(tmp_path / "new")
    work.mkdir()
    (work / "data.bin").write_text("keep")
    with pytest.raises(FileExistsError, match="not a trainer work directory"):
        train_sft(short_recipe, stage_base, frames, tmp_path / "new")
    assert (user / "results.csv").read_text() == "keep" and (work / "data.bin").is_file()
    assert read_manifest(stage_sft)["kind"] == "sft" and (frames / "manifest.json").is_file()


def test_a_rerun_with_overwrite_replaces_its_own_checkpoint(
    short_recipe, stage_base, stage_frames, tmp_path
):
    # what a Dagster rematerialization does (the assets pass overwrite=True)
    recipe = short_recipe.override({"sft": {"max_steps": 1, "curriculum": []}})
    out = train_sft(recipe, stage_base, stage_frames["sft"], tmp_path / "sft")
    first = read_manifest(out)
    rerun = recipe.override({"sft": {"seed": first["seed"] + 1}})
    train_sft(rerun, stage_base, stage_frames["sft"], out, overwrite=True)
    assert read_manifest(out)["seed"] == first["seed"] + 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sft"]  # no staging, trash or work

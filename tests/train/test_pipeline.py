"""The stage functions: base -> SFT -> RL checkpoints with lineage, atomic writes, resume."""

import copy
import json

import pytest
import torch
from transformers import TrainerCallback
from transformers.trainer_pt_utils import safe_globals

from vlmrl.lineage import audit, read_manifest
from vlmrl.models import load_model
from vlmrl.rewards import REWARDS
from vlmrl.rewards.answers import completion_text
from vlmrl.stages.training import (
    RUN_FILE,
    build_base_model,
    last_checkpoint,
    train_rl,
    train_sft,
    work_dir_for,
)
from vlmrl.train.diagnostics import TRAIN_LOG


class Interrupted(RuntimeError):
    pass


class Probe(TrainerCallback):
    """Records what a run sees; raises after step `stop_after` (a crash mid-training)."""

    def __init__(self, stop_after=None):
        self.stop_after = stop_after
        self.start_step = None
        self.start_optimizer = None
        self.start_weights = None
        self.steps = []

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        # called after a resume has loaded the checkpoint's weights, trainer and optimizer
        # state; copies, because training updates these tensors in place
        self.start_step = state.global_step
        self.start_optimizer = copy.deepcopy(optimizer.state_dict())
        self.start_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)
        if state.global_step == self.stop_after:
            raise Interrupted(f"killed after step {state.global_step}")


def text_length_reward(completions, **kwargs):
    """Varies with the sampled text, so that an untrained policy still gets a gradient."""
    return [len(completion_text(c)) % 5 / 4 for c in completions]


def test_base_model_is_built_with_its_lineage(short_recipe, stage_base, stage_frames):
    manifest = read_manifest(stage_base)
    assert manifest["kind"] == "base" and manifest["parent"] is None
    assert manifest["recipe_sha256"] == short_recipe.sha256
    assert [d["role"] for d in manifest["datasets"]] == ["tokenizer_corpus"] * 2
    assert manifest["tiny_spec"]["hidden_size"] == short_recipe.model.tiny.hidden_size
    loaded = load_model(stage_base)
    assert "<answer>" in loaded.tokenizer.get_vocab()
    assert audit(stage_base).ok


def test_local_model_is_linked_not_copied(short_recipe, stage_base, tmp_path):
    recipe = short_recipe.override({"model": {"tiny": None, "path": str(stage_base)}})
    out = build_base_model(recipe, tmp_path / "base")
    weights = out / "model.safetensors"
    assert weights.is_symlink() and weights.resolve() == (stage_base / "model.safetensors")
    manifest = read_manifest(out)
    assert manifest["kind"] == "base" and manifest["linked_from"] == str(stage_base)
    assert load_model(out).model.config.model_type == "qwen2_5_vl"
    assert audit(out).ok


@pytest.mark.parametrize("stage", ["sft", "rl"])
def test_interrupted_training_resumes_from_its_last_checkpoint(
    stage, short_recipe, stage_base, stage_sft, stage_frames, tmp_path, monkeypatch
):
    # sft: 4 steps, a checkpoint every 2, killed after step 3 -> resumes from checkpoint-2.
    # rl: 3 steps, a checkpoint every step, killed after step 2 (before its save) ->
    # resumes from checkpoint-1.
    train, parent = (train_sft, stage_base) if stage == "sft" else (train_rl, stage_sft)
    recipe = short_recipe
    if stage == "rl":  # the registry is how a recipe names rewards
        monkeypatch.setitem(REWARDS, "text_length", text_length_reward)
        recipe = recipe.override(
            {"rl": {"reward_funcs": ["text_length", "format"], "accuracy_reward": "text_length"}}
        )
    config = getattr(recipe, stage)
    stop, resume_at = (3, 2) if stage == "sft" else (2, 1)
    out = tmp_path / stage
    work = work_dir_for(out)

    with pytest.raises(Interrupted):
        train(recipe, parent, stage_frames[stage], out, callbacks=[Probe(stop)])
    assert not out.exists()  # no final checkpoint, and no staging directory left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == [work.name]
    checkpoint = last_checkpoint(work)
    assert checkpoint.name == f"checkpoint-{resume_at}"
    # optimizer and RNG states load with weights_only=True (no unpickling of arbitrary
    # objects), as transformers' resume does it
    saved = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    with safe_globals():
        assert torch.load(checkpoint / "rng_state.pth", weights_only=True)["python"]
    expected = load_model(checkpoint).model.state_dict()
    if stage == "rl":
        assert (checkpoint / "vlmrl_rl_state_0.json").is_file()

    probe = Probe()
    result = train(recipe, parent, stage_frames[stage], out, {"mlflow_run_id": "abc"},
                   callbacks=[probe])
    assert probe.start_step == resume_at
    assert probe.steps == list(range(resume_at + 1, config.max_steps + 1))
    resumed = probe.start_optimizer
    assert resumed["state"].keys() == saved["state"].keys() and saved["state"]
    assert any(state["exp_avg"].abs().sum() > 0 for state in saved["state"].values())
    for key, state in saved["state"].items():
        assert int(resumed["state"][key]["step"]) == resume_at
        assert torch.equal(resumed["state"][key]["exp_avg"], state["exp_avg"])
        assert torch.equal(resumed["state"][key]["exp_avg_sq"], state["exp_avg_sq"])

    # the resumed weights are the checkpoint's, not the parent's (transformers#43701)
    assert probe.start_weights.keys() == expected.keys()
    assert all(torch.equal(probe.start_weights[k], v) for k, v in expected.items())
    initial = load_model(parent).model.state_dict()
    assert not all(torch.equal(initial[k], v) for k, v in expected.items())

    assert result == out.resolve() and not work.exists()
    manifest = read_manifest(out)
    assert manifest["kind"] == stage and manifest["parent"]["path"] == str(parent)
    assert manifest["metrics"]["global_step"] == config.max_steps
    assert manifest["metrics"]["resumed_from_step"] == resume_at
    assert manifest["tracking"] == {"mlflow_run_id": "abc"}
    assert manifest["seed"] == config.seed
    assert [d["role"] for d in manifest["datasets"]] == [stage]
    logged = [e["step"] for e in json.loads((out / TRAIN_LOG).read_text()) if "loss" in e]
    assert logged == list(range(1, config.max_steps + 1))
    report = audit(out)
    assert report.ok, report.problems
    assert [n.manifest["kind"] for n in report.chain] == (
        ["sft", "base"] if stage == "sft" else ["rl", "sft", "base"]
    )


def test_work_dir_of_another_run_is_not_resumed(short_recipe, stage_base, stage_frames, tmp_path):
    out = tmp_path / "sft"
    work = work_dir_for(out)
    (work / "checkpoint-3").mkdir(parents=True)
    (work / "checkpoint-3" / "trainer_state.json").write_text("{}")
    (work / RUN_FILE).write_text(json.dumps({"recipe_sha256": "another recipe"}))
    recipe = short_recipe.override({"sft": {"max_steps": 1}})
    train_sft(recipe, stage_base, stage_frames["sft"], out)
    metrics = read_manifest(out)["metrics"]
    assert metrics["global_step"] == 1 and "resumed_from_step" not in metrics


def test_last_checkpoint_skips_and_removes_incomplete_ones(tmp_path):
    for step, state in ((2, "{}"), (4, None), (6, '{"trunc')):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if state is not None:  # a crash mid-save: trainer_state.json missing or cut short
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]
    assert last_checkpoint(tmp_path / "checkpoint-2") is None


def test_recipe_without_sft_links_the_base_model(short_recipe, stage_base, stage_frames, tmp_path):
    recipe = short_recipe.override({"sft": None})
    out = train_sft(recipe, stage_base, stage_frames["sft"], tmp_path / "sft")
    manifest = read_manifest(out)
    assert manifest["kind"] == "sft" and manifest["metrics"] == {"skipped": True}
    assert (out / "model.safetensors").resolve() == (stage_base / "model.safetensors").resolve()
    assert audit(out).ok


class PhaseProbe(TrainerCallback):
    """Per trainer started: its first weights and how many steps it ran; optionally crashes
    at step `crash_at` of trainer number `crash_in` (1-based)."""

    def __init__(self, crash_in=None, crash_at=None):
        self.starts, self.steps = [], []
        self.crash_in, self.crash_at = crash_in, crash_at

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.starts.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        self.steps.append(0)

    def on_step_end(self, args, state, control, **kwargs):
        self.steps[-1] += 1
        if len(self.steps) == self.crash_in and state.global_step == self.crash_at:
            raise Interrupted("killed in the main phase")


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_sft_curriculum_phases_chain_and_resume(short_recipe, stage_base, stage_frames, tmp_path):
    from datasets import load_from_disk

    phases = [{"families": ["motion"], "max_steps": 2, "learning_rate": 1e-3},
              {"families": ["synthetic/count"], "max_steps": 1}]
    recipe = short_recipe.override({"sft": {"curriculum": phases}})
    out = tmp_path / "sft"
    rows = load_from_disk(str(stage_frames["sft"])).select_columns(["data_source"])
    n_motion = sum(s.endswith("/motion") for s in rows["data_source"])
    n_count = sum(s.endswith("/count") for s in rows["data_source"])

    # crash in the main phase (third trainer) after both phases finished
    first = PhaseProbe(crash_in=3, crash_at=3)
    with pytest.raises(Interrupted):
        train_sft(recipe, stage_base, stage_frames["sft"], out, callbacks=[first])
    assert first.steps == [2, 1, 3]
    base = load_model(stage_base).model.state_dict()
    assert _same(first.starts[0], base)  # phase 1 starts from the base
    assert not _same(first.starts[1], base)  # phase 2 from phase 1's weights
    phase2 = load_model(work_dir_for(out) / "phase-2" / "final").model.state_dict()
    assert _same(first.starts[2], phase2)  # the main phase from phase 2's
    assert not out.exists()

    # the rerun skips the finished phases and resumes the main phase
    second = PhaseProbe()
    train_sft(recipe, stage_base, stage_frames["sft"], out, callbacks=[second])
    assert second.steps == [2]  # main phase resumed at its checkpoint-2: steps 3 and 4
    metrics = read_manifest(out)["metrics"]
    assert metrics["global_step"] == recipe.sft.max_steps
    assert [{k: p[k] for k in ("phase", "families", "rows", "global_step")}
            for p in metrics["curriculum"]] == [
        {"phase": 1, "families": ["motion"], "rows": n_motion, "global_step": 2},
        {"phase": 2, "families": ["synthetic/count"], "rows": n_count, "global_step": 1},
    ]
    assert all(p["train_loss"] > 0 for p in metrics["curriculum"])  # read back, not retrained
    assert metrics["curriculum_steps"] == 3
    assert not work_dir_for(out).exists()


def test_curriculum_family_that_matches_no_row_is_named(short_recipe, stage_base, stage_frames,
                                                        tmp_path):
    recipe = short_recipe.override({"sft": {"curriculum": [{"families": ["juggling"],
                                                            "max_steps": 1}]}})
    with pytest.raises(ValueError, match=r"\['juggling'\] match no row.*synthetic/motion"):
        train_sft(recipe, stage_base, stage_frames["sft"], tmp_path / "sft")
    assert not (tmp_path / "sft").exists()


def test_freeze_vision_trains_the_language_model_only(short_recipe, stage_base, stage_frames, tmp_path):
    recipe = short_recipe.override({"sft": {"freeze_vision": True, "curriculum": [],
                                            "save_strategy": "no"}})
    out = train_sft(recipe, stage_base, stage_frames["sft"], tmp_path / "sft")
    before = load_model(stage_base).model.state_dict()
    after = load_model(out).model.state_dict()
    vision = [k for k in before if ".visual." in f".{k}"]
    assert vision and all(torch.equal(before[k], after[k]) for k in vision)
    language = [k for k in before if k not in vision]
    assert sum(not torch.equal(before[k], after[k]) for k in language) > len(language) // 2


def test_freeze_vision_needs_a_vision_tower():
    from vlmrl.models.loading import freeze_vision_tower

    with pytest.raises(ValueError, match="Linear has no vision tower"):
        freeze_vision_tower(torch.nn.Linear(2, 2))


def _weights(checkpoint):
    from safetensors.torch import load_file

    return {k: v for f in sorted(checkpoint.glob("*.safetensors")) for k, v in load_file(f).items()}


def test_same_seed_same_weights_other_seed_other_weights(short_recipe, stage_base, stage_frames,
                                                        tmp_path, monkeypatch):
    """Issue 12: on one machine a stage rerun with the same seed gives bit-identical weights
    (the demo's seed spread is then a property of the recipe, not of the run)."""
    monkeypatch.setitem(REWARDS, "text_length", text_length_reward)  # a gradient from step 1
    recipe = short_recipe.override({
        "sft": {"curriculum": []},
        "rl": {"reward_funcs": ["text_length", "format"], "accuracy_reward": "text_length"},
    })
    sft = [train_sft(recipe, stage_base, stage_frames["sft"], tmp_path / f"sft-{i}") for i in (0, 1)]
    assert _same(_weights(sft[0]), _weights(sft[1]))
    other = train_sft(recipe.override({"seed": 1}), stage_base, stage_frames["sft"],
                      tmp_path / "sft-seed1")
    assert not _same(_weights(sft[0]), _weights(other))  # the seed reaches the data order
    rl = [train_rl(recipe, sft[0], stage_frames["rl"], tmp_path / f"rl-{i}") for i in (0, 1)]
    a, b = _weights(rl[0]), _weights(rl[1])
    assert not _same(a, _weights(sft[0]))  # RL changed the weights (the test is not vacuous)
    assert _same(a, b)

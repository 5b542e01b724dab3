"""Outputs that would replace what they should not, stale staging directories, resumes.

Finding 1 (data loss by outputs): every writer may only replace a previous output of its
own kind, only when asked, and never an input (media root, annotations, parent
checkpoint, training datasets). A case points an output at something a user cares about
and checks both the refusal and that every byte of it is still there (a refusal that
still lost data is ``SILENT``).

Finding 5 (resume after a crash): a run killed right after a trainer checkpoint is rerun
and must end exactly at max_steps with the whole run's metrics; stale staging / trash
directories of killed writers are cleaned up (or restored) or reported.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlmrl.doctor.campaign import Case, Result, expect_rejection

AREA = "outputs"


# --- helpers ----------------------------------------------------------------------------

def _snapshot(*paths: Path) -> dict[str, str]:
    """Every file under `paths` with its content hash: what a refusal must leave as it was."""
    out = {}
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def _refused(action: Callable[[], Any], must_name: tuple[str, ...], *keep: Path) -> Result:
    """REJECTED when `action` fails naming `must_name` and every file under `keep` survives."""
    before = _snapshot(*keep)
    result = expect_rejection(action, *must_name)
    after = _snapshot(*keep)
    if after != before:
        lost = sorted(set(before) - set(after)) or ["(changed content)"]
        return Result.silent(f"files lost or changed: {lost[:5]}; outcome was {result.detail}")
    return result


def _cli(*argv: str) -> Callable[[], int]:
    """The `vlmrl` command as an action: a non-zero exit is raised as its stderr message."""
    def action() -> int:
        from vlmrl.cli import main

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(list(argv))
        if code != 0:
            raise ValueError(f"exit {code}: {err.getvalue().strip()}")
        return code
    return action


@functools.lru_cache(maxsize=2)
def _raw(root: Path) -> Path:
    """A tiny synthetic set (annotations + media), shared read-only by the extract cases."""
    from vlmrl.data.synth import SynthSizes, generate

    raw = root / "outputs-shared" / "raw"
    if not (raw / "bench.json").is_file():
        generate(raw, seed=0, sizes=SynthSizes(sft=4, rl=4, bench=4), progress=False)
    return raw


def _extract_args(raw: Path, out: Path, *extra: str) -> list[str]:
    return ["data", "extract", "--annotations", str(raw / "bench.json"), "--media-root",
            str(raw), "--out", str(out), "--workers", "1", "--max-frames", "4", *extra]


def _user_dir(path: Path) -> Path:
    (path / "notes").mkdir(parents=True)
    (path / "notes" / "thesis.tex").write_text("months of work\n")
    (path / "results.csv").write_text("a,b\n1,2\n")
    return path


# --- extract: outputs onto inputs and user data -----------------------------------------

def _extract_onto(target: Callable[[Path, Path], Path], *extra: str,
                  names: tuple[str, ...] = ()) -> Callable[[Path], Result]:
    def case(work: Path) -> Result:
        raw = _raw(work.parent)
        out = target(raw, work)
        return _refused(_cli(*_extract_args(raw, out, *extra)), (str(out.resolve()), *names),
                        raw, work)
    return case


def _extract_user_dir(overwrite: bool) -> Callable[[Path], Result]:
    def case(work: Path) -> Result:
        raw = _raw(work.parent)
        user = _user_dir(work / "my-project")
        extra = ("--overwrite",) if overwrite else ()
        return _refused(_cli(*_extract_args(raw, user, *extra)),
                        (str(user), "not a frame dataset"), user, raw)
    return case


def _extract_previous(work: Path) -> Result:
    """A rerun onto the previous dataset: refused without --overwrite, replaced with it."""
    from vlmrl.data.extract import load_frame_dataset

    raw = _raw(work.parent)
    out = work / "frames"
    _cli(*_extract_args(raw, out))()
    first = _refused(_cli(*_extract_args(raw, out)), (str(out.resolve()), "--overwrite"), out)
    if first.outcome.value != "rejected":
        return first
    _cli(*_extract_args(raw, out, "--max-pixels", "50176", "--overwrite"))()
    ds, manifest = load_frame_dataset(out)
    siblings = sorted(p.name for p in work.iterdir())
    if manifest["options"]["max_pixels"] != 50176 or siblings != ["frames"]:
        return Result.silent(f"not replaced cleanly: {manifest['options']}, {siblings}")
    return Result.handled(f"refused without --overwrite ({first.detail[:120]}); replaced with "
                          f"it ({len(ds)} rows, no staging left)")


def _extract_empty_dir(work: Path) -> Result:
    from vlmrl.data.extract import load_frame_dataset

    out = work / "empty"
    out.mkdir()
    _cli(*_extract_args(_raw(work.parent), out))()
    ds, _ = load_frame_dataset(out)
    return Result.handled(f"an empty directory is used as the output ({len(ds)} rows)")


def _symlink_to_media(raw: Path, work: Path) -> Path:
    link = work / "link"
    link.symlink_to(raw, target_is_directory=True)
    return link


# --- models and checkpoints -------------------------------------------------------------

def _tiny_onto_user_dir(work: Path) -> Result:
    from vlmrl.models.tiny import TinyModelSpec, build_tiny_model

    user = _user_dir(work / "models")
    return _refused(lambda: build_tiny_model(user, ["a b c"] * 10, TinyModelSpec(vocab_size=300),
                                             overwrite=True), (str(user), "not a tiny model"), user)


def _tiny_previous(work: Path) -> Result:
    from vlmrl.models.tiny import TinyModelSpec, build_tiny_model

    spec, texts, out = TinyModelSpec(vocab_size=300), ["a b c d"] * 10, work / "tiny"
    build_tiny_model(out, texts, spec, seed=0)
    first = _refused(lambda: build_tiny_model(out, texts, spec, seed=1), (str(out), "overwrite"), out)
    if first.outcome.value != "rejected":
        return first
    build_tiny_model(out, texts, spec, seed=1, overwrite=True)
    seed = json.loads((out / "tiny_spec.json").read_text())["seed"]
    return (Result.handled(f"refused, then replaced with overwrite (seed {seed})") if seed == 1
            else Result.silent("overwrite did not replace the model"))


@functools.lru_cache(maxsize=2)
def _stage(root: Path) -> dict[str, Path]:
    """Frames, a tiny base and a 1-step SFT checkpoint, built once per campaign root."""
    from vlmrl.data.extract import extract_dataset
    from vlmrl.stages.training import build_base_model, train_sft

    stage = root / "outputs-stage"
    raw = _raw(root)
    recipe = _recipe(1)
    paths = {"raw": raw, "sft_frames": stage / "frames" / "sft", "rl_frames": stage / "frames" / "rl",
             "base": stage / "base", "sft": stage / "sft"}
    if not (paths["sft"] / "lineage.json").is_file():
        for split in ("sft", "rl"):
            extract_dataset(raw / f"{split}.json", raw, paths[f"{split}_frames"],
                            recipe.frames.train, workers=1, progress=False, overwrite=True)
        build_base_model(recipe, paths["base"], [paths["sft_frames"], paths["rl_frames"]],
                         overwrite=True)
        train_sft(recipe, paths["base"], paths["sft_frames"], paths["sft"], overwrite=True)
    return paths


def _recipe(max_steps: int, save_steps: int = 1) -> Any:
    from vlmrl.recipes import load_recipe

    return load_recipe("tiny-cpu", {
        "frames": {"train": {"max_frames": 4}},
        "sft": {"max_steps": max_steps, "save_steps": save_steps, "logging_steps": 1,
                "per_device_train_batch_size": 4, "curriculum": []},
        "rl": {"max_steps": max_steps, "save_steps": save_steps, "logging_steps": 1,
               "per_device_train_batch_size": 8, "max_completion_length": 8},
    })


def _train_onto(stage: str, target: Callable[[dict[str, Path], Path], Path],
                names: tuple[str, ...], overwrite: bool = True) -> Callable[[Path], Result]:
    def case(work: Path) -> Result:
        from vlmrl.stages.training import build_base_model, train_rl, train_sft

        p = _stage(work.parent)
        out = target(p, work)
        recipe = _recipe(1)
        action = {
            "base": lambda: build_base_model(recipe, out, [p["sft_frames"], p["rl_frames"]],
                                             overwrite=overwrite),
            "sft": lambda: train_sft(recipe, p["base"], p["sft_frames"], out, overwrite=overwrite),
            "rl": lambda: train_rl(recipe, p["sft"], p["rl_frames"], out, overwrite=overwrite),
        }[stage]
        keep = [work, *(p[k] for k in ("sft_frames", "rl_frames", "base", "sft"))]
        return _refused(action, (str(out.resolve()), *names), *keep)
    return case


# --- stale staging / trash --------------------------------------------------------------

def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _stale_dirs(work: Path) -> Result:
    """Leftovers of a killed writer: a dead process's staging and trash are removed, a previous
    output found in the trash of a kill mid-swap is restored; unknown ones are reported."""
    from vlmrl.atomic import HOST_TAG
    from vlmrl.data.extract import load_frame_dataset

    raw = _raw(work.parent)
    out = work / "frames"
    _cli(*_extract_args(raw, out))()
    dead = _dead_pid()
    staging = work / f".frames.staging-p{dead}-h{HOST_TAG}-x1"
    (staging / "data").mkdir(parents=True)
    trash = work / f".frames.old-p{dead}-h{HOST_TAG}-x2"
    trash.mkdir()
    os.replace(out, trash / "frames")  # killed between the two renames of a swap
    legacy = work / ".frames.staging-q8w7e6"  # no owner recorded (an older version)
    legacy.mkdir()
    records = _Records()
    logger = logging.getLogger("vlmrl.atomic")
    logger.addHandler(records)
    try:
        _cli(*_extract_args(raw, out, "--overwrite"))()
    finally:
        logger.removeHandler(records)
    load_frame_dataset(out)
    left = sorted(p.name for p in work.iterdir())
    reported = [m for m in records.messages if legacy.name in m]
    restored = [m for m in records.messages if "restored" in m]
    if left != sorted(["frames", legacy.name]) or not reported or not restored:
        return Result.silent(f"left {left}; log {records.messages}")
    return Result.handled(f"removed {staging.name} and {trash.name} (previous output restored "
                          f"first), reported: {reported[0]}")


def _live_staging_kept(work: Path) -> Result:
    """A staging directory of a process that is still running is never removed."""
    from vlmrl.atomic import HOST_TAG

    raw = _raw(work.parent)
    live = work / f".frames.staging-p{os.getpid()}-h{HOST_TAG}-busy"
    (live / "rows").mkdir(parents=True)
    _cli(*_extract_args(raw, work / "frames"))()
    return (Result.handled("a live writer's staging directory was left alone")
            if (live / "rows").is_dir() else Result.silent("a live writer's staging was removed"))


# --- resume after a kill right after a trainer checkpoint --------------------------------

def _resume(stage: str, kill_at: int, max_steps: int = 3) -> Callable[[Path], Result]:
    def case(work: Path) -> Result:
        from transformers import TrainerCallback

        from vlmrl.lineage import read_manifest
        from vlmrl.stages.training import train_rl, train_sft
        from vlmrl.train.diagnostics import TRAIN_LOG

        class Kill(TrainerCallback):
            def __init__(self, at: int | None) -> None:
                self.at, self.steps = at, []

            def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
                self.steps.append(state.global_step)

            def on_save(self, args, state, control, **kwargs):  # noqa: ANN001
                if state.global_step == self.at:
                    raise KeyboardInterrupt(f"killed after saving step {self.at}")

        p = _stage(work.parent)
        recipe = _recipe(max_steps)
        train = {"sft": lambda cb: train_sft(recipe, p["base"], p["sft_frames"], work / "out",
                                             callbacks=[cb]),
                 "rl": lambda cb: train_rl(recipe, p["sft"], p["rl_frames"], work / "out",
                                           callbacks=[cb])}[stage]
        try:
            train(Kill(kill_at))
            return Result.crashed("the injected kill did not happen")
        except KeyboardInterrupt:
            pass
        probe = Kill(None)
        train(probe)
        metrics = read_manifest(work / "out")["metrics"]
        logged = [e for e in json.loads((work / "out" / TRAIN_LOG).read_text()) if "loss" in e]
        mean = sum(e["loss"] for e in logged) / max(1, len(logged))
        problems = []
        if probe.steps != list(range(kill_at + 1, max_steps + 1)):
            problems.append(f"rerun trained steps {probe.steps}")
        if metrics["global_step"] != max_steps:
            problems.append(f"global_step {metrics['global_step']} != max_steps {max_steps}")
        if [e["step"] for e in logged] != list(range(1, max_steps + 1)):
            problems.append(f"logged steps {[e['step'] for e in logged]}")
        if abs(metrics.get("train_loss", float("nan")) - mean) > 1e-6:
            problems.append(f"train_loss {metrics.get('train_loss')} is not the run's mean {mean}")
        if stage == "rl" and metrics.get("last_reward") != logged[-1].get("reward"):
            problems.append(f"last_reward {metrics.get('last_reward')} is not step {max_steps}'s")
        lost = [kill_at - metrics.get("resumed_from_step", 0)]
        if problems:
            return Result.silent("; ".join(problems), kills=1, lost_steps=lost, save_interval=1)
        return Result.handled(
            f"resumed from step {metrics['resumed_from_step']}, ended at {max_steps}, "
            f"train_loss {metrics['train_loss']:.4f} over all {len(logged)} steps, "
            f"train_runtime {metrics['train_runtime']} s", kills=1, lost_steps=lost, save_interval=1)
    return case


CASES: list[Case] = [
    Case("extract-out-is-media-root", AREA, _extract_onto(
        lambda raw, work: raw, "--overwrite", names=("is the media root",))),
    Case("extract-out-inside-media-root", AREA, _extract_onto(
        lambda raw, work: raw / "frames", names=("lies inside the media root",))),
    Case("extract-out-is-annotations", AREA, _extract_onto(
        lambda raw, work: raw / "bench.json", "--overwrite", names=("is the annotations",))),
    Case("extract-out-contains-media-root", AREA, _extract_onto(
        lambda raw, work: raw.parent, "--overwrite", names=("contains the media root",))),
    Case("extract-out-symlink-to-media-root", AREA, _extract_onto(
        _symlink_to_media, "--overwrite", names=("is the media root",))),
    Case("extract-out-user-dir", AREA, _extract_user_dir(overwrite=False)),
    Case("extract-out-user-dir-overwrite", AREA, _extract_user_dir(overwrite=True)),
    Case("extract-out-is-a-file", AREA, _extract_onto(
        lambda raw, work: (work / "notes.txt", (work / "notes.txt").write_text("keep"))[0],
        "--overwrite", names=("not a frame dataset",))),
    Case("extract-out-previous-dataset", AREA, _extract_previous),
    Case("extract-out-empty-dir", AREA, _extract_empty_dir),
    Case("tiny-model-onto-user-dir", AREA, _tiny_onto_user_dir),
    Case("tiny-model-onto-previous", AREA, _tiny_previous),
    Case("train-base-out-is-corpus-dataset", AREA, _train_onto(
        "base", lambda p, w: p["sft_frames"], ("is the tokenizer corpus",))),
    Case("train-sft-out-is-parent", AREA, _train_onto(
        "sft", lambda p, w: p["base"], ("is the parent checkpoint",))),
    Case("train-sft-out-inside-dataset", AREA, _train_onto(
        "sft", lambda p, w: p["sft_frames"] / "ckpt", ("lies inside the training dataset",))),
    Case("train-rl-out-contains-inputs", AREA, _train_onto(
        "rl", lambda p, w: p["sft"].parent, ("contains the parent checkpoint",))),
    Case("train-sft-out-user-dir", AREA, _train_onto(
        "sft", lambda p, w: _user_dir(w / "mine"), ("not a sft checkpoint",))),
    Case("train-rl-out-is-other-stage", AREA, _train_onto(
        "rl", lambda p, w: p["base"], ("not a rl checkpoint",))),
    Case("train-sft-out-previous-no-overwrite", AREA, _train_onto(
        "sft", lambda p, w: p["sft"], ("already holds a sft checkpoint", "overwrite"),
        overwrite=False)),
    Case("train-sft-work-dir-is-user-dir", AREA, _train_onto(
        "sft", lambda p, w: (_user_dir(w / "out.work"), w / "out")[1],
        ("out.work", "not a trainer work directory"), overwrite=False)),
    Case("stale-staging-and-trash", AREA, _stale_dirs),
    Case("live-staging-kept", AREA, _live_staging_kept),
    Case("resume-sft-killed-after-last-checkpoint", AREA, _resume("sft", 3), slow=True),
    Case("resume-rl-killed-after-last-checkpoint", AREA, _resume("rl", 3), slow=True),
    Case("resume-sft-killed-mid-run", AREA, _resume("sft", 1), slow=True),
    Case("resume-rl-killed-mid-run", AREA, _resume("rl", 2), slow=True),
]

"""The training stages as plain functions: base model -> SFT checkpoint -> RL checkpoint.

Dagster assets and the `vlmrl train` command call exactly these. Each stage writes one
checkpoint directory atomically: everything (weights, processor, training log and
``lineage.json`` with parent, datasets, recipe, seed, final metrics and tracking ids) is
assembled in a staging directory next to the target and renamed into place, so a crash
never leaves a complete-looking checkpoint.

The trainer's own checkpoints (``checkpoint-N``: weights, optimizer, scheduler, RNG and
our RL state), which a run resumes from, live in a separate work directory
``<out>.work/`` that is removed once the final checkpoint is in place. A work directory
remembers which run it belongs to (recipe, parent checkpoint, dataset); a run with other
inputs starts afresh instead of resuming someone else's optimizer state.

Resuming loads optimizer, scheduler and RNG states with ``torch.load(weights_only=True)``
(transformers 5 does this throughout, allow-listing numpy's RNG types), so a checkpoint
cannot execute code when loaded; our own extra state is JSON. A run killed after its
last trainer checkpoint is finished from it without another step, and a resumed run
records the loss and runtime of all its sessions (vlmrl.train.resume.train_or_finish).

A stage writes its checkpoint only where nothing is lost (vlmrl.atomic.check_output,
checked before training): never onto, into or around its parent or datasets, and over an
earlier checkpoint of the same stage only with ``overwrite``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from accelerate import PartialState

from vlmrl.atomic import OutputKind, Protected, atomic_directory, check_output
from vlmrl.data.extract import load_frame_dataset
from vlmrl.lineage import FORMAT, LINEAGE, dataset_entry, lineage_hash, write_manifest
from vlmrl.models.loading import check_checkpoint_dir, freeze_vision_tower, load_model
from vlmrl.recipes import Recipe
from vlmrl.train.diagnostics import TRAIN_LOG
from vlmrl.train.grpo import build_grpo_trainer
from vlmrl.train.prompts import tokenizer_corpus
from vlmrl.train.replicas import check_engine, check_replicas, replica_report
from vlmrl.train.resume import train_or_finish
from vlmrl.train.sft import build_sft_trainer, select_families

log = logging.getLogger(__name__)

WORK_SUFFIX = ".work"
RUN_FILE = "run.json"  # in the work directory: which run its checkpoints belong to
TRAINER_STATE = "trainer_state.json"  # written last into a trainer checkpoint
PHASE_FILE = "phase.json"  # in a finished curriculum phase's weights: its summary
# the trainer's work directory of a run (only its run.json tells it is ours to empty)
WORK_DIR = OutputKind("trainer work directory", RUN_FILE, keys=("recipe_sha256",))
# a finished curriculum phase's weights (inside the work directory, ours to replace)
PHASE_OUTPUT = OutputKind("curriculum phase", PHASE_FILE, keys=("phase",))
TEXT_COLUMNS = ("problem", "options", "problem_type", "process", "solution", "data_type")


def checkpoint_kind(kind: str) -> OutputKind:
    """A checkpoint of `kind` (base / sft / rl) as written here: what a stage may replace."""
    return OutputKind(f"{kind} checkpoint", LINEAGE, values=(("format", FORMAT), ("kind", kind)))


def work_dir_for(out_dir: str | os.PathLike[str]) -> Path:
    """Where the trainer keeps its resumable checkpoints for the final checkpoint `out_dir`."""
    out = Path(out_dir).resolve()
    return out.with_name(out.name + WORK_SUFFIX)


def last_checkpoint(work_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete trainer checkpoint in `work_dir`, or None.

    The trainer writes trainer_state.json last, so a checkpoint without a readable one
    was cut short (a crash mid-save); such checkpoints are deleted, so that a later save
    at the same step does not mix old and new files.
    """
    candidates = [
        p for p in Path(work_dir).glob("checkpoint-*")
        if p.is_dir() and p.name.removeprefix("checkpoint-").isdigit()
    ]
    for path in sorted(candidates, key=lambda p: int(p.name.split("-")[1]), reverse=True):
        try:
            json.loads((path / TRAINER_STATE).read_text(encoding="utf-8"))
            return path
        except (OSError, ValueError):
            log.warning("removing incomplete trainer checkpoint %s", path)
            shutil.rmtree(path)
    return None


def build_base_model(
    recipe: Recipe,
    out_dir: str | os.PathLike[str],
    corpus_datasets: Sequence[str | os.PathLike[str]] = (),
    *,
    overwrite: bool = False,
) -> Path:
    """The base checkpoint with its lineage: built (recipe.model.tiny) or linked (recipe.model.path).

    tiny: a fresh tiny model whose tokenizer is trained on the text of `corpus_datasets`
    (frame datasets: prompts, CoT traces and answers), seeded by recipe.seed.
    path: a local checkpoint, checked (config + safetensors) and linked file by file, not
    copied, into `out_dir` next to a lineage.json of kind "base".
    An existing base checkpoint at `out_dir` is replaced only with overwrite; nothing else is.
    """
    model = recipe.model
    if model.tiny is None:
        return _link_checkpoint(model.path, out_dir, overwrite, kind="base", recipe=recipe)
    if not corpus_datasets:
        raise ValueError("building the tiny model needs frame datasets for its tokenizer")
    from vlmrl.models.tiny import build_tiny_model

    kind, protected = checkpoint_kind("base"), _inputs(("tokenizer corpus", corpus_datasets))
    out = check_output(out_dir, kind, overwrite=overwrite, protected=protected)
    entries = [dataset_entry(p, "tokenizer_corpus") for p in corpus_datasets]
    with atomic_directory(out, overwrite, kind=kind, protected=protected) as staging:
        # build_tiny_model stages atomically itself; here it replaces our empty staging dir.
        build_tiny_model(staging, _corpus(recipe, corpus_datasets), model.tiny,
                         seed=recipe.seed, overwrite=True)
        write_manifest(staging, kind="base", datasets=entries, recipe=recipe.to_dict(),
                       seed=recipe.seed, extra={"tiny_spec": dataclasses.asdict(model.tiny)})
    return out


def _inputs(*groups: tuple[str, Iterable[str | os.PathLike[str]]]) -> list[tuple[str, Path]]:
    """(role, path) pairs that an output may not be, contain or lie inside."""
    return [(role, Path(p)) for role, paths in groups for p in paths]


def _link_checkpoint(
    source_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], overwrite: bool,
    protected: Protected = (), **manifest: Any
) -> Path:
    """A checkpoint whose files are symlinks to `source_dir`'s (big weights are not copied)."""
    source = check_checkpoint_dir(source_dir)
    protected = [("source checkpoint", source), *protected]
    with atomic_directory(out_dir, overwrite, kind=checkpoint_kind(manifest["kind"]),
                          protected=protected) as staging:
        for item in sorted(source.iterdir()):
            if item.name != LINEAGE:
                (staging / item.name).symlink_to(item.resolve())
        recipe = manifest.pop("recipe")
        write_manifest(staging, recipe=recipe.to_dict(), seed=recipe.seed,
                       extra={"linked_from": str(source)}, **manifest)
    return Path(out_dir).resolve()


def _corpus(recipe: Recipe, datasets: Iterable[str | os.PathLike[str]]) -> list[str]:
    texts: list[str] = []
    prompts = [recipe.rl.prompt]
    if recipe.sft is not None and recipe.sft.prompt != recipe.rl.prompt:
        prompts.append(recipe.sft.prompt)
    for path in datasets:
        ds, _ = load_frame_dataset(path)
        rows = list(ds.select_columns(list(TEXT_COLUMNS)))  # text only: no frame decoding
        for prompt in prompts:
            texts += tokenizer_corpus(rows, prompt)
    return texts


def train_sft(
    recipe: Recipe,
    base_dir: str | os.PathLike[str],
    sft_frames_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    tracking: dict[str, Any] | None = None,
    *,
    resume: bool = True,
    callbacks: list[Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """SFT (recipe.sft) of the base checkpoint on a frame dataset -> checkpoint `out_dir`.

    With ``sft: null`` in the recipe (RL straight from the base, as in Visual-RFT) the
    checkpoint links to the base model's files and records that no SFT was done.
    An existing sft checkpoint at `out_dir` is replaced only with overwrite.
    """
    if recipe.sft is None:
        return _link_checkpoint(base_dir, out_dir, overwrite,
                                _inputs(("training dataset", [sft_frames_dir])), kind="sft",
                                recipe=recipe, parent=base_dir, metrics={"skipped": True},
                                tracking=tracking)
    return _run_stage("sft", recipe, build_sft_trainer, base_dir, sft_frames_dir, out_dir,
                      tracking, resume, callbacks, overwrite)


def train_rl(
    recipe: Recipe,
    sft_dir: str | os.PathLike[str],
    rl_frames_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    tracking: dict[str, Any] | None = None,
    *,
    resume: bool = True,
    callbacks: list[Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """GRPO-family RL (recipe.rl) of the SFT checkpoint on a frame dataset -> `out_dir`.

    An existing rl checkpoint at `out_dir` is replaced only with overwrite.
    """
    return _run_stage("rl", recipe, build_grpo_trainer, sft_dir, rl_frames_dir, out_dir,
                      tracking, resume, callbacks, overwrite)


def _run_stage(
    kind: str,
    recipe: Recipe,
    build_trainer: Callable[..., Any],
    parent_dir: str | os.PathLike[str],
    frames_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    tracking: dict[str, Any] | None,
    resume: bool,
    callbacks: list[Any] | None,
    overwrite: bool,
) -> Path:
    """Train recipe.<kind> from the parent checkpoint; write the final checkpoint atomically.

    Where the output may go is checked before any training (see vlmrl.atomic.check_output).
    """
    recipe.model.apply_threads()
    config = getattr(recipe, kind)
    if recipe.model.device == "cpu":
        config = dataclasses.replace(
            config, trainer_kwargs={"use_cpu": True, **config.trainer_kwargs}
        )
    parent = check_checkpoint_dir(parent_dir)
    if not (parent / LINEAGE).is_file():
        raise FileNotFoundError(f"{parent} has no {LINEAGE}: make it with the previous stage")
    output = checkpoint_kind(kind)
    protected = _inputs(("parent checkpoint", [parent]), ("training dataset", [frames_dir]))
    out = check_output(out_dir, output, overwrite=overwrite, protected=protected)
    work = work_dir_for(out)
    check_output(work, WORK_DIR, overwrite=True, protected=protected)
    dataset, _ = load_frame_dataset(frames_dir)
    entry = dataset_entry(frames_dir, kind)
    run = {"kind": kind, "recipe_sha256": recipe.sha256, "parent": lineage_hash(parent),
           "dataset": entry["fingerprint"]}
    state = PartialState()
    if state.is_main_process:  # one process changes the work directory, the others wait
        _claim_work_dir(work, run, resume)
        last_checkpoint(work)  # removes checkpoints cut short by a crash
    state.wait_for_everyone()
    checkpoint = last_checkpoint(work) if resume else None

    start, phases = parent, []
    if kind == "sft" and config.curriculum:
        start, phases = _run_curriculum(recipe, config, parent, dataset, work, resume, callbacks)
    loaded = _load_for_training(recipe, config, start)
    trainer = build_trainer(loaded.model, loaded.processor, dataset, work, config,
                            callbacks=callbacks)
    check_engine(trainer)
    if checkpoint is not None:
        log.info("resuming %s training from %s", kind, checkpoint)
    metrics = train_or_finish(trainer, checkpoint)
    if state.num_processes > 1:  # data-parallel replicas must agree before anything is saved
        metrics["replicas"] = replica_report(trainer, getattr(trainer, "rows_seen", None))
        check_replicas(metrics["replicas"], sharded=_sharded(trainer))
    if phases:
        metrics["curriculum"] = phases
        metrics["curriculum_steps"] = sum(p["global_step"] for p in phases)
    logged = [e for e in trainer.state.log_history if "loss" in e]
    if logged:
        metrics.update({f"last_{k}": v for k, v in logged[-1].items()
                        if isinstance(v, int | float) and k != "step"})

    def describe(staging: Path) -> None:
        (staging / TRAIN_LOG).write_text(json.dumps(trainer.state.log_history, indent=1) + "\n")
        write_manifest(staging, kind=kind, parent=parent, datasets=[entry],
                       recipe=recipe.to_dict(), seed=config.seed, metrics=metrics,
                       tracking=tracking)

    _save_trained(trainer, loaded.processor, out, describe, superseded=[work],
                  kind=output, overwrite=overwrite, protected=protected)
    return out


def _load_for_training(recipe: Recipe, config: Any, start: Path) -> Any:
    """The model a trainer starts from, with the vision tower frozen if the config says so."""
    m = recipe.model
    loaded = load_model(start, dtype=m.dtype, attn_implementation=m.attn_implementation)
    if config.freeze_vision:
        log.info("vision tower frozen: %d parameters", freeze_vision_tower(loaded.model))
    return loaded


def _save_trained(trainer: Any, processor: Any, out: Path, describe: Callable[[Path], None],
                  superseded: Sequence[Path], kind: OutputKind, overwrite: bool,
                  protected: Protected = ()) -> None:
    """Weights (gathered if sharded), processor and `describe`'s files into `out`, atomically,
    on the main process; then the trainer checkpoints in `superseded` are deleted."""
    accelerator = trainer.accelerator
    state_dict = accelerator.get_state_dict(trainer.model)  # gathers sharded (ZeRO-3/FSDP) weights
    if accelerator.is_main_process:
        with atomic_directory(out, overwrite, kind=kind, protected=protected) as staging:
            model = accelerator.unwrap_model(trainer.model)
            model.save_pretrained(staging, state_dict=state_dict, safe_serialization=True)
            processor.save_pretrained(staging)
            describe(staging)
        for path in superseded:
            shutil.rmtree(path, ignore_errors=True)
    accelerator.wait_for_everyone()


def _run_curriculum(
    recipe: Recipe,
    config: Any,
    parent: Path,
    dataset: Any,
    work: Path,
    resume: bool,
    callbacks: list[Any] | None,
) -> tuple[Path, list[dict[str, Any]]]:
    """SFT curriculum phases (config.curriculum), each in ``work/phase-<i>``.

    A finished phase leaves its weights in ``phase-<i>/final`` (written atomically), which
    the next phase, or the main phase, starts from; a resumed run skips finished phases and
    resumes an unfinished one from its own trainer checkpoints.
    Returns the directory the main phase starts from and a summary per phase.
    """
    start, summaries = parent, []
    for i, phase in enumerate(config.curriculum, 1):
        phase_dir = work / f"phase-{i}"
        final = phase_dir / "final"
        rows = select_families(dataset, phase.families)  # fails first if a family matches nothing
        done = final / PHASE_FILE
        if resume and done.is_file():  # written inside the atomic final dir: present = complete
            log.info("curriculum phase %d already done (%s)", i, final)
            summaries.append(json.loads(done.read_text(encoding="utf-8")))
        else:
            checkpoint = last_checkpoint(phase_dir) if resume and phase_dir.is_dir() else None
            loaded = _load_for_training(recipe, config, start)
            trainer = build_sft_trainer(loaded.model, loaded.processor, rows, phase_dir,
                                        config.phase(phase), callbacks=callbacks)
            log.info("curriculum phase %d: %d steps on %s (%d rows)", i, phase.max_steps,
                     ", ".join(phase.families), len(rows))
            with _phase_tracking(config.report_to, i):
                metrics = train_or_finish(trainer, checkpoint)
            summary = {"phase": i, "families": list(phase.families), "rows": len(rows),
                       "global_step": metrics["global_step"],
                       "train_loss": metrics.get("train_loss")}
            summaries.append(summary)

            def describe(staging: Path, summary: dict[str, Any] = summary) -> None:
                (staging / PHASE_FILE).write_text(json.dumps(summary) + "\n", encoding="utf-8")

            _save_trained(trainer, loaded.processor, final, describe,
                          superseded=sorted(phase_dir.glob("checkpoint-*")),
                          kind=PHASE_OUTPUT, overwrite=True)
        start = final
    return start, summaries


@contextmanager
def _phase_tracking(report_to: str | list[str], phase: int) -> Iterator[None]:
    """A curriculum phase reports to MLflow as a child run of the stage's active run.

    Each Trainer's MLflowCallback logs its arguments and model config as params; a second
    trainer in the same run logs other values for the same keys (``_name_or_path``,
    ``output_dir``), which MLflow refuses, losing that whole batch of params. With the child
    run active, the phase's callback logs into it and starts or ends no run itself (a
    callback that started a nested run would end the stage's run when garbage-collected).
    Without an active run (no tracker, or a subprocess) nothing changes.
    """
    wanted = [report_to] if isinstance(report_to, str) else list(report_to)
    if "mlflow" not in wanted and "all" not in wanted:
        yield
        return
    import mlflow

    if mlflow.active_run() is None:
        yield
        return
    try:
        mlflow.start_run(nested=True, run_name=f"curriculum phase {phase}",
                         tags={"vlmrl.curriculum_phase": str(phase)})
    except Exception as exc:  # noqa: BLE001 - tracking never stops training
        log.warning("could not open an MLflow run for curriculum phase %d: %s", phase, exc)
        yield
        return
    status = "FAILED"
    try:
        yield
        status = "FINISHED"
    finally:
        try:
            mlflow.end_run(status)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not end the MLflow run of curriculum phase %d: %s", phase, exc)


def _sharded(trainer: Any) -> bool:
    """Whether processes hold different shards of the weights (FSDP, DeepSpeed ZeRO-3)."""
    if trainer.is_fsdp_enabled:
        return True
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return bool(trainer.is_deepspeed_enabled and plugin is not None and plugin.zero_stage == 3)


def _claim_work_dir(work: Path, run: dict[str, Any], resume: bool) -> None:
    """Keep `work` for resuming only when it belongs to this very run; otherwise empty it."""
    run_file = work / RUN_FILE
    if work.exists():
        try:
            same = json.loads(run_file.read_text(encoding="utf-8")) == run
        except (OSError, ValueError):
            same = False
        if not (resume and same):
            reason = "it belongs to another run" if resume else "resume disabled"
            log.warning("discarding trainer checkpoints in %s (%s)", work, reason)
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    run_file.write_text(json.dumps(run, indent=1) + "\n", encoding="utf-8")

"""Resuming from a trainer checkpoint: the model weights actually restored, the run ending
exactly at max_steps, and metrics that cover the whole run.

transformers 5 writes checkpoints in the original (Hub) key layout: save_pretrained
reverts the model's weight conversions (Qwen2.5-VL: ``model.visual.*`` -> ``visual.*``,
``model.language_model.*`` -> ``model.*``). ``Trainer._load_from_checkpoint`` reloads
them with a plain ``load_state_dict(strict=False)``, so no key matches and a resumed run
silently continues from its initial weights with the optimizer state of the trained ones
(huggingface/transformers#43701, still open in 5.23).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerState
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import ExportableState


class ConvertedResumeMixin:
    """Trainer mixin: reload checkpoint weights through from_pretrained (key conversion included)."""

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        sharded = model is not None or self.is_deepspeed_enabled or self.is_fsdp_enabled
        if sharded or not (Path(resume_from_checkpoint) / "config.json").is_file():
            # DeepSpeed / FSDP / adapter checkpoints have their own formats and loaders.
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        target = self.accelerator.unwrap_model(self.model)
        saved = type(target).from_pretrained(
            resume_from_checkpoint,
            dtype=target.dtype,
            local_files_only=True,
            trust_remote_code=False,
            use_safetensors=True,
        )
        target.load_state_dict(saved.state_dict(), strict=True)


def checkpoint_state(checkpoint: str | os.PathLike[str]) -> dict[str, Any]:
    """The trainer_state.json of a trainer checkpoint (JSON, no code runs)."""
    return json.loads((Path(checkpoint) / TRAINER_STATE_NAME).read_text(encoding="utf-8"))


def is_finished(checkpoint: str | os.PathLike[str]) -> bool:
    """Whether a trainer checkpoint is already at its run's max_steps (killed after the last save).

    transformers' loop checks max_steps only after a step, so resuming such a checkpoint
    trains one step too many (when the epoch is not used up); finish it without training.
    """
    state = checkpoint_state(checkpoint)
    return 0 < state.get("max_steps", 0) <= state.get("global_step", 0)


class RunClock(TrainerCallback, ExportableState):
    """Training seconds of the whole run, saved in each checkpoint's trainer_state.json
    (``stateful_callbacks``) so that a resumed run reports the runtime of all its sessions."""

    def __init__(self) -> None:
        self.before = 0.0  # seconds of the sessions before this one
        self._started: float | None = None

    def restore(self, state: TrainerState) -> None:
        saved = state.stateful_callbacks.get(type(self).__name__) or {}
        self.before = float(saved.get("attributes", {}).get("seconds", 0.0))
        state.stateful_callbacks.setdefault(type(self).__name__, self.state())

    def on_train_begin(self, args: Any, state: TrainerState, control: Any, **kwargs: Any) -> None:
        self.restore(state)  # a fresh run has this clock's initial state (0 s) there
        self._started = time.perf_counter()

    @property
    def seconds(self) -> float:
        return self.before + (0.0 if self._started is None else time.perf_counter() - self._started)

    @seconds.setter
    def seconds(self, value: float) -> None:  # restore_callback_states_from_checkpoint sets it
        self.before, self._started = float(value), None

    def state(self) -> dict[str, Any]:
        return {"args": {}, "attributes": {"seconds": round(self.seconds, 4)}}


def run_loss(log_history: list[dict[str, Any]]) -> float | None:
    """Mean training loss over every logged step of the run, from the trainer's log history.

    Each logged "loss" is the mean over the steps since the previous log, so the entries are
    weighted by the steps they cover.
    """
    total, covered, previous = 0.0, 0, 0
    for entry in log_history:
        if "loss" in entry and "step" in entry:
            steps = entry["step"] - previous
            total, covered, previous = total + entry["loss"] * steps, covered + steps, entry["step"]
    return total / covered if covered else None


def whole_run_metrics(trainer: Any, clock: RunClock) -> dict[str, Any]:
    """train_loss / train_runtime / throughput of the whole run of a resumed trainer.

    transformers reports these for the last train() call only (a resumed session).
    """
    state, args = trainer.state, trainer.args
    runtime = clock.seconds
    steps_per_second = state.global_step / runtime if runtime > 0 else None
    batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    return {
        "train_loss": run_loss(state.log_history),
        "train_runtime": round(runtime, 4),
        "train_steps_per_second": steps_per_second and round(steps_per_second, 3),
        "train_samples_per_second": steps_per_second and round(steps_per_second * batch, 3),
        "epoch": state.epoch,
        "total_flos": state.total_flos,
    }


def train_or_finish(trainer: Any, checkpoint: Path | None) -> dict[str, Any]:
    """Train `trainer` (resuming from `checkpoint`); return the metrics of the whole run.

    A checkpoint already at max_steps is finished without training: its weights and trainer
    state are loaded, so the run ends exactly at max_steps. A resumed run's train_loss,
    train_runtime and throughput cover all its sessions, not just the last one.
    """
    clock = RunClock()
    trainer.add_callback(clock)
    # read first: the trainer may rotate this checkpoint away once it saves newer ones
    resumed_from = None if checkpoint is None else checkpoint_state(checkpoint)["global_step"]
    if checkpoint is not None and is_finished(checkpoint):
        trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / TRAINER_STATE_NAME))
        clock.restore(trainer.state)
        trainer._load_from_checkpoint(str(checkpoint))
        metrics: dict[str, Any] = {}
    else:
        output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        metrics = dict(output.metrics)
    if resumed_from is not None:
        metrics.update(whole_run_metrics(trainer, clock))
        metrics["resumed_from_step"] = resumed_from
    return {"global_step": trainer.state.global_step, **metrics}

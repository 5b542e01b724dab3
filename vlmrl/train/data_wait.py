"""How much of each training step the trainer spends waiting for its data.

`DataWaitMixin` times, inside the trainer's own loop (transformers 5's
``Trainer._run_epoch``), every batch it pulls from the train dataloader and every optimizer
step, and logs the share with the trainer's other logs, so it reaches MLflow (or any
``report_to``) with the loss:

- ``perf/data_wait_fraction``: data wait / step time over the steps since the last log;
- ``perf/data_wait_seconds`` and ``perf/step_seconds``: the mean data wait and the mean
  step time per optimizer step over the same steps;

and, in the metrics of the finished ``train()`` call, ``train_data_wait_fraction`` and
``train_data_wait_seconds`` (that call's whole share and total seconds).

What counts as data wait: the wall time of each ``next()`` on the train dataloader's epoch
iterator that `Trainer.get_batch_samples` makes (all ``gradient_accumulation_steps``
micro-batches of an optimizer step are pulled there, before the first forward). With the
default ``dataloader_num_workers=0`` that is the dataset's row access and transform (Arrow
reads, image decoding, building the examples), the collator (SFT: the processor call
that tokenises and patchifies the frames) and accelerate's copy of the batch to the
device; with worker processes, the time the main process waits for a prefetched batch.
accelerate's loader reads one batch ahead, so a batch's work may land in the ``next()``
of the step before the one that trains on it (the sum over a run is unchanged).
TRL's GRPO dataloader yields a *generation* batch (prompt rows, frames included, no
tensors): pulling it is data wait, the rollout made from it (generation, rewards,
log-probs, inside ``training_step``) is not. Neither is the creation of the epoch's
iterator (the start of worker processes) nor counting the batch's label tokens.

What counts as step time: from the start of a step's first ``next()`` to the end of its
optimizer step (``on_step_end``): data wait + forward/backward (and GRPO's rollout) +
clipping and the optimizer. Logging, checkpoint saving and evaluation, which run after
``on_step_end``, are outside it. Each process measures its own; the logged figure is the
main process's (the one that reports).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from transformers import TrainerCallback

FRACTION = "perf/data_wait_fraction"
WAIT_SECONDS = "perf/data_wait_seconds"
STEP_SECONDS = "perf/step_seconds"
RUN_FRACTION = "train_data_wait_fraction"
RUN_SECONDS = "train_data_wait_seconds"


@dataclass
class Window:
    """Data wait and step time accumulated over some optimizer steps."""

    wait_s: float = 0.0
    step_s: float = 0.0
    steps: int = 0

    @property
    def fraction(self) -> float | None:
        return min(1.0, self.wait_s / self.step_s) if self.step_s > 0 else None


class DataWaitClock(TrainerCallback):
    """The trainer's data-wait accounting: fed by `DataWaitMixin`, closed per step here."""

    def __init__(self) -> None:
        self.window = Window()  # since the last training log
        self.session = Window()  # since this train() call began
        self._step_start: float | None = None
        self._step_wait = 0.0

    def fetch(self, iterator: Iterator[Any]) -> Iterator[Any]:
        """`iterator` with each ``next()`` timed as data wait of the current step."""
        if self._step_start is None:
            self._step_start = time.perf_counter()
        return _TimedIterator(iterator, self)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.window, self.session = Window(), Window()
        self.cancel_step()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._step_start is None:
            return
        step_s = time.perf_counter() - self._step_start
        for w in (self.window, self.session):
            w.wait_s += self._step_wait
            w.step_s += step_s
            w.steps += 1
        self._step_start, self._step_wait = None, 0.0

    def cancel_step(self) -> None:
        self._step_start, self._step_wait = None, 0.0

    def take_window(self) -> dict[str, float]:
        """The figures of the steps since the last call (none if no step ended since)."""
        w, self.window = self.window, Window()
        if not w.steps or w.fraction is None:
            return {}
        return {
            FRACTION: round(w.fraction, 6),
            WAIT_SECONDS: round(w.wait_s / w.steps, 6),
            STEP_SECONDS: round(w.step_s / w.steps, 6),
        }

    def session_figures(self) -> dict[str, float]:
        s = self.session
        if not s.steps or s.fraction is None:
            return {}
        return {RUN_FRACTION: round(s.fraction, 6), RUN_SECONDS: round(s.wait_s, 4)}


class _TimedIterator:
    def __init__(self, iterator: Iterator[Any], clock: DataWaitClock) -> None:
        self._iterator, self._clock = iterator, clock

    def __iter__(self) -> _TimedIterator:
        return self

    def __next__(self) -> Any:
        start = time.perf_counter()
        try:
            return next(self._iterator)
        finally:
            self._clock._step_wait += time.perf_counter() - start


class DataWaitMixin:
    """Trainer mixin: log the share of step time spent waiting for the dataloader (see module doc).

    Put it first among the bases (before TRL's trainer class), so that its `log` adds the
    figures before TRL's `log` merges its own metrics and hands them to the callbacks.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.data_wait = DataWaitClock()
        self.add_callback(self.data_wait)

    def get_batch_samples(self, epoch_iterator: Iterator[Any], num_batches: int, device: Any):
        batches, num_items = super().get_batch_samples(
            self.data_wait.fetch(epoch_iterator), num_batches, device
        )
        if not batches:  # the epoch ran out: no step follows this fetch
            self.data_wait.cancel_step()
        return batches, num_items

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log (not evaluation, not the final summary)
            logs.update(self.data_wait.take_window())
        elif "train_runtime" in logs:  # the metrics of the finished train() call
            logs.update(self.data_wait.session_figures())
        super().log(logs, start_time)

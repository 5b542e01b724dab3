"""The RL training curves that the pipeline writes next to its reports.

`write_training_curves`: after RL, the per-reward training reward, the zero-advantage
fraction and T-GRPO's p / p~ as a plot and a JSON table, read from the checkpoint's
training log (the headroom before RL takes a recipe: stages/headroom.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from vlmrl.train.curves import plot_training_curves, training_curves

TRAIN_LOG = "train_log.json"  # in the final checkpoint: the trainer's log history
CURVES_FILE = "training_curves.json"
CURVES_PLOT = "training_curves.png"


def write_training_curves(checkpoint: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """Plot (and tabulate) the RL curves from the checkpoint's training log."""
    history = json.loads((Path(checkpoint) / TRAIN_LOG).read_text(encoding="utf-8"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / CURVES_FILE).write_text(json.dumps(training_curves(history), indent=1) + "\n",
                                   encoding="utf-8")
    return plot_training_curves(history, out / CURVES_PLOT)

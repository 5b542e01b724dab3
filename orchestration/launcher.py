"""How a GPU step runs its stage: in the step's own process, or as the ``vlmrl`` command.

In-process (the embedded default, ``make run``): the asset calls vlmrl.stages directly.
As a command: the asset runs ``python -m vlmrl.cli train sft|rl`` / ``eval`` through
dagster-pipes (``PipesSubprocessClient``). The command re-runs itself under ``accelerate
launch`` with the recipe's ``launch`` section (vlmrl.cli.launch), exactly as a step pod or
a multi-node Job runs it, and its main process reports the checkpoint or report path and
its metrics back through pipes. The trainer's MLflow callback joins the asset's MLflow run
(``TrackedRun.env``); the process output goes to the step's log.

``VLMRL_STAGE_LAUNCH`` chooses: ``auto`` (default: the command when the recipe asks for
more than one process, else in-process), ``in_process`` or ``command``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from dagster import AssetExecutionContext, ConfigurableResource, PipesSubprocessClient

LAUNCH_ENV = "VLMRL_STAGE_LAUNCH"
MODES = ("auto", "in_process", "command")


class StageLauncher(ConfigurableResource):
    """Where the training and evaluation stages of the GPU steps run (see the module doc)."""

    mode: str = "auto"

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> StageLauncher:
        return cls(mode=env.get(LAUNCH_ENV, "auto").strip().lower().replace("-", "_") or "auto")

    def as_command(self, recipe: Any) -> bool:
        """True when the stage of ``recipe`` runs as the ``vlmrl`` command (see the module doc)."""
        if self.mode not in MODES:
            raise ValueError(f"{LAUNCH_ENV}={self.mode!r}: expected one of {', '.join(MODES)}")
        if self.mode == "auto":
            return recipe.launch.num_processes > 1
        return self.mode == "command"

    def run(self, context: AssetExecutionContext, args: Sequence[str], recipe: Any,
            env: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Run ``vlmrl <args> --recipe <recipe as a file>`` through dagster-pipes; the metadata
        its main process reported. A failed command raises (its output is in the step's log)."""
        _check_gpus(recipe)
        with tempfile.TemporaryDirectory(prefix="vlmrl-stage-") as tmp:
            # the resolved recipe (overrides included) is what the command trains on
            recipe_file = Path(tmp) / "recipe.yaml"
            recipe_file.write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False), encoding="utf-8")
            command = [sys.executable, "-m", "vlmrl.cli", *args, "--recipe", str(recipe_file)]
            context.log.info(f"running: {' '.join(command[1:])}")
            invocation = PipesSubprocessClient().run(context=context, command=command, env=dict(env or {}))
            reported = [r for r in invocation.get_results() if getattr(r, "metadata", None)]
        if len(reported) != 1:
            raise RuntimeError(f"`vlmrl {' '.join(args[:2])}` ended without reporting its result to "
                               f"Dagster ({len(reported)} reports): see the step's log")
        return {k: getattr(v, "value", v) for k, v in reported[0].metadata.items()}


def _check_gpus(recipe: Any) -> None:
    """On a GPU machine, one GPU per process: a step pod with fewer GPUs than the recipe's
    ``launch.num_processes`` fails here, naming both, not deep inside NCCL."""
    import torch

    wanted = recipe.launch.num_processes
    if torch.cuda.is_available() and torch.cuda.device_count() < wanted:
        raise RuntimeError(f"the recipe's launch.num_processes = {wanted}, but this step sees "
                           f"{torch.cuda.device_count()} GPU(s): give the GPU steps {wanted} "
                           "(VLMRL_STEP_GPUS on the code location, docs/deploy.md)")


def tracking_args(tracking: Mapping[str, Any]) -> list[str]:
    """``--tracking KEY=VALUE`` arguments recording ``tracking`` in the checkpoint's lineage."""
    # quoted: the command reads values as YAML, and an all-digit run id would become a number
    return [arg for k, v in tracking.items() for arg in ("--tracking", f"{k}={json.dumps(str(v))}")]

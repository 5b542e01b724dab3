"""How a ``vlmrl`` command runs as several processes, and reports back to Dagster.

- `relaunch`: a command whose recipe asks for several processes (``launch.num_processes``)
  runs itself again under ``accelerate launch``; inside a process that torchrun / accelerate
  started, it does the work itself. The same command line thus serves a laptop, a step pod
  and an explicit multi-node ``accelerate launch``.
- `end_processes`: tear the process group down before exit.
- `report_to_dagster`: when Dagster started the command through dagster-pipes
  (``PipesSubprocessClient``; the asset's side is ``orchestration.launcher``), the main
  process sends the result (checkpoint or report path, metrics) back to the asset.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

# set in every process that torchrun / accelerate launch starts
LAUNCHED_ENV = ("LOCAL_RANK", "WORLD_SIZE")
PIPES_CONTEXT_ENV = "DAGSTER_PIPES_CONTEXT"  # dagster_pipes.DAGSTER_PIPES_CONTEXT_ENV_VAR


def relaunch(args: argparse.Namespace, recipe: Any) -> int | None:
    """Run this command again under ``accelerate launch`` when the recipe's launch section asks
    for several processes and this process is not already one of them; its exit status, or
    None when this process should do the work itself."""
    launch = recipe.launch
    if launch.num_processes <= 1 or not args.launch or any(k in os.environ for k in LAUNCHED_ENV):
        return None
    extra = shlex.split(os.environ.get("VLMRL_ACCELERATE_ARGS", ""))  # e.g. --main_process_port
    command = [sys.executable, "-m", "accelerate.commands.launch", *launch.accelerate_args(),
               *extra, "-m", "vlmrl.cli", *args.argv]
    print(f"vlmrl: {launch.num_processes} processes: {' '.join(command[1:])}", flush=True)
    return subprocess.call(command)


def end_processes() -> None:
    """Tear down the process group of a multi-process run before this process exits: left to
    interpreter shutdown, gloo's / NCCL's threads can abort the exit ("terminate called without
    an active exception", SIGABRT) after the work is saved, failing a finished step."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def is_main_process() -> bool:
    """True in a single process and in the global rank 0 of a launched group."""
    return os.environ.get("RANK", "0") == "0"


def report_to_dagster(metadata: Mapping[str, Any], data_version: str | None = None) -> bool:
    """Send ``metadata`` to the Dagster asset that launched this command through dagster-pipes;
    False (nothing sent) when no asset did, or in a process other than the main one (each
    rank inherits the pipes environment, but the asset expects one report)."""
    if PIPES_CONTEXT_ENV not in os.environ or not is_main_process():
        return False
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        pipes.report_asset_materialization(metadata=dict(metadata), data_version=data_version)
    return True

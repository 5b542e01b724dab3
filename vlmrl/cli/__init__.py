"""The ``vlmrl`` command: data, training stages, evaluation, lineage audit, doctor.

One package above the library (vlmrl.stages and below); no library package imports it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from vlmrl.cli.data import add_data_commands
from vlmrl.cli.eval import add_eval_commands
from vlmrl.cli.lineage import add_lineage_command
from vlmrl.cli.rollout import add_rollout_commands
from vlmrl.cli.train import add_train_commands
from vlmrl.doctor.run import add_doctor_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlmrl", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_data_commands(sub)
    add_lineage_command(sub)
    add_eval_commands(sub)
    add_train_commands(sub)
    add_rollout_commands(sub)
    add_doctor_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # a training command re-runs itself under `accelerate launch` with them
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, NotADirectoryError, FileExistsError) as exc:
        print(f"vlmrl: error: {exc}", file=sys.stderr)
        return 2


"""``vlmrl train base|sft|rl``: the training stages from the command line (vlmrl.stages.training)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from vlmrl.cli.launch import end_processes, relaunch, report_to_dagster
from vlmrl.cli.options import assignments, recipe_from_args


def _report(path, kind: str) -> None:
    """Print the checkpoint and its headline metrics; send them to the Dagster asset that
    launched this command (dagster-pipes), if one did."""
    from vlmrl.lineage import lineage_hash, read_manifest

    metrics = read_manifest(path)["metrics"]
    keys = ("global_step", "resumed_from_step", "train_loss", "train_runtime", "last_reward")
    shown = {k: metrics[k] for k in keys if k in metrics}
    print(f"{kind} checkpoint: {path}" + (f"  {json.dumps(shown)}" if shown else ""))
    digest = lineage_hash(path)
    report_to_dagster({"checkpoint": str(path), "lineage_sha256": digest,
                       "world_size": len(metrics.get("replicas") or [None]), **shown},
                      data_version=digest[:16])


def cmd_base(args: argparse.Namespace) -> int:
    from vlmrl.stages.training import build_base_model

    _report(build_base_model(recipe_from_args(args), args.out, args.frames, overwrite=args.overwrite),
            "base")
    return 0


def cmd_sft(args: argparse.Namespace) -> int:
    from vlmrl.stages.training import train_sft

    recipe = recipe_from_args(args)
    if (status := relaunch(args, recipe)) is not None:
        return status
    tracking = assignments(args.tracking, "--tracking")
    _report(train_sft(recipe, args.base, args.frames, args.out, tracking,
                      resume=args.resume, overwrite=args.overwrite), "sft")
    end_processes()
    return 0


def cmd_rl(args: argparse.Namespace) -> int:
    from vlmrl.stages.training import train_rl

    recipe = recipe_from_args(args)
    if (status := relaunch(args, recipe)) is not None:
        return status
    tracking = assignments(args.tracking, "--tracking")
    _report(train_rl(recipe, args.sft, args.frames, args.out, tracking,
                     resume=args.resume, overwrite=args.overwrite), "rl")
    end_processes()
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", required=True, help="a recipe file, or a name from configs/")
    p.add_argument("--out", required=True, help="the checkpoint directory to write")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a checkpoint of this stage already at --out (nothing else is replaced)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set rl.max_steps=10 (repeatable)")


def _training(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frames", required=True, help="the frame dataset to train on")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue from the newest trainer checkpoint in <out>.work (default)")
    p.add_argument("--tracking", action="append", metavar="KEY=VALUE",
                   help="a tracking id recorded in lineage.json, e.g. mlflow_run_id=... ")
    p.add_argument("--launch", action=argparse.BooleanOptionalAction, default=True,
                   help="start the recipe's launch.num_processes processes with accelerate "
                        "launch (default); --no-launch trains in this process only")


def add_train_commands(sub: Any) -> None:
    """Add the ``train`` command group to the ``vlmrl`` sub-parsers."""
    train = sub.add_parser("train", help="build the base model, then SFT and RL checkpoints")
    stages = train.add_subparsers(dest="train_command", required=True)

    base = stages.add_parser("base", help="build the tiny model, or register a local model")
    _common(base)
    base.add_argument("--frames", nargs="*", default=[],
                      help="frame datasets whose text trains the tiny model's tokenizer")
    base.set_defaults(func=cmd_base)

    sft = stages.add_parser("sft", help="supervised fine-tuning of a base checkpoint")
    _common(sft)
    sft.add_argument("--base", required=True, help="the base checkpoint directory")
    _training(sft)
    sft.set_defaults(func=cmd_sft)

    rl = stages.add_parser("rl", help="GRPO-family RL of an SFT checkpoint")
    _common(rl)
    rl.add_argument("--sft", required=True, help="the SFT checkpoint directory")
    _training(rl)
    rl.set_defaults(func=cmd_rl)

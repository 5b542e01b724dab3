"""``vlmrl train base|sft|rl``: the training stages from the command line (see pipeline.py)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def _assignments(items: list[str] | None, what: str) -> dict[str, Any]:
    """["sft.max_steps=2", ...] -> {"sft": {"max_steps": 2}}; values are read as YAML.

    A malformed item raises a one-line ValueError naming it (no '=', an empty key or key
    part, a value that is not YAML); for ``--set`` the key path must also name a recipe key.
    """
    import yaml

    from vlmrl.recipes import Recipe, deep_merge, parse_yaml
    from vlmrl.train.config_io import ConfigError, check_key_path

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ValueError(f"{what} {item!r}: expected KEY=VALUE with a dotted key, "
                             "e.g. rl.max_steps=10")
        try:
            value: Any = parse_yaml(text)
        except yaml.YAMLError as exc:  # one line: what is wrong, not the parser's trace
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ValueError(f"{what} {item[:200]!r}: the value {text[:60]!r} is not valid "
                             f"YAML ({problem})") from None
        if what == "--set":  # recipe keys: a typo fails here, naming the assignment
            try:
                check_key_path(Recipe, parts)
            except ConfigError as exc:
                raise ValueError(f"{what} {item!r}: {exc}") from None
        for part in reversed(parts):
            value = {part: value}
        out = deep_merge(out, value)
    return out


def _recipe(args: argparse.Namespace):
    from vlmrl.recipes import load_recipe

    return load_recipe(args.recipe, _assignments(args.set, "--set"))


def _report(path, kind: str) -> None:
    from vlmrl.lineage import read_manifest

    metrics = read_manifest(path)["metrics"]
    keys = ("global_step", "resumed_from_step", "train_loss", "train_runtime", "last_reward")
    shown = {k: metrics[k] for k in keys if k in metrics}
    print(f"{kind} checkpoint: {path}" + (f"  {json.dumps(shown)}" if shown else ""))


def cmd_base(args: argparse.Namespace) -> int:
    from vlmrl.train.pipeline import build_base_model

    _report(build_base_model(_recipe(args), args.out, args.frames, overwrite=args.overwrite),
            "base")
    return 0


def cmd_sft(args: argparse.Namespace) -> int:
    from vlmrl.train.pipeline import train_sft

    tracking = _assignments(args.tracking, "--tracking")
    _report(train_sft(_recipe(args), args.base, args.frames, args.out, tracking,
                      resume=args.resume, overwrite=args.overwrite), "sft")
    return 0


def cmd_rl(args: argparse.Namespace) -> int:
    from vlmrl.train.pipeline import train_rl

    tracking = _assignments(args.tracking, "--tracking")
    _report(train_rl(_recipe(args), args.sft, args.frames, args.out, tracking,
                     resume=args.resume, overwrite=args.overwrite), "rl")
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

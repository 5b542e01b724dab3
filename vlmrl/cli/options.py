"""Options several ``vlmrl`` subcommands share: ``--set`` / ``--tracking`` assignments,
the recipe, and the frame-sampling flags (mapped to FrameOptions here and only here)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import TYPE_CHECKING, Any

from vlmrl.data.frames import FrameOptions

if TYPE_CHECKING:
    from vlmrl.recipes import Recipe


def frame_args(p: argparse.ArgumentParser) -> None:
    """Add the frame-sampling flags, each named for its FrameOptions field (see frame_options)."""
    d = FrameOptions()
    g = p.add_argument_group("frame options")
    g.add_argument("--fps", type=float, default=d.fps, help="frames sampled per second of video")
    g.add_argument("--min-frames", type=int, default=d.min_frames)
    g.add_argument("--max-frames", type=int, default=d.max_frames)
    g.add_argument("--num-frames", type=int, default=None, help="exact frame count (overrides fps)")
    g.add_argument("--min-pixels", type=int, default=d.min_pixels, help="per-frame lower bound")
    g.add_argument("--max-pixels", type=int, default=d.max_pixels, help="per-frame upper bound")
    g.add_argument("--total-pixels", type=int, default=None, help="pixel budget for a whole clip")
    g.add_argument("--image-min-pixels", type=int, default=d.image_min_pixels)
    g.add_argument("--image-max-pixels", type=int, default=d.image_max_pixels)
    g.add_argument("--frame-format", choices=("jpeg", "png"), default=d.frame_format)
    g.add_argument("--jpeg-quality", type=int, default=d.jpeg_quality)


def frame_options(args: argparse.Namespace, base: FrameOptions | None = None) -> FrameOptions:
    """`base` (default: FrameOptions()) with every frame flag that was given: a flag maps to
    the FrameOptions field of its dest name, so a new field needs only its flag."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(FrameOptions)
             if getattr(args, f.name, None) is not None}
    return dataclasses.replace(base or FrameOptions(), **given)


def assignments(items: list[str] | None, what: str) -> dict[str, Any]:
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


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    """The --recipe with its --set overrides."""
    from vlmrl.recipes import load_recipe

    return load_recipe(args.recipe, assignments(args.set, "--set"))

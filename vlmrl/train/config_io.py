"""Building the config dataclasses from plain mappings (a YAML recipe section), with checks.

The dataclasses' fields and type hints are the single source of truth: every key must be a
field, every value must match the field's type (``float`` accepts integers, ``tuple``
accepts lists, ``Literal`` lists the allowed values), nested dataclasses recurse. Errors
name the key path (``rl.temporal.alpha: expected a number, got 'x'``), so a typo in a
recipe fails loudly instead of silently training with a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, Union

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad key or value; `path` names it, e.g. "rl.temporal.alpha" ("" for the whole config)."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def config_from_dict(cls: type[T], data: Mapping[str, Any] | None, path: str = "") -> T:
    """Instantiate dataclass `cls` from `data`, checking keys and value types recursively.

    `path` prefixes key paths in errors (e.g. "rl"). Raises ConfigError (a ValueError).
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(path, f"expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        where = _join(path, key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            guess = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(where, f"unknown key{guess}; valid: {', '.join(sorted(fields))}")
        kwargs[key] = convert_value(value, hints[key], where)
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and name not in kwargs:
            raise ConfigError(_join(path, name), "required key missing")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:  # the dataclass's own checks (__post_init__)
        raise ConfigError(path, str(exc)) from None


def convert_value(value: Any, hint: Any, path: str) -> Any:
    """`value` checked against type hint `hint` (and converted: dataclasses built, ints to float)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        deepest: ConfigError | None = None
        for option in args:
            try:
                return convert_value(value, option, path)
            except ConfigError as exc:
                if exc.path != path and (deepest is None or len(exc.path) > len(deepest.path)):
                    deepest = exc
        # An error inside a nested value says more than "expected X or Y".
        raise deepest or ConfigError(path, f"expected {describe(hint)}, got {value!r}")
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(path, f"expected a mapping, got {value!r}")
        return config_from_dict(hint, value, path)
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(path, f"expected {describe(hint)}, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(path, f"expected a list of {len(args)} items, got {value!r}")
            kinds = list(args)
        else:
            kinds = [args[0] if args else Any] * len(value)
        items = [convert_value(v, k, f"{path}[{i}]") for i, (v, k) in enumerate(zip(value, kinds, strict=True))]
        return tuple(items) if tuple in (origin, hint) else items
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(path, f"expected a mapping, got {value!r}")
        key_hint, value_hint = args or (Any, Any)
        return {
            convert_value(k, key_hint, path): convert_value(v, value_hint, _join(path, k))
            for k, v in value.items()
        }
    ok = {
        type(None): value is None,
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(hint)
    if origin is Literal:
        ok = value in args
    elif ok is None:
        ok = isinstance(value, hint)
    if not ok:
        raise ConfigError(path, f"expected {describe(hint)}, got {value!r}")
    return float(value) if hint is float else value


def describe(hint: Any) -> str:
    """A type hint in words, for error messages."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(hint))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if dataclasses.is_dataclass(hint) or hint is dict or origin is dict:
        return "a mapping"
    if hint in (list, tuple) or origin in (list, tuple):
        return "a list"
    words = {type(None): "null", bool: "true or false", int: "an integer", float: "a number",
             str: "a string"}
    return words.get(hint, getattr(hint, "__name__", str(hint)))


def config_to_dict(config: Any) -> dict[str, Any]:
    """The inverse, for logging a config as run parameters."""
    return dataclasses.asdict(config)


@dataclass
class RunSettings:
    """Run-level TrainingArguments both trainer configs carry (inherited by SFT and RL).

    seed; bf16: mixed precision (a GPU that supports it); gradient_checkpointing: trade
    compute for memory; logging_steps, report_to: logging ("none", "mlflow", ...);
    save_strategy, save_steps, save_total_limit: the trainer's own checkpoints (what a run
    resumes from; the default keeps only the newest one).
    freeze_vision: train the language model only (the vision encoder keeps its weights).
    """

    seed: int = 42
    bf16: bool = False
    gradient_checkpointing: bool = False
    logging_steps: int = 10
    save_strategy: str = "no"
    save_steps: float = 500
    save_total_limit: int | None = 1
    report_to: str | list[str] = "none"
    freeze_vision: bool = False


# TrainingArguments fields that SFTTrainConfig and RLConfig share, under the same names.
SHARED_TRAINING_ARGS = (
    "learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay", "max_grad_norm",
    "per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs", "max_steps",
    "seed", "bf16", "logging_steps", "save_strategy", "save_steps", "save_total_limit", "report_to",
)


def shared_training_kwargs(config: Any) -> dict[str, Any]:
    """The TrainingArguments both trainers take from a config, plus activation checkpointing."""
    kwargs = {name: getattr(config, name) for name in SHARED_TRAINING_ARGS}
    kwargs["activation_checkpointing"] = config.gradient_checkpointing
    return kwargs

"""Building the trainer config dataclasses from plain mappings (a YAML recipe section)."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def config_from_dict(cls: type[T], data: Mapping[str, Any] | None) -> T:
    """Instantiate dataclass `cls` from `data`, recursing into nested dataclass fields.

    Unknown keys raise ValueError naming the valid ones, so a typo in a recipe fails loudly
    instead of silently training with a default.
    """
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; valid: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kind = hints.get(name)
        if dataclasses.is_dataclass(kind) and isinstance(value, Mapping):
            value = config_from_dict(kind, value)
        kwargs[name] = value
    return cls(**kwargs)


def config_to_dict(config: Any) -> dict[str, Any]:
    """The inverse, for logging a config as run parameters."""
    return dataclasses.asdict(config)

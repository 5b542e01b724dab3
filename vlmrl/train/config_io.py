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
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
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


def config_from_dict(
    cls: type[T], data: Mapping[str, Any] | None, path: str = "", rules: RuleTable | None = None
) -> T:
    """Instantiate dataclass `cls` from `data`, checking keys and value types recursively.

    `path` prefixes key paths in errors (e.g. "rl"). With `rules` (see `check_fields`) the
    given values are also checked against their bounds, before the dataclass's own checks
    run, so an error names the key, not a consequence. Raises ConfigError (a ValueError).
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
            raise unknown_key(where, key, fields)
        kwargs[key] = convert_value(value, hints[key], where, rules)
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and name not in kwargs:
            raise ConfigError(_join(path, name), "required key missing")
    if rules is not None:
        check_fields(cls, kwargs, rules, path)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:  # the dataclass's own checks (__post_init__)
        raise ConfigError(path, str(exc)) from None


def unknown_key(
    where: str, key: Any, valid: Iterable[str], what: str = "key", list_valid: bool = True
) -> ConfigError:
    """The error for a key that is not among `valid`, with the closest valid one as a hint."""
    valid = sorted(valid)
    close = difflib.get_close_matches(str(key), valid, n=1)
    guess = f" (did you mean {close[0]!r}?)" if close else ""
    listed = f"; valid: {', '.join(valid)}" if list_valid else ""
    return ConfigError(where, f"unknown {what}{guess}{listed}")


def check_key_path(cls: type, keys: Sequence[str], path: str = "") -> None:
    """Check that the dotted key path `keys` names a field of dataclass `cls` (recursively).

    The walk stops at a field that is not a dataclass (a mapping, a list, a value): what lies
    below it is checked when the value is converted. Raises ConfigError naming the path.
    """
    hint: Any = cls
    for key in keys:
        options = typing.get_args(hint) if typing.get_origin(hint) in (Union, types.UnionType) else (hint,)
        nested = [o for o in options if dataclasses.is_dataclass(o)]
        if not nested:
            return
        fields = {f.name for f in dataclasses.fields(nested[0]) if f.init}
        where = _join(path, key)
        if key not in fields:
            raise unknown_key(where, key, fields)
        hint, path = typing.get_type_hints(nested[0])[key], where


@dataclass(frozen=True)
class Rule:
    """A bound on a value: `test(value)` must hold, else the value "must be {text}"."""

    text: str
    test: Callable[[Any], bool]


def at_least(low: float) -> Rule:
    return Rule(f">= {low}", lambda v: v >= low)


def greater_than(low: float) -> Rule:
    return Rule(f"> {low}", lambda v: v > low)


def between(low: float, high: float, *, open_low: bool = False) -> Rule:
    if open_low:
        return Rule(f"in ({low}, {high}]", lambda v: low < v <= high)
    return Rule(f"in [{low}, {high}]", lambda v: low <= v <= high)


def one_of(values: Iterable[Any]) -> Rule:
    values = tuple(values)
    return Rule(f"one of {', '.join(map(repr, values))}", lambda v: v in values)


RuleTable = Mapping[type, Mapping[str, Rule]]


def check_fields(cls: type, values: Mapping[str, Any], rules: RuleTable, path: str = "") -> None:
    """Check the given field `values` of dataclass `cls`: numbers finite, each within its rule.

    `rules` maps a dataclass to {field: Rule}; a class's rules also apply to its subclasses
    (e.g. RunSettings' to both trainer configs). None skips a rule (an optional field left
    unset); nested dataclasses were checked when they were built. Raises ConfigError naming
    the key path, e.g. ``rl.learning_rate: must be > 0, got -1.0``.
    """
    table: dict[str, Rule] = {}
    for klass in reversed(cls.__mro__):
        table.update(rules.get(klass, {}))
    for name, item in values.items():
        where = _join(path, name)
        _check_finite(item, where)  # first: NaN fails every bound with a less clear message
        rule = table.get(name)
        if rule is not None and item is not None and not rule.test(item):
            raise ConfigError(where, f"must be {rule.text}, got {item!r}")


def _check_finite(value: Any, path: str) -> None:
    """Every float in `value` (through mappings and lists, e.g. trainer_kwargs) is finite."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            _check_finite(item, _join(path, key))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_finite(item, f"{path}[{i}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(path, f"must be a finite number, got {value!r}")


def check_trainer_kwargs(
    kwargs: Mapping[str, Any], trl_config: type, config: type, path: str,
    reserved: Mapping[str, str],
) -> None:
    """Check pass-through `trainer_kwargs` against the TRL config class's real fields.

    A key that is not a field of `trl_config` (a typo) fails; so does one that `config`
    (our dataclass) already has (set it there: e.g. rl.learning_rate) or that vlmrl sets
    itself (`reserved`: key -> why), which would otherwise be overridden or clash.
    """
    trl_fields = {f.name for f in dataclasses.fields(trl_config) if f.init}
    ours = {f.name for f in dataclasses.fields(config) if f.init}
    section = path.rsplit(".", 1)[0]  # "rl" of "rl.trainer_kwargs"
    for key in kwargs:
        where = _join(path, key)
        if key in reserved:
            raise ConfigError(where, f"set by vlmrl: {reserved[key]}")
        if key in ours:
            raise ConfigError(where, f"set {_join(section, key)} instead")
        if key not in trl_fields:
            raise unknown_key(where, key, trl_fields - ours - set(reserved),
                              f"{trl_config.__name__} field", list_valid=False)


def convert_value(value: Any, hint: Any, path: str, rules: RuleTable | None = None) -> Any:
    """`value` checked against type hint `hint` (and converted: dataclasses built, ints to float).

    `rules`: value rules for the dataclasses built on the way (see `config_from_dict`)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        deepest: ConfigError | None = None
        for option in args:
            try:
                return convert_value(value, option, path, rules)
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
        return config_from_dict(hint, value, path, rules)
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(path, f"expected {describe(hint)}, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(path, f"expected a list of {len(args)} items, got {value!r}")
            kinds = list(args)
        else:
            kinds = [args[0] if args else Any] * len(value)
        items = [convert_value(v, k, f"{path}[{i}]", rules)
                 for i, (v, k) in enumerate(zip(value, kinds, strict=True))]
        return tuple(items) if tuple in (origin, hint) else items
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(path, f"expected a mapping, got {value!r}")
        key_hint, value_hint = args or (Any, Any)
        return {
            convert_value(k, key_hint, path, rules): convert_value(v, value_hint, _join(path, k), rules)
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

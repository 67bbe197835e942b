"""Generic config overrides: `--set key=value` (every chosen experiment whose Config has the
field) or `--set NAME.key=value` (one experiment), validated against the frozen Config.

A value is read as a Python literal (`3`, `0.5`, `(8, 16)`, `None`, `True`; a bare
`1,2` is a tuple, and so is `relu,tanh` for a tuple of strings) and checked against the field's annotation; a string field also takes
the raw text (`--set corpus=stories.txt`). An unknown key or a value of the wrong type is
a ValueError that lists the valid fields with their types.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import types
import typing


def parse(items: list[str]) -> list[tuple[str | None, str, str]]:
    """["key=value", "name.key=value"] -> [(name or None, key, raw value)]."""
    parsed = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes KEY=VALUE or NAME.KEY=VALUE, got {item!r}")
        name, _, field = key.rpartition(".")
        parsed.append((name or None, field, raw))
    return parsed


def _fits(value, hint) -> tuple[bool, object]:
    """(whether value fits the type hint, the value converted: int -> float, list -> tuple)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any:
        return True, value
    if origin in (typing.Union, types.UnionType):
        for option in args:
            ok, converted = _fits(value, option)
            if ok:
                return True, converted
        return False, value
    if hint is type(None):
        return value is None, value
    if origin is tuple:
        if isinstance(value, list):
            value = tuple(value)
        if not isinstance(value, tuple):
            value = (value,)  # "--set widths=64" for a tuple field means (64,)
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        if len(items) != len(value):
            return False, value
        converted = [_fits(v, h) for v, h in zip(value, items)]
        return all(ok for ok, _ in converted), tuple(c for _, c in converted)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return True, float(value)
    if hint is int and isinstance(value, bool):
        return False, value
    return isinstance(value, hint), value


def _describe(config_type) -> str:
    hints = typing.get_type_hints(config_type)
    return ", ".join(f"{f.name} ({_type_name(hints[f.name])})" for f in dataclasses.fields(config_type))


def _type_name(hint) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def apply(config, overrides: list[tuple[str, str]], experiment: str):
    """config with each (key, raw value) replaced, after checking the key and the value's type."""
    config_type = type(config)
    hints = typing.get_type_hints(config_type)
    changes = {}
    for key, raw in overrides:
        if key not in hints:
            raise ValueError(f"{experiment} has no config field {key!r}; valid: {_describe(config_type)}")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            # bare words: "--set methods=simclr,byol" for a tuple of strings is ("simclr", "byol")
            value = tuple(part.strip() for part in raw.split(",")) if "," in raw else raw
        ok, converted = _fits(value, hints[key])
        if not ok and _fits(raw, hints[key])[0]:  # a string field given text that parses as a literal
            ok, converted = True, raw
        if not ok:
            raise ValueError(f"{experiment}: {key}={raw!r} is not of type {_type_name(hints[key])}; valid: "
                             f"{_describe(config_type)}")
        problem = _out_of_range(key, converted)
        if problem:
            raise ValueError(f"{experiment}: {key}={raw!r} {problem}")
        changes[key] = converted
    return dataclasses.replace(config, **changes)


def _numbers(value):
    if isinstance(value, tuple):
        for item in value:
            yield from _numbers(item)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value


def _out_of_range(key: str, value) -> str | None:
    """Why a value of the right type still cannot run (so it fails before the run, not 40 s in):
    an empty sequence, a non-finite float, a count below 1 (a seed, a layer index or a snapshot
    step may be 0, nothing may be negative)."""
    if isinstance(value, tuple) and not value:
        return "is empty; give at least one value"
    for number in _numbers(value):
        if isinstance(number, float) and not math.isfinite(number):
            return "is not finite"
        if isinstance(number, int) and number < 0:
            return "is negative"
    if isinstance(value, int) and not isinstance(value, bool) and value < 1 and not any(
            word in key for word in ("seed", "layer")):
        return "must be at least 1 (a count or size)"
    return None


def for_experiment(parsed: list[tuple[str | None, str, str]], name: str, config) -> list[tuple[str, str]]:
    """The overrides that apply to experiment `name`: scoped ones for it, and unscoped ones whose
    key its Config has."""
    fields = {f.name for f in dataclasses.fields(config)}
    return [(key, raw) for scope, key, raw in parsed if scope == name or (scope is None and key in fields)]


def from_record(config_type, recorded: dict):
    """The Config a JSON record was written with (lists back to tuples, each field type-checked)."""
    hints = typing.get_type_hints(config_type)
    values = {}
    for field in dataclasses.fields(config_type):
        if field.name not in recorded:
            continue  # a field added since the record was written keeps its default
        ok, converted = _fits(_tuples(recorded[field.name]), hints[field.name])
        if not ok:
            raise ValueError(f"the record's config field {field.name}={recorded[field.name]!r} is not of type "
                             f"{_type_name(hints[field.name])}")
        values[field.name] = converted
    return config_type(**values)


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value

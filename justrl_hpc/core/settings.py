"""The one way a settings dataclass is built from YAML data: every bad value is one UserError naming the field.

Used for the run's config (recipe, cluster, run), each job's settings (jobs/*.yaml) and the monitor's rules and
daemon (monitor/rules.yaml). A field's bounds live next to it, as dataclass field metadata (`setting()`).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import field, fields
from pathlib import Path
from typing import Any

from justrl_hpc.core.errors import UserError


def setting(
    default: Any = dataclasses.MISSING,
    lo: float | None = None,
    hi: float | None = None,
    choices: tuple[str, ...] | None = None,
    **kw: Any,
) -> Any:
    """A dataclass field with its bounds (`lo` ≤ value ≤ `hi`, or one of `choices`)."""
    meta = {"min": lo, "max": hi, "choices": choices}
    if default is dataclasses.MISSING:
        return field(metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    if origin in (list, tuple):
        (item,) = {a for a in typing.get_args(tp) if a is not Ellipsis} or {Any}
        return f"a list of {_type_name(item).removeprefix('an ').removeprefix('a ')}s"
    if origin is dict:
        return "a mapping"
    return str(tp)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_value(value: Any, tp: Any, where: str) -> Any:
    """`value` converted to `tp` (int → float, list → tuple only), or a UserError naming `where`.

    A `tuple[float, float]` is a band: [low, high] with low < high (null switches an Optional one off).
    """
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return check_value(value, args[0], where)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if _is_number(value):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin is tuple and typing.get_args(tp) == (float, float):
        if isinstance(value, list | tuple) and len(value) == 2 and all(map(_is_number, value)):
            if value[0] < value[1]:
                return (float(value[0]), float(value[1]))
        raise UserError(f"must be [low, high] with low < high (or null to switch it off), got {value!r}", where)
    elif origin in (list, tuple):
        item_tp = next((a for a in typing.get_args(tp) if a is not Ellipsis), Any)
        if isinstance(value, str) and item_tp is str and origin is list:
            return [value]
        if isinstance(value, list | tuple):
            items = [check_value(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
            return tuple(items) if origin is tuple else items
    elif origin is dict:
        if isinstance(value, dict):
            _, val_tp = typing.get_args(tp) or (str, Any)
            return {str(k): check_value(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    raise UserError(f"must be {_type_name(tp)}, got {value!r}", where)


def build(cls: type, data: Any, where: str) -> Any:
    """`cls(**data)` with every field checked; None or an absent section is the defaults."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"must be a mapping of settings, got {data!r}", where)
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise UserError(f"unknown setting; known: {', '.join(sorted(known))}", f"{where}.{unknown[0]}")
    kwargs = {}
    for name, value in data.items():
        f = known[name]
        path = f"{where}.{name}"
        value = check_value(value, hints[name], path)
        lo = f.metadata.get("min")
        if lo is not None and value is not None and value < lo:
            raise UserError(f"must be ≥ {lo:g}, got {value!r}", path)
        hi = f.metadata.get("max")
        if hi is not None and value is not None and value > hi:
            raise UserError(f"must be ≤ {hi:g}, got {value!r}", path)
        choices = f.metadata.get("choices")
        if choices:
            for i, item in enumerate(value if isinstance(value, list) else [value]):
                if item not in choices:
                    at = f"{path}[{i}]" if isinstance(value, list) else path
                    raise UserError(f"must be one of {', '.join(choices)}, got {item!r}", at)
        kwargs[name] = value
    missing = [
        f.name
        for f in fields(cls)
        if f.name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
    ]
    if missing:
        raise UserError(f"missing required setting {missing[0]!r}", where)
    return cls(**kwargs)


def read_yaml(path: Path, where: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping (an empty file is an empty one)."""
    import yaml

    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}", where) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path} is not valid YAML{at}", where) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping, got {type(data).__name__}", where)
    return data

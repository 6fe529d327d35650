"""Rebuild typed objects from JSON read back from disk, refusing any value of the wrong shape.

A cache entry can be valid JSON and still not be what the code expects (hand-edited, written by
another version, a disk error that left other JSON); :func:`from_json` turns each such case into one
:class:`ShapeError` instead of an AttributeError or KeyError deep inside a method.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


class ShapeError(ValueError):
    """The JSON value does not have the type's shape."""


def _check(value: Any, hint: Any, where: str) -> Any:
    """``value`` converted to ``hint`` (lists become tuples where a tuple is declared)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            try:
                return _check(value, arg, where)
            except ShapeError:
                continue
        raise ShapeError(f"{where}: {value!r:.60} matches none of {hint}")
    if hint is type(None):
        if value is not None:
            raise ShapeError(f"{where}: expected null")
        return None
    if dataclasses.is_dataclass(hint):
        return from_json(hint, value, where)
    if origin is tuple or origin is list:
        if not isinstance(value, list):
            raise ShapeError(f"{where}: expected a list, got {type(value).__name__}")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ShapeError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_check(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_check(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ShapeError(f"{where}: expected an object, got {type(value).__name__}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ShapeError(f"{where}: expected a number, got {type(value).__name__}")
        return float(value)
    if isinstance(hint, type):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise ShapeError(f"{where}: expected {hint.__name__}, got {type(value).__name__}")
        return value
    raise ShapeError(f"{where}: cannot check type {hint}")  # a declaration this module does not know


def from_json(cls: type[T], data: Any, where: str = "value") -> T:
    """An instance of the dataclass ``cls`` from ``data``, every field checked against its annotation."""
    if not isinstance(data, dict):
        raise ShapeError(f"{where}: expected an object for {cls.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in data:
            kwargs[f.name] = _check(data[f.name], hints[f.name], f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ShapeError(f"{where}: missing {f.name!r}")
    return cls(**kwargs)


def check(data: Any, hint: Any, where: str = "value") -> Any:
    """``data`` checked against a type hint such as ``list[tuple[int, int, float]]``."""
    return _check(data, hint, where)

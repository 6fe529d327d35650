"""Rebuild typed objects from JSON read back from disk, refusing any value of the wrong shape.

A cache entry can be valid JSON and still not be what the code expects (hand-edited, written by
another version, a disk error that left other JSON); :func:`from_json` turns each such case into one
:class:`ShapeError` instead of an AttributeError or KeyError deep inside a method.

A study's run file holds ~14,000 records and millions of values, so the checks are built once per
type hint (:func:`_shape`, :func:`_hints`) and an item's path in a list (``units[3][0]``) is spelled
only when it is wrong.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


class ShapeError(ValueError):
    """The JSON value does not have the type's shape."""


@functools.lru_cache(maxsize=None)
def _shape(hint: Any) -> tuple[Any, tuple[Any, ...], bool]:
    """The hint's origin and arguments, and whether it is a dataclass."""
    return typing.get_origin(hint), typing.get_args(hint), dataclasses.is_dataclass(hint)


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)  # evaluates the string annotations: ~0.6 ms a call


def _check(value: Any, hint: Any, where: str) -> Any:
    """``value`` converted to ``hint`` (lists become tuples where a tuple is declared)."""
    if hint is Any:
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ShapeError(f"{where}: expected a number, got {type(value).__name__}")
        try:
            return float(value)
        except OverflowError:  # an integer past the floats' range
            raise ShapeError(f"{where}: the number {value!r:.40} is too large") from None
    origin, args, is_dataclass = _shape(hint)
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
    if is_dataclass:
        return from_json(hint, value, where)
    if origin is tuple or origin is list:
        if not isinstance(value, list):
            raise ShapeError(f"{where}: expected a list, got {type(value).__name__}")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ShapeError(f"{where}: expected {len(args)} items, got {len(value)}")
            pairs = zip(value, args)
        else:
            pairs = zip(value, itertools.repeat(args[0] if args else Any))
        out, i = [], 0
        try:
            for i, (v, a) in enumerate(pairs):
                out.append(_check(v, a, ""))
        except ShapeError as exc:  # the item's message starts with its path below it: put this one before
            raise ShapeError(f"{where}[{i}]{exc}") from None
        return tuple(out) if origin is tuple else out
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ShapeError(f"{where}: expected an object, got {type(value).__name__}")
        return value
    if isinstance(hint, type):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise ShapeError(f"{where}: expected {hint.__name__}, got {type(value).__name__}")
        return value
    raise ShapeError(f"{where}: cannot check type {hint}")  # a declaration this module does not know


def from_json(cls: type[T], data: Any, where: str = "value") -> T:
    """An instance of the dataclass ``cls`` from ``data``, every field checked against its annotation."""
    if not isinstance(data, dict):
        raise ShapeError(f"{where}: expected an object for {cls.__name__}, got {type(data).__name__}")
    hints = _hints(cls)
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

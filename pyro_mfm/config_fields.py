"""The declarations a configuration field carries, and the one validator that checks a value against them.

A field's type annotation (``int``, ``float``, ``bool``, ``str``, a ``Literal[...]`` of choices, or
``X | dict[str, X]`` for a value per modality) and its metadata from :func:`setting` (the bounds of a number, the
pattern of a string) say what it accepts; :func:`check_fields` checks every field of a table against them.
Integers are not accepted for booleans nor booleans for numbers; an integer is accepted for a float field (and
stored as a float); NaN and infinities never are.
"""

from __future__ import annotations

import dataclasses
import math
import re
import reprlib
import types
import typing
from dataclasses import field
from typing import Literal


class ConfigError(ValueError):
    """A bad configuration file or override; the message names the file, table and key."""


def setting(default, *, ge=None, gt=None, le=None, lt=None, pattern: str | None = None, what: str | None = None):
    """A dataclass field with its accepted range: numbers within the bounds ``ge <= v``, ``gt < v``, ``v <= le``,
    ``v < lt`` (each value of a per-modality table too), strings matching ``pattern`` in full (``what`` describes
    the pattern in error messages)."""
    return field(default=default, metadata={"ge": ge, "gt": gt, "le": le, "lt": lt, "pattern": pattern, "what": what})


class _Mismatch(Exception):
    """A value that does not fit a declaration; the argument says what was expected."""


def _bounds_text(meta) -> str:
    lo = f"[{meta['ge']}" if meta.get("ge") is not None else f"({meta['gt']}" if meta.get("gt") is not None else None
    hi = f"{meta['le']}]" if meta.get("le") is not None else f"{meta['lt']})" if meta.get("lt") is not None else None
    if lo and hi:
        return f" in {lo}, {hi}"
    if lo:
        return f" {'>=' if lo[0] == '[' else '>'} {lo[1:]}"
    if hi:
        return f" {'<=' if hi[-1] == ']' else '<'} {hi[:-1]}"
    return ""


def _in_bounds(v, meta) -> bool:
    ge, gt, le, lt = (meta.get(k) for k in ("ge", "gt", "le", "lt"))
    return (ge is None or v >= ge) and (gt is None or v > gt) and (le is None or v <= le) and (lt is None or v < lt)


def _describe(tp, meta) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = [repr(c) for c in typing.get_args(tp)]
        return " or ".join(choices) if len(choices) <= 2 else "one of " + ", ".join(choices)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(t, meta) for t in typing.get_args(tp))
    if origin is dict:
        return f"a table of modality name -> {_describe(typing.get_args(tp)[1], meta)}"
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer" + _bounds_text(meta)
    if tp is float:
        return "a finite number" + _bounds_text(meta)
    if tp is str:
        return meta.get("what") or ("a string" if not meta.get("pattern") else f"a string matching {meta['pattern']}")
    raise TypeError(f"no validator for the annotation {tp!r}")  # a declaration mistake in this module


def _check(value, tp, meta):
    """``value`` as the field declared by ``tp`` and ``meta`` stores it, or :class:`_Mismatch`."""
    origin = typing.get_origin(tp)
    ok = False
    if origin is Literal:
        ok = any(type(value) is type(c) and value == c for c in typing.get_args(tp))
    elif origin in (typing.Union, types.UnionType):
        for t in typing.get_args(tp):
            try:
                return _check(value, t, meta)
            except _Mismatch:
                pass
    elif origin is dict:
        key_tp, value_tp = typing.get_args(tp)
        if isinstance(value, dict) and value and all(isinstance(k, key_tp) and k for k in value):
            try:
                return {k: _check(v, value_tp, meta) for k, v in value.items()}
            except _Mismatch:
                pass
    elif tp is bool:
        ok = type(value) is bool
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool) and _in_bounds(value, meta)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                value = float(value)
            except OverflowError:  # an integer beyond any float
                raise _Mismatch(_describe(tp, meta)) from None
            ok = math.isfinite(value) and _in_bounds(value, meta)
    elif tp is str:
        pattern = meta.get("pattern")
        ok = isinstance(value, str) and (pattern is None or re.fullmatch(pattern, value) is not None)
    else:
        raise TypeError(f"no validator for the annotation {tp!r}")
    if not ok:
        raise _Mismatch(_describe(tp, meta))
    return value


SHORT_REPR = reprlib.Repr()
SHORT_REPR.maxstring = SHORT_REPR.maxother = 60


def check_fields(table, name: str, where: str = "<config>") -> None:
    """Check (and normalise: an integer for a float becomes a float) every field of the dataclass ``table``, the
    table ``name`` of a configuration, against its declaration; raises :class:`ConfigError` naming ``where``, the
    table, the key, the value and what was expected."""
    hints = typing.get_type_hints(type(table))
    for f in dataclasses.fields(table):
        value = getattr(table, f.name)
        try:
            setattr(table, f.name, _check(value, hints[f.name], f.metadata))
        except _Mismatch as e:
            raise ConfigError(f"{where}: {name}.{f.name} = {SHORT_REPR.repr(value)}: expected {e}") from None

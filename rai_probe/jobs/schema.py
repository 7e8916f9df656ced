"""Typed settings: dataclasses describe a job's config, :func:`check_settings` holds a composed config to them.

Every job (probe, train, evaluate) describes its settings as dataclasses
whose field types say what each value must be, and whose metadata (see
:func:`setting`) gives its range. :func:`check_settings` checks a plain
mapping (a Hydra config after ``OmegaConf.to_container``) against such a
dataclass **strictly**, in one place, before anything heavy is loaded:

* ``bool`` fields take only ``True`` / ``False``. The strings ``"no"``,
  ``"off"``, ``"false"`` are not booleans (``bool("no")`` is true), so they
  are refused, never reinterpreted.
* ``int`` fields take integers (not booleans); ``float`` fields take finite
  integers or floats (not booleans, not strings such as ``"1.5"``).
* ``str`` fields take strings; ``Literal[...]`` one of the listed values;
  ``list[float]`` / ``tuple[float, float]`` sequences of such; nested
  dataclasses nested mappings; ``Optional[...]`` also ``None``; ``Any``
  anything.
* A key the dataclass does not declare is an error, unless the class sets
  ``open_keys = True`` (its extra keys go to a lower layer that names them).

A failure is a :class:`~rai_probe.errors.SettingError` whose ``setting`` is
the dotted key (``"model.trust_checkpoint"``), so the job can name the
override to fix.

Examples
--------
>>> from dataclasses import dataclass
>>> @dataclass
... class Demo:
...     steps: int = setting(10, low=1)
...     verbose: bool = False
>>> check_settings({"steps": 5, "verbose": True}, Demo)
>>> check_settings({"steps": 5, "verbose": "no"}, Demo)
Traceback (most recent call last):
...
rai_probe.errors.SettingError: `verbose` must be true or false; got 'no' (a string: on the command line write verbose=true or verbose=false)
>>> check_settings({"steps": 0}, Demo)
Traceback (most recent call last):
...
rai_probe.errors.SettingError: `steps` must be an integer >= 1; got 0
>>> check_settings({"stpes": 3}, Demo)
Traceback (most recent call last):
...
rai_probe.errors.UnknownSettingError: unknown setting `stpes`; allowed: steps, verbose
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, Mapping, Sequence, Union

from ..errors import UNSET, SettingError, SettingTypeError, UnknownSettingError

__all__ = ["setting", "check_settings", "check_job_settings", "describe"]

_NONE = type(None)


def setting(
    default: Any = dataclasses.MISSING,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    default_factory: Any = dataclasses.MISSING,
    length: int | None = None,
    help: str = "",
) -> Any:
    """A dataclass field with a range: ``low <= value`` (``<`` with ``low_open``), ``value <= high``.

    ``length`` fixes the length of a sequence value. ``help`` is a short
    description used in messages.
    """
    metadata = {"low": low, "high": high, "low_open": low_open, "length": length, "help": help}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _key(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return f"{value!r} (a string)"
    return repr(value)


def _fail(key: str, value: Any, allowed: str) -> SettingError:
    shown = _shown(value)
    if isinstance(value, str) and allowed == "true or false":
        shown = f"{value!r} (a string: on the command line write {key}=true or {key}=false)"
    return SettingError(f"`{key}` must be {allowed}; got {shown}", setting=key, value=value)


def _range_text(meta: Mapping[str, Any], kind: str) -> str:
    low, high = meta.get("low"), meta.get("high")
    if low is not None and high is not None:
        return f"{kind} within {'(' if meta.get('low_open') else '['}{low:g}, {high:g}]"
    if low is not None:
        return f"{kind} {'>' if meta.get('low_open') else '>='} {low:g}"
    if high is not None:
        return f"{kind} <= {high:g}"
    return kind


def _in_range(value: float, meta: Mapping[str, Any]) -> bool:
    low, high = meta.get("low"), meta.get("high")
    if low is not None and (value <= low if meta.get("low_open") else value < low):
        return False
    return high is None or value <= high


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_value(key: str, value: Any, hint: Any, meta: Mapping[str, Any]) -> None:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return
    if origin in (Union, types.UnionType):
        if value is None and _NONE in args:
            return
        options = [arg for arg in args if arg is not _NONE]
        failures = []
        for option in options:
            try:
                _check_value(key, value, option, meta)
                return
            except SettingError as error:
                failures.append(error)
        if len(failures) == 1:
            raise failures[0]
        allowed = " or ".join(describe(option, meta) for option in options)
        raise _fail(key, value, allowed + (" or null" if _NONE in args else ""))
    if hint is bool:
        if not isinstance(value, bool):
            raise _fail(key, value, "true or false")
        return
    if hint is int:
        if not _is_int(value) or not _in_range(value, meta):
            raise _fail(key, value, _range_text(meta, "an integer"))
        return
    if hint is float:
        if not _is_number(value) or not math.isfinite(value) or not _in_range(value, meta):
            raise _fail(key, value, _range_text(meta, "a finite number"))
        return
    if hint is str:
        if not isinstance(value, str):
            raise _fail(key, value, "a string")
        return
    if origin is Literal:
        if not any(value == arg and type(value) is type(arg) for arg in args):
            raise _fail(key, value, "one of " + ", ".join(map(str, args)))
        return
    if origin in (list, tuple, Sequence):
        if not isinstance(value, (list, tuple)):
            raise _fail(key, value, describe(hint, meta))
        length = meta.get("length") or (len(args) if origin is tuple and Ellipsis not in args else None)
        if length is not None and len(value) != length:
            raise _fail(key, value, describe(hint, meta))
        item_hint = args[0] if args else Any
        item_meta = {name: meta.get(name) for name in ("low", "high", "low_open")}
        for index, item in enumerate(value):
            _check_value(f"{key}[{index}]", item, item_hint, item_meta)
        return
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise _fail(key, value, "a mapping of settings")
        return
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise _fail(key, value, "a group of settings")
        check_settings(value, hint, prefix=key)
        return
    raise TypeError(f"check_settings: unsupported type {hint!r} for `{key}`")  # a schema bug


def describe(hint: Any, meta: Mapping[str, Any] | None = None) -> str:
    """Words for what a value of type ``hint`` (with range ``meta``) must be.

    Examples
    --------
    >>> describe(float, {"low": 0, "low_open": True})
    'a finite number > 0'
    >>> describe(list[float], {"length": 2})
    'a list of 2 numbers'
    """
    meta = meta or {}
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return "true or false"
    if hint is int:
        return _range_text(meta, "an integer")
    if hint is float:
        return _range_text(meta, "a finite number")
    if hint is str:
        return "a string"
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin in (list, tuple, Sequence):
        length = meta.get("length") or (len(args) if origin is tuple and Ellipsis not in args else None)
        item = {int: "integers", float: "numbers", str: "strings"}.get(args[0] if args else Any, "values")
        return f"a list of {length} {item}" if length else f"a list of {item}"
    if origin in (Union, types.UnionType):
        return " or ".join(describe(arg, meta) if arg is not _NONE else "null" for arg in args)
    return getattr(hint, "__name__", str(hint))


def check_settings(values: Mapping[str, Any], schema: type, *, prefix: str = "") -> None:
    """Check ``values`` against the dataclass ``schema``, strictly; raise on the first problem.

    Parameters
    ----------
    values : Mapping
        Plain settings (nested mappings, lists, numbers, strings, None).
    schema : dataclass type
        Field types and :func:`setting` ranges. A field with no default is
        required (a missing key or Hydra's ``"???"`` is an error). With the
        class attribute ``open_keys = True``, undeclared keys pass unchecked.
    prefix : str, optional
        Dotted key of ``values`` inside the whole config (for messages).

    Raises
    ------
    SettingError
        A value of the wrong type or out of range (``setting`` is the dotted key).
    SettingTypeError
        An undeclared key, or a missing required one.
    """
    if not isinstance(values, Mapping):
        raise _fail(prefix or "config", values, "a group of settings")
    hints = typing.get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema)}
    if not getattr(schema, "open_keys", False):
        unknown = sorted(set(values) - set(fields))
        if unknown:
            name = _key(prefix, unknown[0])
            raise UnknownSettingError(
                f"unknown setting `{name}`; allowed: {', '.join(fields)}", setting=name, value=values[unknown[0]]
            )
    for name, spec in fields.items():
        key = _key(prefix, name)
        required = spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING
        if name not in values or values[name] == "???":
            if required:
                raise SettingTypeError(f"`{key}` is required", setting=key, value=UNSET)
            continue
        _check_value(key, values[name], hints[name], spec.metadata)


def check_job_settings(settings: Mapping[str, Any], schema: type, overrides: Sequence[str] = ()) -> None:
    """:func:`check_settings` for a job: a problem is a :class:`~rai_probe.jobs.errors.ConfigError`.

    The error names the override as the user typed it (``+foo`` for an
    unknown key they added), so the job can print one paragraph.
    """
    from .errors import ConfigError

    try:
        check_settings(settings, schema)
    except SettingError as error:
        raise ConfigError.from_setting_error(error, error.setting or "config", overrides) from None

"""Declarative, per-param-group validation of optimizer options.

Every option of every optimizer in :mod:`rai_probe.optim` is stored per param
group: the constructor value is the default, a param-group dict may override
it, and so may ``add_param_group`` later. Each class declares its options as a
mapping ``name -> check`` (class attribute ``_options``, merged along the MRO);
a check is called as ``check(where, name, value)`` and raises a ``ValueError``
naming the option, the offending value and the allowed range. A missing
``REQUIRED`` option raises ``TypeError``. Use these checks when you write your
own transforming optimizer (see docs/optimizers.md).

Examples
--------
>>> from rai_probe.optim import options
>>> options.unit_interval("MyOptim", "q", 0.5)  # fine: returns None
>>> options.unit_interval("MyOptim", "q", 1.5)
Traceback (most recent call last):
...
ValueError: MyOptim: option `q` must be a real number within [0, 1]; got q=1.5
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Mapping

import torch

__all__ = [
    "REQUIRED",
    "TINY",
    "OptionCheck",
    "real",
    "unit_interval",
    "positive",
    "nonnegative",
    "optional_real",
    "radius",
    "bounds",
    "boolean",
    "generator",
    "param_ndim",
    "collect_options",
    "check_options",
    "fill_defaults",
]

#: Smallest positive normal float32: the default lower bound for divisors.
TINY = torch.finfo(torch.float32).tiny


class _Required:
    """Sentinel for an option that has no default and must be given."""

    _instance: "_Required | None" = None

    def __new__(cls) -> "_Required":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "<required parameter>"

    def __copy__(self) -> "_Required":
        return self

    def __deepcopy__(self, memo: dict) -> "_Required":
        return self

    def __reduce__(self) -> str:
        return "REQUIRED"


#: Default value of an option that the user must supply (constructor or every group).
REQUIRED = _Required()

#: A check receives ``(where, name, value)`` and raises on bad input.
OptionCheck = Callable[[str, str, Any], None]


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _fail(where: str, name: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"{where}: option `{name}` must be {allowed}; got {name}={value!r}")


def real(where: str, name: str, value: Any) -> None:
    """A finite real number."""
    if not _is_real(value) or not math.isfinite(value):
        raise _fail(where, name, value, "a finite real number")


def unit_interval(where: str, name: str, value: Any) -> None:
    """A real number within [0, 1]."""
    if not _is_real(value) or not 0.0 <= value <= 1.0:
        raise _fail(where, name, value, "a real number within [0, 1]")


def positive(where: str, name: str, value: Any) -> None:
    """A finite real number > 0."""
    if not _is_real(value) or not (0.0 < value < math.inf):
        raise _fail(where, name, value, "a finite real number > 0")


def nonnegative(where: str, name: str, value: Any) -> None:
    """A finite real number >= 0."""
    if not _is_real(value) or not (0.0 <= value < math.inf):
        raise _fail(where, name, value, "a finite real number >= 0")


def optional_real(where: str, name: str, value: Any) -> None:
    """``None`` or a real number (infinities allowed: they mean 'unbounded')."""
    if value is not None and (not _is_real(value) or math.isnan(value)):
        raise _fail(where, name, value, "None or a real number")


def radius(where: str, name: str, value: Any) -> None:
    """A finite real number > 0, or a 1-D floating tensor of them (one radius per row)."""
    if isinstance(value, torch.Tensor):
        if (
            value.ndim != 1
            or not value.is_floating_point()
            or not bool(torch.isfinite(value).all())
            or not bool((value > 0).all())
        ):
            raise _fail(
                where, name, value, "a finite real number > 0 or a 1-D floating tensor of them"
            )
        return
    positive(where, name, value)


def bounds(where: str, name: str, value: Any) -> None:
    """``None`` or a pair ``(lower, upper)`` of numbers or tensors with ``lower <= 0 <= upper``."""
    if value is None:
        return
    allowed = "None or a pair (lower, upper) of numbers or tensors with lower <= 0 <= upper"
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise _fail(where, name, value, allowed)
    lower, upper = value
    for side, sign in ((lower, -1), (upper, 1)):
        if isinstance(side, torch.Tensor):
            ok = side.is_floating_point() and not bool(torch.isnan(side).any()) and bool((sign * side >= 0).all())
        else:
            ok = _is_real(side) and not math.isnan(side) and sign * side >= 0
        if not ok:
            raise _fail(where, name, value, allowed)


def boolean(where: str, name: str, value: Any) -> None:
    """``True`` or ``False``."""
    if not isinstance(value, bool):
        raise _fail(where, name, value, "True or False")


def generator(where: str, name: str, value: Any) -> None:
    """A :class:`torch.Generator` (on any device)."""
    if not isinstance(value, torch.Generator):
        raise TypeError(
            f"{where}: option `{name}` must be a torch.Generator; got {type(value).__name__}"
        )


def param_ndim(where: str, name: str, value: Any) -> None:
    """``None`` or an integer (its range is checked against each parameter)."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise _fail(where, name, value, "None or an integer")


def collect_options(cls: type) -> dict[str, OptionCheck]:
    """Merge the ``_options`` declared along ``cls``'s MRO (subclasses win)."""
    merged: dict[str, OptionCheck] = {}
    for klass in reversed(cls.__mro__):
        merged.update(klass.__dict__.get("_options", {}))
    return merged


def check_options(
    where: str, options: Mapping[str, OptionCheck], values: Mapping[str, Any], *, complete: bool
) -> None:
    """Validate ``values`` against ``options``.

    With ``complete=True`` (a param group) a missing or REQUIRED option raises
    ``TypeError``; with ``complete=False`` (constructor defaults) REQUIRED
    values are allowed, because every group may still supply them.
    """
    for name, check in options.items():
        if name not in values or values[name] is REQUIRED:
            if complete:
                raise TypeError(
                    f"{where}: missing required option `{name}`: pass it to the "
                    f"constructor or set it in every param group"
                )
            continue
        check(where, name, values[name])


def fill_defaults(defaults: Mapping[str, Any] | None, **options: Any) -> dict[str, Any]:
    """A copy of ``defaults`` with ``options`` added where not already present."""
    merged = dict(defaults or {})
    for name, value in options.items():
        merged.setdefault(name, value)
    return merged

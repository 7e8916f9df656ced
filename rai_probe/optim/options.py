"""Declarative, per-param-group validation of optimizer options.

Every option of every optimizer in :mod:`rai_probe.optim` is stored per param
group: the constructor value is the default, a param-group dict may override
it, and so may ``add_param_group`` later. Each class declares its options as a
mapping ``name -> check`` (class attribute ``_options``, merged along the MRO);
a check is called as ``check(where, name, value)`` and raises a
:class:`~rai_probe.errors.SettingError` (a ``ValueError``) naming the option,
the offending value and the allowed range, with the option's name in its
``setting`` attribute. A missing ``REQUIRED`` option raises
:class:`~rai_probe.errors.SettingTypeError` (a ``TypeError``). Use these checks when you write your
own transforming optimizer (see docs/optimizers.md).

Examples
--------
>>> from rai_probe.optim import options
>>> options.unit_interval("MyOptim", "q", 0.5)  # fine: returns None
>>> options.unit_interval("MyOptim", "q", 1.5)
Traceback (most recent call last):
...
rai_probe.errors.SettingError: MyOptim: option `q` must be a real number within [0, 1]; got q=1.5
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Mapping

import torch

from ..errors import SettingError, SettingTypeError

__all__ = [
    "REQUIRED",
    "TINY",
    "OptionCheck",
    "real",
    "unit_interval",
    "positive",
    "nonnegative",
    "positive_integer",
    "integer",
    "one_of",
    "optional_callable",
    "optional_real",
    "lower_bound",
    "upper_bound",
    "radius",
    "bounds",
    "boolean",
    "generator",
    "param_ndim",
    "INNER_OPTIONS",
    "check_inner_options",
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


def _fail(where: str, name: str, value: Any, allowed: str) -> SettingError:
    return SettingError(f"{where}: option `{name}` must be {allowed}; got {name}={value!r}", setting=name, value=value)


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


def integer(low: int, *, optional: bool = False) -> OptionCheck:
    """A check that the value is an integer ``>= low`` (not a bool); with ``optional``, also None.

    An optional integer is a seed: it must also be below ``2**64``.

    Examples
    --------
    >>> integer(0)("MyOptim", "min_numel", 4)  # fine: returns None
    >>> integer(1, optional=True)("MyOptim", "seed", 0)
    Traceback (most recent call last):
    ...
    rai_probe.errors.SettingError: MyOptim: option `seed` must be None or an integer within [1, 2**64); got seed=0
    """
    allowed = f"None or an integer within [{low}, 2**64)" if optional else f"an integer >= {low}"

    def check(where: str, name: str, value: Any) -> None:
        if optional and value is None:
            return
        whole = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        if not whole or value < low or (optional and value >= 2**64):
            raise _fail(where, name, value, allowed)

    return check


#: An integer >= 1 (not a bool): ``integer(1)``.
positive_integer = integer(1)


def one_of(*allowed: Any) -> OptionCheck:
    """A check that the value is one of ``allowed`` (strings or None).

    Examples
    --------
    >>> one_of("mean", "max")("MyOptim", "aggregate", "median")
    Traceback (most recent call last):
    ...
    rai_probe.errors.SettingError: MyOptim: option `aggregate` must be one of 'mean', 'max'; got aggregate='median'
    """
    listed = ", ".join(map(repr, allowed))

    def check(where: str, name: str, value: Any) -> None:
        if not (isinstance(value, (str, type(None))) and value in allowed):
            raise _fail(where, name, value, f"one of {listed}")

    return check


def optional_callable(where: str, name: str, value: Any) -> None:
    """``None`` or a callable (a :class:`~rai_probe.errors.SettingTypeError` otherwise)."""
    if value is not None and not callable(value):
        raise SettingTypeError(
            f"{where}: option `{name}` must be None or a callable; got {type(value).__name__}",
            setting=name,
            value=value,
        )


def optional_real(where: str, name: str, value: Any) -> None:
    """``None`` or a real number (infinities allowed: they mean 'unbounded')."""
    if value is not None and (not _is_real(value) or math.isnan(value)):
        raise _fail(where, name, value, "None or a real number")


def lower_bound(where: str, name: str, value: Any) -> None:
    """``None`` or a real number below +inf (``-inf`` means 'unbounded below')."""
    if value is not None and (not _is_real(value) or math.isnan(value) or value == math.inf):
        raise _fail(where, name, value, "None or a real number < inf (-inf: unbounded)")


def upper_bound(where: str, name: str, value: Any) -> None:
    """``None`` or a real number above -inf (``inf`` means 'unbounded above')."""
    if value is not None and (not _is_real(value) or math.isnan(value) or value == -math.inf):
        raise _fail(where, name, value, "None or a real number > -inf (inf: unbounded)")


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
        raise SettingTypeError(
            f"{where}: option `{name}` must be a torch.Generator; got {type(value).__name__}",
            setting=name,
            value=value,
        )


def param_ndim(where: str, name: str, value: Any) -> None:
    """``None`` or an integer (its range is checked against each parameter)."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise _fail(where, name, value, "None or an integer")


def _learning_rate(where: str, name: str, value: Any) -> None:
    """A finite real number >= 0, or a one-element floating tensor holding one."""
    if isinstance(value, torch.Tensor):
        ok = value.numel() == 1 and value.is_floating_point()
        if ok:
            number = float(value)  # checked once per group, not in a step
            ok = math.isfinite(number) and number >= 0
        if not ok:
            raise _fail(where, name, value, "a finite real number >= 0 (or a one-element tensor of one)")
        return
    nonnegative(where, name, value)


def _pair(low: float, high: float, *, high_open: bool = False) -> OptionCheck:
    """A check that the value is a pair of finite reals within [low, high] (or [low, high))."""
    interval = f"[{low}, {high})" if high_open else f"[{low}, {high}]"
    allowed = f"a pair of finite real numbers within {interval}"

    def check(where: str, name: str, value: Any) -> None:
        ok = isinstance(value, (tuple, list)) and len(value) == 2 and all(
            _is_real(v) and math.isfinite(v) and low <= v and (v < high if high_open else v <= high)
            for v in value
        )
        if not ok:
            raise _fail(where, name, value, allowed)

    return check


def _epsilon(where: str, name: str, value: Any) -> None:
    """A finite real number >= 0, or a tuple of them and ``None`` (Adafactor's ``(None, 1e-3)``)."""
    if isinstance(value, (tuple, list)):
        ok = all(v is None or (_is_real(v) and 0.0 <= v < math.inf) for v in value)
        if not ok:
            raise _fail(where, name, value, "a finite real number >= 0, or a tuple of them and None")
        return
    nonnegative(where, name, value)


#: Hyper-parameters of ``torch.optim`` optimizers whose meaning is the same in
#: every optimizer that has them, with their checks. A transforming optimizer
#: applies these to its inner optimizer's param groups (at construction and in
#: ``add_param_group``), so a NaN or Inf learning rate, momentum or epsilon is
#: refused with the option's name instead of silently poisoning every step.
INNER_OPTIONS: dict[str, OptionCheck] = {
    "lr": _learning_rate,
    "momentum": nonnegative,
    "dampening": real,
    "weight_decay": nonnegative,
    "eps": _epsilon,
    "betas": _pair(0.0, 1.0, high_open=True),
    "alpha": real,
    "rho": unit_interval,
    "lr_decay": nonnegative,
    "initial_accumulator_value": nonnegative,
    "momentum_decay": nonnegative,
    "lambd": real,
    "t0": real,
    "tolerance_grad": nonnegative,
    "tolerance_change": nonnegative,
    "etas": _pair(0.0, math.inf, high_open=True),
    "step_sizes": _pair(0.0, math.inf, high_open=True),
}


def check_inner_options(where: str, values: Mapping[str, Any], *, skip: Any = ()) -> None:
    """Validate an inner optimizer's options: :data:`INNER_OPTIONS` by name, and no NaN anywhere.

    A real number that is NaN is refused whatever its name (no optimizer
    option means anything by NaN); names in :data:`INNER_OPTIONS` must also
    pass their check (finite, and in range). ``skip`` names options checked
    elsewhere (the transforming optimizer's own).
    """
    for name, value in values.items():
        if name == "params" or name in skip or value is REQUIRED:
            continue
        check = INNER_OPTIONS.get(name)
        if check is not None:
            check(where, name, value)
        elif _is_real(value) and math.isnan(value):
            raise _fail(where, name, value, "a number, not NaN")


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
                raise SettingTypeError(
                    f"{where}: missing required option `{name}`: pass it to the "
                    f"constructor or set it in every param group",
                    setting=name,
                )
            continue
        check(where, name, values[name])


def fill_defaults(defaults: Mapping[str, Any] | None, **options: Any) -> dict[str, Any]:
    """A copy of ``defaults`` with ``options`` added where not already present."""
    merged = dict(defaults or {})
    for name, value in options.items():
        merged.setdefault(name, value)
    return merged

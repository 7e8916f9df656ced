"""Errors that carry their cause as data: which setting was wrong, and its value.

Every layer of rai_probe (optimizers, perturbations, models, data, jobs)
raises :class:`SettingError` (a :class:`ValueError`) or
:class:`SettingTypeError` (also a :class:`TypeError`) for a bad argument,
option or config value. The exception's ``setting`` attribute names the
offending setting as the raising layer knows it (``"q"``, ``"epsilon"``,
``"root"``, ``"checkpoint"``), so a caller that knows where the setting came
from (the probe CLI knows ``q`` was ``attack.q``) can name the override to fix
without reading the message text. This module imports nothing from the rest
of the package: every layer may use it.

Examples
--------
>>> from rai_probe.errors import SettingError, SettingTypeError
>>> try:
...     raise SettingError("`q` must be within [0, 1]; got q=1.5", setting="q", value=1.5)
... except ValueError as error:
...     print(error.setting, error.value, error)
q 1.5 `q` must be within [0, 1]; got q=1.5
>>> issubclass(SettingTypeError, TypeError), issubclass(SettingTypeError, SettingError)
(True, True)
"""

from __future__ import annotations

from typing import Any

__all__ = ["SettingError", "SettingTypeError", "UnknownSettingError", "UNSET"]


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


#: ``value`` of an error raised for a setting that is missing (there is no value to show).
UNSET: Any = _Unset()


class SettingError(ValueError):
    """A setting whose value cannot work, with the setting's name and value as attributes.

    Parameters
    ----------
    message : str
        The complete, human-readable message (naming the setting and the
        allowed range).
    setting : str or None, optional
        The offending setting's name in the raising layer's vocabulary
        (an argument, option or config key, e.g. ``"q"`` or ``"data_range"``);
        ``None`` when no single setting is at fault.
    value : any, optional
        The offending value (:data:`UNSET` when it was missing).
    """

    def __init__(self, message: str, *, setting: str | None = None, value: Any = UNSET) -> None:
        super().__init__(message)
        self.setting = setting
        self.value = value

    def __reduce__(self) -> tuple:  # picklable (e.g. across submitit / joblib workers)
        return (_rebuild, (type(self), str(self), self.setting, self.value))


class SettingTypeError(SettingError, TypeError):
    """A :class:`SettingError` for a value of the wrong type, an unknown or a missing setting."""


class UnknownSettingError(SettingTypeError):
    """A setting name that is not one of the allowed ones (``setting`` is the unknown name)."""


def _rebuild(cls: type[SettingError], message: str, setting: str | None, value: Any) -> SettingError:
    return cls(message, setting=setting, value=value)

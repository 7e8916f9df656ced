"""A job's settings error, naming the override to fix, and the one paragraph the user reads.

:class:`ConfigError` is what every job (probe, train, evaluate) raises for a
setting that cannot work. Lower layers raise
:class:`~rai_probe.errors.SettingError` with the offending setting's name in
their own vocabulary (``"q"``, ``"root"``); the job knows which config
section each came from and turns it into the dotted config key
(:func:`config_key`), then into the override as the user typed it
(:func:`typed_override`: ``+attack.epsilom`` when they typed
``+attack.epsilom=3``). Nothing here reads message text.

Examples
--------
>>> error = ConfigError("attack: option `q` must be within [0, 1]; got q=1.5", "attack.q")
>>> str(error)
'attack: option `q` must be within [0, 1]; got q=1.5. Fix it with the override `attack.q=...`.'
>>> typed_override("attack.epsilom", ["+attack.epsilom=3", "n_images=4"])
'+attack.epsilom'
>>> print(paragraph("rai_probe: " + "x" * 20 + " /a/very-long-path/with-hyphens/in-it.pt", width=30))
rai_probe: xxxxxxxxxxxxxxxxxxxx
/a/very-long-path/with-hyphens/in-it.pt
"""

from __future__ import annotations

import textwrap
from typing import Iterable, Mapping, Sequence

from ..errors import SettingError, UnknownSettingError

__all__ = ["ConfigError", "typed_override", "config_key", "paragraph", "EXIT_BAD_CONFIG", "EXIT_INTERRUPTED"]

#: Exit status of a job that could not start or finish because of its settings.
EXIT_BAD_CONFIG = 2
#: Exit status of a job stopped by Ctrl-C (SIGINT), as shells report it.
EXIT_INTERRUPTED = 130


class ConfigError(SettingError):
    """A job setting that cannot work, with the override that fixes it.

    Parameters
    ----------
    message : str
        What is wrong.
    override : str
        The override to change, as the user typed its key when they typed it
        (``"+attack.epsilom"``), else the dotted config key (``"attack.q"``).
    hint : str, optional
        Replaces the closing "Fix it with the override ..." sentence.

    Attributes
    ----------
    override : str
    setting : str
        The dotted config key (``override`` without ``+``/``++``/``~``).
    """

    def __init__(self, message: str, override: str, *, hint: str | None = None) -> None:
        self.override = override
        closing = hint if hint is not None else f"Fix it with the override `{override}=...`."
        super().__init__(f"{message.rstrip().rstrip('.')}. {closing}", setting=_bare(override))

    @classmethod
    def from_setting_error(cls, error: SettingError, key: str, overrides: Iterable[str]) -> "ConfigError":
        """The job-level error of a lower layer's ``error`` about the config key ``key``.

        An unknown key (:class:`~rai_probe.errors.UnknownSettingError`) is to
        be removed or corrected, not set; any other is to be set to a valid value.

        Examples
        --------
        >>> from rai_probe.errors import UnknownSettingError
        >>> unknown = UnknownSettingError("unknown setting `attack.epsilom`", setting="epsilom")
        >>> str(ConfigError.from_setting_error(unknown, "attack.epsilom", ["+attack.epsilom=3"]))
        'unknown setting `attack.epsilom`. Remove or correct the override `+attack.epsilom=3`.'
        """
        typed = typed_override(key, overrides)
        if isinstance(error, UnknownSettingError):
            given = next((o for o in overrides if o.split("=", 1)[0] == typed), None)
            shown = given if given is not None else f"{typed}=..."
            return cls(str(error), typed, hint=f"Remove or correct the override `{shown}`.")
        return cls(str(error), typed)

    def __reduce__(self) -> tuple:
        return (_rebuild_config_error, (str(self), self.override))


def _rebuild_config_error(message: str, override: str) -> "ConfigError":
    error = ConfigError.__new__(ConfigError)
    SettingError.__init__(error, message, setting=_bare(override))
    error.override = override
    return error


def _bare(key: str) -> str:
    return key.lstrip("+~")


def typed_override(key: str, overrides: Iterable[str]) -> str:
    """The override key as the user typed it (with its ``+``/``++``/``~``), or ``key`` itself.

    An override of ``key`` itself wins; else one of a section above it
    (``attack.q`` comes from ``+attack=l1q`` when no ``attack.q=...`` was typed:
    ``key`` is returned, since that is the override to add).

    Examples
    --------
    >>> typed_override("attack.q", ["+attack=l1q", "attack.q=1.5"])
    'attack.q'
    >>> typed_override("model.trust_checkpoint", ["++model.trust_checkpoint=no"])
    '++model.trust_checkpoint'
    >>> typed_override("seed", [])
    'seed'
    """
    for override in overrides:
        typed = override.split("=", 1)[0]
        if _bare(typed) == key:
            return typed
    return key


def config_key(section: str, error: SettingError, known: Sequence[str], options: Mapping[str, str] | None = None) -> str:
    """The dotted config key of a lower layer's :class:`SettingError` raised for ``section``.

    Parameters
    ----------
    section : str
        The config section the lower layer was given (``"attack"``).
    error : SettingError
        Its ``setting`` is the lower layer's name for the offending value.
    known : sequence of str
        Keys of the section (``"epsilon"``, ``"q"``, ...): a setting named
        like one of them is ``section.<name>``.
    options : mapping of str to str, optional
        Other names and the dotted key they live at (an optimizer option in
        ``attack.options.<name>``).

    Examples
    --------
    >>> from rai_probe.errors import SettingError
    >>> config_key("attack", SettingError("bad", setting="q"), ["q", "epsilon"])
    'attack.q'
    >>> config_key("attack", SettingError("bad", setting="param_ndim"), ["q"],
    ...            {"param_ndim": "attack.options.param_ndim"})
    'attack.options.param_ndim'
    >>> config_key("data", SettingError("bad"), ["root"])
    'data'
    """
    name = getattr(error, "setting", None)
    if name is None:
        return section
    if options and name in options:
        return options[name]
    if name in known:
        return f"{section}.{name}"
    if name.startswith(section + "."):
        return name
    return section


def paragraph(message: str, width: int = 100) -> str:
    """``message`` as one wrapped paragraph that never breaks a path or a word at a hyphen."""
    return textwrap.fill(" ".join(message.split()), width=width, break_on_hyphens=False, break_long_words=False)

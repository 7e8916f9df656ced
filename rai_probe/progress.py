"""Progress bars for long loops (training epochs, evaluation, probe batches), drawn by tqdm.

:class:`Progress` is a thin wrapper around :class:`tqdm.tqdm` with the
project's conventions:

* a bar is drawn only on a terminal: into a log file, a CI log or a
  subprocess pipe nothing is written (the jobs log their own milestones), and
  ``enabled`` then reads ``False`` so callers can skip work that only feeds
  the bar (such as reading a loss off the device);
* while a bar is drawn, log records of the root logger's console handlers are
  routed through tqdm (:func:`tqdm.contrib.logging.logging_redirect_tqdm`), so
  a log line never shares the bar's line;
* values shown after the bar (``loss=0.31``) are given as keyword arguments
  of :meth:`Progress.update`.

Examples
--------
>>> import io
>>> bar = Progress(4, "train", stream=io.StringIO())   # not a terminal: draws nothing
>>> bar.enabled
False
>>> with bar:
...     for _ in range(4):
...         bar.update(loss=0.5)
>>> bar.count, bar.postfix
(4, {'loss': 0.5})
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import IO, Iterable, Iterator, TypeVar

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

__all__ = ["Progress", "progress"]

T = TypeVar("T")


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Progress:
    """Progress of a loop of known length: a tqdm bar on a terminal, nothing elsewhere.

    Parameters
    ----------
    total : int
        Number of units of work, >= 0.
    desc : str, optional
        A label at the start of the bar.
    enabled : bool, optional (default=True)
        ``False`` draws nothing, even on a terminal.
    stream : file, optional (default=sys.stderr)
        Where the bar goes; a stream that is not a terminal gets nothing.
    refresh : float, optional (default=10)
        At most this many redraws a second.

    Attributes
    ----------
    enabled : bool
        Whether a bar is drawn (asked for, and ``stream`` is a terminal).
    interactive : bool
        Whether ``stream`` is a terminal.
    count : int
        Units done so far (counted whether or not a bar is drawn).
    postfix : dict
        The latest values given to :meth:`update`.
    """

    def __init__(
        self,
        total: int,
        desc: str = "",
        *,
        enabled: bool = True,
        stream: IO[str] | None = None,
        refresh: float = 10.0,
    ) -> None:
        if isinstance(total, bool) or not isinstance(total, int) or total < 0:
            raise ValueError(f"Progress: `total` must be an integer >= 0; got total={total!r}")
        if isinstance(refresh, bool) or not isinstance(refresh, (int, float)) or not refresh > 0:
            raise ValueError(f"Progress: `refresh` must be a number > 0; got refresh={refresh!r}")
        if not isinstance(enabled, bool):
            raise TypeError(f"Progress: `enabled` must be True or False; got enabled={enabled!r}")
        self.total = total
        self.desc = desc
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = _is_terminal(self.stream)
        self.enabled = enabled and self.interactive
        self.count = 0
        self.postfix: dict[str, object] = {}
        self._bar: tqdm | None = None
        self._redirect: contextlib.ExitStack | None = None
        if self.enabled:
            self._redirect = contextlib.ExitStack()
            self._redirect.enter_context(logging_redirect_tqdm(loggers=[logging.getLogger()]))
            self._bar = tqdm(
                total=total,
                desc=desc or None,
                file=self.stream,
                mininterval=1.0 / float(refresh),
                dynamic_ncols=True,
                leave=True,
            )

    def update(self, n: int = 1, **postfix: object) -> None:
        """Advance by ``n`` units and show ``postfix`` values (e.g. ``loss=0.31``)."""
        self.count += n
        self.postfix.update(postfix)
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix({k: _format(v) for k, v in self.postfix.items()}, refresh=False)
            self._bar.update(n)

    def close(self) -> None:
        """Finish the bar (idempotent) and restore the log handlers."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._redirect is not None:
            self._redirect.close()
            self._redirect = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _format(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def progress(iterable: Iterable[T], total: int, desc: str = "", *, enabled: bool = True) -> Iterator[T]:
    """Iterate over ``iterable`` while drawing a :class:`Progress` bar of ``total`` steps.

    Examples
    --------
    >>> list(progress(range(3), 3, enabled=False))
    [0, 1, 2]
    """
    with Progress(total, desc, enabled=enabled) as bar:
        for item in iterable:
            yield item
            bar.update()

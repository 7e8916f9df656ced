"""A dependency-free progress bar for long loops (training epochs, evaluation, probe batches)."""

from __future__ import annotations

import sys
import time
from typing import IO, Iterable, Iterator, TypeVar

__all__ = ["Progress", "progress"]

T = TypeVar("T")


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes:02d}:{seconds:02d}"


class Progress:
    """Progress of a loop of known length, drawn on one line of a terminal.

    On a terminal the line is redrawn in place (at most ``refresh`` times a
    second); otherwise (logs, CI, subprocess pipes) a line is written at
    about every tenth of the work, so logs stay short.

    Parameters
    ----------
    total : int
        Number of units of work, >= 0.
    desc : str, optional
        A label at the start of the line.
    enabled : bool, optional (default=True)
        ``False`` draws nothing.
    stream : file, optional (default=sys.stderr)
    refresh : float, optional (default=10)
        Redraws per second on a terminal.

    Examples
    --------
    >>> import io
    >>> out = io.StringIO()
    >>> bar = Progress(4, "train", stream=out)
    >>> for _ in range(4):
    ...     bar.update(loss=0.5)
    >>> bar.close()
    >>> print(out.getvalue().splitlines()[-1].split(" [")[0])
    train: 4/4 100% loss=0.5
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
        self.refresh = float(refresh)
        self.total = total
        self.desc = desc
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self.count = 0
        self.postfix: dict[str, object] = {}
        self._start = time.monotonic()
        self._last_draw = -1.0
        self._last_tenth = -1
        self._closed = False

    def update(self, n: int = 1, **postfix: object) -> None:
        """Advance by ``n`` units and show ``postfix`` values (e.g. ``loss=0.31``)."""
        self.count += n
        self.postfix.update(postfix)
        if not self.enabled:
            return
        if self.interactive:
            now = time.monotonic()
            if now - self._last_draw >= 1.0 / self.refresh or self.count >= self.total:
                self._last_draw = now
                self.stream.write("\r" + self.line())
                self.stream.flush()
        else:
            tenth = (10 * self.count) // max(self.total, 1)
            if tenth != self._last_tenth:
                self._last_tenth = tenth
                self.stream.write(self.line() + "\n")
                self.stream.flush()

    def line(self) -> str:
        """The current progress line."""
        elapsed = time.monotonic() - self._start
        percent = 100 * self.count // max(self.total, 1)
        if 0 < self.count < self.total:
            eta = f" eta {_duration(elapsed * (self.total - self.count) / self.count)}"
        else:
            eta = ""
        parts = [f"{self.desc}:"] if self.desc else []
        parts += [f"{self.count}/{self.total}", f"{percent}%"]
        parts += [f"{k}={_format(v)}" for k, v in self.postfix.items()]
        parts.append(f"[{_duration(elapsed)}{eta}]")
        return " ".join(parts)

    def close(self) -> None:
        """Finish the line (on a terminal, move to the next one)."""
        if self._closed:
            return
        self._closed = True
        if self.enabled and self.interactive:
            self.stream.write("\r" + self.line() + "\n")
            self.stream.flush()

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

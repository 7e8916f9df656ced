"""A job's run directory: one live job at a time, no stale completion markers.

Every job writes into its own directory and marks it complete by writing
``metrics.json`` last. :class:`RunDirectory` guards that promise:

* It takes an exclusive lock on the directory (``fcntl.flock`` on
  ``.rai_probe.lock``, released by the kernel when the process ends, so a
  crashed job never leaves it locked). A second live job pointed at the same
  directory is refused with :class:`RunDirectoryBusy` before it writes
  anything there.
* The lock is re-entrant within a process (the CLI holds the directory and
  the job function it calls may hold it again); it is refused to any other
  process.
* Once the lock is held it removes the completion markers a previous run
  left (``metrics.json``, ``error.txt``), before any setting is checked: a
  rerun that then fails can never read as complete.

Examples
--------
>>> import tempfile, pathlib
>>> with tempfile.TemporaryDirectory() as tmp:
...     _ = (pathlib.Path(tmp) / "metrics.json").write_text("{}")
...     with RunDirectory(tmp) as run_dir:
...         stale = (run_dir.path / "metrics.json").exists()
...     print(stale)
False
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from .._io import write_atomic, write_json
from ..errors import SettingError

try:  # POSIX; elsewhere runs are not locked (documented)
    import fcntl
except ImportError:  # pragma: no cover - not on Linux/macOS
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "RunDirectory",
    "RunDirectoryBusy",
    "write_error",
    "mark_interrupted",
    "job_status",
    "STATUSES",
    "LOCK_FILE",
    "METRICS_FILE",
    "ERROR_FILE",
    "COMPLETION_MARKERS",
]

METRICS_FILE = "metrics.json"
ERROR_FILE = "error.txt"
#: Files whose presence says how a job ended; removed when a job starts.
COMPLETION_MARKERS = (METRICS_FILE, ERROR_FILE)
LOCK_FILE = ".rai_probe.lock"
#: What :func:`job_status` can say of a job directory.
STATUSES = ("complete", "interrupted", "failed", "unfinished")


class RunDirectoryBusy(SettingError):
    """Another live job holds the run directory (its pid and host in ``holder``)."""

    def __init__(self, path: Path, holder: str, setting: str) -> None:
        super().__init__(
            f"the run directory {path} is in use by another live job ({holder}); two jobs in one "
            "directory would mix their files. Give this job its own directory",
            setting=setting,
            value=str(path),
        )
        self.holder = holder


class RunDirectory:
    """Hold ``path`` as this job's run directory (a context manager).

    Parameters
    ----------
    path : path
        The directory (created if missing).
    setting : str, optional (default="hydra.run.dir")
        The setting that chose the directory, for the error of a busy one.

    Raises
    ------
    RunDirectoryBusy
        On entry, when another live process holds the directory.
    OSError
        When the directory cannot be created or written.
    """

    #: Directories this process holds: resolved path -> [open lock file, holders].
    _held: dict[Path, list] = {}

    def __init__(self, path: str | os.PathLike, *, setting: str = "hydra.run.dir") -> None:
        self.path = Path(path)
        self.setting = setting
        self._key: Path | None = None

    def __enter__(self) -> "RunDirectory":
        self.path.mkdir(parents=True, exist_ok=True)
        key = self.path.resolve()
        held = RunDirectory._held.get(key)
        if held is not None:
            held[1] += 1
        else:
            RunDirectory._held[key] = [self._lock(), 1]
        self._key = key
        for marker in COMPLETION_MARKERS:
            (self.path / marker).unlink(missing_ok=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _lock(self) -> Any:
        if fcntl is None:  # pragma: no cover
            return None
        handle = open(self.path / LOCK_FILE, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown process"
            handle.close()
            raise RunDirectoryBusy(self.path, holder, self.setting) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        return handle  # the lock lives as long as this open file

    def release(self) -> None:
        """Release this hold (also done on exit); the last holder unlocks the directory."""
        if self._key is None:
            return
        held = RunDirectory._held[self._key]
        held[1] -= 1
        if held[1] == 0:
            del RunDirectory._held[self._key]
            if held[0] is not None:
                held[0].close()
        self._key = None


def write_error(out_dir: str | os.PathLike, message: str) -> Path:
    """Write ``error.txt`` for a failed job: the one-line reason first, then any traceback.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     print(write_error(tmp, "ValueError: bad epsilon").read_text(), job_status(tmp))
    ValueError: bad epsilon
     failed
    """
    if not isinstance(message, str):
        raise TypeError(f"`message` must be a str; got {type(message).__name__}")
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    return write_atomic(directory / ERROR_FILE, message if message.endswith("\n") else message + "\n")


def mark_interrupted(out_dir: str | os.PathLike, note: str, **record: object) -> Path:
    """Write a ``metrics.json`` with ``"status": "interrupted"``: stopped by the user, not complete.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     _ = mark_interrupted(tmp, "interrupted after 1 of 4 batches")
    ...     print(job_status(tmp))
    interrupted
    """
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    return write_json(directory / METRICS_FILE, {"status": "interrupted", "note": note, **record})


def job_status(job_dir: str | os.PathLike) -> str:
    """How a job directory ended: one of :data:`STATUSES`.

    ``"complete"`` or ``"interrupted"``: a readable ``metrics.json`` says so
    (its ``status``); ``"failed"``: an ``error.txt``; ``"unfinished"``:
    neither (still running, killed, or never started). An unreadable
    ``metrics.json`` does not count as complete.

    Raises
    ------
    FileNotFoundError
        When ``job_dir`` is not a directory.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     print(job_status(tmp))
    unfinished
    """
    directory = Path(job_dir)
    if not directory.is_dir():
        raise FileNotFoundError(f"job directory {str(directory)} (no such directory)")
    try:
        status = json.loads((directory / METRICS_FILE).read_text(encoding="utf-8")).get("status")
    except (OSError, ValueError, AttributeError):
        status = None
    if status in ("complete", "interrupted"):
        return status
    if (directory / ERROR_FILE).is_file():
        return "failed"
    return "unfinished"

"""File input and output shared by every module: atomic writes with normal modes, checked reads.

* :func:`write_atomic` / :func:`write_json` leave results on disk: the file
  appears complete or not at all, with the permissions a plain
  ``open(path, "w")`` would give it (``0o666 & ~umask`` for a new file, the
  existing file's mode when it replaces one), so colleagues on shared storage
  can read what the umask lets them read.
* :func:`open_regular_file` opens a file for reading after checking that it
  is a regular file, and :func:`os_error_reason` words why an
  :class:`OSError` happened ("permission denied", "is a directory", ...):
  the model and data layers turn both into their own errors that name the
  path and the cause.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import IO, Any, BinaryIO, Callable

__all__ = [
    "write_atomic",
    "write_json",
    "current_umask",
    "open_regular_file",
    "os_error_reason",
    "rebuild_error",
]

_PROC_STATUS = "/proc/self/status"


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows.

    Linux (4.7 and later) reports it in ``/proc/self/status`` (``Umask:``
    line), which is read without side effects. Elsewhere the umask is read
    with the only portable call, ``os.umask``, which sets a new value and
    returns the old one; it is set straight back.

    Examples
    --------
    >>> import os
    >>> old = os.umask(0o027)
    >>> current_umask() == 0o027
    True
    >>> _ = os.umask(old)
    """
    try:
        with open(_PROC_STATUS, encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8) & 0o777
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)  # a brief, restrictive value while the old one is read
    os.umask(mask)
    return mask & 0o777


def _target_mode(path: Path) -> int:
    """The permission bits ``open(path, "w")`` would leave ``path`` with."""
    try:
        existing = os.stat(path)
    except OSError:
        existing = None
    if existing is not None and stat.S_ISREG(existing.st_mode):
        return stat.S_IMODE(existing.st_mode)  # opening an existing file keeps its mode
    return 0o666 & ~current_umask()


def write_atomic(
    path: str | os.PathLike, data: bytes | str | None = None, *, save: Callable[[IO[bytes]], Any] | None = None
) -> Path:
    """Write ``data`` (or call ``save(file)``) to a temporary file beside ``path``, then rename it over ``path``.

    A reader never sees a half-written file: it finds the old file, or the
    complete new one (the temporary file is flushed and fsynced before
    :func:`os.replace`). The temporary file is removed when writing fails.
    The file gets the permissions a plain ``open(path, "w")`` would give it:
    ``0o666 & ~umask`` for a new file (``0o644`` under the usual umask
    ``022``), the old file's mode when it replaces one.

    Examples
    --------
    >>> import os, stat, tempfile, pathlib
    >>> folder = tempfile.TemporaryDirectory()
    >>> old = os.umask(0o022)
    >>> path = write_atomic(pathlib.Path(folder.name) / "a.txt", "hello")
    >>> _ = os.umask(old)
    >>> path.read_text(), sorted(p.name for p in path.parent.iterdir())
    ('hello', ['a.txt'])
    >>> oct(stat.S_IMODE(path.stat().st_mode))
    '0o644'
    >>> folder.cleanup()
    """
    path = Path(path)
    mode = _target_mode(path)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            if hasattr(os, "fchmod"):
                os.fchmod(file.fileno(), mode)
            else:  # pragma: no cover - Windows
                os.chmod(tmp_name, mode)
            if save is not None:
                save(file)
            else:
                file.write(data.encode("utf-8") if isinstance(data, str) else data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    return path


def write_json(path: str | os.PathLike, value: Any) -> Path:
    """Write ``value`` as indented, strict JSON (NaN and infinities are an error), atomically.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> folder = tempfile.TemporaryDirectory()
    >>> write_json(pathlib.Path(folder.name) / "m.json", {"a": 1}).read_text()
    '{\\n  "a": 1\\n}\\n'
    >>> write_json(pathlib.Path(folder.name) / "m.json", {"a": float("nan")})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: Out of range float values are not JSON compliant...
    >>> folder.cleanup()
    """
    return write_atomic(path, json.dumps(value, indent=2, allow_nan=False) + "\n")


def open_regular_file(path: str | os.PathLike) -> BinaryIO:
    """``open(path, "rb")``, after checking that ``path`` is a regular file.

    The check comes first so that a named pipe or a device is never opened
    (opening a pipe blocks until someone writes to it).

    Raises
    ------
    FileNotFoundError
        Nothing at ``path``.
    IsADirectoryError
        ``path`` is a folder.
    OSError
        ``path`` is not a regular file (``errno.EINVAL``), or cannot be opened
        (e.g. :class:`PermissionError`).

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     try:
    ...         open_regular_file(tmp)
    ...     except OSError as err:
    ...         print(os_error_reason(err))
    is a directory
    """
    info = os.stat(path)
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(path))
    if not stat.S_ISREG(info.st_mode):
        raise OSError(errno.EINVAL, "not a regular file", os.fspath(path))
    return open(path, "rb")


def os_error_reason(err: OSError) -> str:
    """A short, lower-case reason for an :class:`OSError`: ``"permission denied"``, ...

    Examples
    --------
    >>> os_error_reason(PermissionError(13, "Permission denied"))
    'permission denied'
    >>> os_error_reason(OSError("disk on fire"))
    'OSError: disk on fire'
    """
    if err.strerror:
        return err.strerror[0].lower() + err.strerror[1:]
    return f"{type(err).__name__}: {err}"


def rebuild_error(cls: type[BaseException], message: str, state: dict) -> BaseException:
    """Unpickle an exception whose constructor takes more than its message.

    An error class defines ``__reduce__`` as ``(rebuild_error, (type(self),
    str(self), dict(self.__dict__)))``: the copy has the same class, message
    and attributes, without calling the class's ``__init__``.

    Examples
    --------
    >>> class Fancy(ValueError):
    ...     def __init__(self, a, b):
    ...         super().__init__(f"{a}-{b}")
    ...         self.a = a
    >>> copy = rebuild_error(Fancy, "1-2", {"a": 1})
    >>> type(copy).__name__, str(copy), copy.a
    ('Fancy', '1-2', 1)
    """
    # the most derived built-in base allocates (OSError for classes that are also OSErrors)
    base = next(b for b in cls.__mro__ if b.__module__ == "builtins")
    layout = OSError if issubclass(cls, OSError) else base
    error = layout.__new__(cls, message)
    BaseException.__init__(error, message)
    error.__dict__.update(state)
    return error

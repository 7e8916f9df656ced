"""Atomic file writes shared by every module that leaves results on disk."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, IO

__all__ = ["write_atomic", "write_json"]


def write_atomic(
    path: str | os.PathLike, data: bytes | str | None = None, *, save: Callable[[IO[bytes]], Any] | None = None
) -> Path:
    """Write ``data`` (or call ``save(file)``) to a temporary file beside ``path``, then rename it over ``path``.

    A reader never sees a half-written file: it finds the old file, or the
    complete new one. The temporary file is removed when writing fails.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> folder = tempfile.TemporaryDirectory()
    >>> path = write_atomic(pathlib.Path(folder.name) / "a.txt", "hello")
    >>> path.read_text(), sorted(p.name for p in path.parent.iterdir())
    ('hello', ['a.txt'])
    >>> folder.cleanup()
    """
    path = Path(path)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
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

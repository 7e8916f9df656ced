"""CIFAR-10 from its python batches on the user's disk, unpickled safely.

The "CIFAR-10 python version" is a folder ``cifar-10-batches-py/`` holding
``data_batch_1`` ... ``data_batch_5`` (train, 10,000 images each),
``test_batch`` (10,000 images) and ``batches.meta``. Each batch is a Python
pickle of a dict with ``b"data"`` (a ``uint8`` array of shape ``(N, 3072)``:
the red, then green, then blue 32x32 plane of each image, row-major),
``b"labels"`` (``N`` ints in ``0..9``), ``b"filenames"`` and
``b"batch_label"``; ``batches.meta`` holds ``b"label_names"``.

A pickle can run arbitrary code when loaded, so these files are never given
to :func:`pickle.load`. :class:`RestrictedUnpickler` resolves only the few
globals the real files need (numpy's array and dtype reconstruction and plain
container types); anything else is refused before it runs and reported as a
:class:`~rai_probe.data.DataFormatError` naming the file.

Examples
--------
>>> import pickle, tempfile, numpy as np
>>> from pathlib import Path
>>> from rai_probe.data import load_cifar10
>>> folder = Path(tempfile.mkdtemp())
>>> batch = {b"batch_label": b"testing batch 1 of 1", b"labels": [3, 8],
...          b"data": np.full((2, 3072), 255, np.uint8), b"filenames": [b"a.png", b"b.png"]}
>>> _ = (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
>>> test = load_cifar10(folder)
>>> test.images.shape, test.labels, [test.class_names[i] for i in test.labels]
(torch.Size([2, 3, 32, 32]), tensor([3, 8]), ['cat', 'ship'])
"""

from __future__ import annotations

import io
import math
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .datasets import (
    DataFormatError,
    DataNotFoundError,
    ImageDataset,
    UnreadableDataError,
    check_split,
    checked_folder,
    open_data_file,
)

__all__ = [
    "load_cifar10",
    "load_cifar_batch",
    "RestrictedUnpickler",
    "CIFAR10_CLASSES",
    "MAX_BATCH_BYTES",
]

#: The largest CIFAR python file that is read (a real batch is 31 MB; CIFAR-100's single
#: training file 155 MB).
MAX_BATCH_BYTES = 512 * 2**20

#: The standard CIFAR-10 class names, used when ``batches.meta`` is absent.
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

_FOLDER = "cifar-10-batches-py"
_BATCHES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
_META = "batches.meta"
_EXPECTED = (
    "expected a CIFAR-10 python batch (a pickled dict with b'data': uint8 array "
    "(N, 3072) and b'labels': N ints in [0, 10))"
)


def _numpy_function(module: str, name: str) -> Any:
    """A numpy internal from ``numpy._core`` (numpy 2), else ``numpy.core`` (numpy 1)."""
    import importlib

    for prefix in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{prefix}.{module}"), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy has no {module}.{name}")  # pragma: no cover


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles of ``bytes`` use it: latin-1 only."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        shown = repr(encoding) if isinstance(encoding, str) and len(encoding) < 40 else type(encoding).__name__
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {shown} is not allowed")
    return text.encode("latin1")


class _NdarrayType:
    """Stands for ``numpy.ndarray`` in a pickle: accepted only as ``_reconstruct``'s first argument.

    The real class would let a ``NEWOBJ`` opcode allocate an array of any
    declared shape; this stand-in is neither callable nor a type.
    """

    def __repr__(self) -> str:
        return "numpy.ndarray"


_NDARRAY = _NdarrayType()


def _bounded_reconstruct(reconstruct: Any) -> Any:
    def guarded(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
        """numpy's ``_reconstruct`` for the empty start array numpy's pickles always use.

        numpy pickles an array as ``_reconstruct(ndarray, (0,), b"b")`` and then
        sets its content from the file's bytes (``BUILD``, which checks the
        length); a non-empty shape here would allocate memory the file never
        filled, so it is refused.
        """
        if subtype is not _NDARRAY:
            raise pickle.UnpicklingError("_reconstruct of another type than numpy.ndarray")
        if not isinstance(shape, tuple) or not all(type(d) is int and d >= 0 for d in shape):
            raise pickle.UnpicklingError("_reconstruct with a shape that is not a tuple of ints >= 0")
        if math.prod(shape) != 0:
            raise pickle.UnpicklingError(
                f"_reconstruct with the non-empty shape {shape}: numpy's pickles start from an "
                "empty array and fill it from the file"
            )
        return reconstruct(np.ndarray, shape, dtype)

    return guarded


def _from_text_only(kind: type) -> Any:
    """``bytes`` / ``bytearray`` / ``str`` built from text or bytes only: ``bytes(10**12)`` is refused."""

    def build(*args: Any) -> Any:
        if args and not isinstance(args[0], (str, bytes, bytearray)):
            raise pickle.UnpicklingError(
                f"{kind.__name__}() of a {type(args[0]).__name__} (only text or bytes are allowed)"
            )
        if any(not isinstance(a, str) for a in args[1:]):
            raise pickle.UnpicklingError(f"{kind.__name__}() with a non-str encoding")
        return kind(*args)

    build.__name__ = kind.__name__
    return build


def _allowed_globals() -> dict[tuple[str, str], Any]:
    reconstruct = _bounded_reconstruct(_numpy_function("multiarray", "_reconstruct"))
    frombuffer = _numpy_function("numeric", "_frombuffer")
    scalar = _numpy_function("multiarray", "scalar")
    allowed: dict[tuple[str, str], Any] = {("_codecs", "encode"): _latin1_encode}
    for prefix in ("numpy.core", "numpy._core"):
        allowed[(f"{prefix}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{prefix}.multiarray", "scalar")] = scalar
        allowed[(f"{prefix}.numeric", "_frombuffer")] = frombuffer
    allowed[("numpy", "ndarray")] = _NDARRAY
    allowed[("numpy", "dtype")] = np.dtype
    for container in (list, tuple, dict, set, frozenset, int, float, bool):
        allowed[("builtins", container.__name__)] = container
        allowed[("__builtin__", container.__name__)] = container  # Python 2 pickles
    for text in (bytearray, bytes, str):
        allowed[("builtins", text.__name__)] = _from_text_only(text)
        allowed[("__builtin__", text.__name__)] = allowed[("builtins", text.__name__)]
    return allowed


class _Refused(pickle.UnpicklingError):
    """A global that :class:`RestrictedUnpickler` does not resolve."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.module, self.name = module, name


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays and plain containers, and nothing else.

    ``find_class`` (the only way a pickle reaches a Python callable) resolves
    exactly these globals and refuses every other one before it can run:
    numpy's ``_reconstruct``, ``_frombuffer`` and ``scalar`` (under both
    ``numpy.core`` and ``numpy._core``), ``numpy.ndarray``, ``numpy.dtype``,
    the builtin container and scalar types (``list``, ``tuple``, ``dict``,
    ``set``, ``frozenset``, ``bytearray``, ``bytes``, ``str``, ``int``,
    ``float``, ``bool``; also under Python 2's ``__builtin__``) and
    ``_codecs.encode`` restricted to latin-1 (how protocol-2 pickles written
    by Python 3 store ``bytes``). Persistent ids are refused too.

    The allowed callables cannot allocate memory the file does not hold:
    ``_reconstruct`` accepts only the empty start array numpy's pickles use
    (the content comes from the file's bytes, whose length numpy checks),
    ``numpy.ndarray`` resolves to a stand-in that only ``_reconstruct``
    accepts (so ``NEWOBJ`` cannot allocate an array of a declared shape), and
    ``bytes`` / ``bytearray`` / ``str`` take text or bytes only (not
    ``bytes(10**12)``).

    Use ``encoding="bytes"`` for the Python 2 pickles of CIFAR: their ``str``
    keys then load as ``bytes`` (``b"data"``).

    Examples
    --------
    >>> import io, pickle
    >>> class Payload:
    ...     def __reduce__(self):
    ...         return (eval, ("print('ran')",))
    >>> try:
    ...     RestrictedUnpickler(io.BytesIO(pickle.dumps(Payload()))).load()
    ... except pickle.UnpicklingError as err:
    ...     print("refused:", err)
    refused: builtins.eval
    >>> RestrictedUnpickler(io.BytesIO(pickle.dumps({b"labels": [1, 2]}))).load()
    {b'labels': [1, 2]}
    """

    _allowed: dict[tuple[str, str], Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        """The allowed global `module.name`; raises for every other one."""
        if RestrictedUnpickler._allowed is None:
            RestrictedUnpickler._allowed = _allowed_globals()
        try:
            return RestrictedUnpickler._allowed[(module, name)]
        except KeyError:
            raise _Refused(module, name) from None

    def persistent_load(self, pid: Any) -> Any:
        """Persistent ids are not part of the format: refused."""
        raise _Refused("<persistent id>", repr(pid))


def load_cifar_batch(path: str | os.PathLike) -> Any:
    """The object pickled in one CIFAR python file, loaded with :class:`RestrictedUnpickler`.

    Parameters
    ----------
    path : path
        A batch (``data_batch_1``, ``test_batch``, ...) or ``batches.meta``.

    Returns
    -------
    object
        The unpickled object (for CIFAR files a dict with ``bytes`` keys), not
        validated further.

    Raises
    ------
    FileNotFoundError
        `path` does not exist.
    DataFormatError
        The file is not a pickle, or asks for a global outside the allowed
        set (refused for safety; nothing in it ran).

    Examples
    --------
    >>> import pickle, tempfile
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "batches.meta"
    >>> _ = path.write_bytes(pickle.dumps({"label_names": ["cat", "dog"]}, protocol=2))
    >>> load_cifar_batch(path)
    {'label_names': ['cat', 'dog']}
    """
    path = Path(path)
    with open_data_file(path, _EXPECTED) as file:
        size = os.fstat(file.fileno()).st_size
        if size > MAX_BATCH_BYTES:
            raise DataFormatError(
                f"{path}: {size} bytes, more than the limit of {MAX_BATCH_BYTES} bytes for a "
                f"CIFAR python file (rai_probe.data.cifar.MAX_BATCH_BYTES; a real batch is 31 MB); "
                f"{_EXPECTED}",
                value=str(path),
            )
        try:
            raw = file.read(MAX_BATCH_BYTES + 1)
        except OSError as err:
            raise UnreadableDataError(
                f"{path}: reading failed ({err}); {_EXPECTED}",
                path=path,
                cause=err,
            ) from None
    try:
        return RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except _Refused as refused:
        raise DataFormatError(
            f"{path}: not a CIFAR-10 python batch: it asks for {refused.module}.{refused.name}, "
            "which was refused for safety (only numpy arrays and plain containers are "
            "unpickled; nothing from the file ran)",
            value=str(path),
        ) from None
    except MemoryError:
        raise
    except Exception as err:  # any malformed pickle: truncated, garbage, bad arguments
        raise DataFormatError(
            f"{path}: could not be unpickled ({type(err).__name__}: {err}); {_EXPECTED}",
            value=str(path),
        ) from None


def load_cifar10(root: str | os.PathLike, split: str = "test") -> ImageDataset:
    """CIFAR-10 from its python batches, unpickled with :class:`RestrictedUnpickler`.

    Parameters
    ----------
    root : path
        The ``cifar-10-batches-py`` folder (``data_batch_1`` ... ``data_batch_5``,
        ``test_batch``, ``batches.meta``) or its parent. Only the batches of
        the chosen split are needed; without ``batches.meta`` the standard
        class names are used.
    split : {"test", "train", "all"}
        ``"test"``: ``test_batch``; ``"train"``: ``data_batch_1`` to ``_5``, in
        order; ``"all"``: train then test.

    Returns
    -------
    ImageDataset
        ``float32`` images ``(N, 3, 32, 32)`` (pixel / 255), ``int64`` labels,
        class names from ``batches.meta`` (``b"label_names"``), name
        ``"cifar10"``.

    Raises
    ------
    FileNotFoundError
        `root` or a needed batch is missing.
    DataFormatError
        A file is not a CIFAR-10 python batch (wrong keys, shapes, dtypes or
        labels), or was refused for safety by the restricted unpickler.

    Examples
    --------
    See the module docstring.
    """
    check_split(split)
    folder = _cifar_folder(root)
    names = ("train", "test") if split == "all" else (split,)
    batches = [_read_batch(folder / batch) for part in names for batch in _BATCHES[part]]
    class_names = _class_names(folder)
    labels = np.concatenate([batch_labels for _, batch_labels in batches])
    if labels.size and int(labels.max()) >= len(class_names):
        raise DataFormatError(
            f"{folder}: label {int(labels.max())} has no name in {folder / _META} "
            f"({len(class_names)} label_names)",
            value=str(folder),
        )
    pixels = torch.from_numpy(np.concatenate([data for data, _ in batches]))
    return ImageDataset(
        images=pixels.reshape(-1, 3, 32, 32).to(torch.float32).div_(255),
        labels=torch.from_numpy(labels),
        class_names=class_names,
        name="cifar10",
        split=split,
    )


def _cifar_folder(root: str | os.PathLike) -> Path:
    folder = checked_folder(
        root,
        f"expected the CIFAR-10 python folder {_FOLDER}/ (data_batch_1 ... data_batch_5, "
        "test_batch, batches.meta) or its parent",
    )
    if (folder / _FOLDER).is_dir():
        return folder / _FOLDER
    if not any((folder / name).exists() for names in _BATCHES.values() for name in names):
        archive = folder / "cifar-10-python.tar.gz"
        hint = f" (extract {archive} first)" if archive.is_file() else ""
        raise DataNotFoundError(
            f"{folder}: holds no CIFAR-10 python batches{hint}; expected data_batch_1 ... "
            f"data_batch_5, test_batch and batches.meta in it or in {folder / _FOLDER}",
            path=folder,
        )
    return folder


def _get(mapping: dict, key: str) -> Any:
    """``mapping[b"key"]``, or ``mapping["key"]`` for pickles written with str keys."""
    if key.encode() in mapping:
        return mapping[key.encode()]
    return mapping.get(key)


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(data uint8 (N, 3072), labels int64 (N,))`` of one batch."""
    if not path.exists():
        raise DataNotFoundError(
            f"{path}: no such file; expected the CIFAR-10 python batches data_batch_1 ... "
            f"data_batch_5 and test_batch in {path.parent}",
            path=path,
        )
    batch = load_cifar_batch(path)
    if not isinstance(batch, dict):
        raise DataFormatError(
            f"{path}: holds a {type(batch).__name__}, not a dict; {_EXPECTED}",
            value=str(path),
        )
    data, labels = _get(batch, "data"), _get(batch, "labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        found = data.dtype if isinstance(data, np.ndarray) else type(data).__name__
        raise DataFormatError(f"{path}: b'data' is {found}, not a uint8 array; {_EXPECTED}", value=str(path))
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataFormatError(f"{path}: b'data' has shape {data.shape}; {_EXPECTED}", value=str(path))
    try:
        labels = np.asarray(labels)
    except (TypeError, ValueError):
        labels = np.asarray(None)
    if labels.dtype.kind not in "iu" or labels.shape != (data.shape[0],):
        raise DataFormatError(
            f"{path}: b'labels' is not {data.shape[0]} ints (one per image); {_EXPECTED}",
            value=str(path),
        )
    if labels.size and int(labels.min()) < 0:
        raise DataFormatError(f"{path}: negative label {int(labels.min())}; {_EXPECTED}", value=str(path))
    return data, labels.astype(np.int64)


def _class_names(folder: Path) -> tuple[str, ...]:
    path = folder / _META
    if not path.exists():
        return CIFAR10_CLASSES
    meta = load_cifar_batch(path)
    names = _get(meta, "label_names") if isinstance(meta, dict) else None
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, (bytes, str)) for n in names):
        raise DataFormatError(
            f"{path}: expected CIFAR-10 metadata (a pickled dict with b'label_names': a "
            "list of names)",
            value=str(path),
        )
    try:
        return tuple(n.decode("utf-8") if isinstance(n, bytes) else n for n in names)
    except UnicodeDecodeError:
        raise DataFormatError(f"{path}: label_names are not UTF-8 text", value=str(path)) from None

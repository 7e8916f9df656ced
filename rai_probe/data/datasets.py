"""The image dataset container that every loader of :mod:`rai_probe.data` returns.

:class:`ImageDataset` holds a whole dataset in memory as one float tensor of
shape ``(N, C, H, W)`` with values in ``[0, 1]``, optional ``int64`` labels
and the class names the labels index. It is a :class:`torch.utils.data.Dataset`
(so it drops into a :class:`~torch.utils.data.DataLoader`), but most probing
code uses the tensors directly: ``ds.images``, ``ds.labels``.

:class:`DataFormatError` is the :class:`~rai_probe.errors.SettingError` (a
:class:`ValueError`) the loaders raise for a file or folder that is not in the
expected format; :class:`UnreadableDataError` (also an :class:`OSError`) for
one that cannot be read, and :class:`DataNotFoundError` (also a
:class:`FileNotFoundError`) for one that is missing. Their ``setting`` is
``"root"`` (the folder the data is read from) unless another argument is at
fault, and ``value`` is the path at fault.

Examples
--------
>>> import torch
>>> from rai_probe.data import ImageDataset
>>> ds = ImageDataset(torch.zeros(4, 1, 2, 2), torch.tensor([0, 1, 1, 0]), ("a", "b"), "toy")
>>> ds
ImageDataset(name='toy', split=None, size=4, image_shape=(1, 2, 2), classes=('a', 'b'))
>>> image, label = ds[1]
>>> image.shape, label
(torch.Size([1, 2, 2]), 1)
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass
from typing import Any, Sequence, Union

import os
from pathlib import Path
from typing import BinaryIO

import torch
from torch import Tensor

from .._io import open_regular_file, os_error_reason, rebuild_error
from ..errors import UNSET, SettingError, SettingTypeError

__all__ = [
    "ImageDataset",
    "DataFormatError",
    "UnreadableDataError",
    "DataNotFoundError",
    "SPLITS",
    "open_data_file",
    "checked_folder",
]

#: The values of :attr:`ImageDataset.split` (besides ``None``).
SPLITS = ("train", "test", "all")


def check_split(split: object) -> None:
    """Raise :class:`~rai_probe.errors.SettingError` (``setting="split"``) unless `split` is one of :data:`SPLITS`."""
    if not isinstance(split, str) or split not in SPLITS:
        raise SettingError(f"`split` must be one of {SPLITS}; got {split!r}", setting="split", value=split)

#: What :meth:`ImageDataset.subset` accepts.
Index = Union[int, slice, Tensor, Sequence[int]]


class DataFormatError(SettingError):
    """A data file or folder that is not in the expected format (or, for subclasses, cannot be read).

    The message names the file and the format that was expected. It is a
    :class:`~rai_probe.errors.SettingError`, hence a :class:`ValueError`:
    ``setting`` is ``"root"`` (the data folder) unless another argument is at
    fault (``"class_names"`` for a label without a name), and ``value`` the
    path at fault.

    Examples
    --------
    >>> issubclass(DataFormatError, ValueError)
    True
    >>> err = DataFormatError("/data/x: not an idx file", value="/data/x")
    >>> err.setting, err.value
    ('root', '/data/x')
    """

    def __init__(self, message: str, *, setting: str | None = "root", value: Any = UNSET) -> None:
        super().__init__(message, setting=setting, value=value)

    def __reduce__(self) -> tuple:  # picklable with every attribute, whatever the constructor
        return (rebuild_error, (type(self), str(self), dict(self.__dict__)))


class UnreadableDataError(DataFormatError, OSError):
    """A data file or folder that exists but cannot be read: permission denied, not a regular file, ...

    Also an :class:`OSError` (``errno``, ``strerror`` and ``filename`` come
    from the cause). ``setting`` is ``"root"``.

    Attributes
    ----------
    path : pathlib.Path
    reason : str
        E.g. ``"permission denied"``.
    """

    def __init__(
        self, message: str, *, path: str | os.PathLike, cause: OSError | None = None, setting: str = "root"
    ) -> None:
        super().__init__(message, setting=setting, value=str(path))
        self.path = Path(path)
        self.reason = os_error_reason(cause) if cause is not None else message
        if cause is not None:
            self.errno, self.strerror = cause.errno, cause.strerror
        self.filename = str(path)

    def __str__(self) -> str:  # the message, not OSError's "[Errno 13] ..."
        return str(self.args[0]) if self.args else ""


class DataNotFoundError(UnreadableDataError, FileNotFoundError):
    """A data file or folder that does not exist (also a :class:`FileNotFoundError`)."""


def open_data_file(path: str | os.PathLike, expected: str) -> BinaryIO:
    """``open(path, "rb")`` for a data file, with errors that name the path, the cause and the format.

    Raises
    ------
    DataNotFoundError
        Nothing at `path`.
    UnreadableDataError
        A folder, not a regular file, or no permission to read it.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     try:
    ...         open_data_file(tmp, "expected an idx file")
    ...     except UnreadableDataError as err:
    ...         print(err.setting, str(err).replace(tmp, "<tmp>"))
    root <tmp>: cannot be read (is a directory); expected an idx file
    """
    try:
        return open_regular_file(path)
    except FileNotFoundError as err:
        raise DataNotFoundError(f"{path}: no such file; {expected}", path=path, cause=err) from None
    except OSError as err:
        raise UnreadableDataError(
            f"{path}: cannot be read ({os_error_reason(err)}); {expected}", path=path, cause=err
        ) from None


def checked_folder(root: Any, expected: str) -> Path:
    """`root` as a :class:`~pathlib.Path` to an existing, readable folder (``~`` expanded).

    Raises
    ------
    SettingTypeError
        `root` is not a str or path (``setting="root"``).
    DataNotFoundError
        Nothing at `root`, or a file rather than a folder.
    UnreadableDataError
        A folder whose entries cannot be listed (permission denied, ...).

    Examples
    --------
    >>> checked_folder(3, "expected a folder")
    Traceback (most recent call last):
    ...
    rai_probe.errors.SettingTypeError: `root` must be a str or os.PathLike (a folder); got int 3
    """
    if not isinstance(root, (str, os.PathLike)):
        raise SettingTypeError(
            f"`root` must be a str or os.PathLike (a folder); got {type(root).__name__} {root!r}",
            setting="root",
            value=root,
        )
    folder = Path(root).expanduser()
    try:
        if not folder.is_dir():
            what = "not a folder (it is a file)" if folder.exists() else "no such folder"
            raise DataNotFoundError(f"{folder}: {what}; {expected}", path=folder)
        with os.scandir(folder):
            pass
    except DataNotFoundError:
        raise
    except OSError as err:
        raise UnreadableDataError(
            f"{folder}: cannot be read ({os_error_reason(err)}); {expected}", path=folder, cause=err
        ) from None
    return folder


def _fail(field: str, message: str) -> SettingError:
    return SettingError(f"ImageDataset: `{field}` {message}", setting=field)


def _type_fail(field: str, message: str, value: Any) -> SettingTypeError:
    return SettingTypeError(f"ImageDataset: `{field}` {message}", setting=field, value=value)


@dataclass(frozen=True, eq=False, repr=False)
class ImageDataset(torch.utils.data.Dataset):
    """An in-memory image dataset: float images in ``[0, 1]``, NCHW, with class names.

    Parameters
    ----------
    images : Tensor
        Floating-point tensor of shape ``(N, C, H, W)`` with every value in
        ``[0, 1]`` (stored contiguous; the loaders give ``float32``).
    labels : Tensor or None
        Integer tensor of shape ``(N,)`` (stored as ``int64``), each label an
        index into `class_names`; ``None`` for unlabeled data (flat image
        folders, seeds).
    class_names : sequence of str
        The names of the classes the labels index; may be empty for
        unlabeled data. Stored as a tuple.
    name : str
        What the data is, e.g. ``"mnist5k"``, ``"cifar10"``, ``"folder"``.
    split : {"train", "test", "all", None}
        Which part of the source dataset this is; ``None`` when the source has
        no splits.
    files : sequence of str or None, optional
        Where each image came from (an image folder's files, relative to its
        root), one per image; ``None`` for datasets without per-image files.
        Kept by :meth:`subset` and :meth:`per_class`.

    Raises
    ------
    TypeError
        `images` or `labels` is not a tensor, or `name` is not a string.
    ValueError
        Naming the field: images that are not floating point, not 4-D, or hold
        a value outside ``[0, 1]`` (or NaN); labels that are not integers,
        not 1-D, not one per image, not on the images' device, or outside
        ``[0, len(class_names))``; an unknown `split`; an empty `name`.

    Notes
    -----
    The dataset is frozen: methods return new datasets instead of changing
    this one. Slices and :meth:`subset` of a contiguous tensor along the
    first dimension share memory with it when the index is a slice.

    Examples
    --------
    >>> import torch
    >>> images = torch.linspace(0, 1, 6 * 4).reshape(6, 1, 2, 2)
    >>> ds = ImageDataset(images, torch.tensor([2, 0, 2, 1, 0, 2]), ("a", "b", "c"), "toy")
    >>> len(ds), ds.num_classes, ds.image_shape, ds.labeled
    (6, 3, (1, 2, 2), True)
    >>> ds.per_class(1).labels            # the first image of each class, by class
    tensor([0, 1, 2])
    >>> ds.subset(2).labels, ds.subset(torch.tensor([5, 3])).labels
    (tensor([2, 0]), tensor([2, 1]))
    >>> ImageDataset(images * 2, None, (), "toy")
    Traceback (most recent call last):
        ...
    rai_probe.errors.SettingError: ImageDataset: `images` must hold values in [0, 1]; got values in [0, 2]
    """

    images: Tensor
    labels: Tensor | None
    class_names: tuple[str, ...]
    name: str
    split: str | None = None
    files: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        images = _checked_images(self.images)
        if self.files is not None:
            if isinstance(self.files, str) or not all(isinstance(f, str) for f in self.files):
                raise _type_fail("files", "must be a sequence of str (one per image) or None", self.files)
            object.__setattr__(self, "files", tuple(self.files))
            if len(self.files) != images.shape[0]:
                raise _fail("files", f"must hold one entry per image ({images.shape[0]}); got {len(self.files)}")
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "class_names", _checked_class_names(self.class_names))
        object.__setattr__(self, "labels", _checked_labels(self.labels, images, self.class_names))
        if not isinstance(self.name, str):
            raise _type_fail("name", f"must be a str; got {type(self.name).__name__}", self.name)
        if not self.name:
            raise _fail("name", "must not be empty")
        if self.split is not None and self.split not in SPLITS:
            raise _fail("split", f"must be one of {SPLITS} or None; got {self.split!r}")

    # --- sequence protocol -------------------------------------------------

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: Any) -> tuple[Tensor, int]:
        """``(image, label)`` of datum `i`; the label is ``-1`` for unlabeled data.

        Only integer indices are accepted; use :meth:`subset` for a slice or
        an index tensor.
        """
        if isinstance(i, Tensor) and i.numel() == 1 and not i.is_floating_point():
            i = int(i)
        if not isinstance(i, numbers.Integral) or isinstance(i, bool):
            raise SettingTypeError(
                f"ImageDataset[{i!r}]: the index must be an int; use .subset(...) for "
                "a slice, an index tensor or a mask",
                setting="index",
                value=i,
            )
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"ImageDataset index {i} is out of range for {n} images")
        label = -1 if self.labels is None else int(self.labels[i])
        return self.images[i], label

    def __repr__(self) -> str:
        return (
            f"ImageDataset(name={self.name!r}, split={self.split!r}, size={len(self)}, "
            f"image_shape={self.image_shape}, classes={self.class_names!r})"
        )

    # --- properties --------------------------------------------------------

    @property
    def num_classes(self) -> int:
        """The number of classes, ``len(class_names)`` (``0`` when unnamed)."""
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of every image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    @property
    def labeled(self) -> bool:
        """Whether the dataset has labels."""
        return self.labels is not None

    # --- derived datasets --------------------------------------------------

    def subset(self, index: Index) -> "ImageDataset":
        """The images (and labels) picked by `index`, in the order it gives.

        Parameters
        ----------
        index : int, slice, 1-D integer tensor, 1-D bool tensor or sequence of int
            An ``int`` ``n`` takes the first ``n`` images (``0 <= n <= len``);
            a slice, integer positions (negative ones count from the end) or a
            boolean mask with one entry per image pick the rest.

        Returns
        -------
        ImageDataset
            Same name, split and class names.

        Raises
        ------
        ValueError
            An ``n`` outside ``[0, len]``, a mask of the wrong length, a
            position out of range, or an index tensor that is not 1-D
            integer or boolean.

        Examples
        --------
        >>> import torch
        >>> ds = ImageDataset(torch.rand(5, 1, 2, 2), torch.arange(5), tuple("abcde"), "toy")
        >>> ds.subset(3).labels, ds.subset(slice(None, None, 2)).labels
        (tensor([0, 1, 2]), tensor([0, 2, 4]))
        >>> ds.subset(ds.labels >= 3).labels, ds.subset([4, -5]).labels
        (tensor([3, 4]), tensor([4, 0]))
        """
        n = len(self)
        if isinstance(index, numbers.Integral) and not isinstance(index, bool):
            if not 0 <= index <= n:
                raise SettingError(
                    f"ImageDataset.subset: `index` as a count must be in [0, {n}] "
                    f"(the number of images); got {index}",
                    setting="index",
                )
            index = slice(0, int(index))
        if isinstance(index, slice):
            return self._take(index)
        if isinstance(index, (str, bytes)):
            raise SettingTypeError(
                f"ImageDataset.subset: `index` must not be a string; got {index!r}", setting="index", value=index
            )
        try:
            index = torch.as_tensor(index)
        except (TypeError, ValueError, RuntimeError) as err:
            raise SettingTypeError(
                "ImageDataset.subset: `index` must be an int, a slice, a 1-D integer or "
                f"bool tensor, or a sequence of ints; got {type(index).__name__}",
                setting="index",
                value=index,
            ) from err
        if index.numel() == 0 and index.ndim == 1:
            index = index.to(torch.int64)  # [] -> an empty float tensor
        if index.ndim != 1 or not (index.dtype == torch.bool or not index.is_floating_point()):
            raise SettingError(
                "ImageDataset.subset: `index` must be 1-D integer positions or a 1-D bool "
                f"mask; got dtype {index.dtype}, shape {tuple(index.shape)}",
                setting="index",
            )
        if index.dtype == torch.bool:
            if index.shape[0] != n:
                raise SettingError(
                    f"ImageDataset.subset: a bool `index` must have one entry per image "
                    f"({n}); got {index.shape[0]}",
                    setting="index",
                )
        elif index.is_complex():
            raise SettingError("ImageDataset.subset: `index` must not be complex", setting="index")
        else:
            index = index.to(torch.int64)
            if index.numel() and not (-n <= int(index.min()) and int(index.max()) < n):
                raise SettingError(
                    f"ImageDataset.subset: `index` positions must be in [-{n}, {n}); "
                    f"got values in [{int(index.min())}, {int(index.max())}]",
                    setting="index",
                )
        return self._take(index.to(self.images.device))

    def per_class(self, n: int) -> "ImageDataset":
        """The first `n` images of every class, grouped by class.

        The result lists class 0's first `n` images (in dataset order), then
        class 1's, and so on: a balanced pick for probing.

        Parameters
        ----------
        n : int
            Images per class, ``>= 0``; every class must have at least `n`.

        Raises
        ------
        ValueError
            Unlabeled data, a negative `n`, or a class with fewer than `n`
            images (the error names it).

        Examples
        --------
        >>> import torch
        >>> labels = torch.tensor([1, 0, 1, 0, 1, 0])
        >>> ds = ImageDataset(torch.rand(6, 1, 1, 1), labels, ("a", "b"), "toy")
        >>> picked = ds.per_class(2)
        >>> picked.labels, torch.equal(picked.images, ds.images[[1, 3, 0, 2]])
        (tensor([0, 0, 1, 1]), True)
        """
        if self.labels is None:
            raise SettingError(
                f"ImageDataset.per_class: dataset {self.name!r} has no labels",
                setting="labels",
            )
        if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 0:
            raise SettingError(
                f"ImageDataset.per_class: `n` must be an int >= 0; got {n!r}",
                setting="n",
                value=n,
            )
        counts = torch.bincount(self.labels, minlength=self.num_classes)
        if self.num_classes and int(counts.min()) < n:
            short = int(torch.argmin(counts))
            raise SettingError(
                f"ImageDataset.per_class: `n`={n} but class {short} "
                f"({self.class_names[short]!r}) has only {int(counts[short])} images in "
                f"{self.name!r}",
                setting="n",
                value=n,
            )
        order = torch.sort(self.labels, stable=True).indices
        starts = torch.cumsum(counts, 0) - counts  # first position of each class in `order`
        rank = torch.arange(len(self), device=order.device) - starts[self.labels[order]]
        return self._take(order[rank < n])

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> "ImageDataset":
        """The dataset with images (and labels) on `device` and images in `dtype`.

        Parameters
        ----------
        device : torch.device, str or None
            Target device; ``None`` keeps the current one.
        dtype : torch.dtype or None
            Floating-point dtype of the images; ``None`` keeps the current one.
            Labels stay ``int64``.

        Examples
        --------
        >>> import torch
        >>> ds = ImageDataset(torch.rand(2, 1, 2, 2), None, (), "toy")
        >>> ds.to(dtype=torch.float64).images.dtype
        torch.float64
        """
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise SettingError(
                f"ImageDataset.to: `dtype` must be a floating-point torch.dtype; got {dtype!r}",
                setting="dtype",
                value=dtype,
            )
        images = self.images.to(device=device, dtype=dtype)
        labels = None if self.labels is None else self.labels.to(device=device)
        if images is self.images and labels is self.labels:
            return self
        return dataclasses.replace(self, images=images, labels=labels)

    def _take(self, index: slice | Tensor) -> "ImageDataset":
        labels = None if self.labels is None else self.labels[index]
        files = None
        if self.files is not None:
            positions = range(len(self))[index] if isinstance(index, slice) else _positions(index, len(self))
            files = tuple(self.files[k] for k in positions)
        return dataclasses.replace(self, images=self.images[index], labels=labels, files=files)


def _positions(index: Tensor, n: int) -> list[int]:
    """The integer positions a 1-D index tensor (bool mask or integers, negatives from the end) picks."""
    if index.dtype == torch.bool:
        return index.nonzero().flatten().tolist()
    return [k % n for k in index.tolist()]


def _checked_images(images: Any) -> Tensor:
    if not isinstance(images, Tensor):
        raise _type_fail("images", f"must be a torch.Tensor; got {type(images).__name__}", images)
    if not images.is_floating_point():
        raise _fail("images", f"must be a floating-point tensor; got dtype {images.dtype}")
    if images.ndim != 4:
        raise _fail("images", f"must have shape (N, C, H, W); got shape {tuple(images.shape)}")
    if images.numel():
        low, high = torch.aminmax(images)
        low, high = float(low), float(high)
        if not (0.0 <= low and high <= 1.0):  # also false for NaN
            raise _fail("images", f"must hold values in [0, 1]; got values in [{low:g}, {high:g}]")
    return images.contiguous()


def _checked_class_names(class_names: Any) -> tuple[str, ...]:
    if isinstance(class_names, (str, bytes)) or not isinstance(class_names, Sequence):
        raise _fail("class_names", f"must be a sequence of str; got {type(class_names).__name__}")
    names = tuple(class_names)
    if not all(isinstance(c, str) for c in names):
        raise _fail("class_names", f"must hold only str; got {names!r}")
    return names


def _checked_labels(labels: Any, images: Tensor, class_names: tuple[str, ...]) -> Tensor | None:
    if labels is None:
        return None
    if not isinstance(labels, Tensor):
        raise _type_fail("labels", f"must be a torch.Tensor or None; got {type(labels).__name__}", labels)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise _fail("labels", f"must be an integer tensor; got dtype {labels.dtype}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise _fail(
            "labels",
            f"must have shape ({images.shape[0]},), one label per image; "
            f"got shape {tuple(labels.shape)}",
        )
    if labels.device != images.device:
        raise _fail(
            "labels", f"must be on the images' device {images.device}; got {labels.device}"
        )
    labels = labels.to(torch.int64).contiguous()
    if labels.numel():
        low, high = (int(v) for v in torch.aminmax(labels))
        if low < 0 or high >= len(class_names):
            raise _fail(
                "labels",
                f"must index `class_names` (values in [0, {len(class_names)})); "
                f"got values in [{low}, {high}]",
            )
    return labels

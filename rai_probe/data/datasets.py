"""The image dataset container that every loader of :mod:`rai_probe.data` returns.

:class:`ImageDataset` holds a whole dataset in memory as one float tensor of
shape ``(N, C, H, W)`` with values in ``[0, 1]``, optional ``int64`` labels
and the class names the labels index. It is a :class:`torch.utils.data.Dataset`
(so it drops into a :class:`~torch.utils.data.DataLoader`), but most probing
code uses the tensors directly: ``ds.images``, ``ds.labels``.

:class:`DataFormatError` is the :class:`ValueError` the loaders raise for a
file that exists but is not in the expected format.

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

import torch
from torch import Tensor

__all__ = ["ImageDataset", "DataFormatError", "SPLITS"]

#: The values of :attr:`ImageDataset.split` (besides ``None``).
SPLITS = ("train", "test", "all")


def check_split(split: object) -> None:
    """Raise ``ValueError`` unless `split` is one of :data:`SPLITS`."""
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}; got {split!r}")

#: What :meth:`ImageDataset.subset` accepts.
Index = Union[int, slice, Tensor, Sequence[int]]


class DataFormatError(ValueError):
    """A data file exists but is not in the expected format.

    The message names the file and the format that was expected. It is a
    :class:`ValueError`, so ``except ValueError`` catches it too.

    Examples
    --------
    >>> issubclass(DataFormatError, ValueError)
    True
    """


def _fail(field: str, message: str) -> ValueError:
    return ValueError(f"ImageDataset: `{field}` {message}")


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
    ValueError: ImageDataset: `images` must hold values in [0, 1]; got values in [0, 2]
    """

    images: Tensor
    labels: Tensor | None
    class_names: tuple[str, ...]
    name: str
    split: str | None = None

    def __post_init__(self) -> None:
        images = _checked_images(self.images)
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "class_names", _checked_class_names(self.class_names))
        object.__setattr__(self, "labels", _checked_labels(self.labels, images, self.class_names))
        if not isinstance(self.name, str):
            raise TypeError(f"ImageDataset: `name` must be a str; got {type(self.name).__name__}")
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
            raise TypeError(
                f"ImageDataset[{i!r}]: the index must be an int; use .subset(...) for "
                "a slice, an index tensor or a mask"
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
                raise ValueError(
                    f"ImageDataset.subset: `index` as a count must be in [0, {n}] "
                    f"(the number of images); got {index}"
                )
            index = slice(0, int(index))
        if isinstance(index, slice):
            return self._take(index)
        if isinstance(index, (str, bytes)):
            raise TypeError(f"ImageDataset.subset: `index` must not be a string; got {index!r}")
        try:
            index = torch.as_tensor(index)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(
                "ImageDataset.subset: `index` must be an int, a slice, a 1-D integer or "
                f"bool tensor, or a sequence of ints; got {type(index).__name__}"
            ) from err
        if index.numel() == 0 and index.ndim == 1:
            index = index.to(torch.int64)  # [] -> an empty float tensor
        if index.ndim != 1 or not (index.dtype == torch.bool or not index.is_floating_point()):
            raise ValueError(
                "ImageDataset.subset: `index` must be 1-D integer positions or a 1-D bool "
                f"mask; got dtype {index.dtype}, shape {tuple(index.shape)}"
            )
        if index.dtype == torch.bool:
            if index.shape[0] != n:
                raise ValueError(
                    f"ImageDataset.subset: a bool `index` must have one entry per image "
                    f"({n}); got {index.shape[0]}"
                )
        elif index.is_complex():
            raise ValueError("ImageDataset.subset: `index` must not be complex")
        else:
            index = index.to(torch.int64)
            if index.numel() and not (-n <= int(index.min()) and int(index.max()) < n):
                raise ValueError(
                    f"ImageDataset.subset: `index` positions must be in [-{n}, {n}); "
                    f"got values in [{int(index.min())}, {int(index.max())}]"
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
            raise ValueError(f"ImageDataset.per_class: dataset {self.name!r} has no labels")
        if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 0:
            raise ValueError(f"ImageDataset.per_class: `n` must be an int >= 0; got {n!r}")
        counts = torch.bincount(self.labels, minlength=self.num_classes)
        if self.num_classes and int(counts.min()) < n:
            short = int(torch.argmin(counts))
            raise ValueError(
                f"ImageDataset.per_class: `n`={n} but class {short} "
                f"({self.class_names[short]!r}) has only {int(counts[short])} images in "
                f"{self.name!r}"
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
            raise ValueError(
                f"ImageDataset.to: `dtype` must be a floating-point torch.dtype; got {dtype!r}"
            )
        images = self.images.to(device=device, dtype=dtype)
        labels = None if self.labels is None else self.labels.to(device=device)
        if images is self.images and labels is self.labels:
            return self
        return dataclasses.replace(self, images=images, labels=labels)

    def _take(self, index: slice | Tensor) -> "ImageDataset":
        labels = None if self.labels is None else self.labels[index]
        return dataclasses.replace(self, images=self.images[index], labels=labels)


def _checked_images(images: Any) -> Tensor:
    if not isinstance(images, Tensor):
        raise TypeError(
            f"ImageDataset: `images` must be a torch.Tensor; got {type(images).__name__}"
        )
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
        raise TypeError(
            f"ImageDataset: `labels` must be a torch.Tensor or None; got {type(labels).__name__}"
        )
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

"""Datasets by name: the :data:`DATASETS` registry and :func:`load_dataset`.

=================  ==============================================  ===================
name               loader                                          required arguments
=================  ==============================================  ===================
``mnist5k``        :func:`~rai_probe.data.load_mnist5k` (default)  --
``digits``         :func:`~rai_probe.data.load_digits`             --
``mnist``          :func:`~rai_probe.data.load_mnist_idx`          ``root``
``fashion_mnist``  idx files with the Fashion-MNIST class names    ``root``
``cifar10``        :func:`~rai_probe.data.load_cifar10`            ``root``
``folder``         :func:`~rai_probe.data.load_image_folder`       ``root``
``noise``          :func:`~rai_probe.data.make_seeds` ``"noise"``  ``n``, ``image_shape``
``gray``           :func:`~rai_probe.data.make_seeds` ``"gray"``   ``n``, ``image_shape``
=================  ==============================================  ===================

:data:`DATASETS` is a plain dict: add an entry to register a loader of your
own (a callable taking keyword arguments and returning an
:class:`~rai_probe.data.ImageDataset`).

Examples
--------
>>> from rai_probe.data import load_dataset
>>> load_dataset("digits", split="all")
ImageDataset(name='digits', split='all', size=1797, image_shape=(1, 8, 8),
             classes=('0', '1', '2', '3', '4', '5', '6', '7', '8', '9'))
>>> load_dataset("noise", n=2, image_shape=(3, 4, 4)).images.shape
torch.Size([2, 3, 4, 4])
"""

from __future__ import annotations

import inspect
import os
from typing import Any, Callable, Sequence

from ..errors import UNSET, SettingError, SettingTypeError, UnknownSettingError
from .builtin import load_digits, load_mnist5k
from .cifar import load_cifar10
from .datasets import ImageDataset
from .folder import load_image_folder
from .idx import FASHION_MNIST_CLASSES, _load_idx_dataset, load_mnist_idx
from .seeds import make_seeds

__all__ = ["DATASETS", "DEFAULT_DATASET", "load_dataset"]

#: The dataset :func:`load_dataset` users get when they name none.
DEFAULT_DATASET = "mnist5k"


def _load_fashion_mnist(root: str | os.PathLike, split: str = "test") -> ImageDataset:
    """Fashion-MNIST from its idx files (same layout as MNIST), named ``"fashion_mnist"``."""
    return _load_idx_dataset(root, split, FASHION_MNIST_CLASSES, name="fashion_mnist")


def _noise_seeds(n: int, image_shape: Sequence[int], *, seed: int = 0) -> ImageDataset:
    """``make_seeds("noise", n, image_shape, seed=seed)``."""
    return make_seeds("noise", n, image_shape, seed=seed)


def _gray_seeds(n: int, image_shape: Sequence[int], *, level: float = 0.5) -> ImageDataset:
    """``make_seeds("gray", n, image_shape, level=level)``."""
    return make_seeds("gray", n, image_shape, level=level)


#: Dataset name -> loader called with the keyword arguments of :func:`load_dataset`.
DATASETS: dict[str, Callable[..., ImageDataset]] = {
    "mnist5k": load_mnist5k,
    "digits": load_digits,
    "mnist": load_mnist_idx,
    "fashion_mnist": _load_fashion_mnist,
    "cifar10": load_cifar10,
    "folder": load_image_folder,
    "noise": _noise_seeds,
    "gray": _gray_seeds,
}


def load_dataset(name: str = DEFAULT_DATASET, **kwargs: Any) -> ImageDataset:
    """The dataset registered as `name` in :data:`DATASETS`, loaded with `kwargs`.

    Parameters
    ----------
    name : str
        A key of :data:`DATASETS`; default :data:`DEFAULT_DATASET` (``"mnist5k"``).
    **kwargs
        The loader's arguments, by keyword: ``split`` for the datasets with
        splits, ``root`` for the ones read from disk, ``n`` and
        ``image_shape`` for the seeds, and the loader's options.

    Returns
    -------
    ImageDataset

    Raises
    ------
    SettingError
        An unknown `name` (the error lists the registered ones;
        ``setting="name"``).
    SettingTypeError
        A missing required argument such as ``root`` (``setting`` names it,
        ``value`` is :data:`~rai_probe.errors.UNSET`); both a ``ValueError``
        and a ``TypeError``.
    UnknownSettingError
        An argument the loader does not take (``setting`` is its name; the
        error lists the accepted ones).
    SettingError, DataFormatError, FileNotFoundError
        Whatever the loader raises for its arguments and files.

    Examples
    --------
    >>> load_dataset("mnist5k", split="train").split
    'train'
    >>> load_dataset("cifar10")
    Traceback (most recent call last):
        ...
    rai_probe.errors.SettingTypeError: load_dataset('cifar10') needs `root` (the folder to read it from)
    >>> load_dataset("digits", splt="all")
    Traceback (most recent call last):
        ...
    rai_probe.errors.UnknownSettingError: load_dataset('digits') got an unexpected argument `splt`; it accepts: split
    >>> try:
    ...     load_dataset("mnist5k", split="val")
    ... except ValueError as err:
    ...     print(err.setting, err.value)
    split val
    """
    try:
        loader = DATASETS[name]
    except (KeyError, TypeError):
        raise SettingError(
            f"unknown dataset name {name!r}; available: {', '.join(DATASETS)}",
            setting="name",
            value=name,
        ) from None
    try:
        parameters = inspect.signature(loader).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: let it check
        return loader(**kwargs)
    if not any(p.kind is p.VAR_KEYWORD for p in parameters):
        accepted = [
            p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
        unknown = [key for key in kwargs if key not in accepted]
        if unknown:
            raise UnknownSettingError(
                f"load_dataset({name!r}) got an unexpected argument `{unknown[0]}`; "
                f"it accepts: {', '.join(accepted) or 'no arguments'}",
                setting=unknown[0],
                value=kwargs[unknown[0]],
            )
    missing = [
        p.name
        for p in parameters
        if p.default is p.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and p.name not in kwargs
    ]
    if missing:
        what = " (the folder to read it from)" if missing == ["root"] else ""
        raise SettingTypeError(
            f"load_dataset({name!r}) needs {', '.join(f'`{m}`' for m in missing)}{what}",
            setting=missing[0],
            value=UNSET,
        )
    return loader(**kwargs)

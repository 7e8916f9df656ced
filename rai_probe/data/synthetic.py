"""Synthetic labeled images for tests and worked examples: one bright blob per class.

:func:`make_blob_images` draws small 28x28 gray images whose class is where a
Gaussian blob sits, plus uniform noise: a classification problem that a
linear model solves in a second, with no file to load. The tests of the
solvers and the worked example of docs/perturbations.md train their small
classifiers on it.

Examples
--------
>>> import torch
>>> from rai_probe.data import make_blob_images
>>> images, labels = make_blob_images(3, noise=0.0, generator=torch.Generator().manual_seed(0))
>>> images.shape, labels.tolist()
(torch.Size([3, 1, 28, 28]), [4, 9, 3])
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from ..errors import SettingError, SettingTypeError

__all__ = ["make_blob_images", "BLOB_CLASSES", "BLOB_SIZE"]

#: Number of classes of :func:`make_blob_images`.
BLOB_CLASSES = 10
#: Height and width of its images.
BLOB_SIZE = 28


def make_blob_images(n: int, noise: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``n`` synthetic 1x28x28 images in ``[0, 1]``; class ``c`` is a blob at the ``c``-th grid cell.

    Class ``c`` (0 to 9) is a Gaussian blob (variance 4 pixels²) centred on
    cell ``c`` of a 3 x 4 grid, read row by row (row ``6 + 8·(c // 4)``,
    column ``5 + 6·(c % 4)``), plus ``noise`` times uniform noise in
    ``[0, 1)``, clipped to ``[0, 1]``.

    Parameters
    ----------
    n : int
        Number of images, >= 1.
    noise : float
        Amplitude of the uniform noise, a finite number >= 0.
    generator : torch.Generator
        Source of the labels (drawn first, uniform over the classes) and of the
        noise: the same generator state gives the same images.

    Returns
    -------
    images : Tensor, shape-(n, 1, 28, 28)
        ``float32`` values in ``[0, 1]``.
    labels : Tensor, shape-(n,)
        ``int64`` classes in ``0..9``.

    Raises
    ------
    SettingError
        `n` < 1 or not an int, `noise` negative or not finite (``setting``
        names it).
    SettingTypeError
        `generator` is not a :class:`torch.Generator`.

    Examples
    --------
    >>> x, y = make_blob_images(4, 0.1, torch.Generator().manual_seed(0))
    >>> x.shape, y.shape, bool(x.min() >= 0) and bool(x.max() <= 1)
    (torch.Size([4, 1, 28, 28]), torch.Size([4]), True)
    >>> x, y = make_blob_images(1, 0.0, torch.Generator().manual_seed(0))
    >>> y.item(), divmod(int(x[0, 0].argmax()), 28)   # class 4: the first cell of the second row
    (4, (14, 5))
    >>> make_blob_images(0, 0.1, torch.Generator())
    Traceback (most recent call last):
    ...
    rai_probe.errors.SettingError: `n` must be an int >= 1; got 0
    """
    if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 1:
        raise SettingError(f"`n` must be an int >= 1; got {n!r}", setting="n", value=n)
    if not isinstance(noise, numbers.Real) or isinstance(noise, bool) or not 0 <= noise < math.inf:
        raise SettingError(
            f"`noise` must be a finite number >= 0; got {noise!r}", setting="noise", value=noise
        )
    if not isinstance(generator, torch.Generator):
        raise SettingTypeError(
            f"`generator` must be a torch.Generator; got {type(generator).__name__}",
            setting="generator",
            value=generator,
        )
    size = BLOB_SIZE
    labels = torch.randint(0, BLOB_CLASSES, (int(n),), generator=generator)
    grid = torch.arange(float(size))
    rows, cols = (labels // 4) * 8 + 6, (labels % 4) * 6 + 5
    distance2 = (grid.view(1, size, 1) - rows.view(-1, 1, 1)) ** 2 + (
        grid.view(1, 1, size) - cols.view(-1, 1, 1)
    ) ** 2
    images = torch.exp(-distance2 / 8.0) + noise * torch.rand(int(n), size, size, generator=generator)
    return images.clamp_(0, 1).unsqueeze(1), labels

"""Synthetic starting images ("seeds") for concept probing.

Concept probing optimizes an image from a neutral start until a classifier
sees a class in it; :func:`make_seeds` makes those starts as an unlabeled
:class:`~rai_probe.data.ImageDataset`: uniform noise or a constant gray.

Examples
--------
>>> from rai_probe.data import make_seeds
>>> make_seeds("gray", 2, (1, 2, 2)).images.flatten().tolist()
[0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
"""

from __future__ import annotations

import numbers
from typing import Sequence

import torch

from ..errors import SettingError

from .datasets import ImageDataset

__all__ = ["make_seeds", "SEED_KINDS"]

#: Values of ``kind``.
SEED_KINDS = ("noise", "gray")


def make_seeds(
    kind: str,
    n: int,
    image_shape: Sequence[int],
    *,
    seed: int = 0,
    level: float = 0.5,
) -> ImageDataset:
    """`n` synthetic images of shape `image_shape`: uniform noise or constant gray.

    Parameters
    ----------
    kind : {"noise", "gray"}
        ``"noise"``: independent uniform values in ``[0, 1)`` drawn from a
        :class:`torch.Generator` seeded with `seed` (the same `seed` gives the
        same images); ``"gray"``: every value equal to `level`.
    n : int
        Number of images, ``>= 1``.
    image_shape : (int, int, int)
        ``(C, H, W)``, each ``>= 1``; e.g. a dataset's ``image_shape``.
    seed : int
        Seed of the noise (ignored for ``"gray"``).
    level : float
        The gray value, in ``[0, 1]`` (ignored for ``"noise"``).

    Returns
    -------
    ImageDataset
        ``float32`` images ``(n, C, H, W)``, unlabeled (``labels`` ``None``,
        no class names), name `kind`, split ``None``.

    Raises
    ------
    SettingError
        An unknown `kind`, `n` < 1, a bad `image_shape`, `seed` or `level`
        outside ``[0, 1]`` (``setting`` names it).

    Examples
    --------
    >>> seeds = make_seeds("noise", 4, (3, 8, 8), seed=1)
    >>> seeds.images.shape, seeds.labeled, seeds.name
    (torch.Size([4, 3, 8, 8]), False, 'noise')
    >>> torch.equal(seeds.images, make_seeds("noise", 4, (3, 8, 8), seed=1).images)
    True
    """
    if kind not in SEED_KINDS:
        raise SettingError(f"`kind` must be one of {SEED_KINDS}; got {kind!r}", setting="kind", value=kind)
    if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 1:
        raise SettingError(f"`n` must be an int >= 1; got {n!r}", setting="n", value=n)
    if (
        isinstance(image_shape, (str, bytes))
        or not isinstance(image_shape, Sequence)
        or len(image_shape) != 3
        or not all(
            isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 1
            for s in image_shape
        )
    ):
        raise SettingError(
            f"`image_shape` must be (C, H, W) with ints >= 1; got {image_shape!r}",
            setting="image_shape",
            value=image_shape,
        )
    shape = (int(n), *(int(s) for s in image_shape))
    if kind == "noise":
        if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
            raise SettingError(f"`seed` must be an int; got {seed!r}", setting="seed", value=seed)
        generator = torch.Generator().manual_seed(int(seed))
        images = torch.rand(shape, generator=generator, dtype=torch.float32)
    else:
        if not isinstance(level, numbers.Real) or isinstance(level, bool) or not 0 <= level <= 1:
            raise SettingError(
                f"`level` must be a number in [0, 1]; got {level!r}",
                setting="level",
                value=level,
            )
        images = torch.full(shape, float(level), dtype=torch.float32)
    return ImageDataset(images=images, labels=None, class_names=(), name=kind, split=None)

"""Dataset-level concepts from many perturbations: a class-pair contrast and per-class summaries.

**Contrast** (``mode=contrast``): every image of a source class is pushed
toward a target class. Averaged over the images the attack moved to the
target, the mean signed δ shows what the model adds or removes to turn one
class into the other, and the mean ``|δ|`` where it changes them
(:func:`contrast_maps`).

**Class concepts** (``mode=probe`` with several sources per target, e.g.
``data=noise n_images=K``): for each target class, the mean and the spread
(standard deviation) over the K sources of the perturbed images and of the
perturbations (:func:`class_concepts`): a concept the model has learned is
what stays the same across many starting points.

Both are one pass over tensors already computed (no forward pass); their
figures are :func:`~rai_probe.probing.figures.plot_contrast` and
:func:`~rai_probe.probing.figures.plot_class_concepts`.

Examples
--------
>>> import torch
>>> images = torch.zeros(3, 1, 1, 2)
>>> xadv = torch.tensor([[[[1.0, 0.0]]], [[[0.5, -0.5]]], [[[9.0, 9.0]]]])
>>> maps = contrast_maps(images, xadv, success=torch.tensor([True, True, False]))
>>> maps["mean_delta"].tolist(), maps["mean_abs_delta"].tolist(), maps["n"]
([[[[0.75, -0.25]]]], [[[[0.75, 0.25]]]], 2)
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["contrast_maps", "class_concepts"]


def _mean_over(values: Tensor, rows: Tensor) -> Tensor:
    """The mean over the chosen rows, kept as a batch of one (zeros when no row is chosen)."""
    count = rows.sum().clamp(min=1).to(values.dtype)
    weights = rows.to(values.dtype).view(-1, *([1] * (values.ndim - 1)))
    return (values * weights).sum(dim=0, keepdim=True) / count


def contrast_maps(images: Tensor, xadv: Tensor, *, success: Tensor) -> dict:
    """Mean signed δ, mean ``|δ|`` and mean source image over the successful rows (and over all rows).

    Returns
    -------
    dict
        ``mean_delta``, ``mean_abs_delta``, ``mean_image`` (over the
        successful rows, shape ``(1, C, H, W)``), ``mean_delta_all`` and
        ``mean_abs_delta_all`` (over every row), ``n`` (successful rows) and
        ``n_all``.
    """
    delta = (xadv - images).double()
    success = success.to(torch.bool)
    every = torch.ones_like(success)
    return {
        "mean_delta": _mean_over(delta, success),
        "mean_abs_delta": _mean_over(delta.abs(), success),
        "mean_image": _mean_over(images.double(), success),
        "mean_delta_all": _mean_over(delta, every),
        "mean_abs_delta_all": _mean_over(delta.abs(), every),
        "n": int(success.sum()),
        "n_all": int(success.numel()),
    }


def class_concepts(images: Tensor, xadv: Tensor, targets: Tensor, *, classes: int) -> dict:
    """Per target class: mean and standard deviation over its rows of ``xadv`` and of ``δ``; shape ``(K, C, H, W)``.

    A class without rows gets zeros and a count of 0 (vectorized with
    one-hot weights: no loop over rows or classes).

    Examples
    --------
    >>> xadv = torch.tensor([[[[1.0]]], [[[3.0]]], [[[5.0]]]])
    >>> out = class_concepts(torch.zeros(3, 1, 1, 1), xadv, torch.tensor([0, 0, 1]), classes=2)
    >>> out["mean_xadv"].flatten().tolist(), out["std_xadv"].flatten().tolist(), out["count"].tolist()
    ([2.0, 5.0], [1.0, 0.0], [2, 1])
    """
    onehot = torch.nn.functional.one_hot(targets.clamp(min=0), classes).to(torch.float64)
    onehot = onehot * (targets >= 0).unsqueeze(1).to(torch.float64)
    count = onehot.sum(dim=0)
    scale = count.clamp(min=1)

    def moments(values: Tensor) -> tuple[Tensor, Tensor]:
        flat = values.double().flatten(1)
        mean = onehot.T @ flat / scale.unsqueeze(1)
        spread = (onehot.T @ flat.square() / scale.unsqueeze(1) - mean.square()).clamp(min=0).sqrt()
        shape = (classes, *values.shape[1:])
        return mean.view(shape), spread.view(shape)

    mean_x, std_x = moments(xadv)
    mean_d, std_d = moments(xadv - images)
    return {"mean_xadv": mean_x, "std_xadv": std_x, "mean_delta": mean_d, "std_delta": std_d,
            "count": count.to(torch.int64)}

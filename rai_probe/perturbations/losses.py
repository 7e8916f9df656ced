"""Attack criteria: cross-entropy and the Difference of Logits Ratio (DLR) of Croce & Hein (2020).

Every criterion here is called as ``criterion(logits, target)`` and returns one
loss per datum (shape ``(N,)``), the form :func:`~rai_probe.perturbations.gradient_ascent`
expects. Signs follow the solver's convention: an untargeted attack *raises*
its criterion, a targeted one *lowers* it.

The DLR loss is invariant to shifting and (positively) scaling the logits, so
its gradient does not vanish when a robust model's softmax saturates, the
failure mode of cross-entropy that APGD-DLR was designed against:

* untargeted, :func:`dlr_loss`, raised by the attack::

      DLR(z, y) = -(z_y - max_{i != y} z_i) / (z_π1 - z_π3)

* targeted, :func:`targeted_dlr_loss`, lowered by the attack::

      DLR_T(z, t) = (max_{i != t} z_i - z_t) / (z_π1 - (z_π3 + z_π4) / 2)

where ``z_π1 >= z_π2 >= ...`` are the sorted logits. Croce & Hein's targeted
version has the logit ``z_y`` of the image's original class in place of
``max_{i != t} z_i``; it needs the original label, which a targeted
:class:`~rai_probe.perturbations.Attack` (the probe job's "what does each class
look like") does not have, so here the competitor is the largest logit other
than the target, which is ``z_y`` itself as long as the model still predicts
``y`` and the goal (the target's logit above every other) afterwards. Both
are negative exactly when the goal is met.

Numerics: the denominators are clamped at a tiny positive number (1e-12; 1e-3
for float16 / bfloat16 logits, whose gradients, about 1 / floor on a tied row,
come back in half precision), so tied top logits (a constant model, an image on
a decision boundary) give a finite loss (0 when the numerator ties too) and
finite gradients, never NaN; the losses are computed in float32 for
half-precision logits.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..errors import SettingError

__all__ = ["LOSSES", "dlr_loss", "targeted_dlr_loss", "attack_criterion"]

#: The criteria an :class:`~rai_probe.perturbations.Attack` may name in its ``loss`` field.
LOSSES: tuple[str, ...] = ("ce", "dlr")

#: Lower bound on the DLR denominators (float32 / float64 logits).
_DENOMINATOR_FLOOR = 1e-12
#: ... and for float16 / bfloat16 logits, whose gradients come back in half precision: the
#: gradient of a tied row is about 1 / floor, which must stay below the float16 maximum (65504).
_HALF_DENOMINATOR_FLOOR = 1e-3


def _floor(dtype: torch.dtype) -> float:
    return _HALF_DENOMINATOR_FLOOR if dtype in (torch.float16, torch.bfloat16) else _DENOMINATOR_FLOOR


def _prepare(logits: Tensor, target: Tensor, classes_needed: int, name: str) -> tuple[Tensor, Tensor]:
    if logits.ndim != 2 or target.ndim != 1 or target.shape[0] != logits.shape[0]:
        raise SettingError(
            f"{name}: needs logits of shape (N, C) and integer class targets of shape (N,); got "
            f"logits {tuple(logits.shape)} and target {tuple(target.shape)}",
            setting="loss",
        )
    if logits.shape[1] < classes_needed:
        raise SettingError(
            f"{name}: needs at least {classes_needed} classes (it divides by a gap between the "
            f"sorted logits); the model has {logits.shape[1]}: use loss='ce'",
            setting="loss",
            value=logits.shape[1],
        )
    if not logits.is_floating_point() or logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return logits, target.long().view(-1, 1)


def _largest_other(logits: Tensor, index: Tensor) -> Tensor:
    """``max_{i != index} z_i`` per row (the gradient reaches only that logit)."""
    return logits.scatter(1, index, float("-inf")).amax(dim=1)


def dlr_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Untargeted DLR: ``-(z_y - max_{i != y} z_i) / (z_π1 - z_π3)``, one value per datum.

    Raised by an untargeted attack; positive once the image is misclassified.
    Needs at least 3 classes.

    Parameters
    ----------
    logits : Tensor, shape-(N, C)
    target : Tensor of int, shape-(N,)
        The true labels.

    Returns
    -------
    Tensor, shape-(N,)

    Examples
    --------
    >>> z = torch.tensor([[4.0, 1.0, 0.0], [1.0, 3.0, 0.0], [2.0, 2.0, 2.0]])
    >>> dlr_loss(z, torch.tensor([0, 0, 1]))   # correct, wrong, all tied
    tensor([-0.7500,  0.6667,  0.0000])
    """
    floor = _floor(logits.dtype)
    logits, index = _prepare(logits, target, 3, "dlr_loss")
    top = logits.topk(3, dim=1).values
    gap = _largest_other(logits, index) - logits.gather(1, index).squeeze(1)  # -(z_y - max other)
    scale = (top[:, 0] - top[:, 2]).clamp_min(floor)
    return gap / scale


def targeted_dlr_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Targeted DLR: ``(max_{i != t} z_i - z_t) / (z_π1 - (z_π3 + z_π4) / 2)``, one value per datum.

    Lowered by a targeted attack; negative once the target class has the
    largest logit. Needs at least 4 classes. See the module docstring for how
    it differs from Croce & Hein's (which uses the original class's logit).

    Parameters
    ----------
    logits : Tensor, shape-(N, C)
    target : Tensor of int, shape-(N,)
        The target classes.

    Returns
    -------
    Tensor, shape-(N,)

    Examples
    --------
    >>> z = torch.tensor([[4.0, 1.0, 0.0, 0.0], [1.0, 3.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    >>> targeted_dlr_loss(z, torch.tensor([1, 1, 2]))   # not yet, reached, all tied
    tensor([ 0.7500, -0.6667,  0.0000])
    """
    floor = _floor(logits.dtype)
    logits, index = _prepare(logits, target, 4, "targeted_dlr_loss")
    top = logits.topk(4, dim=1).values
    gap = _largest_other(logits, index) - logits.gather(1, index).squeeze(1)
    scale = (top[:, 0] - (top[:, 2] + top[:, 3]) / 2).clamp_min(floor)
    return gap / scale


def attack_criterion(loss: str, targeted: bool) -> Callable[[Tensor, Tensor], Tensor] | None:
    """The criterion an attack's ``loss`` names: ``None`` (the solver's cross-entropy) or a DLR.

    Examples
    --------
    >>> attack_criterion("ce", targeted=False) is None, attack_criterion("dlr", targeted=True).__name__
    (True, 'targeted_dlr_loss')
    """
    if loss == "ce":
        return None
    if loss == "dlr":
        return targeted_dlr_loss if targeted else dlr_loss
    raise SettingError(
        f"`loss` must be one of {', '.join(LOSSES)}; got loss={loss!r}", setting="loss", value=loss
    )

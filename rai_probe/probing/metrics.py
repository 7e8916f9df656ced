"""Per-image and summary metrics of a probe job: accuracy, success, sparsity, budget, confidence.

Everything here is pure tensor code over a batch: :func:`per_image_metrics`
turns an attack's inputs and outputs into one ``(N,)`` tensor per quantity,
and :func:`summarize` reduces those to the JSON-ready numbers of
``metrics.json``.

Success, honestly counted
-------------------------
An image the model already gets wrong has nothing left to break, so it is
never an attack success:

* ``clean_correct`` (per image): the image has a label and the model's clean
  prediction is that label. Unlabeled images (noise or gray seeds, a flat
  folder) are never ``clean_correct``: there is no label to be correct about.
* ``success`` (per image) is the solver's goal **and** a chance to meet it
  honestly. Untargeted (explain mode): a labeled image succeeds when it was
  ``clean_correct`` and ``xadv`` is misclassified; a clean mistake is still
  attacked and recorded, but its ``success`` is false. An unlabeled image is
  attacked away from the model's own clean prediction and succeeds when that
  prediction changes. Targeted (probe mode): success is being classified as
  the target (with the attack's ``confidence``), whatever the label.
* Summary rates, each ``None`` when its denominator is empty:
  ``clean_accuracy`` = clean-correct / labeled images; ``robust_accuracy`` =
  clean-correct and not flipped / labeled untargeted images (the usual
  robust accuracy: clean mistakes count as broken); ``flip_rate`` = flipped /
  clean-correct untargeted images; ``attack_success_rate`` = successes / the
  ``n_eligible`` rows that could succeed (every targeted row; untargeted,
  the clean-correct and the unlabeled images). With labeled data in explain
  mode, ``attack_success_rate == flip_rate`` and
  ``robust_accuracy == clean_accuracy * (1 - flip_rate)``; unlabeled images
  count in ``attack_success_rate`` only.
* ``budget_used`` (per image): the perturbation's norm in the attack's own
  norm divided by ε (``l1 / ε`` for an L1 attack, ``l2 / ε``, ``linf / ε``),
  so 1.0 is the whole budget (a perturbation on the sphere may read a
  float32 rounding above it); NaN (``None`` in a summary) when the norm or ε
  is not given.

Conventions
-----------
* A **pixel** changed when any of its channels changed by more than ``atol``
  (``|delta| > atol``); ``l0_pixels`` counts such pixels, ``l0_fraction``
  divides by ``H * W`` and ``l0_elements`` counts changed entries over all
  channels. ``atol`` only affects these counts: ``l1``, ``l2`` and ``linf``
  are the exact norms of the whole perturbation, computed in float64.
* Unknown labels (noise or gray seeds in probe mode) are ``-1``; an
  untargeted image has target ``-1``. Probabilities of an unknown class are
  NaN per image and ``None`` in a summary.
* ``steps_to_success`` is the solver's ``first_success_step`` (0: the start
  already met the goal) for the images whose final ``xadv`` succeeds, and
  ``-1`` for the others.
* A **median** is the middle value of the sorted values, and the average of
  the two middle values when their number is even (NumPy's convention; not
  :func:`torch.median`, which returns the lower of the two).

Examples
--------
>>> import torch
>>> from rai_probe.probing.metrics import per_image_metrics, summarize
>>> images = torch.zeros(2, 1, 2, 2)
>>> xadv = images.clone(); xadv[0, 0, 0, 0] = 0.5
>>> logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
>>> per_image = per_image_metrics(
...     images, xadv, clean_logits=logits, adv_logits=logits.flip(1),
...     labels=torch.tensor([0, 1]), success=torch.tensor([True, True]),
...     first_success_step=torch.tensor([3, 5]))
>>> per_image["l0_pixels"].tolist(), per_image["adv_pred"].tolist()
([1, 0], [1, 0])
>>> summary = summarize(per_image)
>>> summary["clean_accuracy"], summary["attack_success_rate"], summary["steps_to_success"]
(1.0, 1.0, {'mean': 4.0, 'median': 4.0})

A clean mistake is attacked and recorded, but it is no success:

>>> flipped = per_image_metrics(
...     images, xadv, clean_logits=logits, adv_logits=logits.flip(1),
...     labels=torch.tensor([0, 0]), success=torch.tensor([True, True]),
...     first_success_step=torch.tensor([3, 0]), epsilon=2.0, norm="l1")
>>> flipped["clean_correct"].tolist(), flipped["success"].tolist(), flipped["budget_used"].tolist()
([True, False], [True, False], [0.25, 0.0])
>>> s = summarize(flipped)
>>> s["clean_accuracy"], s["robust_accuracy"], s["flip_rate"], s["attack_success_rate"]
(0.5, 0.0, 1.0, 1.0)
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import Tensor

from .quality import QUALITY_KEYS

__all__ = [
    "NORM_KEYS",
    "BUDGET_NORMS",
    "PER_IMAGE_KEYS",
    "changed_pixels",
    "perturbation_norms",
    "honest_success",
    "budget_used",
    "per_image_metrics",
    "median",
    "summarize",
    "MINIMAL_KEYS",
    "OPTIONAL_KEYS",
    "epsilon_quantiles",
]

#: Per-image columns of ``mode=minimal``: ε* (empty: no success within the bracket), the largest radius
#: at which the attack failed, and the optimizer steps and rounds the search spent on the image.
MINIMAL_KEYS = ("epsilon_min", "epsilon_failed", "search_steps", "search_rounds")

#: Per-image columns present only when a job computes them (quality metrics, minimal radii).
OPTIONAL_KEYS = QUALITY_KEYS + MINIMAL_KEYS

#: Keys of :func:`perturbation_norms`, in the order the CSV uses.
NORM_KEYS = ("l0_pixels", "l0_fraction", "l0_elements", "l1", "l2", "linf")

#: Norms an attack's budget can be measured in (keys of :func:`perturbation_norms`).
BUDGET_NORMS = ("l1", "l2", "linf")

#: Keys of :func:`per_image_metrics`, in the order the CSV uses.
PER_IMAGE_KEYS = (
    "index",
    "label",
    "target",
    "clean_pred",
    "clean_conf",
    "adv_pred",
    "adv_conf",
    "label_conf_before",
    "label_conf_after",
    "target_conf_before",
    "target_conf_after",
    "clean_correct",
    "success",
    "steps_to_success",
) + NORM_KEYS + ("budget_used",)


# --------------------------------------------------------------------------- #
# validation
# --------------------------------------------------------------------------- #
def _check_images(name: str, x: Any) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor; got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(
            f"`{name}` must be a batch of images of shape (N, C, H, W); got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise TypeError(f"`{name}` must be a floating-point tensor; got dtype {x.dtype}")
    return x


def _check_atol(atol: Any) -> float:
    if isinstance(atol, bool) or not isinstance(atol, (int, float)) or not 0 <= atol < math.inf:
        raise ValueError(f"`atol` must be a finite number >= 0; got atol={atol!r}")
    return float(atol)


def _check_finite(name: str, x: Tensor) -> None:
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"`{name}` holds NaN or infinite values; metrics of it would be meaningless")


def _check_vector(name: str, x: Any, n: int, *, kind: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor of shape ({n},); got {type(x).__name__}")
    if tuple(x.shape) != (n,):
        raise ValueError(f"`{name}` must have shape ({n},), one entry per image; got shape {tuple(x.shape)}")
    if kind == "bool" and x.dtype != torch.bool:
        raise TypeError(f"`{name}` must be a bool tensor; got dtype {x.dtype}")
    if kind == "int" and (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool):
        raise TypeError(f"`{name}` must be an integer tensor; got dtype {x.dtype}")
    return x


def _check_classes(name: str, x: Tensor | None, n: int, classes: int, device: torch.device) -> Tensor:
    """Class indices in ``[-1, classes - 1]`` (``-1``: unknown / none); ``None`` gives all ``-1``."""
    if x is None:
        return torch.full((n,), -1, dtype=torch.int64, device=device)
    x = _check_vector(name, x, n, kind="int").to(device=device, dtype=torch.int64)
    if n and (bool((x < -1).any()) or bool((x >= classes).any())):
        raise ValueError(
            f"`{name}` must hold class indices in [0, {classes - 1}] or -1 (unknown / none) "
            f"for logits with {classes} classes; got values in [{int(x.min())}, {int(x.max())}]"
        )
    return x


# --------------------------------------------------------------------------- #
# perturbation sizes
# --------------------------------------------------------------------------- #
def changed_pixels(delta: Tensor, *, atol: float = 0.0) -> Tensor:
    """Which pixels a perturbation changed: any channel with ``|delta| > atol``.

    Parameters
    ----------
    delta : Tensor, shape-(N, C, H, W)
        Perturbations (``xadv - images``), floating point.
    atol : float, optional (default=0.0)
        Changes of at most ``atol`` in every channel do not count.

    Returns
    -------
    Tensor of bool, shape-(N, H, W)

    Examples
    --------
    >>> import torch
    >>> delta = torch.zeros(1, 3, 2, 2)
    >>> delta[0, 2, 0, 1] = -0.2      # one channel of pixel (0, 1)
    >>> delta[0, 0, 1, 1] = 0.01      # not above atol
    >>> changed_pixels(delta, atol=0.05).int()
    tensor([[[0, 1],
             [0, 0]]], dtype=torch.int32)
    """
    delta = _check_images("delta", delta)
    atol = _check_atol(atol)
    return (delta.abs() > atol).any(dim=1)


def perturbation_norms(delta: Tensor, *, atol: float = 0.0) -> dict[str, Tensor]:
    """Sizes of each perturbation: L0 (pixels, fraction, elements), L1, L2 and L∞.

    Parameters
    ----------
    delta : Tensor, shape-(N, C, H, W)
        Perturbations (``xadv - images``), floating point and finite.
    atol : float, optional (default=0.0)
        Threshold of the L0 counts (see :func:`changed_pixels`); the L1, L2
        and L∞ norms are exact.

    Returns
    -------
    dict of str to Tensor, each of shape-(N,)
        ``"l0_pixels"`` and ``"l0_elements"`` (int64): changed pixels and
        changed entries; ``"l0_fraction"`` (float64): ``l0_pixels / (H * W)``;
        ``"l1"``, ``"l2"``, ``"linf"`` (float64): norms over all entries.

    Raises
    ------
    ValueError
        When ``delta`` holds NaN or infinite values.

    Examples
    --------
    >>> import torch
    >>> delta = torch.zeros(2, 1, 2, 2)
    >>> delta[0, 0, 0, 0], delta[0, 0, 1, 1] = 3.0, -4.0
    >>> norms = perturbation_norms(delta)
    >>> norms["l0_pixels"].tolist(), norms["l0_fraction"].tolist()
    ([2, 0], [0.5, 0.0])
    >>> norms["l1"].tolist(), norms["l2"].tolist(), norms["linf"].tolist()
    ([7.0, 0.0], [5.0, 0.0], [4.0, 0.0])
    """
    delta = _check_images("delta", delta)
    atol = _check_atol(atol)
    _check_finite("delta", delta)
    n, channels, height, width = delta.shape
    flat = delta.detach().reshape(n, channels * height * width).to(torch.float64)
    magnitude = flat.abs()
    pixels = changed_pixels(delta, atol=atol).reshape(n, height * width).sum(dim=1, dtype=torch.int64)
    # an image with no entries (H * W == 0) has no norm: linf of nothing is 0
    linf = magnitude.amax(dim=1) if flat.shape[1] else flat.new_zeros(n)
    return {
        "l0_pixels": pixels,
        "l0_fraction": pixels.to(torch.float64) / max(height * width, 1),
        "l0_elements": (magnitude > atol).sum(dim=1, dtype=torch.int64),
        "l1": magnitude.sum(dim=1),
        "l2": flat.norm(dim=1),
        "linf": linf,
    }


def _check_budget(epsilon: Any, norm: Any) -> tuple[float | None, str | None]:
    if (epsilon is None) != (norm is None):
        raise ValueError(
            "`epsilon` and `norm` go together (the budget and the norm it is measured in); "
            f"got epsilon={epsilon!r}, norm={norm!r}"
        )
    if norm is None:
        return None, None
    if norm not in BUDGET_NORMS:
        raise ValueError(f"`norm` must be one of {', '.join(BUDGET_NORMS)} or None; got norm={norm!r}")
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not 0 < epsilon < math.inf:
        raise ValueError(f"`epsilon` must be a finite number > 0 or None; got epsilon={epsilon!r}")
    return float(epsilon), norm


def budget_used(norms: Mapping[str, Tensor], *, epsilon: float | None, norm: str | None) -> Tensor:
    """The fraction of the budget each perturbation spends: its ``norm`` divided by ``epsilon``.

    Parameters
    ----------
    norms : mapping of str to Tensor
        :func:`perturbation_norms` of the perturbations.
    epsilon : float or None
        The attack's budget (radius of its ball), > 0.
    norm : {"l1", "l2", "linf"} or None
        The norm of the attack's ball. With ``epsilon`` and ``norm`` both
        ``None`` the budget is unknown: all NaN.

    Returns
    -------
    Tensor of float64, shape-(N,)

    Examples
    --------
    >>> import torch
    >>> norms = perturbation_norms(torch.tensor([[[[3.0, -4.0]]], [[[0.0, 0.5]]]]))
    >>> budget_used(norms, epsilon=10.0, norm="l1").tolist(), budget_used(norms, epsilon=5.0, norm="l2").tolist()
    ([0.7, 0.05], [1.0, 0.1])
    >>> budget_used(norms, epsilon=None, norm=None).isnan().tolist()
    [True, True]
    """
    epsilon, norm = _check_budget(epsilon, norm)
    reference = norms["l1"]
    if norm is None:
        return torch.full_like(reference, math.nan, dtype=torch.float64)
    return norms[norm].to(torch.float64) / epsilon


def honest_success(
    goal_met: Tensor, *, clean_pred: Tensor, labels: Tensor, targets: Tensor
) -> tuple[Tensor, Tensor]:
    """``(clean_correct, success)``: the solver's goal, minus the images that were already wrong.

    Parameters
    ----------
    goal_met : Tensor of bool, shape-(N,)
        Whether ``xadv`` met the attack's goal (the solver's ``success``:
        untargeted, a prediction other than the attacked class; targeted,
        the target).
    clean_pred : Tensor of int, shape-(N,)
        The model's prediction on the clean images.
    labels, targets : Tensor of int, shape-(N,)
        True labels and targets, ``-1`` where unknown / untargeted.

    Returns
    -------
    clean_correct : Tensor of bool, shape-(N,)
        Labeled and predicted as the label (unlabeled images: ``False``).
    success : Tensor of bool, shape-(N,)
        ``goal_met``, except for untargeted labeled images that were not
        ``clean_correct`` (a clean mistake is not broken by the attack).

    Examples
    --------
    >>> import torch
    >>> clean_correct, success = honest_success(
    ...     torch.tensor([True, True, True, True]), clean_pred=torch.tensor([0, 1, 1, 2]),
    ...     labels=torch.tensor([0, 0, -1, 0]), targets=torch.tensor([-1, -1, -1, 2]))
    >>> clean_correct.tolist(), success.tolist()   # image 1: a clean mistake; 3: targeted
    ([True, False, False, False], [True, False, True, True])
    """
    labeled = labels >= 0
    clean_correct = labeled & (clean_pred == labels)
    already_wrong = (targets < 0) & labeled & ~clean_correct
    return clean_correct, goal_met & ~already_wrong


# --------------------------------------------------------------------------- #
# per image
# --------------------------------------------------------------------------- #
def _probability_of(probs: Tensor, classes: Tensor) -> Tensor:
    """``probs[i, classes[i]]``, NaN where ``classes[i] == -1``."""
    known = classes >= 0
    picked = probs.gather(1, classes.clamp(min=0).view(-1, 1)).squeeze(1)
    return torch.where(known, picked, torch.full_like(picked, math.nan))


def per_image_metrics(
    images: Tensor,
    xadv: Tensor,
    *,
    clean_logits: Tensor,
    adv_logits: Tensor,
    labels: Tensor | None = None,
    targets: Tensor | None = None,
    success: Tensor,
    first_success_step: Tensor,
    atol: float = 0.0,
    epsilon: float | None = None,
    norm: str | None = None,
) -> dict[str, Tensor]:
    """Every per-image quantity of an attacked batch, one ``(N,)`` tensor each.

    Parameters
    ----------
    images, xadv : Tensor, shape-(N, C, H, W)
        The attacked images and their perturbed versions.
    clean_logits, adv_logits : Tensor, shape-(N, K)
        The model's outputs on ``images`` and on ``xadv``.
    labels : Tensor of int, shape-(N,), optional
        True classes, ``-1`` where unknown (seeds); ``None``: all unknown.
    targets : Tensor of int, shape-(N,), optional
        Target classes of a targeted attack, ``-1`` for untargeted images;
        ``None``: untargeted.
    success : Tensor of bool, shape-(N,)
        Whether ``xadv`` met the attack's goal (the solver's ``success``);
        the returned ``"success"`` drops the clean mistakes from it
        (:func:`honest_success`), so passing that back in changes nothing.
    first_success_step : Tensor of int, shape-(N,)
        The solver's first evaluated iterate meeting the goal, -1 if none.
    atol : float, optional (default=0.0)
        Threshold of the L0 counts (see :func:`perturbation_norms`).
    epsilon : float, optional
        The attack's budget, for ``"budget_used"`` (with ``norm``).
    norm : {"l1", "l2", "linf"}, optional
        The norm of the attack's ball (with ``epsilon``).

    Returns
    -------
    dict of str to Tensor, each of shape-(N,), on the CPU
        Keys :data:`PER_IMAGE_KEYS`: ``"index"``; ``"label"`` and
        ``"target"`` (-1: unknown / none); ``"clean_pred"``, ``"adv_pred"``
        and their softmax probabilities ``"clean_conf"``, ``"adv_conf"``;
        the probability of the true label ``"label_conf_before"`` /
        ``"label_conf_after"`` and of the target ``"target_conf_before"`` /
        ``"target_conf_after"`` (NaN when unknown / untargeted);
        ``"success"`` (bool); ``"steps_to_success"`` (``first_success_step``
        where ``success``, else -1); and :func:`perturbation_norms` of
        ``xadv - images``. Probabilities are float64.

    Examples
    --------
    A seed without a label, pushed toward class 1:

    >>> import torch
    >>> seed = torch.full((1, 1, 2, 2), 0.5)
    >>> xadv = seed + 0.25
    >>> out = per_image_metrics(
    ...     seed, xadv, clean_logits=torch.tensor([[0.0, 0.0]]),
    ...     adv_logits=torch.tensor([[0.0, 3.0]]), labels=None, targets=torch.tensor([1]),
    ...     success=torch.tensor([True]), first_success_step=torch.tensor([7]))
    >>> out["label"].tolist(), out["label_conf_before"].tolist(), out["target_conf_before"].tolist()
    ([-1], [nan], [0.5])
    >>> round(out["target_conf_after"].item(), 4), out["steps_to_success"].tolist(), out["l0_pixels"].tolist()
    (0.9526, [7], [4])
    """
    images = _check_images("images", images)
    xadv = _check_images("xadv", xadv)
    if xadv.shape != images.shape:
        raise ValueError(
            f"`xadv` must have the shape of `images` {tuple(images.shape)}; got {tuple(xadv.shape)}"
        )
    n = images.shape[0]
    for name, logits in (("clean_logits", clean_logits), ("adv_logits", adv_logits)):
        if not isinstance(logits, Tensor):
            raise TypeError(f"`{name}` must be a torch.Tensor; got {type(logits).__name__}")
        if logits.ndim != 2 or logits.shape[0] != n or logits.shape[1] < 1:
            raise ValueError(
                f"`{name}` must have shape (N, K) = ({n}, K), one row of class scores per image; "
                f"got shape {tuple(logits.shape)}"
            )
        _check_finite(name, logits)
    if adv_logits.shape != clean_logits.shape:
        raise ValueError(
            f"`adv_logits` must have the shape of `clean_logits` {tuple(clean_logits.shape)}; "
            f"got {tuple(adv_logits.shape)}"
        )
    classes = clean_logits.shape[1]
    device = clean_logits.device
    labels = _check_classes("labels", labels, n, classes, device)
    targets = _check_classes("targets", targets, n, classes, device)
    goal_met = _check_vector("success", success, n, kind="bool").to(device)
    first = _check_vector("first_success_step", first_success_step, n, kind="int").to(device, torch.int64)
    epsilon, norm = _check_budget(epsilon, norm)

    clean_probs = clean_logits.detach().to(torch.float64).softmax(dim=1)
    adv_probs = adv_logits.detach().to(torch.float64).softmax(dim=1)
    clean_conf, clean_pred = clean_probs.max(dim=1)
    adv_conf, adv_pred = adv_probs.max(dim=1)
    clean_correct, success = honest_success(goal_met, clean_pred=clean_pred, labels=labels, targets=targets)
    out = {
        "index": torch.arange(n, dtype=torch.int64, device=device),
        "label": labels,
        "target": targets,
        "clean_pred": clean_pred,
        "clean_conf": clean_conf,
        "adv_pred": adv_pred,
        "adv_conf": adv_conf,
        "label_conf_before": _probability_of(clean_probs, labels),
        "label_conf_after": _probability_of(adv_probs, labels),
        "target_conf_before": _probability_of(clean_probs, targets),
        "target_conf_after": _probability_of(adv_probs, targets),
        "clean_correct": clean_correct,
        "success": success,
        "steps_to_success": torch.where(success, first, torch.full_like(first, -1)),
    }
    norms = perturbation_norms(xadv.detach() - images.detach(), atol=atol)
    out.update(norms)
    out["budget_used"] = budget_used(norms, epsilon=epsilon, norm=norm)
    return {key: value.cpu() for key, value in out.items()}


# --------------------------------------------------------------------------- #
# summary
# --------------------------------------------------------------------------- #
def _number(value: Tensor | float) -> float | None:
    """A Python float, ``None`` for NaN / infinity (JSON has neither)."""
    value = float(value)
    return value if math.isfinite(value) else None


def median(values: Tensor) -> float | None:
    """The median of a 1-d tensor: the average of the two middle values when their number is even.

    Returns ``None`` for an empty tensor. NaN values are ignored.

    Examples
    --------
    >>> import torch
    >>> median(torch.tensor([4, 1, 3, 2])), median(torch.tensor([5.0, 1.0, 2.0]))
    (2.5, 2.0)
    >>> median(torch.tensor([])) is None, median(torch.tensor([float("nan"), 1.0]))
    (True, 1.0)
    """
    values = values.detach().reshape(-1).to(torch.float64)
    values = values[~values.isnan()].sort().values
    count = values.numel()
    if count == 0:
        return None
    middle = (values[(count - 1) // 2] + values[count // 2]) / 2
    return _number(middle)


def _mean(values: Tensor) -> float | None:
    values = values.detach().reshape(-1).to(torch.float64)
    values = values[~values.isnan()]
    return _number(values.mean()) if values.numel() else None


def _stats(values: Tensor) -> dict[str, float | None]:
    return {"mean": _mean(values), "median": median(values)}


def _rate(hits: Tensor, rows: Tensor) -> float | None:
    """``hits`` among ``rows`` (bool masks), ``None`` when there are no rows."""
    count = int(rows.sum())
    return int((hits & rows).sum()) / count if count else None


def summarize(per_image: Mapping[str, Tensor]) -> dict:
    """Reduce :func:`per_image_metrics` to the JSON-ready summary of ``metrics.json``.

    Parameters
    ----------
    per_image : mapping of str to Tensor
        The output of :func:`per_image_metrics` (every key of
        :data:`PER_IMAGE_KEYS`).

    Returns
    -------
    dict
        Plain ints, floats and ``None`` (never NaN), with keys
        ``"n_images"``, ``"n_labeled"``, ``"n_clean_correct"``,
        ``"n_eligible"`` (rows that can count as a success: every targeted
        row, and the clean-correct and unlabeled untargeted ones),
        ``"n_targeted"``, ``"n_successful"``;
        ``"clean_accuracy"`` (clean-correct / labeled images);
        ``"robust_accuracy"`` (clean-correct and not successfully attacked /
        labeled untargeted images); ``"flip_rate"`` (successes / clean-correct
        untargeted images); ``"attack_success_rate"`` (successes /
        ``n_eligible``) -- each rate ``None`` when its denominator is 0;
        ``"l0_pixels"``, ``"l0_fraction"``, ``"l0_elements"``, ``"l1"``,
        ``"l2"``, ``"linf"`` and ``"budget_used"``: each ``{"mean",
        "median"}`` over all images (``budget_used``: over the images with a
        known budget);
        ``"confidence"``: means of ``clean_conf`` (``"clean_pred_before"``),
        ``adv_conf`` (``"adv_pred_after"``), the true label's probability
        (``"label_before"``, ``"label_after"``, over labeled images) and the
        target's (``"target_before"``, ``"target_after"``, over targeted
        images), ``None`` where no image applies;
        ``"steps_to_success"``: ``{"mean", "median"}`` over the successful
        images; ``"successful"``: the norm and budget statistics over the
        successful images only. Statistics of no values are ``None``;
        medians follow :func:`median`.

    Examples
    --------
    >>> import torch
    >>> from rai_probe.probing.metrics import per_image_metrics
    >>> images = torch.zeros(4, 1, 1, 4)
    >>> xadv = images.clone()
    >>> xadv[1, 0, 0, :1] = 1.0; xadv[2, 0, 0, :2] = 1.0; xadv[3, 0, 0, :4] = 1.0
    >>> eye = torch.eye(2) * 4
    >>> per_image = per_image_metrics(
    ...     images, xadv, clean_logits=eye[[0, 0, 1, 1]], adv_logits=eye[[0, 1, 0, 0]],
    ...     labels=torch.tensor([0, 0, 1, 0]),
    ...     success=torch.tensor([False, True, True, True]),
    ...     first_success_step=torch.tensor([-1, 2, 4, 0]), epsilon=4.0, norm="l1")
    >>> s = summarize(per_image)
    >>> s["clean_accuracy"], s["robust_accuracy"], s["flip_rate"], s["attack_success_rate"]
    (0.75, 0.25, 0.6666666666666666, 0.6666666666666666)
    >>> s["n_successful"], s["l0_pixels"], s["budget_used"]        # image 3 was a clean mistake
    (2, {'mean': 1.75, 'median': 1.5}, {'mean': 0.4375, 'median': 0.375})
    >>> s["steps_to_success"], s["successful"]["l0_pixels"], s["confidence"]["target_before"]
    ({'mean': 3.0, 'median': 3.0}, {'mean': 1.5, 'median': 1.5}, None)
    """
    missing = [key for key in PER_IMAGE_KEYS if key not in per_image]
    if missing:
        raise ValueError(
            f"`per_image` must hold every key of per_image_metrics; missing {missing}"
        )
    n = int(per_image["index"].numel())
    for key in PER_IMAGE_KEYS:
        if tuple(per_image[key].shape) != (n,):
            raise ValueError(
                f"`per_image[{key!r}]` must have shape ({n},) like 'index'; got {tuple(per_image[key].shape)}"
            )
    labels = per_image["label"]
    targets = per_image["target"]
    success = per_image["success"].to(torch.bool)
    correct = per_image["clean_correct"].to(torch.bool)
    labeled = labels >= 0
    targeted = targets >= 0
    untargeted = ~targeted
    eligible = targeted | correct | ~labeled

    summary: dict[str, Any] = {
        "n_images": n,
        "n_labeled": int(labeled.sum()),
        "n_clean_correct": int(correct.sum()),
        "n_eligible": int(eligible.sum()),
        "n_targeted": int(targeted.sum()),
        "n_successful": int(success.sum()),
        "clean_accuracy": _rate(correct, labeled),
        "robust_accuracy": _rate(correct & ~success, labeled & untargeted),
        "flip_rate": _rate(success, correct & untargeted),
        "attack_success_rate": _rate(success, eligible),
    }
    for key in NORM_KEYS + ("budget_used",):
        summary[key] = _stats(per_image[key])
    summary["confidence"] = {
        "clean_pred_before": _mean(per_image["clean_conf"]),
        "adv_pred_after": _mean(per_image["adv_conf"]),
        "label_before": _mean(per_image["label_conf_before"][labeled]),
        "label_after": _mean(per_image["label_conf_after"][labeled]),
        "target_before": _mean(per_image["target_conf_before"][targeted]),
        "target_after": _mean(per_image["target_conf_after"][targeted]),
    }
    summary["steps_to_success"] = _stats(per_image["steps_to_success"][success])
    summary["successful"] = {key: _stats(per_image[key][success]) for key in NORM_KEYS + ("budget_used",)}
    quality = {key: _stats(_known(per_image[key])) for key in QUALITY_KEYS if key in per_image}
    if quality:  # explanation-quality metrics (rai_probe.probing.quality), over the images they apply to
        summary["quality"] = quality
    if "epsilon_min" in per_image:  # mode=minimal: the distribution of each image's minimal radius
        summary["epsilon_min"] = epsilon_quantiles(per_image["epsilon_min"])
    return summary


def epsilon_quantiles(star: Tensor) -> dict[str, float | None]:
    """Quantiles (0.1, 0.25, 0.5, 0.75, 0.9), mean and count of the finite ε* values.

    Examples
    --------
    >>> epsilon_quantiles(torch.tensor([1.0, 2.0, 3.0, float("nan")]))["median"]
    2.0
    """
    finite = star[~star.isnan()].to(torch.float64)
    if finite.numel() == 0:
        return {"n": 0, "mean": None, "q10": None, "q25": None, "median": None, "q75": None, "q90": None}
    q = torch.quantile(finite, torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64)).tolist()
    return {"n": int(finite.numel()), "mean": float(finite.mean()), "q10": q[0], "q25": q[1], "median": q[2],
            "q75": q[3], "q90": q[4]}


def _known(values: Tensor) -> Tensor:
    values = values.detach().reshape(-1).to(torch.float64)
    return values[~values.isnan()]

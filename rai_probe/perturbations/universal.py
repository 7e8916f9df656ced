"""Universal and class-concept perturbations: one δ for a whole set of images, or one per class.

A *universal* perturbation (Moosavi-Dezfooli et al., 2017, "Universal
adversarial perturbations") is a single δ that, added to every image of a
data set, changes the model's decision on most of them. A *class-concept*
perturbation is one δ per class (``per_class=True``): δ_k is shared by every
image of class ``k`` (its label in an untargeted fit, its target class in a
targeted one), so δ_k shows what the model takes to separate class ``k``
from the others, or, targeted, what it takes every image to look like
class ``k``.

:func:`fit_universal_perturbation` optimizes δ with an
:class:`~rai_probe.perturbations.Attack`'s optimizer, loss and ε-ball, over
all the images in shuffled mini-batches for a number of epochs: one
optimizer step per mini-batch, each image perturbed by its δ and clamped
into the attack's ``data_range`` (``clamp(x + δ)``, as the solvers clamp the
output of a shared perturbation). δ is held by an
:class:`~rai_probe.perturbations.AdditivePerturbation` of shape
``(K, C, H, W)`` (``K = 1`` for one universal δ, which broadcasts over the
batch exactly like ``delta_ndim=-1``), so the optimizer's default
``param_ndim=-1`` makes each δ one row: one ε-ball over the whole of each δ,
one smoothing ring per δ, as for a per-image perturbation. Each entry of δ
also stays in ``[low - max x, high - min x]`` over the images it is added to:
beyond that box it would clamp every image, and the budget spent there
would be lost.

:func:`apply_universal`, :func:`universal_outputs` and
:func:`universal_success` apply a fitted δ to any images (the held-out ones,
typically) and say which of them it breaks.

Settings that only make sense per image are refused by
:func:`check_universal_attack` before any work, with a
:class:`~rai_probe.errors.SettingError` whose ``setting`` names the field:
``early_stop``, ``restarts > 1``, an ``epsilon_schedule``, an optimizer that
adapts its steps from each datum's own loss history (the APGD family and
``L1qAutoFrankWolfe``: a universal δ sees a different mini-batch at every
step, so those losses do not compare), and an optimizer option
``param_ndim`` other than -1 (it would split the ball of δ). ``use_best``
has a universal meaning here: the δ (per class: each class's δ) of the
epoch end that breaks the most images of the fit set, then the better loss.

Examples
--------
A linear model whose decision one direction flips for every image:

>>> import torch
>>> from rai_probe.perturbations import Attack
>>> from rai_probe.perturbations.universal import fit_universal_perturbation, universal_success
>>> class Linear(torch.nn.Module):
...     def forward(self, x):                  # class 1 iff the mean pixel exceeds 0.5
...         score = (x.flatten(1).mean(dim=1) - 0.5) * 20
...         return torch.stack([-score, score], dim=1)
>>> gen = torch.Generator().manual_seed(0)
>>> images = torch.rand(40, 1, 4, 4, generator=gen) * 0.4     # all class 0
>>> labels = torch.zeros(40, dtype=torch.long)
>>> attack = Attack("L2ProjectedOptim", epsilon=2.0, lr=0.5)
>>> fit = fit_universal_perturbation(Linear(), images[:30], labels[:30], attack=attack,
...                                  epochs=4, batch_size=8, generator=gen)
>>> fit.delta.shape, bool(fit.delta.norm() <= 2.0 + 1e-5)
(torch.Size([1, 4, 4]), True)
>>> universal_success(Linear(), images[30:], labels[30:], fit.delta).all().item()   # held-out
True

Per-datum-only settings are refused, naming the field:

>>> fit_universal_perturbation(Linear(), images, labels, attack=attack.with_(early_stop=True))
Traceback (most recent call last):
...
rai_probe.errors.SettingError: universal perturbation: `early_stop=True` stops attacking each image once it succeeds, but a universal δ is shared by every image: set early_stop=false
"""

from __future__ import annotations

import logging
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..errors import SettingError, SettingTypeError
from ..optim.nonfinite import SkipsNonFiniteRows
from ..progress import Progress
from .attacks import RANDOM_INITS, Attack
from .losses import attack_criterion
from .models import AdditivePerturbation
from .solvers import frozen_eval, takes_option, goal_met

__all__ = [
    "UniversalResult",
    "check_universal_attack",
    "fit_universal_perturbation",
    "apply_universal",
    "universal_outputs",
    "universal_success",
    "goal_met",
]

log = logging.getLogger(__name__)


@dataclass
class UniversalResult:
    """What :func:`fit_universal_perturbation` returns.

    Attributes
    ----------
    delta : Tensor
        The fitted perturbation: shape ``(C, H, W)`` (one image's shape) for
        one universal δ, ``(K, C, H, W)`` with ``per_class`` (row ``k`` is
        the δ of class ``k``).
    per_class : bool
        Whether ``delta`` holds one δ per class.
    classes : Tensor of int64, shape-(N,), or None
        With ``per_class``: the row of ``delta`` each fit image used.
    loss_trace : Tensor, shape-(S,)
        The mean loss of each mini-batch at the iterate that was stepped from
        (``S`` optimizer steps), in the criterion's own sign.
    success_trace : Tensor, shape-(S,)
        The fraction of each mini-batch whose goal that iterate met (before
        the step; clean mistakes included).
    epoch_success : Tensor of float64, shape-(epochs,), or None
        With ``use_best``: the fraction of the fit images whose goal the δ
        at the end of each epoch met (what the choice was made by).
    best_epoch : Tensor of int64, shape-(K,)
        The epoch (1-based) whose δ each row of ``delta`` is: the last one
        without ``use_best``.
    steps_run : int
        Optimizer steps taken: ``epochs`` times the number of mini-batches.
    epochs : int
    skipped_rows : int or None
        Rows of δ the optimizer left unchanged at some step because their
        gradient was not finite, summed over steps (``None`` when the
        optimizer does not count them).
    """

    delta: Tensor
    per_class: bool
    classes: Tensor | None
    loss_trace: Tensor
    success_trace: Tensor
    epoch_success: Tensor | None
    best_epoch: Tensor
    steps_run: int
    epochs: int
    skipped_rows: int | None = None


# --------------------------------------------------------------------------- #
# checks
# --------------------------------------------------------------------------- #
def check_universal_attack(attack: Any) -> None:
    """Refuse the :class:`~rai_probe.perturbations.Attack` settings that only make sense per image.

    Raises
    ------
    SettingTypeError
        ``attack`` is not an :class:`~rai_probe.perturbations.Attack`.
    SettingError
        ``early_stop=True``, ``restarts > 1``, an ``epsilon_schedule``, an
        optimizer that needs per-datum losses (the APGD family,
        ``L1qAutoFrankWolfe``), or an option ``param_ndim`` other than -1;
        ``setting`` names the field (``"early_stop"``, ``"restarts"``,
        ``"epsilon_schedule"``, ``"optimizer"``, ``"param_ndim"``).

    Examples
    --------
    >>> from rai_probe.perturbations import Attack
    >>> check_universal_attack(Attack("L2ProjectedOptim", epsilon=3.0, use_best=True))   # fine
    >>> try:
    ...     check_universal_attack(Attack("L1qAutoFrankWolfe", epsilon=20.0, options={"q": 0.99}))
    ... except ValueError as error:
    ...     print(error.setting)
    optimizer
    """
    if not isinstance(attack, Attack):
        raise SettingTypeError(
            f"universal perturbation: `attack` must be a rai_probe.perturbations.Attack; got "
            f"{type(attack).__name__}",
            setting="attack",
            value=attack,
        )
    if getattr(attack.optimizer_class, "needs_datum_losses", False):
        raise SettingError(
            f"universal perturbation: {attack.optimizer} adapts its step sizes from the loss history of "
            "each datum's own iterate (best point, checkpoints), but a universal δ sees a different "
            "mini-batch at every step, so those losses do not compare: choose an optimizer with a fixed "
            "schedule (L1qFrankWolfe: the same sparse vertex; L1FrankWolfe, L1ProjectedOptim, "
            "L2ProjectedOptim, L2FrankWolfe, LinfProjectedOptim, LinfFrankWolfe)",
            setting="optimizer",
            value=attack.optimizer,
        )
    if attack.early_stop:
        raise SettingError(
            "universal perturbation: `early_stop=True` stops attacking each image once it succeeds, "
            "but a universal δ is shared by every image: set early_stop=false",
            setting="early_stop",
            value=attack.early_stop,
        )
    if attack.restarts != 1:
        raise SettingError(
            f"universal perturbation: `restarts={attack.restarts}` keeps each image's best run, but a "
            "universal δ is one tensor shared by every image: set restarts=1 (and more mode.epochs)",
            setting="restarts",
            value=attack.restarts,
        )
    if attack.epsilon_schedule is not None:
        raise SettingError(
            f"universal perturbation: `epsilon_schedule={list(attack.epsilon_schedule)}` restarts each "
            "stage from each image's best point, which a universal δ does not have: set "
            "epsilon_schedule=null",
            setting="epsilon_schedule",
            value=attack.epsilon_schedule,
        )
    param_ndim = attack.options.get("param_ndim", -1)
    if param_ndim != -1 or isinstance(param_ndim, bool):
        raise SettingError(
            f"universal perturbation: option `param_ndim={param_ndim!r}` would split the ε-ball of δ; "
            "the fit sets it (each δ is one row: its whole tensor is one ball): remove it or use -1",
            setting="param_ndim",
            value=param_ndim,
        )


def _check_count(name: str, value: Any, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise SettingError(f"`{name}` must be an integer >= {low}; got {name}={value!r}", setting=name, value=value)
    return int(value)


def _check_labels(name: str, value: Any, n: int) -> Tensor:
    if not isinstance(value, Tensor):
        raise SettingTypeError(f"`{name}` must be a torch.Tensor of shape ({n},); got {type(value).__name__}",
                               setting=name, value=value)
    if tuple(value.shape) != (n,) or value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        raise SettingError(
            f"`{name}` must be an integer tensor of shape ({n},), one class index per image; got dtype "
            f"{value.dtype} and shape {tuple(value.shape)}",
            setting=name,
        )
    return value


def _check_images(images: Any, data_range: tuple[float, float] | None) -> Tensor:
    if not isinstance(images, Tensor):
        raise SettingTypeError(f"`images` must be a torch.Tensor; got {type(images).__name__}",
                               setting="images", value=images)
    if images.ndim < 2 or images.shape[0] == 0:
        raise SettingError(
            f"`images` must be a non-empty batch of shape (N, ...), N >= 1; got shape {tuple(images.shape)}",
            setting="images",
        )
    if images.is_floating_point() and not bool(torch.isfinite(images).all()):  # once, before any work
        raise SettingError("`images` must be finite: they hold NaN or Inf values", setting="images")
    if data_range is not None and (bool((images < data_range[0]).any()) or bool((images > data_range[1]).any())):
        raise SettingError(
            f"`images` has values outside data_range={tuple(data_range)!r}: every input must already be "
            "valid for the perturbed inputs to stay valid",
            setting="images",
        )
    return images


def _check_classes(classes: Tensor, n: int, num_deltas: int | None) -> tuple[Tensor, int]:
    """The per-image δ index (int64) and the number of δ rows ``K`` (host syncs, before any work)."""
    classes = _check_labels("classes", classes, n).to(torch.int64)
    low, high = int(classes.min()), int(classes.max())
    k = high + 1 if num_deltas is None else _check_count("num_classes", num_deltas)
    if low < 0 or high >= k:
        raise SettingError(
            f"`classes` must hold δ indices in [0, {k - 1}] (one δ per class); got values in [{low}, {high}]",
            setting="classes",
        )
    return classes, k


# --------------------------------------------------------------------------- #
# applying a δ
# --------------------------------------------------------------------------- #
def _per_image_delta(images: Tensor, delta: Tensor, classes: Tensor | None) -> Tensor:
    """``delta`` broadcast (shared) or gathered (``delta[classes]``) against ``images``, checked."""
    datum = tuple(images.shape[1:])
    if classes is None:
        if tuple(delta.shape) == datum:
            return delta
        if tuple(delta.shape) == (1, *datum):
            return delta[0]
        raise SettingError(
            f"`delta` must have the shape of one image {datum} (or (1, ...)) without `classes`; got "
            f"{tuple(delta.shape)} (a per-class δ of shape (K, ...) needs `classes`)",
            setting="delta",
        )
    if delta.ndim != images.ndim or tuple(delta.shape[1:]) != datum:
        raise SettingError(
            f"`delta` must have shape (K, {', '.join(map(str, datum))}) with `classes` (one δ per class); "
            f"got {tuple(delta.shape)}",
            setting="delta",
        )
    return delta[classes.to(delta.device)]


def apply_universal(
    images: Tensor,
    delta: Tensor,
    *,
    classes: Tensor | None = None,
    data_range: tuple[float, float] | None = (0.0, 1.0),
) -> Tensor:
    """``clamp(images + δ)``: one δ for every image, or each image's class δ ``delta[classes]``.

    Parameters
    ----------
    images : Tensor, shape-(N, C, H, W)
    delta : Tensor
        Shape ``(C, H, W)`` (or ``(1, C, H, W)``): shared by every image;
        shape ``(K, C, H, W)`` with ``classes``: image ``i`` gets
        ``delta[classes[i]]``.
    classes : Tensor of int, shape-(N,), optional
        Each image's row of ``delta``.
    data_range : (low, high) or None, optional (default=(0.0, 1.0))
        The box the perturbed images are clamped into; ``None``: no clamp.

    Returns
    -------
    Tensor, shape-(N, C, H, W)
        ``images + δ`` exactly where that lies in the box, the box's bound
        elsewhere.

    Examples
    --------
    >>> import torch
    >>> images = torch.tensor([[[0.2, 0.9]], [[0.5, 0.0]]])          # (2, 1, 2)
    >>> apply_universal(images, torch.tensor([[0.25, 0.25]]))
    tensor([[[0.4500, 1.0000]],
    <BLANKLINE>
            [[0.7500, 0.2500]]])
    >>> per_class = torch.tensor([[[0.0, 0.0]], [[-0.5, 0.5]]])     # (K=2, 1, 2)
    >>> apply_universal(images, per_class, classes=torch.tensor([1, 0]))
    tensor([[[0.0000, 1.0000]],
    <BLANKLINE>
            [[0.5000, 0.0000]]])
    """
    if classes is not None:
        classes = _check_labels("classes", classes, images.shape[0])
    perturbed = images + _per_image_delta(images, delta, classes)
    if data_range is None:
        return perturbed
    return perturbed.clamp(float(data_range[0]), float(data_range[1]))


@torch.no_grad()
def universal_outputs(
    model: Callable[[Tensor], Tensor],
    images: Tensor,
    delta: Tensor,
    *,
    classes: Tensor | None = None,
    data_range: tuple[float, float] | None = (0.0, 1.0),
    batch_size: int = 256,
) -> tuple[Tensor, Tensor]:
    """The perturbed images :func:`apply_universal` makes and the model's logits on them, batch by batch.

    The model runs in eval mode with frozen parameters (restored afterwards).

    Returns
    -------
    xadv : Tensor, shape-(N, C, H, W)
    logits : Tensor, shape-(N, classes)
        On the model's device, in its output dtype.

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> xadv, logits = universal_outputs(model, torch.zeros(5, 1, 2, 2), torch.full((1, 2, 2), 0.5),
    ...                                  batch_size=2)
    >>> xadv.unique().tolist(), tuple(logits.shape)
    ([0.5], (5, 3))
    """
    batch_size = _check_count("batch_size", batch_size)
    if not isinstance(images, Tensor) or images.ndim < 2 or images.shape[0] == 0:
        raise SettingError(
            f"`images` must be a non-empty batch of shape (N, ...); got "
            f"{tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__}",
            setting="images",
        )
    n = images.shape[0]
    if classes is not None:
        classes = _check_labels("classes", classes, n)
    freeze = frozen_eval(model) if isinstance(model, nn.Module) else _NoFreeze()
    xadv, logits = [], []
    with freeze:
        for start in range(0, n, batch_size):  # evaluation in mini-batches
            part = slice(start, min(start + batch_size, n))
            x = apply_universal(images[part], delta, classes=None if classes is None else classes[part],
                                data_range=data_range)
            xadv.append(x)
            logits.append(model(x))
    return torch.cat(xadv), torch.cat(logits)


class _NoFreeze:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def universal_success(
    model: Callable[[Tensor], Tensor],
    images: Tensor,
    target: Tensor,
    delta: Tensor,
    *,
    targeted: bool = False,
    classes: Tensor | None = None,
    data_range: tuple[float, float] | None = (0.0, 1.0),
    confidence: float | None = None,
    batch_size: int = 256,
) -> Tensor:
    """Per image, whether applying ``delta`` (:func:`apply_universal`) meets the attack's goal.

    Parameters
    ----------
    model : Callable[[Tensor], Tensor]
        The classifier.
    images : Tensor, shape-(N, C, H, W)
    target : Tensor of int, shape-(N,)
        The true labels (untargeted) or the target classes (targeted).
    delta : Tensor
        ``(C, H, W)``, or ``(K, C, H, W)`` with ``classes``.
    targeted, confidence
        The goal (see :func:`goal_met`).
    classes : Tensor of int, shape-(N,), optional
        Each image's row of a per-class ``delta``.
    data_range : (low, high) or None, optional (default=(0.0, 1.0))
    batch_size : int, optional (default=256)
        Images per forward pass.

    Returns
    -------
    Tensor of bool, shape-(N,)
        The raw goal: an untargeted image the model already got wrong counts
        as met (drop clean mistakes with
        :func:`~rai_probe.probing.metrics.honest_success`).

    Examples
    --------
    >>> import torch
    >>> model = lambda x: torch.stack([-x.flatten(1).sum(1), x.flatten(1).sum(1) - 1], dim=1)
    >>> images = torch.tensor([[[0.1]], [[0.4]]])                   # class 0: sum below 0.5
    >>> universal_success(model, images, torch.tensor([0, 0]), torch.tensor([[0.3]])).tolist()
    [False, True]
    """
    target = _check_labels("target", target, images.shape[0])
    _, logits = universal_outputs(model, images, delta, classes=classes, data_range=data_range,
                                  batch_size=batch_size)
    return goal_met(logits, target, targeted=targeted, confidence=confidence)


# --------------------------------------------------------------------------- #
# fitting
# --------------------------------------------------------------------------- #
def _full_precision(logits: Tensor) -> Tensor:
    """Half-precision logits (autocast) as float32 for the loss; float32 / float64 ones unchanged."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def _perturbation(attack: Attack, rows: int, images: Tensor, generator: torch.Generator | None) -> AdditivePerturbation:
    """The δ holder, ``(rows, C, H, W)``: zeros, or the attack's random start in each row's ball."""
    dtype = images.dtype if images.is_floating_point() else None
    shape = (rows, *images.shape[1:])
    if attack.random_init is None:
        return AdditivePerturbation(shape, device=images.device, dtype=dtype)
    init_kwargs: dict[str, Any] = {"epsilon": attack.epsilon}
    if generator is not None:
        init_kwargs["generator"] = generator
    return AdditivePerturbation(shape, RANDOM_INITS[attack.random_init], device=images.device, dtype=dtype,
                                **init_kwargs)


def _useful_box(images: Tensor, index: Tensor, rows: int, data_range: tuple[float, float],
                dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Per δ row and entry, ``[low - max x, high - min x]`` over the row's images (vectorized).

    Beyond it an entry of δ clamps every one of its images (``x + δ`` leaves
    the data range for all of them), so any budget spent there is lost: the
    largest box in which every entry can still change some image. It holds 0
    (the images are in the range). A row without images gets the whole width
    ``[low - high, high - low]``.
    """
    low, high = float(data_range[0]), float(data_range[1])
    x = images.to(dtype)
    where = index.view(-1, *[1] * (x.ndim - 1)).expand_as(x)
    shape = (rows, *x.shape[1:])
    top = torch.full(shape, high, dtype=dtype, device=x.device).scatter_reduce(0, where, x, "amax", include_self=False)
    bottom = torch.full(shape, low, dtype=dtype, device=x.device).scatter_reduce(0, where, x, "amin",
                                                                                include_self=False)
    return low - top, high - bottom


def _row_scores(
    model: Callable[[Tensor], Tensor],
    images: Tensor,
    target: Tensor,
    delta: Tensor,
    classes: Tensor,
    criterion: Callable[[Tensor, Tensor], Tensor],
    attack: Attack,
    batch_size: int,
) -> tuple[Tensor, Tensor]:
    """Per δ row: how many of its fit images it breaks, and the sum of their losses (device tensors)."""
    rows = delta.shape[0]
    met = torch.zeros(rows, dtype=torch.float64, device=delta.device)
    loss = torch.zeros(rows, dtype=torch.float64, device=delta.device)
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):  # evaluation in mini-batches
            part = slice(start, min(start + batch_size, images.shape[0]))
            index = classes[part]
            x = images[part].to(delta.dtype) + delta[index]
            if attack.data_range is not None:
                x = x.clamp(*attack.data_range)
            logits = _full_precision(model(x))
            hits = goal_met(logits, target[part], targeted=attack.targeted, confidence=attack.confidence)
            met.index_add_(0, index, hits.to(torch.float64))
            loss.index_add_(0, index, criterion(logits, target[part]).detach().to(torch.float64))
    return met, loss


def fit_universal_perturbation(
    model: Callable[[Tensor], Tensor],
    images: Tensor,
    target: Tensor,
    *,
    attack: Attack,
    epochs: int = 5,
    batch_size: int = 64,
    per_class: bool = False,
    classes: Tensor | None = None,
    num_classes: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> UniversalResult:
    """Fit one perturbation shared by all ``images`` (or one per class) with ``attack``'s optimizer.

    Each epoch visits the images once, in an order drawn from ``generator``,
    in mini-batches of ``batch_size``; each mini-batch is perturbed by δ
    (each image by its class's δ with ``per_class``), clamped into
    ``attack.data_range``, and one optimizer step is taken on the mean of
    the attack's loss (``"ce"`` or ``"dlr"``): raised untargeted (away from
    the true labels), lowered targeted (toward ``target``). The optimizer,
    its options, ε, ``lr`` and ``random_init`` are the attack's; each δ stays
    in its own ε-ball and, with a data range, in the box
    ``[low - max x, high - min x]`` over its images (per entry: beyond it an
    entry clamps every image, so budget spent there would be lost; bounded
    optimizers get it as their ``bounds``, as the solver gives a per-image
    perturbation ``[low - x, high - x]``). ``attack.steps`` is not used: the
    fit takes one step per mini-batch, ``epochs · ceil(N / batch_size)`` in
    all. With
    ``per_class``, a δ whose class has no image in a mini-batch is left
    unchanged by that step. With ``attack.use_best``, δ (each class's δ) is
    the epoch end that breaks the most fit images (then the better summed
    loss), at the cost of one forward pass over the images per epoch.

    Parameters
    ----------
    model : Callable[[Tensor], Tensor]
        The classifier; an ``nn.Module`` runs in eval mode with frozen
        parameters during the fit (both restored afterwards).
    images : Tensor, shape-(N, C, H, W)
        The fit images, inside ``attack.data_range``; never modified.
    target : Tensor of int, shape-(N,)
        True labels (untargeted attack) or target classes (targeted).
    attack : Attack
        Optimizer, ε, loss, goal, random start, data range; its per-image
        settings are refused (:func:`check_universal_attack`).
    epochs : int, optional (default=5)
        Passes over the images, >= 1.
    batch_size : int, optional (default=64)
        Images per optimizer step, >= 1.
    per_class : bool, optional (default=False)
        One δ per class instead of one for all.
    classes : Tensor of int, shape-(N,), optional
        With ``per_class``: the class (row of δ) of each image; default
        ``target`` (the label untargeted, the target class targeted).
    num_classes : int, optional
        With ``per_class``: the number of δ rows ``K`` (default
        ``classes.max() + 1``).
    generator : torch.Generator, optional
        Seeds the order of the images, the random start and any randomness
        of the optimizer (on the images' device).
    progress : bool, optional (default=False)
        A progress bar over the steps (:mod:`rai_probe.progress`; on a
        terminal only), with the mean loss of each finished epoch.

    Returns
    -------
    UniversalResult
        ``delta`` of shape ``(C, H, W)``, or ``(K, C, H, W)`` with ``per_class``.

    Raises
    ------
    SettingError
        A bad argument (naming it), or a per-image setting of ``attack``
        (:func:`check_universal_attack`), before any work.

    Examples
    --------
    Two classes, each flipped by its own direction; one δ per class:

    >>> import torch
    >>> from rai_probe.perturbations import Attack
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2, 2))
    >>> with torch.no_grad():
    ...     _ = model[1].weight.copy_(torch.tensor([[4.0, -4.0], [-4.0, 4.0]]))
    ...     _ = model[1].bias.zero_()
    >>> images = torch.tensor([[0.6, 0.4], [0.7, 0.5], [0.4, 0.6], [0.3, 0.5]]).view(4, 1, 2)
    >>> labels = torch.tensor([0, 0, 1, 1])
    >>> fit = fit_universal_perturbation(model, images, labels, per_class=True, epochs=3, batch_size=2,
    ...     attack=Attack("LinfProjectedOptim", epsilon=0.3, lr=0.1), generator=torch.Generator().manual_seed(0))
    >>> fit.delta.shape, fit.steps_run
    (torch.Size([2, 1, 2]), 6)
    >>> fit.delta.squeeze(1)                     # class 0 pushed toward class 1, and back
    tensor([[-0.3000,  0.3000],
            [ 0.3000, -0.3000]])
    """
    check_universal_attack(attack)
    epochs = _check_count("epochs", epochs)
    batch_size = _check_count("batch_size", batch_size)
    if not isinstance(per_class, bool):
        raise SettingTypeError(f"`per_class` must be True or False; got per_class={per_class!r}",
                               setting="per_class", value=per_class)
    images = _check_images(images, attack.data_range)
    n = images.shape[0]
    target = _check_labels("target", target, n).to(device=images.device, dtype=torch.int64)
    if per_class:
        index, rows = _check_classes(target if classes is None else classes, n, num_classes)
        index = index.to(images.device)
    else:
        if classes is not None:
            raise SettingError("`classes` is only used with per_class=True", setting="classes")
        index, rows = torch.zeros(n, dtype=torch.int64, device=images.device), 1

    freeze = frozen_eval(model) if isinstance(model, nn.Module) else _NoFreeze()
    with freeze:
        _check_model_and_target(model, images, target)
        return _fit(model, images, target, index, rows, attack, epochs, batch_size, per_class, generator, progress)


def _check_model_and_target(model: Callable[[Tensor], Tensor], images: Tensor, target: Tensor) -> None:
    """One forward of the first image: logits of shape (1, classes), finite, and ``target`` among the classes."""
    dtype = images.dtype if images.is_floating_point() else torch.get_default_dtype()
    with torch.no_grad():
        first = model(images[:1].to(dtype))
    if not isinstance(first, Tensor) or first.ndim != 2 or first.shape[0] != 1:
        shape = tuple(first.shape) if isinstance(first, Tensor) else type(first).__name__
        raise SettingError(f"`model` must output logits of shape (N, classes); got {shape} for one image",
                           setting="model")
    if not bool(torch.isfinite(first).all()):
        raise SettingError("`model` returned NaN or Inf logits on the first image", setting="model")
    low, high = int(target.min()), int(target.max())
    if low < 0 or high >= first.shape[1]:
        raise SettingError(
            f"`target` must hold class indices in [0, {first.shape[1] - 1}], the model's {first.shape[1]} "
            f"outputs; got values in [{low}, {high}]",
            setting="target",
        )


def _fit(
    model: Callable[[Tensor], Tensor],
    images: Tensor,
    target: Tensor,
    index: Tensor,
    rows: int,
    attack: Attack,
    epochs: int,
    batch_size: int,
    per_class: bool,
    generator: torch.Generator | None,
    progress: bool,
) -> UniversalResult:
    """The fit loop of :func:`fit_universal_perturbation` (arguments checked, model frozen)."""
    n = images.shape[0]
    batches = -(-n // batch_size)
    total = epochs * batches
    perturbation = _perturbation(attack, rows, images, generator)
    delta = perturbation.delta
    kwargs = attack._optimizer_kwargs(attack.epsilon, total)
    if generator is not None and takes_option(attack.optimizer_class, "generator"):
        kwargs.setdefault("generator", generator)
    box = None
    if attack.data_range is not None and "bounds" not in attack.options:
        box = _useful_box(images, index, rows, attack.data_range, delta.dtype)
        if takes_option(attack.optimizer_class, "bounds"):  # the optimizer keeps its iterates in ball ∩ box
            kwargs["bounds"] = box
        with torch.no_grad():  # the start: moving entries toward 0 keeps it in the ball
            torch.clamp(delta, *box, out=delta)
    optim = attack.make_optimizer()([delta], **kwargs)
    counts_skipped = isinstance(optim, SkipsNonFiniteRows)
    skipped_before = optim.skipped_rows.clone() if counts_skipped else None
    criterion = attack_criterion(attack.loss, attack.targeted) or nn.CrossEntropyLoss(reduction="none")
    low_high = tuple(float(v) for v in attack.data_range) if attack.data_range is not None else None

    trace: list[Tensor] = []
    success_trace: list[Tensor] = []
    epoch_success: list[Tensor] = []
    best = best_met = best_loss = None
    best_epoch = torch.full((rows,), epochs, dtype=torch.int64, device=delta.device)
    with torch.enable_grad(), Progress(total, "universal δ", enabled=progress) as bar:
        for epoch in range(epochs):  # epochs x mini-batches: one optimizer step each
            if generator is not None:
                order = torch.randperm(n, generator=generator, device=generator.device).to(images.device)
            else:
                order = torch.randperm(n, device=images.device)
            for start in range(0, n, batch_size):
                picked = order[start : start + batch_size]
                x = images[picked].to(delta.dtype)
                cls = index[picked]
                xadv = perturbation(x) if not per_class else x + delta[cls]
                if low_high is not None:
                    xadv = xadv.clamp(*low_high)
                logits = _full_precision(model(xadv))
                losses = criterion(logits, target[picked])
                objective = losses.mean()
                optim.zero_grad(set_to_none=True)
                (objective if attack.targeted else -objective).backward()
                if per_class:  # a class absent from the mini-batch keeps its δ (vectorized, no sync)
                    present = torch.zeros(rows, dtype=torch.bool, device=delta.device).index_fill_(0, cls, True)
                    before = delta.detach().clone()
                optim.step()
                with torch.no_grad():
                    if per_class:
                        delta.copy_(torch.where(present.view(-1, *[1] * (delta.ndim - 1)), delta, before))
                    if box is not None:  # exact for bounded optimizers up to rounding, which this removes
                        torch.clamp(delta, *box, out=delta)
                trace.append(objective.detach())
                success_trace.append(goal_met(logits.detach(), target[picked], targeted=attack.targeted,
                                              confidence=attack.confidence).float().mean())
                bar.update()
            if attack.use_best:  # the epoch end's δ against the best so far, per row (no host sync)
                met, loss = _row_scores(model, images, target, delta.detach(), index, criterion, attack, batch_size)
                epoch_success.append(met.sum() / n)
                if best is None:
                    best, best_met, best_loss = delta.detach().clone(), met, loss
                    best_epoch.fill_(epoch + 1)
                else:
                    closer = loss < best_loss if attack.targeted else loss > best_loss
                    better = (met > best_met) | ((met == best_met) & closer)
                    best = torch.where(better.view(-1, *[1] * (delta.ndim - 1)), delta.detach(), best)
                    best_met, best_loss = torch.where(better, met, best_met), torch.where(better, loss, best_loss)
                    best_epoch = torch.where(better, epoch + 1, best_epoch)
            if bar.enabled:  # one host sync per epoch, only for the bar
                bar.update(0, loss=float(torch.stack(trace[-batches:]).mean()))
    fitted = (best if best is not None else delta.detach()).clone()
    skipped = None
    if counts_skipped:
        skipped = int(optim.skipped_rows - skipped_before.to(optim.skipped_rows.device))
        if skipped:
            log.warning("universal δ: %d row(s) had NaN or Inf gradients and were left unchanged at those steps",
                        skipped)
    return UniversalResult(
        delta=fitted if per_class else fitted[0],
        per_class=per_class,
        classes=index if per_class else None,
        loss_trace=torch.stack(trace),
        success_trace=torch.stack(success_trace),
        epoch_success=torch.stack(epoch_success).cpu() if epoch_success else None,
        best_epoch=best_epoch,
        steps_run=total,
        epochs=epochs,
        skipped_rows=skipped,
    )

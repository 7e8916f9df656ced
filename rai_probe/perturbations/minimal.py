"""Each image's minimal attack radius ε*, by a batched bisection over per-image radii.

:func:`minimal_radius` asks, for every image at once, "what is the smallest
radius at which this attack succeeds?". It attacks all images at
``epsilon_max``, then halves each image's bracket ``[lo, hi]`` on a log
scale: the images still open are attacked together, each at its own radius
``sqrt(lo · hi)`` (the optimizers take an ``(N,)`` epsilon), a success
lowers ``hi`` to the norm of the successful perturbation (which is at most
the radius), a failure raises ``lo``; an image drops out once
``hi <= lo · (1 + tolerance)``. No Python loop runs over images; the rounds
are at most ``1 + ceil(log2(log(epsilon_max / epsilon_min) / log(1 + tolerance)))``.

ε* is the norm of the smallest successful perturbation found, so the attack
provably succeeds within ε* (the perturbation returned is that success).
Below ε* the answer is as good as the attack: ``epsilon_failed`` records the
largest radius at which it failed (``epsilon_min`` when it never failed:
such an image's ε* may lie anywhere below ``epsilon_min · (1 + tolerance)``).
An image with no success at ``epsilon_max`` gets ε* = NaN.

Each round is a run of the attack with early stopping (a success is all a
round needs), its ``use_best`` pick returning the successful iterate. With
``warm_start=True`` a round starts from the image's perturbation of the
previous round, projected exactly onto the new ball and the data's box: a
feasible start, so every iterate is still an attack at that radius.
``steps`` (default: the attack's own) sets the steps of each round; an
attack whose ``lr`` is a step length (the projected family) takes steps
``attack.steps / steps`` times longer in a shorter round, so that a round
can travel as far as the whole attack.

Examples
--------
A linear two-class model whose logit gap is ``1 - 2 x₀``: the image at
``x₀ = 0.2`` needs an L1 change of 0.3 to reach the boundary at 0.5.

>>> import torch
>>> from rai_probe.perturbations import Attack
>>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2, 2))
>>> with torch.no_grad():
...     _ = model[1].weight.copy_(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
...     _ = model[1].bias.copy_(torch.tensor([0.5, -0.5]))
>>> images = torch.tensor([[[[0.2, 0.0]]], [[[0.4, 0.0]]]])
>>> attack = Attack("L1FrankWolfe", epsilon=1.0, steps=20, data_range=(0.0, 1.0))
>>> found = minimal_radius(attack, model, images, torch.tensor([0, 0]),
...                        epsilon_min=0.01, epsilon_max=1.0, tolerance=0.05)
>>> exact = torch.tensor([0.3, 0.1], dtype=torch.float64)
>>> bool(((found.epsilon >= exact - 1e-6) & (found.epsilon <= exact * 1.05 + 1e-6)).all())  # within 5 %
True
>>> bool((found.epsilon <= found.epsilon_failed * 1.05 + 1e-6).all())
True
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from ..errors import SettingError
from .attacks import Attack

log = logging.getLogger(__name__)

__all__ = ["MinimalRadii", "minimal_radius", "max_rounds", "perturbation_norm"]


@dataclass
class MinimalRadii:
    """What :func:`minimal_radius` found, one entry per image.

    Attributes
    ----------
    epsilon : Tensor of float64, shape-(N,)
        ε*: the norm of the smallest successful perturbation found; NaN where
        the attack did not succeed at ``epsilon_max``.
    epsilon_failed : Tensor of float64, shape-(N,)
        The largest radius at which the attack failed (``epsilon_max`` where
        it never succeeded, ``epsilon_min`` where it never failed). An
        attack is not always monotone in its radius: a success found at a
        larger radius may be smaller than a radius that failed, so this may
        exceed ``epsilon``.
    xadv : Tensor, shape-(N, ...)
        The success at ε* (the last failure's iterate where none).
    success : Tensor of bool, shape-(N,)
    logits : Tensor, shape-(N, C)
        The model's output at ``xadv``.
    steps : Tensor of int64, shape-(N,)
        Optimizer steps each image took part in, over all rounds (a round
        that early-stops runs all its images for its ``steps_run``).
    rounds : Tensor of int64, shape-(N,)
        Rounds each image was attacked in.
    first_success_step : Tensor of int64, shape-(N,)
        In the round that found ε*, the first step that succeeded; -1 where none did.
    optimizer_steps : int
        Optimizer steps taken over all rounds (each round steps its open
        images together): the search's cost in ``optimizer.step()`` calls.
    """

    epsilon: Tensor
    epsilon_failed: Tensor
    xadv: Tensor
    success: Tensor
    logits: Tensor
    steps: Tensor
    rounds: Tensor
    first_success_step: Tensor
    optimizer_steps: int = 0


def max_rounds(epsilon_min: float, epsilon_max: float, tolerance: float) -> int:
    """The most rounds :func:`minimal_radius` can take for a bracket and tolerance.

    Examples
    --------
    >>> max_rounds(1.0, 40.0, 0.05)                   # one at epsilon_max, then 7 halvings
    8
    """
    halvings = math.log(epsilon_max / epsilon_min) / math.log1p(tolerance)
    return 1 + max(0, math.ceil(math.log2(halvings))) if halvings > 1 else 1


def perturbation_norm(delta: Tensor, norm: str) -> Tensor:
    """Per-row ``"l1"``, ``"l2"`` or ``"linf"`` norm of ``delta`` (shape ``(N, ...)``), in float64.

    Examples
    --------
    >>> perturbation_norm(torch.tensor([[3.0, -4.0]]), "l2").tolist()
    [5.0]
    """
    flat = delta.detach().flatten(1).double()
    order = {"l1": 1.0, "l2": 2.0, "linf": math.inf}[norm]
    return torch.linalg.vector_norm(flat, ord=order, dim=1)


def _check_bracket(epsilon_min: Any, epsilon_max: Any, tolerance: Any) -> tuple[float, float, float]:
    def real(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    if not real(epsilon_min) or epsilon_min <= 0:
        raise SettingError(f"`epsilon_min` must be a finite number > 0; got {epsilon_min!r}", setting="epsilon_min",
                           value=epsilon_min)
    if not real(epsilon_max) or epsilon_max <= epsilon_min:
        raise SettingError(
            f"`epsilon_max` must be a finite number > epsilon_min={epsilon_min!r}; got {epsilon_max!r}",
            setting="epsilon_max", value=epsilon_max)
    if not real(tolerance) or not 0 < tolerance < 1:
        raise SettingError(f"`tolerance` must be in (0, 1); got {tolerance!r}", setting="tolerance", value=tolerance)
    return float(epsilon_min), float(epsilon_max), float(tolerance)


def minimal_radius(
    attack: Attack,
    model: Callable[[Tensor], Tensor],
    images: Tensor,
    target: Tensor,
    *,
    epsilon_min: float,
    epsilon_max: float,
    tolerance: float = 0.05,
    steps: int | None = None,
    warm_start: bool = True,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> MinimalRadii:
    """Each image's smallest successful radius ε* within ``[epsilon_min, epsilon_max]``, to a relative ``tolerance``.

    Parameters
    ----------
    attack : Attack
        Any attack of :data:`~rai_probe.perturbations.ATTACK_OPTIMIZERS` (L1,
        L2 or L∞); its ``epsilon`` is replaced by each image's radius, and it
        runs with early stopping and its successful iterate returned.
    model, images, target
        As for :meth:`Attack.run`.
    epsilon_min, epsilon_max : float
        The bracket, ``0 < epsilon_min < epsilon_max``.
    tolerance : float, optional (default=0.05)
        Relative resolution: the search stops for an image once the largest
        failing radius and ε* are within a factor ``1 + tolerance``. In (0, 1).
    steps : int, optional
        Optimizer steps of each round (default: ``attack.steps``).
    warm_start : bool, optional (default=True)
        Start each round from the image's previous perturbation, projected
        onto the new radius's ball ∩ box (else from the attack's own start).
    generator : torch.Generator, optional
        Seeds the attack's random starts (drawn per round).
    progress : bool, optional (default=False)
        Log each round's radius range and open images.

    Returns
    -------
    MinimalRadii
    """
    epsilon_min, epsilon_max, tolerance = _check_bracket(epsilon_min, epsilon_max, tolerance)
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise SettingError(f"`steps` must be an integer >= 1; got {steps!r}", setting="steps", value=steps)
    steps = steps or attack.steps
    round_attack = attack.with_(early_stop=True, use_best=True, steps=steps)
    if attack.lr_is_step_length and steps < attack.steps:  # a round travels as far as the whole attack would
        round_attack = round_attack.with_(lr=attack.lr * attack.steps / steps)
    n = images.shape[0]
    device = images.device
    lo = torch.full((n,), epsilon_min, dtype=torch.float64, device=device)
    hi = torch.full((n,), epsilon_max, dtype=torch.float64, device=device)
    found = torch.zeros(n, dtype=torch.bool, device=device)
    spent = torch.zeros(n, dtype=torch.int64, device=device)
    rounds = torch.zeros(n, dtype=torch.int64, device=device)
    first = torch.full((n,), -1, dtype=torch.int64, device=device)
    xadv = images.detach().clone()
    logits: Tensor | None = None
    previous = torch.zeros_like(images) if warm_start else None
    open_rows = torch.arange(n, device=device)
    radius = hi.clone()
    optimizer_steps = 0
    for index in range(max_rounds(epsilon_min, epsilon_max, tolerance)):
        if open_rows.numel() == 0:
            break
        if progress:
            rows_radius = radius[open_rows]
            log.info(
                "round %d: %d images at radii %.4g to %.4g", index + 1, open_rows.numel(),
                float(rows_radius.min()), float(rows_radius.max()))
        start = None if previous is None or index == 0 else previous[open_rows]
        result = round_attack.run(model, images[open_rows], target[open_rows], generator=generator,
                                  epsilon=radius[open_rows].to(images.dtype if images.is_floating_point()
                                                               else torch.float32),
                                  start=start)
        if logits is None:
            logits = torch.zeros((n, *result.logits.shape[1:]), dtype=result.logits.dtype, device=device)
        met = result.success.to(device)
        delta = result.xadv - images[open_rows].to(result.xadv.dtype)
        size = perturbation_norm(delta, attack.norm).to(device)
        spent[open_rows] += result.steps_run
        optimizer_steps += result.steps_run
        rounds[open_rows] += 1
        won = open_rows[met]
        hi[won] = torch.minimum(radius[won], size[met])
        found[won] = True
        xadv[won] = result.xadv[met].to(xadv.dtype)
        logits[won] = result.logits[met].to(logits.dtype)
        first[won] = result.first_success_step[met].to(device)
        lost = open_rows[~met]
        lo[lost] = torch.where(found[lost], radius[lost], hi[lost])  # never found: failed at epsilon_max
        never = ~found[lost]  # failed at epsilon_max: keep the failure's iterate
        xadv[lost[never]] = result.xadv[~met][never].to(xadv.dtype)
        logits[lost[never]] = result.logits[~met][never].to(logits.dtype)
        if previous is not None:
            previous[open_rows] = delta.to(previous.dtype)
        still = found[open_rows] & (hi[open_rows] > lo[open_rows] * (1 + tolerance))
        open_rows = open_rows[still]
        radius[open_rows] = torch.sqrt(lo[open_rows] * hi[open_rows])
    epsilon = torch.where(found, hi, torch.full_like(hi, math.nan))
    return MinimalRadii(
        epsilon=epsilon,
        epsilon_failed=lo,
        xadv=xadv,
        success=found,
        logits=logits if logits is not None else torch.zeros((0, 0)),
        steps=spent,
        rounds=rounds,
        first_success_step=first,
        optimizer_steps=optimizer_steps,
    )

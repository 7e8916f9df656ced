"""How good is an explanation? Faithfulness, minimality and stability of sparse perturbations.

A sparse perturbation δ that changes a model's decision is an explanation:
its pixels are what the model relies on. These metrics ask whether it can be
trusted. Every function here is vectorized over the batch (no per-image
Python loop) and runs the model in ``torch.no_grad()`` on chunks of inputs;
the cost of each is given in forward passes per image.

**Faithfulness (deletion / insertion; Petsiuk, Das & Saenko 2018, "RISE").**
The changed pixels are ranked by ``|δ|`` (summed over channels). *Insertion*
applies only the top ``m`` of them to the clean image; *deletion* removes the
top ``m`` from the full perturbation (restores them to the clean values), for
``m`` from 0 to the perturbation's L0 on a grid of ``points`` fractions
``k / points`` of L0 (every ``m`` when L0 <= ``points``). The curve records
the probability of the *reference class* (the true class, or the clean
prediction where the label is unknown, when untargeted; the target class
when targeted); its area over the fraction axis ``[0, 1]`` (trapezoids) is
``insertion_auc`` / ``deletion_auc``. ``pixels_to_flip`` is the smallest
evaluated ``m`` whose insertion meets the attack's goal (untargeted: the
prediction leaves the reference class; targeted: it is the target), NaN
when even the whole perturbation does not. A faithful explanation flips with
few of its own pixels (small ``pixels_to_flip``; untargeted: small
insertion AUC, large deletion AUC). The same curves for a *random* ranking of
the same pixels are the baseline (``*_random``). Cost: ``2 * points`` forward
passes (``4 * points`` with the baseline).

**Minimality.** ``droppable_fraction``: a greedy pass over the changed
pixels in order of increasing ``|δ|`` drops each one (restores it) when the
perturbation without it still meets the goal; the fraction of pixels
dropped says how far the explanation is from minimal (0: every pixel is
needed). Cost: one forward pass per changed pixel of the largest
perturbation in the batch (capped by ``max_pixels``: pixels beyond it are
kept).

**Stability.** Across ``R`` runs of the attack (restarts or seeds), the IoU
of the supports (changed pixels) and the cosine similarity of the
perturbations, averaged over the pairs of runs, per image
(:func:`stability`). Identical runs give 1 and 1. Cost: ``R`` attacks.

Examples
--------
A linear two-class model where pixel 0 pushes toward class 1 and pixel 1
barely matters:

>>> import torch
>>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2, 2, bias=False))
>>> with torch.no_grad():
...     _ = model[1].weight.copy_(torch.tensor([[0.0, 0.0], [4.0, 0.1]]))
>>> x = torch.zeros(1, 1, 1, 2)
>>> delta = torch.tensor([[[[1.0, 0.5]]]])                  # pixel 0 is the larger change
>>> faith = faithfulness(model, x, delta, reference=torch.tensor([0]), targeted=False, points=4)
>>> faith["pixels_to_flip"].tolist()                          # pixel 0 alone flips it
[1.0]
>>> minimality(model, x, delta, reference=torch.tensor([0]), targeted=False)["droppable_fraction"].tolist()
[0.5]
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = ["QUALITY_KEYS", "faithfulness", "minimality", "stability", "goal_met"]

#: Per-image keys of :func:`faithfulness`, :func:`minimality` and :func:`stability`.
QUALITY_KEYS = (
    "insertion_auc",
    "deletion_auc",
    "pixels_to_flip",
    "insertion_auc_random",
    "deletion_auc_random",
    "pixels_to_flip_random",
    "droppable_fraction",
    "stability_iou",
    "stability_cosine",
)

Model = Callable[[Tensor], Tensor]


def goal_met(logits: Tensor, reference: Tensor, *, targeted: bool) -> Tensor:
    """Per row: untargeted, the prediction left ``reference``; targeted, it is ``reference``."""
    predicted = logits.argmax(dim=1)
    return predicted == reference if targeted else predicted != reference


def _pixel_magnitude(delta: Tensor) -> Tensor:
    """``|δ|`` summed over channels, flattened: ``(N, H * W)``."""
    return delta.abs().sum(dim=1).flatten(1)


def _ranks(score: Tensor) -> Tensor:
    """Each pixel's rank by decreasing ``score`` (0: the largest), ``(N, P)``; ties by position."""
    order = score.argsort(dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(score.shape[1], device=score.device).expand_as(order))
    return ranks


def _hash_noise(seed: int, rows: Tensor, pixels: int) -> Tensor:
    """Uniform numbers in [0, 1) for each (row, pixel), a function of ``seed``, the row and the pixel only.

    A vectorized integer hash (splitmix64-style mixing, in 62-bit arithmetic
    so that int64 never overflows), so that every image gets the same
    random ranking whatever the batch it is in.
    """
    mask = (1 << 62) - 1
    pixel = torch.arange(pixels, device=rows.device, dtype=torch.int64)
    value = (rows.to(torch.int64).view(-1, 1) * 1_000_003 + pixel.view(1, -1) + (seed & 0xFFFFFF) * 7_919) & mask
    for multiplier in (0x2545F4914F6CDD1D & mask, 0x1B873593 * 0x9E3779B1 & mask):
        value = ((value ^ (value >> 29)) * (multiplier & 0xFFFFFFFF)) & mask
    return (value >> 30).double() / float(1 << 32)


def _evaluate(model: Model, inputs: Tensor, chunk: int) -> Tensor:
    """``model`` on ``inputs`` in chunks of ``chunk`` rows, without gradients; float32 logits."""
    with torch.no_grad():
        return torch.cat([model(inputs[i : i + chunk]).float() for i in range(0, inputs.shape[0], chunk)])


def _curves(
    model: Model, x: Tensor, delta: Tensor, ranks: Tensor, counts: Tensor, reference: Tensor,
    targeted: bool, chunk: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Insertion and deletion probabilities ``(N, K + 1)`` and insertion goal ``(N, K + 1)`` at ``counts``.

    ``counts`` ``(N, K + 1)`` holds how many top-ranked pixels are applied
    (insertion) or removed (deletion) at each point, from 0.
    """
    n, k1 = counts.shape
    channels, height, width = x.shape[1:]
    keep = (ranks.unsqueeze(1) < counts.unsqueeze(2)).view(n, k1, 1, height, width).to(x.dtype)  # top-m masks
    inserted = x.unsqueeze(1) + delta.unsqueeze(1) * keep
    deleted = x.unsqueeze(1) + delta.unsqueeze(1) * (1 - keep)
    inputs = torch.cat([inserted, deleted]).reshape(2 * n * k1, channels, height, width)
    logits = _evaluate(model, inputs, chunk).view(2, n, k1, -1)
    probability = logits.softmax(dim=-1).gather(-1, reference.view(1, n, 1, 1).expand(2, n, k1, 1)).squeeze(-1)
    met = goal_met(logits[0].reshape(n * k1, -1), reference.repeat_interleave(k1), targeted=targeted).view(n, k1)
    return probability[0], probability[1], met


def _auc(values: Tensor) -> Tensor:
    """Trapezoid area of ``values`` ``(N, K + 1)`` over ``K + 1`` evenly spaced points of ``[0, 1]``."""
    k = values.shape[1] - 1
    return (values[:, 1:] + values[:, :-1]).sum(dim=1) / (2 * k)


def faithfulness(
    model: Model,
    x: Tensor,
    delta: Tensor,
    *,
    reference: Tensor,
    targeted: bool,
    points: int = 32,
    random_baseline: bool = True,
    seed: int = 0,
    rows: Tensor | None = None,
    atol: float = 0.0,
    chunk: int = 256,
) -> dict[str, Tensor]:
    """Deletion/insertion curves of each perturbation and the pixels it needs to flip (see the module docs).

    Parameters
    ----------
    model : Callable
        The classifier (eval mode).
    x, delta : Tensor, shape-(N, C, H, W)
        Clean images and their perturbations.
    reference : Tensor of int, shape-(N,)
        The class whose probability the curves record: the true class (or
        clean prediction) when untargeted, the target when targeted.
    targeted : bool
    points : int, optional (default=32)
        Points of each curve besides ``m = 0``.
    random_baseline : bool, optional (default=True)
        Also the curves of a random ranking of the same changed pixels.
    seed : int, optional
        Seeds the random ranking.
    rows : Tensor of int, shape-(N,), optional
        Each image's row number in the whole job (default ``0 .. N - 1``):
        the random ranking of an image depends only on ``seed`` and its row,
        not on which other images share its batch (shards and resumed jobs
        rank exactly as one job).
    atol : float, optional
        A pixel counts as changed when ``|δ|`` summed over channels exceeds it.
    chunk : int, optional
        Rows per forward pass.

    Returns
    -------
    dict of str to Tensor, each shape-(N,), float64
        ``insertion_auc``, ``deletion_auc``, ``pixels_to_flip`` (NaN: never)
        and, with the baseline, the same with ``_random``. An image with no
        changed pixel has NaN everywhere.
    """
    if isinstance(points, bool) or not isinstance(points, int) or points < 1:
        raise ValueError(f"`points` must be an integer >= 1; got points={points!r}")
    magnitude = _pixel_magnitude(delta)
    changed = magnitude > atol
    l0 = changed.sum(dim=1)
    fractions = torch.arange(points + 1, device=x.device, dtype=torch.float64) / points
    counts = torch.ceil(fractions.unsqueeze(0) * l0.unsqueeze(1).double()).long()  # (N, K + 1), 0 .. L0
    rankings = {"": _ranks(torch.where(changed, magnitude, -1.0))}
    if random_baseline:
        rows = torch.arange(x.shape[0]) if rows is None else rows
        noise = _hash_noise(seed, rows.to(x.device), magnitude.shape[1])
        rankings["_random"] = _ranks(torch.where(changed, noise, -1.0))
    out: dict[str, Tensor] = {}
    empty = l0 == 0
    for suffix, ranks in rankings.items():
        inserted, deleted, met = _curves(model, x, delta, ranks, counts, reference, targeted, chunk)
        first = torch.where(met, counts, l0.max() + 1 if l0.numel() else 1).min(dim=1).values.double()
        flips = torch.where(met.any(dim=1) & ~empty, first, torch.nan)
        out[f"insertion_auc{suffix}"] = torch.where(empty, torch.nan, _auc(inserted.double()))
        out[f"deletion_auc{suffix}"] = torch.where(empty, torch.nan, _auc(deleted.double()))
        out[f"pixels_to_flip{suffix}"] = flips
    return out


def minimality(
    model: Model,
    x: Tensor,
    delta: Tensor,
    *,
    reference: Tensor,
    targeted: bool,
    max_pixels: int = 256,
    atol: float = 0.0,
) -> dict[str, Tensor]:
    """The fraction of each perturbation's pixels a greedy pass can drop while it still meets the goal.

    Pixels are visited in order of increasing ``|δ|``; a pixel is dropped
    (restored to its clean value) when the perturbation without it, and
    without the pixels dropped before, still meets the goal. Images whose
    perturbation does not meet the goal get NaN. All images advance
    together: one forward pass of the batch per visited rank, at most
    ``max_pixels`` ranks (larger perturbations keep their remaining pixels).

    Returns
    -------
    dict
        ``droppable_fraction`` (float64, shape-(N,)) and ``minimal_delta``
        (the perturbation after the pass, shape of ``delta``).
    """
    magnitude = _pixel_magnitude(delta)
    changed = magnitude > atol
    l0 = changed.sum(dim=1)
    n, pixels = magnitude.shape
    ranks = _ranks(torch.where(changed, -magnitude, -torch.inf))  # rank 0: the smallest change
    kept = changed.clone()
    with torch.no_grad():
        start = goal_met(model(x + delta).float(), reference, targeted=targeted)
    visits = min(int(l0.max()) if n else 0, max_pixels)
    height, width = delta.shape[2:]
    for rank in range(visits):  # sequential by nature: each step depends on what was dropped before
        trial = kept & ~(ranks == rank)
        candidate = x + delta * trial.view(n, 1, height, width).to(delta.dtype)
        with torch.no_grad():
            still = goal_met(model(candidate).float(), reference, targeted=targeted)
        drop = still & start & (rank < l0)
        kept = torch.where(drop.unsqueeze(1), trial, kept)
    dropped = (changed & ~kept).sum(dim=1).double()
    fraction = torch.where(start & (l0 > 0), dropped / l0.clamp(min=1).double(), torch.nan)
    return {"droppable_fraction": fraction, "minimal_delta": delta * kept.view(n, 1, height, width).to(delta.dtype)}


def stability(deltas: Tensor, *, atol: float = 0.0) -> dict[str, Tensor]:
    """Agreement of ``R`` perturbations of each image, ``deltas`` of shape ``(R, N, C, H, W)``.

    Returns the mean over the ``R (R - 1) / 2`` pairs of runs of the IoU of
    their supports (changed pixels; two empty supports agree: 1) and of the
    cosine similarity of the perturbations (0 when one is zero, 1 when both
    are), per image.

    Examples
    --------
    >>> import torch
    >>> a = torch.tensor([[[[1.0, 0.0, 2.0]]]])
    >>> same = stability(torch.stack([a, a]))
    >>> same["stability_iou"].tolist(), same["stability_cosine"].tolist()
    ([1.0], [1.0])
    >>> other = stability(torch.stack([a, torch.tensor([[[[0.0, 1.0, 2.0]]]])]))
    >>> other["stability_iou"].tolist()
    [0.3333333333333333]
    """
    if deltas.ndim != 5 or deltas.shape[0] < 2:
        raise ValueError(f"`deltas` must have shape (R, N, C, H, W) with R >= 2; got {tuple(deltas.shape)}")
    runs = deltas.shape[0]
    support = deltas.abs().sum(dim=2).flatten(2) > atol  # (R, N, P)
    flat = deltas.flatten(2).double()  # (R, N, D)
    squares = (flat * flat).sum(dim=2)
    norms = squares.sqrt()
    first, second = torch.triu_indices(runs, runs, offset=1)
    inter = (support[first] & support[second]).sum(dim=2).double()
    union = (support[first] | support[second]).sum(dim=2).double()
    iou = torch.where(union > 0, inter / union.clamp(min=1), 1.0)
    dot = (flat[first] * flat[second]).sum(dim=2)
    both = (norms[first] > 0) & (norms[second] > 0)
    none = (norms[first] == 0) & (norms[second] == 0)
    ratio = (dot / (squares[first] * squares[second]).sqrt().clamp(min=1e-300)).clamp(-1.0, 1.0)
    cosine = torch.where(both, ratio, torch.where(none, 1.0, 0.0))
    return {"stability_iou": iou.mean(dim=0), "stability_cosine": cosine.mean(dim=0)}

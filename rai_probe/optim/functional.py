"""Pure tensor transforms: the functional core of :mod:`rai_probe.optim`.

Every function here acts **per row**: the input has shape ``(N, d0, d1, ...)``
and the transform is applied independently to each of the ``N`` sub-tensors of
shape ``(d0, d1, ...)``, exactly as a :class:`~rai_probe.optim.ParamTransformingOptimizer`
hands parameters and gradients to its transforms after the ``param_ndim``
reshape. Functions whose name ends in ``_`` work in place and return their
input; the others return a new tensor and leave the input untouched.

All functions are vectorized over rows (no Python loop over rows or entries),
never synchronize with the host, accept float16, bfloat16, float32 and float64
on any device, and compute reductions of half-precision inputs in float32.
A zero row stays zero: no NaN escapes from a zero gradient.

Sparsity convention: ``q`` is the fraction of entries **dropped**; a row of
``n`` entries keeps ``k = round((1 - q) * n)`` entries (Python's ``round``,
which rounds halves to even). ``q = 0.99`` keeps the largest 1 %.

Examples
--------
>>> import torch
>>> from rai_probe.optim import functional as F
>>> g = torch.tensor([[-1.0, -2.0, 3.0, 0.5]])
>>> F.topq(g, q=0.5)
tensor([[ 0., -2.,  3.,  0.]])
>>> F.l1q_normalize(g, q=0.5)
tensor([[ 0.0000, -0.5000,  0.5000,  0.0000]])
>>> F.project_l1_ball(torch.tensor([[3.0, 1.0]]), epsilon=2.0)
tensor([[2., 0.]])
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from ..errors import SettingError
from .options import TINY
from .rows import (
    HALF_DTYPES,
    check_rows,
    compute_dtype,
    flat_shape,
    inplace_on_flat_rows,
    per_row,
    per_row_radius,
    row_size,
)
from .types import Radius

__all__ = [
    "TINY",
    "num_kept",
    "row_norms",
    "normalize_",
    "normalize",
    "topq_",
    "topq",
    "l1q_normalize_",
    "l1q_normalize",
    "movable_entries",
    "topk_signs_",
    "project_l1_ball_",
    "project_l1_ball",
    "project_l1_ball_box_",
    "project_l2_ball_",
    "project_l2_ball",
    "project_linf_ball_",
    "project_linf_ball",
    "lmo_l1_",
    "lmo_l2_",
    "lmo_linf_",
    "lmo_l1q_",
    "fw_vertex_box_",
    "frank_wolfe_update_",
    "apgd_checkpoints",
    "apgd_reduce_step",
]


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def _exponent_range(dtype: torch.dtype) -> tuple[int, int]:
    """Binary exponents whose powers of two, and their inverses, are normal numbers of ``dtype``."""
    info = torch.finfo(dtype)
    return math.frexp(info.tiny)[1] + 2, math.frexp(info.max)[1] - 3


def num_kept(n: int, q: float) -> int:
    """Number of entries a row of ``n`` keeps at sparsity ``q``: ``round((1 - q) * n)``.

    Parameters
    ----------
    n : int
        Entries per row.
    q : float
        Fraction of entries dropped, within [0, 1].

    Returns
    -------
    int
        ``k``, between 0 and ``n``.

    Examples
    --------
    >>> num_kept(3, 0.3), num_kept(4, 0.25), num_kept(784, 0.99)
    (2, 3, 8)
    """
    return min(n, max(0, round((1.0 - q) * n)))


def _draw_kept(n: int, q: float, dq: float, generator: torch.Generator | None) -> tuple[int | Tensor, int]:
    """``(k, k_max)``: the kept count for this call and an upper bound on it.

    With ``dq = 0``, ``k`` is ``num_kept(n, q)``. Otherwise ``q`` is drawn once
    from ``U[max(0, q - dq), min(1, q + dq)]`` with ``generator``. A CPU
    generator yields a Python int (the draw lives on the host, so reading it
    synchronizes with no device); a generator on an accelerator yields a 0-d
    tensor on that device, and callers select ``k_max`` entries and mask the
    surplus, so no host sync happens.
    """
    if dq == 0:
        k = num_kept(n, q)
        return k, k
    low, high = max(0.0, q - dq), min(1.0, q + dq)
    gen = torch.default_generator if generator is None else generator
    if gen.device.type == "cpu":
        u = torch.rand((), generator=gen, dtype=torch.float64)
        k = num_kept(n, low + (high - low) * float(u))  # CPU scalar: no device sync
        return k, k
    u = torch.rand((), generator=gen, device=gen.device, dtype=torch.float64)
    k_tensor = torch.round((1.0 - (low + (high - low) * u)) * n).clamp_(0, n).long()
    return k_tensor, num_kept(n, low)


def _keep_top_k_(
    rows: Tensor,
    k: int | Tensor,
    k_max: int,
    values_fn: Callable[[Tensor], Tensor] | None = None,
) -> None:
    """Zero all but the ``k`` largest-magnitude entries of each row of 2-D ``rows``.

    Exactly ``k`` entries are kept even with ties (``topk`` breaks them).
    ``values_fn`` maps the kept original values (shape ``(N, k)``) to what is
    written back; by default the original values are kept.
    """
    n = rows.shape[1]
    if k_max == 0 or n == 0:
        rows.zero_()
        return
    if isinstance(k, int) and k >= n:
        if values_fn is not None:
            rows.copy_(values_fn(rows))
        return
    _, index = rows.abs().topk(k_max, dim=1, sorted=not isinstance(k, int))
    kept = rows.gather(1, index)
    if not isinstance(k, int):  # device-side k: mask the surplus of the k_max largest
        surplus = torch.arange(k_max, device=rows.device) >= k.to(rows.device)
        kept = kept.masked_fill(surplus, 0)  # not a product: inf * 0 would be NaN
    if values_fn is not None:
        kept = values_fn(kept)
    rows.zero_().scatter_(1, index, kept.to(rows.dtype))


def _l1_normalized_signs(values: Tensor, eps: float = TINY) -> Tensor:
    """Signs of ``values`` (2-D), each row divided by its L1 norm (the count of nonzeros)."""
    signs = values.sign()
    l1 = signs.abs().sum(dim=1, keepdim=True, dtype=compute_dtype(values)).clamp_min_(eps)
    return signs / l1


# --------------------------------------------------------------------------- #
# norms and normalization
# --------------------------------------------------------------------------- #
def row_norms(x: Tensor, p: float) -> Tensor:
    """The ``p``-norm of each row of ``x``.

    Parameters
    ----------
    x : Tensor, shape-(N, ...)
        Rows to measure.
    p : {1, 2, inf} or any float accepted by :func:`torch.linalg.vector_norm`
        Order of the norm.

    Returns
    -------
    Tensor, shape-(N,)
        The norms, in float32 for half-precision input, else in ``x.dtype``.

    Examples
    --------
    >>> row_norms(torch.tensor([[3.0, -4.0], [1.0, 1.0]]), 2)
    tensor([5.0000, 1.4142])
    >>> row_norms(torch.tensor([[3.0, -4.0]]), float("inf"))
    tensor([4.])
    """
    check_rows(x)
    flat, dtype = x.reshape(flat_shape(x)), compute_dtype(x)
    if flat.shape[1] == 0:  # empty rows have norm 0 (amax would refuse them)
        return flat.new_zeros(flat.shape[0], dtype=dtype)
    # abs().sum / abs().amax: same values as vector_norm(ord=1 / inf), several times faster on CPU
    if p == 1:
        return flat.abs().sum(dim=1, dtype=dtype)
    if math.isinf(p) and p > 0:
        return flat.abs().amax(dim=1).to(dtype)
    if p == 0 or math.isinf(p):  # no powers of entries: exact range as is
        return torch.linalg.vector_norm(flat, ord=p, dim=1, dtype=dtype)
    # Squares of float32 entries below ~1e-19 underflow and above ~1e19 overflow
    # (saturated-softmax gradients reach 1e-23), so scale each row by the power of
    # two that brings its largest entry into [0.5, 1): exact, and bit-identical to
    # the plain norm wherever that one is representable.
    largest = flat.abs().amax(dim=1, keepdim=True).to(dtype)
    exponent = torch.frexp(largest).exponent.clamp_(*_exponent_range(dtype))
    scaled = flat.to(dtype) * torch.pow(2.0, -exponent.to(dtype))
    norms = torch.linalg.vector_norm(scaled, ord=p, dim=1)
    return norms * torch.pow(2.0, exponent.squeeze(1).to(dtype))


def normalize_(x: Tensor, p: float, eps: float = TINY) -> Tensor:
    """In place: divide each row of ``x`` by ``max(‖row‖_p, eps)``.

    A zero row stays zero. Half-precision rows are divided in float32 and
    rounded once, so neither overflow of the norm nor underflow of ``eps``
    produces NaN or inf.

    Parameters
    ----------
    x : Tensor, shape-(N, ...)
        Rows to normalize, modified in place.
    p : {1, 2, inf}
        Order of the norm.
    eps : float, optional (default=float32 tiny)
        Lower bound on the divisor.

    Returns
    -------
    Tensor
        ``x``.

    Examples
    --------
    >>> g = torch.tensor([[2.0, 2.0], [0.0, 0.0]])
    >>> normalize_(g, p=2)
    tensor([[0.7071, 0.7071],
            [0.0000, 0.0000]])
    >>> normalize_(torch.tensor([[2.0, -6.0]]), p=1)
    tensor([[ 0.2500, -0.7500]])
    """
    divisor = per_row(row_norms(x, p).clamp_min_(eps), x)
    if x.dtype in HALF_DTYPES:
        return x.copy_(x.to(divisor.dtype) / divisor)
    return x.div_(divisor)


def normalize(x: Tensor, p: float, eps: float = TINY) -> Tensor:
    """Out-of-place :func:`normalize_`.

    Examples
    --------
    >>> normalize(torch.tensor([[3.0, 4.0]]), p=2)
    tensor([[0.6000, 0.8000]])
    """
    return normalize_(x.clone(), p, eps)


# --------------------------------------------------------------------------- #
# sparsification
# --------------------------------------------------------------------------- #
def topq_(
    x: Tensor, q: float, *, dq: float = 0.0, generator: torch.Generator | None = None
) -> Tensor:
    """In place: keep the ``k = round((1 - q) n)`` largest-magnitude entries of each row.

    Kept entries keep their original values; all others become zero. Exactly
    ``k`` entries are kept even when magnitudes tie.

    Parameters
    ----------
    x : Tensor, shape-(N, ...)
        Rows of ``n`` entries each, modified in place.
    q : float
        Fraction of entries dropped, within [0, 1]; ``q=0`` keeps everything,
        ``q=1`` zeros everything.
    dq : float, optional (default=0.0)
        If positive, ``q`` is drawn once per call from
        ``U[max(0, q - dq), min(1, q + dq)]``.
    generator : torch.Generator, optional
        Source of the ``dq`` draw (CPU or accelerator); default: torch's global one.

    Returns
    -------
    Tensor
        ``x``.

    Examples
    --------
    >>> g = torch.tensor([[0.5, 1.0], [-2.5, 0.3]])
    >>> topq_(g.clone(), q=0.5)  # each row of two keeps one entry
    tensor([[ 0.0000,  1.0000],
            [-2.5000,  0.0000]])
    >>> topq_(g.reshape(1, 4).clone(), q=0.75)
    tensor([[ 0.0000,  0.0000, -2.5000,  0.0000]])
    """
    n = row_size(x)
    k, k_max = _draw_kept(n, q, dq, generator)
    return inplace_on_flat_rows(x, lambda rows: _keep_top_k_(rows, k, k_max))


def topq(
    x: Tensor, q: float, *, dq: float = 0.0, generator: torch.Generator | None = None
) -> Tensor:
    """Out-of-place :func:`topq_`.

    Examples
    --------
    >>> topq(torch.tensor([[1.0, -3.0, 2.0]]), q=0.33)
    tensor([[ 0., -3.,  2.]])
    """
    return topq_(x.clone(), q, dq=dq, generator=generator)


def l1q_normalize_(
    x: Tensor,
    q: float,
    *,
    dq: float = 0.0,
    generator: torch.Generator | None = None,
    eps: float = TINY,
) -> Tensor:
    """In place: top-q sparsify each row, take signs, and L1-normalize.

    Each row keeps its ``k`` largest-magnitude entries as ``±1/k`` and zeros
    the rest, so every nonzero row has unit L1 norm. (If fewer than ``k`` of
    the kept entries are nonzero, the nonzero ones share the unit mass; an
    all-zero row stays zero.) This is the L1q steepest-ascent direction of
    Roberts & Tsiligkaridis (2021) and SLIDE (Tramèr & Boneh, 2019).

    Parameters
    ----------
    x : Tensor, shape-(N, ...)
        Rows, modified in place.
    q : float
        Fraction of entries dropped, within [0, 1].
    dq : float, optional (default=0.0)
        If positive, ``q`` is drawn once per call from
        ``U[max(0, q - dq), min(1, q + dq)]``.
    generator : torch.Generator, optional
        Source of the ``dq`` draw; default: torch's global one.
    eps : float, optional (default=float32 tiny)
        Lower bound on the L1 divisor.

    Returns
    -------
    Tensor
        ``x``.

    Examples
    --------
    >>> l1q_normalize_(torch.tensor([[0.0, 1.0, 2.0]]), q=0.3)
    tensor([[0.0000, 0.5000, 0.5000]])
    >>> l1q_normalize_(torch.tensor([[-1.0, -2.0, 3.0, 0.5]]), q=0.5)
    tensor([[ 0.0000, -0.5000,  0.5000,  0.0000]])
    """
    n = row_size(x)
    k, k_max = _draw_kept(n, q, dq, generator)
    values_fn = lambda kept: _l1_normalized_signs(kept, eps)  # noqa: E731
    return inplace_on_flat_rows(x, lambda rows: _keep_top_k_(rows, k, k_max, values_fn))


def movable_entries(param: Tensor, grad: Tensor, lower: Tensor | float, upper: Tensor | float) -> Tensor:
    """Entries of ``param`` that a step against ``grad`` can still move inside ``[lower, upper]``.

    A descent step ``param - t * grad`` (``t > 0``) lowers the entries with a
    positive gradient and raises those with a negative one; an entry already
    at the box on that side cannot move, and choosing it for a sparse step
    wastes the step (Croce & Hein, 2021). Zero-gradient entries never move.

    Parameters
    ----------
    param : Tensor
        The current iterate (e.g. a perturbation ``delta``).
    grad : Tensor
        Its gradient, shaped like ``param``.
    lower, upper : float or Tensor broadcastable to ``param``
        The box.

    Returns
    -------
    Tensor of bool, shaped like ``param``

    Examples
    --------
    >>> delta = torch.tensor([[0.0, 1.0, 0.5, 0.5]])
    >>> movable_entries(delta, torch.tensor([[1.0, -1.0, 1.0, 0.0]]), lower=0.0, upper=1.0)
    tensor([[False, False,  True, False]])
    """
    lower = torch.as_tensor(lower, dtype=param.dtype, device=param.device)
    upper = torch.as_tensor(upper, dtype=param.dtype, device=param.device)
    return ((grad > 0) & (param > lower)) | ((grad < 0) & (param < upper))


def topk_signs_(x: Tensor, k: int | Tensor, *, k_max: int | None = None, eps: float = TINY) -> Tensor:
    """In place: keep the signs of the ``k`` largest ``|x|`` of each row, L1-normalized.

    As :func:`l1q_normalize_`, but with the kept count given directly, as one
    ``int`` or as a tensor of shape ``(N,)`` with one count per row (e.g. an
    adaptive sparsity per image). With a tensor, pass ``k_max`` (an ``int``
    at least ``k.max()``), so that no host sync is needed; the ``k_max``
    largest are selected and the surplus of each row masked. Nonzero kept
    entries share the unit L1 mass; an all-zero row stays zero.

    Examples
    --------
    >>> x = torch.tensor([[3.0, -2.0, 1.0, 0.5], [1.0, -4.0, 2.0, 3.0]])
    >>> topk_signs_(x.clone(), torch.tensor([1, 3]), k_max=3)
    tensor([[ 1.0000,  0.0000,  0.0000,  0.0000],
            [ 0.0000, -0.3333,  0.3333,  0.3333]])
    """
    n = row_size(x)
    values_fn = lambda kept: _l1_normalized_signs(kept, eps)  # noqa: E731
    if isinstance(k, Tensor):
        if k_max is None:
            k_max = int(k.max()) if k.numel() else 0  # host sync: pass k_max to avoid it
        k_max = min(max(int(k_max), 0), n)

        def keep(rows: Tensor) -> None:
            if k_max == 0:
                rows.zero_()
                return
            _, index = rows.abs().topk(k_max, dim=1, sorted=True)
            kept = rows.gather(1, index)
            surplus = torch.arange(k_max, device=rows.device) >= k.to(rows.device).reshape(-1, 1)
            kept = values_fn(kept.masked_fill(surplus, 0))
            rows.zero_().scatter_(1, index, kept.to(rows.dtype))

        return inplace_on_flat_rows(x, keep)
    k = min(max(int(k), 0), n)
    return inplace_on_flat_rows(x, lambda rows: _keep_top_k_(rows, k, k, values_fn))


def l1q_normalize(
    x: Tensor,
    q: float,
    *,
    dq: float = 0.0,
    generator: torch.Generator | None = None,
    eps: float = TINY,
) -> Tensor:
    """Out-of-place :func:`l1q_normalize_`.

    Examples
    --------
    >>> l1q_normalize(torch.tensor([[4.0, -1.0, -3.0, 0.0]]), q=0.5)
    tensor([[ 0.5000,  0.0000, -0.5000,  0.0000]])
    """
    return l1q_normalize_(x.clone(), q, dq=dq, generator=generator, eps=eps)


# --------------------------------------------------------------------------- #
# Euclidean projections onto norm balls
# --------------------------------------------------------------------------- #
def project_l2_ball_(x: Tensor, epsilon: Radius) -> Tensor:
    """In place: rescale each row with ``‖row‖₂ > ε`` onto the ε-sphere.

    Rows already inside the ball are left bit-for-bit unchanged.

    Parameters
    ----------
    x : Tensor, shape-(N, ...)
        Rows, modified in place.
    epsilon : float or Tensor, shape-(N,)
        Radius of the ball (one for all rows, or one per row).

    Returns
    -------
    Tensor
        ``x``.

    Examples
    --------
    >>> project_l2_ball_(torch.tensor([[3.0, 4.0], [0.3, 0.4]]), epsilon=1.0)
    tensor([[0.6000, 0.8000],
            [0.3000, 0.4000]])
    """
    norms = per_row(row_norms(x, 2), x)
    scale = (per_row_radius(epsilon, x) / norms).clamp_(max=1.0)  # a zero row gives inf -> 1
    return x.mul_(scale.to(x.dtype) if x.dtype in HALF_DTYPES else scale)


def project_l2_ball(x: Tensor, epsilon: Radius) -> Tensor:
    """Out-of-place :func:`project_l2_ball_`.

    Examples
    --------
    >>> project_l2_ball(torch.tensor([[6.0, 8.0]]), epsilon=5.0)
    tensor([[3., 4.]])
    """
    return project_l2_ball_(x.clone(), epsilon)


def project_linf_ball_(x: Tensor, epsilon: Radius) -> Tensor:
    """In place: clamp every entry of each row to ``[-ε, ε]``.

    Parameters
    ----------
    x : Tensor, shape-(N, ...)
        Rows, modified in place.
    epsilon : float or Tensor, shape-(N,)
        Radius of the ball.

    Returns
    -------
    Tensor
        ``x``.

    Examples
    --------
    >>> project_linf_ball_(torch.tensor([[-2.0, 1.5, 0.5]]), epsilon=1.0)
    tensor([[-1.0000,  1.0000,  0.5000]])
    """
    check_rows(x)
    radius = per_row_radius(epsilon, x)
    if isinstance(radius, Tensor):
        radius = radius.to(x.dtype)
        return torch.clamp(x, min=-radius, max=radius, out=x)
    return x.clamp_(-radius, radius)


def project_linf_ball(x: Tensor, epsilon: Radius) -> Tensor:
    """Out-of-place :func:`project_linf_ball_`.

    Examples
    --------
    >>> project_linf_ball(torch.tensor([[-3.0, 0.25]]), epsilon=0.5)
    tensor([[-0.5000,  0.2500]])
    """
    return project_linf_ball_(x.clone(), epsilon)


def _project_l1_rows_(rows: Tensor, epsilon: Radius) -> None:
    """Sort-based exact projection (Duchi et al., 2008) of each row of 2-D ``rows``."""
    n = rows.shape[1]
    if n == 0:
        return
    magnitude = rows.abs().to(compute_dtype(rows))
    radius = per_row_radius(epsilon, magnitude)
    if isinstance(radius, Tensor):
        radius = radius.double()
    # theta solves sum(max(|x| - theta, 0)) = eps; with u sorted descending and
    # c_j = cumsum(u)_j - eps, the support size rho is the last j with u_j > c_j / j.
    # The partial sums are accumulated in float64: their rounding error, which
    # grows with sum(|x|), is what limits how exactly the result meets the radius.
    u = magnitude.sort(dim=1, descending=True).values
    excess = u.cumsum(dim=1, dtype=torch.float64).sub_(radius)
    ranks = torch.arange(1, n + 1, device=rows.device, dtype=torch.float64)
    support = (u * ranks > excess).sum(dim=1, keepdim=True)
    theta = excess.gather(1, (support - 1).clamp_(min=0)) / support.clamp(min=1)
    inside = magnitude.sum(dim=1, keepdim=True, dtype=torch.float64) <= radius
    theta = torch.where(inside, torch.zeros_like(theta), theta.clamp_(min=0))
    shrunk = magnitude.sub_(theta.to(magnitude.dtype))
    rows.copy_(torch.where(shrunk > 0, shrunk.copysign(rows), 0.0))  # +0 where zeroed


def project_l1_ball_(x: Tensor, epsilon: Radius) -> Tensor:
    """In place: exact Euclidean projection of each row onto the L1 ball of radius ε.

    Solves ``argmin_{‖y‖₁ <= ε} ‖y - row‖₂`` by soft-thresholding with the
    threshold found by one sort per row (Duchi et al., 2008), vectorized over
    rows: ``O(n log n)`` per row, no host sync. Rows inside the ball are left
    unchanged; the result is sparse (entries below the threshold become zero).

    Parameters
    ----------
    x : Tensor, shape-(N, ...)
        Rows, modified in place.
    epsilon : float or Tensor, shape-(N,)
        Radius of the ball.

    Returns
    -------
    Tensor
        ``x``.

    Examples
    --------
    >>> project_l1_ball_(torch.tensor([[3.0, -1.5, 0.5]]), epsilon=2.0)
    tensor([[ 1.7500, -0.2500,  0.0000]])
    >>> project_l1_ball_(torch.tensor([[1.0, 1.0], [0.2, -0.3]]), epsilon=1.0)
    tensor([[ 0.5000,  0.5000],
            [ 0.2000, -0.3000]])
    """
    return inplace_on_flat_rows(x, lambda rows: _project_l1_rows_(rows, epsilon))


def project_l1_ball(x: Tensor, epsilon: Radius) -> Tensor:
    """Out-of-place :func:`project_l1_ball_`.

    Examples
    --------
    >>> project_l1_ball(torch.tensor([[2.0, 2.0]]), epsilon=1.0)
    tensor([[0.5000, 0.5000]])
    """
    return project_l1_ball_(x.clone(), epsilon)


def _project_l1_box_rows_(rows: Tensor, epsilon: Radius, lower: Tensor, upper: Tensor) -> None:
    """Exact projection of each row of 2-D ``rows`` onto ``{‖y‖₁ <= ε} ∩ [lower, upper]``.

    With ``lower <= 0 <= upper`` the solution is ``clip(soft(v, θ), lower,
    upper)`` for the smallest ``θ >= 0`` meeting the radius. Each entry's
    magnitude ``min(max(|v| - θ, 0), c)`` (``c`` the bound on its side) is
    piecewise linear in ``θ`` with breakpoints ``|v|`` and ``|v| - c``; one sort
    of the ``2n`` breakpoints per row gives the piecewise-linear L1 norm and
    its crossing of ``ε`` exactly.
    """
    n = rows.shape[1]
    if n == 0:
        return
    work = rows.to(torch.float64)
    magnitude = work.abs()
    capacity = torch.where(work >= 0, upper.to(work), -lower.to(work)).expand_as(work)
    radius = per_row_radius(epsilon, work)
    clipped_norm = torch.minimum(magnitude, capacity).sum(dim=1, keepdim=True)
    inside = clipped_norm <= radius
    # descending sweep over theta: passing |v| activates an entry, passing |v| - c saturates it.
    # Only theta > 0 matters (theta = 0 is the `inside` case), so breakpoints below 0 are moved to
    # 0: the same piecewise-linear norm on theta >= 0, and a sort of mostly equal keys is cheaper.
    breakpoints = torch.cat([magnitude, (magnitude - capacity).clamp_(min=0)], dim=1)
    t, order = breakpoints.sort(dim=1, descending=True)
    slope = torch.where(order < n, 1.0, -1.0).to(t.dtype).cumsum(dim=1)  # active entries on (t[j+1], t[j])
    norm_at_t = torch.cat(
        [torch.zeros_like(t[:, :1]), (slope[:, :-1] * (t[:, :-1] - t[:, 1:])).cumsum(dim=1)], dim=1
    )
    last_below = (norm_at_t < radius).sum(dim=1, keepdim=True).sub_(1).clamp_(0, 2 * n - 1)
    theta = t.gather(1, last_below) - (radius - norm_at_t.gather(1, last_below)) / slope.gather(
        1, last_below
    ).clamp(min=1)
    theta = torch.where(inside, torch.zeros_like(theta), theta.clamp_(min=0))
    shrunk = torch.minimum((magnitude - theta).clamp_(min=0), capacity)
    rows.copy_(torch.where(shrunk > 0, shrunk.copysign(work), 0.0))


def project_l1_ball_box_(x: Tensor, epsilon: Radius, lower: Tensor | float, upper: Tensor | float) -> Tensor:
    """In place: exact Euclidean projection of each row onto the L1 ε-ball intersected with a box.

    Solves ``argmin ‖y - row‖₂`` subject to ``‖y‖₁ <= ε`` and
    ``lower <= y <= upper`` (elementwise), for boxes that contain the origin
    (``lower <= 0 <= upper``), as the box ``[lo - x, hi - x]`` of an additive
    perturbation of a valid input ``x`` does. This is what keeps a sparse L1
    attack inside both its budget and the valid image range without wasting
    budget on clipped pixels (Croce & Hein, 2021); clamping after an L1
    projection is not the projection onto the intersection. One sort of
    ``2n`` breakpoints per row, vectorized over rows, float64 internally.

    Parameters
    ----------
    x : Tensor, shape-(N, ...)
        Rows, modified in place.
    epsilon : float or Tensor, shape-(N,)
        Radius of the L1 ball.
    lower, upper : float or Tensor broadcastable to ``x``
        The box, with ``lower <= 0 <= upper``.

    Returns
    -------
    Tensor
        ``x``.

    Examples
    --------
    >>> y = torch.tensor([[3.0, -1.0, 0.5]])
    >>> project_l1_ball_box_(y.clone(), 2.0, lower=-1.0, upper=1.0)
    tensor([[ 1.0000, -0.7500,  0.2500]])
    >>> project_l1_ball(y, 2.0).clamp(-1.0, 1.0)  # clamping after the L1 projection wastes budget
    tensor([[1., 0., 0.]])
    """
    check_rows(x)
    lower_t = torch.as_tensor(lower, device=x.device, dtype=torch.float64).expand(x.shape)
    upper_t = torch.as_tensor(upper, device=x.device, dtype=torch.float64).expand(x.shape)

    def project(rows: Tensor) -> None:
        _project_l1_box_rows_(
            rows, epsilon, lower_t.reshape(rows.shape), upper_t.reshape(rows.shape)
        )

    return inplace_on_flat_rows(x, project)


# --------------------------------------------------------------------------- #
# linear minimization oracles (unit balls)
# --------------------------------------------------------------------------- #
def lmo_l1_(g: Tensor) -> Tensor:
    """In place: ``argmax_{‖s‖₁ <= 1} <g, s>`` per row, a signed one-hot vector.

    The one is placed at the entry of largest ``|g|`` (the first on ties).
    A Frank-Wolfe step toward ``-ε·s`` minimizes over the ε-ball.

    Examples
    --------
    >>> lmo_l1_(torch.tensor([[1.0, -2.0], [0.0, 0.0]]))
    tensor([[ 0., -1.],
            [ 0.,  0.]])
    """

    def one_hot_signs(rows: Tensor) -> None:
        if rows.shape[1] == 0:
            return
        index = rows.abs().argmax(dim=1, keepdim=True)
        signs = rows.gather(1, index).sign_()
        rows.zero_().scatter_(1, index, signs)

    return inplace_on_flat_rows(g, one_hot_signs)


def lmo_l2_(g: Tensor, eps: float = TINY) -> Tensor:
    """In place: ``argmax_{‖s‖₂ <= 1} <g, s> = g / ‖g‖₂`` per row (zero rows stay zero).

    Examples
    --------
    >>> lmo_l2_(torch.tensor([[1.0, 2.0]]))
    tensor([[0.4472, 0.8944]])
    """
    return normalize_(g, 2, eps)


def lmo_linf_(g: Tensor) -> Tensor:
    """In place: ``argmax_{‖s‖∞ <= 1} <g, s> = sign(g)``.

    Examples
    --------
    >>> lmo_linf_(torch.tensor([[1.0, -2.0, 0.0]]))
    tensor([[ 1., -1.,  0.]])
    """
    check_rows(g)
    return g.sign_()


def lmo_l1q_(
    g: Tensor,
    q: float,
    *,
    dq: float = 0.0,
    generator: torch.Generator | None = None,
    eps: float = TINY,
) -> Tensor:
    """In place: the sparse L1q direction, :func:`l1q_normalize_` (a point of the unit L1 ball).

    With ``q = 1 - 1/n`` it equals :func:`lmo_l1_`; smaller ``q`` spreads the
    unit mass over more of the largest entries.

    Examples
    --------
    >>> lmo_l1q_(torch.tensor([[0.0, 1.0, 2.0]]), q=0.3)
    tensor([[0.0000, 0.5000, 0.5000]])
    """
    return l1q_normalize_(g, q, dq=dq, generator=generator, eps=eps)


# --------------------------------------------------------------------------- #
# Frank-Wolfe vertices of a ball intersected with a box
# --------------------------------------------------------------------------- #
def _capacity(g: Tensor, radius: Radius, lower: Tensor, upper: Tensor) -> Tensor:
    """How far each entry may move against its gradient inside the box (0 where g = 0), at most ε."""
    room = torch.where(g < 0, upper, -lower).to(g.dtype)
    room = torch.where(g == 0, torch.zeros_like(room), room)
    return torch.minimum(room, torch.as_tensor(radius, dtype=g.dtype, device=g.device))


def _vertex_rows_(
    rows: Tensor,
    norm: str,
    radius: Radius,
    lower: Tensor,
    upper: Tensor,
    k: int | Tensor,
    k_max: int,
    spend_budget: bool = True,
) -> None:
    """``rows <- argmin <rows, v>`` over ``{‖v‖ <= ε} ∩ [lower, upper]`` for 2-D ``rows``."""
    g = rows.to(torch.float64)
    radius = per_row_radius(radius, g)
    capacity = _capacity(g, radius, lower.to(g), upper.to(g)).expand_as(g)
    if norm == "linf":
        amount = capacity
    elif norm == "l1":  # fractional knapsack: largest |g| first, each up to its capacity
        order = g.abs().argsort(dim=1, descending=True)
        room = capacity.gather(1, order)
        spent = room.cumsum(dim=1) - room
        amount = torch.zeros_like(g).scatter_(1, order, (radius - spent).clamp(min=0).minimum(room))
    elif norm == "l1q" and spend_budget:
        amount = _l1q_spending_amounts(g, capacity, radius, k, k_max)
    elif norm == "l1q":  # the k largest movable entries share ε equally, each up to its capacity
        score = g.abs() * (capacity > 0)
        index = score.topk(k_max, dim=1, sorted=True).indices
        room = capacity.gather(1, index)
        if not isinstance(k, int):
            room = room.masked_fill(torch.arange(k_max, device=g.device) >= k.to(g.device), 0.0)
        amount = torch.zeros_like(g).scatter_(1, index, _water_fill(room, radius))
    elif norm == "l2":
        amount = _l2_box_amounts(g.abs(), capacity, radius)
    else:  # pragma: no cover - internal
        raise ValueError(norm)
    rows.copy_(torch.where(amount > 0, -amount.copysign(g), 0.0))


def _l1q_spending_amounts(g: Tensor, capacity: Tensor, radius: Radius, k: int | Tensor, k_max: int) -> Tensor:
    """The L1q vertex amounts that spend ε: water-fill the top ``k`` movable entries, then extend.

    Entries are ranked by ``|g|`` among those that can move (capacity > 0).
    The first ``k`` share ε equally, each capped by its capacity
    (:func:`_water_fill`); whatever budget their capacities leave unspent goes
    to the next entries in the same order, each filled up to its capacity
    (a fractional knapsack), until ε is spent or no entry can move. So ``q``
    sets the minimum support, and the vertex has L1 norm
    ``min(ε, total capacity)``.
    """
    score = g.abs().to(torch.float32) * (capacity > 0)  # float32 ranks: half the sort of float64
    order = score.argsort(dim=1, descending=True)
    room = capacity.gather(1, order)
    width = room.shape[1]
    position = torch.arange(width, device=g.device)
    head_mask = position < (k if isinstance(k, int) else k.to(g.device).reshape(-1, 1))
    head_room = room[:, :k_max].masked_fill(~head_mask[..., :k_max].expand(room.shape[0], k_max), 0.0)
    head = _water_fill(head_room, radius)
    left = (radius - head.sum(dim=1, keepdim=True)).clamp(min=0)
    tail_room = room.masked_fill(head_mask, 0.0)
    before = tail_room.cumsum(dim=1) - tail_room  # tail capacity ranked above each entry
    sorted_amount = (left - before).clamp(min=0).minimum(tail_room)
    sorted_amount[:, :k_max] += head
    return torch.zeros_like(g).scatter_(1, order, sorted_amount)


def _water_fill(room: Tensor, radius: Radius) -> Tensor:
    """Per row, ``min(room, τ)`` with ``τ`` such that the row sums to ε (all of ``room`` if it cannot)."""
    width = room.shape[1]
    if width == 0:
        return room
    ascending = room.sort(dim=1).values
    filled = ascending.cumsum(dim=1) - ascending  # room of the entries below j
    remaining = torch.arange(width, 0, -1, device=room.device, dtype=room.dtype)
    level = (radius - filled) / remaining  # τ if entries below j are capped, the rest get τ
    fits = level <= ascending
    first = fits.to(torch.int8).argmax(dim=1, keepdim=True)
    tau = torch.where(fits.any(dim=1, keepdim=True), level.gather(1, first), torch.full_like(first, 1.0, dtype=room.dtype) * torch.inf)
    return room.minimum(tau)


def _l2_box_amounts(magnitude: Tensor, capacity: Tensor, radius: Radius) -> Tensor:
    """``min(λ|g|, c)`` with ``λ`` such that the L2 norm is ε (or every entry at capacity)."""
    width = magnitude.shape[1]
    # entry i saturates at lam_i = c_i / |g_i|; between saturations the squared norm is lam^2 A + B
    saturation = torch.where(magnitude > 0, capacity / magnitude, torch.full_like(magnitude, torch.inf))
    order = saturation.argsort(dim=1)
    lam = saturation.gather(1, order)
    g2 = magnitude.gather(1, order).square()
    c2 = capacity.gather(1, order).square()
    saturated_below = c2.cumsum(dim=1) - c2  # B when entries < j are saturated
    free_from = g2.flip(1).cumsum(dim=1).flip(1)  # A when entries >= j are free
    at_breakpoint = torch.where(torch.isinf(lam), torch.inf, saturated_below + lam.square() * free_from)
    crossing = (at_breakpoint < radius**2).sum(dim=1, keepdim=True).clamp_(max=width - 1)
    a = free_from.gather(1, crossing)
    b = saturated_below.gather(1, crossing)
    solution = ((radius**2 - b).clamp(min=0) / a.clamp(min=torch.finfo(a.dtype).tiny)).sqrt()
    reaches = at_breakpoint.gather(1, crossing) >= radius**2
    lam_star = torch.where(reaches, solution, torch.full_like(solution, torch.inf))
    return torch.minimum(lam_star * magnitude, capacity)


def fw_vertex_box_(
    g: Tensor,
    norm: str,
    epsilon: Radius,
    lower: Tensor | float,
    upper: Tensor | float,
    *,
    q: float = 0.0,
    dq: float = 0.0,
    generator: torch.Generator | None = None,
    spend_budget: bool = True,
) -> Tensor:
    """In place: ``g <- argmin_v <g, v>`` over the ε-ball intersected with a box containing 0.

    The Frank-Wolfe vertex of ``{‖v‖ <= ε} ∩ [lower, upper]`` (per row): the
    point a Frank-Wolfe step moves toward. Unlike the unit-ball LMOs above
    (which return the maximizing *direction*), this returns the minimizing
    *point*, because the box breaks the symmetry. Exact for every norm:

    * ``"linf"``: ``clamp(-ε sign(g), lower, upper)``;
    * ``"l1"``: fractional knapsack — entries in order of ``|g|``, each moved
      against its gradient up to the box, until ε is spent;
    * ``"l1q"``: the ``k = round((1 - q) n)`` largest ``|g|`` among entries that
      can move share ε equally, each capped by the box (water-filling); when
      their capacities add up to less than ε, the rest of the budget goes to
      the next-largest ``|g|`` among the entries that can move, each up to the
      box, until ε is spent (``spend_budget=True``, the default: ``q`` sets
      the *minimum* support, and the vertex has L1 norm
      ``min(ε, Σ capacities)``). With ``spend_budget=False`` the vertex keeps
      exactly the top ``k`` and may spend less than ε. With an unbounded box
      both are ``-ε ·`` :func:`l1q_normalize_`;
    * ``"l2"``: ``clip(-λ g, lower, upper)`` with ``λ`` giving norm ε (sort of
      the saturation points).

    Parameters
    ----------
    g : Tensor, shape-(N, ...)
        Gradient rows, overwritten by the vertex.
    norm : {"l1", "l1q", "l2", "linf"}
        The ball.
    epsilon : float or Tensor, shape-(N,)
        Radius.
    lower, upper : float or Tensor broadcastable to ``g``
        The box, with ``lower <= 0 <= upper``.
    q, dq, generator
        Sparsity of ``"l1q"`` (see :func:`l1q_normalize_`).
    spend_budget : bool, optional (default=True)
        ``"l1q"`` only: extend the support beyond the top ``k`` until ε is
        spent (see above).

    Returns
    -------
    Tensor
        ``g``.

    Examples
    --------
    >>> g = torch.tensor([[-3.0, 2.0, 1.0]])
    >>> fw_vertex_box_(g.clone(), "l1", 2.0, lower=-0.5, upper=1.0)
    tensor([[ 1.0000, -0.5000, -0.5000]])

    ``q=0.4`` keeps 2 of 3 entries, whose box leaves room for 1.5 of the
    budget of 2; the third entry takes the rest, unless ``spend_budget=False``:

    >>> fw_vertex_box_(g.clone(), "l1q", 2.0, lower=-0.5, upper=1.0, q=0.4)
    tensor([[ 1.0000, -0.5000, -0.5000]])
    >>> fw_vertex_box_(g.clone(), "l1q", 2.0, lower=-0.5, upper=1.0, q=0.4, spend_budget=False)
    tensor([[ 1.0000, -0.5000,  0.0000]])
    >>> fw_vertex_box_(g.clone(), "linf", 2.0, lower=-0.5, upper=1.0)
    tensor([[ 1.0000, -0.5000, -0.5000]])
    """
    if norm not in ("l1", "l1q", "l2", "linf"):
        raise SettingError(
            f"`norm` must be one of 'l1', 'l1q', 'l2', 'linf'; got {norm!r}", setting="norm", value=norm
        )
    check_rows(g)
    n = row_size(g)
    k, k_max = _draw_kept(n, q, dq, generator) if norm == "l1q" else (n, n)
    if norm == "l1q" and k_max == 0:
        return g.zero_()
    lower_t = torch.as_tensor(lower, device=g.device, dtype=torch.float64)
    upper_t = torch.as_tensor(upper, device=g.device, dtype=torch.float64)

    def vertex(rows: Tensor) -> None:
        shape = rows.shape
        low = lower_t.expand(g.shape).reshape(shape) if lower_t.ndim else lower_t
        high = upper_t.expand(g.shape).reshape(shape) if upper_t.ndim else upper_t
        _vertex_rows_(rows, norm, epsilon, low, high, k, k_max, spend_budget)

    return inplace_on_flat_rows(g, vertex)


def frank_wolfe_update_(param: Tensor, direction: Tensor, alpha: float, scale: float) -> Tensor:
    """In place: the Frank-Wolfe step ``p <- (1 - α) p - α · scale · direction``.

    With ``direction`` an LMO output for the unit ball and ``scale = ε``, the
    iterate stays inside the ε-ball whenever it starts there and ``α ∈ [0, 1]``.

    Examples
    --------
    >>> p = torch.tensor([1.0, 1.0])
    >>> frank_wolfe_update_(p, torch.tensor([0.0, 1.0]), alpha=1.0, scale=1.8)
    tensor([ 0.0000, -1.8000])
    """
    return param.mul_(1.0 - alpha).add_(direction, alpha=-alpha * scale)


# --------------------------------------------------------------------------- #
# APGD: the checkpoint schedule and its step-size test
# --------------------------------------------------------------------------- #
def apgd_checkpoints(
    total_steps: int, first: float = 0.22, shrink: float = 0.03, least: float = 0.06
) -> tuple[int, ...]:
    """The iterations ``w_1 < w_2 < ...`` at which APGD checks its progress (Croce & Hein, 2020).

    ``w_j = ceil(p_j · total_steps)`` with ``p_0 = 0``, ``p_1 = first`` and
    ``p_{j+1} = p_j + max(p_j - p_{j-1} - shrink, least)``: with the defaults
    the intervals start at 22 % of the run and shrink by 3 points each, to
    no less than 6 %. Only the ``w_j < total_steps`` are returned (a check
    at the last iteration could change nothing). The ``p_j`` are computed in
    millionths, as integers, so decimal fractions give exact marks.

    Parameters
    ----------
    total_steps : int
        ``N_iter``, the number of iterations of the run, >= 1.
    first, shrink, least : float, optional
        The first interval, its shrinkage per checkpoint and the smallest
        interval, as fractions of the run (``first`` and ``least`` > 0).

    Returns
    -------
    tuple of int

    Examples
    --------
    >>> apgd_checkpoints(100)
    (22, 41, 57, 70, 80, 87, 93, 99)
    >>> apgd_checkpoints(20)
    (5, 9, 12, 14, 16, 18, 19)
    >>> apgd_checkpoints(100, first=0.1, shrink=0.0, least=0.1)
    (10, 20, 30, 40, 50, 60, 70, 80, 90)
    """
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise SettingError(
            f"`total_steps` must be an integer >= 1; got total_steps={total_steps!r}",
            setting="total_steps",
            value=total_steps,
        )
    unit = 1_000_000
    first_u, shrink_u, least_u = (round(v * unit) for v in (first, shrink, least))
    if first_u <= 0 or least_u <= 0 or shrink_u < 0:
        raise SettingError(
            f"apgd_checkpoints: `first` and `least` must be > 0 and `shrink` >= 0; got "
            f"first={first!r}, shrink={shrink!r}, least={least!r}",
            setting="first" if first_u <= 0 else ("least" if least_u <= 0 else "shrink"),
            value=(first, shrink, least),
        )
    previous, current, marks = 0, first_u, []
    while current <= unit:
        mark = -(-current * total_steps // unit)  # ceil, in integers
        if mark >= total_steps:
            break
        if not marks or mark > marks[-1]:
            marks.append(mark)
        previous, current = current, current + max(current - previous - shrink_u, least_u)
    return tuple(marks)


def apgd_reduce_step(
    increases: Tensor,
    interval: int,
    rho: float,
    reduced_last: Tensor,
    best: Tensor,
    best_at_last: Tensor,
) -> Tensor:
    """Per row, whether APGD halves its step size (and restarts from its best point) at a checkpoint.

    For a loss being *minimized*, at the checkpoint ``w_j`` (Croce & Hein, 2020):

    1. the loss fell in fewer than ``rho · (w_j - w_{j-1})`` of the
       ``w_j - w_{j-1}`` steps since the last checkpoint (``increases``
       counts the steps that improved on the previous iterate), or
    2. the step size was not reduced at the last checkpoint
       (``reduced_last`` false) and the best loss has not improved since
       (``best >= best_at_last``).

    Parameters
    ----------
    increases : Tensor of int, shape-(N,)
        Steps since the last checkpoint that improved the loss.
    interval : int
        ``w_j - w_{j-1}``.
    rho : float
        Fraction of improving steps below which the step is reduced (0.75).
    reduced_last : Tensor of bool, shape-(N,)
        Whether the step size was reduced at the last checkpoint.
    best, best_at_last : Tensor, shape-(N,)
        The best loss now and at the last checkpoint.

    Returns
    -------
    Tensor of bool, shape-(N,)

    Examples
    --------
    >>> apgd_reduce_step(torch.tensor([10, 20, 20]), 22, 0.75, torch.tensor([False, False, True]),
    ...                  torch.tensor([-1.0, -1.0, -1.0]), torch.tensor([0.0, -1.0, -1.0]))
    tensor([ True,  True, False])
    """
    stalled = increases.to(torch.float64) < rho * interval
    flat = ~reduced_last & (best >= best_at_last)
    return stalled | flat

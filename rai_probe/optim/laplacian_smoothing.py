"""Laplacian smoothing of gradients: ``g ← (I - σL)⁻¹ g`` on a ring per row.

:func:`laplacian_smooth_` / :func:`laplacian_smooth` (pure, per row) and
:class:`LaplacianSmoothing` (a transforming optimizer) replace a gradient
``g`` by the solution ``u`` of ``(I - σL) u = g``, with ``L`` the periodic
1-D discrete Laplacian (Osher et al., 2022, "Laplacian smoothing gradient
descent"). The solve is exact (to rounding), by whichever of two solvers
is estimated cheaper: one real FFT pair per row with the analytic
eigenvalues ``λ_k = 1 + 4σ·sin²(πk/n)``, ``u = irfft(rfft(g) / λ)``, or
a circular convolution with the ring's Green's function
``G_j ∝ r^|j| + r^(n-j)``, truncated where its geometric tail drops below
the rounding of the dtype and computed blockwise in ``O(n)``. It damps
the high-frequency part of the gradient and keeps its sum (``λ_0 = 1``),
so perturbations built from it are smoother and less noisy.

Examples
--------
>>> import torch
>>> from rai_probe.optim.laplacian_smoothing import laplacian_smooth
>>> laplacian_smooth(torch.tensor([[1.0, 0.0, 0.0, 0.0]]), sigma=1.0) * 15
tensor([[7.0000, 3.0000, 2.0000, 3.0000]])
"""

from __future__ import annotations

import functools
import math
import threading
from typing import Any

import torch
from torch import Tensor
from torch.optim import SGD

from . import options as opt
from .param_transforming import ParamTransformingOptimizer
from .rows import check_rows, compute_dtype, inplace_on_flat_rows
from .types import InnerOptimizer, Params

__all__ = [
    "laplacian_eigenvalues",
    "laplacian_smooth_",
    "laplacian_smooth",
    "LaplacianSmoothing",
]


# --------------------------------------------------------------------------- #
# the functional core
# --------------------------------------------------------------------------- #
def laplacian_eigenvalues(
    n: int, sigma: float, *, dtype: torch.dtype = torch.float64, device: Any = None
) -> Tensor:
    """The eigenvalues ``λ_k = 1 + 4σ·sin²(πk/n)`` of ``I - σL`` on the rfft bins.

    ``L`` is the periodic 1-D discrete Laplacian of ``n`` points,
    ``(Lu)_i = u_{i-1} - 2u_i + u_{i+1}`` (indices mod ``n``; for ``n = 2``
    both neighbours are the other point, for ``n = 1`` ``L = 0``).

    Parameters
    ----------
    n : int
        Ring length, >= 1.
    sigma : float
        Smoothing strength, >= 0.
    dtype : torch.dtype, optional (default=float64)
    device : torch.device, optional

    Returns
    -------
    Tensor, shape-(n // 2 + 1,)

    Examples
    --------
    >>> laplacian_eigenvalues(4, 1.0).round(decimals=12).tolist()
    [1.0, 3.0, 5.0]
    >>> laplacian_eigenvalues(2, 0.5).tolist(), laplacian_eigenvalues(1, 0.5).tolist()
    ([1.0, 3.0], [1.0])
    """
    k = torch.arange(n // 2 + 1, dtype=dtype, device=device)
    return torch.sin(k * (math.pi / n)).square_().mul_(4.0 * sigma).add_(1.0)


# --------------------------------------------------------------------------- #
# two exact solvers: FFT and the truncated Green's-function convolution
# --------------------------------------------------------------------------- #
#: Private switch for tests and benchmarks: ``None`` chooses the path by cost
#: (:func:`_choose_path`), ``"fft"`` or ``"direct"`` forces one.
_FORCE_PATH: str | None = None

#: Cost model of :func:`_choose_path`, measured on the development CPU (2 cores
#: of an AMD EPYC, MKL; see docs/smoothing.md), per compute dtype, in ns:
#: ``fft_one``/``fft_batch`` per entry and ``log2(n)`` for one long ring
#: (``N = 1`` or ``n >= 2**19``) / a batch of shorter rings (cache-resident,
#: parallel over rows), ``direct_one``/``direct_batch`` per entry of the
#: extended rings (``n + 2J·B`` each), ``op`` per vector operation and
#: ``op_entry`` per entry of one of the ``2J`` carry updates, and the fixed
#: cost of a call of each path.
_COST_NS = {
    torch.float32: dict(
        fft_one=1.0, fft_batch=0.3, direct_one=0.8, direct_batch=1.4, op=6e3, op_entry=0.4
    ),
    torch.float64: dict(
        fft_one=2.0, fft_batch=0.42, direct_one=2.3, direct_batch=3.3, op=6e3, op_entry=0.75
    ),
}
_FFT_CALL_NS, _DIRECT_CALL_NS = 60e3, 100e3
#: The FFT's slowdown for lengths with a prime factor above 1000 (Bluestein).
_FFT_PRIME_FACTOR = 5.0

#: The direct path's scratch buffers (see :func:`_scratch`), per thread.
_SCRATCH = threading.local()
_SCRATCH_MAX_BYTES = 64 * 2**20


def _green_decay(sigma: float) -> tuple[float, float]:
    """``(log r, log C)`` of the Green's function ``G_j = C·r^|j|`` of ``I - σL`` on the line.

    ``r`` is the root in ``(0, 1)`` of ``σr² - (1 + 2σ)r + σ = 0`` and
    ``C = 1/((1 + 2σ) - 2σr) = 1/sqrt(1 + 4σ)``. Written as ``r = 1/(1 + a)``
    with ``a = (1 + sqrt(1 + 4σ))/(2σ)``, free of cancellation and overflow
    for every finite ``σ > 0``.
    """
    if sigma == 0:
        return -math.inf, 0.0
    if sigma >= 1.0:
        inv = 1.0 / sigma
        a = 0.5 * (inv + math.sqrt(inv * inv + 4.0 * inv))
        log_c = -0.5 * (math.log(sigma) + math.log(4.0 + inv))
    else:
        a = (1.0 + math.sqrt(1.0 + 4.0 * sigma)) / (2.0 * sigma)
        log_c = -0.5 * math.log1p(4.0 * sigma)
    return -math.log1p(a), log_c


def _truncation_radius(sigma: float, dtype: torch.dtype) -> int:
    """Smallest ``K`` whose dropped Green's-function tail is below ``eps(dtype)/128``.

    The taps ``|j| > K`` of ``G_j = C·r^|j|`` weigh
    ``2C·r^(K+1)/(1 - r)`` together, so dropping them changes each output by
    at most that times ``max|g|``: here at most ``2^-7·eps`` (1/64 of the
    unit roundoff; ``9.3e-10`` for float32, ``1.7e-18`` for float64), far
    below the rounding of the sum itself.
    """
    tol = torch.finfo(dtype).eps * 2.0**-7
    log_r, log_c = _green_decay(sigma)
    if log_r == -math.inf:  # sigma below ~1e-308: r = 0, G = C·δ
        return 0
    # 2C r^(K+1) / (1 - r) <= tol   <=>   (K + 1) log r <= log(tol (1 - r) / (2C))
    log_one_minus_r = math.log(-math.expm1(log_r))
    bound = (math.log(tol) + log_one_minus_r - math.log(2.0) - log_c) / log_r
    return max(0, math.ceil(bound) - 1)


def _block_shape(sigma: float, dtype: torch.dtype) -> tuple[int, int]:
    """``(B, J)`` of the direct path: block length and blocks of carries each side (``J·B >= K``).

    Blocks of 16 make the matrix product cheapest; for wide kernels
    (``K > 96``) blocks of 32 halve the ``2J`` carry updates.
    """
    K = _truncation_radius(sigma, dtype)
    B = 16 if K <= 96 else 32
    return B, max(1, -(-K // B))


@functools.lru_cache(maxsize=64)
def _direct_weights(
    sigma: float, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor, Tensor, float, int]:
    """``(G, a, b, ρ, J)`` of the direct path (blocks of ``B`` = ``len(a)``), cached by value.

    ``G[s, i] = C·r^|i-s|`` for ``s, i`` in ``0..B-1``: a block's own part of
    the Green's function. ``a_i = r^(i+1)`` and ``b_i = r^(B-i)`` say how the
    carries from the left and from the right enter output ``i``. ``ρ = r^B``.
    ``J`` is the number of blocks on each side whose carries are summed
    (:func:`_block_shape`). The key holds ``sigma``'s value, so a changed
    ``sigma`` gets its own weights (never stale ones); read-only.
    """
    B, J = _block_shape(sigma, dtype)
    log_r, log_c = _green_decay(sigma)
    i = torch.arange(B, dtype=torch.float64, device=device)

    def power(k: Tensor) -> Tensor:  # r^k, with 0^0 = 1
        return torch.exp(k * log_r) if log_r > -math.inf else (k == 0).to(k.dtype)

    own = math.exp(log_c) * power((i.view(-1, 1) - i.view(1, -1)).abs())
    return own.to(dtype), power(i + 1).to(dtype), power(B - i).to(dtype), math.exp(B * log_r), J


def _scratch(slot: str, numel: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """An uninitialized 1-D tensor of ``numel`` entries, reused between calls on the CPU.

    Fresh pages of a large CPU allocation cost about as much as the direct
    solve itself (page faults), so the direct path keeps its scratch buffers
    (one per ``slot``, dtype and thread) up to ``_SCRATCH_MAX_BYTES`` each.
    Other devices have caching allocators: a plain ``torch.empty``.
    """
    size = numel * torch.finfo(dtype).bits // 8
    if device.type != "cpu" or size > _SCRATCH_MAX_BYTES:
        return torch.empty(numel, dtype=dtype, device=device)
    buffers = _SCRATCH.__dict__.setdefault("buffers", {})
    buffer = buffers.get((slot, dtype))
    if buffer is None or buffer.numel() < numel:
        buffers[(slot, dtype)] = buffer = torch.empty(numel, dtype=dtype, device=device)
    return buffer[:numel]


def _smooth_rows_direct_(rows: Tensor, sigma: float, dtype: torch.dtype) -> None:
    """Solve by convolution with the line's Green's function ``C·r^|j|`` over the periodic rows.

    Each ring is extended periodically by ``J`` blocks of ``B`` entries on
    each side and cut into blocks (``m`` of them hold the ring); ``Y = X @ G``
    gives every block's own part. The kernel is geometric, so block ``b``
    receives from block ``b - j`` on its left ``r^(i+1)·ρ^(j-1)·Y[b-j, B-1]``
    at output ``i``, and from block ``b + j`` on its right
    ``r^(B-i)·ρ^(j-1)·Y[b+j, 0]``, with ``ρ = r^B``. So the solve is one
    matrix product, ``2J`` vector updates over the blocks (the carries
    ``S_L[b] = Σ_(j=1..J) ρ^(j-1)·Y[b-j, B-1]`` and ``S_R``, by Horner) and
    two rank-1 updates, ``u = Y + S_L ⊗ a + S_R ⊗ b``. That is ``O(n·B)``
    whatever ``σ`` is.

    The periodic extension convolved with the line's kernel is the ring's
    Green's function ``C·(r^k + r^(n-k))/(1 - r^n)``. Only distances beyond
    ``J·B >= K`` are dropped (see :func:`_truncation_radius`). Zero times the
    row sum is added to ``S_L``, so a non-finite entry makes its whole row
    non-finite, as with the FFT. A single full-precision ring is read and
    written in place, without the extended copy.
    """
    N, n = rows.shape
    device = rows.device
    G, a, b, rho, J = _direct_weights(sigma, dtype, device)
    B = len(a)
    m = -(-n // B)  # blocks holding the ring
    whole = n // B  # of which full
    nb = m + 2 * J  # blocks per extended ring
    F = N * nb
    left = J * B  # ring entry p is at extended position left + p
    wrap = (nb - J - whole) * B - (n - whole * B)  # entries after the ring: g_0, g_1, ...
    poison = rows.sum(dim=1, dtype=None if rows.dtype == dtype else dtype)
    poison = poison.mul_(0.0).view(N, 1, 1)  # 0, or NaN: a non-finite entry
    Y = _scratch("products", F * B, dtype, device).view(F, B)
    in_place = N == 1 and rows.dtype == dtype and left <= n and wrap <= n
    if in_place:  # the ring's full blocks straight from the row, the rest from a small copy
        torch.mm(rows[0, : whole * B].view(whole, B), G, out=Y[J : J + whole])
        edges = torch.cat([rows[0, n - left :], rows[0, whole * B :], rows[0, :wrap]]).view(-1, B)
        Y_edges = edges @ G
        Y[:J], Y[J + whole :] = Y_edges[:J], Y_edges[J:]
    else:
        ext = _scratch("extended", F * B, dtype, device).view(N, nb, B)
        if left <= n and wrap <= n:
            ext[:, :J] = rows[:, n - left :].view(N, J, B)
            ext[:, J : J + whole] = rows[:, : whole * B].view(N, whole, B)
            tail = torch.cat([rows[:, whole * B :], rows[:, :wrap]], 1)
            ext[:, J + whole :] = tail.view(N, -1, B)
        else:  # a short ring, read around more than once
            index = (torch.arange(nb * B, device=device) - left).remainder_(n)
            ext.copy_(rows[:, index].view(N, nb, B))
        torch.mm(ext.view(F, B), G, out=Y)
    to_right, to_left = Y[:, B - 1].contiguous(), Y[:, 0].contiguous()
    carries = _scratch("carries", 2 * F, dtype, device).view(2, N, nb)
    s_left, s_right = carries[0].view(F)[J : F - J], carries[1].view(F)[J : F - J]
    s_left.copy_(to_right[: F - 2 * J])  # Horner over j = J, ..., 1
    s_right.copy_(to_left[2 * J :])
    for j in range(J - 1, 0, -1):
        s_left.mul_(rho).add_(to_right[J - j : F - J - j])
        s_right.mul_(rho).add_(to_left[J + j : F - J + j])
    s_left = carries[0, :, J : J + m, None].add_(poison)
    s_right = carries[1, :, J : J + m, None]
    own = Y.view(N, nb, B)[:, J : J + m]
    if in_place:
        body = rows[0, : whole * B].view(1, whole, B)
        torch.addcmul(own[:, :whole], s_left[:, :whole], a, out=body).addcmul_(
            s_right[:, :whole], b
        )
        if whole < m:  # the last, partial block
            last = torch.addcmul(own[:, whole:], s_left[:, whole:], a)
            rows[0, whole * B :] = last.addcmul_(s_right[:, whole:], b)[0, 0, : n - whole * B]
        return
    out = _scratch("out", N * m * B, dtype, device).view(N, m, B)
    torch.addcmul(own, s_left, a, out=out).addcmul_(s_right, b)
    rows.copy_(out.view(N, m * B)[:, :n])  # cut to n, and rounded once for half types


def _smooth_rows_fft_(rows: Tensor, sigma: float, dtype: torch.dtype) -> None:
    """Solve by one real FFT pair with the analytic eigenvalues."""
    n = rows.shape[1]
    spectrum = torch.fft.rfft(rows.to(dtype), dim=1)
    spectrum.div_(laplacian_eigenvalues(n, sigma, dtype=dtype, device=rows.device))
    if rows.dtype == dtype:
        torch.fft.irfft(spectrum, n=n, dim=1, out=rows)
    else:  # half precision: solved in float32, rounded once
        rows.copy_(torch.fft.irfft(spectrum, n=n, dim=1))


@functools.lru_cache(maxsize=256)
def _has_large_prime_factor(n: int) -> bool:
    """Whether ``n`` has a prime factor above 1000 (the FFT then takes a slower algorithm)."""
    for p in range(2, 1001):
        while n % p == 0:
            n //= p
    return n > 1


def _float32_products_are_exact() -> bool:
    """Whether CPU float32 matrix products run in full float32 (no bf16/tf32 shortcut)."""
    try:
        mkldnn = torch.backends.mkldnn.matmul.fp32_precision
        generic = torch.backends.fp32_precision
    except AttributeError:  # torch without the per-backend precision settings
        try:
            return torch.get_float32_matmul_precision() == "highest"
        except RuntimeError:
            return False
    return mkldnn == "ieee" or (mkldnn == "none" and generic in ("none", "ieee"))


def _choose_path(N: int, n: int, sigma: float, dtype: torch.dtype, device: torch.device) -> str:
    """``"fft"`` or ``"direct"``: the solver estimated cheaper for ``N`` rings of ``n``.

    Both are exact to rounding. The estimate (``_COST_NS``) sets the FFT's
    ``O(n log n)`` against the direct path's ``O(n)`` plus its ``2J`` carry
    updates (``J`` growing like ``sqrt(σ)``). The FFT is taken for short
    rings (``n < 2J·B``), for devices other than the CPU (the model was
    calibrated on a CPU only), and when float32 matrix products run at
    reduced precision (bf16/tf32 settings).
    """
    if _FORCE_PATH is not None:
        return _FORCE_PATH
    if device.type != "cpu" or dtype not in _COST_NS:
        return "fft"
    if dtype == torch.float32 and not _float32_products_are_exact():
        return "fft"
    B, J = _block_shape(sigma, dtype)
    if n < 2 * J * B:  # short ring: the FFT is cheap, the direct path mostly padding
        return "fft"
    cost = _COST_NS[dtype]
    one = N == 1 or n >= 2**19
    fft = N * n * math.log2(n) * cost["fft_one" if one else "fft_batch"]
    if _has_large_prime_factor(n):
        fft *= _FFT_PRIME_FACTOR
    blocks = N * (-(-n // B) + 2 * J)
    direct = blocks * B * cost["direct_one" if N == 1 else "direct_batch"]
    direct += 2 * J * (cost["op"] + blocks * cost["op_entry"])
    return "direct" if direct + _DIRECT_CALL_NS < fft + _FFT_CALL_NS else "fft"


def _smooth_rows_(rows: Tensor, sigma: float) -> None:
    """Solve ``(I - σL) u = row`` in place for every row of 2-D contiguous ``rows``."""
    n = rows.shape[1]
    if n < 2 or rows.shape[0] == 0:
        return  # a ring of one point: L = 0, u = g
    dtype = compute_dtype(rows)
    sigma = float(sigma)
    if _choose_path(rows.shape[0], n, sigma, dtype, rows.device) == "direct":
        _smooth_rows_direct_(rows, sigma, dtype)
    else:
        _smooth_rows_fft_(rows, sigma, dtype)


def laplacian_smooth_(x: Tensor, sigma: float) -> Tensor:
    """In place: replace each row ``g`` of ``x`` by the solution ``u`` of ``(I - σL) u = g``.

    Each row is flattened row-major into a ring of ``n`` points (a ``(2, 2)``
    row is one ring of 4) and solved exactly, to rounding, by the cheaper
    (by a cost estimate) of two solvers: one real FFT pair with the analytic
    eigenvalues (:func:`laplacian_eigenvalues`), in ``O(n log n)``, or, on
    the CPU for rings longer than the kernel, a circular convolution with
    the ring's Green's function ``G_j = C·(r^j + r^(n-j))/(1 - r^n)`` (``r``
    the root in ``(0, 1)`` of ``σr² - (1 + 2σ)r + σ = 0``,
    ``C = 1/sqrt(1 + 4σ)``). The convolution is truncated to ``|j| <= K``,
    beyond which the kernel's tail weighs less than ``eps/128`` of the
    compute dtype; ``K ~ sqrt(σ)``, ``K = 21`` at ``σ = 1`` in float32. The
    kernel is geometric, so blocks of 16 or 32 entries are solved by one
    matrix product and coupled through one carry per block, in
    ``O(n + n·K/B²)``. Both solvers agree with a dense solve within a few
    ``eps·max|g|``. Nothing
    depending on ``sigma`` is cached under another value, so a new ``sigma``
    always takes effect. ``λ_0 = 1``, so every row keeps its sum;
    ``sigma = 0`` and rows of one element are left unchanged. float16 and
    bfloat16 rows are solved in float32 and rounded once. A non-finite entry
    makes its whole row non-finite.

    Parameters
    ----------
    x : Tensor, shape-(N, ...)
        Rows to smooth, modified in place.
    sigma : float
        Smoothing strength, >= 0.

    Returns
    -------
    Tensor
        ``x``.

    Examples
    --------
    >>> g = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 0.0, 0.0, 0.0]])
    >>> laplacian_smooth_(g, sigma=1.0) * 15
    tensor([[31.0000, 34.0000, 41.0000, 44.0000],
            [ 7.0000,  3.0000,  2.0000,  3.0000]])
    >>> laplacian_smooth_(torch.tensor([[1.0, 0.0, 0.0]]), sigma=1.0)
    tensor([[0.5000, 0.2500, 0.2500]])
    """
    opt.nonnegative("laplacian_smooth_", "sigma", sigma)
    check_rows(x)
    if sigma == 0 or x.numel() == 0:
        return x
    return inplace_on_flat_rows(x, lambda rows: _smooth_rows_(rows, sigma))


def laplacian_smooth(x: Tensor, sigma: float) -> Tensor:
    """Out-of-place :func:`laplacian_smooth_`.

    Examples
    --------
    >>> laplacian_smooth(torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0]]), sigma=0.5) * 19
    tensor([[11.0000,  3.0000,  1.0000,  1.0000,  3.0000]])
    """
    return laplacian_smooth_(x.clone(), sigma)


# --------------------------------------------------------------------------- #
# LaplacianSmoothing
# --------------------------------------------------------------------------- #
class LaplacianSmoothing(ParamTransformingOptimizer):
    """Laplacian-smooths each gradient, ``g ← (I - σL)⁻¹ g``, then steps ``InnerOpt``.

    With ``InnerOpt=SGD`` this is LS-SGD (Osher et al., 2022). The transform
    solves ``(I - σL) u = g`` exactly on a ring per row, by FFT or by a
    truncated Green's-function convolution (:func:`laplacian_smooth_`): it
    damps the high frequencies of the gradient and keeps its sum, so steps
    are smoother and less noisy.

    Parameters
    ----------
    params, InnerOpt, grad_scale, grad_bias, defaults, **inner_opt_kwargs
        See :class:`~rai_probe.optim.ParamTransformingOptimizer`.
    sigma : float, optional (default=1.0)
        Smoothing strength, >= 0; ``0`` is the identity. Read at every step,
        so changing ``group["sigma"]`` takes effect at once. Per group.
    layerwise : bool, optional (default=True)
        ``True``: each parameter is smoothed on its own, one ring per row
        (rows per ``param_ndim``). ``False``: the gradients of all
        parameters of the group (those that have one, in group order, each
        flattened row-major) are concatenated into a single ring;
        ``param_ndim`` then has no effect on the smoothing. Per group.
    min_numel : int, optional (default=4)
        Rings with **fewer** than ``min_numel`` elements pass through
        unchanged; a ring of exactly ``min_numel`` elements is smoothed
        (inclusive bound). Applies to each row when ``layerwise`` and to the
        concatenated ring otherwise. Per group.
    param_ndim : int | None, optional (default=-1)
        Rows, as for every transforming optimizer: the default ``-1`` gives
        one ring per leading index (one per image of a batch of
        perturbations). ``param_ndim=None`` makes each whole tensor one ring,
        as in the paper. Mind 1-D parameters: with ``-1`` each element is
        its own ring of one, which passes through unchanged. Per group.

    Examples
    --------
    LS-SGD: one ring per tensor (``param_ndim=None``), as in the paper.

    >>> import torch as tr
    >>> from rai_probe.optim import LaplacianSmoothing
    >>> x = tr.zeros(2, 2, requires_grad=True)
    >>> optim = LaplacianSmoothing([x], sigma=1.0, lr=15.0, param_ndim=None)
    >>> x.grad = tr.tensor([[1.0, 0.0], [0.0, 0.0]])   # row-major: one ring of 4
    >>> optim.step()
    >>> x
    tensor([[-7.0000, -3.0000],
            [-2.0000, -3.0000]], requires_grad=True)

    The sum of each ring is preserved; the default ``param_ndim=-1`` smooths
    each row of a batch on its own:

    >>> y = tr.zeros(2, 4, requires_grad=True)
    >>> optim = LaplacianSmoothing([y], sigma=1.0, lr=0.0)
    >>> y.grad = tr.tensor([[0.0, 0.0, 4.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    >>> optim.step()
    >>> y.grad
    tensor([[0.5333, 0.8000, 1.8667, 0.8000],
            [1.0000, 1.0000, 1.0000, 1.0000]])
    >>> y.grad.sum(dim=1)
    tensor([4.0000, 4.0000])
    """

    _options = {"sigma": opt.nonnegative, "layerwise": opt.boolean, "min_numel": opt.integer(0)}

    def __init__(
        self,
        params: Params,
        InnerOpt: InnerOptimizer = SGD,
        *,
        sigma: float = 1.0,
        layerwise: bool = True,
        min_numel: int = 4,
        param_ndim: int | None = -1,
        grad_scale: float = 1.0,
        grad_bias: float = 0.0,
        defaults: dict[str, Any] | None = None,
        **inner_opt_kwargs: Any,
    ) -> None:
        super().__init__(
            params,
            InnerOpt,
            param_ndim=param_ndim,
            grad_scale=grad_scale,
            grad_bias=grad_bias,
            defaults=opt.fill_defaults(
                defaults, sigma=sigma, layerwise=layerwise, min_numel=min_numel
            ),
            **inner_opt_kwargs,
        )

    def _pre_step_transform_(self, param: Tensor, optim_group: dict[str, Any]) -> None:
        if not optim_group["layerwise"] or param.grad.shape[0] == 0:
            return
        if param.grad[0].numel() >= optim_group["min_numel"]:
            laplacian_smooth_(param.grad, optim_group["sigma"])

    @torch.no_grad()
    def _apply_pre_step_transform_(self) -> None:
        for group in self.param_groups:
            if not group["layerwise"]:
                self._smooth_group_ring_(group)
        super()._apply_pre_step_transform_()

    @staticmethod
    def _smooth_group_ring_(group: dict[str, Any]) -> None:
        """Smooth the concatenation of the group's gradients as one ring."""
        grads = [p.grad for p in group["params"] if p.grad is not None]
        sizes = [g.numel() for g in grads]
        if group["sigma"] == 0 or not grads or sum(sizes) < group["min_numel"]:
            return
        if any(g.is_sparse for g in grads):
            raise TypeError("LaplacianSmoothing needs dense gradients; got a sparse gradient")
        dtype = functools.reduce(torch.promote_types, [compute_dtype(g) for g in grads])
        ring = torch.cat([g.reshape(1, -1).to(dtype) for g in grads], dim=1)
        laplacian_smooth_(ring, group["sigma"])
        for g, piece in zip(grads, ring.split(sizes, dim=1)):
            g.copy_(piece.view(g.shape))

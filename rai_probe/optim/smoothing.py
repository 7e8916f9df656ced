"""Smoothing optimizers: Laplacian smoothing of gradients and gradient sampling.

* :func:`laplacian_smooth_` / :func:`laplacian_smooth` (pure, per row) and
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
* :class:`GradientSampling` replaces the gradient, and the loss, by an
  aggregate over ``n`` evaluations of the closure at perturbed points
  ``x + σ·u``: a Gaussian-homotopy / gradient-sampling step for non-smooth
  models.

Examples
--------
>>> import torch
>>> from rai_probe.optim.smoothing import laplacian_smooth
>>> laplacian_smooth(torch.tensor([[1.0, 0.0, 0.0, 0.0]]), sigma=1.0) * 15
tensor([[7.0000, 3.0000, 2.0000, 3.0000]])
"""

from __future__ import annotations

import functools
import inspect
import math
import threading
from typing import Any, Callable, ClassVar, NamedTuple, Sequence

import torch
from torch import Tensor
from torch.optim import SGD, Optimizer

from . import functional as F
from . import options as opt
from .functional import _check_rows, _compute_dtype, _inplace_on_flat_rows
from .normed import InnerOptimizer, Params
from ..errors import SettingError, SettingTypeError
from .nonfinite import suspended
from .param_transforming import ParamTransformingOptimizer, rows_shape

__all__ = [
    "laplacian_eigenvalues",
    "laplacian_smooth_",
    "laplacian_smooth",
    "LaplacianSmoothing",
    "GradientSampling",
]

#: Key of :class:`GradientSampling`'s own state in its ``state_dict()``.
_SAMPLING_STATE = "gradient_sampling"

AGGREGATES = ("mean", "max", "min", "min-norm")
DISTRIBUTIONS = ("gaussian", "uniform", "rademacher", "sphere")
SIGMA_STRATEGIES = (None, "grad-norm", "value")


# --------------------------------------------------------------------------- #
# option checks
# --------------------------------------------------------------------------- #
def _one_of(*allowed: Any) -> opt.OptionCheck:
    """A check that the value is one of ``allowed`` (strings or None)."""
    listed = ", ".join(map(repr, allowed))

    def check(where: str, name: str, value: Any) -> None:
        if not (isinstance(value, (str, type(None))) and value in allowed):
            raise SettingError(
                f"{where}: option `{name}` must be one of {listed}; got {name}={value!r}",
                setting=name,
                value=value,
            )

    return check


def _integer(low: int, *, optional: bool = False) -> opt.OptionCheck:
    """A check that the value is an integer ``>= low`` (with ``optional``, also None).

    An optional integer is a seed: it must also be below ``2**64``.
    """
    allowed = f"None or an integer within [{low}, 2**64)" if optional else f"an integer >= {low}"

    def check(where: str, name: str, value: Any) -> None:
        if optional and value is None:
            return
        integer = isinstance(value, int) and not isinstance(value, bool)
        if not integer or value < low or (optional and value >= 2**64):
            raise SettingError(
                f"{where}: option `{name}` must be {allowed}; got {name}={value!r}",
                setting=name,
                value=value,
            )

    return check


def _optional_callable(where: str, name: str, value: Any) -> None:
    if value is not None and not callable(value):
        raise SettingTypeError(
            f"{where}: option `{name}` must be None or a callable; got {type(value).__name__}",
            setting=name,
            value=value,
        )


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
    dtype = _compute_dtype(rows)
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
    _check_rows(x)
    if sigma == 0 or x.numel() == 0:
        return x
    return _inplace_on_flat_rows(x, lambda rows: _smooth_rows_(rows, sigma))


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

    _options = {"sigma": opt.nonnegative, "layerwise": opt.boolean, "min_numel": _integer(0)}

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
        dtype = functools.reduce(torch.promote_types, [_compute_dtype(g) for g in grads])
        ring = torch.cat([g.reshape(1, -1).to(dtype) for g in grads], dim=1)
        laplacian_smooth_(ring, group["sigma"])
        for g, piece in zip(grads, ring.split(sizes, dim=1)):
            g.copy_(piece.view(g.shape))


# --------------------------------------------------------------------------- #
# GradientSampling
# --------------------------------------------------------------------------- #
#: Options of the sampling itself: one value for the whole optimizer.
_SAMPLING_OPTIONS: dict[str, opt.OptionCheck] = {
    "n": _integer(1),
    "aggregate": _one_of(*AGGREGATES),
    "include_x0": opt.boolean,
    "fixed": opt.boolean,
    "pre_generate": opt.boolean,
    "termination": _optional_callable,
    "reset_on_termination": opt.boolean,
    "seed": _integer(0, optional=True),
}


class _Sample(NamedTuple):
    """The closure evaluated at one point."""

    loss: Tensor  # 0-d, float32 or wider, on the first parameter's device
    grads: list[Tensor]  # zeros for parameters the closure gave no gradient
    seen: list[bool]  # which parameters got a gradient
    finite: Tensor  # 0-d bool: the loss and every gradient entry are finite
    norm: Tensor | None  # L2 norm of all gradients, when an option needs it
    metrics: dict[int, Tensor]  # group index -> what its sigma_strategy compares


class _Evaluation(NamedTuple):
    """One sampled evaluation of the closure: aggregate, flags, and the point it was taken at."""

    loss: Tensor
    grads: list[Tensor | None]
    any_finite: Tensor  # 0-d bool, on the device
    grow: dict[int, Tensor]  # group index -> 0-d bool: sigma_strategy condition met
    versions: list[int]  # parameters' version counters after restoring them


def _total_norm(norms: Sequence[Tensor], device: torch.device) -> Tensor:
    """The L2 norm of a vector whose pieces have the L2 norms ``norms`` (overflow-free)."""
    if not norms:
        return torch.zeros((), device=device)
    return F.row_norms(torch.cat([v.to(device).reshape(1) for v in norms]).reshape(1, -1), 2)[0]


class _Aggregate:
    """Running aggregate of (loss, gradients) over the finite samples of one evaluation.

    Everything stays on the device: each sample is folded in with
    ``torch.where`` on its finiteness flag, so no value is read by the host.
    """

    def __init__(self, rule: str, params: list[Tensor], device: torch.device) -> None:
        self.rule = rule
        self.count = torch.zeros((), dtype=torch.int64, device=device)
        self.seen = [False] * len(params)
        self.grads = [
            torch.zeros(p.shape, dtype=_compute_dtype(p), device=p.device) for p in params
        ]
        self.loss: Tensor | None = None
        if rule in ("max", "min"):  # |chosen| per element; any magnitude beats the start
            start = -1.0 if rule == "max" else math.inf
            self.keys = [torch.full_like(g, start) for g in self.grads]
        self.best_norm = torch.full((), math.inf, device=device)

    def add(self, sample: _Sample) -> None:
        loss, grads, ok, norm = sample.loss, sample.grads, sample.finite, sample.norm
        self.seen = [a or b for a, b in zip(self.seen, sample.seen)]
        if self.loss is None:
            start = {"mean": 0.0, "max": -math.inf, "min": math.inf, "min-norm": math.nan}
            self.loss = torch.full_like(loss, start[self.rule])
        if self.rule == "mean":
            self.loss.add_(torch.where(ok, loss, 0))
            for acc, g in zip(self.grads, grads):
                acc.add_(torch.where(ok, g, 0))
        elif self.rule == "min-norm":
            take = ok & ((self.count == 0) | (norm < self.best_norm))
            self.best_norm = torch.where(take, norm, self.best_norm)
            self.loss = torch.where(take, loss, self.loss)
            self.grads = [torch.where(take, g, acc) for acc, g in zip(self.grads, grads)]
        else:  # elementwise largest / smallest magnitude, keeping the chosen element's sign
            pick = torch.maximum if self.rule == "max" else torch.minimum
            self.loss = torch.where(ok, pick(self.loss, loss), self.loss)
            better = torch.gt if self.rule == "max" else torch.lt
            for j, g in enumerate(grads):
                magnitude = g.abs()
                take = ok & better(magnitude, self.keys[j])
                self.grads[j] = torch.where(take, g, self.grads[j])
                self.keys[j] = torch.where(take, magnitude, self.keys[j])
        self.count += ok

    def result(self) -> tuple[Tensor, list[Tensor | None]]:
        """``(loss, grads)``: NaN everywhere when no sample was finite; None for unseen grads."""
        empty = self.count == 0
        if self.rule == "mean":
            loss = self.loss / self.count
            grads = [acc.div_(self.count) for acc in self.grads]
        else:
            loss = self.loss.masked_fill(empty, math.nan)
            grads = [acc.masked_fill_(empty, math.nan) for acc in self.grads]
        return loss, [g if seen else None for g, seen in zip(grads, self.seen)]


class GradientSampling(ParamTransformingOptimizer):
    """Steps ``InnerOpt`` on an aggregate of gradients sampled at perturbed points ``x + σ·u``.

    Each evaluation of the objective evaluates the closure at ``n`` points
    ``x + σ·u_i`` (and, with ``include_x0``, at ``x`` itself), restores the
    parameters bit-exactly, and hands the aggregate of the finite samples'
    losses and gradients to the inner optimizer. With ``aggregate="mean"``
    this is the gradient of the Gaussian-smoothed objective (Gaussian
    homotopy); the other aggregates are gradient-sampling variants for
    non-smooth models (ReLU kinks, max-pooling, piecewise-linear losses).

    ``step(closure)`` requires a closure; it returns the aggregated loss at
    the current point (what the inner optimizer's ``step`` returns). A closure
    called several times per step (LBFGS, line searches) is re-sampled at
    every call around the point of that call, with the same perturbations.

    Parameters
    ----------
    params, InnerOpt, defaults, **inner_opt_kwargs
        See :class:`~rai_probe.optim.ParamTransformingOptimizer`. ``InnerOpt``
        receives the aggregated gradient; it may be a transforming optimizer
        or an already-built :class:`~rai_probe.optim.ChainedParamTransformingOptimizer`
        (e.g. Laplacian smoothing, then L1q sparsification, then SGD). An
        inner optimizer with an option of the same name as one below (such
        as ``LaplacianSmoothing``'s ``sigma``) would share it through the
        param groups and is refused: wrap it in a chain, whose members keep
        their own param groups.
    sigma : float, optional (default=1.0)
        Perturbation scale, >= 0; ``0`` gives the plain gradient. The current
        value lives in ``group["sigma"]`` (adapted by ``sigma_strategy``,
        decayed on termination, saved by ``state_dict``). Per group.
    n : int, optional (default=100)
        Number of perturbed points per evaluation, >= 1 (``x`` itself, with
        ``include_x0``, comes on top).
    aggregate : {"mean", "max", "min", "min-norm"}, optional (default="mean")
        ``"mean"``: mean gradient and loss. ``"max"`` / ``"min"``: per element,
        the sampled gradient entry of largest / smallest magnitude, with its
        own sign (first sample on ties); the loss is the largest / smallest
        loss. ``"min-norm"``: the gradient, and loss, of the sample whose
        gradient has the smallest L2 norm over all parameters.
    distribution : {"gaussian", "uniform", "rademacher", "sphere"}, optional (default="gaussian")
        Of ``u``: standard normal entries, ``U[-1, 1]`` entries, ``±1``
        entries, or uniform on the unit L2 sphere of each row (rows per
        ``param_ndim``). Per group.
    include_x0 : bool, optional (default=True)
        Also aggregate the sample at the unperturbed point.
    fixed : bool, optional (default=True)
        Keep the same perturbations ``u_i`` across steps until the
        termination rule fires (or a param group is added); ``False`` draws
        new ones every step. Within a step they never change.
    pre_generate : bool, optional (default=True)
        Store the perturbations (``n`` copies of the parameters) instead of
        regenerating them from their seed at every evaluation. Same results
        either way; it trades memory for compute.
    termination : callable, optional (default=None)
        ``termination(loss, grads) -> bool``, called once per step with the
        aggregated loss and gradients (None for parameters without one) at
        the current point. When it returns True, after the step: every
        group's ``sigma`` is multiplied by its ``decay``, new perturbations
        are drawn, and with ``reset_on_termination`` the inner optimizer's
        state is cleared.
    decay : float, optional (default=2/3)
        Multiplier of ``sigma`` on termination, > 0. Per group.
    reset_on_termination : bool, optional (default=True)
        Clear the inner optimizer's state (momenta, LBFGS history) on termination.
    sigma_strategy : {None, "grad-norm", "value"}, optional (default=None)
        Adapt ``sigma`` after every step from the samples at the current
        point: a sample *beats* ``x`` when its gradient norm (over the
        group's parameters; ``"grad-norm"``) or its loss (``"value"``) is
        lower than at ``x``. If at least ``sigma_target`` of the finite
        samples, and at least one, beat ``x``, ``sigma *= sigma_nplus``, else
        ``sigma *= sigma_nminus``. ``x`` is evaluated for this even without
        ``include_x0``. The adaptation happens once per step, never inside
        the closure, so line searches see a fixed objective. Per group.
    sigma_target : float, optional (default=0.2)
        Fraction within [0, 1]. Per group.
    sigma_nplus, sigma_nminus : float, optional (default=4/3, 2/3)
        Multipliers, > 0. Per group.
    seed : int, optional (default=None)
        Seed of the perturbations. ``None`` draws one from torch's global
        generator at construction, so ``torch.manual_seed`` makes runs
        reproducible too.
    param_ndim : int | None, optional (default=-1)
        Rows of the ``"sphere"`` distribution. Per group.
    grad_scale, grad_bias : float, optional (default=1.0, 0.0)
        Applied to the aggregated gradient. Per group. With a transforming
        ``InnerOpt``, these three options are the inner optimizer's (it
        shares the param groups and applies ``grad_scale`` and ``grad_bias``
        itself): set them there; here they must keep their defaults.

    Notes
    -----
    ``n``, ``aggregate``, ``include_x0``, ``fixed``, ``pre_generate``,
    ``termination``, ``reset_on_termination`` and ``seed`` shape the shared
    sampling of the closure (one closure call evaluates every group), so they
    are set once, at construction; all other options are per group.

    Samples whose loss or any gradient entry is not finite are skipped. When
    every sample of the first evaluation of a step is non-finite, no step is
    taken: parameters, gradients (left as None) and the inner optimizer's
    state are untouched, and ``step`` returns a NaN loss (``sigma_strategy``
    still shrinks ``sigma``), and every row with a gradient counts in
    :attr:`skipped_rows`. At later evaluations of the same step (line search
    trial points) such an evaluation reports a NaN loss to the inner
    optimizer. The aggregated gradient then follows the package's row policy
    (:mod:`rai_probe.optim.nonfinite`): its non-finite rows (a NaN
    evaluation, or a mean of huge samples that overflows) are zeroed before
    the inner optimizer sees them and left unchanged by the step. The step
    reads one small boolean tensor from the device to decide whether to
    step; everything else stays on the device.

    ``state_dict()`` adds, under ``"gradient_sampling"``, the generator
    state, the current perturbations' seed and (with ``pre_generate``) the
    perturbations themselves; ``sigma`` is saved with the param groups.
    Loading it continues a run identically.

    Examples
    --------
    ``|x|`` has a kink at 0 where SGD with a fixed step oscillates; the mean
    gradient over ``x + σu`` is smooth there, and the iterate settles:

    >>> import torch as tr
    >>> from rai_probe.optim import GradientSampling
    >>> def run(sigma):
    ...     x = tr.tensor([0.3], requires_grad=True)
    ...     optim = GradientSampling([x], sigma=sigma, n=50, seed=0, lr=0.2)
    ...     def closure():
    ...         optim.zero_grad()
    ...         loss = x.abs().sum()
    ...         loss.backward()
    ...         return loss
    ...     for _ in range(30):
    ...         optim.step(closure)
    ...     return round(abs(x.item()), 4)
    >>> run(sigma=0.0)  # plain SGD: bounces between +-0.1
    0.1
    >>> run(sigma=0.2) < 0.02
    True

    Without a closure there is nothing to sample:

    >>> GradientSampling([tr.zeros(1, requires_grad=True)], lr=0.1).step()  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    rai_probe.errors.SettingTypeError: GradientSampling.step needs a closure that re-evaluates the model, ...
    """

    _options = {
        "sigma": opt.nonnegative,
        "distribution": _one_of(*DISTRIBUTIONS),
        "decay": opt.positive,
        "sigma_strategy": _one_of(*SIGMA_STRATEGIES),
        "sigma_target": opt.unit_interval,
        "sigma_nplus": opt.positive,
        "sigma_nminus": opt.positive,
    }

    def __init__(
        self,
        params: Params = None,
        InnerOpt: InnerOptimizer = SGD,
        *,
        sigma: float = 1.0,
        n: int = 100,
        aggregate: str = "mean",
        distribution: str = "gaussian",
        include_x0: bool = True,
        fixed: bool = True,
        pre_generate: bool = True,
        termination: Callable[[Tensor, list[Tensor | None]], Any] | None = None,
        decay: float = 2 / 3,
        reset_on_termination: bool = True,
        sigma_strategy: str | None = None,
        sigma_target: float = 0.2,
        sigma_nplus: float = 4 / 3,
        sigma_nminus: float = 2 / 3,
        seed: int | None = None,
        param_ndim: int | None = -1,
        grad_scale: float = 1.0,
        grad_bias: float = 0.0,
        defaults: dict[str, Any] | None = None,
        **inner_opt_kwargs: Any,
    ) -> None:
        where = type(self).__name__
        settings = dict(
            n=n,
            aggregate=aggregate,
            include_x0=include_x0,
            fixed=fixed,
            pre_generate=pre_generate,
            termination=termination,
            reset_on_termination=reset_on_termination,
            seed=seed,
        )
        opt.check_options(where, _SAMPLING_OPTIONS, settings, complete=True)
        self._refuse_shared_options(
            where, InnerOpt, param_ndim=param_ndim, grad_scale=grad_scale, grad_bias=grad_bias
        )
        self._settings = settings
        self._generator = torch.Generator()
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()))
        self._generator.manual_seed(seed)
        self._device_generators: dict[torch.device, torch.Generator] = {}
        self._perturbation_seed: int | None = None  # None: draw a new set before the next use
        self._perturbations: list[Tensor] | None = None  # pre-generated, shape (n, *p.shape)
        super().__init__(
            params,
            InnerOpt,
            param_ndim=param_ndim,
            grad_scale=grad_scale,
            grad_bias=grad_bias,
            defaults=opt.fill_defaults(
                defaults,
                sigma=sigma,
                distribution=distribution,
                decay=decay,
                sigma_strategy=sigma_strategy,
                sigma_target=sigma_target,
                sigma_nplus=sigma_nplus,
                sigma_nminus=sigma_nminus,
            ),
            **inner_opt_kwargs,
        )

    @classmethod
    def _refuse_shared_options(cls, where: str, InnerOpt: Any, **base_options: Any) -> None:
        """Refuse option values that the shared param groups would silently drop or mix up.

        The inner optimizer shares the param groups: an inner option named like
        one of ours would be read by both, and a transforming inner optimizer's
        ``param_ndim``, ``grad_scale`` and ``grad_bias`` are the groups' values.
        """
        target = InnerOpt.func if isinstance(InnerOpt, functools.partial) else InnerOpt
        if isinstance(InnerOpt, Optimizer):
            target, names = type(InnerOpt), set(InnerOpt.defaults)
        elif isinstance(target, type):
            names = set(getattr(target, "_all_options", ()))
            try:
                names |= set(inspect.signature(target).parameters)
            except (TypeError, ValueError):
                pass
        else:
            return  # not an optimizer: the base class reports it
        if issubclass(target, ParamTransformingOptimizer):
            base_defaults = {"param_ndim": -1, "grad_scale": 1.0, "grad_bias": 0.0}
            for name, value in base_options.items():
                if value != base_defaults[name]:
                    raise SettingError(
                        f"{where}: option `{name}` is taken from the transforming inner "
                        f"optimizer {target.__name__} (they share the param groups); set it "
                        f"there; got {name}={value!r}",
                        setting=name,
                        value=value,
                    )
        label = target.__name__
        shared = sorted(names & set(cls._options))
        if shared:
            raise SettingTypeError(
                f"{where}: the inner optimizer {label} also has the option(s) "
                f"{', '.join(f'`{s}`' for s in shared)}, and both would read them from the shared "
                "param groups; pass an already-built ChainedParamTransformingOptimizer as "
                "InnerOpt instead (its members keep their own param groups)",
                setting="InnerOpt",
                value=InnerOpt,
            )

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group (validated); the next step draws new perturbations."""
        super().add_param_group(param_group)
        self._perturbation_seed = None
        self._perturbations = None

    def _apply_pre_step_transform_(self) -> None:
        raise TypeError(
            "GradientSampling cannot be a member of a ChainedParamTransformingOptimizer "
            "(it needs the closure); pass the chain as its InnerOpt instead"
        )

    # ------------------------------------------------------------------ #
    # perturbations
    # ------------------------------------------------------------------ #
    def _flat(self) -> list[tuple[int, dict[str, Any], Tensor]]:
        return [(i, g, p) for i, g in enumerate(self.param_groups) for p in g["params"]]

    def _seeded_generators(self) -> dict[torch.device, torch.Generator]:
        """One generator per parameter device, each seeded with the current set's seed."""
        generators = {}
        for _, _, p in self._flat():
            if p.device not in generators:
                if p.device not in self._device_generators:
                    self._device_generators[p.device] = torch.Generator(device=p.device)
                gen = self._device_generators[p.device]
                generators[p.device] = gen.manual_seed(self._perturbation_seed)
        return generators

    @staticmethod
    def _fill_(out: Tensor, group: dict[str, Any], generator: torch.Generator) -> Tensor:
        distribution = group["distribution"]
        if distribution == "uniform":
            return out.uniform_(-1.0, 1.0, generator=generator)
        if distribution == "rademacher":
            return out.random_(0, 2, generator=generator).mul_(2).sub_(1)
        out.normal_(generator=generator)
        if distribution == "sphere":
            F.normalize_(out.view(rows_shape(out.shape, group["param_ndim"])), 2)
        return out

    def _perturbation_stream(self):
        """Yield, for each of the ``n`` samples, one perturbation per parameter (flat order)."""
        flat, n = self._flat(), self._settings["n"]
        if self._perturbations is not None:
            for i in range(n):
                yield [buffer[i] for buffer in self._perturbations]
            return
        generators = self._seeded_generators()
        for _ in range(n):  # sample-major, exactly as _pre_generate fills its buffers
            yield [
                self._fill_(p.new_empty(p.shape), g, generators[p.device]) for _, g, p in flat
            ]

    def _pre_generate(self) -> list[Tensor]:
        flat, n = self._flat(), self._settings["n"]
        buffers = [torch.empty((n, *p.shape), dtype=p.dtype, device=p.device) for _, _, p in flat]
        generators = self._seeded_generators()
        for i in range(n):
            for buffer, (_, g, p) in zip(buffers, flat):
                self._fill_(buffer[i], g, generators[p.device])
        return buffers

    def _ensure_perturbations(self) -> None:
        if self._perturbation_seed is None:
            self._perturbation_seed = int(torch.randint(0, 2**62, (), generator=self._generator))
            self._perturbations = None
        if self._settings["pre_generate"] and self._perturbations is None:
            self._perturbations = self._pre_generate()

    # ------------------------------------------------------------------ #
    # sampling
    # ------------------------------------------------------------------ #
    def _sample(
        self,
        closure: Callable[[], Any],
        flat: list[tuple[int, dict[str, Any], Tensor]],
        device: torch.device,
        strategies: dict[int, str],
        need_norms: bool,
    ) -> _Sample:
        """Evaluate ``closure`` at the parameters' current values, from cleared gradients."""
        params = [p for _, _, p in flat]
        for p in params:
            p.grad = None
        with torch.enable_grad():
            loss = closure()
        if loss is None:
            raise SettingTypeError(
                "GradientSampling: the closure must return the loss", setting="closure", value=closure
            )
        if not isinstance(loss, Tensor):
            loss = torch.tensor(loss, dtype=torch.float64)
        loss = loss.detach()
        if loss.numel() != 1:
            raise SettingError(
                "GradientSampling: the closure must return a scalar loss; "
                f"got shape {tuple(loss.shape)}",
                setting="closure",
                value=closure,
            )
        dtype = torch.promote_types(loss.dtype, torch.float32)
        loss = loss.reshape(()).to(device=device, dtype=dtype)
        seen = [p.grad is not None for p in params]
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        finite = loss.isfinite()
        for g, has_grad in zip(grads, seen):
            if has_grad:
                finite = finite & g.isfinite().all().to(device)
        norms = [F.row_norms(g.reshape(1, -1), 2) for g in grads] if need_norms else []
        metrics = {}
        for i, strategy in strategies.items():
            if strategy == "value":
                metrics[i] = loss
            else:
                metrics[i] = _total_norm([v for v, (j, _, _) in zip(norms, flat) if j == i], device)
        norm = _total_norm(norms, device) if need_norms else None
        return _Sample(loss, grads, seen, finite, norm, metrics)

    def _evaluate(self, closure: Callable[[], Any]) -> _Evaluation:
        """Sample the closure around the current point, restore it, and aggregate."""
        flat = self._flat()
        params = [p for _, _, p in flat]
        device = params[0].device
        settings = self._settings
        strategies = {
            i: g["sigma_strategy"] for i, g in enumerate(self.param_groups) if g["sigma_strategy"]
        }
        need_norms = settings["aggregate"] == "min-norm" or "grad-norm" in strategies.values()
        sample = functools.partial(self._sample, closure, flat, device, strategies, need_norms)
        aggregate = _Aggregate(settings["aggregate"], params, device)
        beats = {i: torch.zeros((), dtype=torch.int64, device=device) for i in strategies}
        finite_samples = torch.zeros((), dtype=torch.int64, device=device)

        origin = [p.detach().clone() for p in params]
        try:
            if settings["include_x0"] or strategies:
                reference = sample()
                if settings["include_x0"]:
                    aggregate.add(reference)
            for perturbation in self._perturbation_stream():
                with torch.no_grad():
                    for (_, g, p), x, u in zip(flat, origin, perturbation):
                        p.copy_(x)
                        if g["sigma"] != 0:
                            p.add_(u, alpha=g["sigma"])
                current = sample()
                aggregate.add(current)
                finite_samples += current.finite
                for i in strategies:
                    beats[i] += current.finite & (current.metrics[i] < reference.metrics[i])
        finally:
            with torch.no_grad():
                for p, x in zip(params, origin):
                    p.copy_(x)
        loss, grads = aggregate.result()
        grow = {
            i: beats[i] >= (finite_samples * self.param_groups[i]["sigma_target"]).clamp(min=1)
            for i in strategies
        }
        return _Evaluation(loss, grads, aggregate.count > 0, grow, [p._version for p in params])

    def _install(self, evaluation: _Evaluation, screen: Any) -> None:
        """Make the aggregated gradients the parameters' ``.grad``; screen their non-finite rows."""
        for (_, _, p), g in zip(self._flat(), evaluation.grads):
            p.grad = None if g is None else g.to(p.dtype)
        screen.screen_()  # before any transform: zero (and remember) rows with NaN / Inf
        if not isinstance(self._inner_opt, ParamTransformingOptimizer):
            self._scale_and_bias_grads()

    # ------------------------------------------------------------------ #
    # step
    # ------------------------------------------------------------------ #
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Sample, aggregate, step the inner optimizer; adapt ``sigma``.

        Parameters
        ----------
        closure : callable
            Re-evaluates the model (zeroing gradients is optional: they are
            cleared before every call), calls ``backward()`` and returns the
            loss. Required.

        Returns
        -------
        Tensor
            The aggregated loss at the current point (0-d; NaN if no sample
            was finite).
        """
        if closure is None or not callable(closure):
            raise SettingTypeError(
                "GradientSampling.step needs a closure that re-evaluates the model, calls "
                "backward() and returns the loss",
                setting="closure",
                value=closure,
            )
        self._ensure_perturbations()
        screen = self._screen()
        screen.snapshot_()
        first = self._evaluate(closure)
        flags = torch.stack([first.any_finite, *first.grow.values()]).tolist()
        grow = dict(zip(first.grow, flags[1:]))
        terminate = False
        if flags[0]:
            if self._settings["termination"] is not None:
                terminate = bool(self._settings["termination"](first.loss, first.grads))
            pending = [first]

            def sampled_closure() -> Tensor:
                params = [p for _, _, p in self._flat()]
                unchanged = pending and [p._version for p in params] == pending[0].versions
                evaluation = pending.pop() if unchanged else self._evaluate(closure)
                pending.clear()
                self._install(evaluation, screen)
                return evaluation.loss

            with suspended(self._inner_opt):
                loss = self._inner_opt.step(sampled_closure)
            screen.finish_()
        else:  # no finite sample: every row with a gradient is skipped, nothing moves
            for (_, group, p), g in zip(self._flat(), first.grads):
                if g is not None:
                    screen.count_(p, rows_shape(p.shape, group["param_ndim"])[0])
                p.grad = None
            loss = first.loss
        self._end_step(grow, terminate)
        return loss

    def _end_step(self, grow: dict[int, bool], terminate: bool) -> None:
        for i, grew in grow.items():
            group = self.param_groups[i]
            group["sigma"] *= group["sigma_nplus"] if grew else group["sigma_nminus"]
        if terminate:
            for group in self.param_groups:
                group["sigma"] *= group["decay"]
            if self._settings["reset_on_termination"]:
                self.state.clear()
        if terminate or not self._settings["fixed"]:
            self._perturbation_seed = None
            self._perturbations = None

    # ------------------------------------------------------------------ #
    # state
    # ------------------------------------------------------------------ #
    def state_dict(self) -> dict[str, Any]:
        """The inner optimizer's state dict plus this optimizer's own state.

        ``state["gradient_sampling"]`` holds ``generator`` (RNG state),
        ``perturbation_seed`` and ``perturbations`` (the pre-generated ones,
        or None); ``sigma`` is in the param groups.
        """
        if isinstance(self._inner_opt, ParamTransformingOptimizer):
            state = self._inner_opt.state_dict()
        else:
            state = super().state_dict()
        state[_SAMPLING_STATE] = {
            "generator": self._generator.get_state(),
            "perturbation_seed": self._perturbation_seed,
            "perturbations": None if self._perturbations is None else list(self._perturbations),
        }
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict from :meth:`state_dict`, sampling state included."""
        state = dict(state_dict)
        own = state.pop(_SAMPLING_STATE, None)
        if isinstance(self._inner_opt, ParamTransformingOptimizer):
            self._inner_opt.load_state_dict(state)
            self.param_groups = self._inner_opt.param_groups
            self.state = self._inner_opt.state
        else:
            super().load_state_dict(state)
        if own is None:
            return
        perturbations = own["perturbations"]
        if perturbations is not None:
            params = [p for _, _, p in self._flat()]
            shapes = [(self._settings["n"], *p.shape) for p in params]
            if len(perturbations) != len(params) or any(
                tuple(t.shape) != s for t, s in zip(perturbations, shapes)
            ):
                raise SettingError(
                    "loaded state dict has perturbations of shapes "
                    f"{[tuple(t.shape) for t in perturbations]}; this optimizer needs {shapes}",
                    setting="state_dict",
                )
            perturbations = [
                t.to(device=p.device, dtype=p.dtype) for t, p in zip(perturbations, params)
            ]
        self._generator.set_state(own["generator"])
        self._perturbation_seed = own["perturbation_seed"]
        self._perturbations = perturbations

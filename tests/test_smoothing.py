"""Tests of :mod:`rai_probe.optim.laplacian_smoothing` and :mod:`rai_probe.optim.gradient_sampling`
(REFERENCE.md section 4), also through their old address :mod:`rai_probe.optim.smoothing`.

Laplacian smoothing: the reference vectors, a dense linear solve of
``(I - σL) u = g``, sum preservation, rings of one and two points, half
precision, the optimizer's ``layerwise`` / ``min_numel`` / ``param_ndim``
semantics and its use in a chain. Gradient sampling: hand-computed
aggregates of the closure's samples, exact restoration of the parameters,
perturbations reused across closure calls (LBFGS) and steps, sigma
adaptation and termination, non-finite samples, reproducibility and
``state_dict`` round-trips, and validation.
"""

from __future__ import annotations

import contextlib
import io
import math
import threading
from functools import partial

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from conftest import FLOAT_DTYPES
from rai_probe.optim import (
    ChainedParamTransformingOptimizer,
    GradientSampling,
    L1qNormedGradientOptim,
    LaplacianSmoothing,
    ParamTransformingOptimizer,
)
from rai_probe.optim import functional as F
from rai_probe.optim import gradient_sampling, laplacian_smoothing, smoothing
from rai_probe.optim.laplacian_smoothing import laplacian_eigenvalues, laplacian_smooth, laplacian_smooth_
from rai_probe.optim.options import positive

# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
LS_VECTORS = [  # (sigma, g, u) from REFERENCE.md section 4
    (1.0, [1.0, 0.0, 0.0, 0.0], [7 / 15, 1 / 5, 2 / 15, 1 / 5]),
    (1.0, [1.0, 2.0, 3.0, 4.0], [31 / 15, 34 / 15, 41 / 15, 44 / 15]),
    (1.0, [1.0, 0.0, 0.0], [0.5, 0.25, 0.25]),
    (0.5, [1.0, 0.0, 0.0, 0.0, 0.0], [11 / 19, 3 / 19, 1 / 19, 1 / 19, 3 / 19]),
]


def dense_solve(g: torch.Tensor, sigma: float) -> torch.Tensor:
    """Rows of ``(I - σL)⁻¹ g`` by a dense float64 solve; ``L`` built from the periodic stencil."""
    n = g.shape[1]
    eye = torch.eye(n, dtype=torch.float64)
    laplacian = -2 * eye + eye.roll(1, dims=1) + eye.roll(-1, dims=1)
    return torch.linalg.solve(eye - sigma * laplacian, g.to(torch.float64).T).T


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of a float tensor, to compare with ``torch.equal`` (NaN-safe, -0 != +0)."""
    view = {torch.float64: torch.int64, torch.float32: torch.int32}.get(t.dtype, torch.int16)
    return t.detach().contiguous().view(view)


def recording_closure(params, optim, record, fn=None):
    """A closure that records each evaluation point, loss and gradient.

    The default objective is ``sum(sin(3x) + x²/2)`` over all params.
    """
    fn = fn or (lambda p: (torch.sin(3 * p) + 0.5 * p * p).sum())

    def closure():
        optim.zero_grad()
        loss = sum(fn(p) for p in params)
        loss.backward()
        points = [p.detach().clone() for p in params]
        record.append((points, loss.detach().clone(), [p.grad.clone() for p in params]))
        return loss

    return closure


def smoothing_chain(x):
    """A chain of one LaplacianSmoothing (sigma=2) over SGD (lr=0.1)."""
    return ChainedParamTransformingOptimizer(partial(LaplacianSmoothing, sigma=2.0), params=[x], lr=0.1)


def hand_aggregate(rule: str, losses: list, grads: list):
    """Aggregate by hand, in float64, the finite samples (lists of loss and of one gradient)."""
    keep = [
        i for i, (l, g) in enumerate(zip(losses, grads)) if math.isfinite(l) and g.isfinite().all()
    ]
    L = torch.tensor([float(losses[i]) for i in keep], dtype=torch.float64)
    G = torch.stack([grads[i].to(torch.float64) for i in keep])
    if rule == "mean":
        return L.mean(), G.mean(0)
    if rule in ("max", "min"):
        magnitude = G.abs()
        index = (magnitude.argmax(0) if rule == "max" else magnitude.argmin(0)).unsqueeze(0)
        return (L.max() if rule == "max" else L.min()), G.gather(0, index)[0]
    chosen = G.flatten(1).norm(dim=1).argmin()
    return L[chosen], G[chosen]


# --------------------------------------------------------------------------- #
# laplacian_smooth: the functional core
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("sigma, g, expected", LS_VECTORS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reference_vectors(sigma, g, expected, dtype, device):
    out = laplacian_smooth(torch.tensor([g], dtype=dtype, device=device), sigma)
    torch.testing.assert_close(out, torch.tensor([expected], dtype=dtype, device=device))


def test_rows_are_flattened_row_major():
    """A (2, 2) row is one ring of 4: [[1, 0], [0, 0]] is the ring [1, 0, 0, 0]."""
    g = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[1.0, 2.0], [3.0, 4.0]]], dtype=torch.float64)
    expected = torch.tensor([LS_VECTORS[0][2], LS_VECTORS[1][2]], dtype=torch.float64).view(2, 2, 2)
    torch.testing.assert_close(laplacian_smooth(g, 1.0), expected)


@given(
    n=st.integers(3, 48),
    rows=st.integers(1, 3),
    sigma=st.floats(0.0, 20.0),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**31),
)
def test_matches_dense_linear_solve(n, rows, sigma, dtype, seed):
    g = torch.randn(rows, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    expected = dense_solve(g, sigma)
    out = laplacian_smooth(g.to(dtype), sigma)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(out.to(torch.float64), expected, rtol=0, atol=tol * g.abs().max())
    # the inverse is an averaging kernel: no entry grows beyond the row's largest
    assert (out.abs().amax(1) <= g.to(dtype).abs().amax(1) * (1 + 10 * tol)).all()


@given(
    shape=st.sampled_from([(1, 7), (3, 16), (2, 3, 5), (4, 1, 9)]),
    sigma=st.floats(0.0, 100.0),
    seed=st.integers(0, 2**31),
)
def test_sum_is_preserved(shape, sigma, seed):
    g = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    out = laplacian_smooth(g, sigma)
    torch.testing.assert_close(out.flatten(1).sum(1), g.flatten(1).sum(1), rtol=0, atol=1e-12)


def test_ring_of_one_is_the_identity(device):
    g = torch.tensor([[2.5], [-1.0]], device=device)
    assert torch.equal(laplacian_smooth(g, 3.0), g)
    assert torch.equal(laplacian_smooth(torch.tensor([[-4.0]]), 1e6), torch.tensor([[-4.0]]))


@pytest.mark.parametrize("sigma", [0.25, 1.0, 7.0])
def test_ring_of_two_is_analytic(sigma, device):
    """n = 2: the mean passes, the difference is divided by λ_1 = 1 + 4σ."""
    g = torch.tensor([[3.0, -1.0], [0.0, 2.0]], dtype=torch.float64, device=device)
    mean, half_diff = g.mean(1, keepdim=True), (g[:, :1] - g[:, 1:]) / 2
    expected = torch.cat([mean + half_diff / (1 + 4 * sigma), mean - half_diff / (1 + 4 * sigma)], 1)
    torch.testing.assert_close(laplacian_smooth(g, sigma), expected)
    torch.testing.assert_close(laplacian_smooth(g.cpu(), sigma), dense_solve(g.cpu(), sigma))


def test_eigenvalues():
    torch.testing.assert_close(
        laplacian_eigenvalues(5, 0.5), 1 + 2 * torch.sin(torch.arange(3) * math.pi / 5).double() ** 2
    )
    assert laplacian_eigenvalues(1, 2.0).tolist() == [1.0]
    assert laplacian_eigenvalues(2, 2.0).tolist() == [1.0, 9.0]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_solved_in_float32(dtype, device):
    g = torch.randn(3, 50, generator=torch.Generator().manual_seed(0)).to(device=device, dtype=dtype)
    expected = laplacian_smooth(g.float(), 2.0).to(dtype)
    out = laplacian_smooth_(g, 2.0)
    assert out is g and out.dtype == dtype
    assert torch.equal(out, expected)


def test_in_place_on_non_contiguous_and_sigma_zero():
    base = torch.randn(6, 5, generator=torch.Generator().manual_seed(1))
    x = base.t()  # (5, 6), not contiguous
    expected = laplacian_smooth(x.contiguous(), 0.7)
    assert laplacian_smooth_(x, 0.7) is x
    torch.testing.assert_close(x, expected)
    before = base.clone()
    assert torch.equal(laplacian_smooth_(base, 0.0), before)
    assert laplacian_smooth(torch.zeros(0, 4), 1.0).shape == (0, 4)


@pytest.mark.parametrize("sigma", [-1.0, math.nan, math.inf, "1", None, True])
def test_laplacian_smooth_rejects_bad_sigma(sigma):
    with pytest.raises(ValueError, match="sigma"):
        laplacian_smooth(torch.ones(1, 4), sigma)


def test_laplacian_smooth_rejects_bad_tensors():
    with pytest.raises(TypeError, match="floating-point"):
        laplacian_smooth(torch.ones(1, 4, dtype=torch.int64), 1.0)
    with pytest.raises(ValueError, match="row dimension"):
        laplacian_smooth(torch.tensor(1.0), 1.0)


# --------------------------------------------------------------------------- #
# laplacian_smooth: the two exact solvers (FFT and direct convolution)
# --------------------------------------------------------------------------- #
@contextlib.contextmanager
def solver(path):
    """Force the smoothing solver (``"fft"`` or ``"direct"``) within the block."""
    saved = laplacian_smoothing._FORCE_PATH
    laplacian_smoothing._FORCE_PATH = path
    try:
        yield
    finally:
        laplacian_smoothing._FORCE_PATH = saved


def smooth_with(path, g, sigma):
    with solver(path):
        return laplacian_smooth(g, sigma)


def line_green(sigma):
    """``(r, C)`` of the Green's function ``C·r^|j|`` of ``I - σL`` on the infinite line."""
    log_r, log_c = laplacian_smoothing._green_decay(sigma)
    return math.exp(log_r), math.exp(log_c)


@pytest.mark.parametrize("sigma", [1e-3, 0.5, 1.0, 10.0, 100.0, 1e4])
def test_green_function_roots(sigma):
    """r is the root in (0, 1) of σr² - (1 + 2σ)r + σ = 0 and C = 1/((1 + 2σ) - 2σr)."""
    r, c = line_green(sigma)
    assert 0 < r < 1
    assert abs(sigma * r * r - (1 + 2 * sigma) * r + sigma) <= 1e-14 * (1 + 2 * sigma)
    assert c == pytest.approx(1 / ((1 + 2 * sigma) - 2 * sigma * r), rel=1e-12)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64])
@pytest.mark.parametrize("sigma", [1e-3, 0.5, 1.0, 10.0, 100.0])
def test_green_function_of_the_ring_is_the_dense_inverse(n, sigma):
    """(I - σL)⁻¹ on a ring of n is circulant with G_k = C (r^k + r^(n-k)) / (1 - r^n)."""
    r, c = line_green(sigma)
    k = torch.arange(n, dtype=torch.float64)
    green = c * (r**k + r ** (n - k)) / (1 - r**n)
    inverse = dense_solve(torch.eye(n, dtype=torch.float64), sigma)  # rows: columns of the inverse
    i = torch.arange(n)
    circulant = green[(i.view(-1, 1) - i.view(1, -1)) % n]
    torch.testing.assert_close(inverse, circulant, rtol=0, atol=1e-13 * (1 + 4 * sigma))
    # ... which is the line's Green's function C·r^|j| summed over j ≡ k (mod n): the direct path
    # convolves the periodic extension of each ring with the line's kernel
    j = torch.arange(-400 * n - 3000, 400 * n + 3001, dtype=torch.float64)
    periodized = torch.zeros(n, dtype=torch.float64).index_add_(
        0, (j.long() % n), c * r ** j.abs()
    )
    torch.testing.assert_close(periodized, green, rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sigma", [1e-30, 0.5, 1.0, 100.0, 1e4])
def test_direct_weights(sigma, dtype):
    G, a, b, rho, J = laplacian_smoothing._direct_weights(sigma, dtype, torch.device("cpu"))
    B = len(a)
    r, c = line_green(sigma)
    i = torch.arange(B, dtype=torch.float64)
    assert G.dtype == a.dtype == b.dtype == dtype and G.shape == (B, B)
    close = partial(torch.testing.assert_close, rtol=1e-6, atol=torch.finfo(dtype).tiny)  # underflow
    close(G.double(), c * r ** (i.view(-1, 1) - i).abs())
    close(a.double(), r ** (i + 1))
    close(b.double(), r ** (B - i))
    assert rho == pytest.approx(r**B, rel=1e-12)
    assert J * B >= laplacian_smoothing._truncation_radius(sigma, dtype) and J >= 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sigma", [1e-30, 1e-3, 0.5, 1.0, 10.0, 100.0, 1e4])
def test_truncation_radius_is_the_smallest_below_the_tolerance(sigma, dtype):
    """The dropped tail 2C r^(K+1)/(1 - r) is below eps/128 at K, and not at K - 1."""
    r, c = line_green(sigma)
    K = laplacian_smoothing._truncation_radius(sigma, dtype)
    tol = torch.finfo(dtype).eps / 128

    def tail(k):
        return 2 * c * r ** (k + 1) / (1 - r)

    assert tail(K) <= tol * (1 + 1e-9)
    assert K == 0 or tail(K - 1) > tol * (1 - 1e-9)


def test_truncation_radius_grows_like_sqrt_sigma():
    radii = [laplacian_smoothing._truncation_radius(s, torch.float32) for s in [0.0, 1e-300, 1.0, 100.0, 1e4]]
    assert radii[:2] == [0, 0]
    assert radii == sorted(radii)
    assert 9 < radii[4] / radii[3] < 11.5  # log r ~ -1/sqrt(sigma) for large sigma: K ~ sqrt(sigma)


@given(
    n=st.integers(2, 300),
    rows=st.integers(1, 3),
    sigma=st.one_of(st.floats(0.0, 300.0), st.sampled_from([1e-12, 0.5, 1.0, 10.0])),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**31),
)
def test_direct_and_fft_paths_match_dense_solve(n, rows, sigma, dtype, seed):
    """Both solvers are exact to rounding, each within its own error bound of the dense solution.

    The direct path's error is a few eps of max|g|. The FFT's roundoff grows
    like ``log2(n)`` times the row's L2 norm (not its max), and its exact
    bits depend on the FFT library's code path for this CPU (vector width,
    radix order): the bound below holds for any of them.
    """
    g = torch.randn(rows, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    g = g.to(dtype)
    scale = float(g.abs().max())
    eps = torch.finfo(dtype).eps
    exact = dense_solve(g, sigma)  # of the rounded input; the solve's own error is ~(1 + 4σ) eps64
    tol = (8 * eps + 4 * (1 + 4 * sigma) * torch.finfo(torch.float64).eps) * scale
    fft_roundoff = 4 * eps * math.ceil(math.log2(n)) * float(g.double().norm(dim=1).max())
    direct, fft = smooth_with("direct", g, sigma), smooth_with("fft", g, sigma)
    assert direct.dtype == fft.dtype == dtype
    torch.testing.assert_close(direct.double(), exact, rtol=0, atol=tol)
    torch.testing.assert_close(fft.double(), exact, rtol=0, atol=tol + fft_roundoff)
    torch.testing.assert_close(direct.double(), fft.double(), rtol=0, atol=8 * eps * scale + fft_roundoff)


@pytest.mark.parametrize("n", [4096, 20_011, 2**15 + 5])  # whole blocks, a prime, a partial block
@pytest.mark.parametrize("sigma", [0.5, 10.0, 200.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_direct_path_on_long_rings_equals_fft(n, sigma, dtype):
    """Each path against a float64 reference computed by the *other* path (an independent check).

    The direct path is held to a few eps of max|g|; the FFT's roundoff grows like log2(n)
    times the row's L2 norm and depends on the FFT library's code path for the CPU, so it
    gets the bound of ``test_direct_and_fft_paths_match_dense_solve`` on top.
    """
    g = torch.randn(2, n, generator=torch.Generator().manual_seed(n), dtype=dtype)
    scale, eps = float(g.abs().max()), torch.finfo(dtype).eps
    fft_roundoff = 4 * eps * math.ceil(math.log2(n)) * float(g.double().norm(dim=1).max())
    references = {"direct": smooth_with("fft", g.double(), sigma), "fft": smooth_with("direct", g.double(), sigma)}
    tolerances = {"direct": 8 * eps * scale, "fft": 8 * eps * scale + fft_roundoff}
    for path in ["direct", "fft"]:
        for rows in [g, g[:1]]:  # batched, and a single ring (written in place)
            out = smooth_with(path, rows, sigma)
            torch.testing.assert_close(
                out.double(), references[path][: len(rows)], rtol=0, atol=tolerances[path]
            )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n", [1, 2, 5, 300, 1000])
def test_direct_path_half_precision_is_solved_in_float32(dtype, n, device):
    g = torch.randn(3, n, generator=torch.Generator().manual_seed(7)).to(device=device, dtype=dtype)
    with solver("direct"):
        expected = laplacian_smooth(g.float(), 2.0).to(dtype)
        out = laplacian_smooth_(g.clone(), 2.0)
    assert out.dtype == dtype
    assert torch.equal(out, expected)
    fft = smooth_with("fft", g, 2.0)  # within one rounding of the half type
    torch.testing.assert_close(out.float(), fft.float(), rtol=0, atol=torch.finfo(dtype).eps * 4)


@pytest.mark.parametrize("path", ["fft", "direct"])
def test_paths_on_rings_of_one_and_two(path, device):
    with solver(path):
        g = torch.tensor([[2.5], [-1.0]], device=device)
        assert torch.equal(laplacian_smooth(g, 3.0), g)
        g = torch.tensor([[3.0, -1.0], [0.0, 2.0]], dtype=torch.float64)
        out = laplacian_smooth(g.to(device), 0.75).cpu()
        torch.testing.assert_close(out, dense_solve(g, 0.75))


def test_direct_path_non_contiguous_and_sigma_changes():
    base = torch.randn(500, 3, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    x = base.t()  # (3, 500), not contiguous
    with solver("direct"):
        expected = laplacian_smooth(x.contiguous(), 0.7)
        assert laplacian_smooth_(x, 0.7) is x
        torch.testing.assert_close(x, expected, rtol=0, atol=1e-15)
        g = base[:, 0].reshape(1, -1).contiguous()
        for sigma in [1.0, 30.0, 0.0, 1.0, 0.01]:  # the cached block weights are keyed by sigma
            torch.testing.assert_close(
                laplacian_smooth(g, sigma), dense_solve(g, sigma), rtol=0, atol=1e-13
            )


def test_direct_path_scratch_buffers_are_per_thread():
    """Threads smoothing at once do not share the direct path's scratch buffers."""
    rings = [torch.randn(1, 5000 + 7 * k, generator=torch.Generator().manual_seed(k)) for k in range(4)]
    expected = [smooth_with("fft", g.double(), 1.0) for g in rings]
    errors = []

    def work(k):
        for _ in range(20):
            out = laplacian_smooth(rings[k], 1.0)  # single float32 rings, written in place
            if not torch.allclose(out.double(), expected[k], rtol=0, atol=1e-6):
                errors.append(k)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    with solver("direct"):
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors


@pytest.mark.parametrize("path", ["fft", "direct"])
@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_non_finite_entry_makes_its_whole_row_non_finite(path, bad):
    g = torch.randn(3, 640, generator=torch.Generator().manual_seed(9))
    g[1, 17] = bad
    with solver(path):
        out = laplacian_smooth(g, 1.0)
    assert out[1].isnan().all()
    torch.testing.assert_close(out[[0, 2]], smooth_with("fft", g[[0, 2]], 1.0))


def test_path_selection():
    cpu, f32, f64 = torch.device("cpu"), torch.float32, torch.float64
    choose = laplacian_smoothing._choose_path
    for n in [10**4, 10**6, 10**7, 1_000_003]:
        for sigma in [0.5, 1.0, 10.0]:
            assert choose(1, n, sigma, f32, cpu) == "direct"
    assert choose(128, 3072, 1.0, f32, cpu) == "direct"
    assert choose(1, 10**6, 1e3, f64, cpu) == "direct"
    # the FFT: wide kernels (2J carry updates, J ~ sqrt(sigma)), short rings, other devices
    assert choose(1, 10**6, 1e7, f32, cpu) == "fft"  # K ~ 66000
    assert choose(1, 10**4, 1e3, f32, cpu) == "fft"
    assert choose(128, 3072, 1e4, f32, cpu) == "fft"  # a batch of short rings: the FFT is fast
    assert choose(1, 16, 1.0, f32, cpu) == "fft"  # short ring
    assert choose(1, 10**6, 1.0, f32, torch.device("cuda")) == "fft"  # calibrated on CPU only
    # monotone in sigma; a length with a large prime factor keeps the direct path longer
    sigmas = [10.0**e for e in range(-3, 10)]
    for n, dtype in [(2**20, f32), (2**20, f64), (10**4, f32)]:
        paths = [choose(1, n, s, dtype, cpu) for s in sigmas]
        assert paths == sorted(paths, key=lambda p: p == "fft")
        assert paths[0] == "direct" and paths[-1] == "fft"
    power = [choose(1, 2**20, s, f32, cpu) for s in sigmas]
    prime = [choose(1, 1_000_003, s, f32, cpu) for s in sigmas]
    assert prime.count("direct") > power.count("direct")


def test_path_selection_respects_reduced_precision_products(monkeypatch):
    cpu = torch.device("cpu")
    assert laplacian_smoothing._float32_products_are_exact()  # the default settings
    monkeypatch.setattr(laplacian_smoothing, "_float32_products_are_exact", lambda: False)
    assert laplacian_smoothing._choose_path(1, 10**6, 1.0, torch.float32, cpu) == "fft"
    assert laplacian_smoothing._choose_path(1, 10**6, 1.0, torch.float64, cpu) == "direct"


def test_automatic_path_is_used(monkeypatch):
    g = torch.randn(1, 50_000, generator=torch.Generator().manual_seed(10))
    reference = smooth_with("fft", g.double(), 1.0)

    def refuse(*args):
        raise AssertionError("wrong path")

    with monkeypatch.context() as patch:  # a long ring, sigma = 1: direct
        patch.setattr(laplacian_smoothing, "_smooth_rows_fft_", refuse)
        out = laplacian_smooth(g, 1.0)
        torch.testing.assert_close(out.double(), reference, rtol=0, atol=1e-6)
        assert torch.equal(laplacian_smooth(g, 0.0), g)  # sigma = 0: the identity, no solve
        x = torch.zeros(50_000, requires_grad=True)  # the optimizer, one ring per tensor
        optim = LaplacianSmoothing([x], sigma=1.0, lr=1.0, param_ndim=None)
        x.grad = g[0].clone()
        optim.step()
        torch.testing.assert_close(x.grad.double(), reference[0], rtol=0, atol=1e-6)
    with monkeypatch.context() as patch:  # a short ring, or a wide kernel: FFT
        patch.setattr(laplacian_smoothing, "_smooth_rows_direct_", refuse)
        laplacian_smooth(g[:, :40], 1.0)
        laplacian_smooth(g, 1e7)


# --------------------------------------------------------------------------- #
# LaplacianSmoothing: the optimizer
# --------------------------------------------------------------------------- #
def test_ls_sgd_step(device):
    """LS-SGD: p <- p - lr * (I - σL)⁻¹ g, one ring per tensor with param_ndim=None."""
    x0 = torch.randn(3, 4, device=device)
    g = torch.randn(3, 4, device=device)
    x = x0.clone().requires_grad_()
    optim = LaplacianSmoothing([x], InnerOpt=torch.optim.SGD, sigma=1.0, lr=0.5, param_ndim=None)
    x.grad = g.clone()
    optim.step()
    smoothed = laplacian_smooth(g.reshape(1, -1), 1.0).reshape(3, 4)
    torch.testing.assert_close(x.grad, smoothed)
    torch.testing.assert_close(x.detach(), x0 - 0.5 * smoothed)


@pytest.mark.parametrize("param_ndim", [None, -1, 1, 0])
def test_param_ndim_chooses_the_rings(param_ndim):
    g = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(2))
    x = torch.zeros(2, 3, 4, requires_grad=True)
    optim = LaplacianSmoothing([x], sigma=2.0, min_numel=0, param_ndim=param_ndim, lr=0.0)
    x.grad = g.clone()
    optim.step()
    ring = {None: 24, -1: 12, 1: 4, 0: 1}[param_ndim]
    torch.testing.assert_close(x.grad, laplacian_smooth(g.reshape(-1, ring), 2.0).reshape(g.shape))


def test_layerwise_false_smooths_the_concatenated_group():
    a = torch.zeros(2, 3, requires_grad=True)
    b = torch.zeros(4, requires_grad=True)
    unused = torch.zeros(5, requires_grad=True)
    c = torch.zeros(3, requires_grad=True)  # in another group: its own ring
    ga, gb, gc = torch.randn(2, 3), torch.randn(4), torch.randn(3)
    optim = LaplacianSmoothing(
        [{"params": [a, unused, b]}, {"params": [c], "layerwise": True, "param_ndim": None}],
        sigma=1.5,
        layerwise=False,
        min_numel=10,  # the ring of a and b has exactly 10 elements: smoothed
        lr=0.0,
    )
    a.grad, b.grad, c.grad = ga.clone(), gb.clone(), torch.tensor([1.0, 2.0, 3.0])
    optim.step()
    ring = laplacian_smooth(torch.cat([ga.flatten(), gb]).reshape(1, -1), 1.5)[0]
    torch.testing.assert_close(torch.cat([a.grad.flatten(), b.grad]), ring)
    assert unused.grad is None
    assert torch.equal(c.grad, torch.tensor([1.0, 2.0, 3.0]))  # 3 < min_numel=10: unchanged
    optim.param_groups[0]["min_numel"] = 11  # now the ring of 10 is below the bound
    a.grad, b.grad = ga.clone(), gb.clone()
    optim.step()
    assert torch.equal(a.grad, ga) and torch.equal(b.grad, gb)


@pytest.mark.parametrize("min_numel, smoothed", [(3, True), (4, True), (5, False)])
def test_min_numel_is_an_inclusive_bound(min_numel, smoothed):
    g = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    x = torch.zeros(1, 4, requires_grad=True)
    optim = LaplacianSmoothing([x], min_numel=min_numel, lr=0.0)
    x.grad = g.clone()
    optim.step()
    expected = laplacian_smooth(g, 1.0) if smoothed else g
    assert torch.equal(x.grad, expected)


def test_sigma_change_between_steps_is_honoured():
    g = torch.randn(1, 16, generator=torch.Generator().manual_seed(3))
    x = torch.zeros(1, 16, requires_grad=True)
    optim = LaplacianSmoothing([x], sigma=1.0, lr=0.0)
    for sigma in [1.0, 5.0, 0.0, 0.3]:
        optim.param_groups[0]["sigma"] = sigma
        x.grad = g.clone()
        optim.step()
        torch.testing.assert_close(x.grad, laplacian_smooth(g, sigma))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_ls_optimizer_dtypes(dtype, device):
    g = torch.randn(2, 40, generator=torch.Generator().manual_seed(4)).to(device=device, dtype=dtype)
    x = torch.zeros(2, 40, device=device, dtype=dtype, requires_grad=True)
    optim = LaplacianSmoothing([x], sigma=3.0, lr=1.0)
    x.grad = g.clone()
    optim.step()
    assert x.grad.dtype == dtype
    assert torch.equal(x.grad, laplacian_smooth(g, 3.0))
    assert torch.equal(x.detach(), -x.grad)


def test_ls_before_l1q_in_a_chain():
    g = torch.randn(2, 10, generator=torch.Generator().manual_seed(5))
    x = torch.zeros(2, 10, requires_grad=True)
    optim = ChainedParamTransformingOptimizer(
        partial(LaplacianSmoothing, sigma=2.0),
        partial(L1qNormedGradientOptim, q=0.7),
        params=[x],
        lr=1.0,
    )
    x.grad = g.clone()
    optim.step()
    expected = F.l1q_normalize(laplacian_smooth(g, 2.0), q=0.7)
    torch.testing.assert_close(x.grad, expected)
    assert ((x.grad != 0).sum(1) == 3).all()
    torch.testing.assert_close(x.detach(), -expected)


def test_ls_state_dict_keeps_options():
    x = torch.zeros(1, 8, requires_grad=True)
    optim = LaplacianSmoothing([x], sigma=0.5, layerwise=False, min_numel=2, lr=0.1)
    optim.param_groups[0]["sigma"] = 4.0
    state = optim.state_dict()
    fresh = LaplacianSmoothing([x], lr=0.1)
    fresh.load_state_dict(state)
    group = fresh.param_groups[0]
    assert (group["sigma"], group["layerwise"], group["min_numel"]) == (4.0, False, 2)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(sigma=-0.1), ValueError, "option `sigma` must be a finite real number >= 0; got sigma=-0.1"),
        (dict(sigma=math.inf), ValueError, "option `sigma`"),
        (dict(min_numel=-1), ValueError, "option `min_numel` must be an integer >= 0; got min_numel=-1"),
        (dict(min_numel=2.5), ValueError, "option `min_numel`"),
        (dict(min_numel=True), ValueError, "option `min_numel`"),
        (dict(layerwise="yes"), ValueError, "option `layerwise` must be True or False"),
        (dict(param_ndim=3), ValueError, "option `param_ndim`"),
    ],
)
def test_ls_validation(kwargs, error, match):
    x = torch.zeros(2, 4, requires_grad=True)
    with pytest.raises(error, match=match):
        LaplacianSmoothing([x], lr=0.1, **kwargs)
    optim = LaplacianSmoothing([x], lr=0.1)
    with pytest.raises(error, match=match):
        optim.add_param_group({"params": [torch.zeros(2, 4, requires_grad=True)], **kwargs})


# --------------------------------------------------------------------------- #
# GradientSampling: aggregates
# --------------------------------------------------------------------------- #
def test_gs_requires_a_closure():
    x = torch.zeros(3, requires_grad=True)
    optim = GradientSampling([x], lr=0.1, n=2)
    with pytest.raises(TypeError, match="needs a closure"):
        optim.step()
    with pytest.raises(TypeError, match="needs a closure"):
        optim.step(42)
    with pytest.raises(TypeError, match="must return the loss"):
        optim.step(lambda: None)


@pytest.mark.parametrize("aggregate", ["mean", "max", "min", "min-norm"])
@pytest.mark.parametrize("include_x0", [True, False])
def test_gs_sigma_zero_is_the_plain_gradient(aggregate, include_x0):
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(6)).requires_grad_()
    plain_x = x.detach().clone().requires_grad_()
    plain_loss = (torch.sin(3 * plain_x) + 0.5 * plain_x**2).sum()
    plain_loss.backward()
    record: list = []
    optim = GradientSampling([x], sigma=0.0, n=5, aggregate=aggregate, include_x0=include_x0, lr=0.0)
    loss = optim.step(recording_closure([x], optim, record))
    assert len(record) == 5 + include_x0  # one evaluation, reused by SGD
    torch.testing.assert_close(x.grad, plain_x.grad)
    torch.testing.assert_close(loss, plain_loss.detach())


@given(
    aggregate=st.sampled_from(["mean", "max", "min", "min-norm"]),
    distribution=st.sampled_from(["gaussian", "uniform", "rademacher", "sphere"]),
    include_x0=st.booleans(),
    n=st.integers(1, 6),
    sigma=st.floats(0.01, 3.0),
    seed=st.integers(0, 2**40),
)
def test_gs_aggregate_equals_hand_computation(aggregate, distribution, include_x0, n, sigma, seed):
    x = torch.randn(2, 5, generator=torch.Generator().manual_seed(seed % 1000)).requires_grad_()
    x0 = x.detach().clone()
    record: list = []
    optim = GradientSampling(
        [x], sigma=sigma, n=n, aggregate=aggregate, distribution=distribution,
        include_x0=include_x0, seed=seed, lr=0.0,
    )
    loss = optim.step(recording_closure([x], optim, record))
    assert torch.equal(bits(x), bits(x0))  # parameters restored bit-exactly
    assert len(record) == n + include_x0
    points = torch.stack([r[0][0] for r in record])
    if include_x0:
        assert torch.equal(points[0], x0)
    u = (points[int(include_x0):] - x0) / sigma
    if distribution == "rademacher":
        torch.testing.assert_close(u.abs(), torch.ones_like(u), rtol=1e-5, atol=1e-5)
    elif distribution == "uniform":
        assert (u.abs() <= 1 + 1e-4).all()
    elif distribution == "sphere":  # param_ndim=-1: each of the 2 rows on the unit sphere
        torch.testing.assert_close(u.norm(dim=2), torch.ones(n, 2), rtol=1e-4, atol=1e-4)
    expected_loss, expected_grad = hand_aggregate(
        aggregate, [float(r[1]) for r in record], [r[2][0] for r in record]
    )
    torch.testing.assert_close(x.grad.double(), expected_grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss.double(), expected_loss, rtol=1e-5, atol=1e-6)


def scripted_closure(x, losses, grads):
    """A closure that ignores x and returns the next scripted (loss, gradient)."""
    calls = iter(range(len(losses)))

    def closure():
        i = next(calls)
        x.grad = torch.tensor(grads[i])
        return torch.tensor(losses[i])

    return closure


@pytest.mark.parametrize(
    "aggregate, loss, grad",
    [
        ("max", 3.0, [-3.0, -5.0, -1.0]),
        ("min", 1.0, [1.0, 1.0, 0.25]),
        ("min-norm", 2.0, [2.0, 1.0, -1.0]),
        ("mean", 2.0, [0.0, -2 / 3, -0.25 / 3]),
    ],
)
def test_gs_aggregates_keep_signs_and_skip_non_finite(aggregate, loss, grad):
    x = torch.zeros(3, requires_grad=True)
    losses = [1.0, math.nan, 3.0, -10.0, 2.0]
    grads = [
        [1.0, -5.0, 0.5],
        [100.0, 100.0, 100.0],  # NaN loss: skipped
        [-3.0, 2.0, 0.25],
        [0.0, math.inf, 0.0],  # non-finite gradient: skipped
        [2.0, 1.0, -1.0],
    ]
    optim = GradientSampling([x], n=4, aggregate=aggregate, include_x0=True, lr=0.0)
    returned = optim.step(scripted_closure(x, losses, grads))
    torch.testing.assert_close(x.grad, torch.tensor(grad))
    torch.testing.assert_close(returned, torch.tensor(loss))


def test_gs_all_non_finite_takes_no_step():
    x = torch.ones(3, requires_grad=True)
    optim = GradientSampling([x], InnerOpt=torch.optim.Adam, n=3, sigma_strategy="value", lr=0.1)
    sigma = optim.param_groups[0]["sigma"]

    def closure():
        optim.zero_grad()
        loss = (x * math.nan).sum()
        loss.backward()
        return loss

    loss = optim.step(closure)
    assert loss.isnan()
    assert torch.equal(x.detach(), torch.ones(3)) and x.grad is None
    assert len(optim.state) == 0  # Adam never stepped
    assert optim.param_groups[0]["sigma"] == pytest.approx(sigma * 2 / 3)  # no sample beat x0


def test_gs_per_group_sigma():
    x = torch.zeros(2, 3, requires_grad=True)
    y = torch.ones(4, requires_grad=True)
    record: list = []
    optim = GradientSampling(
        [{"params": [x], "sigma": 0.5}, {"params": [y], "sigma": 0.0, "distribution": "rademacher"}],
        n=4, lr=0.0, seed=1,
    )
    optim.step(recording_closure([x, y], optim, record))
    assert all(torch.equal(r[0][1], torch.ones(4)) for r in record)  # y never moved
    assert len({tuple(r[0][0].flatten().tolist()) for r in record}) == 5  # x moved 4 times


# --------------------------------------------------------------------------- #
# GradientSampling: restoration, closure calls, perturbation reuse
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_gs_restores_parameters_exactly(dtype):
    x0 = (torch.randn(4, 7, generator=torch.Generator().manual_seed(7)) * 1e3 + 0.1).to(dtype)
    x = x0.clone().requires_grad_()
    optim = GradientSampling([x], sigma=0.37, n=5, lr=0.0, distribution="uniform")
    optim.step(recording_closure([x], optim, [], fn=lambda p: (p.float() ** 2).sum()))
    assert torch.equal(bits(x), bits(x0)) and x.grad.dtype == dtype

    def failing():
        if not torch.equal(x.detach(), x0):  # fails at the first perturbed point
            raise RuntimeError("model crashed")
        return (x.float() ** 2).sum()

    with pytest.raises(RuntimeError, match="model crashed"):
        optim.step(failing)
    assert torch.equal(bits(x), bits(x0))


def evaluations(record, n):
    """Split a record into evaluations of 1 + n calls: (x0, perturbations / sigma)."""
    assert len(record) % (n + 1) == 0
    chunks = [record[i : i + n + 1] for i in range(0, len(record), n + 1)]
    return [(c[0][0][0], torch.stack([r[0][0] - c[0][0][0] for r in c[1:]])) for c in chunks]


@pytest.mark.parametrize("fixed", [True, False])
@pytest.mark.parametrize("pre_generate", [True, False])
def test_gs_perturbations_reused_across_lbfgs_calls_and_steps(fixed, pre_generate):
    n, sigma = 3, 0.1
    x = torch.tensor([1.5, -0.5, 2.0], requires_grad=True)
    optim = GradientSampling(
        [x], InnerOpt=torch.optim.LBFGS, sigma=sigma, n=n, fixed=fixed,
        pre_generate=pre_generate, seed=11, lr=0.5, max_iter=4,
    )
    steps = []
    for _ in range(2):
        record: list = []
        optim.step(recording_closure([x], optim, record))
        steps.append(evaluations(record, n))
    for evs in steps:
        assert len(evs) > 1  # LBFGS evaluated several points...
        x0s = torch.stack([x0 for x0, _ in evs])
        assert not torch.equal(x0s[0], x0s[1])  # ...each sampled around itself (fresh x0)
        for _, u in evs[1:]:  # ...with the same perturbations
            torch.testing.assert_close(u, evs[0][1], rtol=1e-5, atol=1e-6)
    same_across_steps = torch.allclose(steps[0][0][1], steps[1][0][1], rtol=1e-5, atol=1e-6)
    assert same_across_steps == fixed


@pytest.mark.parametrize("fixed", [True, False])
def test_gs_pre_generate_does_not_change_results(fixed):
    def run(pre_generate):
        x = torch.tensor([[0.5, -1.0, 2.0], [1.0, 1.0, -3.0]], requires_grad=True)
        y = torch.tensor(0.7, requires_grad=True)
        optim = GradientSampling(
            [{"params": [x], "distribution": "sphere"}, {"params": [y], "distribution": "rademacher"}],
            n=4, sigma=0.3, fixed=fixed, pre_generate=pre_generate, seed=5, lr=0.1,
        )
        closure = recording_closure([x, y], optim, [])
        for _ in range(4):
            optim.step(closure)
        return x.detach(), y.detach()

    a, b = run(True), run(False)
    assert all(torch.equal(u, v) for u, v in zip(a, b))


def test_gs_seeded_runs_are_reproducible():
    def run(seed, fixed=False):
        x = torch.tensor([0.3, -0.2, 1.1], requires_grad=True)
        optim = GradientSampling([x], n=3, sigma=0.5, seed=seed, fixed=fixed, lr=0.1)
        closure = recording_closure([x], optim, [])
        for _ in range(5):
            optim.step(closure)
        return x.detach()

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))
    torch.manual_seed(0)
    first = run(None)
    torch.manual_seed(0)
    assert torch.equal(first, run(None))


# --------------------------------------------------------------------------- #
# GradientSampling: sigma adaptation and termination
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "strategy, start, objective, grows",
    [
        ("value", 0.0, lambda p: (p * p).sum(), False),  # at the minimum nothing is lower
        ("value", 0.0, lambda p: p.sum(), True),  # on a slope half the samples are lower
        ("grad-norm", 0.0, lambda p: (p * p).sum(), False),  # zero gradient at x0
        ("grad-norm", 10.0, lambda p: (p * p).sum(), True),  # half the samples nearer 0
    ],
)
def test_gs_sigma_adapts_in_the_right_direction(strategy, start, objective, grows):
    x = torch.full((4,), start, requires_grad=True)
    optim = GradientSampling(
        [x], sigma=0.5, n=20, sigma_strategy=strategy, include_x0=False, seed=2, lr=0.0,
        sigma_nplus=2.0, sigma_nminus=0.25,
    )
    record: list = []
    closure = recording_closure([x], optim, record, fn=objective)
    optim.step(closure)
    assert len(record) == 21  # x0 is evaluated for the strategy, not aggregated
    assert optim.param_groups[0]["sigma"] == (1.0 if grows else 0.125)
    x.grad = None
    optim.step(closure)
    assert optim.param_groups[0]["sigma"] == (2.0 if grows else 0.125 / 4)


def test_gs_termination_decays_sigma_resets_state_and_redraws():
    x = torch.tensor([1.0, -1.0], requires_grad=True)
    calls: list = []

    def termination(loss, grads):
        calls.append((loss, grads))
        return len(calls) == 2

    n = 2
    optim = GradientSampling(
        [x], InnerOpt=torch.optim.SGD, sigma=0.4, n=n, decay=0.5, termination=termination,
        seed=0, lr=0.01, momentum=0.9,
    )
    record: list = []
    closure = recording_closure([x], optim, record)
    optim.step(closure)
    assert "momentum_buffer" in optim.state[x]
    assert calls[0][0].ndim == 0 and calls[0][1][0].shape == (2,)
    optim.step(closure)  # terminates: after it, sigma halves, SGD state is cleared
    assert optim.param_groups[0]["sigma"] == pytest.approx(0.2)
    assert len(optim.state) == 0
    optim.step(closure)
    u = [ev[1] / s for ev, s in zip(evaluations(record, n), [0.4, 0.4, 0.2])]
    torch.testing.assert_close(u[0], u[1])  # fixed until termination
    assert not torch.allclose(u[1], u[2])  # then redrawn


# --------------------------------------------------------------------------- #
# GradientSampling: composition and state
# --------------------------------------------------------------------------- #
def test_gs_over_a_chain_with_laplacian_smoothing():
    x = torch.randn(1, 12, generator=torch.Generator().manual_seed(8)).requires_grad_()
    x0 = x.detach().clone()
    chain = smoothing_chain(x)
    optim = GradientSampling(InnerOpt=chain, sigma=0.0, n=2)
    record: list = []
    optim.step(recording_closure([x], optim, record))
    expected = laplacian_smooth(record[0][2][0], 2.0)
    torch.testing.assert_close(x.grad, expected)
    torch.testing.assert_close(x.detach(), x0 - 0.1 * expected)


def test_gs_grad_scale_applies_once():
    x = torch.zeros(3, requires_grad=True)
    optim = GradientSampling([x], sigma=0.0, n=1, grad_scale=2.0, grad_bias=1.0, lr=1.0)
    weights = torch.tensor([1.0, 2.0, 3.0])
    optim.step(recording_closure([x], optim, [], fn=lambda p: (p * weights).sum()))
    assert torch.equal(x.grad, torch.tensor([3.0, 5.0, 7.0]))
    assert torch.equal(x.detach(), -torch.tensor([3.0, 5.0, 7.0]))


@pytest.mark.parametrize("pre_generate", [True, False])
@pytest.mark.parametrize("fixed", [True, False])
def test_gs_state_dict_round_trip_continues_identically(pre_generate, fixed):
    def make(seed):
        x = torch.tensor([[0.4, -1.2, 0.8], [2.0, 0.1, -0.3]], requires_grad=True)
        optim = GradientSampling(
            [x], InnerOpt=torch.optim.Adam, n=3, sigma=0.3, fixed=fixed, pre_generate=pre_generate,
            sigma_strategy="value", seed=seed, lr=0.05,
        )
        return x, optim, recording_closure([x], optim, [])

    x, optim, closure = make(seed=1)
    for _ in range(3):
        optim.step(closure)
    buffer = io.BytesIO()
    torch.save(optim.state_dict(), buffer)
    saved_x = x.detach().clone()
    for _ in range(3):
        optim.step(closure)

    y, other, other_closure = make(seed=99)
    buffer.seek(0)
    other.load_state_dict(torch.load(buffer, weights_only=True))
    with torch.no_grad():
        y.copy_(saved_x)
    for _ in range(3):
        other.step(other_closure)
    assert torch.equal(x.detach(), y.detach())
    assert other.param_groups[0]["sigma"] == optim.param_groups[0]["sigma"] != 0.3


def test_gs_state_dict_with_a_chain_inner_keeps_members():
    x = torch.zeros(1, 6, requires_grad=True)
    chain = smoothing_chain(x)
    optim = GradientSampling(InnerOpt=chain, n=2, seed=0)
    state = optim.state_dict()
    assert "members" in state and "gradient_sampling" in state
    chain.members[0].param_groups[0]["sigma"] = 5.0
    optim.load_state_dict(state)
    assert chain.members[0].param_groups[0]["sigma"] == 2.0
    assert optim.param_groups is chain.param_groups


# --------------------------------------------------------------------------- #
# GradientSampling: validation
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(sigma=-1.0), ValueError, "option `sigma` must be a finite real number >= 0; got sigma=-1.0"),
        (dict(n=0), ValueError, "option `n` must be an integer >= 1; got n=0"),
        (dict(n=2.0), ValueError, "option `n`"),
        (
            dict(aggregate="median"),
            ValueError,
            "option `aggregate` must be one of 'mean', 'max', 'min', 'min-norm'; got aggregate='median'",
        ),
        (dict(distribution="cauchy"), ValueError, "option `distribution` must be one of"),
        (dict(include_x0=1), ValueError, "option `include_x0` must be True or False"),
        (dict(fixed=None), ValueError, "option `fixed`"),
        (dict(pre_generate="no"), ValueError, "option `pre_generate`"),
        (dict(reset_on_termination=0), ValueError, "option `reset_on_termination`"),
        (dict(termination=3), TypeError, "option `termination` must be None or a callable"),
        (dict(decay=0.0), ValueError, "option `decay` must be a finite real number > 0"),
        (
            dict(sigma_strategy="loss"),
            ValueError,
            "option `sigma_strategy` must be one of None, 'grad-norm', 'value'",
        ),
        (dict(sigma_target=1.5), ValueError, "option `sigma_target` must be a real number within"),
        (dict(sigma_nplus=-2.0), ValueError, "option `sigma_nplus`"),
        (dict(sigma_nminus=math.nan), ValueError, "option `sigma_nminus`"),
        (dict(seed=1.5), ValueError, "option `seed` must be None or an integer"),
        (dict(seed=-1), ValueError, "option `seed`"),
        (dict(seed=2**64), ValueError, "option `seed`"),
        (dict(param_ndim=2), ValueError, "option `param_ndim`"),
    ],
)
def test_gs_validation(kwargs, error, match):
    x = torch.zeros(3, requires_grad=True)
    with pytest.raises(error, match=match):
        GradientSampling([x], lr=0.1, **kwargs)


def test_gs_add_param_group_is_validated_and_redraws():
    x = torch.zeros(3, requires_grad=True)
    optim = GradientSampling([x], n=2, lr=0.1)
    optim.step(recording_closure([x], optim, []))
    assert optim._perturbations is not None
    with pytest.raises(ValueError, match="option `distribution`"):
        optim.add_param_group({"params": [torch.zeros(2, requires_grad=True)], "distribution": "x"})
    y = torch.zeros(2, requires_grad=True)
    optim.add_param_group({"params": [y], "sigma": 0.1})
    assert optim._perturbations is None
    optim.step(recording_closure([x, y], optim, []))
    assert optim._perturbations[1].shape == (2, 2)


def test_gs_refuses_shared_options_and_chain_membership():
    x = torch.zeros(1, 4, requires_grad=True)
    with pytest.raises(TypeError, match="`sigma`.*ChainedParamTransformingOptimizer"):
        GradientSampling([x], InnerOpt=partial(LaplacianSmoothing, sigma=1.0), lr=0.1)
    with pytest.raises(TypeError, match="`sigma`"):
        GradientSampling(InnerOpt=LaplacianSmoothing([x], lr=0.1))
    chain = ChainedParamTransformingOptimizer(LaplacianSmoothing, params=[x], lr=0.1)
    with pytest.raises(ValueError, match="option `grad_scale` is taken from the transforming inner"):
        GradientSampling(InnerOpt=chain, grad_scale=2.0)
    member = ChainedParamTransformingOptimizer(partial(GradientSampling, n=2), params=[x], lr=0.1)
    x.grad = torch.ones(1, 4)
    with pytest.raises(TypeError, match="cannot be a member"):
        member.step()


def test_gs_refuses_an_inner_option_declared_only_per_group():
    """An option the inner class validates per group but does not name in its signature is seen too."""

    class Decaying(ParamTransformingOptimizer):
        _options = {"decay": positive}

    assert "decay" in Decaying.option_names()
    x = torch.zeros(1, 4, requires_grad=True)
    with pytest.raises(TypeError, match="`decay`"):
        GradientSampling([x], InnerOpt=partial(Decaying, defaults={"decay": 0.5}), lr=0.1)


def test_the_old_module_reexports_both_algorithms():
    assert smoothing.GradientSampling is gradient_sampling.GradientSampling is GradientSampling
    for name in laplacian_smoothing.__all__:
        assert getattr(smoothing, name) is getattr(laplacian_smoothing, name)
    assert sorted(smoothing.__all__) == sorted(laplacian_smoothing.__all__ + gradient_sampling.__all__)


def test_gs_default_settings_work():
    x = torch.tensor([1.0, -2.0], requires_grad=True)
    optim = GradientSampling([x], lr=0.1, seed=0)
    loss = optim.step(recording_closure([x], optim, [], fn=lambda p: p.abs().sum()))
    assert loss.isfinite() and x.grad.isfinite().all()
    assert optim._perturbations[0].shape == (100, 2)

"""Tests of the ball-uniform initializers of :mod:`rai_probe.perturbations` (REFERENCE.md section 3).

The statistical tests use fixed seeds, so they are deterministic; their
thresholds are wide enough that a correct sampler passes comfortably and
narrow enough that the usual mistakes fail, which ``test_wrong_samplers_fail``
demonstrates by running the same checks on deliberately wrong samplers.

Facts used, for a sample ``y`` uniform in the unit ball of ``R^n``:

* Any norm ball: the radius ``r = ‖y‖`` has CDF ``t^n`` on ``[0, 1]`` (the
  ball of radius ``t`` holds the fraction ``t^n`` of the volume).
* L1 ball: one coordinate has ``P(|y_1| > t) = (1 - t)^n`` (the slice at
  ``|y_1| = s`` is an (n-1)-dim L1 ball of radius ``1 - s``).
* L2 ball: one coordinate has density proportional to ``(1 - s²)^((n-1)/2)``.
* L∞ ball: the coordinates are independent and uniform on ``[-1, 1]``.
* Every ball is symmetric under sign flips of any coordinates, so the
  ``2^n`` sign patterns are equally likely.
"""

from __future__ import annotations

import math
from typing import Callable

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from conftest import FLOAT_DTYPES
from rai_probe.optim.param_transforming import rows_shape
from rai_probe.perturbations import (
    uniform_like_l1_n_ball_,
    uniform_like_l2_n_ball_,
    uniform_like_linf_n_ball_,
)

INF = math.inf
INITIALIZERS = {
    1: uniform_like_l1_n_ball_,
    2: uniform_like_l2_n_ball_,
    INF: uniform_like_linf_n_ball_,
}
NORMS = list(INITIALIZERS)
HALF = (torch.float16, torch.bfloat16)

#: Rows per statistical test: the KS threshold is 2.5 / sqrt(M) ~ 0.018.
M = 20_000
KS_LIMIT = 2.5 / math.sqrt(M)  # a single KS test exceeds it with probability ~1e-5
#: Per-coordinate fraction of positive entries: 4.5 standard deviations.
SIGN_LIMIT = 4.5 * 0.5 / math.sqrt(M)
#: Chi-square quantile at p = 1e-5 for 7 degrees of freedom (2^3 sign patterns).
CHI2_LIMIT_7DOF = 33.0


# --------------------------------------------------------------------------- #
# distribution checks
# --------------------------------------------------------------------------- #
def ks_distance(samples: torch.Tensor, cdf: Callable[[torch.Tensor], torch.Tensor]) -> float:
    """Kolmogorov-Smirnov statistic: max |empirical CDF - cdf| over the samples."""
    s = samples.double().flatten().sort().values
    m = s.numel()
    f = cdf(s)
    i = torch.arange(1, m + 1, dtype=torch.float64)
    return float(torch.maximum(i / m - f, f - (i - 1) / m).max())


def norm_of_rows(y: torch.Tensor, p: float) -> torch.Tensor:
    return torch.linalg.vector_norm(y.double().flatten(1), ord=p, dim=1)


def radius_cdf(n: int) -> Callable:
    return lambda t: t**n


def coordinate_cdf(p: float, n: int) -> Callable:
    """CDF of ``|y_1|`` (L1, L2) or of ``y_1`` (L∞) for ``y`` uniform in the unit ball."""
    if p == 1:
        return lambda t: 1 - (1 - t) ** n
    if p == INF:
        return lambda t: (t + 1) / 2
    if n == 2:
        return lambda t: (2 / math.pi) * (t * torch.sqrt(1 - t * t) + torch.asin(t))
    if n == 3:
        return lambda t: (3 * t - t**3) / 2
    if n == 5:
        return lambda t: (15 / 8) * (t - 2 * t**3 / 3 + t**5 / 5)
    raise NotImplementedError(n)


def ball_failures(y: torch.Tensor, p: float) -> list[str]:
    """Ways in which the rows of ``y`` (shape (M, n)) fail to look uniform in the unit p-ball."""
    n = y.shape[1]
    failures = []
    if bool((norm_of_rows(y, p) > 1 + 1e-6).any()):
        failures.append("outside")
    d = ks_distance(norm_of_rows(y, p), radius_cdf(n))
    if d > KS_LIMIT:
        failures.append(f"radius (KS {d:.3f})")
    for j in range(n):
        coordinate = y[:, j] if p == INF else y[:, j].abs()
        d = ks_distance(coordinate, coordinate_cdf(p, n))
        if d > KS_LIMIT:
            failures.append(f"marginal {j} (KS {d:.3f})")
            break
    positive = (y > 0).double().mean(dim=0)
    if float((positive - 0.5).abs().max()) > SIGN_LIMIT:
        failures.append("signs")
    return failures


def sign_pattern_chi2(y: torch.Tensor) -> float:
    """Chi-square statistic of the counts of the ``2^n`` sign patterns against equal counts."""
    n = y.shape[1]
    codes = ((y > 0).long() * (2 ** torch.arange(n))).sum(dim=1)
    counts = torch.bincount(codes, minlength=2**n).double()
    expected = y.shape[0] / 2**n
    return float(((counts - expected) ** 2 / expected).sum())


def draw(p: float, n: int, seed: int, epsilon=1.0, dtype=torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return INITIALIZERS[p](torch.empty(M, n, dtype=dtype), epsilon=epsilon, generator=gen)


# --------------------------------------------------------------------------- #
# the distribution
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("n", [2, 3, 5])
@pytest.mark.parametrize("p", NORMS)
def test_samples_look_uniform_in_the_ball(p, n):
    epsilon = 0.7
    y = draw(p, n, seed=10 * n + (3 if p == INF else p), epsilon=epsilon)
    assert ball_failures(y / epsilon, p) == []


@pytest.mark.parametrize("p", NORMS)
@pytest.mark.parametrize("n", [2, 3, 5])
def test_radius_has_cdf_t_to_the_n(p, n):
    # Stated on its own (ball_failures checks it too), in float64 and another radius.
    y = draw(p, n, seed=100 + n, epsilon=3.0, dtype=torch.float64)
    assert ks_distance(norm_of_rows(y, p) / 3.0, radius_cdf(n)) < KS_LIMIT


@pytest.mark.parametrize("p", NORMS)
def test_sign_patterns_are_equally_likely(p):
    y = draw(p, 3, seed=7)
    assert sign_pattern_chi2(y) < CHI2_LIMIT_7DOF
    # and the sign of one coordinate says nothing about the size of another
    big = y[:, 1].abs() > y[:, 1].abs().median()
    assert abs(float((y[big, 0] > 0).double().mean()) - 0.5) < 2 * SIGN_LIMIT


def test_linf_coordinates_are_independent():
    y = draw(INF, 4, seed=3).double()
    corr = torch.corrcoef(y.T)
    off_diagonal = corr - torch.eye(4, dtype=torch.float64)
    assert float(off_diagonal.abs().max()) < 4.5 / math.sqrt(M)
    # pooled, the M * 4 independent entries are uniform on [-1, 1]
    assert ks_distance(y, coordinate_cdf(INF, 4)) < 2.5 / math.sqrt(y.numel())


# --------------------------------------------------------------------------- #
# wrong samplers: the checks above must reject them
# --------------------------------------------------------------------------- #
def _signs(gen, n):
    return torch.randint(0, 2, (M, n), generator=gen) * 2.0 - 1


def _simplex_gaps(gen, n):
    cuts = torch.rand(M, n, generator=gen).sort(dim=1).values
    return torch.diff(cuts, dim=1, prepend=torch.zeros(M, 1))


def _gaussian_directions(gen, n):
    z = torch.randn(M, n, generator=gen)
    return z / z.norm(dim=1, keepdim=True)


def _radii(gen, n):
    return torch.rand(M, 1, generator=gen) ** (1 / n)


WRONG_SAMPLERS = {
    # L1: the direction is right, the radius is uniform (mass too close to 0)
    "l1 uniform radius": (
        1,
        lambda g, n: (lambda gaps: gaps / gaps.sum(1, keepdim=True))(_simplex_gaps(g, n))
        * torch.rand(M, 1, generator=g) * _signs(g, n),
        "radius",
    ),
    # L1: iid uniforms normalized by their sum are not uniform on the simplex
    "l1 normalized uniforms": (
        1,
        lambda g, n: (lambda u: u / u.sum(1, keepdim=True))(torch.rand(M, n, generator=g))
        * _radii(g, n) * _signs(g, n),
        "marginal",
    ),
    # L1: the sorted uniforms themselves instead of their gaps
    "l1 sorted uniforms without gaps": (
        1,
        lambda g, n: torch.rand(M, n, generator=g).sort(dim=1).values * _signs(g, n),
        "outside",
    ),
    # L1: no random signs, only the positive orthant
    "l1 without signs": (1, lambda g, n: _simplex_gaps(g, n), "signs"),
    # L2: uniform radius
    "l2 uniform radius": (
        2,
        lambda g, n: _gaussian_directions(g, n) * torch.rand(M, 1, generator=g),
        "radius",
    ),
    # L2: directions of a uniform cube are not uniform on the sphere
    "l2 cube directions": (
        2,
        lambda g, n: (lambda c: c / c.norm(dim=1, keepdim=True))(
            torch.rand(M, n, generator=g) * 2 - 1
        )
        * _radii(g, n),
        "marginal",
    ),
    # L2: a uniform cube projected onto the ball (mass piles up on the sphere)
    "l2 projected cube": (
        2,
        lambda g, n: (lambda c: c / c.norm(dim=1, keepdim=True).clamp(min=1))(
            torch.rand(M, n, generator=g) * 2 - 1
        ),
        "radius",
    ),
    # L∞: clipped gaussian entries
    "linf clipped gaussian": (
        INF,
        lambda g, n: (0.6 * torch.randn(M, n, generator=g)).clamp(-1, 1),
        "marginal",
    ),
    # L∞: [0, ε) only
    "linf without signs": (INF, lambda g, n: torch.rand(M, n, generator=g), "signs"),
}


@pytest.mark.parametrize("n", [2, 3, 5])
@pytest.mark.parametrize("name", list(WRONG_SAMPLERS))
def test_wrong_samplers_fail(name, n):
    p, sampler, expected = WRONG_SAMPLERS[name]
    y = sampler(torch.Generator().manual_seed(n), n)
    failures = ball_failures(y, p)
    assert any(f.startswith(expected) for f in failures), failures


# --------------------------------------------------------------------------- #
# inside the ball, in every dtype
# --------------------------------------------------------------------------- #
def _tolerance(dtype: torch.dtype) -> float:
    # float32 / float64 arithmetic may exceed the radius by a few units in the last
    # place; half-precision results are rounded toward zero from float32.
    return 1e-12 if dtype == torch.float64 else 1e-6


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("p", NORMS)
def test_every_sample_inside_the_ball(p, dtype, device):
    gen = torch.Generator().manual_seed(5)
    x = torch.empty(64, 3, 16, 16, dtype=dtype, device=device)
    out = INITIALIZERS[p](x, epsilon=0.3, generator=gen)
    assert out is x and x.dtype == dtype and x.device.type == device.type
    assert bool(torch.isfinite(x).all())
    norms = norm_of_rows(x.cpu(), p)
    assert bool((norms <= 0.3 * (1 + _tolerance(dtype))).all())
    if p != INF:  # in 768 dims nearly all mass is near the sphere
        assert bool((norms > 0.3 * 0.98).all())


@pytest.mark.parametrize("dtype", HALF)
def test_half_precision_is_rounded_toward_zero(dtype):
    # bf16(0.1) = 0.10009765625 and fp16(0.1) = 0.0999755859375: round-to-nearest
    # would put some of 100k entries above 0.1.
    gen = torch.Generator().manual_seed(0)
    x = uniform_like_linf_n_ball_(torch.empty(100, 1000, dtype=dtype), epsilon=0.1, generator=gen)
    assert float(x.double().abs().max()) <= 0.1
    reference = uniform_like_linf_n_ball_(
        torch.empty(100, 1000), epsilon=0.1, generator=torch.Generator().manual_seed(0)
    )
    assert bool((x.float().abs() <= reference.abs()).all())
    info = torch.finfo(dtype)
    ulp = (info.eps * reference.abs()).clamp(min=info.eps * info.tiny)  # fp16 subnormals
    assert bool(((x.float() - reference).abs() <= ulp).all())


@pytest.mark.parametrize("p", NORMS)
def test_float64_is_sampled_in_float64(p):
    x = INITIALIZERS[p](torch.empty(50, 20, dtype=torch.float64), generator=torch.Generator().manual_seed(0))
    assert bool((x != x.float().double()).any())


@pytest.mark.parametrize("p", [1, 2])
def test_float64_norms_are_exact_to_rounding(p):
    x = INITIALIZERS[p](torch.empty(200, 3000, dtype=torch.float64), epsilon=1e-3)
    assert bool((norm_of_rows(x, p) <= 1e-3 * (1 + 1e-12)).all())


@given(
    shape=st.lists(st.integers(0, 5), min_size=0, max_size=4).map(tuple),
    data=st.data(),
    p=st.sampled_from(NORMS),
    dtype=st.sampled_from(FLOAT_DTYPES),
    epsilon=st.floats(1e-3, 1e3),
    seed=st.integers(0, 2**31),
)
def test_property_rows_inside_their_balls(shape, data, p, dtype, epsilon, seed):
    limit = max(len(shape), 1)
    param_ndim = data.draw(st.one_of(st.none(), st.integers(-limit, limit)), label="param_ndim")
    x = torch.full(shape, float("nan"), dtype=dtype)
    out = INITIALIZERS[p](x, epsilon, param_ndim, torch.Generator().manual_seed(seed))
    assert out is x
    assert bool(torch.isfinite(x).all())
    rows = x.reshape(rows_shape(x.shape, param_ndim))
    if rows.numel():
        assert bool((norm_of_rows(rows, p) <= epsilon * (1 + _tolerance(dtype))).all())


# --------------------------------------------------------------------------- #
# rows, per-row radii, layouts
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("param_ndim", [None, -3, -2, -1, 0, 1, 2, 3])
@pytest.mark.parametrize("p", NORMS)
def test_param_ndim_selects_the_rows(p, param_ndim):
    # Initializing (3, 4, 5) with param_ndim is the same as initializing its
    # rows_shape view with the default param_ndim=-1 (one ball per leading index).
    shape = rows_shape((3, 4, 5), param_ndim)
    x = INITIALIZERS[p](torch.empty(3, 4, 5), 0.5, param_ndim, torch.Generator().manual_seed(1))
    rows = INITIALIZERS[p](torch.empty(shape), 0.5, -1, torch.Generator().manual_seed(1))
    assert torch.equal(x, rows.view(3, 4, 5))
    assert bool((norm_of_rows(rows, p) <= 0.5 * (1 + 1e-6)).all())


def test_param_ndim_none_is_one_ball_for_the_whole_tensor():
    gen = torch.Generator().manual_seed(0)
    x = uniform_like_l2_n_ball_(torch.empty(10, 100), epsilon=1.0, param_ndim=None, generator=gen)
    assert 0.9 < float(x.norm()) <= 1.0 + 1e-6  # one ball in 1000 dims, not ten in 100
    assert float(x.norm(dim=1).max()) < 0.6


@pytest.mark.parametrize("p", NORMS)
def test_per_row_epsilon(p, device):
    epsilon = torch.logspace(-3, 2, 1000, dtype=torch.float64)
    gen = torch.Generator().manual_seed(2)
    x = INITIALIZERS[p](torch.empty(1000, 3, device=device), epsilon.to(device), generator=gen)
    ratio = norm_of_rows(x.cpu(), p) / epsilon
    assert bool((ratio <= 1 + 1e-6).all())
    # r / ε_row is distributed as for a single radius
    assert ks_distance(ratio, radius_cdf(3)) < 2.5 / math.sqrt(1000)


def test_per_row_epsilon_matches_one_call_per_radius():
    epsilon = torch.tensor([0.5, 2.0, 8.0])
    x = uniform_like_l1_n_ball_(torch.empty(3, 6), epsilon, generator=torch.Generator().manual_seed(4))
    unit = uniform_like_l1_n_ball_(torch.empty(3, 6), 1.0, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(x, unit * epsilon[:, None])


@pytest.mark.parametrize("epsilon", [torch.tensor([1, 2]), torch.tensor(0.5), 3])
def test_epsilon_of_other_types(epsilon):
    x = uniform_like_l2_n_ball_(torch.empty(2, 4), epsilon)
    limit = epsilon.double() if isinstance(epsilon, torch.Tensor) else epsilon
    assert bool((norm_of_rows(x, 2) <= limit * (1 + 1e-6)).all())


@pytest.mark.parametrize("p", NORMS)
def test_non_contiguous_and_parameters(p):
    base = torch.zeros(5, 8)
    view = base.t()  # (8, 5), non-contiguous: 8 rows of 5
    INITIALIZERS[p](view, 1.0, generator=torch.Generator().manual_seed(3))
    expected = INITIALIZERS[p](torch.empty(8, 5), 1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(base, expected.t())
    param = torch.nn.Parameter(torch.zeros(2, 3))
    assert INITIALIZERS[p](param) is param and param.requires_grad and param.grad_fn is None
    assert bool((param != 0).all())


@pytest.mark.parametrize("shape", [(), (0, 3), (3, 0), (0,)])
@pytest.mark.parametrize("p", NORMS)
def test_scalar_and_empty(p, shape):
    x = torch.zeros(shape)
    assert INITIALIZERS[p](x, 0.25) is x
    if x.numel():
        assert 0 < abs(float(x)) <= 0.25


# --------------------------------------------------------------------------- #
# randomness: seeds, generators, devices
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("p", NORMS)
def test_seeded_reproducibility(p):
    def sample(seed):
        return INITIALIZERS[p](torch.empty(4, 10), generator=torch.Generator().manual_seed(seed))

    assert torch.equal(sample(0), sample(0))
    assert not torch.equal(sample(0), sample(1))
    gen = torch.Generator().manual_seed(0)
    first = INITIALIZERS[p](torch.empty(4, 10), generator=gen)
    assert not torch.equal(first, INITIALIZERS[p](torch.empty(4, 10), generator=gen))  # state advances


@pytest.mark.parametrize("p", NORMS)
def test_default_generator_follows_manual_seed(p):
    torch.manual_seed(123)
    a = INITIALIZERS[p](torch.empty(3, 7))
    torch.manual_seed(123)
    b = INITIALIZERS[p](torch.empty(3, 7), generator=None)
    assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("p", NORMS)
def test_cpu_generator_gives_the_same_values_on_every_device(p, dtype, device):
    on_device = INITIALIZERS[p](
        torch.empty(6, 9, dtype=dtype, device=device), generator=torch.Generator().manual_seed(8)
    )
    on_cpu = INITIALIZERS[p](torch.empty(6, 9, dtype=dtype), generator=torch.Generator().manual_seed(8))
    assert on_device.device.type == device.type
    assert torch.equal(on_device.cpu(), on_cpu)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("p", NORMS)
def test_cuda_generator_with_cpu_tensor(p):
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = INITIALIZERS[p](torch.empty(6, 9), generator=gen)
    again = INITIALIZERS[p](torch.empty(6, 9, device="cuda"), generator=gen.manual_seed(0))
    assert x.device.type == "cpu" and torch.equal(x, again.cpu())


# --------------------------------------------------------------------------- #
# bad input
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("p", NORMS)
@pytest.mark.parametrize(
    "epsilon",
    [0.0, -1.0, INF, float("nan"), True, "1", torch.tensor([1.0, 0.0, 1.0]),
     torch.tensor([1.0, float("inf"), 1.0]), torch.ones(2), torch.ones(3, 1), torch.tensor(-1.0)],
)
def test_bad_epsilon(p, epsilon):
    x = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="`epsilon`"):
        INITIALIZERS[p](x, epsilon)
    assert bool((x == 0).all())


@pytest.mark.parametrize("p", NORMS)
@pytest.mark.parametrize("param_ndim", [3, -3, 1.0, "1", True])
def test_bad_param_ndim(p, param_ndim):
    with pytest.raises(ValueError, match=r"`param_ndim` must be None or an integer within \[-2, 2\]"):
        INITIALIZERS[p](torch.zeros(3, 4), 1.0, param_ndim)


@pytest.mark.parametrize("p", NORMS)
def test_bad_tensor_and_generator(p):
    with pytest.raises(TypeError, match="floating-point"):
        INITIALIZERS[p](torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.Tensor"):
        INITIALIZERS[p]([0.0, 1.0])
    with pytest.raises(TypeError, match="`generator`"):
        INITIALIZERS[p](torch.zeros(3, 4), generator=0)

"""Property-based tests of :mod:`rai_probe.optim.functional`.

Every function acts per row: the input has shape ``(N, d0, ...)`` and each of
the ``N`` sub-tensors is transformed independently. The properties checked
here come from REFERENCE.md sections 1-2 and the functional module's own
contract (sparsity convention ``k = round((1 - q) n)``, exact Euclidean
projections, linear minimization oracles of unit balls).

Inputs are drawn with bounded magnitudes (0 or within [2**-10, 2**10]) so that
the float32 norms neither underflow nor overflow; the behaviour at extreme
magnitudes is pinned down by separate, explicit tests at the end of the file.
"""

from __future__ import annotations

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from conftest import FLOAT_DTYPES
from rai_probe.optim import functional as F

INF = float("inf")
HALF = (torch.float16, torch.bfloat16)

# --------------------------------------------------------------------------- #
# strategies
# --------------------------------------------------------------------------- #
_TINY_MAG = 2.0**-10
#: Raw entries; magnitudes below 2**-10 are moved to +-2**-10 (see ``_clean``).
_RAW = st.floats(min_value=-(2.0**10), max_value=2.0**10, width=32)
#: Markers for the kind of entries a batch holds.
NONZERO = "nonzero"
ELEMENTS = "elements"


def _clean(arr: np.ndarray, kind: str) -> np.ndarray:
    """Bound the magnitudes of nonzero entries to [2**-10, 2**10]; NONZERO maps 0 to 1."""
    tiny = (arr != 0) & (np.abs(arr) < _TINY_MAG)
    arr = np.where(tiny, np.copysign(np.float32(_TINY_MAG), arr), arr)
    if kind == NONZERO:
        arr = np.where(arr == 0, np.float32(1.0), arr)
    return arr.astype(np.float32)


@st.composite
def batch_shapes(draw, max_n: int = 6, max_row: int = 64) -> tuple[int, ...]:
    """``(N, d0, ...)`` with ``N`` in 1..max_n and a row of 1..max_row entries (1-d or 2-d)."""
    n = draw(st.integers(1, max_n))
    size = draw(st.integers(1, max_row))
    a = draw(st.sampled_from([d for d in range(1, size + 1) if size % d == 0]))
    row = draw(st.sampled_from([(size,), (a, size // a)]))
    return (n, *row)


@st.composite
def row_batches(draw, elements=ELEMENTS, dtypes=(torch.float32, torch.float64), shape=None):
    """A tensor of rows, drawn as a float32 numpy array and cast to one of ``dtypes``.

    ``elements``: ELEMENTS (zeros allowed) or NONZERO. Arrays drawn by hypothesis
    repeat values often, so ties in magnitude are common.
    """
    shape = draw(batch_shapes()) if shape is None else shape
    arr = _clean(draw(hnp.arrays(np.float32, shape, elements=_RAW)), elements)
    dtype = draw(st.sampled_from(list(dtypes)))
    return torch.from_numpy(arr).to(dtype)


@st.composite
def distinct_rows(draw, max_n: int = 6, max_row: int = 64) -> torch.Tensor:
    """2-D float32 rows whose entries have pairwise-distinct nonzero magnitudes (no ties)."""
    n_rows = draw(st.integers(1, max_n))
    n = draw(st.integers(1, max_row))
    rows = []
    for _ in range(n_rows):
        perm = draw(st.permutations(range(1, n + 1)))
        signs = draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=n, max_size=n))
        rows.append([s * m / 4.0 for s, m in zip(signs, perm)])
    return torch.tensor(rows, dtype=torch.float32)


qs = st.floats(min_value=0.0, max_value=1.0)
seeds = st.integers(0, 2**32 - 1)


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def flat(x: torch.Tensor) -> torch.Tensor:
    """``(N, n)`` float64 copy of the rows of ``x``."""
    return x.detach().reshape(x.shape[0], -1).to(torch.float64)


def expected_k(n: int, q: float) -> int:
    """REFERENCE.md: a row of n entries keeps k = round((1 - q) * n) entries (Python round)."""
    return round((1.0 - q) * n)


def assert_kept_are_largest(x_row: torch.Tensor, kept_mask: torch.Tensor) -> None:
    """Every kept |value| is >= every dropped |value| (in the row's own precision)."""
    if kept_mask.any() and (~kept_mask).any():
        assert x_row[kept_mask].abs().min() >= x_row[~kept_mask].abs().max()


def unit_tol(dtype: torch.dtype) -> float:
    return {torch.float16: 2e-3, torch.bfloat16: 1e-2, torch.float32: 1e-5, torch.float64: 1e-12}[
        dtype
    ]


def machine_eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def l1_projection_reference(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Brute-force Euclidean projection of one 1-d row onto the L1 ball, in float64.

    theta >= 0 solves sum(max(|x| - theta, 0)) = eps, found by bisection; the
    projection is sign(x) * max(|x| - theta, 0) (identity when already inside).
    """
    x = x.to(torch.float64)
    a = x.abs()
    if a.sum() <= eps:
        return x.clone()
    lo, hi = 0.0, float(a.max())
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if float((a - mid).clamp(min=0).sum()) > eps:
            lo = mid
        else:
            hi = mid
    theta = 0.5 * (lo + hi)
    return x.sign() * (a - theta).clamp(min=0)


# --------------------------------------------------------------------------- #
# num_kept / the k formula
# --------------------------------------------------------------------------- #
@given(n=st.integers(0, 1000), q=qs)
def test_num_kept_is_python_round(n, q):
    assert F.num_kept(n, q) == expected_k(n, q)
    assert 0 <= F.num_kept(n, q) <= n


@pytest.mark.parametrize(
    "n, q, k", [(3, 0.3, 2), (4, 0.25, 3), (784, 0.99, 8), (2, 0.25, 2), (2, 0.75, 0), (10, 1.0, 0)]
)
def test_num_kept_vectors(n, q, k):
    # (2, 0.25): round(1.5) == 2 (half to even); (2, 0.75): round(0.5) == 0.
    assert F.num_kept(n, q) == k


# --------------------------------------------------------------------------- #
# l1q_normalize_
# --------------------------------------------------------------------------- #
@given(x=row_batches(elements=NONZERO, dtypes=FLOAT_DTYPES), q=qs)
def test_l1q_normalize_all_nonzero_rows(x, q):
    """Rows without zeros: exactly k nonzeros per row, each ±1/k with the input's sign."""
    out = F.l1q_normalize(x, q)
    assert out.dtype == x.dtype and out.shape == x.shape
    n = x[0].numel()
    k = expected_k(n, q)
    xs, ys = flat(x), flat(out)
    nonzero = ys != 0
    assert (nonzero.sum(dim=1) == k).all(), (k, nonzero.sum(dim=1))
    if k == 0:
        return
    magnitude = torch.tensor(1.0 / k, dtype=x.dtype).to(torch.float64)
    assert (ys[nonzero].abs() == magnitude).all()
    assert (ys[nonzero].sign() == xs[nonzero].sign()).all()
    for x_row, kept in zip(xs, nonzero):
        assert_kept_are_largest(x_row, kept)
    # every row has unit L1 norm
    torch.testing.assert_close(
        ys.abs().sum(dim=1),
        torch.ones(len(ys), dtype=torch.float64),
        rtol=unit_tol(x.dtype),
        atol=0,
    )


@given(x=row_batches(dtypes=FLOAT_DTYPES), q=qs)
def test_l1q_normalize_rows_with_zeros(x, q):
    """General rows: min(k, nnz) nonzeros of equal magnitude, unit L1 norm; zero rows stay zero."""
    x_before = x.clone()
    out = F.l1q_normalize(x, q)
    assert torch.equal(x, x_before)  # out-of-place leaves its input alone
    n = x[0].numel()
    k = expected_k(n, q)
    xs, ys = flat(x), flat(out)
    for x_row, y_row in zip(xs, ys):
        nnz_in = int((x_row != 0).sum())
        kept = y_row != 0
        m = min(k, nnz_in)
        assert int(kept.sum()) == m
        if m == 0:
            assert (y_row == 0).all()
            continue
        assert int(kept.sum()) <= k
        magnitude = torch.tensor(1.0 / m, dtype=x.dtype).to(torch.float64)
        assert (y_row[kept].abs() == magnitude).all()
        assert (y_row[kept].sign() == x_row[kept].sign()).all()
        assert abs(float(y_row.abs().sum()) - 1.0) <= unit_tol(x.dtype)
        assert_kept_are_largest(x_row, kept)


@given(x=row_batches(), q=qs)
def test_l1q_normalize_inplace_matches_out_of_place(x, q):
    expected = F.l1q_normalize(x, q)
    y = x.clone()
    returned = F.l1q_normalize_(y, q)
    assert returned is y
    assert torch.equal(y, expected)
    assert torch.equal(F.lmo_l1q_(x.clone(), q), expected)


def test_l1q_normalize_all_zero_rows_stay_zero():
    for dtype in FLOAT_DTYPES:
        x = torch.zeros(3, 5, dtype=dtype)
        out = F.l1q_normalize(x, 0.4)
        assert torch.equal(out, torch.zeros_like(x))
        assert not out.isnan().any()


# --------------------------------------------------------------------------- #
# topq_
# --------------------------------------------------------------------------- #
@given(x=row_batches(dtypes=FLOAT_DTYPES), q=qs)
def test_topq_keeps_k_largest_original_values(x, q):
    out = F.topq(x, q)
    assert out.dtype == x.dtype and out.shape == x.shape
    n = x[0].numel()
    k = expected_k(n, q)
    xs, ys = flat(x), flat(out)
    # every entry is either its original value or zero
    assert ((ys == xs) | (ys == 0)).all()
    for x_row, y_row in zip(xs, ys):
        kept = y_row != 0
        assert int(kept.sum()) == min(k, int((x_row != 0).sum()))
        assert_kept_are_largest(x_row, kept)


@given(x=row_batches(elements=NONZERO, dtypes=FLOAT_DTYPES), q=qs)
def test_topq_exactly_k_even_with_ties(x, q):
    out = F.topq(x, q)
    k = expected_k(x[0].numel(), q)
    ys = flat(out)
    assert ((ys != 0).sum(dim=1) == k).all()


@given(x=row_batches(), q=qs)
def test_topq_inplace_returns_input(x, q):
    expected = F.topq(x, q)
    y = x.clone()
    assert F.topq_(y, q) is y
    assert torch.equal(y, expected)


@given(x=row_batches(), q=qs)
def test_topq_then_l1_normalize_signs_is_l1q(x, q):
    """l1q = sign(topq(x)) / ||sign(topq(x))||_1, row by row (both select with the same k)."""
    top = F.topq(x, q)
    ref = F.normalize(top.sign(), p=1)
    torch.testing.assert_close(F.l1q_normalize(x, q), ref, rtol=1e-6, atol=0)


# --------------------------------------------------------------------------- #
# normalize_
# --------------------------------------------------------------------------- #
@given(x=row_batches(), p=st.sampled_from([1.0, 2.0, INF]))
def test_normalize_rows_have_unit_norm_or_stay_zero(x, p):
    out = F.normalize(x, p)
    assert out.dtype == x.dtype
    xs, ys = flat(x), flat(out)
    in_norms = torch.linalg.vector_norm(xs, ord=p, dim=1)
    out_norms = torch.linalg.vector_norm(ys, ord=p, dim=1)
    zero = in_norms == 0
    assert (ys[zero] == 0).all()
    tol = unit_tol(x.dtype)
    assert ((out_norms[~zero] - 1).abs() <= tol).all(), out_norms
    # same direction: out * ||x|| == x
    torch.testing.assert_close(ys * in_norms[:, None], xs, rtol=4 * tol, atol=0)


@given(x=row_batches(dtypes=HALF), p=st.sampled_from([1.0, 2.0, INF]))
def test_normalize_half_precision(x, p):
    out = F.normalize(x, p)
    assert out.dtype == x.dtype and out.isfinite().all()
    ref = F.normalize(x.float(), p)
    torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("p, expected", [(1.0, 0.25), (2.0, 0.5), (INF, 1.0)])
def test_normalize_half_rows_whose_norm_exceeds_the_half_range(p, expected):
    """The norm of a float16 row may not fit float16 (here 4 * 60000 > 65504): it is computed
    and divided in float32, so the result is still the unit-norm row."""
    x = torch.full((2, 4), 60000.0, dtype=torch.float16)
    x[1] = -x[1]
    out = F.normalize(x, p)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), torch.tensor([[expected] * 4, [-expected] * 4]))


# --------------------------------------------------------------------------- #
# projections onto norm balls
# --------------------------------------------------------------------------- #
def _norm_fn(kind: str):
    return {"l1": 1.0, "l2": 2.0, "linf": INF}[kind]


PROJECTIONS = {
    "l1": (F.project_l1_ball, F.project_l1_ball_),
    "l2": (F.project_l2_ball, F.project_l2_ball_),
    "linf": (F.project_linf_ball, F.project_linf_ball_),
}


def _ball_tolerance(kind: str, x: torch.Tensor, eps) -> torch.Tensor:
    """Absolute slack allowed on ||proj(x)||_p <= eps: 1e-5 relative in float32 (1e-12 in
    float64), plus, for L1, the float cancellation of sum|x| - eps in the threshold."""
    xs = flat(x)
    eps_t = torch.as_tensor(eps, dtype=torch.float64).expand(xs.shape[0])
    rel = unit_tol(x.dtype)
    tol = rel * eps_t
    if kind == "l1":
        tol = tol + 4 * machine_eps(x.dtype) * xs.abs().sum(dim=1)
    return tol


@st.composite
def ball_inputs(draw, dtypes=(torch.float32, torch.float64)):
    """Rows and a radius drawn relative to their norms, so that some rows are inside, some out."""
    x = draw(row_batches(dtypes=dtypes))
    kind = draw(st.sampled_from(sorted(PROJECTIONS)))
    norms = torch.linalg.vector_norm(flat(x), ord=_norm_fn(kind), dim=1)
    scale = float(norms.max()) if float(norms.max()) > 0 else 1.0
    eps = draw(st.floats(min_value=0.01, max_value=2.0)) * scale
    return kind, x, float(np.float32(eps))


@given(args=ball_inputs())
def test_projection_lands_inside_the_ball(args):
    kind, x, eps = args
    out = PROJECTIONS[kind][0](x, eps)
    assert out.dtype == x.dtype and out.shape == x.shape
    norms = torch.linalg.vector_norm(flat(out), ord=_norm_fn(kind), dim=1)
    assert (norms <= eps + _ball_tolerance(kind, x, eps)).all(), (norms, eps)


@given(args=ball_inputs())
def test_projection_leaves_rows_inside_unchanged(args):
    kind, x, eps = args
    out = PROJECTIONS[kind][0](x, eps)
    in_norms = torch.linalg.vector_norm(flat(x), ord=_norm_fn(kind), dim=1)
    inside = in_norms <= eps * (1 - 1e-4)
    # bit-for-bit: rows inside the ball are not touched
    assert torch.equal(flat(out)[inside], flat(x)[inside])
    # rows outside land on the sphere
    outside = in_norms > eps * (1 + 1e-4)
    out_norms = torch.linalg.vector_norm(flat(out), ord=_norm_fn(kind), dim=1)
    tol = _ball_tolerance(kind, x, eps)
    assert ((out_norms - eps).abs() <= tol)[outside].all(), (out_norms, eps)


@given(args=ball_inputs())
def test_projection_is_idempotent(args):
    kind, x, eps = args
    once = PROJECTIONS[kind][0](x, eps)
    twice = PROJECTIONS[kind][0](once, eps)
    if kind == "linf":
        assert torch.equal(once, twice)
    else:
        tol = _ball_tolerance(kind, x, eps)
        diff = (flat(twice) - flat(once)).abs().max(dim=1).values
        assert (diff <= tol).all(), (diff, tol)


@given(args=ball_inputs())
def test_projection_inplace_matches_out_of_place(args):
    kind, x, eps = args
    expected = PROJECTIONS[kind][0](x, eps)
    y = x.clone()
    assert PROJECTIONS[kind][1](y, eps) is y
    assert torch.equal(y, expected)


@given(x=row_batches(dtypes=(torch.float64,)), frac=st.floats(0.01, 1.5))
def test_project_l1_matches_bruteforce_float64(x, frac):
    xs = flat(x)
    eps = frac * max(float(xs.abs().sum(dim=1).max()), 1e-3)
    out = flat(F.project_l1_ball(x, eps))
    for x_row, y_row in zip(xs, out):
        ref = l1_projection_reference(x_row, eps)
        torch.testing.assert_close(y_row, ref, rtol=0, atol=1e-9 * (float(x_row.abs().max()) + eps))


@given(x=row_batches(dtypes=(torch.float32,)), frac=st.floats(0.01, 1.5))
def test_project_l1_matches_bruteforce_float32(x, frac):
    xs = flat(x)
    eps = float(np.float32(frac * max(float(xs.abs().sum(dim=1).max()), 1e-3)))
    out = flat(F.project_l1_ball(x, eps))
    for x_row, y_row in zip(xs, out):
        ref = l1_projection_reference(x_row, eps)
        atol = 1e-5 * eps + 4 * machine_eps(torch.float32) * float(x_row.abs().sum())
        torch.testing.assert_close(y_row, ref, rtol=0, atol=atol)


@given(x=row_batches(elements=NONZERO, dtypes=(torch.float64,)), frac=st.floats(0.01, 0.99))
def test_project_l1_optimality_conditions(x, frac):
    """For rows outside: y = sign(x) max(|x| - theta, 0) with one theta > 0 and ||y||_1 = eps."""
    xs = flat(x)
    norms = xs.abs().sum(dim=1)
    eps_rows = frac * norms  # every row strictly outside its own ball
    out = flat(F.project_l1_ball(x, eps_rows))
    for x_row, y_row, eps in zip(xs, out, eps_rows.tolist()):
        assert abs(float(y_row.abs().sum()) - eps) <= 1e-9 * float(x_row.abs().sum())
        support = y_row != 0
        assert support.any()
        # same sign, never flipped; shrunk by a common theta on the support
        assert (y_row.sign()[support] == x_row.sign()[support]).all()
        thetas = x_row.abs()[support] - y_row.abs()[support]
        theta = float(thetas.mean())
        assert theta > 0
        assert (thetas - theta).abs().max() <= 1e-9 * (float(x_row.abs().max()) + 1)
        # off the support the magnitude is at most theta
        if (~support).any():
            assert float(x_row.abs()[~support].max()) <= theta + 1e-9 * float(x_row.abs().max())


@pytest.mark.parametrize("kind", sorted(PROJECTIONS))
@given(x=row_batches(), data=st.data())
def test_per_row_epsilon_equals_row_by_row_scalar_calls(kind, x, data):
    n_rows = x.shape[0]
    eps_list = data.draw(
        st.lists(st.floats(2.0**-7, 128.0, width=32), min_size=n_rows, max_size=n_rows)
    )
    eps = torch.tensor(eps_list, dtype=x.dtype)
    out = PROJECTIONS[kind][0](x, eps)
    for i, e in enumerate(eps_list):
        ref = PROJECTIONS[kind][0](x[i : i + 1], e)
        torch.testing.assert_close(out[i : i + 1], ref, rtol=2 * machine_eps(x.dtype), atol=0)


@pytest.mark.parametrize("kind", sorted(PROJECTIONS))
def test_per_row_epsilon_float32_tensor_on_float64_rows(kind):
    x = torch.tensor([[3.0, -4.0], [0.1, 0.2], [-6.0, 8.0]], dtype=torch.float64)
    eps = torch.tensor([1.0, 5.0, 2.0], dtype=torch.float32)
    out = PROJECTIONS[kind][0](x, eps)
    for i in range(3):
        torch.testing.assert_close(
            out[i : i + 1], PROJECTIONS[kind][0](x[i : i + 1], float(eps[i]))
        )


# --------------------------------------------------------------------------- #
# linear minimization oracles
# --------------------------------------------------------------------------- #
@given(g=row_batches())
def test_lmo_l1_is_signed_one_hot_maximizer(g):
    s = F.lmo_l1_(g.clone())
    gs, ss = flat(g), flat(s)
    for g_row, s_row in zip(gs, ss):
        if (g_row == 0).all():
            assert (s_row == 0).all()
            continue
        nz = s_row != 0
        assert int(nz.sum()) == 1
        assert (s_row[nz].abs() == 1).all()
        assert float(s_row.abs().sum()) <= 1.0
        # <g, s> attains max over the unit L1 ball: ||g||_inf
        assert float(g_row @ s_row) == float(g_row.abs().max())


@given(g=row_batches())
def test_lmo_l2_maximizes_over_unit_l2_ball(g):
    s = F.lmo_l2_(g.clone())
    gs, ss = flat(g), flat(s)
    tol = unit_tol(g.dtype)
    s_norms = torch.linalg.vector_norm(ss, dim=1)
    g_norms = torch.linalg.vector_norm(gs, dim=1)
    assert (s_norms <= 1 + tol).all()
    inner = (gs * ss).sum(dim=1)
    assert ((inner - g_norms).abs() <= tol * g_norms).all()
    assert (ss[g_norms == 0] == 0).all()


@given(g=row_batches())
def test_lmo_linf_maximizes_over_unit_linf_ball(g):
    s = F.lmo_linf_(g.clone())
    gs, ss = flat(g), flat(s)
    assert (ss.abs() <= 1).all()
    torch.testing.assert_close((gs * ss).sum(dim=1), gs.abs().sum(dim=1), rtol=1e-12, atol=0)


@given(g=row_batches(), q=qs)
def test_lmo_l1q_is_in_unit_l1_ball_and_maximizes_over_its_polytope(g, q):
    """lmo_l1q_ = argmax <g, s> over {||s||_1 <= 1, ||s||_inf <= 1/k}: <g, s> is the mean of
    the k largest |g| (restricted to nonzeros); with k = 1 it is ||g||_inf, the L1 LMO value."""
    s = F.lmo_l1q_(g.clone(), q)
    gs, ss = flat(g), flat(s)
    n = gs.shape[1]
    k = expected_k(n, q)
    assert (ss.abs().sum(dim=1) <= 1 + 1e-6).all()
    for g_row, s_row in zip(gs, ss):
        m = min(k, int((g_row != 0).sum()))
        top = g_row.abs().sort(descending=True).values[:m]
        value = float(top.mean()) if m else 0.0
        assert abs(float(g_row @ s_row) - value) <= 1e-6 * (value + 1e-30)
        assert float(g_row @ s_row) <= float(g_row.abs().max()) * (1 + 1e-6)
    if k == 1 and _unique_nonzero_max(g):
        # with k = 1 the L1q direction is the L1 LMO (a signed one-hot at argmax |g|)
        assert torch.equal(s, F.lmo_l1_(g.clone()))


def _unique_nonzero_max(g: torch.Tensor) -> bool:
    a = flat(g).abs()
    top = a.max(dim=1, keepdim=True).values
    return bool((top > 0).all() and ((a == top).sum(dim=1) == 1).all())


# --------------------------------------------------------------------------- #
# seeded dq draws
# --------------------------------------------------------------------------- #
def _kept_counts(out: torch.Tensor) -> torch.Tensor:
    return (flat(out) != 0).sum(dim=1)


@given(
    x=row_batches(elements=NONZERO),
    q=qs,
    dq=st.floats(0.01, 1.0),
    seed=seeds,
    fn=st.sampled_from(["topq", "l1q"]),
)
def test_seeded_dq_is_reproducible(x, q, dq, seed, fn):
    func = F.topq if fn == "topq" else F.l1q_normalize
    g1 = torch.Generator().manual_seed(seed)
    g2 = torch.Generator().manual_seed(seed)
    for _ in range(3):
        a = func(x, q, dq=dq, generator=g1)
        b = func(x, q, dq=dq, generator=g2)
        assert torch.equal(a, b)
    # the two generators were advanced identically
    assert torch.equal(g1.get_state(), g2.get_state())


@given(
    x=row_batches(elements=NONZERO),
    q=qs,
    dq=st.floats(0.0, 1.0),
    seed=seeds,
    fn=st.sampled_from(["topq", "l1q"]),
)
def test_drawn_k_stays_within_bounds_and_is_shared_by_rows(x, q, dq, seed, fn):
    func = F.topq if fn == "topq" else F.l1q_normalize
    n = x[0].numel()
    k_low = expected_k(n, min(1.0, q + dq))
    k_high = expected_k(n, max(0.0, q - dq))
    gen = torch.Generator().manual_seed(seed)
    for _ in range(5):
        counts = _kept_counts(func(x, q, dq=dq, generator=gen))
        # q is drawn once per call: every row keeps the same number of entries
        assert (counts == counts[0]).all()
        assert k_low <= int(counts[0]) <= k_high, (k_low, int(counts[0]), k_high)


def test_different_seeds_give_different_kept_counts():
    x = torch.arange(1.0, 65.0).reshape(1, 64)
    draws = {}
    for seed in (0, 1):
        gen = torch.Generator().manual_seed(seed)
        draws[seed] = [
            int(_kept_counts(F.topq(x, 0.5, dq=0.4, generator=gen))[0]) for _ in range(30)
        ]
    assert draws[0] != draws[1]
    for seq in draws.values():
        assert len(set(seq)) > 5  # the draw actually varies from call to call
        assert all(round(0.1 * 64) <= k <= round(0.9 * 64) for k in seq)


@pytest.mark.parametrize("q, dq", [(0.5, 0.3), (0.9, 0.5), (0.1, 0.4), (0.5, 1.0), (0.0, 0.2)])
def test_dq_draw_is_uniform_over_the_clipped_interval(q, dq):
    """q' ~ U[max(0, q - dq), min(1, q + dq)]: with n = 200 the kept fraction 1 - q' has the
    mean of that interval and reaches (near) both ends over 400 draws."""
    n = 200
    x = torch.arange(1.0, n + 1).reshape(1, n)
    gen = torch.Generator().manual_seed(2024)
    fractions = torch.tensor(
        [float(_kept_counts(F.topq(x, q, dq=dq, generator=gen))[0]) / n for _ in range(400)]
    )
    low, high = max(0.0, q - dq), min(1.0, q + dq)
    width = high - low
    assert abs(float(fractions.mean()) - (1 - (low + high) / 2)) < 0.05 * width + 1 / n
    assert float(fractions.min()) <= 1 - high + 0.05 * width + 1 / n
    assert float(fractions.max()) >= 1 - low - 0.05 * width - 1 / n


def test_dq_draw_uses_the_given_generator_not_the_global_one():
    x = torch.arange(1.0, 101.0).reshape(2, 50)
    torch.manual_seed(123)
    global_state = torch.get_rng_state()
    gen = torch.Generator().manual_seed(7)
    a = [F.topq(x, 0.5, dq=0.5, generator=gen) for _ in range(5)]
    assert torch.equal(torch.get_rng_state(), global_state)
    torch.manual_seed(999)  # changing the global RNG does not change generator-driven draws
    gen = torch.Generator().manual_seed(7)
    b = [F.topq(x, 0.5, dq=0.5, generator=gen) for _ in range(5)]
    assert all(torch.equal(u, v) for u, v in zip(a, b))


def test_dq_without_generator_uses_global_rng():
    x = torch.arange(1.0, 101.0).reshape(2, 50)
    torch.manual_seed(5)
    a = [F.l1q_normalize(x, 0.5, dq=0.5) for _ in range(5)]
    torch.manual_seed(5)
    b = [F.l1q_normalize(x, 0.5, dq=0.5) for _ in range(5)]
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert len({int(_kept_counts(u)[0]) for u in a}) > 1


def test_dq_zero_does_not_consume_randomness():
    gen = torch.Generator().manual_seed(3)
    state = gen.get_state()
    F.topq(torch.randn(3, 10), 0.5, dq=0.0, generator=gen)
    assert torch.equal(gen.get_state(), state)


# --------------------------------------------------------------------------- #
# the device-side k path of _keep_top_k_ (used with accelerator generators)
# --------------------------------------------------------------------------- #
@given(rows=distinct_rows(), data=st.data(), with_values_fn=st.booleans())
def test_keep_top_k_tensor_k_matches_int_k(rows, data, with_values_fn):
    n = rows.shape[1]
    k = data.draw(st.integers(0, n), label="k")
    k_max = data.draw(st.integers(k, n), label="k_max")
    values_fn = (lambda kept: F._l1_normalized_signs(kept)) if with_values_fn else None
    by_int = rows.clone()
    F._keep_top_k_(by_int, k, k, values_fn)
    by_tensor = rows.clone()
    F._keep_top_k_(by_tensor, torch.tensor(k, dtype=torch.long), k_max, values_fn)
    assert torch.equal(by_tensor, by_int)
    assert ((by_int != 0).sum(dim=1) == k).all()


@given(x=row_batches(elements=NONZERO), data=st.data())
def test_keep_top_k_tensor_k_with_ties_keeps_k_largest(x, data):
    rows = flat(x).to(x.dtype)
    n = rows.shape[1]
    k = data.draw(st.integers(0, n), label="k")
    k_max = data.draw(st.integers(k, n), label="k_max")
    out = rows.clone()
    F._keep_top_k_(out, torch.tensor(k), k_max)
    kept = out != 0
    assert (kept.sum(dim=1) == k).all()
    assert ((out == rows) | ~kept).all()
    ref = rows.clone()
    F._keep_top_k_(ref, k, k)
    # same multiset of kept magnitudes as the int path (tie-breaking may pick other indices)
    torch.testing.assert_close(
        out.abs().sort(dim=1).values, ref.abs().sort(dim=1).values, rtol=0, atol=0
    )
    for r, m in zip(rows, kept):
        assert_kept_are_largest(r, m)


def test_keep_top_k_tensor_k_on_half_precision():
    for dtype in HALF:
        rows = torch.tensor([[0.5, -3.0, 2.0, 1.0], [4.0, -0.25, 0.75, -1.5]], dtype=dtype)
        a, b = rows.clone(), rows.clone()
        F._keep_top_k_(a, torch.tensor(2), 4, F._l1_normalized_signs)
        F._keep_top_k_(b, 2, 2, F._l1_normalized_signs)
        assert a.dtype == dtype and torch.equal(a, b)
        torch.testing.assert_close(
            a.float(), torch.tensor([[0.0, -0.5, 0.5, 0.0], [0.5, 0.0, 0.0, -0.5]])
        )


def test_keep_top_k_tensor_k_zeros_infinite_surplus():
    rows = torch.tensor([[INF, -INF, 1.0, 2.0]])
    by_int = rows.clone()
    F._keep_top_k_(by_int, 1, 1)
    by_tensor = rows.clone()
    F._keep_top_k_(by_tensor, torch.tensor(1), 3)
    assert not by_tensor.isnan().any(), by_tensor
    assert int((by_tensor != 0).sum()) == 1


# --------------------------------------------------------------------------- #
# extreme magnitudes (outside the ranges drawn above)
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("p", [1.0, INF])
@pytest.mark.parametrize("value", [1e-30, 1e30])
def test_normalize_extreme_magnitudes_l1_linf(value, p, dtype):
    out = F.normalize(torch.full((1, 4), value, dtype=dtype), p)
    expected = 0.25 if p == 1.0 else 1.0
    torch.testing.assert_close(out, torch.full((1, 4), expected, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("value", [1e-23, 1e20])
def test_normalize_l2_extreme_magnitudes(value, dtype):
    out = F.normalize(torch.full((1, 4), value, dtype=dtype), 2)
    torch.testing.assert_close(out.float(), torch.full((1, 4), 0.5), rtol=1e-2, atol=1e-3)


def test_project_l2_ball_huge_row_lands_on_sphere():
    out = F.project_l2_ball(torch.tensor([[1e20, 1e20]]), 1.0)
    torch.testing.assert_close(out, torch.tensor([[0.7071068, 0.7071068]]))

"""The box-aware L1q Frank-Wolfe vertex spends its budget (issue 11) and the box-aware SLIDE step.

* property (hypothesis, random gradients and images): the ``"l1q"`` vertex of the ε-ball ∩ box
  has L1 norm ``min(ε, total capacity in the gradient's directions)``, lies in the box, moves
  every entry against its gradient, keeps at least ``min(k, movable)`` entries and ranks them
  by ``|g|`` (an entry outside the support never has a larger ``|g|`` than a partially filled
  one inside it, among movable entries);
* ``spend_budget=False`` keeps exactly the old top-``k`` water-filling;
* without a box the vertex is ``-ε ·`` the L1q direction (parity with the reference);
* ``L1qFrankWolfe`` on 28x28 images in [0, 1] with ``q = 0.99``: its first iterate spends ε = 20
  (it stopped at 8 before), and ε = 10 and ε = 20 now differ;
* ``movable_entries`` and ``topk_signs_`` on hand-built rows; the SLIDE step chooses its top
  ``k`` among movable entries, so no part of it is lost to the box.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.testing import assert_close

from rai_probe.optim import L1ProjectedOptim, L1qFrankWolfe
from rai_probe.optim import functional as F


def _capacity(g, lower, upper):
    room = torch.where(g < 0, upper, -lower)
    return torch.where(g == 0, torch.zeros_like(room), room)


@given(
    seed=st.integers(0, 2**16),
    rows=st.integers(1, 4),
    n=st.integers(1, 60),
    q=st.floats(0.0, 0.99),
    epsilon=st.floats(0.01, 50.0),
    saturated=st.floats(0.0, 1.0),
)
def test_l1q_vertex_spends_its_budget_in_a_box(seed, rows, n, q, epsilon, saturated):
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(rows, n, generator=gen, dtype=torch.float64)
    image[torch.rand(rows, n, generator=gen) < saturated] = 0.0  # pixels at the box's faces
    image[torch.rand(rows, n, generator=gen) < saturated / 2] = 1.0
    lower, upper = -image, 1 - image
    g = torch.randn(rows, n, generator=gen, dtype=torch.float64)
    g[torch.rand(rows, n, generator=gen) < 0.1] = 0.0
    k = F.num_kept(n, q)
    v = F.fw_vertex_box_(g.clone(), "l1q", epsilon, lower, upper, q=q)
    capacity = _capacity(g, lower, upper)
    expected = torch.clamp(capacity.sum(1), max=epsilon) if k > 0 else torch.zeros(rows, dtype=torch.float64)
    assert_close(v.abs().sum(1), expected, atol=1e-9 * max(1.0, epsilon), rtol=1e-9)
    assert bool((v >= lower - 1e-12).all() and (v <= upper + 1e-12).all())
    assert bool((v * g <= 0).all())  # against the gradient, never along it
    movable = capacity > 0
    support = v != 0
    if k > 0:
        assert bool((support.sum(1) >= torch.clamp(movable.sum(1), max=k)).all())  # q: the minimum support
    # ranking: a movable entry left out never beats, in |g|, an entry that is not full
    for r in range(rows):
        partial = support[r] & (v[r].abs() < capacity[r] - 1e-12)
        outside = movable[r] & ~support[r]
        if bool(partial.any()) and bool(outside.any()) and int(support[r].sum()) >= k:
            assert float(g[r].abs()[outside].max()) <= float(g[r].abs()[partial].max()) + 1e-12


@given(seed=st.integers(0, 2**16), n=st.integers(2, 40), q=st.floats(0.0, 0.95), epsilon=st.floats(0.1, 20.0))
def test_spend_budget_false_keeps_the_top_k_water_fill(seed, n, q, epsilon):
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(3, n, generator=gen, dtype=torch.float64)
    g = torch.randn(3, n, generator=gen, dtype=torch.float64)
    v = F.fw_vertex_box_(g.clone(), "l1q", epsilon, -image, 1 - image, q=q, spend_budget=False)
    k = F.num_kept(n, q)
    assert bool(((v != 0).sum(1) <= k).all())
    spent = F.fw_vertex_box_(g.clone(), "l1q", epsilon, -image, 1 - image, q=q)
    assert bool((spent.abs().sum(1) >= v.abs().sum(1) - 1e-9).all())


def test_unbounded_vertex_is_minus_epsilon_times_the_l1q_direction():
    g = torch.randn(5, 30, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    v = F.fw_vertex_box_(g.clone(), "l1q", 2.5, -torch.inf, torch.inf, q=0.8)
    assert_close(v, -2.5 * F.l1q_normalize(g, 0.8))


def test_vertex_by_hand():
    g = torch.tensor([[-3.0, 2.0, 1.0, 0.5]])
    # k = 1: entry 0 (room 1.0) takes 1; the rest goes to entries 1 (room 0.5), then 2 (room 0.5)
    v = F.fw_vertex_box_(g.clone(), "l1q", 1.8, lower=-0.5, upper=1.0, q=0.75)
    assert_close(v, torch.tensor([[1.0, -0.5, -0.3, 0.0]]))


def test_l1q_frank_wolfe_reaches_its_radius_on_mnist_sized_images():
    gen = torch.Generator().manual_seed(0)
    image = (torch.rand(4, 1, 28, 28, generator=gen) > 0.8).float()  # a sparse binary "digit"
    first = {}
    for epsilon in (10.0, 20.0):
        delta = torch.zeros_like(image, requires_grad=True)
        optim = L1qFrankWolfe([delta], q=0.99, epsilon=epsilon, bounds=(-image, 1 - image))
        delta.grad = torch.randn(image.shape, generator=torch.Generator().manual_seed(1))
        optim.step()  # the first step lands on the vertex
        first[epsilon] = delta.detach().flatten(1).abs().sum(1)
        assert_close(first[epsilon], torch.full((4,), epsilon), rtol=1e-5, atol=1e-4)
        old = L1qFrankWolfe([torch.zeros_like(image, requires_grad=True)], q=0.99, epsilon=epsilon,
                            bounds=(-image, 1 - image), spend_budget=False)
        p = old.param_groups[0]["params"][0]
        p.grad = torch.randn(image.shape, generator=torch.Generator().manual_seed(1))
        old.step()
        assert bool((p.detach().flatten(1).abs().sum(1) <= 8 + 1e-5).all())  # 8 pixels, each <= 1
    assert not torch.allclose(first[10.0], first[20.0])


def test_movable_entries_and_topk_signs_by_hand():
    delta = torch.tensor([[0.0, 0.5, 1.0, 0.5, 0.2]])
    grad = torch.tensor([[1.0, -2.0, -3.0, 0.0, 0.5]])
    assert F.movable_entries(delta, grad, 0.0, 1.0).tolist() == [[False, True, False, False, True]]
    signs = F.topk_signs_(torch.tensor([[1.0, -2.0, -3.0, 0.0, 0.5]]), 2)
    assert_close(signs, torch.tensor([[0.0, -0.5, -0.5, 0.0, 0.0]]))
    per_row = F.topk_signs_(torch.tensor([[1.0, -2.0, 3.0], [1.0, 2.0, 3.0]]), torch.tensor([1, 3]), k_max=3)
    assert_close(per_row, torch.tensor([[0.0, 0.0, 1.0], [1 / 3, 1 / 3, 1 / 3]]))


def test_slide_step_chooses_among_movable_entries():
    image = torch.tensor([[1.0, 0.5, 0.5, 0.0]])  # pixel 0 cannot rise any more
    delta = torch.zeros_like(image, requires_grad=True)
    optim = L1ProjectedOptim([delta], epsilon=1.0, q=0.5, lr=1.0, bounds=(-image, 1 - image))
    delta.grad = torch.tensor([[-4.0, -3.0, -2.0, 1.0]])  # descent raises 0, 1, 2 and lowers 3
    optim.step()
    # movable: 1 and 2 (pixel 3 is at 0 and would fall); the step of length 1 lands on them
    assert_close(delta.detach(), torch.tensor([[0.0, 0.5, 0.5, 0.0]]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_spending_vertex_in_low_precision_stays_in_the_box(dtype):
    gen = torch.Generator().manual_seed(3)
    image = torch.rand(2, 50, generator=gen)
    g = torch.randn(2, 50, generator=gen).to(dtype)
    v = F.fw_vertex_box_(g, "l1q", 5.0, (-image).to(dtype), (1 - image).to(dtype), q=0.9)
    assert v.dtype == dtype
    assert bool(((image + v.float()) >= -1e-2).all() and ((image + v.float()) <= 1 + 1e-2).all())
    assert float(v.float().abs().sum(1).max()) <= 5.0 * 1.01

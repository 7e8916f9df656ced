"""Per-row epsilon tensors and the ``bounds`` box of the projected and Frank-Wolfe families."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.testing import assert_close

from rai_probe.optim import (
    L1FrankWolfe,
    L1ProjectedOptim,
    L1qFrankWolfe,
    L2FrankWolfe,
    L2ProjectedOptim,
    LinfFrankWolfe,
    LinfProjectedOptim,
)
from rai_probe.optim import functional as F

FW = {"l1": L1FrankWolfe, "l2": L2FrankWolfe, "linf": LinfFrankWolfe, "l1q": L1qFrankWolfe}
PROJECTED = {"l1": L1ProjectedOptim, "l2": L2ProjectedOptim, "linf": LinfProjectedOptim}
ORD = {"l1": 1, "l1q": 1, "l2": 2, "linf": float("inf")}


def _make(cls, params, **kwargs):
    if cls in (L1qFrankWolfe, L1ProjectedOptim):
        kwargs.setdefault("q", 0.5)
    if cls in PROJECTED.values():
        kwargs.setdefault("lr", 0.3)
    return cls(params, **kwargs)


def _box(data):
    return (0.0 - data, 1.0 - data)


# --------------------------------------------------------------------------- #
# per-row epsilon
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("cls", [*FW.values(), *PROJECTED.values()])
def test_per_row_epsilon_equals_separate_optimizers(cls):
    torch.manual_seed(0)
    radii = torch.tensor([0.5, 2.0, 4.0])
    grads = [torch.randn(3, 2, 5) for _ in range(4)]
    batched = torch.zeros(3, 2, 5, requires_grad=True)
    optim = _make(cls, [batched], epsilon=radii)
    singles = [torch.zeros(1, 2, 5, requires_grad=True) for _ in range(3)]
    optims = [_make(cls, [p], epsilon=float(r)) for p, r in zip(singles, radii)]
    for grad in grads:
        batched.grad = grad.clone()
        optim.step()
        for i, (p, o) in enumerate(zip(singles, optims)):
            p.grad = grad[i : i + 1].clone()
            o.step()
    assert_close(batched.detach(), torch.cat([p.detach() for p in singles]), atol=1e-5, rtol=1e-5)
    norms = torch.linalg.vector_norm(batched.detach().flatten(1), ORD[_norm_of(cls)], dim=1)
    assert bool((norms <= radii * (1 + 1e-5)).all())


def _norm_of(cls):
    for table in (FW, PROJECTED):
        for name, klass in table.items():
            if klass is cls:
                return name
    raise KeyError(cls)


@pytest.mark.parametrize("cls", [*FW.values(), *PROJECTED.values()])
@pytest.mark.parametrize(
    "epsilon, match",
    [
        (torch.tensor([1.0, 2.0]), r"one radius per row.*3 rows"),
        (torch.tensor([1.0, -2.0, 1.0]), r"`epsilon`.*1-D floating tensor"),
        (torch.tensor([[1.0, 2.0, 3.0]]), r"`epsilon`.*1-D floating tensor"),
        (torch.tensor([1, 2, 3]), r"`epsilon`.*1-D floating tensor"),
        (torch.tensor([1.0, float("inf"), 1.0]), r"`epsilon`.*1-D floating tensor"),
    ],
)
def test_bad_per_row_epsilon(cls, epsilon, match):
    with pytest.raises(ValueError, match=match):
        _make(cls, [torch.zeros(3, 4, requires_grad=True)], epsilon=epsilon)


# --------------------------------------------------------------------------- #
# bounds
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("norm", list(FW) + [f"proj-{n}" for n in PROJECTED])
@given(seed=st.integers(0, 2**16), epsilon=st.floats(0.05, 5.0), steps=st.integers(1, 6))
def test_iterates_stay_in_ball_and_box(norm, seed, epsilon, steps):
    gen = torch.Generator().manual_seed(seed)
    data = torch.rand(3, 1, 4, 4, generator=gen)
    delta = torch.zeros_like(data, requires_grad=True)
    cls = PROJECTED[norm[5:]] if norm.startswith("proj-") else FW[norm]
    optim = _make(cls, [delta], epsilon=epsilon, bounds=_box(data))
    order = ORD[norm[5:] if norm.startswith("proj-") else norm]
    for _ in range(steps):
        delta.grad = torch.randn(delta.shape, generator=gen)
        optim.step()
        d = delta.detach()
        assert bool(((data + d) >= -1e-6).all()) and bool(((data + d) <= 1 + 1e-6).all())
        norms = torch.linalg.vector_norm(d.flatten(1), order, dim=1)
        assert bool((norms <= epsilon * (1 + 1e-5) + 1e-6).all())


def test_l1_frank_wolfe_with_box_spreads_over_movable_pixels():
    # the unbounded LMO keeps choosing the saturated pixel; the box-aware vertex moves on
    data = torch.tensor([[0.9, 0.5, 0.5, 0.5]])
    grad = torch.tensor([[-4.0, -3.0, -2.0, 1.0]])  # descent: raise pixels 0-2, lower pixel 3
    delta = torch.zeros_like(data, requires_grad=True)
    optim = L1FrankWolfe([delta], epsilon=1.0, bounds=_box(data))
    delta.grad = grad.clone()
    optim.step()  # first step (alpha = 1) lands on the vertex
    assert_close(delta.detach(), torch.tensor([[0.1, 0.5, 0.4, 0.0]]))


@pytest.mark.parametrize(
    "spend_budget, expected",
    [(True, [[0.1, 0.5, 0.0, -0.4]]), (False, [[0.1, 0.5, 0.0, 0.0]])],
    ids=["spends", "top-k-only"],
)
def test_l1q_frank_wolfe_box_vertex_water_fills_then_spends_the_rest(spend_budget, expected):
    data = torch.tensor([[0.9, 0.5, 0.0, 0.5]])
    delta = torch.zeros_like(data, requires_grad=True)
    # q=0.5 keeps 2 of 4: pixel 0 can rise by 0.1 only, pixel 2 cannot fall at all
    optim = L1qFrankWolfe([delta], q=0.5, epsilon=1.0, bounds=_box(data), spend_budget=spend_budget)
    delta.grad = torch.tensor([[-4.0, -3.0, 5.0, 1.0]])
    optim.step()
    # movable entries by |g|: 0 (room 0.1), 1 (room 0.5), 3 (room 0.5); the top 2 (0 and 1) take
    # 0.6 of the budget of 1; spending it, the next movable entry (3, lowered) takes the rest
    assert_close(delta.detach(), torch.tensor(expected))


def test_unbounded_box_reduces_to_the_unit_lmo_step():
    torch.manual_seed(1)
    grad = torch.randn(4, 10)
    for name, cls in FW.items():
        a = torch.zeros(4, 10, requires_grad=True)
        b = torch.zeros(4, 10, requires_grad=True)
        oa, ob = _make(cls, [a], epsilon=2.0), _make(cls, [b], epsilon=2.0, bounds=(-100.0, 100.0))
        for _ in range(3):
            a.grad, b.grad = grad.clone(), grad.clone()
            oa.step()
            ob.step()
        assert_close(a.detach(), b.detach(), atol=1e-5, rtol=1e-5, msg=name)


def test_l1_projection_with_box_is_the_exact_intersection_projection():
    data = torch.tensor([[0.2, 0.9, 0.5]])
    delta = torch.zeros_like(data, requires_grad=True)
    optim = L1ProjectedOptim([delta], epsilon=0.6, q=0.0, grad_scale=3.0, lr=1.0, bounds=_box(data))
    delta.grad = torch.tensor([[-1.0, -1.0, 1.0]])  # step: +1, +1, -1
    optim.step()
    expected = F.project_l1_ball_box_(torch.tensor([[1.0, 1.0, -1.0]]), 0.6, -data, 1 - data)
    assert_close(delta.detach(), expected)
    # clamping after the plain projection would waste budget
    assert float(delta.detach().abs().sum()) == pytest.approx(0.6, abs=1e-6)


@pytest.mark.parametrize("cls", [*FW.values(), *PROJECTED.values()])
@pytest.mark.parametrize(
    "bounds, match",
    [
        ((0.5, 1.0), r"`bounds`.*lower <= 0 <= upper"),
        ((-1.0, -0.5), r"`bounds`.*lower <= 0 <= upper"),
        ((-1.0,), r"`bounds`.*pair"),
        (("a", 1.0), r"`bounds`"),
        ((torch.full((7,), -1.0), 1.0), r"`bounds`.*12 elements"),
    ],
)
def test_bad_bounds(cls, bounds, match):
    with pytest.raises(ValueError, match=match):
        _make(cls, [torch.zeros(3, 4, requires_grad=True)], epsilon=1.0, bounds=bounds)
    optim = _make(cls, [torch.zeros(3, 4, requires_grad=True)], epsilon=1.0)
    with pytest.raises(ValueError, match=match):
        optim.add_param_group({"params": [torch.zeros(3, 4, requires_grad=True)], "bounds": bounds})
    assert len(optim.param_groups) == 1


def test_bounds_and_tensor_epsilon_survive_state_dict_round_trip():
    data = torch.rand(2, 6)
    a = torch.zeros(2, 6, requires_grad=True)
    oa = L1qFrankWolfe([a], q=0.5, epsilon=torch.tensor([1.0, 2.0]), bounds=_box(data))
    torch.manual_seed(0)
    grads = [torch.randn(2, 6) for _ in range(4)]
    for g in grads[:2]:
        a.grad = g.clone()
        oa.step()
    b = a.detach().clone().requires_grad_(True)
    ob = L1qFrankWolfe([b], q=0.5, epsilon=1.0)
    ob.load_state_dict(oa.state_dict())
    for g in grads[2:]:
        a.grad, b.grad = g.clone(), g.clone()
        oa.step()
        ob.step()
    assert torch.equal(a, b)

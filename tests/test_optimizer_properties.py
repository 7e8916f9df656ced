"""Property and behavioural tests of the optimizer classes of :mod:`rai_probe.optim`.

Covers (REFERENCE.md sections 1-2): Frank-Wolfe iterates staying in their
epsilon-ball, ``param_ndim`` broadcasting, chaining, ``state_dict``
round-trips with generators, closure semantics (LBFGS), every float dtype on
every device, and non-contiguous parameters / gradients.
"""

from __future__ import annotations

import copy
import io
from functools import partial

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from conftest import FLOAT_DTYPES
from rai_probe.optim import (
    ChainedParamTransformingOptimizer,
    ClampedGradientOptimizer,
    ClampedParameterOptimizer,
    FrankWolfe,
    L1FrankWolfe,
    L1NormedGradientOptim,
    L1ProjectedOptim,
    L1qFrankWolfe,
    L1qNormedGradientOptim,
    L2FrankWolfe,
    L2NormedGradientOptim,
    L2ProjectedOptim,
    LinfFrankWolfe,
    LinfNormedGradientOptim,
    LinfProjectedOptim,
    ParamTransformingOptimizer,
    SignedGradientOptim,
    TopQGradientOptimizer,
)
from rai_probe.optim import functional as F

INF = float("inf")

# --------------------------------------------------------------------------- #
# strategies and helpers
# --------------------------------------------------------------------------- #
_TINY_MAG = 2.0**-10
_RAW = st.floats(min_value=-(2.0**10), max_value=2.0**10, width=32)


@st.composite
def batch_shapes(draw, max_n: int = 6, max_row: int = 64) -> tuple[int, ...]:
    """``(N, d0, ...)`` with ``N`` in 1..max_n and a row of 1..max_row entries (1-d or 2-d)."""
    n = draw(st.integers(1, max_n))
    size = draw(st.integers(1, max_row))
    a = draw(st.sampled_from([d for d in range(1, size + 1) if size % d == 0]))
    row = draw(st.sampled_from([(size,), (a, size // a)]))
    return (n, *row)


def tensors(shape) -> st.SearchStrategy[torch.Tensor]:
    """float32 tensors of ``shape``: zeros or magnitudes within [2**-10, 2**10] (ties common)."""

    def clean(arr: np.ndarray) -> torch.Tensor:
        tiny = (arr != 0) & (np.abs(arr) < _TINY_MAG)
        arr = np.where(tiny, np.copysign(np.float32(_TINY_MAG), arr), arr).astype(np.float32)
        return torch.from_numpy(arr)

    return hnp.arrays(np.float32, shape, elements=_RAW).map(clean)


def rows_of(t: torch.Tensor, param_ndim) -> torch.Tensor:
    """``(N, n)`` float64 rows of ``t`` for ``param_ndim`` in {None, -1, 0, 1} (written by hand)."""
    t = t.detach().to(torch.float64)
    if param_ndim is None:
        return t.reshape(1, -1)
    if param_ndim == -1:
        return t.reshape(t.shape[0], -1)
    if param_ndim == 0:
        return t.reshape(-1, 1)
    if param_ndim == 1:
        return t.reshape(-1, t.shape[-1])
    raise ValueError(param_ndim)


def set_grads(params, grads) -> None:
    for p, g in zip(params, grads):
        p.grad = g.clone()


# --------------------------------------------------------------------------- #
# Frank-Wolfe iterates stay inside the epsilon-ball
# --------------------------------------------------------------------------- #
FW_CLASSES = {
    "l1": (L1FrankWolfe, 1.0),
    "l1q": (L1qFrankWolfe, 1.0),
    "l2": (L2FrankWolfe, 2.0),
    "linf": (LinfFrankWolfe, INF),
}


@pytest.mark.parametrize("kind", sorted(FW_CLASSES))
@given(data=st.data())
def test_frank_wolfe_iterates_stay_inside_the_ball(kind, data):
    cls, p = FW_CLASSES[kind]
    shape = data.draw(batch_shapes(), label="shape")
    param_ndim = data.draw(st.sampled_from([-1, None]), label="param_ndim")
    eps = data.draw(st.floats(0.01, 10.0), label="epsilon")
    schedule = data.draw(st.booleans(), label="use_default_lr_schedule")
    lr = data.draw(st.floats(0.0, 10.0) if schedule else st.floats(0.0, 1.0), label="lr")
    n_steps = data.draw(st.integers(1, 8), label="steps")
    start = data.draw(st.sampled_from(["zero", "inside"]), label="start")

    if start == "zero":
        x0 = torch.zeros(shape)
    else:
        raw = rows_of(data.draw(tensors(shape), label="x0"), param_ndim)
        radius = data.draw(st.floats(0.0, 0.999), label="relative radius")
        norms = torch.linalg.vector_norm(raw, ord=p, dim=1, keepdim=True).clamp(min=1e-30)
        x0 = (raw / norms * eps * radius).to(torch.float32).reshape(shape)
    x = x0.clone().requires_grad_()

    kwargs = dict(epsilon=eps, lr=lr, use_default_lr_schedule=schedule, param_ndim=param_ndim)
    if kind == "l1q":
        q = data.draw(st.floats(0.0, 1.0), label="q")
        dq = data.draw(st.floats(0.0, 0.5), label="dq")
        seed = data.draw(st.integers(0, 2**31), label="seed")
        kwargs.update(q=q, dq=dq, generator=torch.Generator().manual_seed(seed))
        replica = torch.Generator().manual_seed(seed)  # replays the optimizer's dq draws
        lmo = lambda rows: F.lmo_l1q_(rows, q, dq=dq, generator=replica)  # noqa: E731
    else:
        lmo = {"l1": F.lmo_l1_, "l2": F.lmo_l2_, "linf": F.lmo_linf_}[kind]
    opt = cls([x], **kwargs)

    def norms_now():
        return torch.linalg.vector_norm(rows_of(x, param_ndim), ord=p, dim=1)

    assert (norms_now() <= eps * (1 + 1e-5)).all()
    expected = x0.clone().to(torch.float64)
    for step in range(n_steps):
        g = data.draw(tensors(shape), label="grad")
        x.grad = g.clone()
        opt.step()
        norms = norms_now()
        assert (norms <= eps * (1 + 1e-5)).all(), (norms, eps)
        assert x.isfinite().all()
        # the iterate follows p <- (1 - a) p - a * eps * LMO(g), a = lr / (lr + k) or lr
        direction = lmo(rows_of(g, param_ndim).to(torch.float32)).reshape(shape)
        alpha = (lr / max(lr + step, F.TINY)) if schedule else lr
        expected = (1 - alpha) * expected - alpha * eps * direction.to(torch.float64)
        torch.testing.assert_close(
            x.detach().to(torch.float64), expected, rtol=1e-5, atol=1e-6 * eps
        )


@pytest.mark.parametrize("kind", sorted(FW_CLASSES))
def test_frank_wolfe_first_default_step_lands_on_the_sphere(kind):
    """alpha_0 = lr / lr = 1: the first step jumps to -eps * LMO, a point of the sphere."""
    cls, p = FW_CLASSES[kind]
    torch.manual_seed(0)
    x = torch.randn(4, 10).requires_grad_()
    extra = dict(q=0.9) if kind == "l1q" else {}  # k = 1 of 10: the L1 LMO
    opt = cls([x], epsilon=0.7, **extra)
    g = torch.randn(4, 10)
    x.grad = g.clone()
    opt.step()
    torch.testing.assert_close(
        torch.linalg.vector_norm(x.detach(), ord=p, dim=1), torch.full((4,), 0.7)
    )
    # it moved against the gradient: <g, x> = -0.7 * (dual norm of each row of g)
    dual = {1.0: INF, 2.0: 2.0, INF: 1.0}[p]
    torch.testing.assert_close(
        (g * x.detach()).sum(dim=1), -0.7 * torch.linalg.vector_norm(g, ord=dual, dim=1)
    )


def test_l2_frank_wolfe_tiny_gradient_stays_in_ball():
    x = torch.zeros(3, requires_grad=True)
    opt = L2FrankWolfe([x], epsilon=1.0, param_ndim=None)
    x.grad = torch.tensor([1e-23, 0.0, 0.0])
    opt.step()
    assert float(x.detach().norm()) <= 1.0 + 1e-6, x


# --------------------------------------------------------------------------- #
# param_ndim=-1 on a batch == param_ndim=None on each item
# --------------------------------------------------------------------------- #
BATCH_CASES = {
    "L1qNormedGradientOptim": lambda d: (L1qNormedGradientOptim, dict(q=d["q"], lr=0.1)),
    "L2ProjectedOptim": lambda d: (L2ProjectedOptim, dict(epsilon=d["eps"], lr=0.5)),
    "L1ProjectedOptim": lambda d: (L1ProjectedOptim, dict(epsilon=d["eps"], q=d["q"], lr=0.5)),
    "TopQGradientOptimizer": lambda d: (TopQGradientOptimizer, dict(q=d["q"], lr=0.1)),
    "L1qFrankWolfe": lambda d: (L1qFrankWolfe, dict(q=d["q"], epsilon=d["eps"])),
}


#: q is drawn over all of [0, 1]: the draws that keep no entry warn (intended, tested elsewhere).
KEEPS_NOTHING = pytest.mark.filterwarnings("ignore:.*keeps round:UserWarning")


@KEEPS_NOTHING
@pytest.mark.parametrize("name", sorted(BATCH_CASES))
@given(data=st.data())
def test_batched_param_ndim_equals_per_item_none(name, data):
    shape = data.draw(batch_shapes(), label="shape")
    options = dict(q=data.draw(st.floats(0.0, 1.0), label="q"), eps=data.draw(st.floats(0.05, 5.0)))
    cls, kwargs = BATCH_CASES[name](options)
    x0 = data.draw(tensors(shape), label="x0")
    grads = [data.draw(tensors(shape), label="grad") for _ in range(data.draw(st.integers(1, 3)))]

    batch = x0.clone().requires_grad_()
    opt_batch = cls([batch], param_ndim=-1, **kwargs)
    items = [x0[i].clone().requires_grad_() for i in range(shape[0])]
    opt_items = cls(items, param_ndim=None, **kwargs)
    for g in grads:
        set_grads([batch], [g])
        opt_batch.step()
        set_grads(items, list(g))
        opt_items.step()
        stacked = torch.stack([p.detach() for p in items])
        torch.testing.assert_close(batch.detach(), stacked, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(
            batch.grad, torch.stack([p.grad for p in items]), rtol=1e-6, atol=0
        )


# --------------------------------------------------------------------------- #
# chaining == the transforms in sequence
# --------------------------------------------------------------------------- #
@KEEPS_NOTHING
@pytest.mark.parametrize("order", ["topq_then_l2", "l2_then_topq"])
@given(data=st.data())
def test_chain_equals_transforms_in_sequence(order, data):
    shape = data.draw(batch_shapes(), label="shape")
    param_ndim = data.draw(st.sampled_from([None, -1, 0, 1]), label="param_ndim")
    q = data.draw(st.floats(0.0, 1.0), label="q")
    lr = data.draw(st.floats(0.01, 2.0), label="lr")
    scale = data.draw(st.sampled_from([1.0, 0.5, 3.0]), label="chain grad_scale")
    x0 = data.draw(tensors(shape), label="x0")
    grads = [data.draw(tensors(shape), label="grad") for _ in range(data.draw(st.integers(1, 3)))]

    members = [partial(TopQGradientOptimizer, q=q), partial(L2NormedGradientOptim)]
    if order == "l2_then_topq":
        members.reverse()
    x = x0.clone().requires_grad_()
    chain = ChainedParamTransformingOptimizer(
        *members, params=[x], lr=lr, param_ndim=param_ndim, grad_scale=scale
    )
    expected = x0.clone().to(torch.float64)
    for g in grads:
        x.grad = g.clone()
        chain.step()
        rows = rows_of(g, param_ndim).to(torch.float32)  # (N, n) copy in the grad's dtype
        if order == "topq_then_l2":
            F.normalize_(F.topq_(rows, q), 2)
        else:
            F.topq_(F.normalize_(rows, 2), q)
        step_grad = rows.reshape(shape) * scale
        torch.testing.assert_close(x.grad, step_grad, rtol=1e-6, atol=0)
        expected -= lr * step_grad.to(torch.float64)
        torch.testing.assert_close(x.detach().to(torch.float64), expected, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- #
# state_dict round-trip
# --------------------------------------------------------------------------- #
def _build_l1q_adam(params, seed):
    gen = torch.Generator().manual_seed(seed)
    opt = L1qNormedGradientOptim(
        params, InnerOpt=torch.optim.Adam, q=0.5, dq=0.45, generator=gen, lr=0.05
    )
    return opt, [gen]


def _build_l1q_fw(params, seed):
    gen = torch.Generator().manual_seed(seed)
    return L1qFrankWolfe(params, q=0.5, dq=0.45, epsilon=3.0, generator=gen), [gen]


def _build_two_groups(params, seed):
    g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 100)
    opt = L1ProjectedOptim(
        [
            {"params": params[:1], "generator": g1},
            {"params": params[1:], "generator": g2, "q": 0.2, "epsilon": 0.5},
        ],
        InnerOpt=torch.optim.Adam,
        q=0.6,
        dq=0.3,
        epsilon=2.0,
        lr=0.05,
    )
    return opt, [g1, g2]


def _build_chain_adam(params, seed):
    gen = torch.Generator().manual_seed(seed)
    opt = ChainedParamTransformingOptimizer(
        partial(TopQGradientOptimizer, q=0.5, dq=0.45, generator=gen),
        partial(L2NormedGradientOptim),
        params=params,
        InnerOpt=torch.optim.Adam,
        lr=0.05,
    )
    return opt, [gen]


STATE_CASES = {
    "L1qNormed+Adam": _build_l1q_adam,
    "L1qFrankWolfe": _build_l1q_fw,
    "L1Projected+Adam, two groups": _build_two_groups,
    "Chain(TopQ, L2Normed)+Adam": _build_chain_adam,
}


def _generators_of(opt):
    groups = [g for m in getattr(opt, "members", ()) for g in m.param_groups] + opt.param_groups
    return [g["generator"] for g in groups if "generator" in g]


@pytest.mark.parametrize("via", ["deepcopy", "torch.save"])
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("case", sorted(STATE_CASES))
def test_state_dict_round_trip_reproduces_next_steps(case, k, via):
    build = STATE_CASES[case]
    torch.manual_seed(0)
    init = [torch.randn(3, 16), torch.randn(2, 8)]
    grads = [[torch.randn(3, 16), torch.randn(2, 8)] for _ in range(k + 4)]

    params = [t.clone().requires_grad_() for t in init]
    opt, _ = build(params, seed=1)
    for t in range(k):
        set_grads(params, grads[t])
        opt.step()

    saved = opt.state_dict()
    if via == "torch.save":
        buffer = io.BytesIO()
        torch.save(saved, buffer)
        buffer.seek(0)
        saved = torch.load(buffer, weights_only=True)
    else:
        saved = copy.deepcopy(saved)

    clones = [p.detach().clone().requires_grad_() for p in params]
    fresh, fresh_generators = build(clones, seed=12345)  # different generator objects and seeds
    control_params = [p.detach().clone().requires_grad_() for p in params]
    control, _ = build(control_params, seed=12345)  # same, but nothing loaded
    fresh.load_state_dict(saved)
    # the loaded optimizer keeps its own generator objects (their states were restored)
    assert all(
        any(g is own for own in fresh_generators) for g in _generators_of(fresh)
    ), "load_state_dict replaced the live generator objects"

    differs = False
    for t in range(k, k + 4):
        set_grads(params, grads[t])
        opt.step()
        set_grads(clones, grads[t])
        fresh.step()
        set_grads(control_params, grads[t])
        control.step()
        for p, c, u in zip(params, clones, control_params):
            assert torch.equal(p, c), f"step {t}: loaded optimizer diverged"
            assert torch.equal(p.grad, c.grad)
            differs |= not torch.equal(p, u)
    # sanity: without the loaded state (RNG, moments, step counts) the steps differ
    assert differs


def test_state_dict_is_weights_only_loadable_and_generator_free():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 5, requires_grad=True)
    opt = L1qFrankWolfe([x], q=0.5, dq=0.2, epsilon=1.0, generator=gen)
    x.grad = torch.randn(4, 5)
    opt.step()
    state = opt.state_dict()

    def walk(obj):
        assert not isinstance(obj, torch.Generator)
        if isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v)

    walk(state)
    # the live optimizer still holds the generator itself
    assert opt.param_groups[0]["generator"] is gen


def test_load_state_dict_leaves_the_default_generator_alone():
    x = torch.randn(4, 6, requires_grad=True)
    opt = TopQGradientOptimizer([x], q=0.5, dq=0.3, lr=0.1)  # generator: torch.default_generator
    x.grad = torch.randn(4, 6)
    opt.step()
    saved = copy.deepcopy(opt.state_dict())
    torch.manual_seed(77)
    before = torch.get_rng_state()
    opt.load_state_dict(saved)
    assert torch.equal(torch.get_rng_state(), before)
    assert opt.param_groups[0]["generator"] is torch.default_generator


# --------------------------------------------------------------------------- #
# closure semantics
# --------------------------------------------------------------------------- #
class RecordingL2Normed(L2NormedGradientOptim):
    """Records every pre-step transform: the gradient norms it leaves behind."""

    def __init__(self, *args, **kwargs):
        self.transformed_norms: list[list[float]] = []
        super().__init__(*args, **kwargs)

    def _pre_step_transform_(self, param, optim_group):
        super()._pre_step_transform_(param, optim_group)
        self.transformed_norms.append(F.row_norms(param.grad, 2).tolist())


def _quadratic_problem(seed=0, shape=(3, 6)):
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(shape, generator=g)
    weights = torch.rand(shape, generator=g) + 0.5
    x0 = torch.randn(shape, generator=g)
    return target, weights, x0


@pytest.mark.parametrize("param_ndim", [None, -1])
def test_lbfgs_sees_transformed_gradient_at_every_evaluation(param_ndim):
    target, weights, x0 = _quadratic_problem()
    x = x0.clone().requires_grad_()
    opt = RecordingL2Normed(
        [x], InnerOpt=torch.optim.LBFGS, lr=0.5, max_iter=6, param_ndim=param_ndim
    )
    losses = []

    def closure():
        opt.zero_grad()
        loss = (weights * (x - target) ** 2).sum()
        loss.backward()
        losses.append(loss)
        return loss

    returned = opt.step(closure)
    assert len(losses) > 1  # LBFGS evaluated several times...
    assert len(opt.transformed_norms) == len(losses)  # ...and every evaluation was transformed
    assert returned is losses[0]  # LBFGS returns the first evaluation's loss
    for norms in opt.transformed_norms:
        torch.testing.assert_close(torch.tensor(norms), torch.ones(len(norms)))
    # the gradient left by the last evaluation is the transformed one
    last_norms = F.row_norms(rows_of(x.grad, param_ndim), 2)
    torch.testing.assert_close(last_norms, torch.ones_like(last_norms))

    # LBFGS took exactly the steps of a plain LBFGS whose closure normalizes by hand
    y = x0.clone().requires_grad_()
    plain = torch.optim.LBFGS([y], lr=0.5, max_iter=6)

    def normalizing_closure():
        plain.zero_grad()
        loss = (weights * (y - target) ** 2).sum()
        loss.backward()
        with torch.no_grad():
            rows = y.grad.view(1, -1) if param_ndim is None else y.grad
            rows /= torch.linalg.vector_norm(rows.flatten(1), dim=1).clamp_min(F.TINY).view(-1, 1)
        return loss

    plain.step(normalizing_closure)
    torch.testing.assert_close(x.detach(), y.detach(), rtol=1e-6, atol=1e-6)


def test_lbfgs_closure_with_grad_scale_and_bias():
    target, weights, x0 = _quadratic_problem(seed=3)
    x = x0.clone().requires_grad_()
    opt = L2NormedGradientOptim(
        [x],
        InnerOpt=torch.optim.LBFGS,
        lr=0.3,
        max_iter=4,
        param_ndim=None,
        grad_scale=2.0,
        grad_bias=0.1,
    )

    def closure():
        opt.zero_grad()
        loss = (weights * (x - target) ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    y = x0.clone().requires_grad_()
    plain = torch.optim.LBFGS([y], lr=0.3, max_iter=4)

    def by_hand():
        plain.zero_grad()
        loss = (weights * (y - target) ** 2).sum()
        loss.backward()
        with torch.no_grad():
            y.grad.div_(y.grad.norm()).mul_(2.0).add_(0.1)
        return loss

    plain.step(by_hand)
    torch.testing.assert_close(x.detach(), y.detach(), rtol=1e-6, atol=1e-6)


CLOSURE_CASES = {
    "L2Normed+SGD": lambda ps: L2NormedGradientOptim(ps, lr=0.1),
    "L1q+SGD": lambda ps: L1qNormedGradientOptim(ps, q=0.5, lr=0.1),
    "L2Projected+LBFGS": lambda ps: L2ProjectedOptim(
        ps, InnerOpt=torch.optim.LBFGS, epsilon=1.0, lr=0.1, max_iter=3
    ),
    "L1Projected+SGD": lambda ps: L1ProjectedOptim(ps, q=0.5, epsilon=0.5, lr=1.0),
    "LinfProjected+SGD": lambda ps: LinfProjectedOptim(ps, epsilon=0.3, lr=0.5),
    "ClampedParameter+SGD": lambda ps: ClampedParameterOptimizer(
        ps, clamp_min=-0.2, clamp_max=0.2, lr=0.5
    ),
    "L1FrankWolfe": lambda ps: L1FrankWolfe(ps, epsilon=1.0),
    "L1qFrankWolfe": lambda ps: L1qFrankWolfe(ps, q=0.5, epsilon=1.0),
    "FrankWolfe": lambda ps: FrankWolfe(ps, lmo_scaling_factor=0.5),
    "Chain": lambda ps: ChainedParamTransformingOptimizer(
        partial(TopQGradientOptimizer, q=0.5), L2NormedGradientOptim, params=ps, lr=0.1
    ),
}


@pytest.mark.parametrize("name", sorted(CLOSURE_CASES))
def test_step_with_closure_under_no_grad(name):
    """step(closure) returns the closure's loss, works under torch.no_grad(), and (for
    single-evaluation inner optimizers) equals backward() then step(): same pre- and
    post-step transforms."""
    target, weights, x0 = _quadratic_problem(seed=1)
    results = {}
    modes = ["closure", "closure under no_grad"]
    if "LBFGS" not in name:  # LBFGS needs a closure
        modes.append("no closure")
    for mode in modes:
        x = x0.clone().requires_grad_()
        opt = CLOSURE_CASES[name]([x])
        losses = []

        def closure():
            opt.zero_grad()
            loss = (weights * (x - target) ** 2).sum()
            loss.backward()
            losses.append(loss)
            return loss

        if mode == "no closure":
            closure()
            assert opt.step() is None
        elif mode == "closure under no_grad":
            with torch.no_grad():
                returned = opt.step(closure)
            assert returned is losses[0]
        else:
            returned = opt.step(closure)
            assert returned is losses[0]
        assert x.grad is not None
        results[mode] = x.detach().clone()
    assert not torch.equal(results["closure"], x0)
    assert torch.equal(results["closure"], results["closure under no_grad"])
    if "no closure" in results:
        assert torch.equal(results["closure"], results["no closure"])


class BareSGD(torch.optim.Optimizer):
    """A minimal inner optimizer that calls the closure as is (no torch.enable_grad of its own)."""

    def __init__(self, params, lr=0.1):
        super().__init__(params, dict(lr=lr))

    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.data.add_(p.grad, alpha=-group["lr"])
        return loss


@pytest.mark.parametrize("no_grad", [False, True])
def test_closure_is_evaluated_with_grad_enabled(no_grad):
    """The PTO itself runs the closure under torch.enable_grad(), even when the inner
    optimizer does not and step() is called under torch.no_grad()."""
    x = torch.tensor([[3.0, 4.0]], requires_grad=True)
    opt = L2NormedGradientOptim([x], InnerOpt=BareSGD, lr=1.0)
    seen = []

    def closure():
        seen.append(torch.is_grad_enabled())
        opt.zero_grad()
        loss = (x * torch.tensor([[6.0, 8.0]])).sum()
        loss.backward()
        return loss

    if no_grad:
        with torch.no_grad():
            loss = opt.step(closure)
    else:
        loss = opt.step(closure)
    assert seen == [True]
    assert loss.item() == 50.0
    torch.testing.assert_close(x.detach(), torch.tensor([[2.4, 3.2]]))


def test_step_without_closure_returns_none():
    x = torch.ones(3, requires_grad=True)
    opt = L2NormedGradientOptim([x], lr=0.1)
    x.grad = torch.ones(3)
    assert opt.step() is None


def test_closure_transform_applied_once_per_evaluation_with_sgd():
    x = torch.tensor([[3.0, 4.0]], requires_grad=True)
    opt = RecordingL2Normed([x], lr=1.0)

    def closure():
        opt.zero_grad()
        loss = (x * torch.tensor([[6.0, 8.0]])).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() == 50.0
    assert len(opt.transformed_norms) == 1
    torch.testing.assert_close(x.detach(), torch.tensor([[2.4, 3.2]]))


# --------------------------------------------------------------------------- #
# every dtype, every class, on every device
# --------------------------------------------------------------------------- #
DTYPE_CASES = {
    "ParamTransformingOptimizer": lambda ps: ParamTransformingOptimizer(ps, lr=0.1),
    "SignedGradientOptim": lambda ps: SignedGradientOptim(ps, lr=0.1),
    "L1NormedGradientOptim": lambda ps: L1NormedGradientOptim(ps, lr=0.5),
    "L2NormedGradientOptim": lambda ps: L2NormedGradientOptim(ps, lr=0.5),
    "LinfNormedGradientOptim": lambda ps: LinfNormedGradientOptim(ps, lr=0.5),
    "TopQGradientOptimizer": lambda ps: TopQGradientOptimizer(ps, q=0.5, lr=0.1),
    "L1qNormedGradientOptim": lambda ps: L1qNormedGradientOptim(ps, q=0.5, lr=0.5),
    "ClampedGradientOptimizer": lambda ps: ClampedGradientOptimizer(
        ps, clamp_min=-1.0, clamp_max=0.5, lr=0.1
    ),
    "ClampedParameterOptimizer": lambda ps: ClampedParameterOptimizer(
        ps, clamp_min=-0.5, clamp_max=0.75, lr=0.1
    ),
    "L1ProjectedOptim": lambda ps: L1ProjectedOptim(ps, epsilon=2.0, q=0.5, lr=0.5),
    "L2ProjectedOptim": lambda ps: L2ProjectedOptim(ps, epsilon=1.0, lr=0.5),
    "LinfProjectedOptim": lambda ps: LinfProjectedOptim(ps, epsilon=0.5, lr=0.1),
    "FrankWolfe": lambda ps: FrankWolfe(ps, lmo_scaling_factor=0.5),
    "L1FrankWolfe": lambda ps: L1FrankWolfe(ps, epsilon=1.0),
    "L2FrankWolfe": lambda ps: L2FrankWolfe(ps, epsilon=1.0),
    "LinfFrankWolfe": lambda ps: LinfFrankWolfe(ps, epsilon=1.0),
    "L1qFrankWolfe": lambda ps: L1qFrankWolfe(ps, q=0.5, epsilon=1.0),
    "ChainedParamTransformingOptimizer": lambda ps: ChainedParamTransformingOptimizer(
        partial(TopQGradientOptimizer, q=0.5),
        partial(L2NormedGradientOptim),
        partial(ClampedParameterOptimizer, clamp_min=-1.0, clamp_max=1.0),
        params=ps,
        lr=0.5,
    ),
}


def _dtype_problem():
    """Values exact in every float dtype: params in multiples of 1/8 within [-2, 2] and
    gradients with pairwise-distinct magnitudes (k/4), so that the selections are the same."""
    g = torch.Generator().manual_seed(0)
    x0 = (torch.randint(-16, 17, (3, 8), generator=g) / 8.0).float()
    grads = []
    for _ in range(2):
        mags = torch.stack([torch.randperm(8, generator=g) + 1 for _ in range(3)]) / 4.0
        signs = torch.randint(0, 2, (3, 8), generator=g) * 2 - 1
        grads.append((mags * signs).float())
    return x0, grads


def _run_dtype_case(name, dtype, device):
    x0, grads = _dtype_problem()
    x = x0.to(device=device, dtype=dtype).requires_grad_()
    opt = DTYPE_CASES[name]([x])
    for g in grads:
        x.grad = g.to(device=device, dtype=dtype)
        opt.step()
    return x


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("name", sorted(DTYPE_CASES))
def test_every_dtype_on_every_device(name, dtype, device):
    x = _run_dtype_case(name, dtype, device)
    assert x.dtype == dtype and x.device.type == device.type
    assert x.grad.dtype == dtype and x.grad.device.type == device.type
    assert x.isfinite().all() and x.grad.isfinite().all()
    reference = _run_dtype_case(name, torch.float32, device)
    if dtype in (torch.float16, torch.bfloat16):
        tol = dict(rtol=1e-2, atol=1e-2)
    else:
        tol = dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.detach().float(), reference.detach(), **tol)
    # the problem is not trivial: the parameter moved
    assert not torch.equal(reference.detach().cpu(), _dtype_problem()[0])


# --------------------------------------------------------------------------- #
# non-contiguous parameters and gradients
# --------------------------------------------------------------------------- #
def _transposed(t: torch.Tensor) -> torch.Tensor:
    """A non-contiguous tensor equal to ``t`` (2-d): a transposed view of a contiguous copy."""
    return t.t().contiguous().t()


def _strided(t: torch.Tensor) -> torch.Tensor:
    """A non-contiguous tensor equal to ``t``: every other column of a wider buffer."""
    wide = torch.full((*t.shape[:-1], 2 * t.shape[-1]), float("nan"))
    wide[..., ::2] = t
    return wide[..., ::2]


NONCONTIG_CASES = {
    "L1qNormedGradientOptim": lambda ps, nd: L1qNormedGradientOptim(
        ps, q=0.4, lr=0.5, param_ndim=nd
    ),
    "L1ProjectedOptim": lambda ps, nd: L1ProjectedOptim(
        ps, q=0.4, epsilon=1.5, lr=0.5, grad_scale=2.0, param_ndim=nd
    ),
}


@pytest.mark.parametrize(
    "layout", ["param transposed, grad strided", "param strided, grad transposed"]
)
@pytest.mark.parametrize("param_ndim", [-1, None, 0, 1])
@pytest.mark.parametrize("name", sorted(NONCONTIG_CASES))
def test_non_contiguous_param_and_grad_match_contiguous_twin(name, param_ndim, layout):
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(5, 6, generator=g)
    grads = [torch.randn(5, 6, generator=g) for _ in range(3)]
    make_param, make_grad = (
        (_transposed, _strided)
        if layout.startswith("param transposed")
        else (_strided, _transposed)
    )

    twin = x0.clone().requires_grad_()
    nc = make_param(x0).requires_grad_()
    assert nc.is_leaf and not nc.is_contiguous() and torch.equal(nc, twin)
    storage = nc.data_ptr()
    opt_twin = NONCONTIG_CASES[name]([twin], param_ndim)
    opt_nc = NONCONTIG_CASES[name]([nc], param_ndim)
    for gr in grads:
        twin.grad = gr.clone()
        nc.grad = make_grad(gr)
        assert not nc.grad.is_contiguous()
        opt_twin.step()
        opt_nc.step()
        assert torch.equal(nc.grad, twin.grad)
        assert torch.equal(nc.detach(), twin.detach())
    assert nc.data_ptr() == storage and not nc.is_contiguous()
    assert not torch.equal(twin.detach(), x0)


@pytest.mark.parametrize("param_ndim", [-1, 1, None])
def test_non_contiguous_3d_permuted_param(param_ndim):
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(2, 3, 4, generator=g)
    gr = torch.randn(2, 3, 4, generator=g)
    twin = x0.clone().requires_grad_()
    nc = x0.permute(2, 0, 1).contiguous().permute(1, 2, 0).requires_grad_()
    assert not nc.is_contiguous() and torch.equal(nc, x0)
    opt_twin = L1ProjectedOptim([twin], q=0.5, epsilon=1.0, lr=1.0, param_ndim=param_ndim)
    opt_nc = L1ProjectedOptim([nc], q=0.5, epsilon=1.0, lr=1.0, param_ndim=param_ndim)
    twin.grad = gr.clone()
    nc.grad = gr.permute(2, 0, 1).contiguous().permute(1, 2, 0)
    opt_twin.step()
    opt_nc.step()
    assert torch.equal(nc.detach(), twin.detach())
    assert torch.equal(nc.grad, twin.grad)
    assert not torch.equal(twin.detach(), x0)

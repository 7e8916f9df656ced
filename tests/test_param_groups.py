"""Per-param-group options, InnerOpt forms, state mirroring, schedulers.

Every option is stored per param group: the constructor value is the default,
a param-group dict overrides it, and so does ``add_param_group`` later.
"""

import copy
import warnings
from functools import partial

import pytest
import torch
from torch.testing import assert_close

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

TINY = torch.finfo(torch.float32).tiny
ATOL = 1e-4


def close(actual, expected, atol=ATOL):
    assert_close(actual.detach(), torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


def topq_chain(params, **kwargs):
    return ChainedParamTransformingOptimizer(
        partial(TopQGradientOptimizer, q=0.5),
        partial(ClampedGradientOptimizer, clamp_max=2.0),
        params=params,
        **kwargs,
    )


# --------------------------------------------------------------------------- #
# every option of every class, generically:
#   (id, factory, base kwargs, option, a, b, steps)
# a and b must give different results on X0 / GRAD.
# --------------------------------------------------------------------------- #
X0 = [[0.2, -0.1, 0.3], [0.1, 0.0, -0.2]]
GRAD = [[3.0, -4.0, 1.0], [0.5, 2.0, -1.0]]
GRAD2 = [[-1.0, 0.5, 2.0], [1.0, -3.0, 0.25]]  # the second step's gradient

OPTION_CASES = [
    ("PTO", ParamTransformingOptimizer, {"lr": 0.1}, "grad_scale", 2.0, 0.5, 1),
    ("PTO", ParamTransformingOptimizer, {"lr": 0.1}, "grad_bias", 0.5, -1.0, 1),
    ("Signed", SignedGradientOptim, {"lr": 0.1}, "grad_scale", 1.0, 3.0, 1),
    ("Signed", SignedGradientOptim, {"lr": 0.1}, "grad_bias", 0.0, 0.25, 1),
    ("L1Normed", L1NormedGradientOptim, {"lr": 0.1}, "param_ndim", None, 1, 1),
    ("L1Normed", L1NormedGradientOptim, {"lr": 0.1}, "grad_scale", 1.0, 3.0, 1),
    ("L1Normed", L1NormedGradientOptim, {"lr": 0.1}, "grad_bias", 0.0, 0.25, 1),
    ("L1Normed", L1NormedGradientOptim, {"lr": 0.1}, "div_by_zero_eps", TINY, 100.0, 1),
    ("L2Normed", L2NormedGradientOptim, {"lr": 0.1}, "param_ndim", None, 0, 1),
    ("L2Normed", L2NormedGradientOptim, {"lr": 0.1}, "div_by_zero_eps", 1e-3, 10.0, 1),
    ("LinfNormed", LinfNormedGradientOptim, {"lr": 0.1}, "param_ndim", -1, None, 1),
    ("LinfNormed", LinfNormedGradientOptim, {"lr": 0.1}, "div_by_zero_eps", TINY, 10.0, 1),
    ("TopQ", TopQGradientOptimizer, {"lr": 0.1, "param_ndim": None}, "q", 0.25, 0.75, 1),
    ("TopQ", TopQGradientOptimizer, {"lr": 0.1, "q": 0.5}, "param_ndim", None, 1, 1),
    ("TopQ", TopQGradientOptimizer, {"lr": 0.1, "q": 0.5}, "grad_scale", 1.0, -2.0, 1),
    ("TopQ", TopQGradientOptimizer, {"lr": 0.1, "q": 0.5}, "grad_bias", 0.0, 1.0, 1),
    ("L1qNormed", L1qNormedGradientOptim, {"lr": 0.1, "param_ndim": None}, "q", 0.3, 0.7, 1),
    ("L1qNormed", L1qNormedGradientOptim, {"lr": 0.1, "q": 0.5}, "param_ndim", None, 1, 1),
    ("L1qNormed", L1qNormedGradientOptim, {"lr": 0.1, "q": 0.5}, "div_by_zero_eps", TINY, 5.0, 1),
    ("L1qNormed", L1qNormedGradientOptim, {"lr": 0.1, "q": 0.5}, "grad_scale", 1.8, 1.0, 1),
    ("ClampedGradient", ClampedGradientOptimizer, {"lr": 0.1, "clamp_max": 5.0}, "clamp_min", -1.0, -0.1, 1),
    ("ClampedGradient", ClampedGradientOptimizer, {"lr": 0.1, "clamp_min": -5.0}, "clamp_max", 2.0, 0.5, 1),
    ("ClampedGradient", ClampedGradientOptimizer, {"lr": 0.1, "clamp_min": -1.0}, "grad_scale", 1.0, 2.0, 1),
    ("ClampedParameter", ClampedParameterOptimizer, {"lr": 0.1, "clamp_max": 5.0}, "clamp_min", -0.5, 0.0, 1),
    ("ClampedParameter", ClampedParameterOptimizer, {"lr": 0.1, "clamp_min": -5.0}, "clamp_max", 1.0, 0.15, 1),
    ("L2Projected", L2ProjectedOptim, {"lr": 0.1, "param_ndim": None}, "epsilon", 0.5, 0.1, 1),
    ("L2Projected", L2ProjectedOptim, {"lr": 0.1, "epsilon": 0.2}, "param_ndim", None, 1, 1),
    ("L2Projected", L2ProjectedOptim, {"lr": 0.1, "epsilon": 5.0}, "div_by_zero_eps", TINY, 10.0, 1),
    ("LinfProjected", LinfProjectedOptim, {"lr": 0.1}, "epsilon", 0.5, 0.05, 1),
    ("LinfProjected", LinfProjectedOptim, {"lr": 0.1, "epsilon": 0.5}, "grad_scale", 1.0, 2.0, 1),
    ("L1Projected", L1ProjectedOptim, {"lr": 0.1, "q": 0.5, "param_ndim": None}, "epsilon", 1.0, 0.1, 1),
    ("L1Projected", L1ProjectedOptim, {"lr": 0.1, "epsilon": 1.0, "param_ndim": None}, "q", 0.0, 0.5, 1),
    ("L1Projected", L1ProjectedOptim, {"lr": 0.1, "epsilon": 0.3, "q": 0.5}, "param_ndim", None, 1, 1),
    ("L1Projected", L1ProjectedOptim, {"lr": 0.1, "epsilon": 5.0, "q": 0.5}, "div_by_zero_eps", TINY, 6.0, 1),
    ("L1FrankWolfe", L1FrankWolfe, {"param_ndim": None}, "epsilon", 1.8, 0.5, 1),
    ("L1FrankWolfe", L1FrankWolfe, {"epsilon": 1.0}, "lr", 2.0, 1.0, 2),
    ("L1FrankWolfe", L1FrankWolfe, {"epsilon": 1.0, "lr": 0.5}, "use_default_lr_schedule", True, False, 1),
    ("L1FrankWolfe", L1FrankWolfe, {"epsilon": 1.0}, "param_ndim", None, 1, 1),
    ("L1FrankWolfe", L1FrankWolfe, {"epsilon": 1.0, "lr": 0.5}, "div_by_zero_eps", TINY, 1.0, 1),
    ("L2FrankWolfe", L2FrankWolfe, {"param_ndim": None}, "epsilon", 1.8, 0.5, 1),
    ("L2FrankWolfe", L2FrankWolfe, {"epsilon": 1.0}, "param_ndim", None, 1, 1),
    ("L2FrankWolfe", L2FrankWolfe, {"epsilon": 1.0}, "div_by_zero_eps", TINY, 10.0, 1),
    ("LinfFrankWolfe", LinfFrankWolfe, {}, "epsilon", 1.8, 0.5, 1),
    ("LinfFrankWolfe", LinfFrankWolfe, {"epsilon": 1.0}, "lr", 2.0, 0.5, 2),
    ("LinfFrankWolfe", LinfFrankWolfe, {"epsilon": 1.0, "lr": 0.25}, "use_default_lr_schedule", True, False, 2),
    ("L1qFrankWolfe", L1qFrankWolfe, {"epsilon": 1.0, "param_ndim": None}, "q", 0.3, 0.8, 1),
    ("L1qFrankWolfe", L1qFrankWolfe, {"q": 0.5}, "epsilon", 1.8, 0.5, 1),
    ("L1qFrankWolfe", L1qFrankWolfe, {"epsilon": 1.0, "q": 0.5}, "param_ndim", None, 1, 1),
    ("L1qFrankWolfe", L1qFrankWolfe, {"epsilon": 1.0, "q": 0.5}, "lr", 2.0, 1.0, 2),
    ("L1qFrankWolfe", L1qFrankWolfe, {"epsilon": 1.0, "q": 0.5, "lr": 0.5}, "div_by_zero_eps", TINY, 1.0, 1),
    ("FrankWolfe", FrankWolfe, {}, "lr", 2.0, 1.0, 2),
    ("FrankWolfe", FrankWolfe, {}, "lmo_scaling_factor", 1.0, 2.0, 1),
    ("FrankWolfe", FrankWolfe, {"lr": 0.5}, "use_default_lr_schedule", True, False, 1),
    ("FrankWolfe", FrankWolfe, {"lr": 0.5}, "div_by_zero_eps", TINY, 1.0, 1),
    ("Chain", topq_chain, {"lr": 0.1}, "param_ndim", None, 1, 1),
    ("Chain", topq_chain, {"lr": 0.1}, "grad_scale", 1.0, 2.0, 1),
    ("Chain", topq_chain, {"lr": 0.1}, "grad_bias", 0.0, 0.5, 1),
]
OPTION_IDS = [f"{c[0]}-{c[3]}" for c in OPTION_CASES]


def _run(optim, params, steps):
    for step in range(steps):
        optim.zero_grad()
        for p in params:
            p.grad = torch.tensor(GRAD2 if step % 2 else GRAD)
        optim.step()
    return [p.detach().clone() for p in params]


def _fresh(n):
    return [torch.tensor(X0, requires_grad=True) for _ in range(n)]


@pytest.mark.parametrize("name, factory, base, option, a, b, steps", OPTION_CASES, ids=OPTION_IDS)
def test_option_is_per_group(name, factory, base, option, a, b, steps):
    # references: one group, the option given to the constructor
    (ra,) = _run(factory(xa := _fresh(1), **{**base, option: a}), xa, steps)
    (rb,) = _run(factory(xb := _fresh(1), **{**base, option: b}), xb, steps)
    assert not torch.allclose(ra, rb, atol=1e-6), "the option must change the result"

    # constructor value a is the default; a group dict overrides it with b
    x1, x2 = _fresh(2)
    optim = factory([{"params": [x1]}, {"params": [x2], option: b}], **{**base, option: a})
    assert optim.param_groups[0][option] == a
    assert optim.param_groups[1][option] == b
    r1, r2 = _run(optim, [x1, x2], steps)
    assert_close(r1, ra)
    assert_close(r2, rb)

    # the reverse: constructor value b, override a
    x1, x2 = _fresh(2)
    optim = factory([{"params": [x1], option: a}, {"params": [x2]}], **{**base, option: b})
    r1, r2 = _run(optim, [x1, x2], steps)
    assert_close(r1, ra)
    assert_close(r2, rb)

    # add_param_group: a group with its own override, and one taking the default
    x1, x2, x3 = _fresh(3)
    optim = factory([x1], **{**base, option: a})
    optim.add_param_group({"params": [x2], option: b})
    optim.add_param_group({"params": x3})
    assert [g[option] for g in optim.param_groups] == [a, b, a]
    r1, r2, r3 = _run(optim, [x1, x2, x3], steps)
    assert_close(r1, ra)
    assert_close(r2, rb)
    assert_close(r3, ra)


# --------------------------------------------------------------------------- #
# the same, with hand-computed numbers
# --------------------------------------------------------------------------- #
def test_q_per_group_numbers():
    x, y, z = (torch.ones(4, requires_grad=True) for _ in range(3))
    optim = TopQGradientOptimizer([{"params": [x]}, {"params": [y], "q": 0.75}], q=0.25, lr=1.0, param_ndim=None)
    optim.add_param_group({"params": [z], "q": 0.5})
    for p in (x, y, z):
        p.grad = torch.tensor([1.0, -2.0, 3.0, 4.0])
    optim.step()
    close(x.grad, [0.0, -2.0, 3.0, 4.0])
    close(y.grad, [0.0, 0.0, 0.0, 4.0])
    close(z.grad, [0.0, 0.0, 3.0, 4.0])
    close(x, [1.0, 3.0, -2.0, -3.0])
    close(y, [1.0, 1.0, 1.0, -3.0])
    close(z, [1.0, 1.0, -2.0, -3.0])


def test_epsilon_per_group_numbers():
    x, y = (torch.tensor([-1.0, 1.0], requires_grad=True) for _ in range(2))
    optim = L2ProjectedOptim([{"params": [x]}, {"params": [y], "epsilon": 0.3}], epsilon=0.8, lr=1.0, param_ndim=None)
    x.grad, y.grad = torch.tensor([2.0, 2.0]), torch.tensor([2.0, 2.0])
    optim.step()
    close(x, [-0.7885, 0.1353])
    close(y, [-0.2957, 0.0507])  # [-1.7071, 0.2929] * 0.3 / sqrt(3)


def test_frank_wolfe_epsilon_per_group_numbers():
    x, y = (torch.tensor([1.0, 1.0], requires_grad=True) for _ in range(2))
    optim = L1FrankWolfe([{"params": [x]}, {"params": [y], "epsilon": 0.5}], epsilon=1.8, param_ndim=None)
    x.grad, y.grad = torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0])
    optim.step()
    close(x, [0.0, -1.8])
    close(y, [0.0, -0.5])
    assert optim.param_groups[1]["lmo_scaling_factor"] == 0.5


def test_l1q_frank_wolfe_q_per_group_numbers():
    x, y = (torch.ones(3, requires_grad=True) for _ in range(2))
    optim = L1qFrankWolfe([{"params": [x]}, {"params": [y], "q": 0.7}], q=0.3, epsilon=1.8, param_ndim=None)
    x.grad, y.grad = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([0.0, 1.0, 2.0])
    optim.step()
    close(x, [0.0, -0.9, -0.9])
    close(y, [0.0, 0.0, -1.8])  # k = round(0.3 * 3) = 1


def test_param_ndim_per_group_numbers():
    x, y = (torch.zeros(2, 2, requires_grad=True) for _ in range(2))
    optim = L2NormedGradientOptim([{"params": [x]}, {"params": [y], "param_ndim": 1}], param_ndim=None, lr=1.0)
    for p in (x, y):
        p.grad = torch.tensor([[3.0, 4.0], [6.0, 8.0]])
    optim.step()
    close(x.grad, [[0.2683, 0.3578], [0.5367, 0.7155]])  # / sqrt(125)
    close(y.grad, [[0.6, 0.8], [0.6, 0.8]])


def test_grad_scale_and_bias_per_group_numbers():
    x, y = (torch.ones(3, requires_grad=True) for _ in range(2))
    optim = L1qNormedGradientOptim(
        [{"params": [x]}, {"params": [y], "grad_scale": 0.6, "grad_bias": 0.1}],
        q=0.3, grad_scale=1.8, lr=1.0, param_ndim=None,
    )
    x.grad, y.grad = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([0.0, 1.0, 2.0])
    optim.step()
    close(x.grad, [0.0, 0.9, 0.9])
    close(y.grad, [0.1, 0.4, 0.4])  # scale, then bias
    close(y, [0.9, 0.6, 0.6])


def test_grad_scale_applied_before_bias():
    x = torch.zeros(2, requires_grad=True)
    optim = SignedGradientOptim([x], grad_scale=3.0, grad_bias=-0.5, lr=1.0)
    x.grad = torch.tensor([-2.0, 20.0])
    optim.step()
    close(x.grad, [-3.5, 2.5])  # sign -> *3 -> -0.5 (not (sign - 0.5) * 3 = [-4.5, 1.5])


def test_clamp_bounds_per_group_numbers():
    x, y, z = (torch.ones(2, requires_grad=True) for _ in range(3))
    optim = ClampedGradientOptimizer(
        [{"params": [x]}, {"params": [y], "clamp_min": -0.25, "clamp_max": 0.5}],
        clamp_min=-1.0, clamp_max=3.0, lr=1.0,
    )
    optim.add_param_group({"params": [z], "clamp_max": None})  # unbounded above, min from defaults
    for p in (x, y, z):
        p.grad = torch.tensor([-0.5, 10.0])
    optim.step()
    close(x.grad, [-0.5, 3.0])
    close(y.grad, [-0.25, 0.5])
    close(z.grad, [-0.5, 10.0])
    close(x, [1.5, -2.0])


def test_clamped_parameter_per_group_numbers():
    x, y = (torch.ones(2, requires_grad=True) for _ in range(2))
    optim = ClampedParameterOptimizer([{"params": [x]}, {"params": [y], "clamp_max": 1.2}],
                                      clamp_min=-1.0, clamp_max=3.0, lr=1.0)
    x.grad, y.grad = torch.tensor([0.5, -10.0]), torch.tensor([0.5, -10.0])
    optim.step()
    close(x, [0.5, 3.0])
    close(y, [0.5, 1.2])


def test_group_clamp_override_validated_against_default():
    # a group may override one bound; the pair (override, default) must still be ordered
    with pytest.raises(ValueError, match="clamp_min <= clamp_max"):
        ClampedGradientOptimizer([{"params": [torch.zeros(2, requires_grad=True)], "clamp_min": 4.0}],
                                 clamp_min=-1.0, clamp_max=3.0)


# --------------------------------------------------------------------------- #
# dq and generator per group
# --------------------------------------------------------------------------- #
N = 40


def _kept_counts(optim, params, steps):
    counts = [[] for _ in params]
    grad = torch.arange(1.0, N + 1)
    for _ in range(steps):
        for p in params:
            p.grad = grad.clone()
        optim.step()
        for c, p in zip(counts, params):
            c.append(int((p.grad != 0).sum()))
    return counts


@pytest.mark.parametrize("cls", [TopQGradientOptimizer, L1qNormedGradientOptim])
def test_dq_per_group(cls):
    x, y, z = (torch.zeros(N, requires_grad=True) for _ in range(3))
    optim = cls(
        [{"params": [x]}, {"params": [y], "dq": 0.5, "generator": torch.Generator().manual_seed(0)}],
        q=0.5, lr=0.0, param_ndim=None,
    )
    optim.add_param_group({"params": [z], "q": 0.9, "dq": 0.1, "generator": torch.Generator().manual_seed(1)})
    cx, cy, cz = _kept_counts(optim, [x, y, z], 15)
    assert cx == [20] * 15  # dq=0 (the constructor default): k = round(0.5 * 40)
    assert len(set(cy)) > 3  # q ~ U[0, 1]
    assert all(0 <= k <= N for k in cy)
    assert len(set(cz)) > 1  # q ~ U[0.8, 1] -> k in [0, 8]
    assert all(0 <= k <= 8 for k in cz)


def test_dq_drawn_once_per_param_per_step():
    # two params in one group with dq share the group's generator but get their own draws
    gen = torch.Generator().manual_seed(3)
    x, y = torch.zeros(N, requires_grad=True), torch.zeros(N, requires_grad=True)
    optim = TopQGradientOptimizer([x, y], q=0.5, dq=0.5, generator=gen, lr=0.0, param_ndim=None)
    cx, cy = _kept_counts(optim, [x, y], 15)
    assert cx != cy


def test_generator_per_group():
    params = [torch.zeros(N, requires_grad=True) for _ in range(3)]
    g1, g2, g3 = (torch.Generator().manual_seed(s) for s in (7, 7, 8))
    optim = TopQGradientOptimizer(
        [{"params": [params[0]]}, {"params": [params[1]], "generator": g2}],
        q=0.5, dq=0.5, generator=g1, lr=0.0, param_ndim=None,
    )
    optim.add_param_group({"params": [params[2]], "generator": g3})
    assert optim.param_groups[0]["generator"] is g1
    assert optim.param_groups[1]["generator"] is g2
    assert optim.param_groups[2]["generator"] is g3
    torch.manual_seed(0)
    global_state = torch.get_rng_state()
    c1, c2, c3 = _kept_counts(optim, params, 12)
    # the global RNG is untouched when every group has its own generator
    assert torch.equal(torch.get_rng_state(), global_state)
    assert c1 == c2  # same seed, separate generators: identical draws
    assert c1 != c3


def test_generator_default_is_global_rng():
    x = torch.zeros(N, requires_grad=True)
    optim = TopQGradientOptimizer([x], q=0.5, dq=0.5, lr=0.0, param_ndim=None)
    assert optim.param_groups[0]["generator"] is torch.default_generator
    torch.manual_seed(123)
    (a,) = _kept_counts(optim, [x], 10)
    torch.manual_seed(123)
    (b,) = _kept_counts(optim, [x], 10)
    assert a == b and len(set(a)) > 1


# --------------------------------------------------------------------------- #
# chain: member options through the chain's groups
# --------------------------------------------------------------------------- #
def test_chain_member_option_from_group():
    x, y, z = (torch.ones(4, requires_grad=True) for _ in range(3))
    optim = ChainedParamTransformingOptimizer(
        TopQGradientOptimizer,
        partial(ClampedGradientOptimizer, clamp_max=3.5),
        params=[{"params": [x], "q": 0.25}, {"params": [y], "q": 0.75}],
        lr=1.0, param_ndim=None,
    )
    optim.add_param_group({"params": [z], "q": 0.5})
    assert [g["q"] for g in optim.members[0].param_groups] == [0.25, 0.75, 0.5]
    for p in (x, y, z):
        p.grad = torch.tensor([1.0, -2.0, 3.0, 4.0])
    optim.step()
    close(x.grad, [0.0, -2.0, 3.0, 3.5])
    close(y.grad, [0.0, 0.0, 0.0, 3.5])
    close(z.grad, [0.0, 0.0, 3.0, 3.5])


def test_chain_partial_option_wins_over_group():
    x = torch.ones(4, requires_grad=True)
    optim = ChainedParamTransformingOptimizer(
        partial(TopQGradientOptimizer, q=0.75), params=[{"params": [x], "q": 0.25}], lr=1.0, param_ndim=None
    )
    x.grad = torch.tensor([1.0, -2.0, 3.0, 4.0])
    optim.step()
    close(x.grad, [0.0, 0.0, 0.0, 4.0])


def test_chain_param_ndim_flows_to_members_per_group():
    x, y = (torch.zeros(2, 2, requires_grad=True) for _ in range(2))
    optim = ChainedParamTransformingOptimizer(
        partial(TopQGradientOptimizer, q=0.5),
        params=[{"params": [x]}, {"params": [y], "param_ndim": 1}], lr=1.0, param_ndim=None,
    )
    for p in (x, y):
        p.grad = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    optim.step()
    close(x.grad, [[0.0, 0.0], [3.0, 4.0]])
    close(y.grad, [[0.0, 2.0], [0.0, 4.0]])


def test_chain_grad_scale_applied_once_after_members():
    # chain grad_scale=2 after TopQ; member grad_scale from a partial applies right after that member
    x = torch.ones(3, requires_grad=True)
    optim = ChainedParamTransformingOptimizer(
        partial(TopQGradientOptimizer, q=0.33, grad_scale=10.0),
        partial(ClampedGradientOptimizer, clamp_max=2.8),
        params=[x], lr=1.0, param_ndim=None, grad_scale=2.0,
    )
    x.grad = torch.tensor([1.0, 2.0, 3.0])
    optim.step()
    close(x.grad, [0.0, 5.6, 5.6])  # [0, 20, 30] -> clamp 2.8 -> *2


# --------------------------------------------------------------------------- #
# InnerOpt: class, partial and instance
# --------------------------------------------------------------------------- #
INNER_CASES = {
    "TopQ-SGD": (TopQGradientOptimizer, {"q": 0.5}, torch.optim.SGD, {"lr": 1.0}),
    "L2Projected-Adam": (L2ProjectedOptim, {"epsilon": 0.9}, torch.optim.Adam, {"lr": 0.1}),
    "L1q-SGD-momentum": (L1qNormedGradientOptim, {"q": 0.5, "param_ndim": 1}, torch.optim.SGD,
                         {"lr": 0.5, "momentum": 0.9}),
    "Signed-AdamW": (SignedGradientOptim, {}, torch.optim.AdamW, {"lr": 0.1}),
    "Chain-Adam": (
        lambda params, **kw: ChainedParamTransformingOptimizer(
            partial(TopQGradientOptimizer, q=0.5), partial(ClampedParameterOptimizer, clamp_max=1.05),
            params=params, **kw),
        {}, torch.optim.Adam, {"lr": 0.1},
    ),
}


def _grads(step):
    gen = torch.Generator().manual_seed(step)
    return torch.randn(3, 4, generator=gen)


@pytest.mark.parametrize("factory, kwargs, inner_cls, inner_kwargs", INNER_CASES.values(), ids=list(INNER_CASES))
def test_inner_opt_class_partial_instance_agree(factory, kwargs, inner_cls, inner_kwargs):
    start = torch.linspace(-1, 1, 12).reshape(3, 4)
    xs = [start.clone().requires_grad_(True) for _ in range(3)]
    optims = [
        factory([xs[0]], InnerOpt=inner_cls, **kwargs, **inner_kwargs),
        factory([xs[1]], InnerOpt=partial(inner_cls, **inner_kwargs), **kwargs),
        factory(None, InnerOpt=inner_cls([xs[2]], **inner_kwargs), **kwargs),
    ]
    for step in range(4):
        for x, o in zip(xs, optims):
            x.grad = _grads(step)
            o.step()
    assert not torch.equal(xs[0].detach(), start)
    assert torch.equal(xs[1].detach(), xs[0].detach())
    assert torch.equal(xs[2].detach(), xs[0].detach())
    for o in optims:
        assert type(o._inner_opt) is inner_cls
        assert o.param_groups[0]["lr"] == inner_kwargs["lr"]


def test_partial_kwargs_and_constructor_kwargs_combine():
    x = torch.zeros(2, requires_grad=True)
    optim = SignedGradientOptim([x], InnerOpt=partial(torch.optim.SGD, momentum=0.5), lr=0.25)
    assert optim.param_groups[0]["momentum"] == 0.5
    assert optim.param_groups[0]["lr"] == 0.25
    for _ in range(2):
        x.grad = torch.tensor([1.0, -3.0])
        optim.step()
    close(x, [-0.625, 0.625])  # v1 = 1, v2 = 1.5: -(0.25 + 0.375)


def test_inner_instance_groups_keep_their_overrides():
    x, y = torch.ones(4, requires_grad=True), torch.ones(4, requires_grad=True)
    inner = torch.optim.SGD([{"params": [x]}, {"params": [y], "q": 0.75, "lr": 0.5}], lr=1.0)
    optim = TopQGradientOptimizer(None, InnerOpt=inner, q=0.25, param_ndim=None)
    assert [g["q"] for g in optim.param_groups] == [0.25, 0.75]
    x.grad, y.grad = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1.0, 2.0, 3.0, 4.0])
    optim.step()
    close(x, [1.0, -1.0, -2.0, -3.0])
    close(y, [1.0, 1.0, 1.0, -1.0])


def test_inner_instance_with_bad_group_option_rejected():
    inner = torch.optim.SGD([{"params": [torch.zeros(2, requires_grad=True)], "q": 2.0}], lr=1.0)
    with pytest.raises(ValueError, match=r"`q`.*\[0, 1\].*q=2\.0"):
        TopQGradientOptimizer(None, InnerOpt=inner, q=0.5)


# --------------------------------------------------------------------------- #
# state mirroring
# --------------------------------------------------------------------------- #
MIRROR_CASES = {
    "Signed-Adam": lambda p: SignedGradientOptim(p, InnerOpt=torch.optim.Adam, lr=0.1),
    "TopQ-SGD-momentum": lambda p: TopQGradientOptimizer(p, q=0.5, lr=0.1, momentum=0.9,
                                                         generator=torch.Generator().manual_seed(0), dq=0.2),
    "L2Projected-Adam": lambda p: L2ProjectedOptim(p, InnerOpt=torch.optim.Adam, epsilon=0.5, lr=0.1),
    "L1qFrankWolfe": lambda p: L1qFrankWolfe(p, q=0.5, epsilon=1.0),
    "L2FrankWolfe": lambda p: L2FrankWolfe(p, epsilon=1.0),
    "Chain-Adam": lambda p: ChainedParamTransformingOptimizer(
        partial(TopQGradientOptimizer, q=0.5), partial(ClampedGradientOptimizer, clamp_max=1.0),
        params=p, InnerOpt=torch.optim.Adam, lr=0.1),
}


def _assert_mirrors(optim):
    inner = optim._inner_opt
    assert optim.param_groups is inner.param_groups
    assert optim.state is inner.state
    assert optim.defaults is inner.defaults


@pytest.mark.parametrize("make", MIRROR_CASES.values(), ids=list(MIRROR_CASES))
def test_state_mirroring(make):
    start = torch.linspace(-0.5, 0.5, 12).reshape(3, 4)
    x = start.clone().requires_grad_(True)
    optim = make([x])
    _assert_mirrors(optim)
    assert optim.defaults["param_ndim"] == -1  # the PTO's options live in the shared defaults

    x.grad = _grads(0)
    optim.step()
    _assert_mirrors(optim)
    assert x in optim._inner_opt.state and len(optim.state[x]) > 0

    y = start.clone().requires_grad_(True)
    optim.add_param_group({"params": [y]})
    _assert_mirrors(optim)
    assert len(optim._inner_opt.param_groups) == 2
    assert optim._inner_opt.param_groups[1]["params"][0] is y

    x.grad, y.grad = _grads(1), _grads(1)
    optim.step()
    # deep copy: torch's state_dict() holds the live state tensors (as does load_state_dict)
    saved = copy.deepcopy(optim.state_dict())

    # a twin built the same way, loaded from the state dict, continues identically
    x2, y2 = x.detach().clone().requires_grad_(True), y.detach().clone().requires_grad_(True)
    twin = make([x2])
    twin.add_param_group({"params": [y2]})
    twin.load_state_dict(saved)
    _assert_mirrors(twin)
    assert set(twin.state) == {x2, y2}
    for key, value in optim.state[x].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(twin.state[x2][key], value)
        else:
            assert twin.state[x2][key] == value
    for step in (2, 3):
        for p in (x, y, x2, y2):
            p.grad = _grads(step)
        optim.step()
        twin.step()
    assert torch.equal(x2.detach(), x.detach())
    assert torch.equal(y2.detach(), y.detach())

    # loading into the optimizer itself keeps the mirroring too
    optim.load_state_dict(optim.state_dict())
    _assert_mirrors(optim)
    optim.add_param_group({"params": [start.clone().requires_grad_(True)]})
    _assert_mirrors(optim)
    assert len(optim._inner_opt.param_groups) == 3


def test_state_dict_round_trips_generator_state():
    gen = torch.Generator().manual_seed(5)
    x = torch.zeros(N, requires_grad=True)
    optim = TopQGradientOptimizer([x], q=0.5, dq=0.5, generator=gen, lr=0.0, param_ndim=None)
    _kept_counts(optim, [x], 3)
    saved = optim.state_dict()
    ahead = _kept_counts(optim, [x], 8)
    optim.load_state_dict(saved)
    assert optim.param_groups[0]["generator"] is gen
    again = _kept_counts(optim, [x], 8)
    assert again == ahead


def test_zero_grad():
    x, y = torch.ones(3, requires_grad=True), torch.ones(3, requires_grad=True)
    for optim in (
        TopQGradientOptimizer([x, y], q=0.5, lr=1.0),
        ChainedParamTransformingOptimizer(partial(TopQGradientOptimizer, q=0.5), params=[x, y], lr=1.0),
        L1FrankWolfe([x, y], epsilon=1.0),
    ):
        (x * y).sum().backward()
        assert x.grad is not None
        optim.zero_grad()
        assert x.grad is None and y.grad is None
        (x * y).sum().backward()
        optim.zero_grad(set_to_none=False)
        assert torch.equal(x.grad, torch.zeros(3)) and torch.equal(y.grad, torch.zeros(3))
        optim.zero_grad()


def test_step_with_closure_returns_loss_and_transforms():
    x = torch.tensor([1.0, -2.0], requires_grad=True)
    optim = SignedGradientOptim([x], lr=0.5)

    def closure():
        optim.zero_grad()
        loss = (10 * x).sum()
        loss.backward()
        return loss

    with torch.no_grad():
        loss = optim.step(closure)
    assert float(loss.detach()) == pytest.approx(-10.0)
    close(x.grad, [1.0, 1.0])
    close(x, [0.5, -2.5])


# --------------------------------------------------------------------------- #
# LR schedulers and live option changes
# --------------------------------------------------------------------------- #
def test_step_lr_scheduler_changes_inner_lr():
    x = torch.zeros(2, requires_grad=True)
    optim = SignedGradientOptim([x], lr=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "lr_scheduler.step() before optimizer.step()"
        sched = torch.optim.lr_scheduler.StepLR(optim, step_size=1, gamma=0.5)
        expected = [-1.0, -1.5, -1.75]
        for value in expected:
            x.grad = torch.tensor([3.0, 3.0])
            optim.step()
            close(x, [value, value])
            sched.step()
    assert optim._inner_opt.param_groups[0]["lr"] == pytest.approx(0.125)
    assert sched.get_last_lr() == [pytest.approx(0.125)]


def test_step_lr_scheduler_per_group_with_adam_inner():
    x, y = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    optim = L2NormedGradientOptim([{"params": [x]}, {"params": [y], "lr": 0.2}], InnerOpt=torch.optim.SGD, lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(optim, step_size=2, gamma=0.1)
    for _ in range(3):
        x.grad, y.grad = torch.tensor([5.0]), torch.tensor([5.0])
        optim.step()
        sched.step()
    # lrs used: 1, 1, 0.1 and 0.2, 0.2, 0.02 (normalized grad = 1 elementwise)
    close(x, [-2.1])
    close(y, [-0.42])


def test_changing_epsilon_between_steps_takes_effect():
    x = torch.ones(3, requires_grad=True)
    optim = L1qFrankWolfe([x], q=0.3, epsilon=1.8, param_ndim=None)
    x.grad = torch.tensor([0.0, 1.0, 2.0])
    optim.step()
    close(x, [0.0, -0.9, -0.9])
    optim.param_groups[0]["epsilon"] = 1.0
    x.grad = torch.tensor([0.0, 1.0, 2.0])
    optim.step()  # alpha = 2/3: x/3 - (2/3) * 1.0 * [0, 0.5, 0.5]
    close(x, [0.0, -0.6333, -0.6333])
    assert optim.param_groups[0]["lmo_scaling_factor"] == 1.0


def test_changing_q_between_steps_takes_effect():
    x = torch.zeros(4, requires_grad=True)
    optim = TopQGradientOptimizer([x], q=0.75, lr=1.0, param_ndim=None)
    x.grad = torch.tensor([1.0, -2.0, 3.0, 4.0])
    optim.step()
    close(x.grad, [0.0, 0.0, 0.0, 4.0])
    optim.param_groups[0]["q"] = 0.25
    x.grad = torch.tensor([1.0, -2.0, 3.0, 4.0])
    optim.step()
    close(x.grad, [0.0, -2.0, 3.0, 4.0])

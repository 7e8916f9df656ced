"""Non-finite values: the gradient policy of every optimizer, refused options, the solver.

The policy (docs/optimizers.md, "Non-finite values"): a row (per
``param_ndim``) whose gradient holds a NaN or ±Inf is left bit-for-bit
unchanged by the step, its gradient is zeroed before any transform, and it
is counted in ``optim.skipped_rows``; every other row steps exactly as it
would if that row's gradient had been zero. Each optimizer is checked,
step by step, against a twin at the same point that receives the same
gradients with the bad rows zeroed by hand.
"""

from __future__ import annotations

import logging
import math
from functools import partial

import pytest
import torch

from rai_probe.errors import SettingError
from rai_probe.optim import (
    ChainedParamTransformingOptimizer,
    ClampedGradientOptimizer,
    ClampedParameterOptimizer,
    FrankWolfe,
    GradientSampling,
    L1FrankWolfe,
    L1NormedGradientOptim,
    L1ProjectedOptim,
    L1qFrankWolfe,
    L1qNormedGradientOptim,
    L2FrankWolfe,
    L2NormedGradientOptim,
    L2ProjectedOptim,
    LaplacianSmoothing,
    LinfFrankWolfe,
    LinfNormedGradientOptim,
    LinfProjectedOptim,
    SignedGradientOptim,
    TopQGradientOptimizer,
)
from rai_probe.optim.nonfinite import nonfinite_rows
from rai_probe.perturbations import gradient_ascent, random_restart

NAN, INF = math.nan, math.inf
BAD_VALUES = [NAN, INF, -INF]
DTYPES = [torch.float32, torch.float64, torch.bfloat16]

#: One factory per optimizer of rai_probe.optim that steps without a closure, with
#: settings under which every row moves (momentum / Adam / a box make the
#: restore necessary: a zero gradient alone would still move the row).
OPTIMIZERS = {
    "SignedGradientOptim": lambda ps, **kw: SignedGradientOptim(ps, lr=0.1, momentum=0.9, **kw),
    "L1NormedGradientOptim": lambda ps, **kw: L1NormedGradientOptim(ps, lr=0.1, weight_decay=0.5, **kw),
    "L2NormedGradientOptim": lambda ps, **kw: L2NormedGradientOptim(ps, InnerOpt=torch.optim.Adam, lr=0.1, **kw),
    "LinfNormedGradientOptim": lambda ps, **kw: LinfNormedGradientOptim(ps, lr=0.1, grad_bias=0.25, **kw),
    "TopQGradientOptimizer": lambda ps, **kw: TopQGradientOptimizer(ps, q=0.5, lr=0.1, momentum=0.5, **kw),
    "L1qNormedGradientOptim": lambda ps, **kw: L1qNormedGradientOptim(ps, q=0.5, lr=0.1, grad_bias=0.1, **kw),
    "ClampedGradientOptimizer": lambda ps, **kw: ClampedGradientOptimizer(
        ps, clamp_min=-0.5, clamp_max=0.5, lr=0.1, weight_decay=1.0, **kw
    ),
    "ClampedParameterOptimizer": lambda ps, **kw: ClampedParameterOptimizer(ps, clamp_min=0.2, clamp_max=0.6, lr=0.1, **kw),
    "L1ProjectedOptim": lambda ps, **kw: L1ProjectedOptim(ps, q=0.5, epsilon=0.5, lr=0.3, **kw),
    "L2ProjectedOptim": lambda ps, **kw: L2ProjectedOptim(ps, epsilon=0.5, lr=0.3, **kw),
    "LinfProjectedOptim": lambda ps, **kw: LinfProjectedOptim(ps, epsilon=0.3, lr=0.1, **kw),
    "FrankWolfe": lambda ps, **kw: FrankWolfe(ps, lmo_scaling_factor=0.5),
    "L1FrankWolfe": lambda ps, **kw: L1FrankWolfe(ps, epsilon=1.0, **kw),
    "L2FrankWolfe": lambda ps, **kw: L2FrankWolfe(ps, epsilon=1.0, **kw),
    "LinfFrankWolfe": lambda ps, **kw: LinfFrankWolfe(ps, epsilon=1.0, **kw),
    "L1qFrankWolfe": lambda ps, **kw: L1qFrankWolfe(ps, q=0.5, epsilon=1.0, bounds=(-0.5, 0.5), **kw),
    "ChainedParamTransformingOptimizer": lambda ps, **kw: ChainedParamTransformingOptimizer(
        partial(TopQGradientOptimizer, q=0.5),
        L2NormedGradientOptim,
        partial(ClampedParameterOptimizer, clamp_min=0.1),
        params=ps, lr=0.2, momentum=0.5, **kw,
    ),
    "LaplacianSmoothing": lambda ps, **kw: LaplacianSmoothing(ps, sigma=1.0, lr=0.1, momentum=0.5, **kw),
    "LaplacianSmoothing(layerwise=False)": lambda ps, **kw: LaplacianSmoothing(
        ps, sigma=1.0, layerwise=False, min_numel=1, lr=0.1, **kw
    ),
}


def start(dtype, seed=0, shape=(4, 6)):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=gen) * 0.5).to(dtype)


def gradients(dtype, steps, shape=(4, 6), seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen).to(dtype) for _ in range(steps)]


def bits(t: torch.Tensor) -> torch.Tensor:
    """Raw bits, to compare with torch.equal bit for bit (-0 != +0, NaN == NaN)."""
    return t.detach().contiguous().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


# --------------------------------------------------------------------------- #
# the policy, optimizer by optimizer, against a hand-zeroed twin
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bad", BAD_VALUES, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_row_with_non_finite_gradient_is_skipped_and_others_match_a_zeroed_twin(name, bad, dtype):
    # step 1: row 1 has one bad entry; step 2: rows 0 and 3; step 3: all finite
    bad_entries = [[(1, 2)], [(0, 0), (3, 5)], []]
    grads = gradients(dtype, len(bad_entries))
    x = start(dtype).requires_grad_()
    twin = start(dtype).requires_grad_()
    optim, twin_optim = OPTIMIZERS[name]([x]), OPTIMIZERS[name]([twin])
    for grad, entries in zip(grads, bad_entries):
        poisoned, zeroed = grad.clone(), grad.clone()
        for row, col in entries:
            poisoned[row, col] = bad
            zeroed[row] = 0
        before = x.detach().clone()
        with torch.no_grad():
            twin.copy_(x)  # the same point: the twin differs only in the bad rows' gradients
        x.grad, twin.grad = poisoned, zeroed
        optim.step()
        twin_optim.step()
        bad_rows = sorted({row for row, _ in entries})
        good_rows = [r for r in range(x.shape[0]) if r not in bad_rows]
        for row in bad_rows:  # left exactly as it was
            assert torch.equal(bits(x[row]), bits(before[row])), (name, row)
        # every other row is stepped exactly as if the bad rows' gradients were zero,
        # and the transforms saw exactly the zeroed gradients
        assert torch.equal(bits(x[good_rows]), bits(twin[good_rows])), name
        assert torch.equal(bits(x.grad), bits(twin.grad)), name
        assert torch.isfinite(x).all() and torch.isfinite(x.grad).all()
    assert optim.skipped_rows.dtype == torch.int64 and optim.skipped_rows.ndim == 0
    assert int(optim.skipped_rows) == 3
    assert not torch.equal(x.detach(), start(dtype))  # the problem is not trivial


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_nothing_non_finite_reaches_the_inner_optimizer_state(name):
    x = start(torch.float32).requires_grad_()
    optim = OPTIMIZERS[name]([x])
    for grad in gradients(torch.float32, 3):
        grad[2, 1] = NAN
        x.grad = grad
        optim.step()
    for state in optim.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                assert torch.isfinite(value).all(), (name, state)


@pytest.mark.parametrize(
    "param_ndim, expected",
    [(-1, 2), (None, 1), (0, 3), (1, 3)],  # rows: per leading index, whole tensor, elements, last dim
)
def test_rows_follow_param_ndim(param_ndim, expected):
    x = torch.ones(3, 2, 4, requires_grad=True)
    optim = L2NormedGradientOptim([x], lr=1.0, param_ndim=param_ndim)
    grad = torch.ones(3, 2, 4)
    grad[0, 0, 0], grad[0, 1, 3], grad[2, 0, 1] = NAN, INF, -INF
    x.grad = grad.clone()
    optim.step()
    skipped = nonfinite_rows(grad, param_ndim).expand(grad.shape)
    assert int(optim.skipped_rows) == expected
    assert torch.equal(x.detach()[skipped], torch.ones(int(skipped.sum())))
    assert (x.detach()[~skipped] < 1).all()  # every other entry moved


def test_whole_tensor_row_keeps_the_nan_from_spreading():
    """With param_ndim=None a NaN anywhere skips the tensor: normalizing would spread it."""
    x = torch.ones(2, 3, requires_grad=True)
    y = torch.ones(4, requires_grad=True)
    optim = L2NormedGradientOptim([x, y], lr=1.0, param_ndim=None)
    x.grad = torch.tensor([[1.0, NAN, 1.0], [1.0, 1.0, 1.0]])
    y.grad = torch.ones(4)
    optim.step()
    assert torch.equal(x.detach(), torch.ones(2, 3)) and int(optim.skipped_rows) == 1
    assert torch.allclose(y.detach(), torch.full((4,), 0.5))


def test_laplacian_ring_across_parameters_stays_finite():
    """layerwise=False smooths all gradients of a group as one ring: a NaN row must not leak."""
    x = torch.zeros(3, 4, requires_grad=True)
    y = torch.zeros(5, requires_grad=True)
    optim = LaplacianSmoothing([x, y], layerwise=False, lr=1.0)
    x.grad = torch.ones(3, 4)
    x.grad[1, 1] = INF
    y.grad = torch.ones(5)
    optim.step()
    assert torch.isfinite(x).all() and torch.isfinite(y).all()
    assert torch.equal(x.detach()[1], torch.zeros(4)) and (x.detach()[[0, 2]] != 0).all()
    assert (y.detach() != 0).all() and int(optim.skipped_rows) == 1


def test_count_is_per_row_per_step_over_parameters_and_groups():
    a = torch.zeros(4, 3, requires_grad=True)
    b = torch.zeros(2, 5, requires_grad=True)
    optim = SignedGradientOptim([{"params": [a]}, {"params": [b], "param_ndim": 0}], lr=1.0)
    for _ in range(3):
        a.grad = torch.tensor([[NAN, 1.0, 1.0], [1.0] * 3, [1.0, INF, NAN], [1.0] * 3])
        b.grad = torch.tensor([[1.0, -INF, 1.0, 1.0, 1.0], [NAN, 1.0, 1.0, 1.0, 1.0]])
        optim.step()
    assert int(optim.skipped_rows) == 3 * (2 + 2)
    assert torch.equal(a.detach()[[0, 2]], torch.zeros(2, 3))
    assert torch.equal(a.detach()[[1, 3]], torch.full((2, 3), -3.0))
    assert b.detach()[0, 1] == 0 and b.detach()[1, 0] == 0 and b.detach()[0, 0] == -3.0


def test_finite_gradients_are_stepped_bit_for_bit_as_before():
    """Huge but finite gradients (their sum overflows) are not mistaken for non-finite ones."""
    x = torch.zeros(2, 3, requires_grad=True)
    optim = SignedGradientOptim([x], lr=1.0)
    x.grad = torch.full((2, 3), 3e38)
    optim.step()
    assert int(optim.skipped_rows) == 0 and torch.equal(x.detach(), torch.full((2, 3), -1.0))


def test_lbfgs_closure_rows_skipped_once_per_step():
    class NaNInRowOne(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            return t.clone()

        @staticmethod
        def backward(ctx, g):
            g = g.clone()
            g[1, 0] = NAN
            return g

    x = torch.ones(3, 4, requires_grad=True)
    optim = L2NormedGradientOptim([x], InnerOpt=torch.optim.LBFGS, lr=0.1, max_iter=5)

    def closure():
        optim.zero_grad()
        loss = (NaNInRowOne.apply(x) ** 2).sum()
        loss.backward()
        return loss

    for _ in range(2):
        optim.step(closure)
    assert torch.equal(x.detach()[1], torch.ones(4))
    assert (x.detach()[[0, 2]] < 1).all() and torch.isfinite(x).all()
    assert int(optim.skipped_rows) == 2


def test_skipped_rows_starts_at_zero_on_the_parameters_device():
    x = torch.zeros(2, requires_grad=True)
    optim = L1qFrankWolfe([x], q=0.5, epsilon=1.0)
    assert optim.skipped_rows.device == x.device and int(optim.skipped_rows) == 0


# --------------------------------------------------------------------------- #
# GradientSampling: non-finite samples are dropped; the aggregate is screened
# --------------------------------------------------------------------------- #
def scripted(x, grads, losses=None):
    calls = iter(range(len(grads)))

    def closure():
        i = next(calls)
        x.grad = torch.tensor(grads[i])
        return torch.tensor(1.0 if losses is None else losses[i])

    return closure


@pytest.mark.parametrize("inner", ["SGD", "chain"])
def test_gradient_sampling_screens_the_aggregated_gradient(inner):
    x = torch.zeros(2, 2, requires_grad=True)
    if inner == "SGD":
        optim = GradientSampling([x], n=2, sigma=0.0, lr=1.0)
    else:
        chain = ChainedParamTransformingOptimizer(SignedGradientOptim, params=[x], lr=1.0)
        optim = GradientSampling(InnerOpt=chain, n=2, sigma=0.0)
    big = 3e38  # finite samples whose mean overflows in row 0
    grads = [[[big, 1.0], [1.0, 1.0]]] * 3
    optim.step(scripted(x, grads))
    assert torch.equal(x.detach()[0], torch.zeros(2))
    assert torch.equal(x.detach()[1], torch.full((2,), -1.0))
    assert int(optim.skipped_rows) == 1 and torch.isfinite(x.grad).all()


def test_gradient_sampling_all_samples_non_finite_counts_every_row():
    x = torch.ones(3, 2, requires_grad=True)
    optim = GradientSampling([x], n=2, lr=0.1, seed=0)
    optim.step(scripted(x, [[[NAN, 0.0]] * 3] * 3))
    assert torch.equal(x.detach(), torch.ones(3, 2)) and x.grad is None
    assert int(optim.skipped_rows) == 3


# --------------------------------------------------------------------------- #
# no host sync (needs CUDA: the sync debug mode raises on any synchronization)
# --------------------------------------------------------------------------- #
#: Optimizers whose own transforms never synchronize (the box and the smoothing's
#: path choice move host scalars to the device), so any sync would be the policy's.
SYNC_FREE = ["SignedGradientOptim", "L2NormedGradientOptim", "TopQGradientOptimizer",
             "L1qNormedGradientOptim", "L2ProjectedOptim", "L1FrankWolfe", "FrankWolfe",
             "ChainedParamTransformingOptimizer"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", SYNC_FREE)
def test_policy_never_synchronizes_on_cuda(name):
    x = start(torch.float32).cuda().requires_grad_()
    optim = OPTIMIZERS[name]([x])
    grads = [g.cuda() for g in gradients(torch.float32, 3)]
    grads[1][2, 3] = NAN
    x.grad = grads[0].clone()
    optim.step()  # warm-up: lazy state, kernels
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for g in grads[1:]:
            x.grad = g.clone()
            optim.step()
        count = optim.skipped_rows
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert count.device.type == "cuda" and int(count) == 1


# --------------------------------------------------------------------------- #
# non-finite or out-of-range options are refused, naming the option
# --------------------------------------------------------------------------- #
X = lambda: torch.zeros(2, 3, requires_grad=True)  # noqa: E731

#: (factory, option, bad values): every numeric option of every class, and the
#: inner optimizer's well-known hyper-parameters.
REFUSED = [
    (SignedGradientOptim, "lr", [NAN, INF, -1.0]),
    (SignedGradientOptim, "momentum", [NAN, INF, -0.5]),
    (SignedGradientOptim, "weight_decay", [NAN, -INF]),
    (SignedGradientOptim, "dampening", [NAN, INF]),
    (SignedGradientOptim, "grad_scale", [NAN, INF, -INF]),
    (SignedGradientOptim, "grad_bias", [NAN, INF]),
    (partial(SignedGradientOptim, InnerOpt=torch.optim.Adam), "betas", [(NAN, 0.9), (0.9, INF), (0.9, 1.0)]),
    (partial(SignedGradientOptim, InnerOpt=torch.optim.Adam), "eps", [NAN, INF, -1e-8]),
    (partial(SignedGradientOptim, InnerOpt=torch.optim.RMSprop), "alpha", [NAN, INF]),
    (L2NormedGradientOptim, "div_by_zero_eps", [NAN, INF, 0.0]),
    (partial(TopQGradientOptimizer, lr=0.1), "q", [NAN, INF, 1.5]),
    (partial(TopQGradientOptimizer, q=0.5, lr=0.1), "dq", [NAN, INF, -0.1]),
    (partial(L1qNormedGradientOptim, lr=0.1), "q", [NAN, -INF]),
    (partial(ClampedGradientOptimizer, clamp_max=1.0, lr=0.1), "clamp_min", [NAN, INF]),
    (partial(ClampedParameterOptimizer, clamp_min=0.0, lr=0.1), "clamp_max", [NAN, -INF]),
    (partial(L2ProjectedOptim, lr=0.1), "epsilon", [NAN, INF, 0.0, torch.tensor([1.0, NAN])]),
    (partial(LinfProjectedOptim, epsilon=1.0), "lr", [NAN, INF]),
    (partial(L1ProjectedOptim, q=0.5, lr=0.1), "epsilon", [NAN, INF]),
    (partial(L1ProjectedOptim, epsilon=1.0, q=0.5, lr=0.1), "bounds", [(NAN, 1.0), (-1.0, NAN)]),
    (partial(L1FrankWolfe, epsilon=1.0), "lr", [NAN, INF, -1.0]),
    (partial(L2FrankWolfe), "epsilon", [NAN, INF]),
    (partial(L1qFrankWolfe, epsilon=1.0), "q", [NAN, INF]),
    (FrankWolfe, "lr", [NAN, INF]),
    (FrankWolfe, "lmo_scaling_factor", [NAN, INF]),
    (partial(LaplacianSmoothing, lr=0.1), "sigma", [NAN, INF, -1.0]),
    (partial(GradientSampling, lr=0.1), "sigma", [NAN, INF]),
    (partial(GradientSampling, lr=0.1), "decay", [NAN, INF]),
    (partial(GradientSampling, lr=0.1), "sigma_target", [NAN, INF]),
    (GradientSampling, "lr", [NAN, INF]),
]
REFUSED_CASES = [(f, o, v) for f, o, values in REFUSED for v in values]
#: Good values of required options, to build an optimizer to add a bad group to.
REQUIRED_GOOD = {"q": 0.5, "epsilon": 1.0}


def _label(case):
    factory, option, value = case
    name = getattr(factory, "func", factory).__name__
    return f"{name}-{option}-{value!r}"


@pytest.mark.parametrize("case", REFUSED_CASES, ids=[_label(c) for c in REFUSED_CASES])
def test_bad_option_refused_at_construction_naming_it(case):
    factory, option, value = case
    with pytest.raises(SettingError, match=f"`{option}`") as error:
        factory([X()], **{option: value})
    assert error.value.setting == option


@pytest.mark.parametrize("case", REFUSED_CASES, ids=[_label(c) for c in REFUSED_CASES])
def test_bad_option_refused_in_a_param_group_and_in_add_param_group(case):
    factory, option, value = case
    with pytest.raises(SettingError, match=f"`{option}`") as error:
        factory([{"params": [X()], option: value}])
    assert error.value.setting == option
    optim = factory([X()], **({option: REQUIRED_GOOD[option]} if option in REQUIRED_GOOD else {}))
    groups = len(optim.param_groups)
    with pytest.raises(SettingError, match=f"`{option}`") as error:
        optim.add_param_group({"params": [X()], option: value})
    assert error.value.setting == option
    assert len(optim.param_groups) == groups  # nothing was added


def test_nan_refused_for_any_numeric_inner_option():
    """A NaN means nothing in any optimizer, whatever the option's name (infinity may)."""
    SignedGradientOptim([{"params": [X()], "foo": INF}], lr=0.1)
    with pytest.raises(SettingError, match="`foo`") as error:
        SignedGradientOptim([{"params": [X()], "foo": NAN}], lr=0.1)
    assert error.value.setting == "foo"


def test_prebuilt_inner_optimizer_with_a_nan_lr_is_refused():
    x = X()
    with pytest.raises(SettingError, match="`lr`"):
        SignedGradientOptim(InnerOpt=torch.optim.SGD([x], lr=NAN))


@pytest.mark.parametrize(
    "factory, options",
    [
        (ClampedGradientOptimizer, dict(clamp_min=-INF, clamp_max=INF, lr=0.1)),  # unbounded
        (SignedGradientOptim, dict(lr=torch.tensor(0.1))),  # a tensor lr (torch allows it)
        (partial(SignedGradientOptim, InnerOpt=torch.optim.Adafactor), dict(lr=0.1)),  # eps=(None, 1e-3)
        (L1ProjectedOptim, dict(q=0.5, epsilon=1.0, lr=0.1, bounds=(-INF, INF))),
    ],
)
def test_meaningful_infinities_and_forms_are_accepted(factory, options):
    x = X()
    optim = factory([x], **options)
    x.grad = torch.ones(2, 3)
    optim.step()
    assert torch.isfinite(x).all()


# --------------------------------------------------------------------------- #
# the solver: refused non-finite data and models; non-finite iterates never win
# --------------------------------------------------------------------------- #
def linear_classifier():
    torch.manual_seed(0)
    return torch.nn.Linear(4, 3)


@pytest.mark.parametrize("bad", BAD_VALUES, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("data_range", [None, (0.0, 1.0)])
def test_non_finite_data_is_refused(bad, data_range):
    data = torch.rand(3, 4)
    data[1, 2] = bad
    with pytest.raises(SettingError, match="`data` must be finite") as error:
        gradient_ascent(model=linear_classifier(), data=data, target=torch.zeros(3, dtype=torch.long),
                        optimizer=L2ProjectedOptim, epsilon=1.0, lr=0.1, steps=2, data_range=data_range)
    assert error.value.setting == "data" and "indices 1" in str(error.value)


@pytest.mark.parametrize("bad", BAD_VALUES, ids=["nan", "inf", "-inf"])
def test_model_non_finite_at_the_start_is_refused(bad):
    def model(x):
        logits = torch.zeros(x.shape[0], 3)
        logits[0, 1] = bad
        return logits + x.sum(1, keepdim=True)

    with pytest.raises(SettingError, match="`model` returned NaN or Inf") as error:
        gradient_ascent(model=model, data=torch.rand(2, 4), target=torch.zeros(2, dtype=torch.long),
                        optimizer=L2ProjectedOptim, epsilon=1.0, lr=0.1, steps=2)
    assert error.value.setting == "model"


def test_criterion_non_finite_at_the_start_is_refused():
    with pytest.raises(SettingError, match="`criterion` returned NaN or Inf") as error:
        gradient_ascent(model=lambda x: x, data=torch.rand(2, 4), target=torch.zeros(2, 4),
                        criterion=lambda x, t: (x - t).sum(1) * INF,
                        optimizer=torch.optim.SGD, lr=0.1, steps=1)
    assert error.value.setting == "criterion"


def exploding_model(bad):
    """Two classes, logit 1 = sum(x); beyond sum(x) > 3 the output turns ``bad`` (zero gradient)."""

    def model(x):
        s = x.sum(1)
        logits = torch.stack([torch.zeros_like(s), s], dim=1)
        return torch.where((s > 3).unsqueeze(1), torch.full_like(logits, bad), logits)

    return model


def nan_beyond_three(x):
    """Logit 1 = sum(x) + 0·sqrt(3 - sum(x)): NaN, with NaN gradients, once sum(x) > 3."""
    s = x.sum(1)
    return torch.stack([torch.zeros_like(s), s + 0 * torch.sqrt(3 - s)], dim=1)


def push_up(logits, target):  # one loss per datum: the attack raises logit 1
    return logits[:, 1]


@pytest.mark.parametrize("bad", BAD_VALUES, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("use_best", [False, True])
def test_non_finite_iterates_never_count_as_success_nor_as_best(bad, use_best):
    # SGD lr=1 on sum(x): x grows by 1 per entry per step, s = 2, 4, 6, ...:
    # the first step succeeds (class 1) with finite logits, later iterates are non-finite
    data = torch.zeros(3, 2)
    target = torch.zeros(3, dtype=torch.long)
    result = gradient_ascent(model=exploding_model(bad), data=data, target=target,
                             optimizer=torch.optim.SGD, lr=1.0, steps=4, criterion=push_up,
                             use_best=use_best)
    assert torch.equal(result.first_success_step, torch.ones(3, dtype=torch.long))
    if use_best:  # the best finite iterate: after one step
        assert torch.equal(result.xadv, torch.ones(3, 2))
        assert torch.isfinite(result.logits).all() and bool(result.success.all())
    else:  # the final iterate is non-finite: never a success
        assert not torch.isfinite(result.logits).all()
        assert not bool(result.success.any())


def test_rows_skipped_by_the_optimizer_are_reported_and_logged(caplog):
    data = torch.zeros(3, 2)
    target = torch.zeros(3, dtype=torch.long)
    with caplog.at_level(logging.WARNING, logger="rai_probe.perturbations.solvers"):
        result = gradient_ascent(model=nan_beyond_three, data=data, target=target,
                                 optimizer=L2NormedGradientOptim, lr=2.0, steps=4, criterion=push_up)
    # s = 2.83 after one step (finite), 5.66 after two (NaN): steps 3 and 4 see NaN gradients
    assert result.skipped_rows == 3 * 2
    warnings = [r for r in caplog.records if "NaN or Inf gradients" in r.getMessage()]
    assert len(warnings) == 1 and "6 perturbation row(s)" in warnings[0].getMessage()
    finite = gradient_ascent(model=nan_beyond_three, data=data, target=target,
                             optimizer=L2NormedGradientOptim, lr=0.1, steps=2, criterion=push_up)
    assert finite.skipped_rows == 0
    plain = gradient_ascent(model=nan_beyond_three, data=data, target=target,
                            optimizer=torch.optim.SGD, lr=0.1, steps=2, criterion=push_up)
    assert plain.skipped_rows is None  # a plain torch optimizer does not count


def test_random_restart_sums_skipped_rows():
    solve = random_restart(gradient_ascent, repeats=3)
    result = solve(model=nan_beyond_three, data=torch.zeros(2, 2), target=torch.zeros(2, dtype=torch.long),
                   optimizer=L2NormedGradientOptim, lr=2.0, steps=4, criterion=push_up)
    assert result.skipped_rows == 3 * 2 * 2

"""Edge inputs: empty parameters and batches, and a sparsity that keeps nothing.

* Every optimizer accepts parameters with no elements (``(0, 8)``, ``(8, 0)``,
  ...): a step leaves them as they are and steps the other parameters as
  if the empty ones were absent. The functional API and the initializers
  accept empty rows too.
* ``gradient_ascent`` on an empty batch returns an empty, well-shaped
  :class:`AttackResult` (no step is taken), or names ``data`` when the model
  cannot evaluate an empty batch.
* A ``q`` that keeps 0 entries of a row warns once per optimizer instance.
"""

from __future__ import annotations

import math
import warnings
from functools import partial

import pytest
import torch

from rai_probe.errors import SettingError
from rai_probe.optim import (
    ChainedParamTransformingOptimizer,
    GradientSampling,
    L1ProjectedOptim,
    L1qFrankWolfe,
    L1qNormedGradientOptim,
    TopQGradientOptimizer,
)
from rai_probe.optim import functional as F
from rai_probe.optim.smoothing import laplacian_smooth_
from rai_probe.perturbations import (
    AdditivePerturbation,
    gradient_ascent,
    random_restart,
    uniform_like_l1_n_ball_,
    uniform_like_l2_n_ball_,
    uniform_like_linf_n_ball_,
)
from test_nonfinite import OPTIMIZERS

EMPTY_SHAPES = [(0, 8), (8, 0), (0,), (2, 0, 3), (0, 1, 28, 28)]


def valid_param_ndims(shape):
    return [nd for nd in (-1, None, 0, 1) if nd is None or abs(nd) <= len(shape)]


# --------------------------------------------------------------------------- #
# empty parameters
# --------------------------------------------------------------------------- #
@pytest.mark.filterwarnings("ignore:.*keeps round:UserWarning")  # q=0.5 on rows of one (param_ndim=0)
@pytest.mark.parametrize("shape", EMPTY_SHAPES, ids=str)
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_empty_parameter_step_is_a_no_op(name, shape):
    for param_ndim in valid_param_ndims(shape):
        empty = torch.zeros(shape, requires_grad=True)
        full = torch.linspace(-1, 1, 12).view(3, 4).requires_grad_()
        twin = full.detach().clone().requires_grad_()
        optim = OPTIMIZERS[name]([empty, full], param_ndim=param_ndim)  # FrankWolfe: rows by index
        twin_optim = OPTIMIZERS[name]([twin], param_ndim=param_ndim)
        for step in range(2):
            grad = torch.linspace(1, 2, 12).view(3, 4) * (-1) ** step
            empty.grad, full.grad, twin.grad = torch.zeros(shape), grad.clone(), grad.clone()
            optim.step()
            twin_optim.step()
            assert empty.shape == shape and empty.grad.shape == shape
            if name != "LaplacianSmoothing(layerwise=False)":  # its ring spans both
                assert torch.equal(full.detach(), twin.detach()), (name, param_ndim)
        assert int(optim.skipped_rows) == 0
        optim.load_state_dict(optim.state_dict())


@pytest.mark.parametrize("shape", EMPTY_SHAPES, ids=str)
def test_empty_parameter_alone_and_without_a_gradient(shape):
    for name in sorted(OPTIMIZERS):
        x = torch.zeros(shape, requires_grad=True)
        optim = OPTIMIZERS[name]([x])
        optim.step()  # no gradient at all
        x.grad = torch.zeros(shape)
        optim.step()
        assert x.shape == shape


@pytest.mark.parametrize("shape", EMPTY_SHAPES, ids=str)
def test_gradient_sampling_with_an_empty_parameter(shape):
    x = torch.zeros(shape, requires_grad=True)
    y = torch.ones(3, requires_grad=True)
    optim = GradientSampling([x, y], n=3, sigma=0.1, seed=0, lr=0.1)

    def closure():
        optim.zero_grad()
        loss = (y**2).sum() + x.sum()
        loss.backward()
        return loss

    optim.step(closure)
    assert x.shape == shape and (y.detach() < 1).all()


@pytest.mark.parametrize("shape", [(0, 8), (8, 0), (0, 3, 4)], ids=str)
def test_functional_transforms_accept_empty_rows(shape):
    x = torch.zeros(shape)
    ops = [
        lambda t: F.normalize_(t, 2),
        lambda t: F.normalize_(t, 1),
        lambda t: F.topq_(t, 0.5),
        lambda t: F.topq_(t, 0.5, dq=0.2, generator=torch.Generator().manual_seed(0)),
        lambda t: F.l1q_normalize_(t, 0.5),
        lambda t: F.project_l1_ball_(t, 1.0),
        lambda t: F.project_l2_ball_(t, 1.0),
        lambda t: F.project_linf_ball_(t, 1.0),
        lambda t: F.project_l1_ball_box_(t, 1.0, -1.0, 1.0),
        lambda t: F.lmo_l1_(t),
        lambda t: F.lmo_l1q_(t, 0.5),
        lambda t: F.fw_vertex_box_(t, "l1q", 1.0, -1.0, 1.0, q=0.5),
        lambda t: F.fw_vertex_box_(t, "l2", 1.0, -1.0, 1.0),
        lambda t: laplacian_smooth_(t, 1.0),
    ]
    for op in ops:
        assert op(x.clone()).shape == shape
    assert F.row_norms(x, 2).shape == (shape[0],)


@pytest.mark.parametrize("init", [uniform_like_l1_n_ball_, uniform_like_l2_n_ball_, uniform_like_linf_n_ball_])
@pytest.mark.parametrize("shape", [(0, 8), (8, 0), (0, 1, 28, 28)], ids=str)
def test_initializers_and_perturbation_models_accept_empty_data(init, shape):
    assert init(torch.empty(shape), epsilon=1.0).shape == shape
    pert = AdditivePerturbation(torch.zeros(shape), init, epsilon=1.0)
    assert pert(torch.zeros(shape)).shape == shape


# --------------------------------------------------------------------------- #
# gradient_ascent on an empty batch
# --------------------------------------------------------------------------- #
def small_classifier():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))


@pytest.mark.parametrize(
    "options",
    [
        dict(optimizer=L1qFrankWolfe, q=0.9, epsilon=2.0),
        dict(optimizer=L1qFrankWolfe, q=0.9, epsilon=2.0, data_range=(0, 1), early_stop=True),
        dict(optimizer=L1ProjectedOptim, q=0.5, epsilon=1.0, lr=0.5, use_best=True, targeted=True),
        dict(optimizer=torch.optim.SGD, lr=0.1),
        dict(optimizer=L1qFrankWolfe, q=0.9, epsilon=2.0,
             perturbation_model=partial(AdditivePerturbation, init_fn=uniform_like_l1_n_ball_, epsilon=1.0)),
    ],
    ids=["l1q", "l1q-range-early", "l1-best-targeted", "sgd", "random-start"],
)
def test_empty_batch_gives_an_empty_well_shaped_result(options):
    data = torch.rand(0, 1, 4, 4)
    target = torch.zeros(0, dtype=torch.long)
    result = gradient_ascent(model=small_classifier(), data=data, target=target, steps=5, **options)
    assert result.xadv.shape == data.shape and result.losses.shape == (0,)
    assert result.logits.shape == (0, 3)
    assert result.success.shape == (0,) and result.success.dtype == torch.bool
    assert result.first_success_step.shape == (0,)
    assert result.steps_run == 0 and result.loss_trace.shape == (1,)
    assert result.datum_loss_trace.shape == (1, 0)
    assert result.skipped_rows == (None if options["optimizer"] is torch.optim.SGD else 0)
    xadv, losses = result
    assert xadv.shape == data.shape


def test_empty_batch_still_validates_the_options():
    with pytest.raises(SettingError, match="`q`"):
        gradient_ascent(model=small_classifier(), data=torch.rand(0, 1, 4, 4),
                        target=torch.zeros(0, dtype=torch.long), optimizer=L1qFrankWolfe,
                        q=1.5, epsilon=1.0, steps=2)


def test_empty_batch_the_model_cannot_take_names_data():
    def model(x):  # view(N, -1) is ambiguous for an empty batch
        return torch.nn.functional.linear(x.view(x.shape[0], -1), torch.ones(3, 16))

    with pytest.raises(SettingError, match="`data` is an empty batch") as error:
        gradient_ascent(model=model, data=torch.rand(0, 1, 4, 4), target=torch.zeros(0, dtype=torch.long),
                        optimizer=L1qFrankWolfe, q=0.9, epsilon=1.0, steps=2)
    assert error.value.setting == "data" and isinstance(error.value.__cause__, RuntimeError)


def test_random_restart_on_an_empty_batch():
    solve = random_restart(gradient_ascent, repeats=2)
    result = solve(model=small_classifier(), data=torch.rand(0, 1, 4, 4),
                   target=torch.zeros(0, dtype=torch.long), optimizer=L1qFrankWolfe,
                   q=0.9, epsilon=1.0, steps=3)
    assert result.xadv.shape == (0, 1, 4, 4) and result.loss_trace.shape == (2, 1)
    assert result.skipped_rows == 0


# --------------------------------------------------------------------------- #
# a q that keeps nothing warns, once per optimizer instance
# --------------------------------------------------------------------------- #
SPARSE = {
    "TopQGradientOptimizer": lambda ps, **kw: TopQGradientOptimizer(ps, lr=0.1, **kw),
    "L1qNormedGradientOptim": lambda ps, **kw: L1qNormedGradientOptim(ps, lr=0.1, **kw),
    "L1ProjectedOptim": lambda ps, **kw: L1ProjectedOptim(ps, epsilon=1.0, lr=0.1, **kw),
    "L1qFrankWolfe": lambda ps, **kw: L1qFrankWolfe(ps, epsilon=1.0, **kw),
    "L1qFrankWolfe(bounds)": lambda ps, **kw: L1qFrankWolfe(ps, epsilon=1.0, bounds=(-1.0, 1.0), **kw),
    "chain member": lambda ps, **kw: ChainedParamTransformingOptimizer(
        partial(TopQGradientOptimizer, **kw), params=ps, lr=0.1
    ),
}


def run_steps(optim, x, steps=3):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(steps):
            x.grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
            optim.step()
    return [w for w in caught if issubclass(w.category, UserWarning)]


@pytest.mark.parametrize(
    "q, dq, n",
    [(1.0, 0.0, 784), (0.9999, 0.0, 784), (0.9995, 0.0, 784), (0.6, 0.0, 1), (0.9998, 0.0002, 784)],
)
@pytest.mark.parametrize("name", sorted(SPARSE))
def test_q_keeping_nothing_warns_once_per_instance(name, q, dq, n):
    assert F.num_kept(n, max(0.0, q - dq)) == 0
    for _ in range(2):  # each new instance warns again, once
        x = torch.zeros(2, n, requires_grad=True)
        optim = SPARSE[name]([x], q=q, dq=dq, generator=torch.Generator().manual_seed(1))
        caught = run_steps(optim, x)
        assert len(caught) == 1, [str(w.message) for w in caught]
        message = str(caught[0].message)
        assert f"q={q}" in message and f"0 of the {n} entries" in message
        assert torch.equal(x.detach(), torch.zeros(2, n))  # indeed nothing moved


@pytest.mark.parametrize("q, n", [(0.999, 784), (0.99, 784), (0.5, 3), (0.0, 1), (0.9999, 10_000)])
@pytest.mark.parametrize("name", sorted(SPARSE))
def test_q_keeping_at_least_one_entry_does_not_warn(name, q, n):
    assert F.num_kept(n, q) >= 1
    x = torch.zeros(2, n, requires_grad=True)
    assert run_steps(SPARSE[name]([x], q=q), x) == []
    assert (x.detach() != 0).any()


def test_no_warning_for_empty_rows():
    x = torch.zeros(0, 8, requires_grad=True)
    y = torch.zeros(4, 0, requires_grad=True)
    optim = TopQGradientOptimizer([x, y], q=1.0, lr=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x.grad, y.grad = torch.zeros(0, 8), torch.zeros(4, 0)
        optim.step()
    assert not caught


def test_warning_in_an_attack_that_keeps_nothing():
    with pytest.warns(UserWarning, match=r"q=0.9999 keeps .* = 0 of the 16 entries"):
        result = gradient_ascent(model=small_classifier(), data=torch.rand(2, 1, 4, 4),
                                 target=torch.zeros(2, dtype=torch.long), optimizer=L1qFrankWolfe,
                                 q=0.9999, epsilon=1.0, steps=2)
    assert math.isclose(float(result.loss_trace[0]), float(result.loss_trace[-1]))

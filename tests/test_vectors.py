"""Hand-checked vectors of REFERENCE.md section 2 and the ``param_ndim`` reshape table.

Every number here was computed by hand (see REFERENCE.md); unless stated
otherwise ``param_ndim=None`` and the inner optimizer is SGD with ``lr=1``.
"""

from functools import partial

import pytest
import torch
from torch.testing import assert_close

from rai_probe.optim import (
    ChainedParamTransformingOptimizer,
    ClampedGradientOptimizer,
    ClampedParameterOptimizer,
    L1FrankWolfe,
    L1NormedGradientOptim,
    L1qFrankWolfe,
    L1qNormedGradientOptim,
    L2FrankWolfe,
    L2NormedGradientOptim,
    L2ProjectedOptim,
    LinfFrankWolfe,
    LinfProjectedOptim,
    ParamTransformingOptimizer,
    SignedGradientOptim,
    TopQGradientOptimizer,
)

ATOL = 1e-4  # the reference gives 4 decimals


def close(actual, expected, atol=ATOL):
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    assert_close(actual.detach(), expected, atol=atol, rtol=0)


def leaf(values):
    return torch.tensor(values, dtype=torch.float32, requires_grad=True)


def one_step(optim, x, grad):
    x.grad = torch.as_tensor(grad, dtype=x.dtype).clone()
    optim.step()


# --------------------------------------------------------------------------- #
# Signed
# --------------------------------------------------------------------------- #
def test_signed_adamw_lr_0_1():
    # AdamW(lr=0.1, weight_decay=0.01): x*(1 - 0.001) - 0.1*sign(grad).
    # The seed's "[-10.9, 8.9]" is the lr=1.0 result: the seed example is wrong.
    x = leaf([-10.0, 10.0])
    optim = SignedGradientOptim([x], InnerOpt=torch.optim.AdamW, lr=0.1)
    (10_000 * x).sum().backward()
    optim.step()
    close(x, [-10.09, 9.89])
    assert not torch.allclose(x.detach(), torch.tensor([-10.9, 8.9]), atol=1e-2)


def test_signed_sgd():
    x = leaf([-1.5, 1.5])
    optim = SignedGradientOptim([x], lr=1.0, param_ndim=None)
    one_step(optim, x, [-2.0, 20.0])
    close(x.grad, [-1.0, 1.0])
    close(x, [-0.5, 0.5])


# --------------------------------------------------------------------------- #
# normed / projected
# --------------------------------------------------------------------------- #
def test_l1_normed():
    x = leaf([-1.0, 1.0])
    optim = L1NormedGradientOptim([x], param_ndim=None, lr=1.0)
    one_step(optim, x, [2.0, 2.0])
    close(x.grad, [0.5, 0.5])
    close(x, [-1.5, 0.5])


def test_l2_normed():
    x = leaf([-1.0, 1.0])
    optim = L2NormedGradientOptim([x], param_ndim=None, lr=1.0)
    (torch.tensor([2.0, 2.0]) * x).sum().backward()
    optim.step()
    close(x.grad, [0.7071, 0.7071])
    close(x, [-1.7071, 0.2929])


def test_l2_projected_eps_0_8():
    x = leaf([-1.0, 1.0])
    optim = L2ProjectedOptim([x], epsilon=0.8, param_ndim=None, lr=1.0)
    one_step(optim, x, [2.0, 2.0])
    close(x.grad, [0.7071, 0.7071])
    close(x, [-0.7885, 0.1353])
    assert_close(torch.linalg.vector_norm(x.detach()), torch.tensor(0.8), atol=1e-5, rtol=0)


def test_linf_projected_eps_1_8():
    x = leaf([-1.0, 0.5])
    optim = LinfProjectedOptim([x], epsilon=1.8, param_ndim=None, lr=1.0)
    one_step(optim, x, [2.0, -2.0])
    close(x.grad, [1.0, -1.0])
    close(x, [-1.8, 1.5])


# --------------------------------------------------------------------------- #
# top-q
# --------------------------------------------------------------------------- #
TOPQ_GRAD = [[0.5, 1.0], [-2.5, 0.3]]


@pytest.mark.parametrize(
    "q, expected_grad",
    [
        (0.0, [[0.5, 1.0], [-2.5, 0.3]]),
        (0.25, [[0.5, 1.0], [-2.5, 0.0]]),  # drops 0.3
        (0.5, [[0.0, 1.0], [-2.5, 0.0]]),  # keeps 1 and -2.5
        (0.75, [[0.0, 0.0], [-2.5, 0.0]]),  # keeps -2.5
        (1.0, [[0.0, 0.0], [0.0, 0.0]]),  # all zero
    ],
)
def test_topq_whole_tensor(q, expected_grad):
    x = torch.ones(2, 2, requires_grad=True)
    optim = TopQGradientOptimizer([x], q=q, param_ndim=None, lr=1.0)
    if q == 1.0:  # keeps nothing: said once (tests/test_edge_inputs.py checks the warning)
        with pytest.warns(UserWarning, match="0 of the 4 entries"):
            one_step(optim, x, TOPQ_GRAD)
    else:
        one_step(optim, x, TOPQ_GRAD)
    close(x.grad, expected_grad)
    close(x, 1.0 - torch.tensor(expected_grad))


def test_topq_q0_parameter_vector():
    x = torch.ones(2, 2, requires_grad=True)
    optim = TopQGradientOptimizer([x], q=0.0, param_ndim=None, lr=1.0)
    one_step(optim, x, TOPQ_GRAD)
    close(x, [[0.5, 0.0], [3.5, 0.7]])


def test_topq_param_ndim_1():
    x = torch.ones(2, 2, requires_grad=True)
    optim = TopQGradientOptimizer([x], q=0.5, param_ndim=1, lr=1.0)
    one_step(optim, x, TOPQ_GRAD)
    close(x.grad, [[0.0, 1.0], [-2.5, 0.0]])
    close(x, [[1.0, 0.0], [3.5, 1.0]])


# --------------------------------------------------------------------------- #
# clamped
# --------------------------------------------------------------------------- #
def test_clamped_gradient():
    x = torch.ones(2, requires_grad=True)
    optim = ClampedGradientOptimizer([x], clamp_min=-1.0, clamp_max=3.0, lr=1.0)
    one_step(optim, x, [-0.5, 10.0])
    close(x.grad, [-0.5, 3.0])
    close(x, [1.5, -2.0])


def test_clamped_parameter():
    x = torch.ones(2, requires_grad=True)
    optim = ClampedParameterOptimizer([x], clamp_min=-1.0, clamp_max=3.0, lr=1.0)
    one_step(optim, x, [0.5, -10.0])
    close(x.grad, [0.5, -10.0])  # the gradient is not touched
    close(x, [0.5, 3.0])


# --------------------------------------------------------------------------- #
# L1q
# --------------------------------------------------------------------------- #
def test_l1q_grad_scale_1_8():
    x = torch.ones(3, requires_grad=True)
    optim = L1qNormedGradientOptim(
        [x], q=0.3, grad_scale=1.8, InnerOpt=torch.optim.SGD, lr=1.0, param_ndim=None
    )
    one_step(optim, x, [0.0, 1.0, 2.0])
    close(x.grad, [0.0, 0.9, 0.9])
    close(x, [1.0, 0.1, 0.1])


def test_l1q_row_param_ndim_1():
    x = torch.zeros(4, requires_grad=True)
    optim = L1qNormedGradientOptim([x], q=0.5, param_ndim=1, lr=1.0)
    one_step(optim, x, [-1.0, -2.0, 3.0, 0.5])
    close(x.grad, [0.0, -0.5, 0.5, 0.0])
    close(x, [0.0, 0.5, -0.5, 0.0])


def test_l1q_param_ndim_1_acts_per_row():
    # the same row twice, and a different one: each row of a 2-D param is its own L1q problem
    x = torch.zeros(3, 4, requires_grad=True)
    optim = L1qNormedGradientOptim([x], q=0.5, param_ndim=1, lr=1.0)
    one_step(optim, x, [[-1.0, -2.0, 3.0, 0.5], [-1.0, -2.0, 3.0, 0.5], [4.0, 0.0, -1.0, 8.0]])
    close(x.grad, [[0.0, -0.5, 0.5, 0.0], [0.0, -0.5, 0.5, 0.0], [0.5, 0.0, 0.0, 0.5]])


# --------------------------------------------------------------------------- #
# chain
# --------------------------------------------------------------------------- #
def test_chain_topq_then_clamp():
    x = torch.ones(3, requires_grad=True)
    optim = ChainedParamTransformingOptimizer(
        partial(TopQGradientOptimizer, q=0.33),
        partial(ClampedGradientOptimizer, clamp_max=2.8),
        params=[x],
        lr=1.0,
        param_ndim=None,
    )
    one_step(optim, x, [1.0, 2.0, 3.0])
    close(x.grad, [0.0, 2.0, 2.8])
    close(x, [1.0, -1.0, -1.8])


def test_chain_order_matters():
    # clamp first, then top-q: 3 -> 2.8 is still the largest; result is the same here, but
    # with a clamp that makes ties the left-to-right order is visible:
    # grad [1, 2, 3], clamp_max=1.5 then topq(q=0.67, keep 1): [1, 1.5, 1.5] keeps one 1.5.
    x = torch.ones(3, requires_grad=True)
    optim = ChainedParamTransformingOptimizer(
        partial(ClampedGradientOptimizer, clamp_max=1.5),
        partial(TopQGradientOptimizer, q=0.67),
        params=[x],
        lr=1.0,
        param_ndim=None,
    )
    one_step(optim, x, [1.0, 2.0, 3.0])
    g = x.grad
    assert int((g != 0).sum()) == 1
    assert float(g.max()) == pytest.approx(1.5)
    assert float(g[0]) == 0.0
    # the other order keeps 3 and then clamps it to 1.5 at index 2
    y = torch.ones(3, requires_grad=True)
    optim = ChainedParamTransformingOptimizer(
        partial(TopQGradientOptimizer, q=0.67),
        partial(ClampedGradientOptimizer, clamp_max=1.5),
        params=[y],
        lr=1.0,
        param_ndim=None,
    )
    one_step(optim, y, [1.0, 2.0, 3.0])
    close(y.grad, [0.0, 0.0, 1.5])


# --------------------------------------------------------------------------- #
# Frank-Wolfe
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "cls, expected",
    [
        (L1FrankWolfe, [0.0, -1.8]),
        (L2FrankWolfe, [-0.8050, -1.6100]),
        (LinfFrankWolfe, [-1.8, -1.8]),
    ],
)
def test_frank_wolfe_one_step(cls, expected):
    x = leaf([1.0, 1.0])
    optim = cls([x], epsilon=1.8, param_ndim=None)
    x.backward(gradient=torch.tensor([1.0, 2.0]))
    optim.step()
    close(x, expected)


def test_l1q_frank_wolfe_and_fixed_point():
    x = torch.ones(3, requires_grad=True)
    optim = L1qFrankWolfe([x], q=0.3, epsilon=1.8, param_ndim=None)
    (torch.tensor([0.0, 1.0, 2.0]) * x).sum().backward()
    optim.step()
    close(x, [0.0, -0.9, -0.9])
    assert_close(x.detach().abs().sum(), torch.tensor(1.8), atol=1e-5, rtol=0)
    for _ in range(4):  # alpha = 2/3, 2/4, ...: (1-a)*v - a*v' with v == v' stays put
        optim.zero_grad()
        (torch.tensor([0.0, 1.0, 2.0]) * x).sum().backward()
        optim.step()
        close(x, [0.0, -0.9, -0.9])


def test_l1_frank_wolfe_second_step_uses_schedule():
    # k=1: alpha = 2/3; x = (1/3)[0, -1.8] - (2/3)*1.8*[0, 1] = [0, -1.8]; with grad [3, 0]
    # the vertex moves: x = (1/3)[0, -1.8] - (2/3)*1.8*[1, 0] = [-1.2, -0.6]
    x = leaf([1.0, 1.0])
    optim = L1FrankWolfe([x], epsilon=1.8, param_ndim=None)
    one_step(optim, x, [1.0, 2.0])
    close(x, [0.0, -1.8])
    one_step(optim, x, [3.0, 0.0])
    close(x, [-1.2, -0.6])


# --------------------------------------------------------------------------- #
# The max-norm example of the PTO seed
# --------------------------------------------------------------------------- #
class MaxNormedGradientOptim(ParamTransformingOptimizer):
    def _pre_step_transform_(self, param: torch.Tensor, **_kwds) -> None:
        if param.grad is None:
            return
        g = param.grad.flatten(1)  # (N, d1, ..., dm) -> (N, d1 * ... * dm)
        max_norms = torch.max(g, dim=1).values
        max_norms = max_norms.view(-1, *([1] * (param.ndim - 1)))
        param.grad /= torch.clamp(max_norms, 1e-20, None)


@pytest.mark.parametrize(
    "param_ndim, expected",
    [
        (0, [[1.0, 1.0], [1.0, 1.0]]),
        (1, [[0.5, 1.0], [1.0, 0.5]]),
        (2, [[0.05, 0.1], [1.0, 0.5]]),
    ],
)
def test_max_normed_seed_example(param_ndim, expected):
    x = leaf([[1.0, 2.0], [20.0, 10.0]])
    optim = MaxNormedGradientOptim([x], param_ndim=param_ndim, InnerOpt=torch.optim.SGD, lr=0.0)
    (x * x).sum().backward()
    optim.step()
    close(x.grad, expected)
    close(x, [[1.0, 2.0], [20.0, 10.0]])  # lr=0
    optim.zero_grad()
    assert x.grad is None


def test_max_normed_seed_example_one_x_reused():
    # exactly as in the seed: one x, a new optimizer per param_ndim, zero_grad in between
    x = leaf([[1.0, 2.0], [20.0, 10.0]])
    seen = []
    for param_ndim in [0, 1, 2]:
        optim = MaxNormedGradientOptim([x], param_ndim=param_ndim, lr=0.0)
        (x * x).sum().backward()
        optim.step()
        seen.append(x.grad.clone())
        optim.zero_grad()
    close(seen[0], torch.ones(2, 2))
    close(seen[1], [[0.5, 1.0], [1.0, 0.5]])
    close(seen[2], [[0.05, 0.1], [1.0, 0.5]])


# --------------------------------------------------------------------------- #
# param_ndim reshape table
# --------------------------------------------------------------------------- #
class ShapeRecorder(ParamTransformingOptimizer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pre = []
        self.post = []

    def _pre_step_transform_(self, param, optim_group):
        self.pre.append((tuple(param.shape), tuple(param.grad.shape)))

    def _post_step_transform_(self, param, optim_group):
        self.post.append((tuple(param.shape), tuple(param.grad.shape)))


@pytest.mark.parametrize(
    "param_ndim, rows",
    [
        (0, (30, 1)),
        (-3, (30, 1)),
        (1, (15, 2)),
        (-2, (15, 2)),
        (2, (3, 5, 2)),
        (-1, (3, 5, 2)),
        (3, (1, 3, 5, 2)),
        (None, (1, 3, 5, 2)),
    ],
)
def test_param_ndim_reshape_table(param_ndim, rows):
    x = torch.randn(3, 5, 2, requires_grad=True)
    optim = ShapeRecorder([x], param_ndim=param_ndim, lr=0.0)
    x.grad = torch.randn(3, 5, 2)
    optim.step()
    assert optim.pre == [(rows, rows)]
    assert optim.post == [(rows, rows)]
    assert x.shape == (3, 5, 2) and x.grad.shape == (3, 5, 2)


def test_param_ndim_default_is_minus_one():
    x = torch.randn(3, 5, 2, requires_grad=True)
    optim = ShapeRecorder([x], lr=0.0)
    x.grad = torch.randn(3, 5, 2)
    optim.step()
    assert optim.pre == [((3, 5, 2), (3, 5, 2))]


@pytest.mark.parametrize("param_ndim", [0, 1, -1, None])
def test_scalar_param_is_one_row_of_one(param_ndim):
    x = torch.tensor(2.0, requires_grad=True)
    optim = ShapeRecorder([x], param_ndim=param_ndim, lr=1.0)
    x.grad = torch.tensor(0.5)
    optim.step()
    assert optim.pre == [((1, 1), (1, 1))]
    assert optim.post == [((1, 1), (1, 1))]
    assert x.shape == () and x.grad.shape == ()
    close(x, 1.5)


def test_scalar_param_real_optimizers():
    x = torch.tensor(-3.0, requires_grad=True)
    optim = L2ProjectedOptim([x], epsilon=1.0, lr=1.0)
    x.grad = torch.tensor(-7.0)
    optim.step()  # grad -> -1, x -> -2, projected onto [-1, 1]
    close(x.grad, -1.0)
    close(x, -1.0)
    y = torch.tensor(0.25, requires_grad=True)
    optim = TopQGradientOptimizer([y], q=0.0, lr=1.0)
    y.grad = torch.tensor(-0.5)
    optim.step()
    close(y, 0.75)


def test_rows_are_views_of_param_and_grad():
    # writes through the rows land in the parameter and its gradient
    class Writer(ParamTransformingOptimizer):
        def _pre_step_transform_(self, param, optim_group):
            param.grad[:, 0] = 100.0 + torch.arange(param.shape[0], dtype=param.dtype)

        def _post_step_transform_(self, param, optim_group):
            param[:, -1] = -7.0

    x = torch.zeros(3, 4, requires_grad=True)
    optim = Writer([x], param_ndim=1, lr=1.0)
    x.grad = torch.zeros(3, 4)
    optim.step()
    expected_grad = torch.zeros(3, 4)
    expected_grad[:, 0] = torch.tensor([100.0, 101.0, 102.0])
    close(x.grad, expected_grad)
    expected_x = -expected_grad
    expected_x[:, -1] = -7.0
    close(x, expected_x)


# --------------------------------------------------------------------------- #
# non-contiguous parameters
# --------------------------------------------------------------------------- #
def _transposed_leaf(values: torch.Tensor) -> torch.Tensor:
    """A non-contiguous *leaf* tensor equal to ``values``."""
    x = values.t().contiguous().t().detach().requires_grad_(True)
    assert x.is_leaf and not x.is_contiguous()
    assert_close(x.detach(), values)
    return x


NONCONTIG_CASES = {
    "L2Normed rows": lambda p: L2NormedGradientOptim(p, lr=1.0),
    "L2Projected rows": lambda p: L2ProjectedOptim(p, epsilon=0.7, lr=1.0),
    "TopQ rows": lambda p: TopQGradientOptimizer(p, q=0.5, lr=1.0),
    "L1q param_ndim=1": lambda p: L1qNormedGradientOptim(p, q=0.5, param_ndim=1, lr=1.0),
    "TopQ whole": lambda p: TopQGradientOptimizer(p, q=0.75, param_ndim=None, lr=1.0),
    "MaxNormed param_ndim=1": lambda p: MaxNormedGradientOptim(p, param_ndim=1, lr=1.0),
    "L1FrankWolfe rows": lambda p: L1FrankWolfe(p, epsilon=1.0),
    "ClampedParam": lambda p: ClampedParameterOptimizer(p, clamp_min=-0.2, clamp_max=0.3, lr=1.0),
}


@pytest.mark.parametrize("make", NONCONTIG_CASES.values(), ids=list(NONCONTIG_CASES))
def test_non_contiguous_param_matches_contiguous_twin(make):
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(3, 4, generator=gen)
    weights = torch.randn(3, 4, generator=gen).abs() + 0.1
    twin = values.clone().requires_grad_(True)
    x = _transposed_leaf(values)
    opt_twin, opt_x = make([twin]), make([x])
    for _ in range(2):
        for p, o in ((twin, opt_twin), (x, opt_x)):
            o.zero_grad()
            ((p * weights) ** 3).sum().backward()
        assert_close(x.grad, twin.grad)
        opt_twin.step()
        opt_x.step()
        assert_close(x.grad, twin.grad, atol=1e-6, rtol=1e-6)
        assert_close(x.detach(), twin.detach(), atol=1e-6, rtol=1e-6)
    assert not x.is_contiguous()  # still the same (strided) leaf
    # the transforms really did something
    assert not torch.allclose(x.detach(), values)


def test_non_contiguous_grad_on_contiguous_param():
    x = torch.zeros(2, 3, requires_grad=True)
    twin = torch.zeros(2, 3, requires_grad=True)
    grad = torch.tensor([[3.0, 0.0, 4.0], [0.0, 1.0, 0.0]])
    x.grad = grad.t().contiguous().t()
    assert not x.grad.is_contiguous()
    twin.grad = grad.clone()
    for p in (x, twin):
        L2NormedGradientOptim([p], param_ndim=1, lr=1.0).step()
    close(x.grad, [[0.6, 0.0, 0.8], [0.0, 1.0, 0.0]])
    assert_close(x.grad, twin.grad)
    assert_close(x.detach(), twin.detach())

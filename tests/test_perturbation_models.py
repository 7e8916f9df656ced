"""Tests of the perturbation models of :mod:`rai_probe.perturbations` (REFERENCE.md section 3).

``AdditivePerturbation``: the shape of ``delta`` for every ``delta_ndim``,
where its device and dtype come from, ``forward`` (per-datum and universal,
with gradients), how ``init_fn`` is called, and the errors. The
``PerturbationModel`` protocol: what does and does not satisfy it.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn

from conftest import FLOAT_DTYPES
from rai_probe.optim import L1ProjectedOptim, L2ProjectedOptim
from rai_probe.perturbations import (
    AdditivePerturbation,
    PerturbationModel,
    uniform_like_l1_n_ball_,
    uniform_like_l2_n_ball_,
    uniform_like_linf_n_ball_,
)

BATCH = (4, 3, 5, 6)


# --------------------------------------------------------------------------- #
# the shape of delta
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "delta_ndim, shape",
    [
        (None, (4, 3, 5, 6)),
        (4, (4, 3, 5, 6)),
        (3, (3, 5, 6)),
        (2, (5, 6)),
        (1, (6,)),
        (0, ()),
        (-1, (3, 5, 6)),
        (-2, (5, 6)),
        (-3, (6,)),
        (-4, ()),
    ],
)
def test_delta_shape(delta_ndim, shape):
    pert = AdditivePerturbation(torch.rand(BATCH), delta_ndim=delta_ndim)
    assert pert.delta.shape == shape
    assert isinstance(pert.delta, nn.Parameter) and pert.delta.requires_grad
    assert bool((pert.delta == 0).all())
    assert [name for name, _ in pert.named_parameters()] == ["delta"]


@pytest.mark.parametrize("shape", [BATCH, list(BATCH), torch.Size(BATCH)])
def test_shape_instead_of_data(shape):
    pert = AdditivePerturbation(shape, delta_ndim=-1)
    assert pert.delta.shape == (3, 5, 6)
    assert pert.delta.dtype == torch.get_default_dtype()


def test_scalar_and_empty_data():
    assert AdditivePerturbation(torch.tensor(2.0)).delta.shape == ()
    assert AdditivePerturbation(torch.tensor(2.0), delta_ndim=0).delta.shape == ()
    assert AdditivePerturbation(()).delta.shape == ()
    empty = AdditivePerturbation((0, 3), uniform_like_l2_n_ball_)
    assert empty.delta.shape == (0, 3)
    assert empty(torch.zeros(0, 3)).shape == (0, 3)


# --------------------------------------------------------------------------- #
# dtype and device
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_dtype_and_device_follow_floating_data(dtype, device):
    data = torch.zeros(2, 3, dtype=dtype, device=device)
    pert = AdditivePerturbation(data)
    assert pert.delta.dtype == dtype and pert.delta.device == data.device
    assert pert(data).dtype == dtype


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.bool])
def test_non_floating_data_gives_the_default_float_dtype(dtype):
    data = torch.zeros(2, 3, dtype=dtype)
    assert AdditivePerturbation(data).delta.dtype == torch.float32
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        assert AdditivePerturbation(data).delta.dtype == torch.float64
        assert AdditivePerturbation((2, 3)).delta.dtype == torch.float64
    finally:
        torch.set_default_dtype(previous)
    images = torch.randint(0, 256, (2, 3), dtype=torch.uint8)
    assert AdditivePerturbation(images)(images).dtype == torch.float32


def test_dtype_and_device_overrides(device):
    data = torch.zeros(2, 3, dtype=torch.float64)
    pert = AdditivePerturbation(data, dtype=torch.bfloat16, device=device)
    assert pert.delta.dtype == torch.bfloat16 and pert.delta.device.type == device.type
    assert AdditivePerturbation((2, 3), device="cpu", dtype=torch.float16).delta.dtype == torch.float16


def test_module_moves_like_any_module():
    pert = AdditivePerturbation(torch.zeros(2, 3)).to(torch.float64)
    assert pert.delta.dtype == torch.float64 and isinstance(pert.delta, nn.Parameter)
    assert set(pert.state_dict()) == {"delta"}
    assert "shape=(2, 3)" in repr(pert)


# --------------------------------------------------------------------------- #
# forward
# --------------------------------------------------------------------------- #
def test_forward_per_datum():
    data = torch.rand(BATCH)
    pert = AdditivePerturbation(data, nn.init.normal_)
    out = pert(data)
    assert torch.equal(out, data + pert.delta.detach())
    out.sum().backward()
    assert torch.equal(pert.delta.grad, torch.ones(BATCH))


def test_forward_universal_is_shared_by_every_datum():
    data = torch.rand(BATCH)
    pert = AdditivePerturbation(data, nn.init.normal_, delta_ndim=-1)
    out = pert(data)
    for i in range(BATCH[0]):
        assert torch.equal(out[i], data[i] + pert.delta.detach())
    (out * torch.arange(1.0, 5.0).view(4, 1, 1, 1)).sum().backward()
    assert torch.equal(pert.delta.grad, torch.full(BATCH[1:], 10.0))  # 1 + 2 + 3 + 4


def test_forward_scalar_and_trailing_dims():
    data = torch.rand(BATCH)
    scalar = AdditivePerturbation(data, nn.init.constant_, delta_ndim=0, val=0.5)
    assert torch.equal(scalar(data), data + 0.5)
    columns = AdditivePerturbation(data, nn.init.normal_, delta_ndim=1)
    assert torch.equal(columns(data)[2, 1, 3], data[2, 1, 3] + columns.delta.detach())


def test_forward_leaves_data_alone_and_works_on_other_batches():
    data = torch.rand(BATCH)
    copy = data.clone()
    pert = AdditivePerturbation(data, uniform_like_linf_n_ball_, delta_ndim=-1, epsilon=0.1)
    assert torch.equal(data, copy)
    pert(data)
    assert torch.equal(data, copy)
    other = torch.rand(7, 3, 5, 6)  # a universal perturbation applies to any batch size
    assert pert(other).shape == (7, 3, 5, 6)


# --------------------------------------------------------------------------- #
# init_fn
# --------------------------------------------------------------------------- #
def test_init_fn_receives_delta_and_the_keyword_arguments():
    calls = []

    def init_fn(delta, **kwargs):
        calls.append((delta, bool((delta == 0).all()), torch.is_grad_enabled(), kwargs))
        delta.fill_(kwargs["value"])

    gen = torch.Generator()
    pert = AdditivePerturbation(torch.zeros(2, 3), init_fn, value=3.0, generator=gen)
    [(delta, was_zero, grad_enabled, kwargs)] = calls
    assert delta is pert.delta and was_zero and not grad_enabled
    assert kwargs == {"value": 3.0, "generator": gen}
    assert bool((pert.delta == 3.0).all()) and pert.delta.requires_grad


@pytest.mark.parametrize(
    "init_fn, norm",
    [(uniform_like_l1_n_ball_, 1), (uniform_like_l2_n_ball_, 2), (uniform_like_linf_n_ball_, float("inf"))],
)
def test_ball_initializers_as_init_fn(init_fn, norm):
    data = torch.rand(BATCH)

    def make(seed, **kwargs):
        gen = torch.Generator().manual_seed(seed)
        return AdditivePerturbation(data, init_fn, epsilon=0.5, generator=gen, **kwargs).delta.detach()

    delta = make(0)
    norms = torch.linalg.vector_norm(delta.flatten(1), ord=norm, dim=1)
    assert norms.shape == (4,) and bool((norms <= 0.5 + 1e-6).all()) and bool((norms > 0).all())
    assert torch.equal(delta, make(0)) and not torch.equal(delta, make(1))
    universal = make(0, delta_ndim=-1, param_ndim=None)
    assert universal.shape == (3, 5, 6)
    assert float(torch.linalg.vector_norm(universal.flatten(), ord=norm)) <= 0.5 + 1e-6


def test_init_fn_as_partial_and_torch_init():
    pert = AdditivePerturbation((2, 3), partial(uniform_like_l2_n_ball_, epsilon=0.01))
    assert bool((pert.delta.norm(dim=1) <= 0.01 + 1e-8).all())
    pert = AdditivePerturbation((2, 3), nn.init.uniform_, a=1.0, b=2.0)
    assert bool(((pert.delta >= 1.0) & (pert.delta <= 2.0)).all())
    pert = AdditivePerturbation((2, 3), lambda d: None)  # returning nothing is fine
    assert bool((pert.delta == 0).all())
    pert = AdditivePerturbation((2, 3), lambda d: d.view(-1)[:2].fill_(1.0))  # a view of delta
    assert float(pert.delta.detach().sum()) == 2.0


def test_init_fn_returning_a_new_tensor_is_an_error():
    with pytest.raises(TypeError, match="`init_fn` must fill `delta` in place"):
        AdditivePerturbation((2, 3), torch.rand_like)


# --------------------------------------------------------------------------- #
# with an optimizer
# --------------------------------------------------------------------------- #
def test_per_datum_perturbation_with_a_projected_optimizer():
    data = torch.rand(BATCH)
    gen = torch.Generator().manual_seed(0)
    pert = AdditivePerturbation(data, uniform_like_l1_n_ball_, epsilon=2.0, generator=gen)
    optim = L1ProjectedOptim(pert.parameters(), epsilon=2.0, q=0.9, lr=0.5)
    for _ in range(3):
        optim.zero_grad()
        (pert(data) ** 2).sum().backward()
        optim.step()
    l1 = pert.delta.detach().flatten(1).abs().sum(dim=1)
    assert bool((l1 <= 2.0 + 1e-5).all())


def test_universal_perturbation_with_one_ball():
    data = torch.rand(BATCH)
    pert = AdditivePerturbation(data, delta_ndim=-1)
    optim = L2ProjectedOptim(pert.parameters(), epsilon=1.0, lr=10.0, param_ndim=None)
    (pert(data) ** 2).sum().backward()
    optim.step()
    assert float(pert.delta.detach().norm()) == pytest.approx(1.0, rel=1e-5)


# --------------------------------------------------------------------------- #
# the protocol
# --------------------------------------------------------------------------- #
def test_perturbation_model_protocol():
    assert isinstance(AdditivePerturbation((2,)), PerturbationModel)
    assert isinstance(nn.Linear(2, 2), PerturbationModel)

    class Duck:
        def __call__(self, data):
            return data

        def parameters(self):
            return iter(())

    assert isinstance(Duck(), PerturbationModel)
    assert not isinstance(lambda data: data, PerturbationModel)
    assert not isinstance(torch.zeros(2), PerturbationModel)  # no parameters()


# --------------------------------------------------------------------------- #
# bad input
# --------------------------------------------------------------------------- #
def test_keyword_arguments_without_init_fn():
    with pytest.raises(TypeError, match=r"keyword arguments \['epsilon', 'generator'\] .* no init_fn"):
        AdditivePerturbation((2, 3), epsilon=1.0, generator=torch.Generator())


@pytest.mark.parametrize("init_fn", [1.0, "uniform_like_l2_n_ball_", torch.zeros(2)])
def test_init_fn_not_callable(init_fn):
    with pytest.raises(TypeError, match="`init_fn` must be callable"):
        AdditivePerturbation((2, 3), init_fn)


@pytest.mark.parametrize("delta_ndim", [5, -5, 100])
def test_delta_ndim_out_of_range(delta_ndim):
    with pytest.raises(ValueError, match=r"`delta_ndim` must be None or an integer within \[-4, 4\]"):
        AdditivePerturbation(torch.zeros(BATCH), delta_ndim=delta_ndim)
    with pytest.raises(ValueError, match="`delta_ndim`"):
        AdditivePerturbation(torch.tensor(1.0), delta_ndim=1)


@pytest.mark.parametrize("delta_ndim", [1.0, "1", True])
def test_delta_ndim_not_an_integer(delta_ndim):
    with pytest.raises(TypeError, match="`delta_ndim`"):
        AdditivePerturbation((2, 3), delta_ndim=delta_ndim)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, "float32"])
def test_non_floating_dtype(dtype):
    with pytest.raises(TypeError, match="`dtype`"):
        AdditivePerturbation((2, 3), dtype=dtype)


def test_bad_shape():
    with pytest.raises(TypeError, match="`data_or_shape`"):
        AdditivePerturbation(3)
    with pytest.raises(TypeError, match="`data_or_shape`"):
        AdditivePerturbation("23")
    with pytest.raises(ValueError, match="`data_or_shape`"):
        AdditivePerturbation((2, -1))
    with pytest.raises(ValueError, match="`data_or_shape`"):
        AdditivePerturbation((2, 1.5))

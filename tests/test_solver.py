"""Tests of the ``gradient_ascent`` solver and ``random_restart`` (REFERENCE.md section 3, issue 3).

What is checked, in the order of the file:

* the reference vector (identity model, loss ``|x - 0|``) and the
  ``AttackResult`` fields, also on a classifier;
* the optimizer and the perturbation model given as a class, a
  ``functools.partial`` or an instance;
* on a small trained classifier (an MLP on the blob images of
  :func:`rai_probe.data.make_blob_images`, trained once per module):
  untargeted runs raise the loss, targeted runs lower the targeted loss, for
  the L1q Frank-Wolfe, L1, L2 and L-inf projected optimizers; ``use_best`` is
  never worse than the final iterate;
* with ``data_range``: every iterate the model sees lies in the epsilon-ball
  and in the box (a hypothesis property over random models, data, epsilons
  (one or one per datum), ``q``, step sizes and random starts), the box handed
  to an optimizer instance's ``bounds`` is taken back after the run, and
  ``project_l1_ball_box_`` matches a brute-force float64 bisection on the
  soft threshold and is idempotent;
* the model's train/eval modes and ``requires_grad`` flags are restored after
  a run and after an error raised inside it; the caller's data is never
  modified; ``torch.no_grad()`` callers get the same result;
* early stopping leaves finished data untouched and ends the run when all are
  done; ``first_success_step`` agrees with the predictions;
* ``random_restart`` keeps each datum's best run;
* bad input: a ValueError naming the argument, nothing left modified;
* float32 and bfloat16 models give finite results.

Regression tests for four solver bugs found while writing this file (fixed in
e2a2869): out-of-range targets reaching the default criterion before the
class check, a duplicated final evaluation after early stopping, uint8 data
wrapping around in ``low - data``, an optimizer's own ``bounds`` replaced by
the data-range box instead of intersected with it.
"""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from rai_probe.data import make_blob_images
from rai_probe.optim import (
    L1FrankWolfe,
    L1ProjectedOptim,
    L1qFrankWolfe,
    L2ProjectedOptim,
    LinfProjectedOptim,
)
from rai_probe.optim import functional as F
from rai_probe.perturbations import (
    AdditivePerturbation,
    AttackResult,
    gradient_ascent,
    random_restart,
    uniform_like_l1_n_ball_,
    uniform_like_l2_n_ball_,
    uniform_like_linf_n_ball_,
)

CE = nn.functional.cross_entropy


def abs_loss(x, target):
    """The reference criterion ``|x - target|`` (one loss per datum)."""
    return (x - target).abs()


def identity(x):
    return x


# --------------------------------------------------------------------------- #
# fixtures: one thread (tiny models are fastest that way and do not suffer
# from oversubscription when other processes share the 2 cores) and one small
# trained classifier per module
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Classifier:
    """A trained MLP and a held-out batch it classifies correctly."""

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(0)
        x, y = make_blob_images(500, 0.5, gen)
        torch.manual_seed(0)
        net = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 32), nn.ReLU(), nn.Linear(32, 10))
        optim = torch.optim.Adam(net.parameters(), lr=3e-3)
        for _ in range(60):
            optim.zero_grad()
            CE(net(x), y).backward()
            optim.step()
        optim.zero_grad(set_to_none=True)
        self.net = net.eval()
        self.x, self.y = make_blob_images(32, 0.5, gen)
        with torch.no_grad():
            logits = self.net(self.x)
        assert bool((logits.argmax(1) == self.y).all()), "the test batch should be classified correctly"
        #: A wrong class per datum, for targeted runs.
        self.target = (self.y + 3) % 10

    def losses(self, x, target):
        with torch.no_grad():
            return CE(self.net(x), target, reduction="none")


@pytest.fixture(scope="module")
def clf():
    return Classifier()


class Recorder(nn.Module):
    """Wraps a model and records every input it is called on."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.inputs: list[torch.Tensor] = []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.net(x)


#: The four optimizers of the "Done when" list, with settings that work on the blob classifier.
ATTACKS = {
    "L1qFrankWolfe": (L1qFrankWolfe, dict(q=0.95, epsilon=20.0)),
    "L1ProjectedOptim": (L1ProjectedOptim, dict(q=0.95, epsilon=20.0, lr=2.0)),
    "L2ProjectedOptim": (L2ProjectedOptim, dict(epsilon=2.0, lr=0.5)),
    "LinfProjectedOptim": (LinfProjectedOptim, dict(epsilon=0.1, lr=0.02)),
}


# --------------------------------------------------------------------------- #
# the reference vector and the result object
# --------------------------------------------------------------------------- #
def _reference(**kwargs):
    options = dict(
        model=identity,
        data=torch.tensor([-1.0, 2.0]),
        target=torch.zeros(2),
        optimizer=torch.optim.SGD,
        lr=0.1,
        steps=5,
        criterion=abs_loss,
    )
    options.update(kwargs)
    return gradient_ascent(**options)


@pytest.mark.parametrize("use_best", [False, True])
def test_reference_vector_untargeted(use_best):
    result = _reference(use_best=use_best)
    xadv, losses = result  # the reference return
    assert torch.allclose(xadv, torch.tensor([-1.5, 2.5]))
    assert torch.allclose(losses, torch.tensor([1.5, 2.5]))  # the criterion's own sign


@pytest.mark.parametrize("use_best", [False, True])
def test_reference_vector_targeted(use_best):
    xadv, losses = _reference(targeted=True, use_best=use_best)
    assert torch.allclose(xadv, torch.tensor([-0.5, 1.5]))
    assert torch.allclose(losses, torch.tensor([0.5, 1.5]))  # positive: not negated for targeted


def test_reference_vector_result_fields():
    result = _reference()
    assert isinstance(result, AttackResult)
    assert len(result) == 2
    assert result[0] is result.xadv and result[1] is result.losses
    # the loss is sum |x|: 3.0 at the start, +0.2 per step
    assert result.loss_trace.shape == (6,)
    assert torch.allclose(result.loss_trace, 3.0 + 0.2 * torch.arange(6.0))
    assert result.datum_loss_trace.shape == (6, 2)
    assert torch.allclose(result.datum_loss_trace.sum(1), result.loss_trace)
    assert torch.allclose(result.datum_loss_trace[-1], result.losses)
    assert result.success is None and result.first_success_step is None  # not a classifier
    assert torch.equal(result.logits, result.xadv)  # identity model
    assert result.steps_run == 5
    assert not result.xadv.requires_grad and not result.losses.requires_grad


def test_reference_vector_reduction_fn_and_targeted_trace():
    # mean instead of sum halves the gradient: 5 steps of 0.05
    xadv, _ = _reference(reduction_fn=torch.mean)
    assert torch.allclose(xadv, torch.tensor([-1.25, 2.25]))
    result = _reference(targeted=True)
    assert torch.allclose(result.loss_trace, 3.0 - 0.2 * torch.arange(6.0))  # criterion sign


def test_result_fields_on_a_classifier(clf):
    steps = 4
    result = gradient_ascent(
        model=clf.net, data=clf.x, target=clf.y, optimizer=L2ProjectedOptim,
        epsilon=2.0, lr=0.5, steps=steps,
    )
    n = clf.x.shape[0]
    assert result.xadv.shape == clf.x.shape and result.xadv.dtype == clf.x.dtype
    assert result.logits.shape == (n, 10)
    with torch.no_grad():
        logits = clf.net(result.xadv)
    assert torch.allclose(result.logits, logits, atol=1e-5)
    assert torch.allclose(result.losses, CE(logits, clf.y, reduction="none"), atol=1e-5)
    assert result.loss_trace.shape == (steps + 1,)
    assert result.datum_loss_trace.shape == (steps + 1, n)
    assert torch.allclose(result.loss_trace, result.datum_loss_trace.sum(1), rtol=1e-5)
    assert result.loss_trace[0] == pytest.approx(float(clf.losses(clf.x, clf.y).sum()), rel=1e-5)
    assert result.success.dtype == torch.bool and result.success.shape == (n,)
    # success is the result's own logits' verdict (a recomputed forward may differ in the
    # last bits on another CPU and flip a near-tie, so it is only compared with allclose above)
    assert torch.equal(result.success, result.logits.argmax(1) != clf.y)
    assert result.first_success_step.dtype == torch.int64
    assert result.first_success_step.shape == (n,)
    assert result.steps_run == steps


# --------------------------------------------------------------------------- #
# optimizer and perturbation model: class, partial, instance
# --------------------------------------------------------------------------- #
DATA = torch.tensor([-1.0, 2.0])


@pytest.mark.parametrize(
    "make_perturbation",
    [
        lambda: AdditivePerturbation,
        lambda: partial(AdditivePerturbation, delta_ndim=None),
        lambda: (lambda data: AdditivePerturbation(data)),  # a factory function
        lambda: AdditivePerturbation(DATA),  # an instance
    ],
    ids=["class", "partial", "factory", "instance"],
)
@pytest.mark.parametrize("optimizer_kind", ["class", "partial", "instance"])
def test_optimizer_and_perturbation_forms(make_perturbation, optimizer_kind):
    perturbation = make_perturbation()
    kwargs = {}
    if optimizer_kind == "class":
        optimizer, kwargs = torch.optim.SGD, dict(lr=0.1)
    elif optimizer_kind == "partial":
        optimizer = partial(torch.optim.SGD, lr=0.1)
    elif not isinstance(perturbation, nn.Module):
        # an optimizer instance cannot hold the parameters of a perturbation the solver builds
        optimizer = torch.optim.SGD(AdditivePerturbation(DATA).parameters(), lr=0.1)
        with pytest.raises(ValueError, match="`optimizer` does not hold"):
            gradient_ascent(model=identity, data=DATA, target=torch.zeros(2), optimizer=optimizer,
                            steps=5, perturbation_model=perturbation, criterion=abs_loss)
        return
    else:
        optimizer = torch.optim.SGD(perturbation.parameters(), lr=0.1)
    xadv, _ = gradient_ascent(
        model=identity, data=DATA, target=torch.zeros(2), optimizer=optimizer, steps=5,
        perturbation_model=perturbation, criterion=abs_loss, **kwargs,
    )
    assert torch.allclose(xadv, torch.tensor([-1.5, 2.5]))


def test_rai_probe_optimizer_as_partial_and_instance(clf):
    data, target = clf.x[:8], clf.y[:8]
    by_class = gradient_ascent(model=clf.net, data=data, target=target, optimizer=L2ProjectedOptim,
                               epsilon=1.0, lr=0.3, steps=3)
    by_partial = gradient_ascent(model=clf.net, data=data, target=target,
                                 optimizer=partial(L2ProjectedOptim, epsilon=1.0, lr=0.3), steps=3)
    pert = AdditivePerturbation(data)
    by_instance = gradient_ascent(model=clf.net, data=data, target=target, steps=3,
                                  optimizer=L2ProjectedOptim(pert.parameters(), epsilon=1.0, lr=0.3),
                                  perturbation_model=pert)
    assert torch.equal(by_class.xadv, by_partial.xadv)
    assert torch.equal(by_class.xadv, by_instance.xadv)


def test_optimizer_instance_must_hold_the_perturbation_parameters():
    stranger = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="`optimizer`"):
        gradient_ascent(model=identity, data=DATA, target=torch.zeros(2), steps=1, criterion=abs_loss,
                        optimizer=torch.optim.SGD([stranger], lr=0.1))
    # an instance built on another perturbation instance's parameters
    other = AdditivePerturbation(DATA)
    with pytest.raises(ValueError, match="`optimizer`"):
        gradient_ascent(model=identity, data=DATA, target=torch.zeros(2), steps=1, criterion=abs_loss,
                        optimizer=torch.optim.SGD(other.parameters(), lr=0.1),
                        perturbation_model=AdditivePerturbation(DATA))
    assert torch.equal(stranger, torch.zeros(2)) and stranger.grad is None


def test_optimizer_instance_with_keyword_arguments_is_rejected():
    pert = AdditivePerturbation(DATA)
    with pytest.raises(TypeError, match="lr"):
        gradient_ascent(model=identity, data=DATA, target=torch.zeros(2), steps=1, criterion=abs_loss,
                        optimizer=torch.optim.SGD(pert.parameters(), lr=0.1), perturbation_model=pert,
                        lr=0.2)


# --------------------------------------------------------------------------- #
# a real small trained model: direction of the loss
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("data_range", [None, (0.0, 1.0)], ids=["no-range", "range"])
@pytest.mark.parametrize("name", list(ATTACKS))
def test_untargeted_raises_the_loss(clf, name, data_range):
    optimizer, kwargs = ATTACKS[name]
    clean = clf.losses(clf.x, clf.y)
    result = gradient_ascent(model=clf.net, data=clf.x, target=clf.y, optimizer=optimizer, steps=10,
                             data_range=data_range, **kwargs)
    assert bool((result.losses > clean).all()), f"{int((result.losses <= clean).sum())} data did not gain"
    assert result.losses.mean() > 10 * clean.mean()
    assert torch.allclose(result.losses, clf.losses(result.xadv, clf.y), rtol=1e-4, atol=1e-6)
    assert result.loss_trace[-1] > result.loss_trace[0]


@pytest.mark.parametrize("data_range", [None, (0.0, 1.0)], ids=["no-range", "range"])
@pytest.mark.parametrize("name", list(ATTACKS))
def test_targeted_lowers_the_targeted_loss(clf, name, data_range):
    optimizer, kwargs = ATTACKS[name]
    clean = clf.losses(clf.x, clf.target)
    result = gradient_ascent(model=clf.net, data=clf.x, target=clf.target, optimizer=optimizer,
                             steps=10, targeted=True, data_range=data_range, **kwargs)
    assert bool((result.losses < clean).all()), f"{int((result.losses >= clean).sum())} data did not lose"
    assert result.losses.mean() < 0.8 * clean.mean()
    assert torch.allclose(result.losses, clf.losses(result.xadv, clf.target), rtol=1e-4, atol=1e-6)
    assert result.loss_trace[-1] < result.loss_trace[0]
    # the losses are the criterion's (positive) cross-entropy, not its negation
    assert bool((result.losses >= 0).all())


# --------------------------------------------------------------------------- #
# use_best
# --------------------------------------------------------------------------- #
USE_BEST_ATTACKS = {
    # large steps, so the iterates overshoot and the best is often not the last
    "L2ProjectedOptim": (L2ProjectedOptim, dict(epsilon=5.0, lr=3.0)),
    "LinfProjectedOptim": (LinfProjectedOptim, dict(epsilon=0.3, lr=0.2)),
    "L1qFrankWolfe": (L1qFrankWolfe, dict(q=0.9, epsilon=30.0, lr=0.7, use_default_lr_schedule=False)),
}


#: Where the best iterate beats the last one by far more than rounding (gains of 0.1 to 0.9
#: in cross-entropy on the development machine); elsewhere (L1q Frank-Wolfe, targeted L2)
#: the gains are at most ~1e-3 or zero, and only ``gain >= 0`` is asserted.
OVERSHOOTING = {("L2ProjectedOptim", False), ("LinfProjectedOptim", False), ("LinfProjectedOptim", True)}


@pytest.mark.parametrize("data_range", [None, (0.0, 1.0)], ids=["no-range", "range"])
@pytest.mark.parametrize("targeted", [False, True], ids=["untargeted", "targeted"])
@pytest.mark.parametrize("name", list(USE_BEST_ATTACKS))
def test_use_best_is_never_worse_than_the_final_iterate(clf, name, targeted, data_range):
    optimizer, kwargs = USE_BEST_ATTACKS[name]
    target = clf.target if targeted else clf.y
    common = dict(model=clf.net, data=clf.x, target=target, optimizer=optimizer, steps=10,
                  targeted=targeted, data_range=data_range, **kwargs)
    final = gradient_ascent(**common)
    best = gradient_ascent(use_best=True, **common)
    sign = -1.0 if targeted else 1.0
    gain = sign * (best.losses - final.losses)
    assert bool((gain >= 0).all()), f"use_best worse for {int((gain < 0).sum())} data"
    # the same iterates were visited; the best is the extreme of the per-datum trace
    assert torch.equal(best.datum_loss_trace, final.datum_loss_trace)
    extreme = final.datum_loss_trace.min(0).values if targeted else final.datum_loss_trace.max(0).values
    assert torch.equal(best.losses, extreme)
    # what is returned is self-consistent: losses, logits and success belong to xadv
    with torch.no_grad():
        logits = clf.net(best.xadv)
    assert torch.allclose(best.logits, logits, atol=1e-5)
    assert torch.allclose(best.losses, CE(logits, target, reduction="none"), rtol=1e-4, atol=1e-6)
    predicted = best.logits.argmax(1)  # the verdict on the returned logits themselves
    assert torch.equal(best.success, predicted == target if targeted else predicted != target)
    if (name, targeted) in OVERSHOOTING:  # large steps overshoot here: use_best must matter
        assert bool((gain > 1e-2).any()), f"largest gain {float(gain.max())}"


# --------------------------------------------------------------------------- #
# every iterate in the ball and in the box (property over random problems)
# --------------------------------------------------------------------------- #
_INIT = {"l1": uniform_like_l1_n_ball_, "l2": uniform_like_l2_n_ball_, "linf": uniform_like_linf_n_ball_}


def _random_problem(seed: int, n: int, shape: tuple[int, ...], classes: int = 4):
    """Data in [0, 1] with some entries exactly at 0 and 1 (so the box binds), a random linear model."""
    gen = torch.Generator().manual_seed(seed)
    data = torch.rand(n, *shape, generator=gen)
    edge = torch.rand(data.shape, generator=gen)
    data = torch.where(edge < 0.2, 0.0, torch.where(edge > 0.8, 1.0, data))
    size = data[0].numel()
    model = nn.Sequential(nn.Flatten(), nn.Linear(size, classes))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(classes, size, generator=gen))
        model[1].bias.copy_(torch.randn(classes, generator=gen))
    target = torch.randint(0, classes, (n,), generator=gen)
    return data, target, model, gen


def _check_iterates(inputs, data, norm: str, epsilon, low: float = 0.0, high: float = 1.0):
    """Each input lies in [low, high] and within its datum's epsilon-ball around ``data``."""
    size = data[0].numel()
    radius = torch.as_tensor(epsilon, dtype=torch.float64).expand(data.shape[0])
    for step, x in enumerate(inputs):
        assert x.dtype == data.dtype
        assert float(x.min()) >= low and float(x.max()) <= high, f"iterate {step} leaves the box"
        delta = (x.double() - data.double()).flatten(1)
        if norm == "l1":
            measured, bound = delta.abs().sum(1), radius * (1 + 1e-5) + size * 2e-7 * high
        elif norm == "l2":
            measured, bound = delta.norm(dim=1), radius * (1 + 1e-5) + 1e-6 * high
        else:
            measured, bound = delta.abs().amax(1), radius + 1e-7 * high
        excess = measured - bound
        assert bool((excess <= 0).all()), (
            f"iterate {step}: {norm} norms {measured.tolist()} exceed the radii {radius.tolist()}"
        )


BALL_OPTIMIZERS = [
    "L1qFrankWolfe", "L1FrankWolfe", "L1ProjectedOptim", "L2ProjectedOptim", "LinfProjectedOptim",
]


@given(
    name=st.sampled_from(BALL_OPTIMIZERS),
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 5),
    shape=st.sampled_from([(1, 4, 4), (2, 3, 3), (12,)]),
    epsilon=st.floats(0.01, 6.0),
    q=st.floats(0.0, 0.95),
    lr=st.floats(0.01, 5.0),
    steps=st.integers(1, 6),
    random_start=st.booleans(),
    targeted=st.booleans(),
    high=st.sampled_from([1.0, 255.0]),
    per_datum=st.booleans(),
)
def test_every_iterate_in_ball_and_box(name, seed, n, shape, epsilon, q, lr, steps, random_start,
                                       targeted, high, per_datum):
    data, target, model, gen = _random_problem(seed, n, shape)
    data = data * high
    if per_datum:  # one radius per datum
        epsilon = epsilon * (0.1 + torch.rand(n, generator=gen))
    norm = {"L2ProjectedOptim": "l2", "LinfProjectedOptim": "linf"}.get(name, "l1")
    options = {
        "L1qFrankWolfe": (L1qFrankWolfe, dict(q=q, epsilon=epsilon)),
        "L1FrankWolfe": (L1FrankWolfe, dict(epsilon=epsilon)),
        "L1ProjectedOptim": (L1ProjectedOptim, dict(q=q, epsilon=epsilon, lr=lr)),
        "L2ProjectedOptim": (L2ProjectedOptim, dict(epsilon=epsilon, lr=lr)),
        "LinfProjectedOptim": (LinfProjectedOptim, dict(epsilon=epsilon, lr=lr)),
    }
    optimizer, kwargs = options[name]
    perturbation = AdditivePerturbation
    if random_start:  # a start anywhere in the ball, possibly outside the box
        perturbation = partial(AdditivePerturbation, init_fn=_INIT[norm], epsilon=epsilon, generator=gen)
    spy = Recorder(model)
    result = gradient_ascent(model=spy, data=data, target=target, optimizer=optimizer, steps=steps,
                             perturbation_model=perturbation, targeted=targeted,
                             data_range=(0.0, high), **kwargs)
    assert len(spy.inputs) == steps + 1  # every step's iterate plus the final one
    _check_iterates(spy.inputs, data, norm, epsilon, 0.0, high)
    _check_iterates([result.xadv], data, norm, epsilon, 0.0, high)


def test_l1_box_uses_the_budget_exactly(clf):
    """The L1 iterates end on the ball's surface inside the box: the budget is not wasted by clamping."""
    data = clf.x[:8]
    spy = Recorder(clf.net)
    epsilon = 5.0
    gradient_ascent(model=spy, data=data, target=clf.y[:8], optimizer=L1ProjectedOptim, q=0.5,
                    epsilon=epsilon, lr=10.0, steps=3, data_range=(0.0, 1.0))
    for x in spy.inputs[1:]:
        l1 = (x.double() - data.double()).flatten(1).abs().sum(1)
        assert torch.allclose(l1, torch.full_like(l1, epsilon), rtol=1e-4)
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0


def test_universal_perturbation_output_is_clamped_to_the_range(clf):
    """A perturbation that is not per-datum additive: its output is clamped to data_range."""
    data = clf.x[:8]
    spy = Recorder(clf.net)
    universal = partial(AdditivePerturbation, delta_ndim=-1, init_fn=uniform_like_linf_n_ball_,
                        epsilon=0.5, param_ndim=None, generator=torch.Generator().manual_seed(1))
    result = gradient_ascent(model=spy, data=data, target=clf.y[:8], optimizer=LinfProjectedOptim,
                             epsilon=0.5, lr=0.1, param_ndim=None, steps=3,
                             perturbation_model=universal, data_range=(0.0, 1.0))
    for x in spy.inputs + [result.xadv]:
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0


def test_data_range_clamps_a_plain_optimizer():
    """Any other optimizer (here torch's SGD) is clamped into the box after each step."""
    spy = Recorder(nn.Identity())
    xadv, _ = _reference(model=spy, data_range=(-1.2, 2.2))
    assert torch.allclose(xadv, torch.tensor([-1.2, 2.2]))
    expected = [[-1.0, 2.0], [-1.1, 2.1], [-1.2, 2.2], [-1.2, 2.2], [-1.2, 2.2], [-1.2, 2.2]]
    assert torch.allclose(torch.stack(spy.inputs), torch.tensor(expected))


def test_uint8_data_with_an_integer_data_range():
    """uint8 images with an integer range: ``low - data`` must not wrap around in uint8."""
    gen = torch.Generator().manual_seed(0)
    data = torch.randint(0, 256, (4, 1, 4, 4), generator=gen, dtype=torch.uint8)
    target = torch.randint(0, 3, (4,), generator=gen)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    spy = Recorder(net)
    gradient_ascent(model=spy, data=data, target=target, optimizer=LinfProjectedOptim, epsilon=8.0,
                    lr=2.0, steps=3, data_range=(0, 255))
    _check_iterates(spy.inputs, data.float(), "linf", 8.0, 0.0, 255.0)


def test_uint8_data_with_a_float_data_range():
    gen = torch.Generator().manual_seed(0)
    data = torch.randint(0, 256, (4, 1, 4, 4), generator=gen, dtype=torch.uint8)
    target = torch.randint(0, 3, (4,), generator=gen)
    spy = Recorder(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)))
    result = gradient_ascent(model=spy, data=data, target=target, optimizer=LinfProjectedOptim,
                             epsilon=8.0, lr=2.0, steps=3, data_range=(0.0, 255.0))
    assert result.xadv.dtype == torch.get_default_dtype()
    _check_iterates(spy.inputs, data.float(), "linf", 8.0, 0.0, 255.0)


@pytest.mark.parametrize("fail", [False, True], ids=["run", "error"])
@pytest.mark.parametrize("optimizer", [L1ProjectedOptim, L1qFrankWolfe, L2ProjectedOptim])
def test_optimizer_instance_bounds_restored_after_the_run(clf, optimizer, fail):
    """The solver hands the data-range box to an optimizer with a ``bounds`` option only for the run."""
    data, target = clf.x[:4], clf.y[:4]
    pert = AdditivePerturbation(data)
    kwargs = dict(q=0.9, epsilon=5.0) if optimizer is not L2ProjectedOptim else dict(epsilon=1.0)
    if optimizer is not L1qFrankWolfe:
        kwargs["lr"] = 0.5
    optim = optimizer(pert.parameters(), **kwargs)
    assert optim.param_groups[0]["bounds"] is None
    criterion = _failing_criterion(after=2) if fail else None
    try:
        gradient_ascent(model=clf.net, data=data, target=target, optimizer=optim, perturbation_model=pert,
                        steps=3, data_range=(0.0, 1.0), criterion=criterion)
    except RuntimeError:
        assert fail
    assert optim.param_groups[0]["bounds"] is None


def test_data_range_keeps_the_optimizers_own_bounds(clf):
    """The data-range box is intersected with an optimizer instance's own ``bounds``, not swapped in."""
    data, target = clf.x[:4], clf.y[:4]
    pert = AdditivePerturbation(data)
    optim = LinfProjectedOptim(pert.parameters(), epsilon=0.5, lr=0.1, bounds=(-0.1, 0.1))
    spy = Recorder(clf.net)
    gradient_ascent(model=spy, data=data, target=target, optimizer=optim, perturbation_model=pert,
                    steps=5, data_range=(0.0, 1.0))
    assert optim.param_groups[0]["bounds"] == (-0.1, 0.1)
    for x in spy.inputs:
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
        assert float((x - data).abs().max()) <= 0.1 + 1e-6, "left the optimizer's own box"


# --------------------------------------------------------------------------- #
# project_l1_ball_box_ against brute force
# --------------------------------------------------------------------------- #
def _brute_l1_box(v: torch.Tensor, epsilon: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor):
    """Projection onto {|y|_1 <= eps} ∩ [lower, upper] by bisection on the soft threshold, float64.

    The solution is ``sign(v) * min(max(|v| - theta, 0), c)`` with ``c`` the
    bound on v's side and ``theta >= 0`` the smallest threshold meeting the
    radius; the clipped norm is non-increasing in theta, so bisection finds it.
    """
    v, lower, upper = v.double(), lower.double(), upper.double()
    eps = epsilon.double().reshape(-1, 1)
    magnitude = v.abs()
    capacity = torch.where(v >= 0, upper, -lower)

    def norm(theta):
        return torch.minimum((magnitude - theta).clamp(min=0), capacity).sum(1, keepdim=True)

    lo = torch.zeros_like(eps)
    hi = magnitude.amax(1, keepdim=True)
    for _ in range(200):
        mid = (lo + hi) / 2
        over = norm(mid) > eps
        lo = torch.where(over, mid, lo)
        hi = torch.where(over, hi, mid)
    theta = torch.where(norm(torch.zeros_like(eps)) <= eps, 0.0, hi)
    return torch.minimum((magnitude - theta).clamp(min=0), capacity) * v.sign()


@given(
    seed=st.integers(0, 2**31 - 1),
    rows=st.integers(1, 5),
    size=st.integers(1, 40),
    scale=st.sampled_from([1e-3, 1.0, 30.0]),
    radius=st.floats(0.01, 3.0),
    per_row=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    degenerate=st.booleans(),
)
def test_l1_box_projection_matches_brute_force(seed, rows, size, scale, radius, per_row, dtype, degenerate):
    gen = torch.Generator().manual_seed(seed)
    v = (torch.randn(rows, size, generator=gen, dtype=torch.float64) * scale)
    v = torch.where(torch.rand(rows, size, generator=gen) < 0.1, 0.0, v)  # exact zeros
    v[:, : size // 4] = v[:, :1]  # ties
    lower = -torch.rand(rows, size, generator=gen, dtype=torch.float64) * scale
    upper = torch.rand(rows, size, generator=gen, dtype=torch.float64) * scale
    if degenerate:  # boxes with a side (or both) at 0, as at pixels already at 0 or 1
        lower = torch.where(torch.rand(rows, size, generator=gen) < 0.3, 0.0, lower)
        upper = torch.where(torch.rand(rows, size, generator=gen) < 0.3, 0.0, upper)
    if per_row:
        epsilon = torch.rand(rows, generator=gen, dtype=torch.float64) * radius * scale * size + 1e-3
    else:
        epsilon = radius * scale * size / 4
    v, lower, upper = v.to(dtype), lower.to(dtype), upper.to(dtype)
    if isinstance(epsilon, torch.Tensor):
        eps_t = epsilon
    else:
        eps_t = torch.full((rows,), epsilon, dtype=torch.float64)

    y = F.project_l1_ball_box_(v.clone(), epsilon, lower, upper)
    expected = _brute_l1_box(v, eps_t, lower, upper)
    tol = (1e-9 if dtype == torch.float64 else 2e-6) * scale * max(1.0, size / 10)
    assert y.dtype == dtype and y.shape == v.shape
    assert torch.allclose(y.double(), expected, rtol=0, atol=tol)
    # feasible
    assert bool((y >= lower).all()) and bool((y <= upper).all())
    assert bool((y.double().abs().sum(1) <= eps_t * (1 + 1e-6) + tol).all())
    # idempotent
    again = F.project_l1_ball_box_(y.clone(), epsilon, lower, upper)
    assert torch.allclose(again.double(), y.double(), rtol=0, atol=tol)


def test_l1_box_projection_scalar_box_and_non_contiguous():
    v = torch.tensor([[3.0, -1.0, 0.5], [0.2, 0.1, -0.1]])
    expected = _brute_l1_box(v, torch.tensor([2.0, 2.0]), torch.full_like(v, -1.0), torch.full_like(v, 1.0))
    assert torch.allclose(F.project_l1_ball_box_(v.clone(), 2.0, -1.0, 1.0).double(), expected, atol=1e-6)
    # a transposed (non-contiguous) view is projected per row and written back in place
    w = torch.randn(6, 4, generator=torch.Generator().manual_seed(0)).t()
    lower, upper = -0.5 * torch.ones_like(w), 0.7 * torch.ones_like(w)
    expected = _brute_l1_box(w, torch.full((4,), 1.0), lower, upper)
    out = F.project_l1_ball_box_(w, 1.0, lower, upper)
    assert out is w
    assert torch.allclose(w.double(), expected, atol=1e-6)


# --------------------------------------------------------------------------- #
# the model is frozen in eval mode during the run and restored after, also on error
# --------------------------------------------------------------------------- #
class Spy(nn.Module):
    """A classifier with dropout and batch norm that records its mode at every call; can fail."""

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(
            nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 3)
        )
        self.fail_at = fail_at
        self.calls = 0
        self.seen: list[tuple[list[bool], list[bool], bool]] = []

    def forward(self, x):
        self.calls += 1
        self.seen.append(
            ([m.training for m in self.modules()], [p.requires_grad for p in self.parameters()],
             torch.is_grad_enabled())
        )
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise RuntimeError("boom inside the model")
        return self.body(x)


def _mixed(spy: Spy) -> Spy:
    """Mixed modes and flags: the whole model in train mode except batch norm; one frozen weight."""
    spy.train()
    spy.body[2].eval()
    spy.body[1].weight.requires_grad_(False)
    return spy


def _snapshot(model: nn.Module):
    return (
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        {k: v.clone() for k, v in model.state_dict().items()},
        [None if p.grad is None else p.grad.clone() for p in model.parameters()],
    )


def _assert_restored(model: nn.Module, snapshot) -> None:
    modes, flags, state, grads = snapshot
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    for key, value in model.state_dict().items():  # weights and batch-norm statistics
        assert torch.equal(value, state[key]), key
    for p, grad in zip(model.parameters(), grads):  # no gradient accumulated into the model
        assert (p.grad is None) if grad is None else torch.equal(p.grad, grad)


def _spy_data():
    gen = torch.Generator().manual_seed(3)
    return torch.rand(6, 1, 4, 4, generator=gen), torch.randint(0, 3, (6,), generator=gen)


def test_model_frozen_in_eval_during_the_run_and_restored():
    spy = _mixed(Spy())
    before = _snapshot(spy)
    data, target = _spy_data()
    gradient_ascent(model=spy, data=data, target=target, optimizer=L2ProjectedOptim, epsilon=1.0,
                    lr=0.2, steps=3, use_best=True)
    assert len(spy.seen) == 4
    for modes, flags, grad_enabled in spy.seen:
        assert not any(modes), "a submodule was in train mode during the run"
        assert not any(flags), "a model parameter required grad during the run"
    assert [grad for *_, grad in spy.seen] == [True, True, True, False]  # final evaluation: no graph
    _assert_restored(spy, before)


def _failing_criterion(after: int):
    calls = {"n": 0}

    def criterion(logits, target):
        calls["n"] += 1
        if calls["n"] >= after:
            raise RuntimeError("boom inside the criterion")
        return CE(logits, target, reduction="none")

    return criterion


class FailingSGD(torch.optim.SGD):
    def step(self, closure=None):
        raise RuntimeError("boom inside the optimizer")


@pytest.mark.parametrize(
    "case",
    ["model", "criterion", "optimizer", "target-range", "per-datum-criterion"],
)
def test_model_and_data_restored_after_an_error_inside_the_run(case):
    spy = _mixed(Spy(fail_at=3 if case == "model" else None))
    before = _snapshot(spy)
    data, target = _spy_data()
    data_before, target_before = data.clone(), target.clone()
    versions = (data._version, target._version)
    kwargs = dict(model=spy, data=data, target=target, optimizer=L2ProjectedOptim, epsilon=1.0,
                  lr=0.2, steps=4, data_range=(0.0, 1.0))
    if case == "model":
        expected = (RuntimeError, "model")
    elif case == "criterion":
        kwargs["criterion"] = _failing_criterion(after=2)
        expected = (RuntimeError, "criterion")
    elif case == "optimizer":
        kwargs.update(optimizer=FailingSGD, lr=0.1)
        del kwargs["epsilon"]
        expected = (RuntimeError, "optimizer")
    elif case == "target-range":  # detected at the first forward pass, inside the run
        kwargs.update(target=torch.full((6,), 3), criterion=lambda logits, t: logits.logsumexp(1))
        expected = (ValueError, "`target`")
    else:
        kwargs.update(criterion=nn.CrossEntropyLoss(), use_best=True)
        expected = (ValueError, "`criterion`")
    with pytest.raises(expected[0], match=expected[1]):
        gradient_ascent(**kwargs)
    assert spy.calls >= 1, "the error should come from inside the run"
    _assert_restored(spy, before)
    assert torch.equal(data, data_before) and torch.equal(target, target_before)
    assert (data._version, target._version) == versions


# --------------------------------------------------------------------------- #
# the caller's data; torch.no_grad()
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "options",
    [
        dict(optimizer=L2ProjectedOptim, epsilon=2.0, lr=0.5),
        dict(optimizer=L1qFrankWolfe, q=0.95, epsilon=20.0, data_range=(0.0, 1.0), use_best=True),
        dict(optimizer=LinfProjectedOptim, epsilon=0.1, lr=0.02, data_range=(0.0, 1.0), early_stop=True),
        dict(optimizer=L1ProjectedOptim, q=0.9, epsilon=5.0, lr=1.0, targeted=True, data_range=(0.0, 1.0)),
    ],
    ids=["l2", "l1q-fw-range-best", "linf-range-early", "l1-targeted-range"],
)
def test_callers_data_never_modified(clf, options):
    data = clf.x[:8].clone()
    data.requires_grad_(True)  # even data that requires grad is only read
    target = clf.y[:8].clone()
    data_before, target_before = data.detach().clone(), target.clone()
    versions = (data._version, target._version)
    result = gradient_ascent(model=clf.net, data=data, target=target, steps=5, **options)
    assert torch.equal(data.detach(), data_before) and torch.equal(target, target_before)
    assert (data._version, target._version) == versions
    assert data.grad is None
    assert not torch.equal(result.xadv, data_before)
    assert result.xadv.data_ptr() != data.data_ptr()


def test_works_under_no_grad(clf):
    kwargs = dict(model=clf.net, data=clf.x, target=clf.y, optimizer=L1qFrankWolfe, q=0.95,
                  epsilon=20.0, steps=5, data_range=(0.0, 1.0))
    before = _snapshot(clf.net)
    reference = gradient_ascent(**kwargs)
    with torch.no_grad():
        result = gradient_ascent(**kwargs)
        assert not torch.is_grad_enabled()
    assert torch.equal(result.xadv, reference.xadv)
    assert torch.equal(result.losses, reference.losses)
    with torch.no_grad():
        xadv, _ = _reference()
    assert torch.allclose(xadv, torch.tensor([-1.5, 2.5]))
    _assert_restored(clf.net, before)


# --------------------------------------------------------------------------- #
# early stopping
# --------------------------------------------------------------------------- #
def _first_success_from(inputs, net, target, targeted):
    """Index of the first recorded input each datum succeeds at (-1: never)."""
    with torch.no_grad():
        predicted = torch.stack([net(x).argmax(1) for x in inputs])
    met = predicted == target if targeted else predicted != target
    return torch.where(met.any(0), met.int().argmax(0), -1)


@pytest.mark.parametrize("targeted", [False, True], ids=["untargeted", "targeted"])
def test_early_stop_freezes_finished_data_and_ends_the_run(clf, targeted):
    target = clf.target if targeted else clf.y
    steps = 60
    spy = Recorder(clf.net)
    result = gradient_ascent(model=spy, data=clf.x, target=target, optimizer=L2ProjectedOptim,
                             epsilon=4.0, lr=0.5, steps=steps, targeted=targeted,
                             data_range=(0.0, 1.0), early_stop=True)
    assert bool(result.success.all())
    assert result.steps_run < steps, "the run should end once every datum succeeded"
    first = result.first_success_step
    assert bool((first >= 0).all()) and int(first.max()) <= result.steps_run
    assert int(first.max()) == result.steps_run  # the last datum to succeed ended the run
    assert len(spy.inputs) == result.steps_run + 1  # the last iterate is not evaluated twice
    # first_success_step agrees with the model's predictions at every evaluated iterate
    assert torch.equal(first, _first_success_from(spy.inputs, clf.net, target, targeted))
    # finished data are untouched afterwards: identical at every later iterate and in xadv
    for i, t in enumerate(first.tolist()):
        frozen = spy.inputs[t][i]
        for later in spy.inputs[t:]:
            assert torch.equal(later[i], frozen), f"datum {i} moved after succeeding at step {t}"
        assert torch.equal(result.xadv[i], frozen)
    # and until it succeeds, a datum follows the same path as without early stopping
    plain_spy = Recorder(clf.net)
    gradient_ascent(model=plain_spy, data=clf.x, target=target, optimizer=L2ProjectedOptim,
                    epsilon=4.0, lr=0.5, steps=result.steps_run, targeted=targeted,
                    data_range=(0.0, 1.0))
    for i, t in enumerate(first.tolist()):
        assert torch.allclose(plain_spy.inputs[t][i], result.xadv[i], atol=1e-6)


def test_early_stop_without_full_success_runs_every_step(clf):
    spy = Recorder(clf.net)
    steps = 10
    # half the data get a radius far too small to change any prediction (every logit margin
    # is >= 1, and 1e-6 per pixel moves a logit by at most ~1e-6 * |W|_1), so the run can
    # never end early, whichever CPU decides the near-ties of the others
    n = len(clf.y)
    epsilon = torch.where(torch.arange(n) % 2 == 0, 0.3, 1e-6)
    result = gradient_ascent(model=spy, data=clf.x, target=clf.y, optimizer=LinfProjectedOptim,
                             epsilon=epsilon, lr=0.05, steps=steps, data_range=(0.0, 1.0), early_stop=True)
    assert not bool(result.success[1::2].any()), "a radius of 1e-6 cannot fool the model"
    assert bool(result.success[0::2].any()), "a radius of 0.3 should fool some"
    assert result.steps_run == steps
    assert len(spy.inputs) == steps + 1
    assert result.loss_trace.shape == (steps + 1,)
    first = result.first_success_step
    assert torch.equal(first >= 0, result.success)  # frozen data stay successful
    assert torch.equal(first, _first_success_from(spy.inputs, clf.net, clf.y, targeted=False))


def test_early_stop_targeted_confidence(clf):
    result = gradient_ascent(model=clf.net, data=clf.x, target=clf.target, optimizer=L2ProjectedOptim,
                             epsilon=4.0, lr=0.5, steps=40, targeted=True, early_stop=True,
                             confidence=0.9, data_range=(0.0, 1.0))
    probability = result.logits.softmax(1).gather(1, clf.target.view(-1, 1)).squeeze(1)
    assert torch.equal(result.success, (probability >= 0.9) & (result.logits.argmax(1) == clf.target))
    assert bool(result.success.any())
    assert torch.equal(result.first_success_step >= 0, result.success)


def test_early_stop_trace_length(clf):
    """When early stopping ends the run, the last iterate is evaluated once, not twice."""
    result = gradient_ascent(model=clf.net, data=clf.x, target=clf.y, optimizer=L2ProjectedOptim,
                             epsilon=4.0, lr=0.5, steps=60, early_stop=True)
    assert result.steps_run < 60
    assert result.loss_trace.shape == (result.steps_run + 1,)
    assert result.datum_loss_trace.shape == (result.steps_run + 1, len(clf.y))


@pytest.mark.parametrize("check_every", [2, 3, 7, 100])
@pytest.mark.parametrize("use_best", [False, "sparsest"])
def test_check_every_gives_the_every_step_result_with_at_most_k_minus_1_more_steps(clf, check_every, use_best):
    common = dict(model=clf.net, data=clf.x, target=clf.y, optimizer=L2ProjectedOptim, epsilon=4.0, lr=0.5,
                  steps=60, data_range=(0.0, 1.0), early_stop=True, use_best=use_best)
    every = gradient_ascent(**common)
    sparse = gradient_ascent(**common, check_every=check_every)
    assert every.steps_run < 60 and bool(every.success.all())
    for name in ("xadv", "success", "first_success_step", "logits", "losses"):
        assert torch.equal(getattr(sparse, name), getattr(every, name)), name
    extra = sparse.steps_run - every.steps_run
    assert 0 <= extra < check_every and sparse.steps_run <= 60
    assert sparse.steps_run % check_every == 0 or sparse.steps_run == 60  # it stopped at a check
    assert torch.equal(sparse.loss_trace[: every.steps_run + 1], every.loss_trace)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_check_every_must_be_a_positive_integer(clf, bad):
    with pytest.raises(ValueError, match=r"`check_every` must be an integer >= 1; got check_every="):
        gradient_ascent(model=clf.net, data=clf.x, target=clf.y, optimizer=L2ProjectedOptim, epsilon=1.0,
                        steps=2, early_stop=True, check_every=bad)


# --------------------------------------------------------------------------- #
# random_restart
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("targeted", [False, True], ids=["untargeted", "targeted"])
def test_random_restart_keeps_each_datums_best(clf, targeted):
    repeats, steps, seed = 4, 3, 7
    gen = torch.Generator()
    start = partial(AdditivePerturbation, init_fn=uniform_like_l2_n_ball_, epsilon=1.5, generator=gen)
    target = clf.target if targeted else clf.y
    kwargs = dict(model=clf.net, data=clf.x, target=target, optimizer=L2ProjectedOptim, epsilon=1.5,
                  lr=0.2, steps=steps, perturbation_model=start, targeted=targeted)
    gen.manual_seed(seed)
    result = random_restart(gradient_ascent, repeats)(**kwargs)
    gen.manual_seed(seed)  # the same random starts, one run at a time
    runs = [gradient_ascent(**kwargs) for _ in range(repeats)]
    losses = torch.stack([r.losses for r in runs])
    assert not torch.equal(losses[0], losses[1]), "restarts should differ"
    pick = losses.argmin(0) if targeted else losses.argmax(0)  # first best on ties, as the merge
    rows = torch.arange(len(target))
    assert torch.equal(result.losses, losses[pick, rows])
    assert torch.equal(result.xadv, torch.stack([r.xadv for r in runs])[pick, rows])
    assert torch.equal(result.logits, torch.stack([r.logits for r in runs])[pick, rows])
    assert torch.equal(result.success, torch.stack([r.success for r in runs])[pick, rows])
    assert torch.equal(result.first_success_step,
                       torch.stack([r.first_success_step for r in runs])[pick, rows])
    assert result.loss_trace.shape == (repeats, steps + 1)
    assert torch.equal(result.loss_trace, torch.stack([r.loss_trace for r in runs]))
    # never worse than any single run
    for r in runs:
        gain = (r.losses - result.losses) if targeted else (result.losses - r.losses)
        assert bool((gain >= 0).all())


def _climber(x):
    """Two classes: logit 1 is x itself (one feature), so class 1 wins once x > 0."""
    return torch.cat([torch.zeros_like(x), x], dim=1)


def test_random_restart_pads_the_traces_of_runs_that_stop_early():
    # each datum climbs from a seeded random start in [-1, 1) by 0.125 per step (SGD on
    # logit 1: elementwise, correctly rounded, the same on every CPU) until x > 0, so a run
    # stops after about -min(start) / 0.125 steps, different for the three seeded restarts
    gen = torch.Generator()
    start = partial(AdditivePerturbation, init_fn=uniform_like_linf_n_ball_, epsilon=1.0,
                    generator=gen, param_ndim=0)
    kwargs = dict(model=_climber, data=torch.zeros(4, 1), target=torch.zeros(4, dtype=torch.long),
                  optimizer=torch.optim.SGD, lr=0.125, steps=40, perturbation_model=start,
                  criterion=lambda logits, target: logits[:, 1], early_stop=True)
    gen.manual_seed(2)
    result = random_restart(gradient_ascent, 3)(**kwargs)
    gen.manual_seed(2)
    runs = [gradient_ascent(**kwargs) for _ in range(3)]
    assert all(r.steps_run < 40 for r in runs)
    assert len({r.steps_run for r in runs}) > 1, "the runs should stop at different steps"
    length = max(len(r.loss_trace) for r in runs)
    assert result.loss_trace.shape == (3, length)
    for row, r in zip(result.loss_trace, runs):
        assert torch.equal(row[: len(r.loss_trace)], r.loss_trace)
        assert bool(row[len(r.loss_trace):].isnan().all())
    assert result.steps_run == max(r.steps_run for r in runs)
    assert bool(result.success.all())


def test_random_restart_rejects_bad_repeats():
    for repeats in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="`repeats`"):
            random_restart(gradient_ascent, repeats)


# --------------------------------------------------------------------------- #
# bad input: a ValueError naming the argument, nothing modified
# --------------------------------------------------------------------------- #
def _bad(case):
    """kwargs for one bad call, and the argument the error must name."""
    data, target = _spy_data()
    base = dict(data=data, target=target, optimizer=L2ProjectedOptim, epsilon=1.0, lr=0.1, steps=3)
    bad = {
        "batch-size": (dict(target=target[:4]), "`target`"),
        "batch-size-data": (dict(data=data[:5]), "`data`"),
        "criterion-use-best": (dict(criterion=nn.CrossEntropyLoss(), use_best=True), "`criterion`"),
        "criterion-early-stop": (dict(criterion=nn.CrossEntropyLoss(), early_stop=True), "`criterion`"),
        "steps-0": (dict(steps=0), "`steps`"),
        "steps-negative": (dict(steps=-2), "`steps`"),
        "steps-float": (dict(steps=2.0), "`steps`"),
        "steps-bool": (dict(steps=True), "`steps`"),
        "range-reversed": (dict(data_range=(1.0, 0.0)), "`data_range`"),
        "range-empty": (dict(data_range=(0.5, 0.5)), "`data_range`"),
        "range-not-a-pair": (dict(data_range=(0.0,)), "`data_range`"),
        "data-outside-range": (dict(data=data * 2.0, data_range=(0.0, 1.0)), "`data`"),
        "data-below-range": (dict(data=data - 0.5, data_range=(0.0, 1.0)), "`data`"),
        "target-too-large": (dict(target=torch.full((6,), 3), criterion=lambda z, t: z.logsumexp(1)),
                             "`target`"),
        "target-negative": (dict(target=torch.full((6,), -1), criterion=lambda z, t: z.logsumexp(1)),
                            "`target`"),
        "confidence": (dict(confidence=1.5, targeted=True), "`confidence`"),
    }[case]
    base.update(bad[0])
    return base, bad[1]


BAD_CASES = [
    "batch-size", "batch-size-data", "criterion-use-best", "criterion-early-stop", "steps-0",
    "steps-negative", "steps-float", "steps-bool", "range-reversed", "range-empty",
    "range-not-a-pair", "data-outside-range", "data-below-range", "target-too-large",
    "target-negative", "confidence",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_raises_value_error_naming_the_argument(case):
    spy = _mixed(Spy())
    before = _snapshot(spy)
    kwargs, name = _bad(case)
    data, target = kwargs["data"], kwargs["target"]
    data_before, target_before = data.clone(), target.clone()
    versions = (data._version, target._version)
    with pytest.raises(ValueError, match=name):
        gradient_ascent(model=spy, **kwargs)
    _assert_restored(spy, before)
    assert torch.equal(data, data_before) and torch.equal(target, target_before)
    assert (data._version, target._version) == versions


@pytest.mark.parametrize("value", [3, -1])
def test_target_out_of_range_with_the_default_criterion(value):
    """The class-range check runs before the criterion, so cross-entropy cannot raise IndexError first."""
    spy = _mixed(Spy())
    before = _snapshot(spy)
    data, _ = _spy_data()
    with pytest.raises(ValueError, match="`target`"):
        gradient_ascent(model=spy, data=data, target=torch.full((6,), value),
                        optimizer=L2ProjectedOptim, epsilon=1.0, lr=0.1, steps=3)
    _assert_restored(spy, before)


def test_early_stop_needs_a_classifier():
    with pytest.raises(ValueError, match="early_stop"):
        gradient_ascent(model=identity, data=DATA, target=torch.zeros(2), optimizer=torch.optim.SGD,
                        lr=0.1, steps=3, criterion=abs_loss, early_stop=True)


# --------------------------------------------------------------------------- #
# dtypes
# --------------------------------------------------------------------------- #
DTYPE_ATTACKS = dict(ATTACKS, L1FrankWolfe=(L1FrankWolfe, dict(epsilon=20.0)))


@pytest.mark.parametrize("data_range", [None, (0.0, 1.0)], ids=["no-range", "range"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("name", list(DTYPE_ATTACKS))
def test_float32_and_bfloat16_models(clf, name, dtype, data_range):
    optimizer, kwargs = DTYPE_ATTACKS[name]
    net = copy.deepcopy(clf.net).to(dtype)
    data = clf.x.to(dtype)
    result = gradient_ascent(model=net, data=data, target=clf.y, optimizer=optimizer, steps=5,
                             data_range=data_range, use_best=True, **kwargs)
    assert result.xadv.dtype == dtype and result.logits.dtype == dtype
    for tensor in (result.xadv, result.losses, result.logits, result.loss_trace):
        assert bool(tensor.float().isfinite().all())
    assert result.success.dtype == torch.bool
    if data_range is not None:
        assert float(result.xadv.min()) >= 0.0 and float(result.xadv.max()) <= 1.0
    with torch.no_grad():
        clean = CE(net(data).float(), clf.y, reduction="none")
    assert float(result.losses.float().mean()) > float(clean.mean())
    assert clf.net[1].weight.dtype == torch.float32  # the fixture's model is untouched

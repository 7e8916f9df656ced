"""Tests of the APGD family (``L1APGD``, ``L2APGD``, ``LinfAPGD``, ``L1qAutoFrankWolfe``), the DLR
losses, and the ``Attack`` fields built on them (``loss``, ``restarts``, ``epsilon_schedule``).

What is checked:

* the checkpoint schedule (exact vectors) and the step-size test on hand-built counters;
* per-datum state on hand-built loss sequences fed to ``step(losses=...)``: each row's best
  point, loss and step size; step-size halvings and restarts happen exactly after the
  checkpoints, only for the rows whose progress stalled; the adaptive sparsity of ``L1APGD``
  follows the support of each row's best point; the first L1 step has length ``initial_step · ε``;
* every iterate stays in the ε-ball and the box (hypothesis), rows with non-finite gradients are
  skipped, ``state_dict`` round-trips, bad options and a missing ``losses`` name themselves;
* ``gradient_ascent`` passes the losses and ``total_steps`` itself, ``use_best="success"`` and
  ``"sparsest"`` keep successful iterates;
* the DLR losses: hand values, signs, no NaN (values or gradients) when the top logits tie;
* ``Attack``: ``restarts`` never worse than one run, per image; the ε schedule's stages and
  their step counts; ``reachable_norm``; ``from rai_probe.perturbations import Attack``.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from rai_probe.errors import SettingError
from rai_probe.optim import L1APGD, L1qAutoFrankWolfe, L2APGD, LinfAPGD
from rai_probe.optim import functional as F
from rai_probe.perturbations import Attack, dlr_loss, gradient_ascent, targeted_dlr_loss
from rai_probe.perturbations.attacks import stage_steps
from rai_probe.perturbations.solvers import takes_option

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ORDER = {L1APGD: 1.0, L2APGD: 2.0, LinfAPGD: math.inf, L1qAutoFrankWolfe: 1.0}


def _make(cls, params, **kwargs):
    if cls is L1qAutoFrankWolfe:  # small test rows: keep half of the entries
        kwargs.setdefault("q", 0.5)
    return cls(params, **kwargs)


def _drive(optim, param, losses_seq, grads=None, seed=0):
    """Feed hand-made per-row losses (and random gradients) to ``optim``; return the step sizes seen."""
    gen = torch.Generator().manual_seed(seed)
    sizes, iterates = [], []
    for t, losses in enumerate(losses_seq):
        iterates.append(param.detach().clone())
        param.grad = grads[t].clone() if grads is not None else torch.randn(param.shape, generator=gen)
        optim.step(losses=torch.as_tensor(losses, dtype=torch.float64))
        sizes.append(optim.state[param]["step_size"].clone())
    return torch.stack(sizes), iterates


# --------------------------------------------------------------------------- #
# the schedule and the test
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "total, args, expected",
    [
        (100, (), (22, 41, 57, 70, 80, 87, 93, 99)),
        (20, (), (5, 9, 12, 14, 16, 18, 19)),
        (1, (), ()),
        (100, (0.06, 0.0, 0.06), (6, 12, 18, 24, 30, 36, 42, 48, 54, 60, 66, 72, 78, 84, 90, 96)),
        (100, (0.4, 0.2, 0.2), (40, 60, 80)),
        (100, (0.4, 0.0, 0.2), (40, 80)),
        (10, (0.4, 0.2, 0.2), (4, 6, 8)),
    ],
)
def test_checkpoint_vectors(total, args, expected):
    assert F.apgd_checkpoints(total, *args) == expected


@given(total=st.integers(1, 2000))
def test_checkpoints_increase_and_stay_inside_the_run(total):
    marks = F.apgd_checkpoints(total)
    assert all(0 < a < b < total for a, b in zip(marks, marks[1:]))
    assert all(0 < m < total for m in marks)


def test_checkpoint_schedule_refuses_bad_input():
    for bad in (0, -3, 2.5, True):
        with pytest.raises(SettingError, match="total_steps"):
            F.apgd_checkpoints(bad)
    with pytest.raises(SettingError, match="first"):
        F.apgd_checkpoints(10, 0.0, 0.0, 0.1)


def test_reduce_step_conditions_by_hand():
    # interval 8, rho 0.75: fewer than 6 improving steps is a stall (condition 1)
    increases = torch.tensor([5, 6, 8, 8])
    reduced_last = torch.tensor([False, False, False, True])
    best = torch.tensor([-2.0, -2.0, -1.0, -1.0])
    best_at_last = torch.tensor([-1.0, -1.0, -1.0, -1.0])  # rows 2, 3: no new best (condition 2)
    got = F.apgd_reduce_step(increases, 8, 0.75, reduced_last, best, best_at_last)
    assert got.tolist() == [True, False, True, False]  # row 3: just reduced, so condition 2 waits


# --------------------------------------------------------------------------- #
# per-datum state on hand-built cases
# --------------------------------------------------------------------------- #
def test_step_size_halves_and_restarts_exactly_after_the_checkpoints_of_stalled_rows():
    total = 20
    checkpoints = F.apgd_checkpoints(total)  # (5, 9, 12, 14, 16, 18, 19)
    delta = torch.zeros(3, 6, requires_grad=True)
    optim = L2APGD([delta], epsilon=1.0, total_steps=total)
    improving = [-float(t) for t in range(total)]    # row 0: better at every step
    flat = [0.0] * total                              # row 1: never better than its start
    late = [0.0] * 7 + [-1.0 - t for t in range(total - 7)]  # row 2: stalls first, then improves
    sizes, _ = _drive(optim, delta, list(zip(improving, flat, late)))
    state = optim.state[delta]
    # row 0 keeps its first step size 2ε; row 1 halves after every checkpoint w (at call w + 1)
    assert bool((sizes[:, 0] == 2.0).all())
    expected_flat = [2.0 / 2 ** sum(1 for w in checkpoints if w + 1 <= t) for t in range(total)]
    assert sizes[:, 1].tolist() == expected_flat
    changes = [t for t in range(1, total) if sizes[t, 1] != sizes[t - 1, 1]]
    assert changes == [w + 1 for w in checkpoints if w + 1 < total]
    # row 2 stalled in the first interval (one halving at call 6), then kept improving
    assert sizes[:, 2].tolist() == [2.0] * 6 + [1.0] * (total - 6)
    assert state["restarts"].tolist() == [0, len(changes), 1]


def test_restart_returns_a_row_to_its_best_point():
    delta = torch.zeros(2, 4, requires_grad=True)
    optim = LinfAPGD([delta], epsilon=0.5, total_steps=10, checkpoints=(0.5, 0.0, 0.5))  # w = 5
    # row 0: best at call 1, never better after (stalls -> restart at call 6); row 1 improves
    losses = [(0.0, 0.0), (-5.0, -1.0), (1.0, -2.0), (1.0, -3.0), (1.0, -4.0), (1.0, -5.0), (1.0, -6.0)]
    _, iterates = _drive(optim, delta, losses[:6])
    state = optim.state[delta]
    assert torch.equal(state["best"][0], iterates[1][0])
    assert torch.equal(state["best"][1], iterates[5][1])
    assert state["best_loss"].tolist() == [-5.0, -5.0]
    delta.grad = torch.ones_like(delta)
    optim.step(losses=torch.tensor(losses[6]))  # call 6: after the checkpoint w = 5
    assert state["restarts"].tolist() == [1, 0]
    assert torch.equal(state["previous"][0], iterates[1][0])  # the step started from the best point
    assert not torch.equal(state["previous"][1], iterates[1][1])


def test_best_point_and_loss_are_kept_per_row():
    delta = torch.zeros(3, 5, requires_grad=True)
    optim = L1APGD([delta], epsilon=2.0, total_steps=50)
    losses = [(3.0, 3.0, 3.0), (1.0, 4.0, 2.0), (2.0, 0.5, 2.5), (float("nan"), 1.0, -1.0)]
    _, iterates = _drive(optim, delta, losses)
    state = optim.state[delta]
    assert state["best_loss"].tolist() == [1.0, 0.5, -1.0]  # a NaN loss is never the best
    for row, call in enumerate((1, 2, 3)):
        assert torch.equal(state["best"][row], iterates[call][row])


def test_first_l1_step_has_length_initial_step_times_epsilon_before_projection():
    delta = torch.zeros(1, 10, requires_grad=True)
    optim = L1APGD([delta], epsilon=100.0, total_steps=10, q=0.8, initial_step=0.5)  # k = 2
    delta.grad = torch.arange(1.0, 11.0).view(1, 10)
    optim.step(losses=torch.zeros(1))
    expected = torch.zeros(1, 10)
    expected[0, -2:] = -25.0  # 50 of L1 length on the two largest entries, against the gradient
    torch.testing.assert_close(delta.detach(), expected)


def test_l1_sparsity_follows_the_support_of_each_rows_best_point():
    torch.manual_seed(0)
    image = torch.rand(2, 40)
    delta = torch.zeros(2, 40, requires_grad=True)
    optim = L1APGD([delta], epsilon=3.0, total_steps=10, bounds=(-image, 1 - image), q=0.5,
                   support_factor=0.5, checkpoints=(0.5, 0.0, 0.5))  # one checkpoint, w = 5
    state_k = []
    losses = [(0.0, 0.0)] + [(-1.0 - t, 1.0) for t in range(6)]  # row 1: best is the zero start
    for t, row_losses in enumerate(losses):
        delta.grad = torch.randn(2, 40)
        optim.step(losses=torch.tensor(row_losses))
        state_k.append(optim.state[delta]["sparsity"].tolist())
    state = optim.state[delta]
    assert state_k[0] == [20, 20]  # round((1 - q) n)
    support = int((state["best"][0] != 0).sum())
    assert state_k[6] == [max(1, math.ceil(0.5 * support)), 20]  # row 1 has no support: kept
    assert all(k == [20, 20] for k in state_k[:6])  # changes only at the checkpoint


def test_sparsity_starts_from_the_support_of_a_nonzero_start():
    delta = torch.zeros(2, 30)
    delta[0, :10] = 0.1
    delta.requires_grad_(True)
    optim = L1APGD([delta], epsilon=2.0, total_steps=10, q=0.5, support_factor=0.5)
    delta.grad = torch.randn(2, 30)
    optim.step(losses=torch.zeros(2))
    assert optim.state[delta]["sparsity"].tolist() == [5, 15]


# --------------------------------------------------------------------------- #
# constraints, non-finite rows, state
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("cls", list(ORDER))
@given(seed=st.integers(0, 2**16), epsilon=st.floats(0.05, 6.0), steps=st.integers(1, 8))
def test_iterates_stay_in_the_ball_and_the_box(cls, seed, epsilon, steps):
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(3, 1, 4, 4, generator=gen)
    image[0] = 0.0
    delta = torch.zeros_like(image, requires_grad=True)
    optim = _make(cls, [delta], epsilon=epsilon, total_steps=steps, bounds=(-image, 1 - image))
    for _ in range(steps):
        delta.grad = torch.randn(delta.shape, generator=gen)
        optim.step(losses=torch.randn(3, generator=gen))
        d = delta.detach()
        assert bool(((image + d) >= -1e-6).all() and ((image + d) <= 1 + 1e-6).all())
        norms = torch.linalg.vector_norm(d.flatten(1), ORDER[cls], dim=1)
        assert bool((norms <= epsilon * (1 + 1e-5) + 1e-6).all())


@pytest.mark.parametrize("cls", list(ORDER))
def test_rows_with_non_finite_gradients_are_skipped(cls):
    delta = torch.zeros(3, 6, requires_grad=True)
    optim = _make(cls, [delta], epsilon=1.0, total_steps=5)
    grad = torch.randn(3, 6)
    grad[1, 2] = float("nan")
    delta.grad = grad
    optim.step(losses=torch.zeros(3))
    assert bool((delta.detach()[1] == 0).all()) and bool((delta.detach()[[0, 2]] != 0).any())
    assert int(optim.skipped_rows) == 1


def test_state_dict_round_trip_continues_identically():
    torch.manual_seed(0)
    a = torch.zeros(2, 8, requires_grad=True)
    oa = L1APGD([a], epsilon=2.0, total_steps=12, checkpoints=(0.25, 0.0, 0.25))
    grads = [torch.randn(2, 8) for _ in range(8)]
    losses = [torch.randn(2) for _ in range(8)]
    for g, l in zip(grads[:4], losses[:4]):
        a.grad = g.clone()
        oa.step(losses=l)
    b = a.detach().clone().requires_grad_(True)
    ob = L1APGD([b], epsilon=2.0, total_steps=12, checkpoints=(0.25, 0.0, 0.25))
    ob.load_state_dict(oa.state_dict())
    for g, l in zip(grads[4:], losses[4:]):
        a.grad, b.grad = g.clone(), g.clone()
        oa.step(losses=l)
        ob.step(losses=l)
    assert torch.equal(a, b)


def test_step_needs_losses_of_the_right_shape():
    delta = torch.zeros(3, 4, requires_grad=True)
    optim = L2APGD([delta], epsilon=1.0, total_steps=3)
    delta.grad = torch.ones(3, 4)
    with pytest.raises(TypeError, match="losses"):
        optim.step()
    with pytest.raises(SettingError, match="one loss per row"):
        optim.step(losses=torch.zeros(2))


def test_closure_returning_per_row_losses():
    delta = torch.zeros(2, 3, requires_grad=True)
    optim = L2APGD([delta], epsilon=1.0, total_steps=3)
    w = torch.tensor([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])

    def closure():
        optim.zero_grad()
        losses = (delta * w).sum(dim=1)
        losses.sum().backward()
        return losses.detach()

    optim.step(closure)
    torch.testing.assert_close(delta.detach(), -w)  # one step of 2ε against w, onto the unit sphere


@pytest.mark.parametrize(
    "kwargs, setting",
    [
        ({"total_steps": 0}, "total_steps"),
        ({"total_steps": 2.5}, "total_steps"),
        ({"alpha": 1.5}, "alpha"),
        ({"rho": -0.1}, "rho"),
        ({"initial_step": 0.0}, "initial_step"),
        ({"checkpoints": (0.0, 0.0, 0.1)}, "checkpoints"),
        ({"checkpoints": (0.2, 0.1)}, "checkpoints"),
        ({"q": 1.5}, "q"),
    ],
)
def test_bad_options_name_themselves(kwargs, setting):
    with pytest.raises(SettingError) as info:
        L1APGD([torch.zeros(2, 3, requires_grad=True)], **{"epsilon": 1.0, "total_steps": 5, **kwargs})
    assert info.value.setting == setting


def test_frank_wolfe_weight_cannot_exceed_one_and_missing_total_steps_is_a_type_error():
    with pytest.raises(SettingError, match="initial_step"):
        L1qAutoFrankWolfe([torch.zeros(2, 3, requires_grad=True)], epsilon=1.0, total_steps=3, initial_step=2.0)
    with pytest.raises(TypeError, match="total_steps"):
        L1APGD([torch.zeros(2, 3, requires_grad=True)], epsilon=1.0)
    with pytest.raises(SettingError, match="lr"):
        L2APGD([{"params": [torch.zeros(2, 3, requires_grad=True)], "lr": 0.1}], epsilon=1.0, total_steps=3)


def test_public_option_question():
    assert L1APGD.takes_option("total_steps") and L1APGD.takes_option("bounds")
    assert not L2APGD.takes_option("q")
    assert takes_option(L1APGD, "total_steps") and not takes_option(torch.optim.SGD, "bounds")


# --------------------------------------------------------------------------- #
# with the solver
# --------------------------------------------------------------------------- #
def _classifier(seed=0, pixels=16, classes=4):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(pixels, classes))


@pytest.mark.parametrize("cls", list(ORDER))
@pytest.mark.parametrize("targeted", [False, True])
def test_gradient_ascent_passes_losses_and_total_steps(cls, targeted):
    model = _classifier()
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(6, 1, 4, 4, generator=gen)
    target = torch.randint(0, 4, (6,), generator=gen)
    epsilon = {1.0: 3.0, 2.0: 1.0, math.inf: 0.2}[ORDER[cls]]
    extra = {"q": 0.5} if cls is L1qAutoFrankWolfe else {}
    result = gradient_ascent(model=model, data=images, target=target, optimizer=cls, steps=6,
                             epsilon=epsilon, data_range=(0, 1), targeted=targeted, **extra)
    before = nn.functional.cross_entropy(model(images), target, reduction="none")
    after = nn.functional.cross_entropy(model(result.xadv), target, reduction="none")
    assert bool((after < before).all()) if targeted else bool((after > before).all())
    assert result.steps_run == 6


def test_use_best_success_keeps_a_successful_iterate():
    # one feature; class 1 wins once x > 0; the loss keeps rising past the flip and then the run
    # is pushed back: "loss" keeps the highest loss, "success" any successful iterate
    def model(x):
        return torch.cat([torch.zeros_like(x), x], dim=1)

    calls = {"n": 0}

    def criterion(logits, target):  # raised: rewards x near 0.05 after the flip, then nothing
        calls["n"] += 1
        return -(logits[:, 1] - 0.05).abs()

    data = torch.full((2, 1), -0.2)
    target = torch.zeros(2, dtype=torch.long)
    for mode in ("success", "sparsest"):
        result = gradient_ascent(model=model, data=data, target=target, optimizer=torch.optim.SGD,
                                 lr=0.1, steps=6, criterion=criterion, use_best=mode)
        assert bool(result.success.all())


def test_use_best_sparsest_prefers_fewer_changed_entries():
    model = _classifier(seed=1)
    images = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    labels = model(images).argmax(1)
    attack = Attack("L1qAutoFrankWolfe", epsilon=4.0, steps=15, use_best=True, options={"q": 0.9})
    result = attack.run(model, images, labels)
    changed = ((result.xadv - images) != 0).flatten(1).sum(1)
    assert bool(result.success.any())
    assert bool((changed[result.success] <= 16).all())


# --------------------------------------------------------------------------- #
# DLR
# --------------------------------------------------------------------------- #
def test_dlr_hand_values_and_signs():
    z = torch.tensor([[5.0, 1.0, 0.0, -1.0], [1.0, 5.0, 0.0, -1.0]])
    y = torch.tensor([0, 0])
    torch.testing.assert_close(dlr_loss(z, y), torch.tensor([-4.0 / 5.0, 4.0 / 5.0]))
    t = torch.tensor([1, 1])  # row 0 not there yet (positive), row 1 there (negative)
    torch.testing.assert_close(targeted_dlr_loss(z, t), torch.tensor([4.0 / 5.5, -4.0 / 5.5]))


@given(value=st.floats(-1e4, 1e4), classes=st.integers(4, 12), dtype=st.sampled_from(
    [torch.float16, torch.bfloat16, torch.float32, torch.float64]))
def test_dlr_is_finite_when_the_top_logits_tie(value, classes, dtype):
    logits = torch.full((3, classes), value, dtype=dtype, requires_grad=True)
    target = torch.tensor([0, 1, classes - 1])
    for loss in (dlr_loss, targeted_dlr_loss):
        out = loss(logits, target)
        assert bool(torch.isfinite(out).all()) and bool((out == 0).all())
        (grad,) = torch.autograd.grad(out.sum(), logits)
        assert bool(torch.isfinite(grad).all())


def test_dlr_needs_enough_classes():
    with pytest.raises(SettingError, match="at least 3 classes"):
        dlr_loss(torch.zeros(2, 2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(SettingError, match="at least 4 classes"):
        targeted_dlr_loss(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))


def test_attack_with_dlr_moves_the_margin():
    model = _classifier(seed=3)
    images = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    labels = model(images).argmax(1)
    result = Attack("L2APGD", epsilon=0.5, steps=5, loss="dlr").run(model, images, labels)
    assert bool((dlr_loss(model(result.xadv), labels) > dlr_loss(model(images), labels)).all())
    target = (labels + 1) % 4
    result = Attack("L2APGD", epsilon=0.5, steps=5, loss="dlr", targeted=True).run(model, images, target)
    assert bool((targeted_dlr_loss(model(result.xadv), target) < targeted_dlr_loss(model(images), target)).all())


# --------------------------------------------------------------------------- #
# Attack: restarts, the ε schedule, the budget query
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("optimizer, epsilon", [("L1APGD", 2.0), ("L2ProjectedOptim", 0.6)])
def test_restarts_never_worse_than_one_run_per_image(optimizer, epsilon):
    model = _classifier(seed=4)
    images = torch.rand(12, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    labels = model(images).argmax(1)
    attack = Attack(optimizer, epsilon=epsilon, steps=4, lr=epsilon / 4, random_init="l1", use_best=True)
    single = attack.run(model, images, labels, generator=torch.Generator().manual_seed(7))
    several = attack.with_(restarts=3).run(model, images, labels, generator=torch.Generator().manual_seed(7))
    # the first restart draws the same start as the single run: each image keeps the better
    assert bool((several.success | ~single.success).all())
    both = several.success == single.success
    assert bool((several.losses[both] >= single.losses[both] - 1e-6).all())
    assert several.loss_trace.shape[0] == 3
    norms = (several.xadv - images).flatten(1).norm(p=1 if optimizer == "L1APGD" else 2, dim=1)
    assert bool((norms <= epsilon * (1 + 1e-4)).all())


def test_restarts_draw_new_random_starts():
    model = _classifier(seed=5)
    images = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    labels = model(images).argmax(1)
    attack = Attack("L2ProjectedOptim", epsilon=0.5, steps=1, lr=1e-4, random_init="l2", restarts=3)
    result = attack.run(model, images, labels, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(result.loss_trace[0], result.loss_trace[1])


def test_epsilon_schedule_stages_and_steps():
    assert stage_steps(100, 3) == [30, 30, 40] and stage_steps(3, 3) == [1, 1, 1]
    model = _classifier(seed=6)
    images = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(6))
    labels = model(images).argmax(1)
    attack = Attack("L1APGD", epsilon=1.5, steps=10, epsilon_schedule=[3, 2, 1], use_best=True)
    assert attack.epsilon_schedule == (3.0, 2.0, 1.0)
    result = attack.run(model, images, labels)
    assert result.steps_run == 10 and result.loss_trace.shape == (10 + 3,)  # each stage: steps + final
    l1 = (result.xadv - images).flatten(1).abs().sum(1)
    assert bool((l1 <= 1.5 * (1 + 1e-4)).all())
    for bad in ([3, 2], [0, 1], [float("nan"), 1], "3,2,1"):
        with pytest.raises(SettingError, match="epsilon_schedule"):
            attack.with_(epsilon_schedule=bad)
    with pytest.raises(SettingError, match="steps"):
        attack.with_(steps=2)


def test_attack_fields_are_validated():
    for field, value in (("restarts", 0), ("restarts", True), ("loss", "hinge")):
        with pytest.raises(SettingError) as info:
            Attack("L1APGD", epsilon=1.0, **{field: value})
        assert info.value.setting == field
    with pytest.raises(SettingError, match="smoothing_sigma"):
        Attack("L1APGD", epsilon=1.0, smoothing_sigma=1.0)


def test_reachable_norm_and_budget_note():
    shape = (4, 1, 28, 28)
    assert Attack("L1APGD", epsilon=10.0).reachable_norm(shape) == 10.0
    assert Attack("L1APGD", epsilon=1000.0).reachable_norm(shape) == 784.0
    assert Attack("L2APGD", epsilon=50.0).reachable_norm(shape) == 28.0
    assert Attack("LinfAPGD", epsilon=0.3, data_range=None).reachable_norm(shape) == 0.3
    capped = Attack("L1qFrankWolfe", epsilon=10.0, options={"q": 0.99, "dq": 0.005, "spend_budget": False})
    assert capped.reachable_norm(shape) == 4.0  # round((1 - 0.995) * 784) = 4 entries in the worst draw
    assert "spend_budget" in capped.budget_note(shape)
    assert capped.reachable_norm(shape, data_range=None) == 10.0
    assert Attack("L1qFrankWolfe", epsilon=10.0, options={"q": 0.99}).budget_note(shape) is None


# --------------------------------------------------------------------------- #
# every shipped attack config runs in both modes of the probe job
# --------------------------------------------------------------------------- #
def _attack_configs():
    import yaml

    from rai_probe.jobs.config_dir import CONFIG_DIR

    folder = CONFIG_DIR / "attack"
    return {path.stem: yaml.safe_load(path.read_text()) for path in sorted(folder.glob("*.yaml"))}


@pytest.mark.parametrize("mode", ["explain", "probe"])
@pytest.mark.parametrize("name", sorted(_attack_configs()))
def test_every_attack_config_runs_in_explain_and_probe_mode(tmp_path, name, mode):
    from probe_config import base_config
    from rai_probe.probing.artifacts import load_perturbations, read_metrics
    from rai_probe.probing.run import run_probe

    attack = dict(_attack_configs()[name], steps=3)
    targeted = mode == "probe"
    config = base_config(
        attack=attack, n_images=2, figures={"max_grids": 0, "images_per_grid": 2},
        mode={"name": mode, "targeted": targeted, "target": 3 if targeted else None},
    )
    run_probe(config, tmp_path / "job")
    metrics = read_metrics(tmp_path / "job")
    assert metrics["status"] == "complete" and metrics["attack"]["optimizer"] == attack["optimizer"]
    saved = load_perturbations(tmp_path / "job")
    delta = saved["deltas"].flatten(1)
    from rai_probe.perturbations.attacks import ATTACK_NORMS

    norm = ATTACK_NORMS[attack["optimizer"]]
    size = {"l1": delta.abs().sum(1), "l2": delta.norm(dim=1), "linf": delta.abs().amax(1)}[norm]
    assert bool((size <= attack["epsilon"] * (1 + 1e-4)).all())
    xadv = saved["xadv"]
    assert bool(((xadv >= 0) & (xadv <= 1)).all())

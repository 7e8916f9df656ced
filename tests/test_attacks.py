"""Tests of :class:`rai_probe.perturbations.attacks.Attack`, the plain-data attack recipe.

What is checked, in the order of the file:

* construction: every optimizer of ``ATTACK_OPTIMIZERS`` builds; an unknown
  optimizer or random start, ``epsilon <= 0`` (also NaN, bool, str),
  ``steps < 1`` (also bool and float), smoothing with a Frank-Wolfe optimizer,
  an out-of-range, unknown or missing optimizer option each raise at
  construction, naming the argument; ``options`` is copied; the dataclass is
  frozen; ``with_`` validates again and leaves the original alone;
* ``from_dict`` / ``to_dict``: unknown keys are refused with the ``where``
  prefix; ``to_dict`` is JSON-ready and ``from_dict(to_dict(a)) == a`` (a
  hypothesis property, also through ``json.dumps``);
* ``run``: every final image lies in the epsilon-ball of the optimizer's norm
  and in ``data_range`` (a hypothesis property over optimizer, epsilon, steps,
  random start and step size); the caller's images are not modified; the
  random start lies in its own ball and in the box; ``data_range=None`` and a
  narrower range are honoured (exact values); a seeded generator reproduces
  ``xadv`` exactly and another seed changes it (random start, and the random
  sparsity ``dq`` of ``L1qFrankWolfe``); the Frank-Wolfe family ignores ``lr``;
  ``use_best`` and ``confidence`` reach the solver;
* on a linear classifier trained on mnist5k (module fixture, < 1 s): targeted
  attacks lower the target-class loss of every image, untargeted ones raise
  the true-class loss;
* the Laplacian-smoothed variant (``smoothing_sigma``) builds, runs and stays
  in the ball.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

from rai_probe import optim as rai_optim
from rai_probe.data import load_mnist5k
from rai_probe.perturbations.attacks import ATTACK_OPTIMIZERS, RANDOM_INITS, Attack

#: The norm of each attack optimizer's epsilon-ball.
NORM = {
    "L1qFrankWolfe": 1.0,
    "L1FrankWolfe": 1.0,
    "L2FrankWolfe": 2.0,
    "LinfFrankWolfe": math.inf,
    "L1ProjectedOptim": 1.0,
    "L2ProjectedOptim": 2.0,
    "LinfProjectedOptim": math.inf,
    "L1APGD": 1.0,
    "L2APGD": 2.0,
    "LinfAPGD": math.inf,
    "L1qAutoFrankWolfe": 1.0,
}
INIT_NORM = {"l1": 1.0, "l2": 2.0, "linf": math.inf, "l1_sparse": 1.0}
NEEDS_Q = {"L1qFrankWolfe", "L1ProjectedOptim", "L1qAutoFrankWolfe", "L1APGD"}
FRANK_WOLFE = [name for name in ATTACK_OPTIMIZERS if "FrankWolfe" in name]
PROJECTED = [name for name in ATTACK_OPTIMIZERS if "Projected" in name]
APGD = [name for name in ATTACK_OPTIMIZERS if "APGD" in name]


def _options(optimizer: str, q: float = 0.5) -> dict:
    return {"q": q} if optimizer in NEEDS_Q else {}


def _norms(delta: Tensor, p: float) -> Tensor:
    return delta.flatten(1).norm(p=p, dim=1)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Recorder(nn.Module):
    """Wraps a model and keeps a copy of every batch it is called with."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.model(x)


def _linear(pixels: int = 16, classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(pixels, classes))


@pytest.fixture(scope="module")
def toy():
    """A random linear 3-class model on 1x4x4 images in [0, 1] and random labels."""
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(6, 1, 4, 4, generator=gen)
    labels = torch.randint(0, 3, (6,), generator=gen)
    return _linear(), images, labels


@pytest.fixture(scope="module")
def mnist_linear():
    """A linear classifier fitted to 300 mnist5k training digits; 20 test digits it sees."""
    train = load_mnist5k("train").subset(300)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(30):
        loss = F.cross_entropy(model(train.images), train.labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    test = load_mnist5k("test").subset(20)
    return model, test.images, test.labels


# --------------------------------------------------------------------------- #
# construction
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("optimizer", ATTACK_OPTIMIZERS)
def test_every_attack_optimizer_builds(optimizer):
    attack = Attack(optimizer, epsilon=1.0, options=_options(optimizer))
    assert attack.optimizer_class is getattr(rai_optim, optimizer)
    assert attack.make_optimizer() is attack.optimizer_class  # no smoothing: the class itself
    assert (attack.steps, attack.lr, attack.random_init, attack.data_range) == (10, 1.0, None, (0.0, 1.0))
    assert set(RANDOM_INITS) == {"l1", "l2", "linf", "l1_sparse"}


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"optimizer": "Adam"}, ValueError, r"unknown `optimizer` 'Adam'.*L2ProjectedOptim"),
        ({"optimizer": "l2projectedoptim"}, ValueError, r"`optimizer`"),
        ({"epsilon": 0}, ValueError, r"`epsilon` must be a finite number > 0; got epsilon=0"),
        ({"epsilon": -1.0}, ValueError, r"`epsilon`.*epsilon=-1.0"),
        ({"epsilon": math.nan}, ValueError, r"`epsilon`"),
        ({"epsilon": True}, ValueError, r"`epsilon`.*epsilon=True"),
        ({"epsilon": "1.0"}, ValueError, r"`epsilon`"),
        ({"steps": 0}, ValueError, r"`steps` must be an integer >= 1; got steps=0"),
        ({"steps": -2}, ValueError, r"`steps`"),
        ({"steps": True}, ValueError, r"`steps`.*steps=True"),
        ({"steps": 2.0}, ValueError, r"`steps`.*steps=2.0"),
        ({"random_init": "l3"}, ValueError, r"`random_init`.*l1, l2, linf.*'l3'"),
        ({"random_init": "L2"}, ValueError, r"`random_init`"),
        ({"lr": -1.0}, ValueError, r"`lr` must be a finite number > 0; got lr=-1.0"),
        ({"lr": math.nan}, ValueError, r"`lr`"),
        ({"lr": "0.1"}, ValueError, r"`lr`"),
        ({"use_best": "no"}, TypeError, r"`use_best` must be True or False; got use_best='no'"),
        ({"early_stop": "false"}, TypeError, r"`early_stop`"),
        ({"targeted": 1}, TypeError, r"`targeted`"),
        ({"confidence": 2.0}, ValueError, r"`confidence` must be None or a number within \[0, 1\]"),
        ({"confidence": math.nan}, ValueError, r"`confidence`"),
        ({"data_range": (1.0, 0.0)}, ValueError, r"`data_range` must be None or a pair"),
        ({"data_range": (0.0, math.inf)}, ValueError, r"`data_range`"),
        ({"data_range": ("0", "1")}, ValueError, r"`data_range`"),
        ({"smoothing_sigma": -1.0}, ValueError, r"`smoothing_sigma`"),
        ({"options": [1]}, TypeError, r"`options` must be a mapping"),
    ],
)
def test_bad_settings_raise_at_construction(kwargs, error, match):
    settings = {"optimizer": "L2ProjectedOptim", "epsilon": 1.0, **kwargs}
    with pytest.raises(error, match=match):
        Attack(**settings)


@pytest.mark.parametrize("optimizer", FRANK_WOLFE)
def test_smoothing_with_frank_wolfe_is_refused(optimizer):
    with pytest.raises(ValueError, match=rf"`smoothing_sigma` needs a projected optimizer.*{optimizer}"):
        Attack(optimizer, epsilon=1.0, options=_options(optimizer), smoothing_sigma=1.0)


@pytest.mark.parametrize(
    "optimizer, options, error, match",
    [
        ("L1qFrankWolfe", {"q": 1.5}, ValueError, r"L1qFrankWolfe: option `q` must be .*\[0, 1\]; got q=1.5"),
        ("L1qFrankWolfe", {"q": 0.5, "dq": -0.1}, ValueError, r"option `dq`.*dq=-0.1"),
        ("L1ProjectedOptim", {"q": -0.2}, ValueError, r"option `q`"),
        ("L1qFrankWolfe", {"q": 0.5, "qq": 0.5}, TypeError, r"does not take the option `qq`"),
        ("L2ProjectedOptim", {"q": 0.5}, TypeError, r"`q`"),
        ("L1qFrankWolfe", {}, TypeError, r"missing required option `q`"),
        ("L1ProjectedOptim", {}, TypeError, r"missing required option `q`"),
    ],
)
def test_bad_optimizer_options_raise_at_construction(optimizer, options, error, match):
    with pytest.raises(error, match=match):
        Attack(optimizer, epsilon=1.0, options=options)


def test_options_are_copied_and_attack_is_frozen():
    options = {"q": 0.9}
    attack = Attack("L1qFrankWolfe", epsilon=2.0, options=options)
    options["q"] = 5.0  # the caller's dict changes later: the attack does not
    assert attack.options == {"q": 0.9}
    assert attack.options is not options
    with pytest.raises(dataclasses.FrozenInstanceError):
        attack.epsilon = 3.0  # type: ignore[misc]


def test_with_changes_fields_and_validates_again():
    attack = Attack("L2ProjectedOptim", epsilon=1.0, steps=5, lr=0.5)
    changed = attack.with_(epsilon=2.0, steps=3, targeted=True)
    assert (changed.epsilon, changed.steps, changed.targeted, changed.lr) == (2.0, 3, True, 0.5)
    assert (attack.epsilon, attack.steps, attack.targeted) == (1.0, 5, False)
    with pytest.raises(ValueError, match="`epsilon`"):
        attack.with_(epsilon=-1.0)
    with pytest.raises(ValueError, match="`smoothing_sigma`"):
        attack.with_(optimizer="L2FrankWolfe", smoothing_sigma=1.0)
    with pytest.raises(ValueError, match="option `q`"):
        Attack("L1qFrankWolfe", epsilon=1.0, options={"q": 0.5}).with_(options={"q": 2.0})


# --------------------------------------------------------------------------- #
# from_dict / to_dict
# --------------------------------------------------------------------------- #
def test_from_dict_rejects_unknown_keys_naming_them_and_where():
    settings = {"optimizer": "L2ProjectedOptim", "epsilon": 1.0, "stpes": 3, "bogus": 1}
    with pytest.raises(ValueError, match=r"eval_attacks\.x: unknown setting\(s\) \['bogus', 'stpes'\]; allowed: optimizer"):
        Attack.from_dict(settings, where="eval_attacks.x")
    with pytest.raises(ValueError, match=r"^attack: unknown setting"):
        Attack.from_dict({"optimizer": "L2ProjectedOptim", "epsilon": 1.0, "eps": 3})


def test_from_dict_converts_config_values():
    attack = Attack.from_dict(
        {"optimizer": "L1qFrankWolfe", "epsilon": 10, "steps": 4, "options": {"q": 0.99}, "data_range": [0, 1]}
    )
    assert attack.epsilon == 10.0 and isinstance(attack.epsilon, float)
    assert attack.data_range == (0.0, 1.0) and isinstance(attack.data_range, tuple)
    assert attack.options == {"q": 0.99} and attack.steps == 4
    assert Attack.from_dict({"optimizer": "L2ProjectedOptim", "epsilon": 1.0, "data_range": None}).data_range is None
    with pytest.raises(ValueError, match="`epsilon`"):
        Attack.from_dict({"optimizer": "L2ProjectedOptim", "epsilon": 0})


def test_to_dict_lists_every_field():
    attack = Attack("L1qFrankWolfe", epsilon=5.0, steps=7, options={"q": 0.9, "dq": 0.05}, random_init="l1")
    assert attack.to_dict() == {
        "optimizer": "L1qFrankWolfe",
        "epsilon": 5.0,
        "steps": 7,
        "lr": 1.0,
        "options": {"q": 0.9, "dq": 0.05},
        "random_init": "l1",
        "smoothing_sigma": None,
        "targeted": False,
        "use_best": False,
        "early_stop": False,
        "confidence": None,
        "data_range": [0.0, 1.0],
        "loss": "ce",
        "restarts": 1,
        "epsilon_schedule": None,
        "check_every": 1,
    }


@st.composite
def attacks(draw):
    optimizer = draw(st.sampled_from(ATTACK_OPTIMIZERS))
    options = {}
    if optimizer in NEEDS_Q:
        options["q"] = draw(st.floats(0.0, 1.0))
        if draw(st.booleans()):
            options["dq"] = draw(st.floats(0.0, 0.5))
    low = draw(st.floats(-2.0, 0.5))
    data_range = draw(st.sampled_from([None, (0.0, 1.0), (low, low + draw(st.floats(0.1, 3.0)))]))
    return Attack(
        optimizer,
        epsilon=draw(st.floats(1e-3, 100.0) | st.integers(1, 50)),
        steps=draw(st.integers(3, 1000)),
        lr=draw(st.floats(1e-4, 10.0)),
        options=options,
        random_init=draw(st.sampled_from([None, *RANDOM_INITS])),
        targeted=draw(st.booleans()),
        use_best=draw(st.booleans()),
        early_stop=draw(st.booleans()),
        confidence=draw(st.none() | st.floats(0.0, 1.0)),
        data_range=data_range,
        loss=draw(st.sampled_from(["ce", "dlr"])),
        restarts=draw(st.integers(1, 4)),
        epsilon_schedule=draw(st.sampled_from([None, (1.0,), (3.0, 2.0, 1.0), (2, 1)])),
    )


@given(attacks())
def test_to_dict_from_dict_round_trip(attack):
    plain = attack.to_dict()
    assert Attack.from_dict(plain) == attack
    through_json = json.loads(json.dumps(plain))
    assert Attack.from_dict(through_json) == attack
    assert Attack.from_dict(through_json).to_dict() == json.loads(json.dumps(plain))


# --------------------------------------------------------------------------- #
# run: constraints
# --------------------------------------------------------------------------- #
@given(
    optimizer=st.sampled_from(ATTACK_OPTIMIZERS),
    epsilon=st.floats(0.05, 4.0),
    steps=st.integers(1, 3),
    lr_fraction=st.floats(0.05, 2.0),
    random_init=st.sampled_from([None, *RANDOM_INITS]),
    q=st.floats(0.0, 0.95),
    seed=st.integers(0, 2**16),
)
def test_run_stays_in_epsilon_ball_and_data_range(optimizer, epsilon, steps, lr_fraction, random_init, q, seed):
    model = _linear(seed=seed % 7)
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(5, 1, 4, 4, generator=gen)
    images[0] = 0.0  # images on the box's faces too
    images[1] = 1.0
    before = images.clone()
    labels = torch.randint(0, 3, (5,), generator=gen)
    attack = Attack(
        optimizer, epsilon=epsilon, steps=steps, lr=lr_fraction * epsilon,
        options=_options(optimizer, q), random_init=random_init,
    )
    result = attack.run(model, images, labels, generator=gen)
    assert torch.equal(images, before)
    assert result.xadv.shape == images.shape
    norms = _norms(result.xadv - images, NORM[optimizer])
    assert bool((norms <= epsilon * (1 + 1e-4) + 1e-6).all()), (norms, epsilon)
    assert bool(((result.xadv >= 0.0) & (result.xadv <= 1.0)).all())


@pytest.mark.parametrize("random_init", sorted(RANDOM_INITS))
@pytest.mark.parametrize("data_range", [(0.0, 1.0), None])
def test_random_start_lies_in_its_ball_and_the_box(random_init, data_range):
    recorder = Recorder(_linear())
    images = torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    images[:2] = 1.0  # the box cuts the ball here
    labels = torch.zeros(8, dtype=torch.long)
    epsilon = 0.8
    attack = Attack("LinfProjectedOptim", epsilon=epsilon, steps=1, lr=0.01, random_init=random_init,
                    data_range=data_range)
    attack.run(recorder, images, labels, generator=torch.Generator().manual_seed(0))
    start = recorder.seen[0] - images
    assert bool((_norms(start, INIT_NORM[random_init]) <= epsilon * (1 + 1e-5)).all())
    assert bool((_norms(start, 1.0) > 0).all())  # a random start, not zero
    if data_range is not None:
        assert bool(((recorder.seen[0] >= 0) & (recorder.seen[0] <= 1)).all())
        assert bool((start[:2] <= 0).all())  # images at 1 can only move down
    else:  # no box: the start of the all-ones images goes above 1 somewhere
        assert bool((recorder.seen[0][:2] > 1).any())


def test_no_random_start_starts_at_the_images():
    recorder = Recorder(_linear())
    images = torch.rand(4, 1, 4, 4)
    Attack("L2ProjectedOptim", epsilon=1.0, steps=1).run(recorder, images, torch.zeros(4, dtype=torch.long))
    assert torch.equal(recorder.seen[0], images)


class SumModel(nn.Module):
    """Class 1's logit is the pixel sum, class 0's is 0: untargeted label 0 pushes every pixel up."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.flatten(1).sum(1)
        return torch.stack([torch.zeros_like(s), s], dim=1)


def test_data_range_is_honoured_exactly():
    images = torch.tensor([0.2, 0.75, 0.95, 1.0]).view(1, 1, 2, 2)
    labels = torch.zeros(1, dtype=torch.long)
    attack = Attack("LinfProjectedOptim", epsilon=0.1, steps=1, lr=0.1)
    unit = attack.run(SumModel(), images, labels).xadv.flatten()
    free = attack.with_(data_range=None).run(SumModel(), images, labels).xadv.flatten()
    narrow_images = images.clamp(max=0.8)  # the data must lie in the range already
    narrow = attack.with_(data_range=(0.0, 0.8)).run(SumModel(), narrow_images, labels).xadv.flatten()
    torch.testing.assert_close(unit, torch.tensor([0.3, 0.85, 1.0, 1.0]))
    torch.testing.assert_close(free, torch.tensor([0.3, 0.85, 1.05, 1.1]))
    torch.testing.assert_close(narrow, torch.tensor([0.3, 0.8, 0.8, 0.8]))


# --------------------------------------------------------------------------- #
# run: randomness
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "attack",
    [
        Attack("L2ProjectedOptim", epsilon=1.0, steps=3, lr=0.3, random_init="l2"),
        Attack("LinfProjectedOptim", epsilon=0.1, steps=2, lr=0.05, random_init="linf"),
        Attack("L1qFrankWolfe", epsilon=3.0, steps=3, options={"q": 0.6, "dq": 0.35}),  # random sparsity only
    ],
    ids=["l2-start", "linf-start", "l1q-dq"],
)
def test_generator_seed_reproduces_and_changes_xadv(toy, attack):
    model, images, labels = toy
    run = lambda seed: attack.run(model, images, labels, generator=torch.Generator().manual_seed(seed)).xadv
    first, again, other = run(0), run(0), run(1)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_frank_wolfe_ignores_lr(toy):
    model, images, labels = toy
    attack = Attack("L2FrankWolfe", epsilon=1.0, steps=3)
    assert torch.equal(attack.run(model, images, labels).xadv, attack.with_(lr=123.0).run(model, images, labels).xadv)
    projected = Attack("L2ProjectedOptim", epsilon=1.0, steps=1, lr=0.1)  # ... the projected family does not
    assert not torch.equal(
        projected.run(model, images, labels).xadv, projected.with_(lr=0.5).run(model, images, labels).xadv
    )


def test_use_best_and_confidence_reach_the_solver(toy):
    model, images, labels = toy
    result = Attack("L2ProjectedOptim", epsilon=2.0, steps=4, lr=1.5, use_best=True).run(model, images, labels)
    torch.testing.assert_close(result.losses, result.datum_loss_trace.max(dim=0).values)
    target = (labels + 1) % 3
    result = Attack("L2ProjectedOptim", epsilon=2.0, steps=4, lr=0.5, targeted=True, confidence=0.9).run(
        model, images, target
    )
    probs = result.logits.softmax(1).gather(1, target[:, None])[:, 0]
    assert torch.equal(result.success, (result.logits.argmax(1) == target) & (probs >= 0.9))


# --------------------------------------------------------------------------- #
# run: on a trained classifier
# --------------------------------------------------------------------------- #
def _ce(model, x, y):
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none")


def _true_margin(model, x, y):
    """The true class's logit minus the largest other logit."""
    with torch.no_grad():
        logits = model(x)
    true = logits.gather(1, y[:, None])[:, 0]
    return true - logits.scatter(1, y[:, None], -math.inf).amax(1)


@pytest.mark.parametrize(
    "attack",
    [
        Attack("L2ProjectedOptim", epsilon=1.0, steps=5, lr=0.25),
        Attack("LinfProjectedOptim", epsilon=0.05, steps=5, lr=0.0125),
        Attack("L1qFrankWolfe", epsilon=5.0, steps=5, options={"q": 0.9}),
        Attack("L1ProjectedOptim", epsilon=5.0, steps=5, lr=1.0, options={"q": 0.9}),
    ],
    ids=lambda a: a.optimizer,
)
def test_targeted_lowers_target_loss_and_untargeted_raises_true_loss(mnist_linear, attack):
    model, images, labels = mnist_linear
    target = (labels + 1) % 10
    targeted = attack.with_(targeted=True).run(model, images, target)
    assert bool((_ce(model, targeted.xadv, target) < _ce(model, images, target)).all())
    untargeted = attack.run(model, images, labels)
    # float32 cross-entropy saturates at 0 for very confident digits: compare the logits' margin
    assert bool((_ce(model, untargeted.xadv, labels) >= _ce(model, images, labels)).all())
    assert bool((_true_margin(model, untargeted.xadv, labels) < _true_margin(model, images, labels)).all())
    clean_hits = (model(images).argmax(1) == target).sum()
    assert int(targeted.success.sum()) >= int(clean_hits)


# --------------------------------------------------------------------------- #
# smoothing
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("optimizer", PROJECTED)
def test_smoothed_attack_runs_and_stays_in_ball(mnist_linear, optimizer):
    model, images, labels = mnist_linear
    epsilon = {1.0: 5.0, 2.0: 1.0, math.inf: 0.05}[NORM[optimizer]]
    attack = Attack(optimizer, epsilon=epsilon, steps=3, lr=epsilon / 3, options=_options(optimizer, 0.9),
                    smoothing_sigma=1.0)
    result = attack.run(model, images, labels, generator=torch.Generator().manual_seed(0))
    assert bool((_norms(result.xadv - images, NORM[optimizer]) <= epsilon * (1 + 1e-4)).all())
    assert bool(((result.xadv >= 0) & (result.xadv <= 1)).all())
    assert bool((_true_margin(model, result.xadv, labels) < _true_margin(model, images, labels)).all())

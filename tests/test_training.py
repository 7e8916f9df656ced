"""Tests of :mod:`rai_probe.training`: augmentation, recipe, training loop, evaluation, config runs.

What is checked, in the order of the file:

* ``random_shift``: ``max_shift=0`` is the identity; every output image is its
  input moved by some ``(dy, dx)`` within ``max_shift`` with zero fill (checked
  against a brute-force loop over the candidate shifts, a hypothesis property
  over shapes, channels and seeds); every shift occurs; a seeded generator
  reproduces the batch;
* ``TrainingRecipe``: each invalid field raises a ``ValueError`` naming it;
  ``learning_rate`` is a linear warm-up then a cosine to 0 (exact values, and
  a hypothesis property: continuous at the end of the warm-up, non-increasing
  after it, never above the peak for whole-step warm-ups) or constant;
  ``to_dict`` is JSON-ready and holds the attack's dict;
* ``adversarial_train`` on a separable toy problem with a linear model:
  per-epoch records (keys, epoch numbers, the learning rate of the epoch's
  last step), clean training learns and never runs an attack, adversarial
  training runs the attack once per batch with epsilon ramped up over
  ``attack_warmup_epochs`` (exact values), held-out records at every
  ``eval_every`` epochs and after the last, ``on_epoch_end``, seeded
  reproducibility, the first SGD (Nesterov, momentum 0.9) and Adam steps
  exactly, ``clean_weight=1`` equals clean training, the model is left in eval
  mode, a labels shape mismatch is a ``ValueError``;
* ``evaluate`` / ``robust_accuracy`` on a hand-built linear model whose
  predictions and margins are known: exact clean accuracy (any batch size),
  exact robust accuracy under an L-inf attack of known strength, a tiny
  attack leaves it equal to the clean one, robust <= clean per image (a
  hypothesis property), the model's mode and ``requires_grad`` flags are
  restored, seeded results repeat, ``targeted`` is ignored;
* ``training_attack`` / ``eval_attacks`` (exact attacks, the keys of the
  recipe's old spelling named with their new one, the shipped
  rai_probe/configs/training/eval_attacks/mnist.yaml) and ``train_from_config`` end to end on a
  tiny mnist5k run composed from rai_probe/configs/training/train.yaml: the files it writes, the
  checkpoint gives the trained model's logits exactly, its recorded
  ``training`` / ``metrics`` match the recipe, ``metrics.json`` and
  ``history.json``, and ``evaluate`` on the checkpoint reproduces the recorded
  accuracies.

Regression tests for bugs found while writing this file: robust accuracy
with a random start or ``use_best``, learning-rate overshoot with fractional
warm-ups, unchecked recipe fields and ``adversarial_train`` arguments.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from rai_probe.models import load_checkpoint
from rai_probe.perturbations.attacks import Attack
from rai_probe.jobs.config_dir import CONFIG_DIR
from rai_probe.training import (
    TrainingHistory,
    TrainingRecipe,
    adversarial_train,
    evaluate,
    random_shift,
    robust_accuracy,
)
from rai_probe.training import run as training_run
from rai_probe.training.run import eval_attacks, train_from_config, training_attack

CONFIGS = CONFIG_DIR / "training"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------- #
# random_shift
# --------------------------------------------------------------------------- #
def _shifted(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``images`` (N, C, H, W) moved down by ``dy`` and right by ``dx``, zero fill (pixel by pixel)."""
    _, _, height, width = images.shape
    out = torch.zeros_like(images)
    for row in range(height):
        for col in range(width):
            if 0 <= row + dy < height and 0 <= col + dx < width:
                out[:, :, row + dy, col + dx] = images[:, :, row, col]
    return out


def _matching_shifts(out: torch.Tensor, images: torch.Tensor, max_shift: int) -> dict[tuple[int, int], torch.Tensor]:
    """For every candidate shift, which output images equal their input moved by it (bool, shape-(N,))."""
    candidates = range(-max_shift, max_shift + 1)
    return {
        (dy, dx): (out == _shifted(images, dy, dx)).flatten(1).all(dim=1) for dy in candidates for dx in candidates
    }


def test_random_shift_zero_is_identity():
    images = torch.rand(5, 3, 4, 6)
    out = random_shift(images, 0, torch.Generator().manual_seed(0))
    assert out is images or torch.equal(out, images)


@given(
    n=st.integers(1, 5),
    channels=st.sampled_from([1, 3]),
    height=st.integers(1, 6),
    width=st.integers(1, 6),
    max_shift=st.integers(1, 3),
    seed=st.integers(0, 2**20),
)
def test_random_shift_moves_each_image_by_an_allowed_offset(n, channels, height, width, max_shift, seed):
    gen = torch.Generator().manual_seed(seed)
    images = 0.1 + torch.rand(n, channels, height, width, generator=gen)  # > 0: zero fill is visible
    out = random_shift(images, max_shift, gen)
    assert out.shape == images.shape and out.dtype == images.dtype
    matches = torch.stack(list(_matching_shifts(out, images, max_shift).values()), dim=1)  # (N, shifts)
    assert bool(matches.any(dim=1).all()), "an image is no allowed shift of its input"


@pytest.mark.parametrize("max_shift", [1, 2])
def test_random_shift_draws_every_offset(max_shift):
    images = 0.1 + torch.rand(40 * (2 * max_shift + 1) ** 2, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    out = random_shift(images, max_shift, torch.Generator().manual_seed(2))
    matches = _matching_shifts(out, images, max_shift)
    assert bool((torch.stack(list(matches.values())).sum(dim=0) == 1).all())  # random pixels: one shift each
    assert all(bool(hit.any()) for hit in matches.values()), "some shift never occurs"


def test_random_shift_is_reproducible_with_a_generator():
    images = torch.rand(64, 3, 6, 6)
    first = random_shift(images, 2, torch.Generator().manual_seed(7))
    assert torch.equal(first, random_shift(images, 2, torch.Generator().manual_seed(7)))
    assert not torch.equal(first, random_shift(images, 2, torch.Generator().manual_seed(8)))
    assert random_shift(images, 1).shape == images.shape  # the global generator works too


# --------------------------------------------------------------------------- #
# TrainingRecipe
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "name, value",
    [
        ("epochs", 0),
        ("epochs", 2.0),
        ("epochs", True),
        ("batch_size", 0),
        ("batch_size", -4),
        ("lr", 0.0),
        ("lr", -0.1),
        ("lr", math.nan),
        ("optimizer", "rmsprop"),
        ("optimizer", "SGD"),
        ("schedule", "step"),
        ("clean_weight", -0.1),
        ("clean_weight", 1.5),
        ("clean_weight", math.nan),
        ("weight_decay", -1e-4),
        ("warmup_epochs", -1.0),
        ("attack_warmup_epochs", -0.5),
        ("max_shift", -1),
        ("max_shift", 1.5),
        ("max_shift", True),
    ],
)
def test_recipe_rejects_invalid_fields_naming_them(name, value):
    with pytest.raises(ValueError, match=rf"TrainingRecipe:.*`{name}`"):
        TrainingRecipe(**{name: value})


@pytest.mark.parametrize("name", ["weight_decay", "warmup_epochs", "attack_warmup_epochs"])
def test_recipe_rejects_nan(name):
    with pytest.raises(ValueError, match=name):
        TrainingRecipe(**{name: math.nan})


def test_recipe_rejects_an_attack_that_is_not_an_attack():
    with pytest.raises((TypeError, ValueError), match="attack"):
        TrainingRecipe(attack={"optimizer": "L2ProjectedOptim", "epsilon": 1.0})


def test_learning_rate_warmup_then_cosine_exact():
    recipe = TrainingRecipe(lr=0.1, warmup_epochs=1.0, schedule="cosine")
    rates = [recipe.learning_rate(step, total_steps=12, steps_per_epoch=4) for step in range(13)]
    cosine = [0.05 * (1 + math.cos(math.pi * k / 8)) for k in range(9)]
    assert rates == pytest.approx([0.025, 0.05, 0.075, 0.1, *cosine], abs=1e-12)
    assert rates[4] == pytest.approx(0.1) and rates[8] == pytest.approx(0.05)
    assert rates[12] == pytest.approx(0.0, abs=1e-12)  # cosine ends at zero
    assert rates[11] < 0.005


def test_learning_rate_constant_and_no_warmup():
    constant = TrainingRecipe(lr=0.2, warmup_epochs=0.5, schedule="constant")
    assert [constant.learning_rate(s, 20, 4) for s in range(6)] == pytest.approx([0.1, 0.2, 0.2, 0.2, 0.2, 0.2])
    no_warmup = TrainingRecipe(lr=0.2, warmup_epochs=0.0)
    assert no_warmup.learning_rate(0, 10, 5) == pytest.approx(0.2)
    assert no_warmup.learning_rate(5, 10, 5) == pytest.approx(0.1)


@given(
    lr=st.floats(1e-5, 1.0),
    warmup_epochs=st.integers(0, 3),
    steps_per_epoch=st.integers(1, 20),
    epochs=st.integers(4, 10),
)
def test_learning_rate_schedule_shape(lr, warmup_epochs, steps_per_epoch, epochs):
    recipe = TrainingRecipe(lr=lr, warmup_epochs=float(warmup_epochs), epochs=epochs)
    total = epochs * steps_per_epoch
    rates = [recipe.learning_rate(s, total, steps_per_epoch) for s in range(total)]
    warmup = warmup_epochs * steps_per_epoch
    assert all(0 < r <= lr * (1 + 1e-12) for r in rates)
    assert all(a < b for a, b in zip(rates[:warmup], rates[1:warmup]))  # linear warm-up rises ...
    if warmup:
        assert rates[warmup - 1] == pytest.approx(lr)  # ... to the peak
    assert rates[warmup] == pytest.approx(lr)
    assert all(b <= a + 1e-15 for a, b in zip(rates[warmup:], rates[warmup + 1 :]))  # cosine decays
    assert recipe.learning_rate(total, total, steps_per_epoch) == pytest.approx(0.0, abs=1e-12 * lr)


@pytest.mark.parametrize("warmup_epochs, steps_per_epoch", [(0.5, 1), (0.3, 1), (0.5, 63), (1.5, 3)])
def test_learning_rate_never_exceeds_peak_with_fractional_warmup(warmup_epochs, steps_per_epoch):
    recipe = TrainingRecipe(lr=0.1, warmup_epochs=warmup_epochs)
    total = 5 * steps_per_epoch
    assert max(recipe.learning_rate(s, total, steps_per_epoch) for s in range(total)) <= 0.1 + 1e-12


def test_recipe_to_dict_is_json_ready_and_holds_the_attack():
    attack = Attack("L2ProjectedOptim", epsilon=1.5, steps=3, lr=0.5, random_init="l2")
    recipe = TrainingRecipe(epochs=2, batch_size=16, attack=attack, clean_weight=0.25, max_shift=1)
    plain = json.loads(json.dumps(recipe.to_dict()))
    assert plain["attack"] == json.loads(json.dumps(attack.to_dict()))
    assert Attack.from_dict(plain["attack"]) == attack
    assert TrainingRecipe(**{**plain, "attack": Attack.from_dict(plain["attack"])}) == recipe
    assert {k: v for k, v in plain.items() if k != "attack"} == {
        "epochs": 2, "batch_size": 16, "lr": 1e-3, "optimizer": "adam", "weight_decay": 0.0,
        "schedule": "cosine", "warmup_epochs": 1.0, "max_shift": 1, "clean_weight": 0.25,
        "attack_warmup_epochs": 0.0, "seed": 0,
    }
    assert json.loads(json.dumps(TrainingRecipe().to_dict()))["attack"] is None


# --------------------------------------------------------------------------- #
# adversarial_train
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def separable():
    """96 random 1x4x4 images, labelled by whether the top-left pixel beats the bottom-right one."""
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(96, 1, 4, 4, generator=gen)
    labels = (images[:, 0, 0, 0] > images[:, 0, 3, 3]).long()
    return images, labels


def _linear(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 2))


def _accuracy(model, images, labels) -> float:
    with torch.no_grad():
        return (model(images).argmax(1) == labels).float().mean().item()


@pytest.fixture
def attack_calls(monkeypatch):
    """Records (epsilon, lr, batch size, generator) of every Attack.run call, then runs it."""
    calls = []
    original = Attack.run

    def spy(self, model, images, target, **kwargs):
        calls.append((self.epsilon, self.lr, images.shape[0], kwargs.get("generator")))
        return original(self, model, images, target, **kwargs)

    monkeypatch.setattr(Attack, "run", spy)
    return calls


L2_PGD = Attack("L2ProjectedOptim", epsilon=0.5, steps=2, lr=0.25, random_init="l2")


def test_clean_training_records_epochs_and_learns(separable, attack_calls):
    images, labels = separable
    model = _linear()
    model.train()
    recipe = TrainingRecipe(epochs=10, batch_size=32, lr=0.1, warmup_epochs=0.0)
    history = adversarial_train(model, images, labels, recipe, progress=False)
    assert isinstance(history, TrainingHistory) and history.seconds > 0
    assert [r["epoch"] for r in history.epochs] == list(range(1, 11))
    assert all(set(r) == {"epoch", "loss", "train_accuracy", "lr", "seconds"} for r in history.epochs)
    # 3 batches per epoch: each record holds the learning rate of its epoch's last step
    assert [r["lr"] for r in history.epochs] == [recipe.learning_rate(3 * e + 2, 30, 3) for e in range(10)]
    assert history.epochs[-1]["loss"] < history.epochs[0]["loss"]
    assert all(0 <= r["train_accuracy"] <= 1 for r in history.epochs)
    assert _accuracy(model, images, labels) > 0.85
    assert not model.training
    assert attack_calls == []  # clean images only


def test_adversarial_training_ramps_the_attack_per_batch(separable, attack_calls):
    images, labels = separable
    model = _linear()
    recipe = TrainingRecipe(epochs=2, batch_size=32, lr=0.01, attack=L2_PGD, attack_warmup_epochs=1.0)
    history = adversarial_train(model, images, labels, recipe, progress=False)
    assert all(set(r) == {"epoch", "loss", "adversarial_accuracy", "lr", "seconds"} for r in history.epochs)
    # 3 batches per epoch; epsilon and step size grow as (step + 1) / 3 over the first epoch
    ramp = [1 / 3, 2 / 3, 1.0, 1.0, 1.0, 1.0]
    assert [c[0] for c in attack_calls] == pytest.approx([0.5 * r for r in ramp])
    assert [c[1] for c in attack_calls] == pytest.approx([0.25 * r for r in ramp])
    assert [c[2] for c in attack_calls] == [32] * 6
    assert all(isinstance(c[3], torch.Generator) for c in attack_calls)
    assert not model.training


def test_adversarial_accuracy_is_lower_than_clean(separable):
    images, labels = separable
    strong = Attack("LinfProjectedOptim", epsilon=0.5, steps=3, lr=0.25)
    clean_history = adversarial_train(_linear(), images, labels,
                                      TrainingRecipe(epochs=1, batch_size=96, lr=1e-9), progress=False)
    adv_history = adversarial_train(_linear(), images, labels,
                                    TrainingRecipe(epochs=1, batch_size=96, lr=1e-9, attack=strong), progress=False)
    # same initial model, (almost) no learning: the attack breaks what the clean images get right
    assert adv_history.epochs[0]["adversarial_accuracy"] < clean_history.epochs[0]["train_accuracy"]
    assert adv_history.epochs[0]["loss"] > clean_history.epochs[0]["loss"]


def test_held_out_records_at_eval_every_and_last_epoch(separable):
    images, labels = separable
    records = []
    tiny = {"tiny_l2": Attack("L2ProjectedOptim", epsilon=0.01, steps=1, lr=0.01)}
    history = adversarial_train(
        _linear(), images[:32], labels[:32], TrainingRecipe(epochs=5, batch_size=32, lr=0.01),
        eval_images=images[32:], eval_labels=labels[32:], eval_attacks=tiny, eval_every=2, eval_size=20,
        progress=False, on_epoch_end=records.append,
    )
    assert [("eval" in r) for r in history.epochs] == [False, True, False, True, True]
    assert records == history.epochs
    for record in history.epochs[1::2] + history.epochs[-1:]:
        held_out = record["eval"]
        assert held_out["n"] == 20 and set(held_out["robust_accuracy"]) == {"tiny_l2"}
        assert held_out["robust_accuracy"]["tiny_l2"] <= held_out["clean_accuracy"]


def test_default_held_out_attacks(separable):
    images, labels = separable
    common = dict(eval_images=images[:10], eval_labels=labels[:10], progress=False)
    clean = adversarial_train(_linear(), images, labels, TrainingRecipe(epochs=1, batch_size=96), **common)
    assert clean.epochs[-1]["eval"]["robust_accuracy"] == {}
    adv = adversarial_train(_linear(), images, labels, TrainingRecipe(epochs=1, batch_size=96, attack=L2_PGD),
                            **common)
    assert set(adv.epochs[-1]["eval"]["robust_accuracy"]) == {"train_attack"}


def _without_seconds(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history.epochs]


def test_training_is_reproducible_with_its_seed(separable):
    images, labels = separable
    recipe = TrainingRecipe(epochs=2, batch_size=32, lr=0.02, attack=L2_PGD, max_shift=1, seed=3)
    first, second, other = _linear(), _linear(), _linear()
    h1 = adversarial_train(first, images, labels, recipe, progress=False)
    torch.manual_seed(12345)  # the global RNG state before training does not matter
    h2 = adversarial_train(second, images, labels, recipe, progress=False)
    adversarial_train(other, images, labels, TrainingRecipe(**{**vars(recipe), "seed": 4}), progress=False)
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    assert _without_seconds(h1) == _without_seconds(h2)
    assert not torch.equal(first[1].weight, other[1].weight)


def _full_batch_gradient(model, images, labels):
    model.zero_grad()
    F.cross_entropy(model(images), labels).backward()
    return [p.grad.clone() for p in model.parameters()]


def test_first_sgd_step_is_nesterov_with_momentum_09(separable):
    images, labels = separable
    model = _linear()
    before = [p.detach().clone() for p in model.parameters()]
    grads = _full_batch_gradient(copy.deepcopy(model), images, labels)
    recipe = TrainingRecipe(epochs=1, batch_size=96, lr=0.1, optimizer="sgd", warmup_epochs=0.0, schedule="constant")
    adversarial_train(model, images, labels, recipe, progress=False)
    for p, p0, g in zip(model.parameters(), before, grads):  # buf = g; step = g + 0.9 * buf
        torch.testing.assert_close(p.detach(), p0 - 0.1 * 1.9 * g)


def test_first_adam_step_moves_each_weight_by_lr(separable):
    images, labels = separable
    model = _linear()
    before = [p.detach().clone() for p in model.parameters()]
    grads = _full_batch_gradient(copy.deepcopy(model), images, labels)
    recipe = TrainingRecipe(epochs=1, batch_size=96, lr=0.01, optimizer="adam", warmup_epochs=0.0)
    adversarial_train(model, images, labels, recipe, progress=False)
    for p, p0, g in zip(model.parameters(), before, grads):  # Adam's first step: lr * g / (|g| + eps)
        torch.testing.assert_close(p.detach(), p0 - 0.01 * g / (g.abs() + 1e-8))


def test_clean_weight_one_equals_clean_training(separable):
    images, labels = separable
    clean, mixed = _linear(), _linear()
    base = dict(epochs=2, batch_size=32, lr=0.01)
    h_clean = adversarial_train(clean, images, labels, TrainingRecipe(**base), progress=False)
    h_mixed = adversarial_train(mixed, images, labels, TrainingRecipe(**base, attack=L2_PGD, clean_weight=1.0),
                                progress=False)
    for a, b in zip(clean.parameters(), mixed.parameters()):
        assert torch.equal(a, b)
    assert [r["loss"] for r in h_clean.epochs] == [r["loss"] for r in h_mixed.epochs]
    half = _linear()
    adversarial_train(half, images, labels, TrainingRecipe(**base, attack=L2_PGD, clean_weight=0.5), progress=False)
    assert not torch.equal(half[1].weight, clean[1].weight)


def test_labels_shape_mismatch_is_a_value_error(separable):
    images, labels = separable
    with pytest.raises(ValueError, match=r"`labels` must have shape \(96,\); got \(95,\)"):
        adversarial_train(_linear(), images, labels[:95], TrainingRecipe(epochs=1), progress=False)
    with pytest.raises(ValueError, match="`labels`"):
        adversarial_train(_linear(), images, labels[:, None], TrainingRecipe(epochs=1), progress=False)


def test_eval_every_zero_is_a_value_error(separable):
    images, labels = separable
    with pytest.raises(ValueError, match="eval_every"):
        adversarial_train(_linear(), images, labels, TrainingRecipe(epochs=1, batch_size=96),
                          eval_images=images, eval_labels=labels, eval_every=0, progress=False)


def test_eval_images_without_labels_is_a_value_error(separable):
    images, labels = separable
    with pytest.raises(ValueError, match="eval_labels"):
        adversarial_train(_linear(), images, labels, TrainingRecipe(epochs=1, batch_size=96),
                          eval_images=images, progress=False)


def test_empty_training_set_is_a_value_error():
    with pytest.raises(ValueError, match="images"):
        adversarial_train(_linear(), torch.zeros(0, 1, 4, 4), torch.zeros(0, dtype=torch.long),
                          TrainingRecipe(epochs=1), progress=False)


# --------------------------------------------------------------------------- #
# evaluate / robust_accuracy
# --------------------------------------------------------------------------- #
def _pixel_vote_model(scale: float = 10.0) -> nn.Module:
    """Class k's logit is ``scale`` times pixel k (of 4 pixels; pixel 3 is ignored)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():
        model[1].weight.copy_(scale * torch.eye(3, 4))
        model[1].bias.zero_()
    return model


def _images_with_margins(classes: list[int], margins: list[float]) -> torch.Tensor:
    """1x2x2 images at 0.5 whose pixel ``classes[i]`` is raised by ``margins[i]``."""
    images = torch.full((len(classes), 4), 0.5)
    images[torch.arange(len(classes)), torch.tensor(classes)] += torch.tensor(margins)
    return images.view(-1, 1, 2, 2)


def test_clean_accuracy_exact_for_any_batch_size():
    classes = [0, 1, 2, 0, 1, 2, 0]
    images = _images_with_margins(classes, [0.3] * 7)
    labels = torch.tensor([0, 1, 2, 0, 2, 0, 0])  # images 4 and 5 are predicted wrongly
    for batch_size in (1, 3, 7, 250):
        report = evaluate(_pixel_vote_model(), images, labels, batch_size=batch_size)
        assert report == {"n": 7, "clean_accuracy": pytest.approx(5 / 7), "robust_accuracy": {}}


def test_robust_accuracy_exact_under_linf_attack_of_known_strength():
    # The attack can lower the true pixel by eps and raise the others by eps: margin d survives iff d > 2 eps
    margins = [0.05, 0.15, 0.25, 0.35, 0.12, 0.3]
    classes = [0, 1, 2, 0, 1, 2]
    images, labels = _images_with_margins(classes, margins), torch.tensor(classes)
    attack = Attack("LinfProjectedOptim", epsilon=0.1, steps=3, lr=0.1)
    held = robust_accuracy(_pixel_vote_model(), images, labels, attack)
    assert held.dtype == torch.bool and held.tolist() == [d > 0.2 for d in margins]
    report = evaluate(_pixel_vote_model(), images, labels, attacks={"linf": attack, "huge": attack.with_(epsilon=1.0)})
    assert report["clean_accuracy"] == 1.0
    assert report["robust_accuracy"] == {"linf": pytest.approx(0.5), "huge": 0.0}


def test_tiny_attack_leaves_robust_equal_to_clean():
    images = _images_with_margins([0, 1, 2, 0, 1], [0.4] * 5)
    labels = torch.tensor([0, 1, 2, 1, 1])  # one clean mistake
    attacks = {
        "l2": Attack("L2ProjectedOptim", epsilon=1e-3, steps=3, lr=1e-3),
        "l1": Attack("L1qFrankWolfe", epsilon=1e-3, steps=3, options={"q": 0.5}),
        "linf": Attack("LinfProjectedOptim", epsilon=1e-3, steps=3, lr=1e-3),
    }
    report = evaluate(_pixel_vote_model(), images, labels, attacks=attacks, batch_size=2)
    assert report["clean_accuracy"] == pytest.approx(0.8)
    assert report["robust_accuracy"] == {name: report["clean_accuracy"] for name in attacks}


@given(
    optimizer=st.sampled_from(["L2ProjectedOptim", "LinfProjectedOptim", "L1qFrankWolfe", "L2FrankWolfe"]),
    epsilon=st.floats(0.01, 2.0),
    steps=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_robust_implies_clean_correct(optimizer, epsilon, steps, seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    gen = torch.Generator().manual_seed(seed)
    images, labels = torch.rand(8, 1, 2, 2, generator=gen), torch.randint(0, 3, (8,), generator=gen)
    attack = Attack(optimizer, epsilon=epsilon, steps=steps, lr=epsilon / 2,
                    options={"q": 0.5} if optimizer == "L1qFrankWolfe" else {})
    held = robust_accuracy(model, images, labels, attack)
    with torch.no_grad():
        clean = model(images).argmax(1) == labels
    assert bool((held <= clean).all())
    report = evaluate(model, images, labels, attacks={"a": attack})
    assert report["robust_accuracy"]["a"] == pytest.approx(held.float().mean().item())
    assert report["robust_accuracy"]["a"] <= report["clean_accuracy"]


def test_robust_accuracy_ignores_targeted():
    images = _images_with_margins([0, 1, 2, 0], [0.05, 0.15, 0.25, 0.35])
    labels = torch.tensor([0, 1, 2, 0])
    attack = Attack("LinfProjectedOptim", epsilon=0.1, steps=3, lr=0.1)
    untargeted = robust_accuracy(_pixel_vote_model(), images, labels, attack)
    targeted = robust_accuracy(_pixel_vote_model(), images, labels, attack.with_(targeted=True))
    assert torch.equal(untargeted, targeted)


def test_evaluate_restores_mode_and_requires_grad():
    model = _pixel_vote_model()
    model.train()
    model[1].bias.requires_grad_(False)
    images = _images_with_margins([0, 1], [0.2, 0.2])
    evaluate(model, images, torch.tensor([0, 1]), attacks={"l2": Attack("L2ProjectedOptim", epsilon=0.5, steps=2)})
    assert model.training
    assert model[1].weight.requires_grad and not model[1].bias.requires_grad
    model.eval()
    evaluate(model, images, torch.tensor([0, 1]), attacks={"l2": Attack("L2ProjectedOptim", epsilon=0.5, steps=2)})
    assert not model.training


def test_evaluate_is_reproducible_with_its_seed():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    gen = torch.Generator().manual_seed(1)
    images, labels = torch.rand(40, 1, 4, 4, generator=gen), torch.randint(0, 3, (40,), generator=gen)
    attacks = {"start": Attack("L2ProjectedOptim", epsilon=0.6, steps=1, lr=0.05, random_init="l2")}
    first = evaluate(model, images, labels, attacks=attacks, seed=5, batch_size=16)
    torch.manual_seed(99)
    assert evaluate(model, images, labels, attacks=attacks, seed=5, batch_size=16) == first


def test_evaluate_labels_shape_mismatch():
    images = _images_with_margins([0, 1], [0.2, 0.2])
    with pytest.raises(ValueError, match=r"`labels` must have shape \(2,\); got \(3,\)"):
        evaluate(_pixel_vote_model(), images, torch.tensor([0, 1, 2]))


class Ring(nn.Module):
    """Two classes; the true class 0 wins everywhere except within 0.01 (L-inf) of the clean point."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        distance = (x.flatten(1) - 0.5).abs().amax(1)
        return torch.stack([torch.zeros_like(distance), 0.01 - distance], dim=1)


def test_clean_mistakes_are_not_robust_with_a_random_start():
    images, labels = torch.full((8, 1, 2, 2), 0.5), torch.zeros(8, dtype=torch.long)
    model = nn.Sequential(Ring())
    assert not bool((model(images).argmax(1) == labels).any())  # every image is a clean mistake
    attack = Attack("LinfProjectedOptim", epsilon=0.2, steps=1, lr=1e-4, random_init="linf")
    report = evaluate(model, images, labels, attacks={"start": attack})
    assert report["robust_accuracy"]["start"] <= report["clean_accuracy"] == 0.0


class Bumpy(nn.Module):
    """Three classes on d = mean(x) - 0.5: correct at d = 0 and 0.1 (the highest loss), wrong at 0.2."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x.flatten(1).mean(1) - 0.5
        return torch.stack([torch.zeros_like(d), d - 0.15, -0.05 - 1000 * (d - 0.1) ** 2], dim=1)


def test_found_misclassification_is_not_robust_with_use_best():
    images, labels = torch.full((3, 1, 1, 1), 0.5), torch.zeros(3, dtype=torch.long)
    attack = Attack("LinfProjectedOptim", epsilon=0.2, steps=2, lr=0.1, use_best=True)
    assert robust_accuracy(Bumpy(), images, labels, attack.with_(use_best=False)).tolist() == [False] * 3
    assert robust_accuracy(Bumpy(), images, labels, attack).tolist() == [False] * 3


# --------------------------------------------------------------------------- #
# training/run.py
# --------------------------------------------------------------------------- #
def test_training_attack_from_config_blocks():
    pgd = {"optimizer": "L2ProjectedOptim", "epsilon": 1.5, "steps": 10, "lr": None, "q": None, "random_init": "l2"}
    assert training_attack(pgd) == Attack("L2ProjectedOptim", epsilon=1.5, steps=10, lr=0.375, random_init="l2")
    linf = training_attack({**pgd, "optimizer": "LinfProjectedOptim", "epsilon": 0.3, "steps": 5, "lr": 0.1,
                            "random_init": "linf"})
    assert linf == Attack("LinfProjectedOptim", epsilon=0.3, steps=5, lr=0.1, random_init="linf")
    l1 = training_attack({**pgd, "optimizer": "L1ProjectedOptim", "epsilon": 10, "steps": 4, "q": 0.99,
                          "random_init": "l1"})
    assert l1 == Attack("L1ProjectedOptim", epsilon=10.0, steps=4, lr=6.25, options={"q": 0.99}, random_init="l1")
    assert training_attack(None) is None
    with pytest.raises(ValueError, match="`epsilon`"):
        training_attack({**pgd, "epsilon": 0.0})
    with pytest.raises(ValueError, match="`targeted` must be false"):
        training_attack({**pgd, "targeted": True})
    with pytest.raises(ValueError, match=r"option `q`") as caught:  # L1ProjectedOptim needs its sparsity
        training_attack({**pgd, "optimizer": "L1ProjectedOptim"})
    assert caught.value.setting == "q"


@pytest.mark.parametrize("key, value, replacement", [
    ("norm", "none", "attack=null"),
    ("step_size", 0.1, "attack.lr"),
    ("warmup_epochs", 3.0, "attack_warmup_epochs"),
])
def test_training_attack_names_the_new_spelling_of_an_old_key(key, value, replacement):
    with pytest.raises(ValueError, match=rf"`{key}` is no longer a setting") as caught:
        training_attack({"optimizer": "L2ProjectedOptim", "epsilon": 1.5, key: value})
    assert caught.value.setting == key and replacement in str(caught.value)


def test_eval_attacks_from_the_shipped_config():
    from omegaconf import OmegaConf

    settings = OmegaConf.to_container(OmegaConf.load(CONFIGS / "eval_attacks" / "mnist.yaml"))
    attacks = eval_attacks(settings)
    assert list(attacks) == ["l2_eps1_5", "l2_eps2", "l1_eps10", "l1q_fw_eps10", "l1q_auto_fw_eps10",
                             "l1_apgd_eps10", "l1_ensemble_eps10"]
    assert attacks["l2_eps1_5"] == Attack("L2ProjectedOptim", epsilon=1.5, steps=50, lr=0.1)
    assert attacks["l1q_fw_eps10"] == Attack("L1qFrankWolfe", epsilon=10.0, steps=50, options={"q": 0.99})
    assert attacks["l1_apgd_eps10"] == Attack(
        "L1APGD", epsilon=10.0, steps=100, random_init="l1_sparse", epsilon_schedule=(3.0, 2.0, 1.0),
        options={"q": 0.8, "initial_step": 2.0, "checkpoints": [0.22, 0.03, 0.06]},
    )
    members = ("l1_apgd_eps10", "l1q_auto_fw_eps10", "l1_eps10", "l1q_fw_eps10")
    assert attacks["l1_ensemble_eps10"].attacks == {name: attacks[name] for name in members}
    assert eval_attacks(None) == {} and eval_attacks({}) == {}
    with pytest.raises(ValueError, match=r"eval_attacks\.bad: unknown setting\(s\) \['eps'\]"):
        eval_attacks({"bad": {"optimizer": "L2ProjectedOptim", "eps": 1.0}})


TINY_RUN = [
    "n_train=128", "n_eval=40", "epochs=1", "attack.steps=2", "eval_size=40", "threads=1",
    "eval_attacks.l2_eps1_5.steps=2", "eval_attacks.l2_eps2.steps=2",
    "eval_attacks.l1_eps10.steps=2", "eval_attacks.l1q_fw_eps10.steps=2",
    "eval_attacks.l1q_auto_fw_eps10.steps=2", "eval_attacks.l1_apgd_eps10.steps=3",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """rai_probe/configs/training/train.yaml (small_cnn, mnist5k, L2 PGD) on 128 images for one epoch; the model it saved."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIGS)):
        cfg = OmegaConf.to_container(compose("train", overrides=TINY_RUN), resolve=True)
    out = tmp_path_factory.mktemp("train")
    cfg["_overrides"] = list(TINY_RUN)
    cfg["export"] = str(out / "exported.pt")
    saved = {}
    original = training_run.save_checkpoint

    def capture(model, path, **kwargs):
        saved["model"] = copy.deepcopy(model)
        saved["kwargs"] = kwargs
        return original(model, path, **kwargs)

    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training_run, "save_checkpoint", capture)
        report = train_from_config(cfg, out / "run")
    torch.set_num_threads(threads)
    return cfg, out, report, saved


def test_train_from_config_writes_its_files(tiny_run):
    cfg, out, report, _ = tiny_run
    run = out / "run"
    assert {p.name for p in run.iterdir()} >= {"model.pt", "history.json", "metrics.json"}
    assert (out / "exported.pt").read_bytes() == (run / "model.pt").read_bytes()
    assert json.loads((run / "metrics.json").read_text()) == {"status": "complete", **json.loads(json.dumps(report))}
    assert report["n"] == 40 and report["eval_split"] == "test"
    assert set(report["robust_accuracy"]) == set(cfg["eval_attacks"]) == set(report["attacks"])
    assert report["attacks"]["l1_eps10"] == eval_attacks(cfg["eval_attacks"])["l1_eps10"].to_dict()
    assert all(r <= report["clean_accuracy"] for r in report["robust_accuracy"].values())
    # the ensemble entry names other entries: their overridden steps are the ensemble's
    ensemble = report["attacks"]["l1_ensemble_eps10"]["ensemble"]
    assert list(ensemble) == report["ensembles"]["l1_ensemble_eps10"]["members"] == [
        "l1_apgd_eps10", "l1q_auto_fw_eps10", "l1_eps10", "l1q_fw_eps10"]
    assert [member["steps"] for member in ensemble.values()] == [3, 2, 2, 2]


def test_checkpoint_gives_the_trained_models_logits(tiny_run):
    _, out, _, saved = tiny_run
    loaded = load_checkpoint(out / "run" / "model.pt")
    trained = saved["model"].eval()
    images = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(images), trained(images))
    assert (loaded.info.arch, loaded.info.dataset, loaded.info.num_classes) == ("small_cnn", "mnist5k", 10)
    assert not loaded.training


def test_checkpoint_records_recipe_metrics_and_history(tiny_run):
    cfg, out, report, _ = tiny_run
    info = load_checkpoint(out / "run" / "model.pt").info
    metrics = json.loads((out / "run" / "metrics.json").read_text())
    history = json.loads((out / "run" / "history.json").read_text())
    assert metrics.pop("status") == "complete"  # metrics.json, written last, marks the job complete
    assert json.loads(json.dumps(info.metrics)) == metrics
    training = json.loads(json.dumps(info.training))
    recipe = TrainingRecipe(
        epochs=1, batch_size=cfg["batch_size"], lr=cfg["lr"], optimizer=cfg["optimizer"],
        weight_decay=cfg["weight_decay"], schedule=cfg["schedule"], warmup_epochs=cfg["warmup_epochs"],
        max_shift=cfg["max_shift"], attack=training_attack(cfg["attack"]), clean_weight=cfg["clean_weight"],
        attack_warmup_epochs=cfg["attack_warmup_epochs"], seed=cfg["seed"],
    )
    assert training == {
        **json.loads(json.dumps(recipe.to_dict())),
        "data": "mnist5k", "train_split": "train", "n_train": 128, "command_overrides": TINY_RUN,
    }
    assert training["attack"]["optimizer"] == "L2ProjectedOptim" and training["attack"]["steps"] == 2
    assert len(history) == training["epochs"] == 1
    (record,) = history
    assert record["epoch"] == 1 and set(record) == {"epoch", "loss", "adversarial_accuracy", "lr", "seconds", "eval"}
    assert record["lr"] == pytest.approx(recipe.learning_rate(1, 2, 2))  # 128 images / 64 per batch
    assert record["eval"]["n"] == 40 and set(record["eval"]["robust_accuracy"]) == {"train_attack"}
    assert record["eval"]["clean_accuracy"] == metrics["clean_accuracy"]  # same model, same 40 images
    assert report["train_seconds"] >= 0


def test_evaluate_on_the_checkpoint_reproduces_the_recorded_accuracies(tiny_run):
    cfg, out, _, _ = tiny_run
    from rai_probe.data import load_dataset

    loaded = load_checkpoint(out / "run" / "model.pt")
    metrics = loaded.info.metrics
    held_out = load_dataset("mnist5k", split="test").subset(40)
    attacks = eval_attacks(metrics["attacks"])  # as recorded: attacks, and the ensemble with its members inline
    assert set(attacks) == set(metrics["robust_accuracy"])
    again = evaluate(loaded, held_out.images, held_out.labels, attacks=attacks, seed=cfg["seed"])
    assert again["clean_accuracy"] == metrics["clean_accuracy"]
    assert again["robust_accuracy"] == metrics["robust_accuracy"]
    assert again["ensembles"] == metrics["ensembles"]


def test_train_from_config_standard_training(tmp_path):
    cfg = {
        "model": "small_cnn", "data": "mnist5k", "n_train": 64, "n_eval": 20, "seed": 1, "epochs": 1,
        "batch_size": 64, "optimizer": "sgd", "lr": 0.01, "weight_decay": 0.0, "schedule": "constant",
        "warmup_epochs": 0.0, "max_shift": 0, "clean_weight": 0.0, "attack": None,
        "eval_attacks": None, "eval_size": 20,
    }
    report = train_from_config(cfg, tmp_path / "nested" / "out")
    assert report["robust_accuracy"] == {} and report["attacks"] == {} and report["n"] == 20
    info = load_checkpoint(tmp_path / "nested" / "out" / "model.pt").info
    assert info.training["attack"] is None and info.training["attack_warmup_epochs"] == 0.0
    assert info.training["n_train"] == 64 and info.training["command_overrides"] == []
    (record,) = json.loads((tmp_path / "nested" / "out" / "history.json").read_text())
    assert "train_accuracy" in record and "adversarial_accuracy" not in record


def test_train_from_config_repeats_for_its_seed(tmp_path):
    cfg = {
        "model": "small_cnn", "data": "mnist5k", "n_train": 16, "n_eval": 8, "seed": 3, "epochs": 1,
        "batch_size": 16, "optimizer": "adam", "lr": 0.01, "max_shift": 1, "attack": None,
        "eval_attacks": None, "eval_size": 8, "progress": False,
    }
    weights = []
    for run, seed in enumerate([3, 3, 4]):
        torch.manual_seed(1000 + run)  # the global RNG state before the job does not matter
        train_from_config({**cfg, "seed": seed}, tmp_path / str(run))
        weights.append(load_checkpoint(tmp_path / str(run) / "model.pt").state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # the initial weights too
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])


def test_train_from_config_rejects_a_bad_eval_attack_before_training(tmp_path, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(training_run, "adversarial_train", no_training)
    cfg = {
        "model": "small_cnn", "data": "mnist5k", "n_train": 8, "n_eval": 8, "seed": 0, "epochs": 1,
        "batch_size": 8, "optimizer": "adam", "lr": 0.01, "weight_decay": 0.0, "schedule": "cosine",
        "warmup_epochs": 0.0, "max_shift": 0, "clean_weight": 0.0, "attack": None,
        "eval_attacks": {"typo": {"optimizer": "L2ProjectedOptim", "epsilon": 1.0, "stpes": 3}},
    }
    with pytest.raises(ValueError, match=r"eval_attacks\.typo: unknown setting\(s\) \['stpes'\]"):
        train_from_config(cfg, tmp_path)
    with pytest.raises(ValueError, match=r"unknown `optimizer` 'L5ProjectedOptim'") as caught:
        train_from_config({**cfg, "eval_attacks": None,
                           "attack": {"optimizer": "L5ProjectedOptim", "epsilon": 1.0}}, tmp_path)
    assert caught.value.override == "attack.optimizer"
    with pytest.raises(ValueError, match=r"`\+attack\.norm=l5`") as caught:  # the old spelling names the new one
        train_from_config({**cfg, "eval_attacks": None, "attack": {"norm": "l5"}}, tmp_path,
                          overrides=["+attack.norm=l5"])
    assert "attack.optimizer=L2ProjectedOptim" in str(caught.value)


def _write_tiny_cifar(folder, n=8, seed=0):
    """CIFAR-10 python batches laid out like the real ones (5 train batches, test, meta)."""
    import pickle

    import numpy as np

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    names = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]
    for name in names:
        batch = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"{name}_{i}.png".encode() for i in range(n)],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"label_names": [c.encode() for c in "plane car bird cat deer dog frog horse ship truck".split()]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))


def test_train_from_config_cifar_resnet18_linf_on_cpu(tmp_path):
    """A CIFAR-size model trains adversarially on CPU from on-disk CIFAR batches (tiny subset)."""
    root = tmp_path / "cifar-10-batches-py"
    _write_tiny_cifar(root)
    cfg = {
        "model": "cifar_resnet18", "data": "cifar10", "data_root": str(root), "n_train": 16, "n_eval": 4,
        "seed": 0, "epochs": 1, "batch_size": 8, "optimizer": "sgd", "lr": 0.05, "weight_decay": 5e-4,
        "schedule": "cosine", "warmup_epochs": 0.0, "max_shift": 2, "clean_weight": 0.0,
        "attack": {"optimizer": "LinfProjectedOptim", "epsilon": 8 / 255, "steps": 1, "lr": None, "random_init": "linf"},
        "attack_warmup_epochs": 0.0,
        "eval_attacks": {"linf": {"optimizer": "LinfProjectedOptim", "epsilon": 8 / 255, "steps": 1, "lr": 2 / 255}},
        "eval_size": 4, "eval_every": 1, "threads": 1,
    }
    threads = torch.get_num_threads()
    try:
        report = train_from_config(cfg, tmp_path / "run")
    finally:
        torch.set_num_threads(threads)
    model = load_checkpoint(tmp_path / "run" / "model.pt")
    assert model.info.arch == "cifar_resnet18" and model.info.input_shape == (3, 32, 32)
    assert model.info.dataset == "cifar10" and model.info.class_names[0] == "plane"
    assert model.info.training["attack"]["optimizer"] == "LinfProjectedOptim"
    assert set(report["robust_accuracy"]) == {"linf"} and report["n"] == 4

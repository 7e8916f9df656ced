"""Universal and class-concept perturbations (rai_probe.perturbations.universal, rai_probe.probing.universal).

Properties, not picks: δ is one tensor (one per class) applied to every image, stays in its ε-ball,
a direction that flips every image is found and generalizes to held-out images, per-class δs are
gathered per image, per-image settings are refused by name before the model runs, and the stage's
files agree with what it returns.
"""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rai_probe.data import ImageDataset
from rai_probe.errors import SettingError
from rai_probe.models import ModelInfo, NormalizedModel
from rai_probe.perturbations import (
    Attack,
    apply_universal,
    fit_universal_perturbation,
    uniform_like_linf_n_ball_,
    universal_success,
)
from rai_probe.perturbations.universal import check_universal_attack, universal_outputs
from rai_probe.probing.artifacts import load_perturbations, read_per_image_csv
from rai_probe.probing.job import ProbeInputs, ProbeJob
from rai_probe.probing.settings import ProbeConfigError, plan_from_config
from rai_probe.probing.universal import (
    UNIVERSAL_FILE,
    UNIVERSAL_KEYS,
    check_universal_job,
    run_universal,
    split_sources,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: The decision score of the two-class linear model: 20 * (mean of the first half - mean of the second half).
GAIN = 20.0


def half_contrast_model(pixels: int = 8) -> nn.Module:
    """Two classes on ``(1, 2, pixels // 2)`` images: class 0 iff the first half is brighter than the second."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(pixels, 2))
    half = pixels // 2
    row = torch.cat([torch.full((half,), GAIN / 2 / half), torch.full((half,), -GAIN / 2 / half)])
    with torch.no_grad():
        net[1].weight.copy_(torch.stack([row, -row]))
        net[1].bias.zero_()
    return net


def half_contrast_images(n: int, label: int, seed: int) -> torch.Tensor:
    """Images in [0.3, 0.7] whose score is at least 2 away from the boundary, of class ``label``."""
    gen = torch.Generator().manual_seed(seed)
    bright = 0.55 + 0.15 * torch.rand(n, 1, 1, 4, generator=gen)
    dark = 0.30 + 0.15 * torch.rand(n, 1, 1, 4, generator=gen)
    halves = (bright, dark) if label == 0 else (dark, bright)
    return torch.cat(halves, dim=2)  # (n, 1, 2, 4)


def random_linear(features: int, classes: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(features, classes))


# --------------------------------------------------------------------------- #
# the core
# --------------------------------------------------------------------------- #
def test_the_universal_delta_is_one_tensor_applied_to_every_image():
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(24, 1, 4, 4, generator=gen)  # pixels near 0 and 1: the box clamps some
    labels = torch.randint(0, 3, (24,), generator=gen)
    attack = Attack("LinfProjectedOptim", epsilon=0.3, lr=0.1, random_init="linf")
    fit = fit_universal_perturbation(random_linear(16, 3, 0), images, labels, attack=attack, epochs=2,
                                     batch_size=5, generator=gen)
    assert fit.delta.shape == images.shape[1:] and fit.classes is None and not fit.per_class
    assert fit.steps_run == 2 * 5 and fit.loss_trace.shape == (10,) and fit.success_trace.shape == (10,)

    xadv = apply_universal(images, fit.delta)
    summed = images + fit.delta  # the same δ for every image
    inside = (summed >= 0) & (summed <= 1)
    assert bool((~inside).any()) and bool(inside.any())  # both cases are exercised
    assert torch.equal(xadv[inside], summed[inside])  # exactly δ where the box does not clamp
    assert torch.equal(xadv[summed > 1], torch.ones_like(xadv[summed > 1]))
    assert torch.equal(xadv[summed < 0], torch.zeros_like(xadv[summed < 0]))
    outputs, logits = universal_outputs(random_linear(16, 3, 0), images, fit.delta, batch_size=7)
    assert torch.equal(outputs, xadv) and logits.shape == (24, 3)


def test_a_direction_that_flips_every_image_is_found_and_breaks_held_out_images():
    model = half_contrast_model()
    images = half_contrast_images(80, label=0, seed=1)
    labels = torch.zeros(80, dtype=torch.long)
    assert not bool(universal_success(model, images, labels, torch.zeros(1, 2, 4)).any())  # all correct
    attack = Attack("L2ProjectedOptim", epsilon=1.0, lr=0.25)  # reaching flips all: 0.57 suffices
    fit = fit_universal_perturbation(model, images[:60], labels[:60], attack=attack, epochs=3, batch_size=16,
                                     generator=torch.Generator().manual_seed(0))
    held_out = universal_success(model, images[60:], labels[60:], fit.delta)
    assert held_out.float().mean() >= 0.95
    assert float(fit.delta.norm()) <= 1.0 * (1 + 1e-5)


def test_per_class_gathers_each_images_class_delta():
    model = half_contrast_model()
    images = torch.cat([half_contrast_images(40, 0, seed=2), half_contrast_images(40, 1, seed=3)])
    labels = torch.cat([torch.zeros(40, dtype=torch.long), torch.ones(40, dtype=torch.long)])
    order = torch.randperm(80, generator=torch.Generator().manual_seed(4))
    images, labels = images[order], labels[order]
    fit_part, held = slice(0, 60), slice(60, 80)
    # ε = 0.25 in L∞: no pixel leaves [0.05, 0.95], so the model stays linear in δ
    attack = Attack("LinfProjectedOptim", epsilon=0.25, lr=0.05)
    per_class = fit_universal_perturbation(model, images[fit_part], labels[fit_part], attack=attack, epochs=3,
                                           batch_size=16, per_class=True, num_classes=3,
                                           generator=torch.Generator().manual_seed(0))
    assert per_class.delta.shape == (3, 1, 2, 4) and torch.equal(per_class.classes, labels[fit_part])
    assert torch.equal(per_class.delta[2], torch.zeros(1, 2, 4))  # no image of class 2: its δ never moved
    assert torch.allclose(per_class.delta[:2].abs(), torch.tensor(0.25))  # each class δ spends its own ball
    xadv = apply_universal(images, per_class.delta, classes=labels)
    assert torch.equal(xadv, (images + per_class.delta[labels]).clamp(0, 1))
    held_out = universal_success(model, images[held], labels[held], per_class.delta, classes=labels[held])
    assert held_out.float().mean() >= 0.95  # both classes, pushed in opposite directions

    # one shared δ moves the linear score the same way for every image: it cannot break both classes
    shared = fit_universal_perturbation(model, images[fit_part], labels[fit_part], attack=attack, epochs=3,
                                        batch_size=16, generator=torch.Generator().manual_seed(0))
    broken = universal_success(model, images, labels, shared.delta)
    assert not (bool(broken[labels == 0].any()) and bool(broken[labels == 1].any()))


NORM_ATTACKS = {
    "L2ProjectedOptim": ("l2", {}),
    "LinfProjectedOptim": ("linf", {}),
    "L1ProjectedOptim": ("l1", {"q": 0.3}),  # keeps at least one entry of a 1-pixel image
    "L1qFrankWolfe": ("l1", {"q": 0.3}),
    "L1FrankWolfe": ("l1", {}),
    "L2FrankWolfe": ("l2", {}),
    "LinfFrankWolfe": ("linf", {}),
}


def _norms(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.flatten(1).double()
    return {"l1": flat.abs().sum(1), "l2": flat.norm(dim=1), "linf": flat.abs().amax(1)}[norm]


@settings(max_examples=30)
@given(
    optimizer=st.sampled_from(sorted(NORM_ATTACKS)),
    shape=st.tuples(st.integers(1, 2), st.integers(1, 4), st.integers(1, 4)),
    n=st.integers(1, 10),
    batch_size=st.integers(1, 4),
    epsilon=st.floats(0.05, 4.0),
    per_class=st.booleans(),
    random_start=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_every_delta_stays_in_its_epsilon_ball_and_its_useful_box(optimizer, shape, n, batch_size, epsilon,
                                                                  per_class, random_start, seed):
    norm, options = NORM_ATTACKS[optimizer]
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(n, *shape, generator=gen)
    labels = torch.randint(0, 3, (n,), generator=gen)
    attack = Attack(optimizer, epsilon=epsilon, lr=epsilon / 2, options=options,
                    random_init=norm if random_start else None)
    fit = fit_universal_perturbation(random_linear(images[0].numel(), 3, seed), images, labels, attack=attack,
                                     epochs=2, batch_size=batch_size, per_class=per_class, num_classes=3,
                                     generator=gen)
    rows = fit.delta if per_class else fit.delta.unsqueeze(0)
    assert rows.shape == ((3,) if per_class else (1,)) + shape
    assert bool((_norms(rows, norm) <= epsilon * (1 + 1e-5) + 1e-6).all())  # the ball spans the whole δ
    for k in range(rows.shape[0]):  # beyond [0 - max x, 1 - min x] an entry would clamp all its images
        mine = images[labels == k] if per_class else images
        if len(mine):
            assert bool((rows[k] >= -mine.amax(0) - 1e-6).all() and (rows[k] <= 1 - mine.amin(0) + 1e-6).all())
    xadv = apply_universal(images, fit.delta, classes=labels if per_class else None)
    assert bool(((xadv >= 0) & (xadv <= 1)).all())


def test_use_best_keeps_the_epoch_end_that_breaks_the_most_fit_images():
    gen = torch.Generator().manual_seed(5)
    images = torch.rand(30, 1, 3, 3, generator=gen)
    labels = torch.randint(0, 3, (30,), generator=gen)
    model = random_linear(9, 3, 5)
    attack = Attack("L2ProjectedOptim", epsilon=1.5, lr=1.5)  # steps as long as the ball: the iterates jump

    def fit(epochs, use_best):
        return fit_universal_perturbation(model, images, labels, attack=attack.with_(use_best=use_best),
                                          epochs=epochs, batch_size=7, generator=torch.Generator().manual_seed(0))

    # a run of e epochs is the first e epochs of a longer one (same shuffles): its δ is that epoch end's
    ends = [fit(epochs, False).delta for epochs in (1, 2, 3, 4)]
    best = fit(4, True)
    assert best.epoch_success.shape == (4,) and 1 <= int(best.best_epoch[0]) <= 4
    assert torch.equal(best.delta, ends[int(best.best_epoch[0]) - 1])
    broken = [int(universal_success(model, images, labels, delta, batch_size=7).sum()) for delta in ends]
    assert broken[int(best.best_epoch[0]) - 1] == max(broken)
    assert [round(float(rate) * 30) for rate in best.epoch_success] == broken


def test_a_class_absent_from_the_fit_keeps_its_start_under_frank_wolfe():
    # Frank-Wolfe shrinks a row toward the vertex of a zero gradient: absent classes must be left alone
    images = torch.cat([half_contrast_images(10, 0, seed=8), half_contrast_images(10, 1, seed=9)])
    labels = torch.cat([torch.zeros(10, dtype=torch.long), torch.ones(10, dtype=torch.long)])
    attack = Attack("LinfFrankWolfe", epsilon=0.2, random_init="linf")
    fit = fit_universal_perturbation(half_contrast_model(), images, labels, attack=attack, epochs=2, batch_size=6,
                                     per_class=True, num_classes=3, generator=torch.Generator().manual_seed(0))
    start = torch.zeros(3, 1, 2, 4)
    uniform_like_linf_n_ball_(start, epsilon=0.2, generator=torch.Generator().manual_seed(0))  # the fit's first draw
    assert torch.equal(fit.delta[2], start[2]) and not torch.equal(fit.delta[:2], start[:2])


def test_the_model_is_frozen_in_eval_mode_during_the_fit_and_restored():
    model = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(4), nn.Linear(4, 2)).train()
    before = model[1].running_mean.clone()
    images = torch.rand(12, 1, 2, 2, generator=torch.Generator().manual_seed(6))
    fit_universal_perturbation(model, images, torch.zeros(12, dtype=torch.long), epochs=2, batch_size=5,
                               attack=Attack("L2ProjectedOptim", epsilon=0.5))
    assert torch.equal(model[1].running_mean, before)  # eval mode: no statistics updated
    assert model.training and all(p.requires_grad and p.grad is None for p in model.parameters())


def test_delta_takes_the_images_dtype():
    images = torch.rand(6, 1, 2, 2, dtype=torch.float64)
    model = random_linear(4, 2, 0).double()
    fit = fit_universal_perturbation(model, images, torch.zeros(6, dtype=torch.long), epochs=1, batch_size=3,
                                     attack=Attack("L2ProjectedOptim", epsilon=0.5))
    assert fit.delta.dtype == torch.float64 and fit.loss_trace.dtype == torch.float64


class NeverCalled(nn.Module):
    def forward(self, x):  # pragma: no cover - reaching it fails the test
        raise AssertionError("the model ran before the settings were checked")


@pytest.mark.parametrize(
    "attack, setting",
    [
        (Attack("L2ProjectedOptim", epsilon=1.0, early_stop=True), "early_stop"),
        (Attack("L2ProjectedOptim", epsilon=1.0, restarts=2), "restarts"),
        (Attack("L2ProjectedOptim", epsilon=1.0, steps=10, epsilon_schedule=[2, 1]), "epsilon_schedule"),
        (Attack("L2APGD", epsilon=1.0), "optimizer"),
        (Attack("L1qAutoFrankWolfe", epsilon=5.0, options={"q": 0.9}), "optimizer"),
        (Attack("L2ProjectedOptim", epsilon=1.0, options={"param_ndim": None}), "param_ndim"),
    ],
)
def test_per_image_settings_are_refused_by_name_before_the_model_runs(attack, setting):
    with pytest.raises(SettingError) as caught:
        fit_universal_perturbation(NeverCalled(), torch.rand(4, 1, 2, 2), torch.zeros(4, dtype=torch.long),
                                   attack=attack)
    assert caught.value.setting == setting and "universal" in str(caught.value)


@pytest.mark.parametrize(
    "changes, setting",
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"per_class": True, "classes": torch.tensor([0, 1, 5, 0]), "num_classes": 3}, "classes"),
        ({"classes": torch.tensor([0, 1, 1, 0])}, "classes"),  # classes without per_class
        ({"images": torch.full((4, 1, 2, 2), 2.0)}, "images"),  # outside data_range
        ({"target": torch.tensor([0, 1, 2, 9])}, "target"),
    ],
)
def test_bad_arguments_are_refused_by_name(changes, setting):
    arguments = {"images": torch.rand(4, 1, 2, 2), "target": torch.zeros(4, dtype=torch.long)}
    arguments.update(changes)
    model = NeverCalled() if setting != "target" else random_linear(4, 3, 0)
    with pytest.raises(SettingError) as caught:
        fit_universal_perturbation(model, arguments.pop("images"), arguments.pop("target"),
                                   attack=Attack("L2ProjectedOptim", epsilon=1.0), **arguments)
    assert caught.value.setting == setting


def test_check_universal_attack_accepts_the_fixed_schedule_optimizers():
    for optimizer, (_, options) in NORM_ATTACKS.items():
        check_universal_attack(Attack(optimizer, epsilon=1.0, options=options, use_best=True))


# --------------------------------------------------------------------------- #
# the probe-job stage
# --------------------------------------------------------------------------- #
CLASS_NAMES = ("zero", "one", "two")


def _stage(tmp_path, *, mode, attack, n=24, **job_changes):
    gen = torch.Generator().manual_seed(7)
    images = torch.rand(n, 1, 3, 3, generator=gen)
    labels = torch.randint(0, 3, (n,), generator=gen)
    data = ImageDataset(images, labels, CLASS_NAMES, "toy", "test",
                        files=tuple(f"img{k}.png" for k in range(n)))
    info = ModelInfo("tiny", 3, (1, 3, 3), (0.0,), (1.0,), class_names=CLASS_NAMES)
    model = NormalizedModel(random_linear(9, 3, 7), info).eval()
    targeted = bool(mode.get("targeted", False))
    cfg = {"attack": {"name": "toy", "optimizer": attack.optimizer, "epsilon": attack.epsilon},
           "model": {"name": "tiny"}, "data": {"name": "toy"}}
    fields = dict(cfg=cfg, overrides=[], n_images=n, batch_size=8, seed=3, device=torch.device("cpu"), mode=mode,
                  targeted=targeted, attack=attack.with_(targeted=targeted), progress=False, max_grids=1,
                  images_per_grid=4)
    fields.update(job_changes)
    job = ProbeJob(**fields)
    inputs = ProbeInputs(model=model, data=data, class_names=list(CLASS_NAMES), reachable=None)
    with torch.no_grad():
        clean_logits = model(images)
    plan = plan_from_config(mode, data, model, clean_logits.argmax(dim=1))
    return job, inputs, clean_logits, plan


def test_the_stage_writes_outputs_that_agree_with_what_it_returns(tmp_path):
    mode = {"name": "universal", "targeted": False, "target": None, "per_class": False, "epochs": 2,
            "holdout": 0.25}
    job, inputs, clean_logits, plan = _stage(tmp_path, mode=mode, attack=Attack("L2ProjectedOptim", epsilon=1.5,
                                                                                 lr=0.5, use_best=True))
    outcome = run_universal(job, inputs, tmp_path, clean_logits, plan)
    for name in (UNIVERSAL_FILE, "perturbations.pt", "per_image.csv", *outcome.figures):
        assert (tmp_path / name).is_file(), name
    assert sorted(outcome.figures) == ["figures/heldout.png", "figures/loss_trace.png", "figures/universal.png"]

    saved = torch.load(tmp_path / UNIVERSAL_FILE, weights_only=True)
    assert set(UNIVERSAL_KEYS) <= set(saved)
    assert saved["delta"].shape == (1, 3, 3) and torch.equal(saved["delta"], outcome.delta)
    assert saved["per_class"] is False and saved["epsilon"] == 1.5 and saved["norm"] == "l2"
    fit_rows, held_rows = saved["fit_rows"], saved["heldout_rows"]
    assert torch.equal(torch.sort(torch.cat([fit_rows, held_rows])).values, torch.arange(24))
    assert held_rows.numel() == 6 and torch.equal(outcome.heldout.nonzero().flatten(), held_rows)

    rows = load_perturbations(tmp_path)
    assert torch.equal(rows["xadv"], outcome.xadv)
    assert torch.equal(rows["xadv"], apply_universal(plan.images, saved["delta"]))  # δ applied to every row
    assert torch.equal(rows["heldout"], outcome.heldout)
    assert torch.equal(rows["success"], outcome.per_image["success"])
    csv = read_per_image_csv(tmp_path)
    assert torch.equal(csv["success"], outcome.per_image["success"])
    assert torch.equal(csv["adv_pred"], outcome.logits.argmax(dim=1))

    entry = outcome.summary_extra["universal"]
    json.dumps(outcome.summary_extra, allow_nan=False)  # ready for metrics.json
    success, correct = outcome.per_image["success"], outcome.per_image["clean_correct"]
    assert not bool((success & ~correct).any())  # clean mistakes never count
    held = outcome.heldout & correct
    assert entry["heldout_success_rate"] == pytest.approx(int((success & held).sum()) / int(held.sum()))
    assert entry["n_fit"] == 18 and entry["steps"] == 2 * 3 and entry["per_class"] is False
    assert entry["delta_norms"]["l2"] == pytest.approx(float(saved["delta"].double().norm()))
    assert entry["delta_norms"]["l2"] <= 1.5 * (1 + 1e-5)


def test_the_stage_fits_one_delta_per_target_class_and_holds_out_whole_source_images(tmp_path):
    mode = {"name": "universal", "targeted": True, "target": "all", "per_class": True, "epochs": 1,
            "holdout": 0.3}
    job, inputs, clean_logits, plan = _stage(tmp_path, mode=mode, n=10, max_grids=0,
                                             attack=Attack("L1qFrankWolfe", epsilon=2.0, options={"q": 0.5}))
    outcome = run_universal(job, inputs, tmp_path, clean_logits, plan)
    saved = torch.load(tmp_path / UNIVERSAL_FILE, weights_only=True)
    assert outcome.delta.shape == (3, 1, 3, 3) and torch.equal(saved["delta_classes"], torch.arange(3))
    assert torch.equal(saved["row_delta"], plan.targets)  # each row used its target class's δ
    assert torch.equal(outcome.xadv, apply_universal(plan.images, outcome.delta, classes=plan.targets))
    held_sources = set(plan.sources[outcome.heldout].tolist())
    assert len(held_sources) == 3 and not held_sources & set(plan.sources[~outcome.heldout].tolist())
    assert "figures/heldout.png" not in outcome.figures  # figures.max_grids=0
    classes = outcome.summary_extra["universal"]["classes"]
    assert [c["class"] for c in classes] == [0, 1, 2] and all(c["n_heldout"] == 3 for c in classes)


def _refusal(tmp_path, mode_changes=None, **job_changes):
    mode = {"name": "universal", "targeted": False, "target": None, **(mode_changes or {})}
    attack = job_changes.pop("attack", Attack("L2ProjectedOptim", epsilon=1.0))
    job, *_ = _stage(tmp_path, mode=mode, attack=attack, **job_changes)
    with pytest.raises(ProbeConfigError) as caught:
        check_universal_job(job)
    return caught.value


@pytest.mark.parametrize(
    "mode_changes, job_changes, override",
    [
        (None, {"attack": Attack("L2ProjectedOptim", epsilon=1.0, early_stop=True)}, "attack.early_stop"),
        (None, {"attack": Attack("L2ProjectedOptim", epsilon=1.0, restarts=3)}, "attack.restarts"),
        (None, {"attack": Attack("L1qAutoFrankWolfe", epsilon=5.0, options={"q": 0.9})}, "attack.optimizer"),
        (None, {"attack": Attack("L2ProjectedOptim", epsilon=1.0, options={"param_ndim": 1})},
         "attack.options.param_ndim"),
        ({"targeted": True, "target": "all"}, {}, "mode.per_class"),
        ({"holdout": 1.0}, {}, "mode.holdout"),
        ({"epochs": 0}, {}, "mode.epochs"),
        ({"per_class": "yes"}, {}, "mode.per_class"),
        (None, {"num_shards": 2}, "data.num_shards"),
        (None, {"resume": True}, "resume"),
    ],
)
def test_the_stage_refuses_what_it_cannot_do_naming_the_override(tmp_path, mode_changes, job_changes, override):
    error = _refusal(tmp_path, mode_changes, **job_changes)
    assert error.override == override and f"`{override}=...`" in str(error)


def test_split_holds_out_a_share_of_the_sources_and_keeps_one_to_fit():
    for count, holdout in ((2, 0.9), (10, 0.25), (7, 0.01)):
        held = split_sources(torch.arange(count), holdout, seed=0)
        assert 1 <= int(held.sum()) <= count - 1
    assert torch.equal(split_sources(torch.arange(20), 0.5, seed=4), split_sources(torch.arange(20), 0.5, seed=4))

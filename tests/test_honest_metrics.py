"""Honest metrics: clean mistakes are no successes, robust accuracy and flip rate, budget used,
unlabeled images, and the warning for a budget no iterate can spend."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from probe_config import base_config
from rai_probe.perturbations.attacks import Attack
from rai_probe.probing.artifacts import (
    load_perturbations,
    per_image_from_perturbations,
    read_metrics,
    read_per_image_csv,
    save_perturbations,
    write_per_image_csv,
)
from rai_probe.probing.metrics import PER_IMAGE_KEYS, honest_success, per_image_metrics, summarize
from rai_probe.probing.run import run_probe


def _one_hot_logits(classes, k=3, scale=4.0):
    return torch.eye(k)[torch.tensor(classes)] * scale


# --------------------------------------------------------------------------- #
# exact vectors
# --------------------------------------------------------------------------- #
def test_explain_mode_flags_clean_mistakes_and_counts_unlabeled_images():
    # 0: correct, flipped; 1: correct, held; 2: clean mistake the attack "moved"; 3: unlabeled, prediction changed
    images = torch.zeros(4, 1, 1, 2)
    xadv = images + torch.tensor([0.5, 0.0]).view(1, 1, 1, 2)
    out = per_image_metrics(
        images, xadv, clean_logits=_one_hot_logits([0, 1, 2, 1]), adv_logits=_one_hot_logits([1, 1, 0, 2]),
        labels=torch.tensor([0, 1, 1, -1]), success=torch.tensor([True, False, True, True]),
        first_success_step=torch.tensor([2, -1, 0, 5]), epsilon=1.0, norm="linf")
    assert out["clean_correct"].tolist() == [True, True, False, False]
    assert out["success"].tolist() == [True, False, False, True]
    assert out["steps_to_success"].tolist() == [2, -1, -1, 5]
    assert out["budget_used"].tolist() == [0.5] * 4
    s = summarize(out)
    assert (s["n_images"], s["n_labeled"], s["n_clean_correct"], s["n_eligible"], s["n_successful"]) == (4, 3, 2, 3, 2)
    assert s["clean_accuracy"] == pytest.approx(2 / 3)
    assert s["robust_accuracy"] == pytest.approx(1 / 3)  # only image 1 is correct and held
    assert s["flip_rate"] == 0.5  # of the two correct images
    assert s["attack_success_rate"] == pytest.approx(2 / 3)  # the unlabeled image counts here only
    json.dumps(s, allow_nan=False)


def test_probe_mode_success_is_reaching_the_target_whatever_the_label():
    images = torch.zeros(3, 1, 1, 2)
    out = per_image_metrics(
        images, images + 0.1, clean_logits=_one_hot_logits([2, 0, 0]), adv_logits=_one_hot_logits([1, 2, 0]),
        labels=torch.tensor([0, 0, -1]), targets=torch.tensor([1, 2, 0]),
        success=torch.tensor([True, True, True]), first_success_step=torch.tensor([3, 4, 0]))
    assert out["clean_correct"].tolist() == [False, True, False]
    assert out["success"].tolist() == [True, True, True]  # a misclassified source reaching its target succeeds
    s = summarize(out)
    assert s["attack_success_rate"] == 1.0 and s["n_eligible"] == 3
    assert s["robust_accuracy"] is None and s["flip_rate"] is None  # no untargeted row
    assert s["clean_accuracy"] == 0.5


def test_budget_used_in_each_norm():
    delta = torch.zeros(2, 1, 2, 2)
    delta[0, 0, 0, 0], delta[0, 0, 1, 1] = 0.6, -0.8  # L1 1.4, L2 1.0, Linf 0.8
    images = torch.full((2, 1, 2, 2), 0.5)
    common = dict(clean_logits=_one_hot_logits([0, 0]), adv_logits=_one_hot_logits([0, 0]),
                  success=torch.tensor([False, False]), first_success_step=torch.tensor([-1, -1]))
    expected = {"l1": (2.0, [0.7, 0.0]), "l2": (0.5, [2.0, 0.0]), "linf": (1.6, [0.5, 0.0])}
    for norm, (epsilon, used) in expected.items():
        out = per_image_metrics(images, images + delta, epsilon=epsilon, norm=norm, **common)
        assert out["budget_used"].tolist() == pytest.approx(used), norm
        assert out["budget_used"].dtype == torch.float64
    for bad in ({"epsilon": 1.0}, {"norm": "l1"}, {"epsilon": 1.0, "norm": "l3"}, {"epsilon": 0.0, "norm": "l1"},
                {"epsilon": math.inf, "norm": "l2"}, {"epsilon": True, "norm": "l2"}):
        with pytest.raises(ValueError, match="epsilon|norm"):
            per_image_metrics(images, images + delta, **bad, **common)


def test_honest_success_is_idempotent_and_keeps_targets():
    clean_correct, success = honest_success(
        torch.tensor([True, True, False, True]), clean_pred=torch.tensor([0, 1, 0, 1]),
        labels=torch.tensor([0, 0, 0, 0]), targets=torch.tensor([-1, -1, -1, 1]))
    assert clean_correct.tolist() == [True, False, True, False]
    assert success.tolist() == [True, False, False, True]
    again = honest_success(success, clean_pred=torch.tensor([0, 1, 0, 1]), labels=torch.tensor([0, 0, 0, 0]),
                           targets=torch.tensor([-1, -1, -1, 1]))[1]
    assert torch.equal(again, success)


# --------------------------------------------------------------------------- #
# properties
# --------------------------------------------------------------------------- #
@st.composite
def attacked_batches(draw):
    n, k = draw(st.integers(1, 12)), draw(st.integers(2, 5))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    targeted = draw(st.booleans())
    labels = torch.randint(-1 if draw(st.booleans()) else 0, k, (n,), generator=gen)
    targets = torch.randint(0, k, (n,), generator=gen) if targeted else torch.full((n,), -1)
    images = torch.rand(n, 1, 3, 3, generator=gen)
    delta = torch.randn(n, 1, 3, 3, generator=gen) * (torch.rand(n, 1, 3, 3, generator=gen) < 0.4)
    norm = draw(st.sampled_from(["l1", "l2", "linf"]))
    return dict(
        images=images, xadv=images + delta,
        clean_logits=torch.randn(n, k, generator=gen), adv_logits=torch.randn(n, k, generator=gen),
        labels=labels, targets=targets, success=torch.rand(n, generator=gen) < 0.6,
        first_success_step=torch.randint(0, 9, (n,), generator=gen),
        epsilon=draw(st.floats(0.1, 5.0)), norm=norm,
    )


@given(attacked_batches())
def test_rates_add_up(batch):
    out = per_image_metrics(batch.pop("images"), batch.pop("xadv"), **batch)
    s = summarize(out)
    labeled = out["label"] >= 0
    untargeted = out["target"] < 0
    correct = out["clean_correct"]
    assert bool((correct <= labeled).all())
    assert bool((out["success"] <= batch["success"]).all())
    # a success needs a chance: a targeted row, a clean-correct image, or an unlabeled one
    assert bool((out["success"] <= (~untargeted | correct | ~labeled)).all())
    assert bool((out["success"][untargeted & labeled] <= correct[untargeted & labeled]).all())
    n_lab = int((labeled & untargeted).sum())
    if n_lab:
        robust, flipped = s["robust_accuracy"] * n_lab, int((out["success"] & correct & untargeted).sum())
        wrong = int((labeled & untargeted & ~correct).sum())
        assert robust + flipped + wrong == pytest.approx(n_lab)  # every labeled image is one of the three
    if bool(labeled.all()) and bool(untargeted.all()) and s["flip_rate"] is not None:
        assert s["attack_success_rate"] == s["flip_rate"]
        assert s["robust_accuracy"] == pytest.approx(s["clean_accuracy"] * (1 - s["flip_rate"]))
    norms = {"l1": out["l1"], "l2": out["l2"], "linf": out["linf"]}
    assert torch.allclose(out["budget_used"], norms[batch["norm"]] / batch["epsilon"])
    json.dumps(s, allow_nan=False)


@given(attacked_batches())
def test_per_image_metrics_are_a_fixed_point_of_their_own_success(batch):
    images, xadv = batch.pop("images"), batch.pop("xadv")
    out = per_image_metrics(images, xadv, **batch)
    again = per_image_metrics(images, xadv, **{**batch, "success": out["success"]})
    for key in PER_IMAGE_KEYS:
        assert torch.equal(again[key].nan_to_num(-7.0), out[key].nan_to_num(-7.0)), key


# --------------------------------------------------------------------------- #
# files
# --------------------------------------------------------------------------- #
def test_saved_budget_recomputes_the_summary_exactly(tmp_path):
    images = torch.zeros(3, 1, 2, 2)
    xadv = images.clone()
    xadv[0, 0, 0, 0], xadv[1, 0, 1, :] = 0.75, 0.5
    kwargs = dict(clean_logits=_one_hot_logits([0, 1, 0]), adv_logits=_one_hot_logits([2, 1, 1]),
                  labels=torch.tensor([0, 1, 2]), success=torch.tensor([True, False, True]),
                  first_success_step=torch.tensor([1, -1, 0]))
    per_image = per_image_metrics(images, xadv, epsilon=1.5, norm="l1", **kwargs)
    save_perturbations(tmp_path, images=images, xadv=xadv, targets=None, loss_trace=None, class_names=None,
                       epsilon=1.5, norm="l1", **{**kwargs, "success": per_image["success"]})
    saved = load_perturbations(tmp_path)
    assert (saved["epsilon"], saved["budget_norm"]) == (1.5, "l1")
    recomputed = per_image_from_perturbations(saved)
    assert summarize(recomputed) == summarize(per_image)
    assert recomputed["budget_used"].tolist() == [0.5, pytest.approx(2 / 3), 0.0]
    assert recomputed["success"].tolist() == [True, False, False]  # image 2 was a clean mistake

    lines = write_per_image_csv(tmp_path, per_image, None).read_text().splitlines()
    header = lines[0].split(",")
    assert header[-1] == "budget_used" and header.index("clean_correct") == header.index("success") - 1
    assert [line.split(",")[header.index("clean_correct")] for line in lines[1:]] == ["true", "true", "false"]
    back = read_per_image_csv(tmp_path)
    assert back["clean_correct"].dtype == torch.bool and torch.equal(back["budget_used"], per_image["budget_used"])

    # a file without a budget (older runs): budget_used NaN, an empty cell, None in the summary
    del saved["epsilon"], saved["budget_norm"]
    unknown = per_image_from_perturbations(saved)
    assert unknown["budget_used"].isnan().all() and summarize(unknown)["budget_used"]["mean"] is None
    lines = write_per_image_csv(tmp_path, unknown, None).read_text().splitlines()
    assert all(line.endswith(",") for line in lines[1:])


# --------------------------------------------------------------------------- #
# the probe job
# --------------------------------------------------------------------------- #
def _digits_folder(root, layout):
    """``layout``: folder name -> digit classes whose first test image goes in it (None: a flat folder)."""
    from PIL import Image

    from rai_probe.data import load_mnist5k

    test = load_mnist5k("test")
    for folder, digits in layout.items():
        where = root / folder if folder else root
        where.mkdir(parents=True, exist_ok=True)
        for i, digit in enumerate(digits):
            image = test.images[test.labels == digit][0, 0]
            Image.fromarray((image * 255).round().byte().numpy(), mode="L").save(where / f"{digit}_{i}.png")
    return root


def _folder_config(root, **changes):
    return base_config(data={"name": "folder", "root": str(root), "size": None, "mode": "auto"}, **changes)


def test_probe_job_flags_a_mislabeled_image_and_recomputes_exactly(tmp_path):
    root = _digits_folder(tmp_path / "images", {"7": [3, 7]})  # a 3 filed as a 7: a clean mistake
    job = tmp_path / "job"
    run_probe(_folder_config(root, attack__steps=3, figures={"max_grids": 0, "images_per_grid": 2}), job)
    saved, metrics, per_image = load_perturbations(job), read_metrics(job), read_per_image_csv(job)
    assert saved["labels"].tolist() == [7, 7]
    wrong = per_image["clean_pred"] != per_image["label"]
    assert per_image["clean_correct"].tolist() == (~wrong).tolist() and bool(wrong.any())
    assert not bool((per_image["success"] & wrong).any())  # whatever the attack did to it
    assert torch.equal(saved["success"], per_image["success"]) and "goal_met" in saved
    summary = metrics["summary"]
    assert summarize(per_image_from_perturbations(saved)) == summary
    assert summary["clean_accuracy"] == 1 - wrong.double().mean().item()
    assert summary["n_eligible"] == summary["n_clean_correct"] == int((~wrong).sum())
    assert summary["robust_accuracy"] <= summary["clean_accuracy"]
    # an L1 attack: budget_used is L1 / epsilon, within the ball
    assert (saved["epsilon"], saved["budget_norm"]) == (20.0, "l1")
    assert torch.allclose(per_image["budget_used"], per_image["l1"] / 20.0)
    assert bool((per_image["budget_used"] <= 1 + 1e-5).all()) and summary["budget_used"]["mean"] > 0
    assert (metrics["budget"]["norm"], metrics["budget"]["epsilon"]) == ("l1", 20.0)


def test_unlabeled_images_count_in_the_success_rate_only(tmp_path):
    root = _digits_folder(tmp_path / "flat", {"": [1, 4]})
    job = tmp_path / "job"
    run_probe(_folder_config(root, attack__steps=3, figures={"max_grids": 0, "images_per_grid": 2}), job)
    summary, per_image = read_metrics(job)["summary"], read_per_image_csv(job)
    assert per_image["label"].tolist() == [-1, -1] and not bool(per_image["clean_correct"].any())
    changed = per_image["adv_pred"] != per_image["clean_pred"]
    assert per_image["success"].tolist() == changed.tolist()  # away from the model's own prediction
    assert summary["clean_accuracy"] is None and summary["robust_accuracy"] is None and summary["flip_rate"] is None
    assert summary["n_eligible"] == 2 and summary["attack_success_rate"] == changed.double().mean().item()


@pytest.mark.parametrize("reachable, warned", [(8.0, True), (20.0, False), (None, False), (math.inf, False)])
def test_an_unspendable_budget_is_one_warning_before_attacking(tmp_path, monkeypatch, caplog, reachable, warned):
    asked = []

    def reachable_norm(self, data_shape, data_range):
        asked.append((tuple(data_shape), tuple(data_range)))
        return reachable

    monkeypatch.setattr(Attack, "reachable_norm", reachable_norm, raising=False)
    original_run = Attack.run
    seen_before_attack = []

    def run(self, *args, **kwargs):
        seen_before_attack.append(sum("cannot be spent" in r.getMessage() for r in caplog.records))
        return original_run(self, *args, **kwargs)

    monkeypatch.setattr(Attack, "run", run)
    with caplog.at_level(logging.INFO, logger="rai_probe.probing.run"):
        run_probe(base_config(attack__steps=1, figures={"max_grids": 0, "images_per_grid": 2}), tmp_path / "job")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "cannot be spent" in r.getMessage()]
    assert asked == [((1, 1, 28, 28), (0.0, 1.0))]
    assert len(warnings) == int(warned)
    assert seen_before_attack[0] == int(warned)  # said before the first image is attacked
    if warned:
        line = warnings[0].getMessage()
        assert "\n" not in line and "attack.epsilon=20" in line and "L1qFrankWolfe (q=0.99)" in line
        assert "an L1 norm of 8" in line and "budget_used stays <= 0.400" in line
    budget = read_metrics(tmp_path / "job")["budget"]
    assert budget == {"norm": "l1", "epsilon": 20.0,
                      "reachable_norm": reachable if reachable not in (None, math.inf) else None}


def test_no_budget_query_no_warning(tmp_path, monkeypatch, caplog):
    if hasattr(Attack, "reachable_norm"):
        monkeypatch.delattr(Attack, "reachable_norm")
    with caplog.at_level(logging.WARNING, logger="rai_probe.probing.run"):
        run_probe(base_config(attack__steps=1, figures={"max_grids": 0, "images_per_grid": 2}), tmp_path / "job")
    assert not any("cannot be spent" in r.getMessage() for r in caplog.records)
    assert read_metrics(tmp_path / "job")["budget"]["reachable_norm"] is None

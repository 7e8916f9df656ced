"""The probing modes of the paper and dataset-level concepts: what each writes, and the inputs each refuses.

* ``mode.select`` picks images by the model's clean prediction (scanning the
  split until ``n_images`` match); ``mode.target=label`` / ``prediction``
  give each image its own target.
* ``mode=contrast``: source-class images toward a target class; its tensors
  agree with the saved perturbations.
* ``mode=probe`` with several seeds per class: per-class mean and spread.
* ``mode=universal``: one δ applied to every image, with a held-out success.
* Bad input (no image selected, source = target, a goal the image already
  meets, a per-image option in universal mode) is one error naming the
  override, before any attack runs.
"""

from __future__ import annotations

import json

import pytest
import torch

from rai_probe.data import ImageDataset
from rai_probe.jobs.errors import ConfigError
from rai_probe.probing import artifacts
from rai_probe.probing.concepts import class_concepts, contrast_maps
from rai_probe.probing.run import run_probe
from rai_probe.probing.selection import select_sources

from probe_config import base_config

NO_QUALITY = {"faithfulness": False, "minimality": False}


def _mode(name="probe", **values):
    return {"name": name, "targeted": True, "target": "all", "select": "all", **values}


def _toy(labels):
    labels = torch.tensor(labels)
    return ImageDataset(images=torch.rand(len(labels), 1, 2, 2), labels=labels, class_names=("a", "b"), name="toy")


def test_select_scans_until_enough_images_match():
    data = _toy([0, 1, 0, 1, 1, 0, 1])
    always_b = lambda x: torch.stack([torch.zeros(len(x)), torch.ones(len(x))], 1)  # noqa: E731
    picked, logits = select_sources(data, always_b, select="correct", n_images=3, batch_size=2)
    assert picked.labels.tolist() == [1, 1, 1] and logits.shape == (3, 2)
    assert torch.equal(picked.images, data.images[[1, 3, 4]])
    picked, _ = select_sources(data, always_b, select="misclassified", source=0, n_images=10, batch_size=3)
    assert picked.labels.tolist() == [0, 0, 0]  # fewer than asked: all that match
    with pytest.raises(ConfigError) as caught:
        select_sources(_toy([1, 1]), always_b, select="misclassified", n_images=2, batch_size=2)
    assert "mode.select" in caught.value.override and "no misclassified image" in str(caught.value)


def test_misclassified_images_toward_their_label(tmp_path):
    config = base_config(n_images=2, mode=_mode(target="label", select="misclassified"), metrics=NO_QUALITY,
                         attack__steps=10)
    run_probe(config, tmp_path)
    per_image = artifacts.read_per_image_csv(tmp_path)
    assert not per_image["clean_correct"].any()  # every attacked image was a clean mistake
    assert torch.equal(per_image["target"], per_image["label"])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["summary"]["n_targeted"] == 2


def test_correct_images_toward_their_prediction_need_a_confidence_goal(tmp_path):
    config = base_config(n_images=2, mode=_mode(target="prediction", select="correct"), metrics=NO_QUALITY)
    with pytest.raises(ConfigError) as caught:
        run_probe(config, tmp_path)
    assert "attack.confidence" in caught.value.override
    config["attack"] = dict(config["attack"], confidence=0.9999, steps=5)
    run_probe(config, tmp_path / "ok")
    per_image = artifacts.read_per_image_csv(tmp_path / "ok")
    assert per_image["clean_correct"].all() and torch.equal(per_image["target"], per_image["clean_pred"])
    # a success means the prediction's probability reached the goal
    assert bool((per_image["target_conf_after"][per_image["success"]] >= 0.9999).all())


def test_contrast_tensors_agree_with_the_saved_perturbations(tmp_path):
    config = base_config(n_images=3, mode={"name": "contrast", "targeted": True, "source": 3, "target": 8,
                                           "select": "all"}, metrics=NO_QUALITY, attack__steps=20)
    run_probe(config, tmp_path)
    saved = artifacts.load_perturbations(tmp_path)
    assert saved["labels"].tolist() == [3, 3, 3] and saved["targets"].tolist() == [8, 8, 8]
    contrast = torch.load(tmp_path / "contrast.pt", weights_only=True)
    success = saved["success"]
    expected = contrast_maps(saved["images"], saved["xadv"], success=success)
    assert torch.allclose(contrast["mean_delta"], expected["mean_delta"].float())
    assert contrast["n"] == int(success.sum()) and contrast["source"] == "3" and contrast["target"] == "8"
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["contrast"]["n_moved"] == int(success.sum())
    assert (tmp_path / "figures" / "contrast.png").stat().st_size > 0


@pytest.mark.parametrize("mode, override", [
    ({"name": "contrast", "targeted": True, "source": 3, "target": 3, "select": "all"}, "mode.target"),
    ({"name": "contrast", "targeted": True, "source": 12, "target": 3, "select": "all"}, "mode.source"),
    ({"name": "contrast", "targeted": True, "source": "???", "target": 3, "select": "all"}, "mode.source"),
])
def test_bad_contrasts_are_refused(tmp_path, mode, override):
    with pytest.raises(ConfigError) as caught:
        run_probe(base_config(mode=mode, metrics=NO_QUALITY), tmp_path)
    assert override in caught.value.override


def test_class_concepts_summarize_many_seeds(tmp_path):
    config = base_config(n_images=3, data={"name": "noise"}, mode=_mode(target="all"), metrics=NO_QUALITY,
                         attack={"name": "l2", "optimizer": "L2ProjectedOptim", "epsilon": 2.0, "steps": 3,
                                 "lr": 0.5, "data_range": [0.0, 1.0]})
    run_probe(config, tmp_path)
    concepts = torch.load(tmp_path / "concepts.pt", weights_only=True)
    saved = artifacts.load_perturbations(tmp_path)
    assert concepts["count"].tolist() == [3] * 10
    for k in (0, 7):
        rows = saved["targets"] == k
        assert torch.allclose(concepts["mean_xadv"][k], saved["xadv"][rows].mean(dim=0), atol=1e-6)
        assert torch.allclose(concepts["std_xadv"][k], saved["xadv"][rows].std(dim=0, unbiased=False), atol=1e-5)
    assert (tmp_path / "figures" / "class_concepts.png").stat().st_size > 0


def test_class_concepts_and_contrast_maps_exact_vectors():
    images = torch.zeros(4, 1, 1, 2)
    xadv = torch.tensor([[[[1.0, 0.0]]], [[[3.0, 0.0]]], [[[0.0, 2.0]]], [[[5.0, 5.0]]]])
    out = class_concepts(images, xadv, torch.tensor([0, 0, 1, -1]), classes=3)
    assert out["count"].tolist() == [2, 1, 0]
    assert out["mean_delta"][0].flatten().tolist() == [2.0, 0.0]
    assert out["std_delta"][0].flatten().tolist() == [1.0, 0.0]
    assert out["mean_xadv"][2].abs().sum() == 0  # a class without rows: zeros
    maps = contrast_maps(images, xadv, success=torch.tensor([False, False, False, False]))
    assert maps["n"] == 0 and maps["mean_delta"].abs().sum() == 0 and maps["mean_delta_all"].sum() > 0


def test_universal_mode_applies_one_delta_to_every_image(tmp_path):
    config = base_config(n_images=8, mode={"name": "universal", "targeted": False, "target": None,
                                           "select": "all", "per_class": False, "epochs": 2, "holdout": 0.25},
                         metrics=NO_QUALITY,
                         attack={"name": "l2", "optimizer": "L2ProjectedOptim", "epsilon": 2.0, "steps": 3,
                                 "lr": 0.5, "data_range": [0.0, 1.0]})
    run_probe(config, tmp_path)
    universal = torch.load(tmp_path / "universal.pt", weights_only=True)
    saved = artifacts.load_perturbations(tmp_path)
    delta = universal["delta"]
    assert delta.shape == saved["images"].shape[1:]
    assert float(delta.flatten().norm()) <= 2.0 * (1 + 1e-5)
    expected = (saved["images"] + delta).clamp(0.0, 1.0)
    assert torch.allclose(saved["xadv"], expected, atol=1e-6)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "complete" and "heldout_success_rate" in metrics["universal"]


def test_universal_mode_refuses_a_per_image_option_before_loading(tmp_path, monkeypatch):
    import rai_probe.probing.job as job_module

    monkeypatch.setattr(job_module, "model_from_config", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    config = base_config(n_images=8, mode={"name": "universal", "targeted": False, "target": None,
                                           "select": "all", "per_class": False, "epochs": 2, "holdout": 0.25},
                         attack__early_stop=True)
    with pytest.raises(ConfigError) as caught:
        run_probe(config, tmp_path)
    assert "attack.early_stop" in caught.value.override

"""mode=minimal: each image's minimal radius ε* by a batched bisection, and its outputs.

* The batched search equals a brute-force bisection run image by image (a
  Python loop over images and rounds, written here from the definition).
* On a linear model whose exact minimal L1 radius is known in closed form,
  the success at ε* holds, ε* is within the tolerance above the exact
  radius, and the attack fails at ε*·(1 - 2·tol) (hypothesis over images,
  weights and tolerances).
* The job writes the ε* columns, perturbations at ε*, the robustness curve
  (which agrees with the CSV) and its figures; bad brackets are refused
  before anything loads.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from rai_probe.errors import SettingError
from rai_probe.jobs.errors import ConfigError
from rai_probe.perturbations import Attack
from rai_probe.perturbations.minimal import max_rounds, minimal_radius, perturbation_norm
from rai_probe.probing import artifacts
from rai_probe.probing.minimal import robustness_curve
from rai_probe.probing.run import run_probe

from probe_config import base_config


def _one_pixel_model(weight: float, bias: float) -> torch.nn.Module:
    """Two classes; the logit gap of class 1 over class 0 is ``weight * x[0] + bias`` (other pixels ignored)."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)).double()
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].weight[1, 0] = weight
        model[1].bias.copy_(torch.tensor([0.0, bias], dtype=torch.float64))
    return model


def _brute_force(attack: Attack, model, images, target, *, low, high, tolerance, steps):
    """The bisection, one image at a time: attack at high, then at sqrt(lo * hi) until hi <= lo * (1 + tol)."""
    found = []
    for k in range(images.shape[0]):
        x, y = images[k : k + 1], target[k : k + 1]
        lo, hi, star = low, high, math.nan
        radius = high
        for _ in range(max_rounds(low, high, tolerance)):
            result = attack.with_(epsilon=radius, steps=steps, early_stop=True, use_best=True).run(model, x, y)
            if bool(result.success[0]):
                size = float(perturbation_norm(result.xadv - x, attack.norm)[0])
                hi = star = min(radius, size)
            elif math.isnan(star):
                break  # no success at the top of the bracket
            else:
                lo = radius
            if not hi > lo * (1 + tolerance):
                break
            radius = math.sqrt(lo * hi)
        found.append(star)
    return torch.tensor(found, dtype=torch.float64)


def test_batched_search_equals_a_per_image_bisection():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).double()
    images = torch.rand(6, 1, 4, 4, dtype=torch.float64)
    target = model(images).argmax(dim=1)
    attack = Attack("L2ProjectedOptim", epsilon=1.0, steps=8, lr=0.2, data_range=(0.0, 1.0))
    batched = minimal_radius(attack, model, images, target, epsilon_min=0.05, epsilon_max=4.0, tolerance=0.05,
                             warm_start=False)
    reference = _brute_force(attack, model, images, target, low=0.05, high=4.0, tolerance=0.05, steps=8)
    assert torch.equal(batched.epsilon.isnan(), reference.isnan())
    assert torch.allclose(batched.epsilon.nan_to_num(-1), reference.nan_to_num(-1), rtol=1e-9, atol=0)
    assert int(batched.success.sum()) >= 1  # the comparison covers images that succeed
    assert bool((batched.rounds <= max_rounds(0.05, 4.0, 0.05)).all())


def test_one_image_at_a_time_equals_the_batch_with_warm_starts():
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).double()
    images = torch.rand(5, 1, 4, 4, dtype=torch.float64)
    target = model(images).argmax(dim=1)
    attack = Attack("L1FrankWolfe", epsilon=1.0, steps=6, data_range=(0.0, 1.0))
    kwargs = dict(epsilon_min=0.05, epsilon_max=8.0, tolerance=0.1, warm_start=True)
    batched = minimal_radius(attack, model, images, target, **kwargs)
    alone = torch.cat([minimal_radius(attack, model, images[k : k + 1], target[k : k + 1], **kwargs).epsilon
                       for k in range(5)])
    assert torch.allclose(batched.epsilon.nan_to_num(-1), alone.nan_to_num(-1), rtol=1e-9, atol=0)


@settings(max_examples=25, deadline=None)
@given(
    x0=st.lists(st.floats(0.0, 0.45), min_size=1, max_size=4),
    weight=st.floats(1.0, 8.0),
    tolerance=st.sampled_from([0.02, 0.05, 0.1]),
)
def test_l1_minimal_radius_matches_the_closed_form(x0, weight, tolerance):
    # class 1 wins once weight * x[0] + bias > 0, with the boundary at x[0] = 0.5: the exact minimal
    # L1 change of an image at x0 < 0.5 is 0.5 - x0 (only pixel 0 matters, and the box allows it)
    model = _one_pixel_model(weight, -0.5 * weight)
    n = len(x0)
    images = torch.zeros(n, 1, 2, 2, dtype=torch.float64)
    images[:, 0, 0, 0] = torch.tensor(x0, dtype=torch.float64)
    images[:, 0, 1, 1] = 0.3
    target = torch.zeros(n, dtype=torch.long)
    exact = 0.5 - torch.tensor(x0, dtype=torch.float64)
    attack = Attack("L1FrankWolfe", epsilon=1.0, steps=30, data_range=(0.0, 1.0))
    found = minimal_radius(attack, model, images, target, epsilon_min=0.01, epsilon_max=1.0, tolerance=tolerance)
    assert bool(found.success.all())
    # the success at eps* holds: adversarial, within eps*, in the box
    assert bool((model(found.xadv).argmax(dim=1) == 1).all())
    assert bool((perturbation_norm(found.xadv - images, "l1") <= found.epsilon * (1 + 1e-9)).all())
    assert bool(((found.xadv >= 0) & (found.xadv <= 1)).all())
    # never below the exact radius, at most the tolerance above it (the search is exact up to tol)
    assert bool((found.epsilon >= exact - 1e-9).all())
    assert bool((found.epsilon <= exact * (1 + tolerance) + 1e-6).all()), (found.epsilon, exact)
    # and the attack fails at eps* * (1 - 2 tol)
    below = attack.with_(steps=30).run(model, images, target, epsilon=found.epsilon * (1 - 2 * tolerance))
    assert not bool(below.success.any())


def test_no_success_within_epsilon_max_is_nan_and_costs_one_round():
    model = _one_pixel_model(4.0, -2.0)
    images = torch.zeros(2, 1, 2, 2, dtype=torch.float64)
    attack = Attack("L1FrankWolfe", epsilon=1.0, steps=10, data_range=(0.0, 1.0))
    found = minimal_radius(attack, model, images, torch.zeros(2, dtype=torch.long), epsilon_min=0.01,
                           epsilon_max=0.2, tolerance=0.05)  # the boundary is 0.5 away
    assert found.epsilon.isnan().all() and not found.success.any()
    assert found.epsilon_failed.tolist() == [0.2, 0.2]
    assert found.rounds.tolist() == [1, 1]


@pytest.mark.parametrize("kwargs, setting", [
    ({"epsilon_min": 0.0, "epsilon_max": 1.0}, "epsilon_min"),
    ({"epsilon_min": 2.0, "epsilon_max": 1.0}, "epsilon_max"),
    ({"epsilon_min": 0.1, "epsilon_max": 1.0, "tolerance": 1.0}, "tolerance"),
    ({"epsilon_min": 0.1, "epsilon_max": float("nan")}, "epsilon_max"),
    ({"epsilon_min": 0.1, "epsilon_max": 1.0, "steps": 0}, "steps"),
])
def test_bad_brackets_are_refused_naming_the_argument(kwargs, setting):
    model = _one_pixel_model(4.0, -2.0)
    with pytest.raises(SettingError) as caught:
        minimal_radius(Attack("L1FrankWolfe", epsilon=1.0), model, torch.zeros(1, 1, 2, 2, dtype=torch.float64),
                       torch.zeros(1, dtype=torch.long), **kwargs)
    assert caught.value.setting == setting


def test_robustness_curve_counts_each_image_once():
    per_image = {"epsilon_min": torch.tensor([0.5, 1.0, 2.0, math.nan], dtype=torch.float64),
                 "clean_correct": torch.tensor([True, True, True, True]),
                 "label": torch.tensor([0, 1, 0, 1]), "target": torch.full((4,), -1)}
    curve = robustness_curve(per_image, epsilons=[0.25, 1.0, 4.0])
    assert curve["success_rate"] == [0.0, 0.5, 0.75]
    assert curve["robust_accuracy"] == [1.0, 0.5, 0.25]


def _minimal_config(n_images=3, batch_size=64, **changes):
    mode = {"name": "minimal", "targeted": False, "target": None, "select": "all", "epsilon_min": 2.0,
            "epsilon_max": 40.0, "tolerance": 0.1, "steps": 6, "warm_start": True}
    config = base_config(n_images=n_images, batch_size=batch_size, mode=mode,
                         metrics={"faithfulness": False, "minimality": False},
                         attack={"name": "l1q", "optimizer": "L1qFrankWolfe", "epsilon": 20.0, "q": 0.99,
                                 "steps": 12, "data_range": [0.0, 1.0], "use_best": True})
    for key, value in changes.items():
        section, _, field = key.partition("__")
        config[section] = dict(config[section], **{field: value})
    return config


def test_minimal_job_writes_eps_star_the_curve_and_figures(tmp_path):
    outcome = run_probe(_minimal_config(), tmp_path)
    per_image = artifacts.read_per_image_csv(tmp_path)
    saved = artifacts.load_perturbations(tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    star = per_image["epsilon_min"]
    success = per_image["success"]
    assert bool(success.any())
    # the saved perturbation is the success at eps*: within it, and eps* empty exactly where no success
    norms = perturbation_norm(saved["xadv"] - saved["images"], "l1")
    assert torch.equal(star.isnan(), ~success)
    assert bool((norms[success] <= star[success] * (1 + 1e-5)).all())
    assert bool((star[success] >= 2.0 * (1 - 1e-9)).all() | (per_image["epsilon_failed"][success] == 2.0).all())
    # one curve from the eps* of every image, agreeing with the CSV
    curve = metrics["robustness_curve"]
    assert curve["norm"] == "l1" and curve["bracket"] == [2.0, 40.0]
    for eps, rate in zip(curve["epsilon"], curve["success_rate"]):
        expected = float(((star <= eps) & success).sum()) / float(per_image["clean_correct"].sum())
        assert rate == pytest.approx(expected)
    assert curve["image_steps"] == int(per_image["search_steps"].sum()) > 0
    assert metrics["summary"]["epsilon_min"]["n"] == int(success.sum())
    assert metrics["budget"]["epsilon"] is None  # no fixed budget: budget_used stays empty
    for name in ("figures/robustness_curve.png", "figures/minimal_gallery.png"):
        assert (tmp_path / name).stat().st_size > 0 and name in metrics["figures"]
    assert outcome["summary"]["epsilon_min"] == metrics["summary"]["epsilon_min"]


@pytest.mark.parametrize("mode_change, override", [
    ({"epsilon_min": 5.0, "epsilon_max": 1.0}, "mode.epsilon_max"),
    ({"tolerance": 1.0}, "mode.tolerance"),
])
def test_a_bad_bracket_is_one_error_before_anything_loads(tmp_path, monkeypatch, mode_change, override):
    import rai_probe.probing.job as job_module

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the settings were checked")

    monkeypatch.setattr(job_module, "model_from_config", no_model)
    config = _minimal_config(**{f"mode__{key}": value for key, value in mode_change.items()})
    with pytest.raises(ConfigError) as caught:
        run_probe(config, tmp_path)
    assert override in caught.value.override


def test_the_sweep_report_shows_eps_star_distributions(tmp_path):
    import yaml

    from rai_probe.probing.report import collect_jobs, write_report

    root = tmp_path / "sweep"
    for k, q in enumerate((0.9, 0.99)):
        job_dir = root / str(k)
        config = _minimal_config(attack__q=q)
        (job_dir / ".hydra").mkdir(parents=True)
        (job_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
        (job_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["mode=minimal", f"attack.q={q}"]))
        run_probe(config, job_dir)
    jobs = collect_jobs(root)
    written = write_report(root, jobs=jobs)
    assert "epsilon_star" in written and written["epsilon_star"].stat().st_size > 0
    assert "success_vs_epsilon" not in written  # minimal jobs have no fixed epsilon to plot against
    table = written["csv"].read_text().splitlines()
    column = table[0].split(",").index("median_epsilon_star")
    medians = [row.split(",")[column] for row in table[1:]]
    for job, median in zip(jobs, medians):
        assert float(median) == pytest.approx(job.summary["epsilon_min"]["median"])


def test_shards_of_a_minimal_job_merge_into_the_whole_curve(tmp_path):
    import yaml

    from rai_probe.probing.merge import merge_shards

    whole = run_probe(_minimal_config(n_images=4, batch_size=2), tmp_path / "whole")
    root = tmp_path / "sweep"
    for shard in (0, 1):
        config = _minimal_config(n_images=4, batch_size=2, data__shard=shard, data__num_shards=2)
        job_dir = root / str(shard)
        (job_dir / ".hydra").mkdir(parents=True)
        (job_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
        (job_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"data.shard={shard}"]))
        run_probe(config, job_dir)
    merged = json.loads((merge_shards(root) / "metrics.json").read_text())
    single = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    assert merged["robustness_curve"]["success_rate"] == single["robustness_curve"]["success_rate"]
    assert merged["summary"]["epsilon_min"] == whole["summary"]["epsilon_min"]

"""The model-specificity sanity check (issue 12): its metrics, the randomized copy, the shipped twin, the job.

Metric tests use exact hand-built vectors. The end-to-end run checks
properties that hold on every CPU (which pixels an attack picks may differ
between machines): every model's probe output is complete, the counts agree
with the saved tensors, the numbers are in range, the figure is a PNG.
"""

from __future__ import annotations

import json

import pytest
import torch

from probe_config import base_config
from rai_probe.data import DATASETS, load_mnist5k
from rai_probe.jobs.errors import ConfigError
from rai_probe.models import (
    NormalizedModel,
    build_model,
    cascading_randomization,
    learnable_layers,
    load_pretrained,
    pretrained_path,
    randomized_copy,
    read_checkpoint_info,
)
from rai_probe.probing.artifacts import job_status, load_perturbations, read_metrics
from rai_probe.probing.sanity import (
    MODEL_ROLES,
    SANITY_FIGURE,
    SANITY_FILE,
    UNLABELED_DATA,
    check_sanity_settings,
    main,
    probe_settings,
    run_sanity,
)
from rai_probe.probing.sanity_metrics import (
    clustered_fraction,
    concentration,
    mask_fraction,
    rank_correlation,
    stroke_mask,
    support_iou,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def maps(*rows):
    """Perturbations ``(N, 1, 1, P)`` from rows of pixel values."""
    return torch.tensor(rows, dtype=torch.float64).view(len(rows), 1, 1, -1)


# --------------------------------------------------------------------------- #
# metrics: exact vectors
# --------------------------------------------------------------------------- #
def test_identical_perturbations_agree_completely():
    delta = torch.randn(3, 1, 5, 5, generator=torch.Generator().manual_seed(0))
    delta[delta.abs() < 0.8] = 0.0  # sparse, with ties at zero
    assert support_iou(delta, delta).tolist() == [1.0, 1.0, 1.0]
    assert torch.allclose(rank_correlation(delta, delta), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(rank_correlation(delta, -delta), torch.ones(3, dtype=torch.float64))  # |δ| is compared


def test_disjoint_supports_have_iou_zero_and_no_rank_agreement():
    pixels = 784
    a, b = torch.zeros(1, 1, 28, 28), torch.zeros(1, 1, 28, 28)
    a[0, 0, 3, 4], b[0, 0, 20, 9] = 0.7, -0.4
    assert support_iou(a, b).tolist() == [0.0]
    # average ranks: two one-pixel maps correlate at -1 / (P - 1); ordinal ranks (ties by position) would give ~1
    assert rank_correlation(a, b).item() == pytest.approx(-1 / (pixels - 1), abs=1e-12)


def test_iou_counts_pixels_across_channels():
    a, b = torch.zeros(1, 3, 1, 3), torch.zeros(1, 3, 1, 3)
    a[0, 0, 0, 0], a[0, 2, 0, 1] = 0.1, 0.1  # pixels 0 and 1
    b[0, 1, 0, 1], b[0, 1, 0, 2] = 0.3, 0.3  # pixels 1 and 2
    assert support_iou(a, b).tolist() == [pytest.approx(1 / 3)]
    assert support_iou(a, b, atol=0.2).tolist() == [0.0]  # a's changes are below atol: nothing in common


def test_rank_correlation_of_known_cases():
    got = rank_correlation(maps([1, 2, 3, 4, 5], [5, 6, 7, 8, 7], [0, 0, 1, 2, 0], [3, 1, 2, 5, 4]),
                           maps([1, 3, 2, 4, 5], [1, 2, 3, 4, 5], [0, 0, 2, 1, 0], [1, 2, 3, 4, 5]))
    # no ties: Spearman's 1 - 6 Σd² / (n (n² - 1)) with n = 5; Σd² = 2 -> 0.9, Σd² = 8 -> 0.6
    assert got[0].item() == pytest.approx(0.9)
    assert got[3].item() == pytest.approx(0.6)
    # ties at their average rank: [5, 6, 7, 8, 7] ranks as [1, 2, 3.5, 5, 3.5]
    tied = torch.corrcoef(torch.tensor([[1, 2, 3.5, 5, 3.5], [1, 2, 3, 4, 5]], dtype=torch.float64))[0, 1]
    assert got[1].item() == pytest.approx(tied.item())
    # three zeros rank 2, 2, 2: ranks [2, 2, 4, 5, 2] vs [2, 2, 5, 4, 2] correlate at 7 / 8
    assert got[2].item() == pytest.approx(7 / 8)


def test_rank_correlation_is_nan_for_a_constant_map():
    assert rank_correlation(maps([0, 0, 0]), maps([1, 0, 2])).isnan().all()


def test_stroke_mask_dilation_and_concentration():
    images = torch.zeros(2, 1, 5, 5)
    images[0, 0, 2, 2] = 0.9            # one bright pixel
    images[1, 0, 2, 2] = 0.4            # below the threshold: no stroke
    mask = stroke_mask(images, threshold=0.5, dilation=1)
    assert mask[0].sum() == 9 and mask[0, 1:4, 1:4].all() and not mask[1].any()
    assert mask_fraction(mask).tolist() == [9 / 25, 0.0]
    assert stroke_mask(images, dilation=0)[0].sum() == 1
    assert stroke_mask(images, dilation=2)[0].all()
    delta = torch.zeros(2, 1, 5, 5)
    delta[:, 0, 2, 3] = 0.25            # inside the dilated stroke of image 0
    delta[:, 0, 0, 0] = -0.75           # outside
    assert concentration(delta, mask).tolist() == [0.25, 0.0]
    assert concentration(torch.zeros(1, 1, 5, 5), mask[:1]).isnan().all()


def test_clustered_fraction_tells_strokes_from_scattered_pixels():
    delta = torch.zeros(3, 1, 6, 6)
    delta[0, 0, 2, 1:5] = 1.0                                  # a stroke: every pixel touches another
    delta[1, 0, ::3, ::3] = -1.0                               # a lattice: no pixel touches another
    delta[2, 0, 0, 0], delta[2, 0, 1, 1], delta[2, 0, 5, 5] = 0.5, 0.5, 0.5  # a diagonal pair and one alone
    assert clustered_fraction(delta).tolist() == [1.0, 0.0, pytest.approx(2 / 3)]
    assert clustered_fraction(torch.zeros(1, 1, 3, 3)).isnan().all()


def test_stroke_mask_of_rgb_uses_luminance():
    image = torch.zeros(1, 3, 1, 2)
    image[0, 1, 0, 0] = 1.0             # pure green: luminance 0.587
    image[0, 2, 0, 1] = 1.0             # pure blue: 0.114
    assert stroke_mask(image, dilation=0).tolist() == [[[True, False]]]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: support_iou(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 3)), "same shape"),
        (lambda: rank_correlation(torch.zeros(4), torch.zeros(4)), "delta_a"),
        (lambda: support_iou(torch.zeros(1, 1, 2, 2, dtype=torch.int64), torch.zeros(1, 1, 2, 2)), "floating"),
        (lambda: support_iou(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), atol=-1), "atol"),
        (lambda: stroke_mask(torch.zeros(1, 1, 2, 2), dilation=-1), "dilation"),
        (lambda: stroke_mask(torch.zeros(1, 2, 2, 2)), "channels"),
        (lambda: concentration(torch.zeros(1, 1, 2, 2), torch.ones(1, 2, 3, dtype=torch.bool)), "mask"),
    ],
)
def test_metric_inputs_are_checked(call, message):
    with pytest.raises((TypeError, ValueError), match=message):
        call()


# --------------------------------------------------------------------------- #
# the randomized copy
# --------------------------------------------------------------------------- #
def test_randomized_copy_changes_every_learnable_tensor_and_keeps_the_rest():
    model = load_pretrained()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    state = torch.random.get_rng_state()
    random = randomized_copy(model, seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random state is untouched
    assert all(torch.equal(value, model.state_dict()[key]) for key, value in before.items())  # original unchanged
    assert isinstance(random, NormalizedModel) and not random.training
    trained = dict(model.named_parameters())
    for name, parameter in random.named_parameters():
        assert parameter.shape == trained[name].shape, name
        assert not torch.equal(parameter, trained[name]), name
    assert sorted(trained) == sorted(dict(random.named_parameters()))
    assert torch.equal(random.normalizer.mean, model.normalizer.mean)
    assert torch.equal(random.normalizer.std, model.normalizer.std)
    info, kept = random.info, model.info
    for field in ("arch", "num_classes", "input_shape", "mean", "std", "class_names", "dataset"):
        assert getattr(info, field) == getattr(kept, field), field
    assert info.metrics == {}  # the trained weights' accuracies no longer hold
    assert info.training["randomization"]["seed"] == 5
    assert info.training["randomization"]["layers"] == learnable_layers(model)
    assert "randomized" in info.source
    x = load_mnist5k("test").images[:8]
    with torch.no_grad():
        assert not torch.allclose(random(x), model(x))


def test_randomization_repeats_for_a_seed_and_the_cascade_ends_in_it():
    model = build_model("small_cnn").eval()
    a, b, c = randomized_copy(model, seed=1), randomized_copy(model, seed=1), randomized_copy(model, seed=2)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not any(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))
    cascade = cascading_randomization(model, seed=1)
    layers = learnable_layers(model)
    assert [name for name, _ in cascade] == layers[::-1]
    for k, (_, copy) in enumerate(cascade):  # the top k + 1 layers random, the others trained
        modules, trained = dict(copy.model.named_modules()), dict(model.model.named_modules())
        for depth, name in enumerate(layers[::-1]):
            same = torch.equal(modules[name].weight, trained[name].weight)
            assert same == (depth > k), (k, name)
    assert all(torch.equal(p, q) for p, q in zip(cascade[-1][1].parameters(), a.parameters()))


def test_randomized_copy_refuses_bad_input():
    with pytest.raises(TypeError, match="`model`"):
        randomized_copy(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="`seed`"):
        randomized_copy(build_model("small_cnn"), seed=1.5)


# --------------------------------------------------------------------------- #
# the shipped twin
# --------------------------------------------------------------------------- #
def test_shipped_twin_loads_weights_only_and_classifies_digits():
    path = pretrained_path("small_cnn_mnist5k_standard")
    raw = torch.load(path, weights_only=True, map_location="cpu")
    robust_raw = torch.load(pretrained_path("small_cnn_mnist5k_l2"), weights_only=True, map_location="cpu")
    assert set(raw) == set(robust_raw)  # the same record as the robust model's
    assert raw["training"]["attack"] is None and robust_raw["training"]["attack"] is not None
    twin = load_pretrained("small_cnn_mnist5k_standard")
    assert twin.info.source == "builtin:small_cnn_mnist5k_standard" and twin.info.arch == "small_cnn"
    data = load_mnist5k("test")
    with torch.no_grad():
        accuracy = (twin(data.images[:64]).argmax(dim=1) == data.labels[:64]).float().mean().item()
    assert accuracy > 0.9
    assert twin.info.metrics["clean_accuracy"] > 0.9
    # the twin is less robust than the shipped model, as recorded at training (docs/model_card.md)
    robust = load_pretrained()
    for key in ("l2_eps1_5", "l1_ensemble_eps10"):
        assert twin.info.metrics["robust_accuracy"][key] < robust.info.metrics["robust_accuracy"][key]


# --------------------------------------------------------------------------- #
# settings
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "sanity, override",
    [
        ({"models": ["robust", "randm"]}, "sanity.models"),
        ({"models": ["robust"]}, "sanity.models"),
        ({"models": ["robust", "robust"]}, "sanity.models"),
        ({"explain": "labels"}, "sanity.explain"),
        ({"stroke_threshold": 2.0}, "sanity.stroke_threshold"),
        ({"figure_rows": 0}, "sanity.figure_rows"),
        ({"modles": ["robust", "random"]}, "sanity.modles"),
    ],
)
def test_bad_sanity_settings_name_the_override(sanity, override):
    with pytest.raises(ConfigError) as caught:
        check_sanity_settings(dict(base_config(), sanity=sanity))
    assert caught.value.override == override


def test_report_reads_minimal_radii_when_the_probe_searched_them():
    from rai_probe.probing.sanity import sanity_report

    images = torch.zeros(3, 1, 4, 4)
    images[:, 0, 1:3, 1:3] = 1.0

    def run(eps_star):
        xadv = images.clone()
        xadv[:, 0, 0, 0] = 1.0
        return {"images": images, "xadv": xadv, "labels": torch.tensor([0, 1, 0]),
                "targets": torch.full((3,), -1), "clean_logits": torch.eye(2)[[0, 1, 0]] * 3,
                "adv_logits": torch.eye(2)[[1, 0, 1]] * 3, "success": torch.tensor([True, True, True]),
                "first_success_step": torch.ones(3, dtype=torch.int64),
                "minimal": {"epsilon_min": torch.tensor(eps_star, dtype=torch.float64)}}

    report = sanity_report({"robust": run([2.0, float("nan"), 4.0]), "random": run([1.0, 1.0, 1.0])})
    assert report["models"]["robust"]["epsilon_star"] == {"n": 2, "mean": 3.0, "median": 3.0}
    assert report["models"]["random"]["epsilon_star"]["median"] == 1.0
    assert report["pairs"]["robust_vs_random"]["support_iou"]["mean"] == 1.0  # the same single pixel
    assert report["models"]["robust"]["concentration"]["median"] == 1.0  # (0, 0) touches the stroke at (1, 1)
    plain = {key: value for key, value in run([1.0, 1.0, 1.0]).items() if key != "minimal"}
    assert "epsilon_star" not in sanity_report({"a": plain, "b": plain})["models"]["a"]


@pytest.mark.parametrize(
    "mode, override",
    [
        ({"name": "probe", "targeted": True, "target": "prediction"}, "mode.target"),
        ({"name": "explain", "targeted": False, "target": None, "select": "correct"}, "mode.select"),
    ],
)
def test_a_mode_giving_each_model_other_rows_is_refused(mode, override):
    with pytest.raises(ConfigError, match="could not be compared|different images") as caught:
        check_sanity_settings(dict(base_config(), mode=mode))
    assert caught.value.override == override


def test_a_targeted_probe_keeps_its_labels():
    targeted = dict(base_config(), mode={"name": "probe", "targeted": True, "target": "all"}, sanity={})
    assert probe_settings(targeted, "random", "r.pt")["data"] == {"name": "mnist5k", "split": "test"}


def test_the_shipped_config_composes_and_passes_the_checks():
    from dataclasses import fields

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from rai_probe.probing.cli import CONFIG_DIR
    from rai_probe.probing.sanity import SanityOptions

    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = OmegaConf.to_container(compose("sanity", overrides=["+attack=l1q"]), resolve=True)
    assert check_sanity_settings(cfg) == SanityOptions()  # the yaml's values are the defaults
    assert set(cfg["sanity"]) == {f.name for f in fields(SanityOptions)}  # every option can be overridden
    assert cfg["model"]["pretrained"] == "small_cnn_mnist5k_l2"
    assert cfg["twin"]["pretrained"] == "small_cnn_mnist5k_standard"


def test_probe_settings_strip_the_sanity_keys_and_withhold_labels():
    cfg = dict(base_config(), twin={"name": "twin", "pretrained": "small_cnn_mnist5k_standard"}, sanity={})
    for role in MODEL_ROLES:
        probe = probe_settings(cfg, role, random_checkpoint="r/model.pt")
        assert "twin" not in probe and "sanity" not in probe
        assert probe["data"] == {"name": UNLABELED_DATA, "source": "mnist5k", "split": "test"}
    assert probe_settings(cfg, "standard")["model"]["pretrained"] == "small_cnn_mnist5k_standard"
    labeled = dict(cfg, sanity={"explain": "label"})
    assert probe_settings(labeled, "robust")["data"] == {"name": "mnist5k", "split": "test"}


@pytest.fixture
def restored_logging():
    """Hydra configures the root logger in-process; put it back, so later tests do not log to a closed stream."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_cli_refuses_an_unknown_model_before_any_work(tmp_path, capsys, restored_logging):
    status = main(["+attack=l1q", "sanity.models=[robust,randm]", f"hydra.run.dir={tmp_path}"])
    assert status == 2
    assert "sanity.models" in capsys.readouterr().err
    assert job_status(tmp_path) == "failed"
    assert not any(path.name in MODEL_ROLES for path in tmp_path.iterdir())  # no probe ran


# --------------------------------------------------------------------------- #
# end to end
# --------------------------------------------------------------------------- #
def test_sanity_run_end_to_end(tmp_path):
    cfg = base_config(n_images=4, attack__steps=5)
    cfg = dict(cfg, twin={"name": "small_cnn_mnist5k_standard", "pretrained": "small_cnn_mnist5k_standard"},
               metrics={"faithfulness": False, "minimality": False},
               sanity={"models": list(MODEL_ROLES), "figure_rows": 3})
    report = run_sanity(cfg, tmp_path, overrides=["n_images=4"])
    assert UNLABELED_DATA not in DATASETS  # registered for the probes only
    assert json.loads((tmp_path / SANITY_FILE).read_text()) == report
    assert (tmp_path / SANITY_FIGURE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert job_status(tmp_path) == "complete"
    assert read_metrics(tmp_path)["report"] == SANITY_FILE
    assert (tmp_path / "random" / "model.pt").is_file()

    saved = {}
    for role in MODEL_ROLES:  # each model's own complete probe output, on the same images
        assert job_status(tmp_path / role) == "complete"
        saved[role] = load_perturbations(tmp_path / role)
        assert torch.equal(saved[role]["images"], saved["robust"]["images"])
        assert (saved[role]["labels"] == -1).all()  # explain=prediction: each model's own decision
    assert read_metrics(tmp_path / "standard")["model"]["source"] == "builtin:small_cnn_mnist5k_standard"
    assert read_metrics(tmp_path / "random")["model"]["name"] == "small_cnn_mnist5k_l2_randomized"
    assert read_checkpoint_info(tmp_path / "random" / "model.pt").training["randomization"]["seed"] == 0

    assert report["explained"] == "prediction"
    assert report["per_image"]["label"] == load_mnist5k("test").labels[:4].tolist()
    assert list(report["models"]) == list(MODEL_ROLES)
    for role, stats in report["models"].items():
        success = saved[role]["success"]
        assert stats["n_images"] == 4 and stats["n_successful"] == int(success.sum())
        assert stats["success_rate"] == int(success.sum()) / 4
        assert stats["concentration"]["n"] == int(success.sum())
        for metric in ("concentration", "clustered_fraction"):
            for key in ("mean", "median"):
                value = stats[metric][key]
                assert value is None or 0.0 <= value <= 1.0
        assert 0.0 < report["stroke_mask"]["mean_fraction"] < 1.0
    assert report["models"]["robust"]["clean_accuracy"] == 1.0  # the first 4 test digits
    assert set(report["pairs"]) == {"robust_vs_standard", "robust_vs_random", "standard_vs_random"}
    for key, pair in report["pairs"].items():
        a, b = key.split("_vs_")
        both = saved[a]["success"] & saved[b]["success"]
        assert pair["n_both"] == int(both.sum()) == pair["support_iou"]["n"]
        for metric, low in (("support_iou", 0.0), ("rank_correlation", -1.0)):
            for value in (pair[metric]["mean"], pair[metric]["median"]):
                assert value is None or low <= value <= 1.0
    assert sorted(report["ranking"]) == sorted(MODEL_ROLES)
    assert report["cost"]["probe_runs"] == 3 and report["cost"]["sanity_metric_forward_passes"] == 0

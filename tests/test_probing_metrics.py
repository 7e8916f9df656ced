"""Metrics of a probe job and the files that hold them: exact values, properties, round trips."""

import csv
import json
import math
import os

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from rai_probe.probing import artifacts
from rai_probe.probing.artifacts import (
    ERROR_FILE,
    METRICS_FILE,
    load_perturbations,
    per_image_from_perturbations,
    read_metrics,
    read_per_image_csv,
    save_perturbations,
    write_error,
    write_metrics,
    write_per_image_csv,
    job_status,
)
from rai_probe.probing.metrics import (
    PER_IMAGE_KEYS,
    changed_pixels,
    median,
    per_image_metrics,
    perturbation_norms,
    summarize,
)


# --------------------------------------------------------------------------- #
# exact values
# --------------------------------------------------------------------------- #
def test_norms_of_a_hand_built_delta():
    delta = torch.zeros(2, 3, 2, 3)
    delta[0, 0, 0, 0] = 0.5  # pixel (0, 0): two channels
    delta[0, 2, 0, 0] = -0.5
    delta[0, 1, 1, 2] = 2.0  # pixel (1, 2)
    delta[1, 1, 0, 1] = 1e-3  # below atol=0.01
    norms = perturbation_norms(delta, atol=0.01)
    assert norms["l0_pixels"].tolist() == [2, 0]
    assert norms["l0_pixels"].dtype == torch.int64
    assert norms["l0_fraction"].tolist() == [2 / 6, 0.0]
    assert norms["l0_elements"].tolist() == [3, 0]
    assert norms["l1"].tolist() == pytest.approx([3.0, 1e-3])  # atol only affects L0
    assert norms["l2"].tolist() == pytest.approx([math.sqrt(4.5), 1e-3])
    assert norms["linf"].tolist() == pytest.approx([2.0, 1e-3])
    assert all(norms[k].dtype == torch.float64 for k in ("l0_fraction", "l1", "l2", "linf"))
    assert changed_pixels(delta, atol=0.01)[0].tolist() == [[True, False, False], [False, False, True]]
    assert changed_pixels(delta)[1].sum().item() == 1


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="delta"):
        perturbation_norms(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="atol"):
        changed_pixels(torch.zeros(1, 1, 2, 2), atol=-1.0)
    with pytest.raises(ValueError, match="NaN"):
        perturbation_norms(torch.full((1, 1, 2, 2), math.nan))
    images = torch.zeros(2, 1, 2, 2)
    kwargs = dict(clean_logits=torch.zeros(2, 3), adv_logits=torch.zeros(2, 3),
                  success=torch.tensor([True, False]), first_success_step=torch.tensor([0, -1]))
    with pytest.raises(ValueError, match="labels"):
        per_image_metrics(images, images, labels=torch.tensor([0, 3]), **kwargs)
    with pytest.raises(TypeError, match="success"):
        per_image_metrics(images, images, **{**kwargs, "success": torch.tensor([1, 0])})
    with pytest.raises(ValueError, match="xadv"):
        per_image_metrics(images, images[:1], **kwargs)
    with pytest.raises(ValueError, match="missing"):
        summarize({"index": torch.arange(2)})


def _explain_batch():
    """Three labeled images; logits with known softmax (log 3: probability 3/4 of two classes)."""
    images = torch.zeros(3, 1, 2, 2)
    xadv = images.clone()
    xadv[0, 0, 0, 0] = 0.2
    xadv[1, 0, :, :] = 0.1  # all four pixels
    log3 = math.log(3.0)
    clean = torch.tensor([[log3, 0.0], [log3, 0.0], [0.0, log3]])
    adv = torch.tensor([[0.0, log3], [log3, 0.0], [log3, 0.0]])
    return dict(
        images=images,
        xadv=xadv,
        clean_logits=clean,
        adv_logits=adv,
        labels=torch.tensor([0, 0, 0]),
        success=torch.tensor([True, False, True]),
        first_success_step=torch.tensor([4, 7, 0]),
    )


def test_per_image_metrics_exact_values():
    batch = _explain_batch()
    out = per_image_metrics(batch.pop("images"), batch.pop("xadv"), **batch)
    assert set(out) == set(PER_IMAGE_KEYS)
    assert all(v.shape == (3,) for v in out.values())
    assert out["clean_pred"].tolist() == [0, 0, 1]
    assert out["adv_pred"].tolist() == [1, 0, 0]
    assert out["clean_conf"].tolist() == pytest.approx([0.75, 0.75, 0.75])
    assert out["label_conf_before"].tolist() == pytest.approx([0.75, 0.75, 0.25])
    assert out["label_conf_after"].tolist() == pytest.approx([0.25, 0.75, 0.75])
    assert out["target"].tolist() == [-1, -1, -1]
    assert out["target_conf_after"].isnan().all()
    # image 2 is a clean mistake: attacked and recorded, but no success
    assert out["clean_correct"].tolist() == [True, True, False]
    assert out["success"].tolist() == [True, False, False]
    # a failed image has no steps to success even if the solver saw an earlier success
    assert out["steps_to_success"].tolist() == [4, -1, -1]
    assert out["l0_pixels"].tolist() == [1, 4, 0]
    assert out["l1"].tolist() == pytest.approx([0.2, 0.4, 0.0])
    assert out["budget_used"].isnan().all()  # no budget given


def test_summarize_known_inputs():
    batch = _explain_batch()
    summary = summarize(per_image_metrics(batch.pop("images"), batch.pop("xadv"), epsilon=0.5, norm="l1", **batch))
    assert summary["n_images"] == 3 and summary["n_labeled"] == 3 and summary["n_successful"] == 1
    assert summary["n_clean_correct"] == 2 and summary["n_eligible"] == 2
    assert summary["clean_accuracy"] == pytest.approx(2 / 3)
    assert summary["robust_accuracy"] == pytest.approx(1 / 3)  # image 1 held; image 2 was wrong already
    assert summary["flip_rate"] == 0.5 and summary["attack_success_rate"] == 0.5
    assert summary["l0_pixels"] == {"mean": pytest.approx(5 / 3), "median": 1.0}
    assert summary["budget_used"] == {"mean": pytest.approx(0.4), "median": pytest.approx(0.4)}  # L1 / 0.5
    # all L0 = [1, 4, 0]; the successful images: image 0 only
    assert summary["successful"]["l0_pixels"] == {"mean": 1.0, "median": 1.0}
    assert summary["successful"]["budget_used"] == {"mean": pytest.approx(0.4), "median": pytest.approx(0.4)}
    assert summary["steps_to_success"] == {"mean": 4.0, "median": 4.0}
    conf = summary["confidence"]
    assert conf["clean_pred_before"] == pytest.approx(0.75)
    assert conf["label_before"] == pytest.approx((0.75 + 0.75 + 0.25) / 3)
    assert conf["target_before"] is None and conf["target_after"] is None
    json.dumps(summary, allow_nan=False)  # JSON-ready: no NaN, no tensors


def test_summarize_seeds_without_labels_and_no_success():
    seeds = torch.full((2, 1, 2, 2), 0.5)
    out = per_image_metrics(
        seeds, seeds, clean_logits=torch.zeros(2, 4), adv_logits=torch.zeros(2, 4),
        labels=None, targets=torch.tensor([1, 3]), success=torch.tensor([False, False]),
        first_success_step=torch.tensor([-1, -1]))
    summary = summarize(out)
    assert summary["clean_accuracy"] is None
    assert summary["robust_accuracy"] is None and summary["flip_rate"] is None  # no label, and targeted
    assert summary["attack_success_rate"] == 0.0
    assert summary["budget_used"] == {"mean": None, "median": None}
    assert summary["steps_to_success"] == {"mean": None, "median": None}
    assert summary["successful"]["l2"] == {"mean": None, "median": None}
    assert summary["confidence"]["label_before"] is None
    assert summary["confidence"]["target_before"] == pytest.approx(0.25)
    json.dumps(summary, allow_nan=False)


def test_median_convention():
    assert median(torch.tensor([3, 1, 2, 10])) == 2.5  # torch.median would give 2
    assert median(torch.tensor([7.0])) == 7.0
    assert median(torch.tensor([], dtype=torch.float64)) is None


# --------------------------------------------------------------------------- #
# properties
# --------------------------------------------------------------------------- #
@st.composite
def deltas(draw):
    n, c = draw(st.integers(1, 3)), draw(st.sampled_from([1, 3]))
    h, w = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    keep = torch.rand(n, c, h, w, generator=gen) < draw(st.floats(0.0, 1.0))
    return values * keep


@given(deltas())
def test_l0_counts_nonzero_pixels(delta):
    norms = perturbation_norms(delta)
    expected = [int((delta[i] != 0).any(dim=0).sum()) for i in range(delta.shape[0])]
    assert norms["l0_pixels"].tolist() == expected
    assert norms["l0_elements"].tolist() == [int((delta[i] != 0).sum()) for i in range(delta.shape[0])]


@given(deltas(), st.randoms(use_true_random=False))
def test_l0_invariant_under_channel_permutation(delta, rng):
    order = list(range(delta.shape[1]))
    rng.shuffle(order)
    permuted = perturbation_norms(delta[:, order])
    original = perturbation_norms(delta)
    for key in original:
        assert torch.allclose(permuted[key], original[key]), key


@given(deltas())
def test_norm_ordering(delta):
    norms = perturbation_norms(delta)
    slack = 1e-9
    assert (norms["linf"] <= norms["l2"] + slack).all()
    assert (norms["l2"] <= norms["l1"] + slack).all()
    assert ((0 <= norms["l0_fraction"]) & (norms["l0_fraction"] <= 1)).all()


@given(deltas())
def test_zero_delta_is_all_zero(delta):
    norms = perturbation_norms(torch.zeros_like(delta))
    assert all(bool((value == 0).all()) for value in norms.values())


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=20))
def test_median_matches_sorted_middle(values):
    ordered = sorted(values)
    k = len(ordered)
    expected = (ordered[(k - 1) // 2] + ordered[k // 2]) / 2
    assert median(torch.tensor(values, dtype=torch.float64)) == pytest.approx(expected)


# --------------------------------------------------------------------------- #
# files
# --------------------------------------------------------------------------- #
def _saved_job(out_dir, *, targets=None, labels=torch.tensor([0, 0, 0])):
    batch = _explain_batch()
    path = save_perturbations(
        out_dir, images=batch["images"], xadv=batch["xadv"], labels=labels, targets=targets,
        clean_logits=batch["clean_logits"], adv_logits=batch["adv_logits"], success=batch["success"],
        first_success_step=batch["first_success_step"], loss_trace=torch.tensor([1.0, 0.5]),
        class_names=["cat", "dog"])
    return batch, path


def test_perturbations_round_trip_with_weights_only(tmp_path):
    batch, path = _saved_job(tmp_path)
    saved = torch.load(path, weights_only=True)
    assert torch.equal(saved["deltas"], batch["xadv"] - batch["images"])
    assert saved["clean_pred"].tolist() == [0, 0, 1] and saved["adv_pred"].tolist() == [1, 0, 0]
    assert saved["targets"].tolist() == [-1, -1, -1]
    assert saved["class_names"] == ["cat", "dog"]
    assert torch.equal(load_perturbations(path)["xadv"], batch["xadv"])
    with pytest.raises(FileNotFoundError, match="elsewhere"):
        load_perturbations(tmp_path / "elsewhere")
    torch.save({"xadv": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="missing keys"):
        load_perturbations(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="class_names"):
        save_perturbations(
            tmp_path, images=batch["images"], xadv=batch["xadv"], labels=None, targets=None,
            clean_logits=batch["clean_logits"], adv_logits=batch["adv_logits"], success=batch["success"],
            first_success_step=batch["first_success_step"], loss_trace=None, class_names=["only one"])


def test_metrics_json_matches_a_recomputation_from_perturbations(tmp_path):
    batch, _ = _saved_job(tmp_path, targets=torch.tensor([1, 1, -1]))
    per_image = per_image_metrics(
        batch["images"], batch["xadv"], clean_logits=batch["clean_logits"], adv_logits=batch["adv_logits"],
        labels=torch.tensor([0, 0, 0]), targets=torch.tensor([1, 1, -1]), success=batch["success"],
        first_success_step=batch["first_success_step"])
    write_metrics(tmp_path, summarize(per_image), config={"mode": "explain"}, overrides=["seed=1"])
    stored = json.loads((tmp_path / METRICS_FILE).read_text())
    recomputed = summarize(per_image_from_perturbations(load_perturbations(tmp_path)))
    assert stored["summary"] == json.loads(json.dumps(recomputed))
    assert stored["status"] == "complete" and stored["overrides"] == ["seed=1"]
    assert stored["summary"]["confidence"]["target_before"] == pytest.approx(0.25, abs=1e-6)


def test_per_image_csv_round_trip(tmp_path):
    batch = _explain_batch()
    per_image = per_image_metrics(batch.pop("images"), batch.pop("xadv"), targets=torch.tensor([1, -1, 1]), **batch)
    path = write_per_image_csv(tmp_path, per_image, ["cat", "dog"])
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 3
    assert [row["adv_pred_name"] for row in rows] == ["dog", "cat", "cat"]
    assert [row["target_name"] for row in rows] == ["dog", "", "dog"]
    assert rows[1]["target_conf_after"] == ""  # NaN: empty cell
    back = read_per_image_csv(tmp_path)
    for key in PER_IMAGE_KEYS:
        assert back[key].dtype == per_image[key].dtype, key
        assert torch.equal(back[key].nan_to_num(-9.0), per_image[key].nan_to_num(-9.0)), key
    with pytest.raises(ValueError, match="class_names"):
        write_per_image_csv(tmp_path, per_image, ["cat"])


def test_metrics_write_is_atomic(tmp_path, monkeypatch):
    write_metrics(tmp_path, {"n_images": 1}, config={}, overrides=[])
    before = (tmp_path / METRICS_FILE).read_text()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(artifacts.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_metrics(tmp_path, {"n_images": 2}, config={}, overrides=[])
    monkeypatch.undo()
    assert (tmp_path / METRICS_FILE).read_text() == before  # the old file is intact
    assert sorted(os.listdir(tmp_path)) == [METRICS_FILE]  # no temporary left behind


def test_metrics_refuses_nan_and_reserved_keys(tmp_path):
    with pytest.raises(ValueError, match="NaN"):
        write_metrics(tmp_path, {"x": math.nan}, config={}, overrides=[])
    with pytest.raises(ValueError, match="reserved"):
        write_metrics(tmp_path, {}, config={}, overrides=[], extra={"status": "done"})
    assert not (tmp_path / METRICS_FILE).exists()


def test_metrics_accepts_an_omegaconf_config(tmp_path):
    from omegaconf import OmegaConf

    config = OmegaConf.create({"attack": {"epsilon": 2.0, "twice": "${attack.epsilon}"}})
    write_metrics(tmp_path, {}, config=config, overrides=[], extra={"seconds": 3})
    assert read_metrics(tmp_path)["config"] == {"attack": {"epsilon": 2.0, "twice": 2.0}}
    assert read_metrics(tmp_path)["seconds"] == 3


def test_job_status(tmp_path):
    with pytest.raises(FileNotFoundError, match="job directory"):
        job_status(tmp_path / "missing")
    assert job_status(tmp_path) == "unfinished"
    (tmp_path / METRICS_FILE).write_text('{"status": "comp')  # torn by hand: not complete
    assert job_status(tmp_path) == "unfinished"
    write_error(tmp_path, "ValueError: epsilon must be > 0\nTraceback ...")
    assert job_status(tmp_path) == "failed"
    assert (tmp_path / ERROR_FILE).read_text().startswith("ValueError: epsilon")
    write_metrics(tmp_path, {}, config={}, overrides=[])
    assert job_status(tmp_path) == "complete"


def test_csv_has_one_missing_value_convention_and_lowercase_booleans(tmp_path):
    """Unknown labels/targets and never-successful steps are empty cells (not -1); booleans true/false."""
    import csv

    from rai_probe.probing.artifacts import read_per_image_csv, write_per_image_csv
    from rai_probe.probing.metrics import per_image_metrics

    per_image = per_image_metrics(
        torch.zeros(2, 1, 1, 2), torch.ones(2, 1, 1, 2), clean_logits=torch.eye(2), adv_logits=torch.eye(2).flip(1),
        labels=torch.tensor([-1, 1]), success=torch.tensor([True, False]), first_success_step=torch.tensor([3, -1]),
    )
    path = write_per_image_csv(tmp_path, per_image, ["a", "b"])
    rows = list(csv.DictReader(path.open()))
    assert [row["label"] for row in rows] == ["", "1"] and [row["label_name"] for row in rows] == ["", "b"]
    assert [row["target"] for row in rows] == ["", ""]
    assert [row["steps_to_success"] for row in rows] == ["3", ""]
    assert {row["success"] for row in rows} <= {"true", "false"}
    assert "-1" not in path.read_text().replace(",-1.", ",x.")  # no -1 sentinel anywhere (floats aside)
    back = read_per_image_csv(path)
    assert back["label"].tolist() == [-1, 1] and back["steps_to_success"].tolist() == [3, -1]

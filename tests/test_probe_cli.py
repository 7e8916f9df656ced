"""The probe CLI end to end: scripts/probe.py in a subprocess, sweeps on three launchers, the report.

Subprocess runs are the real user commands; settings problems are also
checked in-process through :func:`rai_probe.probing.run.run_probe`, which the
CLI calls, to keep the suite fast.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from probe_config import base_config
from rai_probe.models import build_model, load_pretrained
from rai_probe.probing.artifacts import (
    job_status,
    load_perturbations,
    per_image_from_perturbations,
    read_metrics,
    read_per_image_csv,
)
from rai_probe.probing.metrics import summarize
from rai_probe.probing.run import run_probe
from rai_probe.probing.settings import ProbeConfigError

ROOT = Path(__file__).resolve().parents[1]
PROBE = ROOT / "scripts" / "probe.py"
REPORT = ROOT / "scripts" / "report.py"
FAST = ["attack.steps=5", "n_images=4", "progress=false", "threads=1"]


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, HYDRA_FULL_ERROR="0", OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def check_job(job_dir: Path, *, n_rows: int, targeted: bool) -> dict:
    """Every output of one job exists and agrees with the saved tensors."""
    for name in ("metrics.json", "per_image.csv", "perturbations.pt", ".hydra/config.yaml", "figures/loss_trace.png"):
        assert (job_dir / name).is_file(), name
    assert job_status(job_dir) == "complete"
    assert sorted(job_dir.glob("figures/batch_*.png"))
    assert (job_dir / "figures" / "class_grid.png").is_file() == targeted
    metrics = read_metrics(job_dir)
    saved = load_perturbations(job_dir)
    assert saved["xadv"].shape[0] == n_rows
    assert torch.equal(saved["deltas"], saved["xadv"] - saved["images"])
    assert bool(((saved["xadv"] >= 0) & (saved["xadv"] <= 1)).all())
    recomputed = summarize(per_image_from_perturbations(saved))
    assert recomputed == metrics["summary"]
    per_image = read_per_image_csv(job_dir)
    assert per_image["success"].tolist() == saved["success"].tolist()
    labeled = per_image["label"] >= 0
    assert torch.equal(per_image["clean_correct"], labeled & (per_image["clean_pred"] == per_image["label"]))
    if not targeted:  # a clean mistake is never a success
        assert bool((per_image["success"] <= (per_image["clean_correct"] | ~labeled)).all())
    assert per_image["adv_pred"].tolist() == saved["adv_logits"].argmax(1).tolist()
    for name in metrics["figures"]:
        assert (job_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return metrics


# ---------------------------------------------------------------------------
# the user's commands


def test_default_command(tmp_path):
    out = tmp_path / "run"
    result = run_cli(PROBE, "+attack=l1q", f"hydra.run.dir={out}", "threads=2")
    assert result.returncode == 0, result.stderr
    metrics = check_job(out, n_rows=16, targeted=False)
    summary = metrics["summary"]
    assert summary["n_images"] == 16 and metrics["status"] == "complete"
    assert metrics["attack"]["optimizer"] == "L1qAutoFrankWolfe" and metrics["attack"]["epsilon"] == 20.0
    assert metrics["model"]["name"] == "small_cnn_mnist5k_l2"
    assert summary["clean_accuracy"] >= 0.9  # the shipped robust model on its own test split
    assert summary["attack_success_rate"] > 0
    # the L1 budget holds for every image, and sparsity is what L0 says
    saved = load_perturbations(out)
    l1 = saved["deltas"].flatten(1).abs().sum(1)
    assert bool((l1 <= 20.0 * (1 + 1e-5)).all())
    assert summary["budget_used"]["mean"] == pytest.approx(l1.double().mean().item() / 20.0)
    assert summary["robust_accuracy"] == pytest.approx(summary["clean_accuracy"] * (1 - summary["flip_rate"]))
    assert summary["l0_pixels"]["mean"] == pytest.approx(
        (saved["deltas"] != 0).flatten(1).sum(1).double().mean().item()
    )
    assert "outputs in" in result.stderr + result.stdout


def test_targeted_probe_from_noise_seeds(tmp_path):
    out = tmp_path / "probe"
    result = run_cli(
        PROBE, "+attack=l2", "mode=probe", "data=noise", "n_images=2", "attack.steps=20",
        "progress=false", f"hydra.run.dir={out}",
    )
    assert result.returncode == 0, result.stderr
    metrics = check_job(out, n_rows=20, targeted=True)  # 2 seeds x 10 classes
    saved = load_perturbations(out)
    assert saved["targets"].tolist() == list(range(10)) * 2
    assert saved["labels"].tolist() == [-1] * 20
    assert saved["success"].tolist() == (saved["adv_logits"].argmax(1) == saved["targets"]).tolist()
    assert metrics["summary"]["clean_accuracy"] is None and metrics["summary"]["n_targeted"] == 20


def test_multirun_basic_launcher_and_report(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(
        PROBE, "-m", "+attack=l1q", "attack.epsilon=5,10", "attack.q=0.9,0.99", *FAST,
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 0, result.stderr
    jobs = sorted(p for p in sweep.iterdir() if p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    seen = set()
    for job in jobs:
        metrics = check_job(job, n_rows=4, targeted=False)
        seen.add((metrics["attack"]["epsilon"], metrics["attack"]["options"]["q"]))
        l1 = load_perturbations(job)["deltas"].flatten(1).abs().sum(1)
        assert bool((l1 <= metrics["attack"]["epsilon"] * (1 + 1e-5)).all())
    assert seen == {(5.0, 0.9), (5.0, 0.99), (10.0, 0.9), (10.0, 0.99)}

    report = run_cli(REPORT, sweep)
    assert report.returncode == 0, report.stderr
    assert "4 jobs: 4 complete, 0 failed, 0 unfinished" in report.stdout
    for name in ("report.csv", "report.md", "success_vs_epsilon.png", "sparsity_vs_epsilon.png", "gallery.png"):
        assert (sweep / "report" / name).is_file(), name
    table = (sweep / "report" / "report.md").read_text()
    rate = read_metrics(jobs[3])["summary"]["attack_success_rate"]
    assert f"| 3 | complete |" in table and str(rate)[:4] in table


def test_multirun_failed_job_keeps_the_others(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(PROBE, "-m", "+attack=l1q", "attack.q=0.9,1.5", *FAST, f"hydra.sweep.dir={sweep}")
    assert result.returncode == 1, result.stderr  # the sweep had a failed job: not a success
    assert "1 of 2 jobs of the sweep did not complete: job 1 failed" in result.stderr
    assert "Traceback" not in result.stderr
    assert job_status(sweep / "0") == "complete"
    assert job_status(sweep / "1") == "failed"
    assert "attack.q" in (sweep / "1" / "error.txt").read_text()
    report = run_cli(REPORT, sweep)
    assert "2 jobs: 1 complete, 1 failed (job 1), 0 unfinished" in report.stdout


@pytest.mark.parametrize("launcher", ["parallel", "local_cluster"])
def test_multirun_joblib_and_submitit_local(tmp_path, launcher):
    sweep = tmp_path / "sweep"
    result = run_cli(
        PROBE, "-m", f"hydra/launcher={launcher}", "+attack=l1q", "attack.epsilon=5,10", *FAST,
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 0, result.stderr
    for job in ("0", "1"):
        check_job(sweep / job, n_rows=4, targeted=False)
    if launcher == "local_cluster":
        assert (sweep / ".submitit").is_dir()
    epsilons = sorted(read_metrics(sweep / job)["attack"]["epsilon"] for job in ("0", "1"))
    assert epsilons == [5.0, 10.0]


def test_job_reproducible_from_saved_config(tmp_path):
    out = tmp_path / "first"
    result = run_cli(PROBE, "+attack=l1q", "attack.dq=0.005", "attack.random_init=l1", *FAST, f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load((out / ".hydra" / "config.yaml").read_text())
    again = tmp_path / "again"
    run_probe(config, again)
    assert torch.equal(load_perturbations(out)["xadv"], load_perturbations(again)["xadv"])
    other = dict(config, seed=1)
    run_probe(other, tmp_path / "other")
    assert not torch.equal(load_perturbations(out)["xadv"], load_perturbations(tmp_path / "other")["xadv"])


# ---------------------------------------------------------------------------
# bad input: one paragraph naming the override, no traceback, nothing presented as complete


def test_no_attack_lists_the_attacks(tmp_path):
    result = run_cli(PROBE, f"hydra.run.dir={tmp_path / 'none'}")
    assert result.returncode == 2
    for name in ("l1q", "l1q_normed", "l1", "l2", "linf", "l2_fw", "linf_fw", "l1q_smooth"):
        assert f"+attack={name}" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_value_exits_with_one_paragraph(tmp_path):
    out = tmp_path / "bad"
    result = run_cli(PROBE, "+attack=l1q", "attack.q=1.5", f"hydra.run.dir={out}")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "`attack.q=...`" in result.stderr and "[0, 1]" in result.stderr
    assert job_status(out) == "failed" and not (out / "metrics.json").exists()


def test_unknown_attack_name_is_hydras_listing(tmp_path):
    result = run_cli(PROBE, "+attack=l3", f"hydra.run.dir={tmp_path / 'x'}")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "l1q" in result.stderr  # Hydra lists the available options


@pytest.fixture(scope="module")
def mismatched_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "small_cnn_plain.pt"
    torch.save(build_model("small_cnn").model.state_dict(), path)
    return path


@pytest.mark.parametrize(
    "changes, override, words",
    [
        ({"attack__q": 1.5}, "attack.q", "[0, 1]"),
        ({"attack__epsilon": 0.0}, "attack.epsilon", "> 0"),
        ({"attack__epsilon": -3.0}, "attack.epsilon", "> 0"),
        ({"attack__steps": 0}, "attack.steps", ">= 1"),
        ({"attack__random_init": "l7"}, "attack.random_init", "l1"),
        ({"attack__options": {"nonsense": 1}}, "attack.options.nonsense", "nonsense"),
        ({"attack__optimizer": "Adam"}, "attack.optimizer", "L1qFrankWolfe"),
        ({"mode": {"name": "probe", "targeted": True, "target": 10}}, "mode.target", "[0, 9]"),
        ({"mode": {"name": "probe", "targeted": True, "target": "cat"}}, "mode.target", "classes"),
        ({"data": {"name": "cifar10", "root": "???", "split": "test"}}, "data.root", "data.root"),
        ({"data": {"name": "cifar10", "root": "/no/such/dir", "split": "test"}}, "data.root", "/no/such/dir"),
        ({"data": {"name": "digits", "split": "test"}}, "data", "1x8x8"),
        ({"data": {"name": "noise"}}, "mode", "mode=probe"),
        ({"model": {"name": "cifar_resnet18", "arch": "cifar_resnet18", "checkpoint": "???"}}, "model.checkpoint", "checkpoint"),
        ({"model": {"name": "x", "arch": "cifar_resnet18", "checkpoint": "/no/such.pt"}}, "model.checkpoint", "/no/such.pt"),
        ({"model": {"name": "x", "pretrained": "nope"}}, "model.pretrained", "nope"),
        ({"n_images": 0}, "n_images", ">= 1"),
        ({"device": "cuda:7"} if not torch.cuda.is_available() else {"device": "tpu"}, "device", "device"),
    ],
)
def test_bad_settings_name_the_override(tmp_path, changes, override, words):
    with pytest.raises(ProbeConfigError) as caught:
        run_probe(base_config(**changes), tmp_path / "job")
    message = str(caught.value)
    assert caught.value.override == override, message
    assert f"`{override}=...`" in message and words in message
    assert not (tmp_path / "job" / "metrics.json").exists()


def test_checkpoint_that_does_not_fit_the_architecture(tmp_path, mismatched_checkpoint):
    config = base_config(model={"name": "cifar_resnet18", "arch": "cifar_resnet18", "checkpoint": str(mismatched_checkpoint)})
    with pytest.raises(ProbeConfigError) as caught:
        run_probe(config, tmp_path / "job")
    assert caught.value.override == "model.arch"  # no key of the file fits: the wrong architecture, or file
    message = str(caught.value)
    assert "cannot be used" in message and "missing" in message.lower() and str(mismatched_checkpoint) in message


def test_rerun_in_the_same_directory_is_not_complete_until_it_finishes(tmp_path):
    job = tmp_path / "job"
    run_probe(base_config(), job)
    assert job_status(job) == "complete"
    with pytest.raises(ProbeConfigError):
        run_probe(base_config(attack__q=1.5), job)  # fails before writing anything new
    assert job_status(job) == "unfinished"  # the old metrics.json no longer vouches for it


def test_in_process_explain_matches_the_model(tmp_path):
    """Clean predictions and confidences in metrics come from the shipped model itself."""
    outcome = run_probe(base_config(n_images=3), tmp_path / "job")
    saved = load_perturbations(tmp_path / "job")
    model = load_pretrained()
    with torch.no_grad():
        logits = model(saved["images"])
    torch.testing.assert_close(saved["clean_logits"], logits)
    assert json.loads((tmp_path / "job" / "metrics.json").read_text())["summary"] == outcome["summary"]


def _digit_folder(root, names):
    """Class subfolders of 28x28 grayscale PNGs cut from mnist5k digits of those classes (when digits)."""
    from PIL import Image

    from rai_probe.data import load_mnist5k

    test = load_mnist5k("test")
    for position, name in enumerate(names):
        folder = root / name
        folder.mkdir(parents=True)
        label = int(name) if name.isdigit() else position
        image = test.images[test.labels == label][0, 0]
        Image.fromarray((image * 255).round().byte().numpy(), mode="L").save(folder / "a.png")
    return root


def test_folder_labels_are_the_models_classes(tmp_path):
    root = _digit_folder(tmp_path / "images", ["3", "7"])
    job = tmp_path / "job"
    run_probe(base_config(data={"name": "folder", "root": str(root), "size": None, "mode": "auto"}), job)
    saved = load_perturbations(job)
    assert saved["labels"].tolist() == [3, 7]  # not the folder order 0, 1
    assert read_metrics(job)["summary"]["clean_accuracy"] == 1.0
    assert saved["source_files"] == ["3/a.png", "7/a.png"]  # each row's file, relative to data.root
    import csv

    rows = list(csv.DictReader((job / "per_image.csv").open()))
    assert [row["source"] for row in rows] == ["3/a.png", "7/a.png"]


def test_folder_with_foreign_class_names_is_refused(tmp_path):
    root = _digit_folder(tmp_path / "images", ["cat", "dog"])
    with pytest.raises(ProbeConfigError) as caught:
        run_probe(base_config(data={"name": "folder", "root": str(root), "size": None, "mode": "auto"}), tmp_path / "job")
    assert caught.value.override == "data.root" and "'cat'" in str(caught.value)


def test_unknown_attack_setting_is_named(tmp_path):
    with pytest.raises(ProbeConfigError) as caught:
        run_probe(base_config(attack__stpes=3), tmp_path / "job")
    assert caught.value.override == "attack.stpes"


def test_probe_your_own_cifar_checkpoint_and_batches(tmp_path):
    """model=cifar_resnet18 model.checkpoint=... data=cifar10 data.root=...: a plain state_dict on CIFAR batches."""
    import pickle

    import numpy as np

    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]:
        batch = {b"labels": [1, 2], b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8)}
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))
    names = [c.encode() for c in "airplane automobile bird cat deer dog frog horse ship truck".split()]
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=2))
    net = build_model("cifar_resnet18").eval()
    checkpoint = tmp_path / "resnet18.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.model.state_dict().items()}}, checkpoint)
    config = base_config(
        model={"name": "cifar_resnet18", "arch": "cifar_resnet18", "checkpoint": str(checkpoint)},
        data={"name": "cifar10", "root": str(root), "split": "test"},
    )
    run_probe(config, tmp_path / "job")
    saved = load_perturbations(tmp_path / "job")
    assert saved["images"].shape == (2, 3, 32, 32) and saved["labels"].tolist() == [1, 2]
    assert saved["class_names"][:2] == ["airplane", "automobile"]  # the data's names: the file records none
    with torch.no_grad():
        torch.testing.assert_close(saved["clean_logits"], net(saved["images"]))


def test_a_sweep_over_attacks_takes_overrides_inside_the_attack_group(tmp_path):
    """``-m +attack=a,b attack.steps=2``: Hydra composes a multirun first without the swept group."""
    sweep = tmp_path / "sweep"
    result = run_cli(PROBE, "-m", "+attack=l1q,l1q_normed,l2", "attack.steps=2", "n_images=2", "progress=false",
                     "threads=1", "metrics.faithfulness=false", "metrics.minimality=false",
                     f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr
    optimizers = []
    for job in ("0", "1", "2"):
        metrics = read_metrics(sweep / job)
        assert metrics["status"] == "complete" and metrics["attack"]["steps"] == 2
        optimizers.append(metrics["attack"]["optimizer"])
    assert optimizers == ["L1qAutoFrankWolfe", "L1ProjectedOptim", "L2ProjectedOptim"]

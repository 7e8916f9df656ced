"""Evaluations that outgrow one job: shards and their merge, resume after a kill, mixed precision, compile."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from probe_config import base_config

from rai_probe.jobs.errors import ConfigError
from rai_probe.probing.acceleration import AutocastClassifier, RowGradientScaling, accelerated
from rai_probe.probing.artifacts import load_perturbations, read_metrics
from rai_probe.probing.batches import BatchRecords, batch_seed, config_fingerprint, shard_batches
from rai_probe.probing.merge import ShardMismatchError, merge_shards
from rai_probe.probing.run import run_probe

ROOT = Path(__file__).resolve().parents[1]
PROBE = ROOT / "scripts" / "probe.py"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small(**changes):
    """7 digits in batches of 2 (4 batches, the last one short), a random start: every batch draws numbers."""
    config = base_config(n_images=7, batch_size=2, attack__steps=3, attack__random_init="l1",
                         figures={"max_grids": 1, "images_per_grid": 2})
    for key, value in changes.items():
        section, _, name = key.partition("__")
        config[section] = dict(config[section], **{name: value}) if name else value
    return config


def sharded(config, shard, num_shards):
    return dict(config, data=dict(config["data"], shard=shard, num_shards=num_shards))


@given(batches=st.integers(0, 200), num_shards=st.integers(1, 40))
def test_shards_are_disjoint_contiguous_and_cover_every_batch(batches, num_shards):
    ranges = [shard_batches(batches, num_shards, k) for k in range(num_shards)]
    assert [b for r in ranges for b in r] == list(range(batches))  # in order, each once
    sizes = [len(r) for r in ranges]
    assert max(sizes) - min(sizes) <= 1


def test_batch_seeds_depend_on_the_batch_and_the_seed_only():
    seeds = {batch_seed(seed, batch) for seed in range(5) for batch in range(50)}
    assert len(seeds) == 250 and all(0 <= s < 2**63 for s in seeds)
    assert batch_seed(3, 7) == batch_seed(3, 7)


@pytest.fixture(scope="module")
def unsharded(tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "job"
    run_probe(small(), out)
    return out


@pytest.mark.parametrize("num_shards", [2, 3])
def test_sharded_and_merged_equals_the_unsharded_run(tmp_path, unsharded, num_shards):
    sweep = tmp_path / "sweep"
    for shard in range(num_shards):
        run_probe(sharded(small(), shard, num_shards), sweep / str(shard))
        (sweep / str(shard) / ".hydra").mkdir()
        (sweep / str(shard) / ".hydra" / "overrides.yaml").write_text(f"- data.shard={shard}\n")
    rows = [load_perturbations(sweep / str(k))["rows"].tolist() for k in range(num_shards)]
    assert [r for part in rows for r in part] == list(range(7))  # disjoint, in order, every row
    merged = merge_shards(sweep)
    full, back = load_perturbations(unsharded), load_perturbations(merged)
    for key, value in full.items():
        if isinstance(value, torch.Tensor) and key != "rows":
            assert torch.equal(value, back[key]), key
    assert (merged / "per_image.csv").read_text() == (unsharded / "per_image.csv").read_text()
    assert read_metrics(merged)["summary"] == read_metrics(unsharded)["summary"]
    assert read_metrics(merged)["status"] == "complete"


def test_merge_refuses_shards_of_different_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    run_probe(sharded(small(), 0, 2), sweep / "0")
    run_probe(sharded(small(attack__epsilon=5.0), 1, 2), sweep / "1")
    with pytest.raises(ShardMismatchError, match=r"attack\.epsilon=20\.0 vs 5\.0"):
        merge_shards(sweep)
    run_probe(sharded(small(), 1, 3), sweep / "1")
    with pytest.raises(ShardMismatchError):  # num_shards differs
        merge_shards(sweep)
    (sweep / "1" / "metrics.json").unlink()
    (sweep / "1" / "error.txt").write_text("x")
    with pytest.raises(ShardMismatchError, match="did not complete"):
        merge_shards(sweep)
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "report.py"), "--merge", str(sweep)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "did not complete" in result.stderr


def test_bad_shard_settings_are_named(tmp_path):
    with pytest.raises(ConfigError) as caught:
        run_probe(sharded(small(), 2, 2), tmp_path / "a")
    assert caught.value.override == "data.shard"
    with pytest.raises(ConfigError) as caught:
        run_probe(sharded(small(), 0, 10), tmp_path / "b")  # 4 batches, 10 shards: shard 0 holds none
    assert caught.value.override == "data.num_shards"
    with pytest.raises(ConfigError) as caught:
        run_probe(sharded(small(), -1, 2), tmp_path / "c")
    assert caught.value.override == "data.shard"


def test_resume_reuses_only_records_of_the_same_configuration(tmp_path, unsharded):
    out = tmp_path / "job"
    config = small()
    records = BatchRecords(out, config_fingerprint(config), resume=False)
    full = load_perturbations(unsharded)
    forged = {"xadv": full["xadv"][:2] * 0, "logits": full["adv_logits"][:2], "success": full["goal_met"][:2],
              "first_success": full["first_success_step"][:2], "loss_trace": torch.zeros(4),
              "datum_trace": full["datum_loss_trace"][:, :2]}
    from rai_probe.probing.batches import BatchResult

    BatchRecords(out, "another configuration", resume=True).save(0, BatchResult(**forged))
    del records
    run_probe(dict(config, resume=True), out)  # the forged record is of another configuration: attacked again
    assert torch.equal(load_perturbations(out)["xadv"], full["xadv"])
    assert not (out / "batches").exists()  # complete: records removed


def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path):
    base = [sys.executable, str(PROBE), "+attack=l1q", "n_images=24", "batch_size=4", "attack.steps=40",
            "attack.random_init=l1", "progress=false", "threads=1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    full = tmp_path / "full"
    subprocess.run(base + [f"hydra.run.dir={full}"], env=env, capture_output=True, check=True, timeout=300)
    job = tmp_path / "job"
    process = subprocess.Popen(base + [f"hydra.run.dir={job}"], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(glob.glob(str(job / "batches" / "*.pt"))) < 2:
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    recorded = len(glob.glob(str(job / "batches" / "*.pt")))
    assert 2 <= recorded < 6
    again = subprocess.run(base + [f"hydra.run.dir={job}", "resume=true"], env=env, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    a, b = load_perturbations(full), load_perturbations(job)
    assert all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor))
    assert (full / "per_image.csv").read_text() == (job / "per_image.csv").read_text()
    assert read_metrics(full)["summary"] == read_metrics(job)["summary"]


#: Jobs whose mode adds dataset-level outputs (contrast.pt, concepts.pt, the robustness curve and its figures)
#: or selects its rows: each sharded into 2 and merged must give the unsharded job's outputs.
MODE_JOBS = {
    "contrast": dict(n_images=6, batch_size=2, metrics={"faithfulness": False, "minimality": False},
                     mode={"name": "contrast", "targeted": True, "source": 3, "target": 8, "select": "all"}),
    "probe concepts": dict(n_images=2, batch_size=10, metrics={"faithfulness": False, "minimality": False},
                           mode={"name": "probe", "targeted": True, "target": "all"}),
    "minimal": dict(n_images=4, batch_size=2, mode={"name": "minimal", "targeted": False, "target": None}),
    "misclassified": dict(n_images=4, batch_size=2,
                          mode={"name": "explain", "targeted": False, "target": None, "select": "misclassified"}),
}


def _job_files(job_dir):
    return sorted(str(p.relative_to(job_dir)) for p in job_dir.rglob("*") if p.is_file() and p.name != ".rai_probe.lock")


@pytest.mark.parametrize("mode", list(MODE_JOBS))
def test_a_merge_writes_the_mode_outputs_of_the_unsharded_job(tmp_path, mode):
    config = base_config(**MODE_JOBS[mode])
    full = tmp_path / "full"
    run_probe(config, full)
    sweep = tmp_path / "sweep"
    for shard in range(2):
        run_probe(sharded(config, shard, 2), sweep / str(shard))
        (sweep / str(shard) / ".hydra").mkdir()
        (sweep / str(shard) / ".hydra" / "overrides.yaml").write_text(f"- data.shard={shard}\n")
    merged = merge_shards(sweep)
    assert _job_files(merged) == _job_files(full)
    expected, found = read_metrics(full), read_metrics(merged)
    for key in set(expected) - {"seconds", "shard", "config", "overrides", "merged_from"}:
        assert found[key] == expected[key], key
    for name in ("contrast.pt", "concepts.pt"):
        if (full / name).exists():
            a, b = (torch.load(d / name, weights_only=True) for d in (full, merged))
            assert a.keys() == b.keys() and all(
                torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a), name
    for figure in expected["figures"]:  # drawn from the same tensors with the same settings: the same bytes
        assert (merged / figure).read_bytes() == (full / figure).read_bytes(), figure
    assert {"contrast": "contrast.pt", "probe concepts": "concepts.pt", "minimal": "figures/minimal_gallery.png",
            "misclassified": "per_image.csv"}[mode] in _job_files(merged)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_keeps_perturbations_and_metrics_in_float32(tmp_path, precision):
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    fast = accelerated(net, precision=precision, compile=False, device=torch.device("cpu"))
    autocast = fast.model if precision == "fp16" else fast  # fp16: inside the per-row gradient scaling
    assert isinstance(fast, RowGradientScaling) == (precision == "fp16")
    assert isinstance(autocast, AutocastClassifier) and next(net.parameters()).dtype == torch.float32
    x = torch.rand(2, 1, 2, 2, requires_grad=True)
    out = fast(x)
    out.sum().backward()
    assert out.dtype == torch.float32 and x.grad.dtype == torch.float32
    run_probe(small(precision=precision), tmp_path / "job")
    saved = load_perturbations(tmp_path / "job")
    assert saved["xadv"].dtype == saved["adv_logits"].dtype == torch.float32
    assert read_metrics(tmp_path / "job")["precision"] == precision
    l1 = (saved["xadv"] - saved["images"]).flatten(1).abs().sum(1)
    assert bool((l1 <= 20.0 * (1 + 1e-5)).all()) and bool(((saved["xadv"] >= 0) & (saved["xadv"] <= 1)).all())


def _confident_linear():
    """A linear classifier whose logits on ``x = 4`` are 64 and 0: ``1 - p`` about 1.6e-28, far below float16's range."""
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([[4.0, 4, 4, 4], [0, 0, 0, 0], [-1, 0, 1, 0]]))
        net[1].bias.zero_()
    return net


def _input_gradient(model, x, labels):
    x = x.clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(model(x), labels, reduction="none").sum().backward()
    return x.grad


def test_fp16_keeps_the_gradient_of_a_confident_row():
    net = _confident_linear()
    x = torch.full((2, 1, 2, 2), 4.0)
    x[1] = 0.5  # an ordinary row beside it: logits 8 and 0
    labels = torch.tensor([0, 0])
    exact = _input_gradient(net, x, labels)
    fp16 = _input_gradient(accelerated(net, precision="fp16", device=torch.device("cpu")), x, labels)
    plain = _input_gradient(AutocastClassifier(net, torch.float16, "cpu"), x, labels)
    assert bool((plain[0] == 0).all()), "the unscaled fp16 gradient of the confident row underflows"
    assert bool((exact[0] != 0).any()) and torch.equal(fp16[0] != 0, exact[0] != 0)
    assert torch.allclose(fp16, exact, rtol=2e-3, atol=0)  # every row: fp16 rounding only
    assert fp16.dtype == torch.float32


@given(seed=st.integers(0, 2**31 - 1), log_scale=st.floats(-30, 30))
def test_row_gradient_scaling_changes_no_float32_gradient(seed, log_scale):
    """Powers of two scale float values exactly: around a float32 model the scaling is invisible, bit for bit."""
    gen = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 2), torch.nn.Flatten(), torch.nn.Linear(27, 4)).eval()
    x = torch.rand(5, 1, 4, 4, generator=gen)
    weights = (torch.rand(5, 4, generator=gen) * 2.0**log_scale)  # rows of very different gradient sizes

    def gradient(model):
        xi = x.clone().requires_grad_(True)
        (model(xi) * weights).sum().backward()
        return xi.grad

    assert torch.equal(gradient(RowGradientScaling(net)), gradient(net))


def test_compile_falls_back_to_eager_with_one_warning(monkeypatch):
    def broken(model, *args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = accelerated(net, precision="fp32", compile=True, device=torch.device("cpu"),
                          example=torch.rand(1, 1, 2, 2))
    assert out is net
    assert [str(w.message) for w in caught if "torch.compile failed" in str(w.message)] == [
        "compile=true: torch.compile failed (RuntimeError: no compiler here); running the model eagerly"]

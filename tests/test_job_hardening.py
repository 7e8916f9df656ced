"""Hostile input to the job scripts: settings that mean the opposite of what was typed, results that
vanish, mix or look complete, errors that point the wrong way.

Each test runs the real command (scripts/*.py in a subprocess) or the job function in-process, and
checks the exit status, the one paragraph the user reads, and what is (not) left on disk.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest
import torch

from rai_probe.jobs.errors import ConfigError, paragraph
from rai_probe.jobs.rundir import RunDirectory, RunDirectoryBusy, job_status
from rai_probe.jobs.schema import check_settings, setting
from probe_config import base_config
from rai_probe.models import build_model
from rai_probe.probing.artifacts import load_perturbations, read_metrics
from rai_probe.probing.report import collect_jobs, write_report
from rai_probe.probing.run import run_probe

ROOT = Path(__file__).resolve().parents[1]
PROBE = ROOT / "scripts" / "probe.py"
EVALUATE = ROOT / "scripts" / "evaluate.py"
TRAIN = ROOT / "scripts" / "train.py"
REPORT = ROOT / "scripts" / "report.py"
FAST = ["attack.steps=3", "n_images=4", "progress=false", "threads=1"]


def run_cli(*args, cwd=ROOT, timeout=300, **popen):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, **popen
    )


def payload_checkpoint(path: Path, marker: Path) -> Path:
    """A torch file whose unpickling would create ``marker``."""

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"state_dict": Payload()}, path)
    return path


# --------------------------------------------------------------------------- #
# 1. settings that mean the opposite of what was typed
# --------------------------------------------------------------------------- #
ARCHES = ["small_cnn", "madry_mnist_cnn", "cifar_resnet18", "cifar_resnet50", "wrn28_10", "imagenet_resnet50", "checkpoint"]


@pytest.mark.parametrize("model", ARCHES)
@pytest.mark.parametrize("trust", ["no", "off", "false", "False", "yes", "true", 1, 0, None, "True", False])
def test_trust_checkpoint_only_a_real_true_and_never_runs_code(tmp_path, model, trust):
    """Every model config, every spelling that is not the boolean true: the payload never runs."""
    marker = tmp_path / "PWNED"
    evil = payload_checkpoint(tmp_path / "evil.pt", marker)
    arch = None if model == "checkpoint" else model
    config = base_config(model={"name": model, "pretrained": None, "arch": arch, "checkpoint": str(evil),
                                "trust_checkpoint": trust})
    with pytest.raises(ConfigError) as caught:
        run_probe(config, tmp_path / "job")
    assert not marker.exists()
    assert caught.value.override == "model.trust_checkpoint"
    if not isinstance(trust, bool):  # a non-boolean is refused as such, before any file is opened
        assert "must be true or false" in str(caught.value)
    assert job_status(tmp_path / "job") != "complete"


def test_trust_checkpoint_no_on_the_command_line(tmp_path):
    marker = tmp_path / "PWNED"
    evil = payload_checkpoint(tmp_path / "evil.pt", marker)
    out = tmp_path / "job"
    result = run_cli(PROBE, "+attack=l1q", "model=small_cnn", f"model.checkpoint={evil}",
                     "model.trust_checkpoint=no", f"hydra.run.dir={out}", *FAST)
    assert result.returncode == 2 and not marker.exists()
    assert "Traceback" not in result.stderr
    assert "`model.trust_checkpoint` must be true or false; got 'no'" in " ".join(result.stderr.split())
    assert job_status(out) == "failed"


def test_evaluate_refuses_a_payload_checkpoint_in_one_paragraph(tmp_path):
    marker = tmp_path / "PWNED"
    evil = payload_checkpoint(tmp_path / "evil.pt", marker)
    for extra in ([], ["trust_checkpoint=no"]):
        result = run_cli(EVALUATE, f"checkpoint={evil}", "arch=small_cnn", *extra, f"hydra.run.dir={tmp_path / 'ev'}")
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr and not marker.exists()
        assert "trust_checkpoint" in result.stderr
        assert (tmp_path / "ev" / "error.txt").is_file()


@pytest.mark.parametrize(
    "changes, override",
    [
        ({"attack__early_stop": "no"}, "attack.early_stop"),
        ({"attack__use_best": "off"}, "attack.use_best"),
        ({"progress": "false"}, "progress"),
        ({"mode": {"name": "explain", "targeted": "no", "target": None}}, "mode.targeted"),
        ({"attack__epsilon": "10"}, "attack.epsilon"),
        ({"attack__steps": 2.5}, "attack.steps"),
        ({"attack__restarts": "yes"}, "attack.restarts"),
        ({"attack__restarts": 0}, "attack.restarts"),
        ({"attack__check_every": "10"}, "attack.check_every"),
        ({"attack__check_every": 0}, "attack.check_every"),
        ({"attack__loss": "hinge"}, "attack.loss"),
        ({"attack__epsilon_schedule": [3, 2]}, "attack.epsilon_schedule"),
        ({"n_images": True}, "n_images"),
        ({"attack__lr": float("nan")}, "attack.lr"),
        ({"attack__epsilon": float("inf")}, "attack.epsilon"),
        ({"attack__data_range": [1.0, 0.0]}, "attack.data_range"),
        ({"attack__confidence": 2.0}, "attack.confidence"),
        ({"figures": {"max_grids": 1, "images_per_grid": 0}}, "figures.images_per_grid"),
        ({"seed": "0"}, "seed"),
        ({"threads": 0}, "threads"),
        ({"model": {"name": "x", "pretrained": "small_cnn_mnist5k_l2", "num_classes": "10"}}, "model.num_classes"),
    ],
)
def test_every_setting_is_type_checked_before_anything_loads(tmp_path, changes, override, monkeypatch):
    from rai_probe.probing import job as job_module

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the settings were checked")

    monkeypatch.setattr(job_module, "model_from_config", no_model)
    with pytest.raises(ConfigError) as caught:
        run_probe(base_config(**changes), tmp_path / "job")
    assert caught.value.override == override, str(caught.value)
    assert f"`{override}=...`" in str(caught.value)


def test_check_settings_is_strict_about_types():
    @dataclass
    class Schema:
        flag: bool = False
        count: int = setting(1, low=1)
        ratio: Optional[float] = setting(None, low=0, high=1)

    check_settings({"flag": True, "count": 3, "ratio": None}, Schema)
    check_settings({"ratio": 1}, Schema)  # an integer is a number
    for bad in ({"flag": "true"}, {"flag": 1}, {"count": True}, {"count": 1.0}, {"ratio": "0.5"},
                {"ratio": float("nan")}, {"ratio": 1.5}, {"count": 0}, {"extra": 1}):
        with pytest.raises(ValueError) as caught:
            check_settings(bad, Schema)
        assert caught.value.setting == next(iter(bad))


# --------------------------------------------------------------------------- #
# 2. results that vanish, mix or look complete when they are not
# --------------------------------------------------------------------------- #
def test_default_run_directories_of_simultaneous_jobs_differ(tmp_path):
    commands = [[sys.executable, str(PROBE), "+attack=l1q", *FAST] for _ in range(2)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    processes = [subprocess.Popen(c, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for c in commands]
    codes = [p.wait(timeout=300) for p in processes]
    assert codes == [0, 0]
    jobs = sorted((tmp_path / "outputs" / "probe").iterdir())
    assert len(jobs) == 2
    for job in jobs:
        assert job_status(job) == "complete"
        assert load_perturbations(job)["xadv"].shape[0] == 4


def test_a_live_jobs_directory_is_refused_untouched(tmp_path):
    out = tmp_path / "job"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.Popen(
        [sys.executable, str(PROBE), "+attack=l1q", "attack.steps=100", "n_images=64", "progress=false",
         "threads=1", "metrics.faithfulness=false", "metrics.minimality=false", f"hydra.run.dir={out}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 120
    while not (out / ".hydra" / "overrides.yaml").is_file():  # the first job holds its directory
        assert time.monotonic() < deadline and first.poll() is None
        time.sleep(0.2)
    second = run_cli(PROBE, "+attack=l2", *FAST, f"hydra.run.dir={out}")
    assert second.returncode == 2
    assert "in use by another live job" in " ".join(second.stderr.split()) and "hydra.run.dir" in second.stderr
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert job_status(out) == "complete"
    metrics = read_metrics(out)
    assert metrics["attack"]["optimizer"] == "L1qAutoFrankWolfe" and metrics["summary"]["n_images"] == 64
    assert "attack=l2" not in (out / ".hydra" / "overrides.yaml").read_text()


def test_the_lock_is_per_process_and_released():
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        code = (
            "import sys; from rai_probe.jobs.rundir import RunDirectory, RunDirectoryBusy\n"
            "try:\n    RunDirectory(sys.argv[1]).__enter__()\nexcept RunDirectoryBusy:\n    sys.exit(3)\n"
        )
        with RunDirectory(tmp):
            with RunDirectory(tmp):  # re-entrant in this process
                pass
            busy = subprocess.run([sys.executable, "-c", code, tmp], cwd=ROOT)
            assert busy.returncode == 3
        free = subprocess.run([sys.executable, "-c", code, tmp], cwd=ROOT)
        assert free.returncode == 0


def test_a_rerun_that_fails_early_is_not_complete(tmp_path):
    out = tmp_path / "job"
    run_probe(base_config(), out)
    assert job_status(out) == "complete"
    result = run_cli(PROBE, f"hydra.run.dir={out}")  # no +attack
    assert result.returncode == 2 and job_status(out) == "failed"
    run_probe(base_config(), out)
    result = run_cli(PROBE, "+attack=no_such_attack", f"hydra.run.dir={out}")  # Hydra's own composition error
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert job_status(out) == "failed" and "no_such_attack" in (out / "error.txt").read_text()


def test_a_sweep_with_failed_jobs_exits_nonzero_and_keeps_the_others(tmp_path):
    sweep = tmp_path / "sweep"
    bad = tmp_path / "nan.pt"
    state = build_model("small_cnn").model.state_dict()
    state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()}
    torch.save(state, bad)
    result = run_cli(
        PROBE, "-m", "+attack=l1q", "model=small_cnn_mnist5k_l2,small_cnn", f"model.checkpoint={bad}",
        "attack.q=0.9,1.5", *FAST, f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 1, result.stderr
    statuses = {job.name: job.status for job in collect_jobs(sweep)}
    assert statuses == {"0": "complete", "1": "failed", "2": "failed", "3": "failed"}
    summary = [line for line in result.stderr.splitlines() if "jobs of the sweep did not complete" in line]
    assert len(summary) == 1 and "job 1 failed" in summary[0] and "job 2 failed" in summary[0]
    assert "attack.q" in (sweep / "1" / "error.txt").read_text()
    nan_model = " ".join((sweep / "2" / "error.txt").read_text().split())
    assert "NaN or Inf outputs" in nan_model and "`model.checkpoint=...`" in nan_model  # named, no traceback
    assert "Traceback" not in nan_model
    assert read_metrics(sweep / "0")["summary"]["n_images"] == 4


def test_perturbations_hold_only_the_attacked_images(tmp_path):
    run_probe(base_config(n_images=2), tmp_path / "job")
    saved = load_perturbations(tmp_path / "job")
    for key in ("images", "xadv", "deltas", "clean_logits"):
        tensor = saved[key]
        assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size(), key
    assert (tmp_path / "job" / "perturbations.pt").stat().st_size < 100_000  # not the 1,000-image split


def test_ctrl_c_saves_the_finished_batches_and_exits_130(tmp_path):
    out = tmp_path / "job"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.Popen(
        [sys.executable, str(PROBE), "+attack=l1q", "attack.steps=100", "n_images=64", "batch_size=4",
         "progress=true", "threads=1", f"hydra.run.dir={out}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 120
    log = out / "probe.log"
    # the second batch's last step is logged only after the first batch was recorded as finished
    # (its own last step is logged before the batch is measured: signalling then finds nothing done)
    while not (log.is_file() and log.read_text().count("step 100/100") >= 2):
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("rai_probe:")]
    assert len(lines) == 1 and "interrupted after" in lines[0]
    assert job_status(out) == "interrupted"
    metrics = read_metrics(out)
    finished = metrics["rows_finished"]
    assert 4 <= finished < 64 and finished % 4 == 0 and metrics["rows_planned"] == 64
    assert load_perturbations(out)["xadv"].shape[0] == finished == metrics["summary"]["n_images"]
    jobs = collect_jobs(out)
    assert jobs[0].status == "interrupted"
    report = write_report(out, tmp_path / "report")
    assert "Interrupted jobs" in report["markdown"].read_text()


def test_outputs_respect_the_umask(tmp_path):
    out = tmp_path / "job"
    result = run_cli(PROBE, "+attack=l1q", *FAST, f"hydra.run.dir={out}", preexec_fn=lambda: os.umask(0o027))
    assert result.returncode == 0, result.stderr
    for name in ("metrics.json", "per_image.csv", "perturbations.pt"):
        assert (out / name).stat().st_mode & 0o777 == 0o640, name


def test_a_run_directory_shadowed_by_a_file_is_one_paragraph(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run_cli(PROBE, "+attack=l1q", f"hydra.run.dir={blocker / 'run'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "hydra.run.dir" in result.stderr


# --------------------------------------------------------------------------- #
# 4-5. errors checked early, naming what the user typed, printed once, paths unbroken
# --------------------------------------------------------------------------- #
def test_errors_name_the_override_as_typed_and_print_once(tmp_path):
    out = tmp_path / "job-with-a-long-hyphenated-name" / "run-directory-with-hyphens"
    result = run_cli(PROBE, "+attack=l1q", "+attack.epsilom=3", f"hydra.run.dir={out}")
    assert result.returncode == 2
    text = " ".join(result.stderr.split())
    assert "`+attack.epsilom=3`" in text and text.count("unknown setting") == 1
    result = run_cli(PROBE, "+attack=l1q_normed", "attack.smoothing_sigma=-1", f"hydra.run.dir={out}")
    assert result.returncode == 2
    assert "`attack.smoothing_sigma=...`" in " ".join(result.stderr.split())


def test_param_ndim_is_checked_against_the_real_images(tmp_path):
    run_probe(base_config(attack__options={"param_ndim": 3}), tmp_path / "ok")  # rows of (C, H, W)
    with pytest.raises(ConfigError) as caught:
        run_probe(base_config(attack__options={"param_ndim": 5}), tmp_path / "bad")
    assert caught.value.override == "attack.options.param_ndim"
    assert "(1, 1, 28, 28)" in str(caught.value) and "(2, 8)" not in str(caught.value)


def test_paragraphs_never_break_a_path():
    path = "/a/folder-with-hyphens/and-more-hyphens/checkpoint-file-name.pt"
    text = paragraph(f"rai_probe: cannot read the checkpoint {path} because it is not there", width=30)
    assert path in text.split("\n")


@pytest.mark.parametrize(
    "script, args, words",
    [
        (TRAIN, ["epochs=0"], "`epochs=...`"),
        (TRAIN, ["attack.optimizer=L5ProjectedOptim"], "`attack.optimizer=...`"),
        (TRAIN, ["+nonsense=1"], "`+nonsense=1`"),
        (TRAIN, ["eval_attacks.l2_eps2.lr=-1"], "`eval_attacks.l2_eps2.lr=...`"),
        (EVALUATE, ["n_eval=-1"], "`n_eval=...`"),
        (EVALUATE, ["checkpoint=/no/such/file.pt", "arch=small_cnn"], "/no/such/file.pt"),
        (EVALUATE, ["data_root=/no/such/dir", "data=mnist"], "/no/such/dir"),
    ],
)
def test_train_and_evaluate_report_bad_settings_in_one_paragraph(tmp_path, script, args, words):
    result = run_cli(script, *args, f"hydra.run.dir={tmp_path / 'job'}")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert words in " ".join(result.stderr.split())
    assert job_status(tmp_path / "job") == "failed"


def test_report_skips_a_job_whose_file_holds_code(tmp_path):
    sweep = tmp_path / "sweep"
    for job in ("0", "1"):
        run_probe(base_config(), sweep / job)
        (sweep / job / ".hydra").mkdir()
        (sweep / job / ".hydra" / "overrides.yaml").write_text(f"- seed={job}\n")
    marker = tmp_path / "PWNED"
    payload_checkpoint(sweep / "1" / "perturbations.pt", marker)
    written = write_report(sweep)
    assert not marker.exists()
    text = written["markdown"].read_text()
    assert "job 1: skipped in the gallery" in text and written["gallery"].is_file()


def test_more_images_than_the_split_warns(tmp_path, caplog):
    with caplog.at_level("WARNING"):
        outcome = run_probe(base_config(n_images=5000, attack__steps=1, figures={"max_grids": 0, "images_per_grid": 1},
                                        metrics={"faithfulness": False, "minimality": False}),  # the clamp, not metrics
                            tmp_path / "job")
    assert outcome["summary"]["n_images"] == 1000
    assert any("n_images=5000" in record.getMessage() and "1000" in record.getMessage() for record in caplog.records)


def test_a_busy_directory_in_process(tmp_path):
    code = (
        "import sys, time; from rai_probe.jobs.rundir import RunDirectory\n"
        "with RunDirectory(sys.argv[1]):\n    print('held', flush=True); time.sleep(30)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "job")], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError) as caught:
            run_probe(base_config(), tmp_path / "job")
        assert "in use by another live job" in str(caught.value)
        with pytest.raises(RunDirectoryBusy):
            RunDirectory(tmp_path / "job").__enter__()
    finally:
        holder.kill()
        holder.wait()

"""The sweep report over a synthetic Hydra multirun directory: table, statuses, pictures, CLI."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from rai_probe.probing.artifacts import save_perturbations, write_error, write_metrics
from rai_probe.probing.metrics import per_image_metrics, summarize
from rai_probe.probing.report import collect_jobs, report_rows, summary_line, write_report

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "report.py"


def _config(attack="l1q", epsilon=10.0, q=0.9, seed=0):
    attack_cfg = {"name": attack, "optimizer": "L1qFrankWolfe" if q is not None else "L2ProjectedGradientDescent",
                  "epsilon": epsilon, "steps": 20, "lr": 1.0}
    if q is not None:
        attack_cfg["q"] = q
    return {"mode": {"name": "explain", "targeted": False, "target": None}, "seed": seed, "device": "cpu", "n_images": 4, "batch_size": 4,
            "model": {"name": "small_cnn_mnist5k_l2"}, "data": {"name": "mnist5k", "split": "test"},
            "attack": attack_cfg}


def _start_job(job_dir, config, overrides):
    hydra = job_dir / ".hydra"
    hydra.mkdir(parents=True)
    (hydra / "config.yaml").write_text(yaml.safe_dump(config))
    (hydra / "overrides.yaml").write_text(yaml.safe_dump(overrides))


def _finish_job(job_dir, config, overrides, *, changed, successes, labels=(0, 1, 2, 0), extra=None):
    """Four 1x4x4 images; image i changes ``changed[i]`` pixels by 0.5 (L1 budget 4: budget_used
    ``changed[i] / 8``); ``successes`` of them reach another class."""
    images = torch.zeros(4, 1, 4, 4)
    xadv = images.clone()
    for i, count in enumerate(changed):
        xadv.view(4, -1)[i, :count] = 0.5
    success = torch.arange(4) < successes
    clean = torch.eye(3)[[0, 1, 2, 0]] * 3
    adv = torch.where(success.view(-1, 1), clean.roll(1, dims=1), clean)
    labels = torch.tensor(labels)
    steps = torch.where(success, torch.tensor(3), torch.tensor(-1))
    per_image = per_image_metrics(images, xadv, clean_logits=clean, adv_logits=adv, labels=labels,
                                  success=success, first_success_step=steps, epsilon=4.0, norm="l1")
    save_perturbations(job_dir, images=images, xadv=xadv, labels=labels, targets=None, clean_logits=clean,
                       adv_logits=adv, success=per_image["success"], first_success_step=steps,
                       loss_trace=torch.ones(5), class_names=["a", "b", "c"], epsilon=4.0, norm="l1")
    summary = summarize(per_image)
    write_metrics(job_dir, summary, config=config, overrides=overrides, extra=extra)
    return summary


@pytest.fixture
def sweep(tmp_path):
    """Six jobs: 4 complete (eps / q varied, one L2 attack without q), 1 failed, 1 unfinished."""
    root = tmp_path / "multirun" / "2026-01-01" / "12-00-00"
    plan = [
        ("l1q", 10.0, 0.9, "done", (1, 2, 3, 4), 2),
        ("l1q", 20.0, 0.9, "done", (2, 2, 4, 4), 3),
        ("l1q", 10.0, 0.99, "done", (1, 1, 1, 1), 1),
        ("l1q", 20.0, 0.99, "failed", None, None),
        ("l2", 1.0, None, "done", (16, 16, 16, 16), 4),
        ("l2", 2.0, None, "started", None, None),
    ]
    summaries = {}
    for job, (attack, epsilon, q, state, changed, successes) in enumerate(plan):
        overrides = [f"attack={attack}", f"attack.epsilon={epsilon}"] + ([f"attack.q={q}"] if q else [])
        config = _config(attack, epsilon, q)
        job_dir = root / str(job)
        _start_job(job_dir, config, overrides)
        if state == "done":
            summaries[str(job)] = _finish_job(job_dir, config, overrides, changed=changed, successes=successes)
        elif state == "failed":
            write_error(job_dir, "ValueError: attack.epsilon=20.0 is too large\n\n"
                                 "Traceback (most recent call last):\n  ...")
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root, summaries


def test_collect_jobs_reads_every_state(sweep):
    root, summaries = sweep
    jobs = collect_jobs(root)
    assert [job.name for job in jobs] == ["0", "1", "2", "3", "4", "5"]
    assert [job.status for job in jobs] == ["complete"] * 3 + ["failed", "complete", "unfinished"]
    assert jobs[0].params["epsilon"] == 10.0 and jobs[0].params["q"] == 0.9
    assert jobs[0].params["attack"] == "l1q" and jobs[0].params["model"] == "small_cnn_mnist5k_l2"
    assert jobs[0].params["mode"] == "explain" and "target" not in jobs[0].params  # target: null
    assert "q" not in jobs[4].params and jobs[4].params["optimizer"] == "L2ProjectedGradientDescent"
    assert jobs[1].summary == summaries["1"]
    assert jobs[3].error_line == "ValueError: attack.epsilon=20.0 is too large"
    assert jobs[5].summary is None and jobs[5].error is None
    assert jobs[5].overrides == ["attack=l2", "attack.epsilon=2.0"]
    assert summary_line(jobs) == "6 jobs: 4 complete, 1 failed (job 3), 1 unfinished (job 5)"


def test_report_table_and_files(sweep):
    root, summaries = sweep
    written = write_report(root)
    assert set(written) == {"csv", "markdown", "success_vs_epsilon", "sparsity_vs_epsilon", "gallery"}
    assert all(path.parent == root / "report" for path in written.values())
    for key in ("success_vs_epsilon", "sparsity_vs_epsilon", "gallery"):
        assert written[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert written[key].stat().st_size > 5_000

    with open(written["csv"], newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["job"] for row in rows] == ["0", "1", "2", "3", "4", "5"]
    assert [row["status"] for row in rows] == ["complete"] * 3 + ["failed", "complete", "unfinished"]
    assert [row["epsilon"] for row in rows] == ["10.0", "20.0", "10.0", "20.0", "1.0", "2.0"]
    assert [row["q"] for row in rows] == ["0.9", "0.9", "0.99", "0.99", "", ""]
    assert [row["success_rate"] for row in rows] == ["0.5", "0.75", "0.25", "", "1.0", ""]
    assert float(rows[0]["median_l0_fraction"]) == summaries["0"]["l0_fraction"]["median"] == 2.5 / 16
    assert float(rows[0]["clean_accuracy"]) == 1.0
    assert [row["robust_accuracy"] for row in rows] == ["0.5", "0.25", "0.75", "", "0.0", ""]
    assert [row["flip_rate"] for row in rows] == ["0.5", "0.75", "0.25", "", "1.0", ""]
    assert float(rows[0]["mean_budget_used"]) == summaries["0"]["budget_used"]["mean"] == (1 + 2 + 3 + 4) / 4 / 8
    assert rows[3]["note"] == "ValueError: attack.epsilon=20.0 is too large"
    assert "still running" in rows[5]["note"]

    markdown = written["markdown"].read_text()
    assert "6 jobs: 4 complete, 1 failed (job 3), 1 unfinished (job 5)." in markdown
    assert "**Partial sweep**: only 4 of 6 jobs completed" in markdown
    assert "Same in every job: mode=explain, model=small_cnn_mnist5k_l2, data=mnist5k" in markdown
    assert "- job 3: `ValueError: attack.epsilon=20.0 is too large`" in markdown
    assert "## Unfinished jobs" in markdown and "- job 5: no metrics.json" in markdown
    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 6  # header + one row per job
    assert "| 3 | failed |" in markdown and "| 0.5 |" in markdown
    header = table[0]
    for column in ("clean_accuracy", "robust_accuracy", "flip_rate", "success_rate", "mean_budget_used"):
        assert f" {column} |" in header, column
    assert "![gallery](gallery.png)" in markdown


def test_report_without_complete_jobs_skips_and_removes_pictures(sweep, tmp_path):
    root, _ = sweep
    out = tmp_path / "out"
    assert "gallery" in write_report(root, out)
    for job in ("0", "1", "2", "4"):
        (root / job / "metrics.json").unlink()
    written = write_report(root, out)
    assert set(written) == {"csv", "markdown"}
    assert sorted(path.name for path in out.iterdir()) == ["report.csv", "report.md"]  # stale pictures gone
    markdown = written["markdown"].read_text()
    assert "**No job completed**" in markdown
    assert "6 jobs: 0 complete, 1 failed (job 3), 5 unfinished (jobs 0, 1, 2, 4, 5)" in markdown


def test_report_notes_missing_perturbations_and_odd_jobs(tmp_path):
    root = tmp_path / "sweep"
    config = {**_config(), "mode": "probe"}  # a group given as a plain string
    for job in range(12):  # numeric order, not text order
        _start_job(root / str(job), config, ["attack.smoothing=2"] if job == 0 else [])
    _finish_job(root / "0", config, ["attack.smoothing=2"], changed=(1, 1, 1, 1), successes=4)
    (root / "0" / "perturbations.pt").unlink()
    (root / "1" / "error.txt").write_text("Traceback (most recent call last):\n  File x\nKeyError: 'q'\n")
    (root / "2" / ".hydra" / "config.yaml").write_text("attack: [unclosed\n")
    jobs = collect_jobs(root)
    assert [job.name for job in jobs] == [str(k) for k in range(12)]
    assert jobs[0].params["attack.smoothing"] == "2"  # a swept key not in the config: its override text
    assert jobs[1].error_line == "KeyError: 'q'"
    assert jobs[3].params["mode"] == "probe" and jobs[3].params["epsilon"] == 10.0
    assert any("config.yaml" in note for note in jobs[2].notes)
    columns, rows = report_rows(jobs)
    assert "attack.smoothing" in columns and rows[1]["note"] == "KeyError: 'q'"
    markdown = write_report(root, jobs=jobs)["markdown"].read_text()
    assert "job 0: skipped in the gallery" in markdown
    assert "unreadable .hydra/config.yaml" in markdown


def test_nested_sweeps_and_missing_directories(tmp_path):
    for group in ("b", "a"):
        _start_job(tmp_path / "multi" / group / "0", _config(), [])
    assert [job.name for job in collect_jobs(tmp_path / "multi")] == ["a/0", "b/0"]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        collect_jobs(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no job"):
        write_report(tmp_path / "empty")


def test_script_prints_the_summary(sweep, tmp_path):
    root, _ = sweep
    out = tmp_path / "elsewhere"
    result = subprocess.run([sys.executable, str(SCRIPT), str(root), "--out", str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines == [str(out / "report.md"), "6 jobs: 4 complete, 1 failed (job 3), 1 unfinished (job 5)"]
    assert (out / "gallery.png").exists()

    missing = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "nowhere")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2
    assert missing.stdout == ""
    assert "\n\n" not in missing.stderr.strip() and "nowhere" in missing.stderr  # one paragraph
    assert "Traceback" not in missing.stderr
    assert "Traceback" not in missing.stderr


def test_lines_of_the_epsilon_plots_group_by_q_and_average_seeds(tmp_path):
    from rai_probe.probing.report import JobRecord, _curves, _groups

    def job(name, attack, optimizer, epsilon, q, seed, rate):
        params = {"attack": attack, "optimizer": optimizer, "epsilon": epsilon, "seed": seed}
        if q is not None:
            params["q"] = q
        return JobRecord(tmp_path / name, "complete", [], params, {"attack_success_rate": rate}, None, name=name)

    jobs = [
        job("0", "l1q", "FW", 1.0, 0.9, 0, 0.2),
        job("1", "l1q", "FW", 1.0, 0.9, 1, 0.4),  # same settings, another seed: averaged
        job("2", "l1q", "FW", 2.0, 0.9, 0, 0.8),
        job("3", "l2", "PGD", 0.5, None, 0, 1.0),
    ]
    groups = _groups(jobs)
    assert list(groups) == ["attack=l1q, q=0.9", "attack=l2, q=n/a"]  # optimizer repeats attack: left out
    curves, averaged = _curves(groups, ("attack_success_rate",))
    assert averaged
    assert curves["attack=l1q, q=0.9"] == ([1.0, 2.0], [pytest.approx(0.3), 0.8])
    assert curves["attack=l2, q=n/a"] == ([0.5], [1.0])
    assert list(_groups(jobs[:3])) == ["q=0.9"]  # nothing else varies


def test_report_counts_no_clean_mistake_and_notes_an_unspendable_budget(tmp_path):
    root = tmp_path / "sweep"
    config = _config()
    _start_job(root / "0", config, [])
    # image 3 (label 1, predicted 0) is a clean mistake: its reaching another class is no success
    summary = _finish_job(root / "0", config, [], changed=(1, 1, 1, 1), successes=4, labels=(0, 1, 2, 1),
                          extra={"budget": {"norm": "l1", "epsilon": 20.0, "reachable_norm": 8.0}})
    assert summary["n_successful"] == 3 and summary["attack_success_rate"] == 1.0
    _start_job(root / "1", config, [])
    _finish_job(root / "1", config, [], changed=(1, 1, 1, 1), successes=1,
                extra={"budget": {"norm": "l1", "epsilon": 20.0, "reachable_norm": 20.0}})
    columns, rows = report_rows(collect_jobs(root))
    assert rows[0]["clean_accuracy"] == 0.75 and rows[0]["robust_accuracy"] == 0.0
    assert rows[0]["flip_rate"] == 1.0 and rows[0]["success_rate"] == 1.0
    assert rows[1]["robust_accuracy"] == 0.75 and rows[1]["flip_rate"] == 0.25
    assert "attack.epsilon=20 cannot be spent" in rows[0]["note"] and "above 8" in rows[0]["note"]
    assert rows[1]["note"] == ""  # it could reach its budget
    markdown = write_report(root)["markdown"].read_text()
    assert "job 0: attack.epsilon=20 cannot be spent" in markdown


def test_gallery_shows_an_image_that_succeeded_in_every_job():
    import torch

    from rai_probe.probing.report import _common_success, _gallery_image

    a = {"success": torch.tensor([False, True, True, False])}
    b = {"success": torch.tensor([True, False, True, True])}
    assert _common_success([a, b]) == 2
    assert _common_success([a, {"success": torch.tensor([True, False, False, False])}]) is None
    assert _common_success([a, {"success": torch.tensor([True])}]) is None  # different images
    assert _gallery_image(a["success"], None) == 1 and _gallery_image(torch.tensor([False]), None) == 0

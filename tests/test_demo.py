"""The demo job (the README's main command) runs end to end and leaves its outputs."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_demo_script_writes_config_metrics_and_picture(tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "demo.py"),
            f"hydra.run.dir={run_dir}",
            "n_train=500",
            "n_test=40",
            "train_steps=150",
            "attack_steps=40",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (run_dir / "perturbations.png").stat().st_size > 10_000
    assert (run_dir / ".hydra" / "config.yaml").exists()
    assert metrics["config"]["attack_steps"] == 40
    assert metrics["clean_accuracy"] > 0.9
    sparse, dense = metrics["attacks"]["l1q_frank_wolfe"], metrics["attacks"]["l2_projected"]
    # the L1q attack fills its L1 budget with about 1 % of the pixels; the L2 one changes all
    assert abs(sparse["mean_l1"] - 20.0) < 1e-3
    assert sparse["mean_l0_fraction"] < 0.05
    assert dense["mean_l0_fraction"] > 0.9
    assert abs(dense["mean_l2"] - 2.0) < 1e-3
    assert sparse["success_rate"] > 0.5

"""Tests of the train job's optional TensorBoard logs (``tensorboard: true``, :mod:`rai_probe.training.tensorboard_log`).

No test needs the ``tensorboard`` package: a fake ``SummaryWriter`` stands in
for ``torch.utils.tensorboard``'s. What is checked: ``epoch_scalars`` of
adversarial and clean epoch records (with and without a held-out check);
a short train job with ``tensorboard=true`` opens one writer at
``<run dir>/tensorboard``, writes every epoch's scalars at step ``epoch``,
equal to ``history.json``, flushes each epoch and closes the writer; with
the default ``tensorboard=false`` no writer is asked for; without the
package the job stops before loading data or training, naming the
``tensorboard`` setting and the extra; a string ``"yes"`` is not a boolean.
"""

from __future__ import annotations

import json
import pathlib
import sys

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from rai_probe.jobs.errors import ConfigError
from rai_probe.jobs.config_dir import CONFIG_DIR
from rai_probe.training import run as training_run
from rai_probe.training import tensorboard_log
from rai_probe.training.run import train_from_config
from rai_probe.training.tensorboard_log import EXTRA, epoch_scalars

CONFIGS = CONFIG_DIR / "training"

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # restores the thread count the jobs set

SHORT = ["n_train=32", "n_eval=8", "eval_size=8", "epochs=2", "eval_every=1", "batch_size=16",
         "attack.steps=1", "threads=1", "progress=false"]


class FakeWriter:
    """Records what a ``SummaryWriter`` is given."""

    made: list["FakeWriter"] = []

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir
        self.scalars: list[tuple[int, str, float]] = []
        self.flushed_at: list[int] = []
        self.closed = False
        FakeWriter.made.append(self)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        assert not self.closed
        self.scalars.append((step, tag, value))

    def flush(self) -> None:
        self.flushed_at.append(len(self.scalars))

    def close(self) -> None:
        self.closed = True


def _cfg(*overrides: str) -> dict:
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIGS)):
        cfg = OmegaConf.to_container(compose("train", overrides=[*SHORT, *overrides]), resolve=True)
    cfg["eval_attacks"] = None  # the final report is not what is tested here
    return cfg


def test_epoch_scalars_of_adversarial_and_clean_records():
    adversarial = {"epoch": 3, "loss": 1.25, "adversarial_accuracy": 0.5, "lr": 0.01, "seconds": 2.0,
                   "eval": {"n": 4, "clean_accuracy": 0.75, "robust_accuracy": {"l2": 0.25, "linf": 0.0}}}
    assert epoch_scalars(adversarial) == {
        "train/loss": 1.25, "train/adversarial_accuracy": 0.5, "train/lr": 0.01,
        "eval/clean_accuracy": 0.75, "eval/robust_accuracy/l2": 0.25, "eval/robust_accuracy/linf": 0.0,
    }
    clean = {"epoch": 1, "loss": 2.0, "train_accuracy": 0.125, "lr": 0.1, "seconds": 1.0}
    assert epoch_scalars(clean) == {"train/loss": 2.0, "train/accuracy": 0.125, "train/lr": 0.1}
    assert epoch_scalars({**clean, "eval": {"n": 4, "clean_accuracy": 1.0, "robust_accuracy": {}}}) == {
        "train/loss": 2.0, "train/accuracy": 0.125, "train/lr": 0.1, "eval/clean_accuracy": 1.0}


def test_train_job_writes_each_epoch_to_tensorboard(tmp_path, monkeypatch):
    FakeWriter.made = []
    monkeypatch.setattr(tensorboard_log, "summary_writer_class", lambda: FakeWriter)
    train_from_config(_cfg("tensorboard=true"), tmp_path / "run")
    (writer,) = FakeWriter.made
    assert pathlib.Path(writer.log_dir) == tmp_path / "run" / "tensorboard"
    assert writer.closed
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(history) == 2
    expected = []
    for record in history:
        expected += [
            (record["epoch"], "train/loss", record["loss"]),
            (record["epoch"], "train/adversarial_accuracy", record["adversarial_accuracy"]),
            (record["epoch"], "train/lr", record["lr"]),
            (record["epoch"], "eval/clean_accuracy", record["eval"]["clean_accuracy"]),
            (record["epoch"], "eval/robust_accuracy/train_attack", record["eval"]["robust_accuracy"]["train_attack"]),
        ]
    assert writer.scalars == expected  # exactly the numbers of history.json
    assert writer.flushed_at == [5, 10]  # after each epoch's scalars


def test_no_writer_is_asked_for_by_default(tmp_path, monkeypatch):
    def no_writer():
        raise AssertionError("a SummaryWriter was asked for")

    monkeypatch.setattr(tensorboard_log, "summary_writer_class", no_writer)
    cfg = _cfg("epochs=1", "attack=null")
    assert cfg["tensorboard"] is False
    train_from_config(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "tensorboard").exists()


def test_without_the_package_the_job_names_the_extra_before_any_work(tmp_path, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("the job went on without tensorboard")

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # importing it fails, installed or not
    monkeypatch.setattr(training_run, "load_dataset", no_work)
    monkeypatch.setattr(training_run, "adversarial_train", no_work)
    with pytest.raises(ConfigError) as caught:
        train_from_config(_cfg("tensorboard=true"), tmp_path / "run", ["tensorboard=true"])
    assert caught.value.override == "tensorboard"
    assert EXTRA in str(caught.value) and "`tensorboard`" in str(caught.value)


def test_tensorboard_must_be_a_real_boolean(tmp_path, monkeypatch):
    monkeypatch.setattr(tensorboard_log, "summary_writer_class", lambda: FakeWriter)
    cfg = {**_cfg(), "tensorboard": "yes"}
    with pytest.raises(ConfigError, match="`tensorboard` must be true or false") as caught:
        train_from_config(cfg, tmp_path / "run", ["tensorboard=yes"])
    assert caught.value.override == "tensorboard"

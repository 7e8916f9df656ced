"""The train and evaluate jobs' settings as typed dataclasses (``rai_probe/configs/training/train.yaml``, ``rai_probe/configs/training/evaluate.yaml``).

Checked strictly, before anything is loaded, by
:func:`~rai_probe.jobs.schema.check_settings` (see there for the rules: a
boolean is a real ``true``/``false``, a number a finite number in range, no
unknown keys). The training ``attack`` and the attacks of ``eval_attacks``
are one schema, :class:`~rai_probe.perturbations.Attack`, and are checked by
:meth:`~rai_probe.perturbations.Attack.from_dict` (as strictly: a string is
never a number or a boolean, an unknown key is named); the ensemble entries
of ``eval_attacks`` (``{ensemble: [names...]}``) against
:class:`EnsembleEntrySettings`, then by
:meth:`~rai_probe.perturbations.ensemble.AttackEnsemble.from_dict`.

Examples
--------
>>> check_job_settings({"epochs": "20"}, TrainSettings, [])
Traceback (most recent call last):
...
rai_probe.jobs.errors.ConfigError: `epochs` must be an integer >= 1; got '20' (a string). Fix it with the override `epochs=...`.
>>> check_job_settings({"tensorboard": "no"}, TrainSettings, ["tensorboard=no"])
Traceback (most recent call last):
...
rai_probe.jobs.errors.ConfigError: `tensorboard` must be true or false; got 'no' (a string: on the command line write tensorboard=true or tensorboard=false). Fix it with the override `tensorboard=...`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping, Optional, Sequence, Union

from ..jobs.schema import check_job_settings, setting

__all__ = ["TrainSettings", "EvaluateSettings", "EnsembleEntrySettings", "check_job_settings"]


@dataclass
class EnsembleEntrySettings:
    """An ``eval_attacks`` entry measuring the worst case over other entries (``ensemble: [l1_eps10, ...]``).

    ``ensemble`` lists the names of other entries of the group (attacks of
    one threat model, run in that order), or maps member names to attack
    settings (inline members, as recorded in a checkpoint's metrics).
    ``run_all`` runs every member on every image (same robust accuracy, more
    cost).
    """

    ensemble: Union[list[str], dict[str, Any]] = setting()
    run_all: bool = False


@dataclass
class TrainSettings:
    """``rai_probe/configs/training/train.yaml``."""

    model: str = "small_cnn"
    data: str = "mnist5k"
    data_root: Optional[str] = None
    train_split: str = "train"
    eval_split: str = "test"
    n_train: Optional[int] = setting(None, low=1)
    n_eval: Optional[int] = setting(None, low=1)
    device: str = "cpu"
    threads: Optional[int] = setting(None, low=1)
    seed: int = 0
    epochs: int = setting(20, low=1)
    batch_size: int = setting(64, low=1)
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = setting(1.0e-3, low=0, low_open=True)
    weight_decay: float = setting(0.0, low=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: float = setting(1.0, low=0)
    max_shift: int = setting(1, low=0)
    clean_weight: float = setting(0.0, low=0, high=1)
    attack: Optional[dict[str, Any]] = None  # an Attack (Attack.from_dict); null: standard training
    attack_warmup_epochs: float = setting(0.0, low=0)
    eval_every: int = setting(5, low=1)
    eval_size: int = setting(500, low=1)
    export: Optional[str] = None
    eval_attacks: Optional[dict[str, Any]] = None
    progress: bool = True
    tensorboard: bool = False


@dataclass
class EvaluateSettings:
    """``rai_probe/configs/training/evaluate.yaml``."""

    model: Optional[str] = "small_cnn_mnist5k_l2"
    checkpoint: Optional[str] = None
    arch: Optional[str] = None
    trust_checkpoint: bool = False
    data: str = "mnist5k"
    data_root: Optional[str] = None
    split: str = "test"
    n_eval: Optional[int] = setting(None, low=1)
    batch_size: int = setting(250, low=1)
    device: str = "cpu"
    threads: Optional[int] = setting(None, low=1)
    seed: int = 0
    eval_attacks: Optional[dict[str, Any]] = None
    progress: bool = True

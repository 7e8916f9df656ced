"""The train and evaluate jobs' settings as typed dataclasses (``configs/training/train.yaml``, ``configs/training/evaluate.yaml``).

Checked strictly, before anything is loaded, by
:func:`~rai_probe.jobs.schema.check_settings` (see there for the rules: a
boolean is a real ``true``/``false``, a number a finite number in range, no
unknown keys). The attacks of ``eval_attacks`` are checked by
:meth:`~rai_probe.perturbations.Attack.from_dict`; its ensemble entries
(``{ensemble: [names...]}``) against :class:`EnsembleEntrySettings`, then by
:meth:`~rai_probe.perturbations.ensemble.AttackEnsemble.from_dict`.

Examples
--------
>>> check_job_settings({"epochs": "20"}, TrainSettings, [])
Traceback (most recent call last):
...
rai_probe.jobs.errors.ConfigError: `epochs` must be an integer >= 1; got '20' (a string). Fix it with the override `epochs=...`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Optional, Sequence, Union

from ..jobs.schema import check_job_settings, setting

__all__ = ["TrainAttackSettings", "TrainSettings", "EvaluateSettings", "EnsembleEntrySettings", "check_job_settings"]


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
class TrainAttackSettings:
    """``train.yaml``'s ``attack`` block: the PGD attack of adversarial training."""

    norm: str = "l2"  # l2 | linf | l1 | none, checked by training_attack
    epsilon: Optional[float] = setting(None, low=0, low_open=True)
    steps: Optional[int] = setting(None, low=1)
    step_size: Optional[float] = setting(None, low=0, low_open=True)
    q: float = setting(0.99, low=0, high=1)
    warmup_epochs: float = setting(0.0, low=0)


@dataclass
class TrainSettings:
    """``configs/training/train.yaml``."""

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
    attack: TrainAttackSettings = field(default_factory=TrainAttackSettings)
    eval_every: int = setting(5, low=1)
    eval_size: int = setting(500, low=1)
    export: Optional[str] = None
    eval_attacks: Optional[dict[str, Any]] = None
    progress: bool = True


@dataclass
class EvaluateSettings:
    """``configs/training/evaluate.yaml``."""

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

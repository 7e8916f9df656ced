"""The probe job's settings as typed dataclasses (``rai_probe/configs/probe.yaml`` and its groups).

:func:`check_probe_settings` checks a whole composed config against
:class:`ProbeSettings` before anything is loaded: every boolean is a real
``true``/``false``, every number a finite number in its range, every key
known (the attack's extra keys are named by :class:`~rai_probe.perturbations.Attack`,
the data loader's by the loader). Range checks that need the lower layers
(an optimizer's options, a class index) stay with them.

Examples
--------
>>> settings = {"n_images": 4, "progress": "no"}
>>> check_probe_settings(settings, overrides=["progress=no"])
Traceback (most recent call last):
...
rai_probe.jobs.errors.ConfigError: `progress` must be true or false; got 'no' (a string: on the command line write progress=true or progress=false). Fix it with the override `progress=...`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Optional, Sequence, Union

from ..jobs.schema import check_job_settings, setting

__all__ = [
    "ProbeSettings",
    "AttackSettings",
    "ModelSettings",
    "DataSettings",
    "ModeSettings",
    "FigureSettings",
    "check_probe_settings",
]


@dataclass
class AttackSettings:
    """``attack/*.yaml``: the fields of :class:`~rai_probe.perturbations.Attack` plus ``name``, ``q``, ``dq``."""

    open_keys = True  # unknown keys are named by Attack.from_dict

    optimizer: str = setting()
    epsilon: float = setting(low=0, low_open=True)
    name: Optional[str] = None
    q: Optional[float] = setting(None, low=0, high=1)
    dq: Optional[float] = setting(None, low=0, high=1)
    steps: int = setting(10, low=1)
    lr: float = setting(1.0, low=0, low_open=True)
    random_init: Optional[str] = None
    smoothing_sigma: Optional[float] = setting(None, low=0, low_open=True)
    use_best: bool = False
    early_stop: bool = False
    confidence: Optional[float] = setting(None, low=0, high=1)
    data_range: Optional[list[float]] = setting(None, length=2)
    options: Optional[dict[str, Any]] = None


@dataclass
class ModelSettings:
    """``model/*.yaml``: a shipped model (``pretrained``) or a checkpoint file."""

    name: Optional[str] = None
    pretrained: Optional[str] = None
    arch: Optional[str] = None
    checkpoint: Optional[str] = None
    trust_checkpoint: bool = False
    num_classes: Optional[int] = setting(None, low=1)
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None


@dataclass
class DataSettings:
    """``data/*.yaml``: the dataset's name and its loader's keyword arguments."""

    open_keys = True  # the loader names the keyword arguments it does not take

    name: str = setting()
    root: Optional[str] = None
    split: Optional[str] = None
    size: Optional[list[int]] = setting(None, low=1, length=2)
    mode: Optional[str] = None
    fit: Optional[str] = None
    shard: int = setting(0, low=0)
    num_shards: int = setting(1, low=1)
    level: Optional[float] = setting(None, low=0, high=1)


@dataclass
class ModeSettings:
    """``mode/*.yaml``: explain, probe, minimal, contrast or universal (docs/tutorial.md, "Modes").

    Every mode takes ``name``, ``targeted``, ``target`` and ``select``; the
    other keys belong to the mode whose file declares them (Hydra refuses a
    key the chosen mode's file does not have).
    """

    name: Optional[str] = None
    targeted: bool = False
    target: Optional[Union[int, str]] = None
    select: Literal["all", "correct", "misclassified"] = "all"
    # mode=minimal: each image's smallest successful radius
    epsilon_min: Optional[float] = setting(None, low=0, low_open=True)
    epsilon_max: Optional[float] = setting(None, low=0, low_open=True)
    tolerance: float = setting(0.05, low=0, low_open=True, high=1)
    steps: Optional[int] = setting(None, low=1)
    warm_start: bool = True
    # mode=contrast: source-class images toward the target class
    source: Optional[Union[int, str]] = None
    # mode=universal: one perturbation for all images (or one per class)
    per_class: bool = False
    epochs: int = setting(20, low=1)
    holdout: float = setting(0.25, low=0, low_open=True, high=1)


@dataclass
class FigureSettings:
    max_grids: int = setting(4, low=0)
    images_per_grid: int = setting(8, low=1)


@dataclass
class MetricSettings:
    """``metrics:``: explanation-quality metrics (:mod:`rai_probe.probing.quality`) and their cost."""

    faithfulness: bool = True
    curve_points: int = setting(16, low=1)
    random_baseline: bool = True
    minimality: bool = True
    max_greedy_pixels: int = setting(128, low=0)
    stability_restarts: int = setting(0, low=0)


@dataclass
class ProbeSettings:
    """``rai_probe/configs/probe.yaml``."""

    seed: int = 0
    device: str = "cpu"
    threads: Optional[int] = setting(None, low=1)
    n_images: int = setting(16, low=1)
    batch_size: int = setting(64, low=1)
    progress: bool = True
    resume: bool = False
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    compile: bool = False
    figures: FigureSettings = field(default_factory=FigureSettings)
    metrics: MetricSettings = field(default_factory=MetricSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    data: Optional[DataSettings] = None
    mode: ModeSettings = field(default_factory=ModeSettings)
    attack: Optional[AttackSettings] = None


def check_probe_settings(settings: Mapping[str, Any], overrides: Sequence[str] = ()) -> None:
    """Check a probe config against :class:`ProbeSettings`; a problem is a :class:`~rai_probe.jobs.errors.ConfigError`.

    Keys left out keep their defaults, so an in-process call may pass a
    partial config.
    """
    check_job_settings(settings, ProbeSettings, overrides)

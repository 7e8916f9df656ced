"""The first stages of a probe job: its checked settings (:class:`ProbeJob`), then its model and images.

:func:`checked_job` checks every setting that can be checked without
loading anything; :func:`load_inputs` loads the model, checks the attack's
shape-dependent options against its input and warns when the attack cannot
spend its budget, then loads the images.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from ..data import ImageDataset
from ..jobs.config_dir import available
from ..jobs.errors import typed_override
from ..models import NormalizedModel
from ..perturbations.attacks import Attack
from ..perturbations.ensemble import attack_norm
from ..runtime import select_device, set_threads
from .acceleration import accelerated
from .minimal import MinimalSearch, minimal_search
from .schema import check_probe_settings
from .selection import needs_selection
from .settings import ProbeConfigError, attack_from_config, check_attack_shape, data_from_config, model_from_config

__all__ = ["ProbeJob", "ProbeInputs", "require_attack", "checked_job", "load_inputs"]

log = logging.getLogger("rai_probe.probing.run")


@dataclass
class ProbeJob:
    """The checked settings of one probe job (nothing loaded yet)."""

    cfg: Mapping[str, Any]
    overrides: Sequence[str]
    n_images: int
    batch_size: int
    seed: int
    device: torch.device
    mode: dict
    targeted: bool
    attack: Attack
    progress: bool
    max_grids: int
    images_per_grid: int
    shard: int = 0
    num_shards: int = 1
    resume: bool = False
    precision: str = "fp32"
    compile: bool = False
    metrics: dict = field(default_factory=dict)
    minimal: MinimalSearch | None = None  # mode=minimal: the ε* search

    @property
    def mode_name(self) -> str:
        """``explain``, ``probe``, ``minimal``, ``contrast`` or ``universal``."""
        return str(self.mode.get("name") or ("probe" if self.targeted else "explain"))


@dataclass
class ProbeInputs:
    """The model, the source images and what the attack can reach on them."""

    model: NormalizedModel
    data: ImageDataset
    class_names: list[str]
    reachable: float | None
    classifier: torch.nn.Module | None = None  # what runs the images: the model, maybe under autocast / compiled

    def __post_init__(self) -> None:
        if self.classifier is None:
            self.classifier = self.model


def require_attack(cfg: Mapping[str, Any], overrides: Sequence[str]) -> None:
    """Refuse a config without an attack group, listing the shipped attacks (``+attack=<name>``)."""
    if cfg.get("attack") is None:
        raise ProbeConfigError(
            "no attack chosen: add one of " + ", ".join(f"+attack={name}" for name in available("attack")),
            typed_override("+attack", overrides),
        )


def checked_job(cfg: Mapping[str, Any], overrides: Sequence[str]) -> ProbeJob:
    """Every setting that can be checked without loading anything, checked."""
    require_attack(cfg, overrides)
    check_probe_settings(cfg, overrides)
    try:
        set_threads(cfg.get("threads"))
    except ValueError as error:
        raise ProbeConfigError(str(error), typed_override("threads", overrides)) from None
    try:
        device = select_device(cfg.get("device", "cpu"))
    except ValueError as error:
        raise ProbeConfigError(str(error), typed_override("device", overrides)) from None
    mode = dict(cfg.get("mode") or {})
    targeted = _targeted(mode, overrides)
    figures = dict(cfg.get("figures") or {})
    data = dict(cfg.get("data") or {})
    shard, num_shards = data.get("shard", 0), data.get("num_shards", 1)
    if not shard < num_shards:
        raise ProbeConfigError(
            f"data.shard={shard} must be in [0, data.num_shards - 1] = [0, {num_shards - 1}]",
            typed_override("data.shard", overrides),
        )
    attack = attack_from_config(cfg["attack"], targeted=targeted, overrides=overrides)
    _check_mode_goal(mode, attack, overrides)
    minimal = None
    if mode.get("name") == "minimal":
        minimal = minimal_search(mode, attack, lambda key: typed_override(key, overrides))
    return ProbeJob(
        cfg=cfg,
        overrides=overrides,
        n_images=cfg.get("n_images", 16),
        batch_size=cfg.get("batch_size", 64),
        seed=cfg.get("seed", 0),
        device=device,
        mode=mode,
        targeted=targeted,
        attack=attack,
        progress=cfg.get("progress", True),
        max_grids=figures.get("max_grids", 4),
        images_per_grid=figures.get("images_per_grid", 8),
        shard=shard,
        num_shards=num_shards,
        resume=cfg.get("resume", False),
        precision=cfg.get("precision", "fp32"),
        compile=cfg.get("compile", False),
        metrics=_metric_settings(cfg, overrides),
        minimal=minimal,
    )


def _targeted(mode: Mapping[str, Any], overrides: Sequence[str]) -> bool:
    """Whether the mode's attack is targeted: ``mode.targeted``, or a per-image target (label / prediction)."""
    target = mode.get("target")
    per_image = isinstance(target, str) and target.lower() in ("label", "prediction")
    if mode.get("name") == "contrast":
        source = mode.get("source")
        if source is not None and source == target:
            raise ProbeConfigError(
                f"mode.source={source!r} and mode.target={target!r} are the same class: a contrast "
                "moves images of one class toward another",
                typed_override("mode.target", overrides),
            )
        if not mode.get("targeted", True):
            raise ProbeConfigError("mode=contrast is targeted (source images toward the target class): "
                                   "leave mode.targeted=true", typed_override("mode.targeted", overrides))
    return bool(mode.get("targeted", False)) or per_image


def _check_mode_goal(mode: Mapping[str, Any], attack: Attack, overrides: Sequence[str]) -> None:
    """``mode.target=prediction`` asks for more confidence in the clean prediction: it needs ``attack.confidence``."""
    target = mode.get("target")
    if isinstance(target, str) and target.lower() == "prediction" and attack.confidence is None:
        raise ProbeConfigError(
            "mode.target=prediction moves each image toward its own clean prediction, a goal it already "
            "meets: set a confidence goal, e.g. attack.confidence=0.99 (what the prediction relies on)",
            typed_override("attack.confidence", overrides),
        )


def _metric_settings(cfg: Mapping[str, Any], overrides: Sequence[str]) -> dict:
    metrics = {"faithfulness": True, "curve_points": 16, "random_baseline": True, "minimality": True,
               "max_greedy_pixels": 128, "stability_restarts": 0, **dict(cfg.get("metrics") or {})}
    if metrics["stability_restarts"] == 1:
        raise ProbeConfigError(
            "metrics.stability_restarts=1 compares a run with nothing: use 0 (off) or R >= 2 runs",
            typed_override("metrics.stability_restarts", overrides),
        )
    return metrics


def reachable_norm(attack: Attack, image_shape: Sequence[int]) -> float | None:
    """The largest norm any iterate of ``attack`` can reach on images of ``image_shape``, when the attack can say.

    Asks ``Attack.reachable_norm(data_shape, data_range)`` (``data_shape``:
    one image, ``(1, C, H, W)``); ``None`` when the attack has no such query
    or says its iterates are unbounded (``None`` or infinity).
    """
    query = getattr(attack, "reachable_norm", None)
    if not callable(query):
        return None
    reachable = query((1, *image_shape), attack.data_range)
    if reachable is None:
        return None
    reachable = float(reachable)
    return reachable if reachable < float("inf") else None


def warn_if_budget_unspendable(attack: Attack, image_shape: Sequence[int], reachable: float | None) -> None:
    """One log warning when no iterate of ``attack`` can reach its ε (``reachable``: the largest norm one can)."""
    if reachable is None or reachable >= attack.epsilon * (1 - 1e-6):
        return
    norm = {"l1": "an L1", "l2": "an L2", "linf": "an L∞"}.get(attack_norm(attack) or "", "a")
    q = attack.options.get("q")
    log.warning(
        "attack.epsilon=%g cannot be spent: %s%s on %s images in data_range %s reaches at most %s norm of %.4g, "
        "so budget_used stays <= %.3f (lower attack.q to keep more entries per step, or lower attack.epsilon)",
        attack.epsilon,
        attack.optimizer,
        f" (q={q:g})" if isinstance(q, (int, float)) and not isinstance(q, bool) else "",
        "x".join(map(str, image_shape)),
        list(attack.data_range) if attack.data_range is not None else "unbounded",
        norm,
        reachable,
        reachable / attack.epsilon,
    )


def load_inputs(job: ProbeJob) -> ProbeInputs:
    """Load the model, check the attack against its input shape, then load the images."""
    cfg, overrides = job.cfg, job.overrides
    model = model_from_config(cfg["model"], job.device, overrides)
    shape = tuple(model.info.input_shape)
    check_attack_shape(job.attack, cfg["attack"], shape, overrides)
    reachable = reachable_norm(job.attack, shape)
    warn_if_budget_unspendable(job.attack, shape, reachable)
    data_cfg = {key: value for key, value in cfg["data"].items() if key not in ("shard", "num_shards")}
    n_images = None if needs_selection(job.mode) else job.n_images  # selected from the whole split
    data = data_from_config(data_cfg, model, n_images=n_images, seed=job.seed, overrides=overrides)
    if not job.targeted and not data.labeled and cfg["data"].get("name") in ("noise", "gray"):
        raise ProbeConfigError(
            f"data={cfg['data']['name']} gives seeds without labels, which only make sense as "
            "starting points of a targeted probe: add mode=probe",
            typed_override("mode", overrides),
        )
    class_names = list(model.info.class_names)
    default_names = [str(i) for i in range(model.info.num_classes)]
    if class_names == default_names and len(data.class_names) == len(class_names):
        class_names = list(data.class_names)  # e.g. a CIFAR-10 checkpoint that records no names
    example = data.images[: min(2, len(data))].to(job.device)
    classifier = accelerated(model, precision=job.precision, compile=job.compile, device=job.device, example=example)
    return ProbeInputs(model=model, data=data, class_names=class_names, reachable=reachable, classifier=classifier)

"""From a probe config to checked objects: the attack, the model, the images and the plan.

Every problem is a :class:`ProbeConfigError` naming the override that fixes
it (``attack.q=...``, ``model.checkpoint=...``, ``data.root=...``), so the CLI
can print one paragraph instead of a traceback.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor

from ..data import DataFormatError, ImageDataset, load_dataset, make_seeds
from ..models import (
    CheckpointError,
    NormalizedModel,
    load_checkpoint,
    load_pretrained,
)
from ..perturbations.attacks import Attack

__all__ = [
    "ProbeConfigError",
    "MISSING",
    "attack_from_config",
    "model_from_config",
    "data_from_config",
    "ProbePlan",
    "plan_from_config",
]

#: How an unset mandatory value (``???`` in a config file) arrives after ``to_container``.
MISSING = "???"

#: Attack settings that are optimizer options (everything else maps to :class:`Attack` fields).
_OPTIMIZER_KEYS = ("q", "dq")
_ATTACK_FIELDS = (
    "optimizer",
    "epsilon",
    "steps",
    "lr",
    "random_init",
    "smoothing_sigma",
    "use_best",
    "early_stop",
    "confidence",
    "data_range",
)


class ProbeConfigError(ValueError):
    """A probe config that cannot run, with the override that fixes it.

    Parameters
    ----------
    message : str
        What is wrong.
    override : str
        The config key to change, e.g. ``"attack.q"``.
    """

    def __init__(self, message: str, override: str) -> None:
        self.override = override
        super().__init__(f"{message.rstrip('.')}. Fix it with the override `{override}=...`.")


def _require(section: Mapping[str, Any], key: str, where: str, hint: str = "") -> Any:
    value = section.get(key)
    if value is None or value == MISSING:
        raise ProbeConfigError(f"{where}.{key} is required{hint}", f"{where}.{key}")
    return value


def _blame(message: str, where: str, known: tuple[str, ...]) -> str:
    """The config key a lower-level message names (its first backquoted known name)."""
    for name in re.findall(r"`(\w+)`", message):
        if name in known:
            return f"{where}.{name}"
    return where


def attack_from_config(settings: Mapping[str, Any], *, targeted: bool) -> Attack:
    """The :class:`Attack` an ``attack`` config group describes (``targeted`` comes from the mode).

    Examples
    --------
    >>> attack = attack_from_config(
    ...     {"name": "l1q", "optimizer": "L1qFrankWolfe", "epsilon": 20, "q": 0.99, "steps": 5},
    ...     targeted=False)
    >>> attack.optimizer, attack.epsilon, attack.options
    ('L1qFrankWolfe', 20.0, {'q': 0.99})
    >>> attack_from_config({"optimizer": "L1qFrankWolfe", "epsilon": 20, "q": 2.0}, targeted=False)
    Traceback (most recent call last):
    ...
    rai_probe.probing.settings.ProbeConfigError: attack: L1qFrankWolfe: option `q` must be a real number within [0, 1]; got q=2.0. Fix it with the override `attack.q=...`.
    """
    values: dict[str, Any] = {key: settings[key] for key in _ATTACK_FIELDS if key in settings}
    options = dict(settings.get("options") or {})
    for key in _OPTIMIZER_KEYS:
        if settings.get(key) is not None:
            options[key] = settings[key]
    values["options"] = options
    values["targeted"] = targeted
    if isinstance(values.get("epsilon"), int) and not isinstance(values.get("epsilon"), bool):
        values["epsilon"] = float(values["epsilon"])
    if values.get("data_range") is not None:
        values["data_range"] = tuple(values["data_range"])
    known = _ATTACK_FIELDS + tuple(options) + _OPTIMIZER_KEYS
    try:
        return Attack(**values)
    except (TypeError, ValueError) as error:
        blamed = _blame(str(error), "attack", known)
        if blamed in {f"attack.{key}" for key in options if key not in _OPTIMIZER_KEYS}:
            blamed = f"attack.options.{blamed.split('.', 1)[1]}"
        raise ProbeConfigError(f"attack: {error}", blamed) from None


def model_from_config(settings: Mapping[str, Any], device: torch.device) -> NormalizedModel:
    """The classifier a ``model`` config group names: a shipped model or a checkpoint file."""
    name = settings.get("name", "model")
    if settings.get("pretrained"):
        try:
            return load_pretrained(settings["pretrained"]).to(device).eval()
        except (FileNotFoundError, ValueError) as error:
            raise ProbeConfigError(f"model={name}: {error}", "model.pretrained") from None
    path = _require(
        settings,
        "checkpoint",
        "model",
        f" for model={name}: the path of your checkpoint file "
        "(MadryLab robustness, RobustBench, plain state_dict or rai_probe format)",
    )
    try:
        model = load_checkpoint(
            path,
            settings.get("arch"),
            num_classes=settings.get("num_classes"),
            mean=settings.get("mean"),
            std=settings.get("std"),
            trust_checkpoint=bool(settings.get("trust_checkpoint", False)),
        )
    except FileNotFoundError as error:
        raise ProbeConfigError(f"model={name}: {error}", "model.checkpoint") from None
    except CheckpointError as error:
        override = "model.trust_checkpoint" if "trust_checkpoint" in str(error) else "model.checkpoint"
        if "num_classes" in str(error):
            override = "model.num_classes"
        raise ProbeConfigError(
            f"model={name}: the checkpoint {settings.get('checkpoint')} does not fit "
            f"(architecture {settings.get('arch')}): {error}",
            override,
        ) from None
    except (TypeError, ValueError) as error:
        raise ProbeConfigError(
            f"model={name}: {error}", _blame(str(error), "model", tuple(settings))
        ) from None
    return model.to(device).eval()


def data_from_config(
    settings: Mapping[str, Any], model: NormalizedModel, *, n_images: int, seed: int
) -> ImageDataset:
    """The first ``n_images`` source images a ``data`` config group describes, shaped for ``model``."""
    name = settings.get("name")
    shape = tuple(model.info.input_shape)
    try:
        if name in ("noise", "gray"):
            kwargs = {"level": float(settings.get("level", 0.5))} if name == "gray" else {}
            return make_seeds(name, n_images, shape, seed=seed, **kwargs)
        kwargs = {key: value for key, value in settings.items() if key != "name"}
        for key, value in kwargs.items():
            if value == MISSING:
                raise ProbeConfigError(
                    f"data={name} needs data.{key} (e.g. the folder holding the files)", f"data.{key}"
                )
        if name == "folder":
            if kwargs.get("size") is None:
                kwargs["size"] = shape[1:]
            if kwargs.get("mode", "auto") == "auto":
                kwargs["mode"] = "L" if shape[0] == 1 else "RGB"
        dataset = load_dataset(name, **kwargs)
    except FileNotFoundError as error:
        raise ProbeConfigError(f"data={name}: {error}", "data.root") from None
    except DataFormatError as error:
        raise ProbeConfigError(f"data={name}: {error}", "data.root") from None
    except (TypeError, ValueError) as error:
        if isinstance(error, ProbeConfigError):
            raise
        raise ProbeConfigError(f"data={name}: {error}", _blame(str(error), "data", tuple(settings) + ("root",))) from None
    if dataset.image_shape != shape:
        raise ProbeConfigError(
            f"data={name} gives {'x'.join(map(str, dataset.image_shape))} images but "
            f"the model ({model.info.arch}) takes {'x'.join(map(str, shape))}",
            "data",
        )
    if len(dataset) == 0:
        raise ProbeConfigError(f"data={name} holds no images", "data")
    return dataset.subset(min(n_images, len(dataset)))


@dataclass
class ProbePlan:
    """What to attack: one row per attacked image.

    Attributes
    ----------
    images : Tensor, shape-(M, C, H, W)
    labels : Tensor of int64, shape-(M,)
        True labels, -1 where unknown (seeds, unlabeled folders).
    targets : Tensor of int64, shape-(M,)
        Target classes of a targeted run, -1 otherwise.
    attack_target : Tensor of int64, shape-(M,)
        What the solver gets: the targets (targeted) or the labels to move
        away from (untargeted: the true label, or the model's clean
        prediction where the label is unknown).
    sources : Tensor of int64, shape-(M,)
        Index of each row's source image in the loaded data.
    """

    images: Tensor
    labels: Tensor
    targets: Tensor
    attack_target: Tensor
    sources: Tensor


def plan_from_config(
    mode: Mapping[str, Any], data: ImageDataset, model: NormalizedModel, clean_predictions: Tensor
) -> ProbePlan:
    """Expand the source images into the attacked rows the mode asks for.

    ``explain`` (untargeted): one row per image. ``probe`` / ``targeted``:
    every image toward ``mode.target`` (a class index) or, with
    ``target: all``, toward every class (rows image-major).
    """
    n = len(data)
    classes = model.info.num_classes
    labels = data.labels if data.labels is not None else torch.full((n,), -1, dtype=torch.long)
    labels = labels.to(clean_predictions.device)
    sources = torch.arange(n, device=clean_predictions.device)
    images = data.images.to(clean_predictions.device)
    if not bool(mode.get("targeted", False)):
        return ProbePlan(
            images=images,
            labels=labels,
            targets=torch.full_like(labels, -1),
            attack_target=torch.where(labels >= 0, labels, clean_predictions),
            sources=sources,
        )
    target = mode.get("target")
    if target is None or target == MISSING:
        raise ProbeConfigError("a targeted run needs mode.target (a class index or all)", "mode.target")
    if isinstance(target, str) and target.lower() == "all":
        rows = sources.repeat_interleave(classes)
        targets = torch.arange(classes, device=sources.device).repeat(n)
    else:
        if isinstance(target, str):
            names = list(model.info.class_names)
            if target not in names:
                raise ProbeConfigError(
                    f"mode.target={target!r} is not a class of the model (classes: {', '.join(names)})",
                    "mode.target",
                )
            target = names.index(target)
        if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < classes:
            raise ProbeConfigError(
                f"mode.target={target!r} is not a class of the model: use a class index in "
                f"[0, {classes - 1}] or all",
                "mode.target",
            )
        rows = sources
        targets = torch.full((n,), target, dtype=torch.long, device=sources.device)
    return ProbePlan(
        images=images[rows],
        labels=labels[rows],
        targets=targets,
        attack_target=targets,
        sources=rows,
    )

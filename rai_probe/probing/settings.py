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

from ..data import DataFormatError, ImageDataset, load_dataset
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

#: Attack settings lifted into the optimizer's options (the rest are :class:`Attack` fields).
_OPTIMIZER_KEYS = ("q", "dq")


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


def _blame(message: str, where: str, known: tuple[str, ...], options: tuple[str, ...] = ()) -> str:
    """The config key a lower-level message names: its first known name, quoted `x` or ['x'.

    A name in ``options`` is a key of the section's ``options`` mapping.
    """
    for name in re.findall(r"(?:`|\[')(\w+)", message):
        if name in options:
            return f"{where}.options.{name}"
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
    values = {key: value for key, value in settings.items() if key != "name" and key not in _OPTIMIZER_KEYS}
    options = dict(settings.get("options") or {})
    for key in _OPTIMIZER_KEYS:
        if settings.get(key) is not None:
            options[key] = settings[key]
    values["options"] = options
    values["targeted"] = targeted
    try:
        return Attack.from_dict(values)
    except (TypeError, ValueError) as error:
        nested = tuple(key for key in options if key not in _OPTIMIZER_KEYS)
        blamed = _blame(str(error), "attack", tuple(settings) + _OPTIMIZER_KEYS, nested)
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
    kwargs = {key: value for key, value in settings.items() if key != "name"}
    for key, value in kwargs.items():
        if value == MISSING:
            raise ProbeConfigError(
                f"data={name} needs data.{key} (e.g. the folder holding the files)", f"data.{key}"
            )
    if name in ("noise", "gray"):  # seeds take the model's input shape
        kwargs.update(n=n_images, image_shape=shape)
        if name == "noise":
            kwargs["seed"] = seed
    if name == "folder":
        if kwargs.get("size") is None:
            kwargs["size"] = shape[1:]
        if kwargs.get("mode", "auto") == "auto":
            kwargs["mode"] = "L" if shape[0] == 1 else "RGB"
    try:
        dataset = load_dataset(name, **kwargs)
    except (FileNotFoundError, DataFormatError) as error:
        raise ProbeConfigError(f"data={name}: {error}", "data.root") from None
    except (TypeError, ValueError) as error:
        blamed = _blame(str(error), "data", tuple(settings) + ("root",))
        raise ProbeConfigError(f"data={name}: {error}", blamed) from None
    if dataset.image_shape != shape:
        raise ProbeConfigError(
            f"data={name} gives {'x'.join(map(str, dataset.image_shape))} images but "
            f"the model ({model.info.arch}) takes {'x'.join(map(str, shape))}",
            "data",
        )
    if len(dataset) == 0:
        raise ProbeConfigError(f"data={name} holds no images", "data")
    if name == "folder" and dataset.labeled:
        dataset = _labels_as_model_classes(dataset, model)
    return dataset.subset(min(n_images, len(dataset)))


def _labels_as_model_classes(dataset: ImageDataset, model: NormalizedModel) -> ImageDataset:
    """Re-index a class-folder dataset's labels as the model's classes, by folder name.

    A folder's labels count its subfolders in sorted order, which means
    nothing to the model: ``cat/`` and ``dog/`` would become classes 0 and 1.
    Each subfolder must be named after one of the model's classes (its class
    name, or its class index).
    """
    model_names = list(model.info.class_names)
    index_of = {class_name: i for i, class_name in enumerate(model_names)}
    mapping = []
    for folder_name in dataset.class_names:
        if folder_name in index_of:
            mapping.append(index_of[folder_name])
        elif folder_name.isdigit() and int(folder_name) < len(model_names):
            mapping.append(int(folder_name))
        else:
            shown = ", ".join(model_names[:12]) + (", ..." if len(model_names) > 12 else "")
            raise ProbeConfigError(
                f"data=folder: the subfolder {folder_name!r} is not one of the model's classes "
                f"({shown}); name each class subfolder after a model class (or its index), "
                "or use a flat folder of images to explain the model's own predictions",
                "data.root",
            )
    labels = torch.tensor(mapping, dtype=torch.long)[dataset.labels]
    return ImageDataset(
        images=dataset.images,
        labels=labels,
        class_names=tuple(model_names),
        name=dataset.name,
        split=dataset.split,
    )


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

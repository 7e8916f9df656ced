"""From a probe config to checked objects: the attack, the model, the images and the plan.

Every problem is a :class:`ProbeConfigError` naming the override that fixes
it (``attack.q=...``, ``model.checkpoint=...``, ``data.root=...``), so the CLI
can print one paragraph instead of a traceback. Lower layers say which of
their settings was wrong in the ``setting`` attribute of the
:class:`~rai_probe.errors.SettingError` they raise; this module knows which
config section each layer was given and names the override from that field
(:func:`~rai_probe.jobs.errors.config_key`), never from the message text. The
override is named as the user typed it (``+attack.epsilom``), when they did.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from ..data import DataFormatError, ImageDataset, load_dataset
from ..errors import SettingError, UnknownSettingError
from ..jobs.errors import ConfigError, config_key, typed_override
from ..models import CheckpointError, NormalizedModel, load_checkpoint, load_pretrained
from ..perturbations.attacks import OPTION_ALIASES, Attack, option_keys

__all__ = [
    "ProbeConfigError",
    "MISSING",
    "attack_from_config",
    "model_from_config",
    "data_from_config",
    "ProbePlan",
    "plan_from_config",
]

log = logging.getLogger(__name__)

#: How an unset mandatory value (``???`` in a config file) arrives after ``to_container``.
MISSING = "???"

#: Seeds drawn when a job asks for a whole "split" of noise or gray seeds.
DEFAULT_SEEDS = 16

#: A probe setting that cannot work, naming the override that fixes it (``.override``).
ProbeConfigError = ConfigError


def _require(section: Mapping[str, Any], key: str, where: str, hint: str, overrides: Sequence[str]) -> Any:
    value = section.get(key)
    if value is None or value == MISSING:
        raise ProbeConfigError(f"{where}.{key} is required{hint}", typed_override(f"{where}.{key}", overrides))
    return value


def _blamed(
    error: Exception,
    section: str,
    known: Sequence[str],
    overrides: Sequence[str],
    *,
    prefix: str = "",
    options: Mapping[str, str] | None = None,
    default: str | None = None,
) -> ProbeConfigError:
    """The :class:`ProbeConfigError` of a lower layer's ``error`` about config ``section``.

    The override comes from the error's ``setting`` field; an error without
    one blames ``default`` (else the section itself).
    """
    if not isinstance(error, SettingError):
        error = SettingError(str(error))
    key = config_key(section, error, known, options)
    if error.setting is None and default is not None:
        key = default
    kind = UnknownSettingError if isinstance(error, UnknownSettingError) else SettingError
    shown = kind(f"{prefix}{error}", setting=error.setting, value=error.value)
    return ConfigError.from_setting_error(shown, key, overrides)


def attack_from_config(
    settings: Mapping[str, Any], *, targeted: bool, overrides: Sequence[str] = ()
) -> Attack:
    """The :class:`Attack` an ``attack`` config group describes (``targeted`` comes from the mode).

    The group is spelt as :meth:`Attack.from_dict` reads every attack config
    (its ``name`` a label, ``q``/``dq`` folded into the options); an error
    names the override that fixes it, from the error's ``setting``: an
    option is ``attack.options.<name>`` where it was written there, else
    ``attack.<name>``.

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
    rai_probe.jobs.errors.ConfigError: L1qFrankWolfe: option `q` must be a real number within [0, 1]; got q=2.0. Fix it with the override `attack.q=...`.
    >>> attack_from_config({"optimizer": "L1qFrankWolfe", "epsilon": 20, "q": 0.9, "epsilom": 3},
    ...                    targeted=False, overrides=["+attack.epsilom=3"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    rai_probe.jobs.errors.ConfigError: attack: unknown setting(s) ['epsilom']; allowed: ... Remove or correct the override `+attack.epsilom=3`.
    """
    try:
        return Attack.from_dict({**settings, "targeted": targeted})
    except (TypeError, ValueError) as error:
        where = {name: f"attack.{key}" for name, key in option_keys(settings).items()}
        raise _blamed(error, "attack", tuple(settings) + OPTION_ALIASES, overrides, options=where) from None


def check_attack_shape(attack: Attack, settings: Mapping[str, Any], shape: Sequence[int],
                       overrides: Sequence[str] = ()) -> None:
    """Check the attack's shape-dependent options (``param_ndim``) against images of ``shape`` (C, H, W)."""
    try:
        attack.check_shape((1, *shape))
    except (TypeError, ValueError) as error:
        where = {name: f"attack.options.{name}" for name in (settings.get("options") or {})}
        raise _blamed(error, "attack", tuple(settings) + OPTION_ALIASES, overrides, options=where) from None


def model_from_config(
    settings: Mapping[str, Any], device: torch.device, overrides: Sequence[str] = ()
) -> NormalizedModel:
    """The classifier a ``model`` config group names: a shipped model or a checkpoint file.

    ``trust_checkpoint`` must be the real boolean ``True`` to allow unpickling
    code from the file (the settings check refuses strings such as ``"no"``).
    """
    name = settings.get("name", "model")
    known = tuple(settings) + ("checkpoint", "trust_checkpoint", "arch", "num_classes", "mean", "std")
    if settings.get("pretrained"):
        try:
            return load_pretrained(settings["pretrained"]).to(device).eval()
        except (FileNotFoundError, ValueError, TypeError) as error:
            raise _blamed(error, "model", known, overrides, prefix=f"model={name}: ",
                          default="model.pretrained") from None
    path = _require(
        settings,
        "checkpoint",
        "model",
        f" for model={name}: the path of your checkpoint file "
        "(MadryLab robustness, RobustBench, plain state_dict or rai_probe format)",
        overrides,
    )
    trust = settings.get("trust_checkpoint", False) is True  # only a real true trusts a file
    try:
        model = load_checkpoint(
            path,
            settings.get("arch"),
            num_classes=settings.get("num_classes"),
            mean=settings.get("mean"),
            std=settings.get("std"),
            trust_checkpoint=trust,
        )
    except FileNotFoundError as error:
        raise _blamed(error, "model", known, overrides, prefix=f"model={name}: ", default="model.checkpoint") from None
    except CheckpointError as error:
        raise _blamed(
            error, "model", known, overrides, default="model.checkpoint",
            prefix=f"model={name}: the checkpoint {path} cannot be used (architecture {settings.get('arch')}): ",
        ) from None
    except (TypeError, ValueError, OSError) as error:
        raise _blamed(error, "model", known, overrides, prefix=f"model={name}: ", default="model.checkpoint") from None
    return model.to(device).eval()


def data_from_config(
    settings: Mapping[str, Any],
    model: NormalizedModel,
    *,
    n_images: int | None,
    seed: int,
    overrides: Sequence[str] = (),
) -> ImageDataset:
    """The first ``n_images`` source images a ``data`` config group describes, shaped for ``model``.

    Asking for more images than the split holds runs all of them, with a
    warning in the log; ``n_images=None`` takes the whole split (seeds:
    :data:`DEFAULT_SEEDS`), for a mode that selects its images by prediction.
    """
    name = settings.get("name")
    shape = tuple(model.info.input_shape)
    kwargs = {key: value for key, value in settings.items() if key != "name"}
    for key, value in kwargs.items():
        if value == MISSING:
            raise ProbeConfigError(
                f"data={name} needs data.{key} (e.g. the folder holding the files)",
                typed_override(f"data.{key}", overrides),
            )
    if name in ("noise", "gray"):  # seeds take the model's input shape
        kwargs.update(n=DEFAULT_SEEDS if n_images is None else n_images, image_shape=shape)
        if name == "noise":
            kwargs["seed"] = seed
    if name == "folder":
        if kwargs.get("size") is None:
            kwargs["size"] = shape[1:]
        if kwargs.get("mode", "auto") == "auto":
            kwargs["mode"] = "L" if shape[0] == 1 else "RGB"
    known = tuple(settings) + ("root", "split")
    try:
        dataset = load_dataset(name, **kwargs)
    except (FileNotFoundError, DataFormatError, OSError) as error:
        raise _blamed(error, "data", known, overrides, prefix=f"data={name}: ", default="data.root") from None
    except (TypeError, ValueError) as error:
        raise _blamed(error, "data", known, overrides, prefix=f"data={name}: ") from None
    if dataset.image_shape != shape:
        raise ProbeConfigError(
            f"data={name} gives {'x'.join(map(str, dataset.image_shape))} images but "
            f"the model ({model.info.arch}) takes {'x'.join(map(str, shape))}",
            typed_override("data", overrides),
        )
    if len(dataset) == 0:
        raise ProbeConfigError(f"data={name} holds no images", typed_override("data", overrides))
    if name == "folder" and dataset.labeled:
        dataset = _labels_as_model_classes(dataset, model)
    if n_images is None:
        return dataset
    if n_images > len(dataset):
        log.warning(
            "n_images=%d but data=%s (%s split) holds %d images: running all %d",
            n_images, name, dataset.split, len(dataset), len(dataset),
        )
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
        files=dataset.files,
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
    every image toward ``mode.target`` (a class index or name) or, with
    ``target: all``, toward every class (rows image-major); ``target:
    label`` / ``target: prediction``: each image toward its own true label
    (what a misclassified image missed) / its clean prediction (with
    ``attack.confidence``: what a correct prediction relies on).
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
    if isinstance(target, str) and target.lower() in ("label", "prediction"):
        if target.lower() == "label" and bool((labels < 0).any()):
            raise ProbeConfigError(
                f"mode.target=label moves each image toward its true label, but data={data.name} has "
                "unlabeled images: use labeled data, or mode.target=prediction",
                "mode.target",
            )
        rows = sources
        targets = labels.clone() if target.lower() == "label" else clean_predictions.clone()
    elif isinstance(target, str) and target.lower() == "all":
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

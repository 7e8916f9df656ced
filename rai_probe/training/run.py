"""Train a classifier from a ``scripts/train.py`` config and leave its checkpoint and report.

Both jobs (train, evaluate) check every setting before loading anything
(:mod:`rai_probe.training.schema`), and every problem is a
:class:`~rai_probe.jobs.errors.ConfigError` naming the override to fix, from
the ``setting`` field the lower layers attach to their errors.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

import torch

from .._io import write_json
from ..data import load_dataset
from ..errors import SettingError, UnknownSettingError
from ..jobs import config_dir
from ..jobs.errors import ConfigError, config_key, typed_override
from ..jobs.hydra_app import hydra_main
from ..jobs.rundir import RunDirectory
from ..jobs.schema import check_settings
from ..models import build_model, load_checkpoint, load_pretrained, save_checkpoint
from ..perturbations.attacks import OPTION_ALIASES, Attack, option_keys
from ..perturbations.ensemble import AttackEnsemble
from ..runtime import select_device, set_threads
from .adversarial import TrainingRecipe, adversarial_train
from . import tensorboard_log
from .evaluation import EvalAttack, evaluate
from .schema import EnsembleEntrySettings, EvaluateSettings, TrainSettings, check_job_settings

__all__ = [
    "training_attack",
    "eval_attacks",
    "train_from_config",
    "evaluate_from_config",
    "train_main",
    "evaluate_main",
    "CONFIG_DIR",
]

#: The training jobs' Hydra configs (``train.yaml``, ``evaluate.yaml``, ``eval_attacks/``): a folder of
#: the package's config tree (:mod:`rai_probe.jobs.config_dir`).
CONFIG_DIR = config_dir.CONFIG_DIR / "training"

_T = TypeVar("_T")

log = logging.getLogger(__name__)

#: Keys of the training attack before it was spelt as every attack config, and what replaced them.
_RENAMED = {
    "norm": "name the optimizer (attack.optimizer=L2ProjectedOptim, LinfProjectedOptim or L1ProjectedOptim, "
    "with attack.random_init=l2, linf or l1), or train on clean images with attack=null",
    "step_size": "the step size is attack.lr (null: 2.5 * epsilon / steps)",
    "warmup_epochs": "the ramp of the attack's epsilon is the top-level attack_warmup_epochs",
}


def _blamed(error: Exception, section: str, known: Sequence[str], overrides: Sequence[str],
            *, default: str | None = None, rename: Mapping[str, str] | None = None) -> ConfigError:
    """The :class:`ConfigError` of a lower layer's ``error`` about config ``section`` ("" for top level)."""
    if not isinstance(error, SettingError):
        error = SettingError(str(error))
    if rename and error.setting in rename:
        key = rename[error.setting]
    elif error.setting is None and default is not None:
        key = default
    elif section:
        key = config_key(section, error, known)
    else:
        key = error.setting if error.setting in known else (default or "config")
    return ConfigError.from_setting_error(error, key, overrides)


def _checked(build: Callable[[], _T], section: str, known: Sequence[str], overrides: Sequence[str],
             *, default: str | None = None, rename: Mapping[str, str] | None = None) -> _T:
    """``build()``, with any bad-input error of it turned into a :class:`ConfigError` naming the override."""
    try:
        return build()
    except (TypeError, ValueError, OSError) as error:  # FileNotFoundError, CheckpointError, DataFormatError too
        raise _blamed(error, section, known, overrides, default=default, rename=rename) from None


def training_attack(settings: Mapping[str, Any] | None) -> Attack | None:
    """The attack of a ``train.yaml`` ``attack`` block (``None``, i.e. ``attack=null``: standard training).

    The block is spelt as every attack config (:meth:`Attack.from_dict`):
    ``optimizer``, ``epsilon``, ``steps``, ``lr`` (``null``: the PGD step
    ``2.5 * epsilon / steps``), ``q``, ``random_init`` and any other field.
    The shipped recipe is PGD with a random start in the ball:
    ``L2ProjectedOptim`` with ``random_init: l2`` (``LinfProjectedOptim`` with
    ``linf``, ``L1ProjectedOptim`` with ``l1`` and ``q``). The attack runs
    untargeted: it raises the loss of the true labels. Keys of the recipe
    before it took this spelling (``norm``, ``step_size``, ``warmup_epochs``)
    are refused, naming their new spelling.

    Examples
    --------
    >>> attack = training_attack({"optimizer": "L2ProjectedOptim", "epsilon": 1.5, "steps": 10, "lr": None,
    ...                           "random_init": "l2"})
    >>> attack.optimizer, attack.lr, attack.random_init
    ('L2ProjectedOptim', 0.375, 'l2')
    >>> training_attack(None) is None
    True
    >>> training_attack({"norm": "none"})
    Traceback (most recent call last):
    ...
    rai_probe.errors.UnknownSettingError: attack: `norm` is no longer a setting: name the optimizer (attack.optimizer=L2ProjectedOptim, LinfProjectedOptim or L1ProjectedOptim, with attack.random_init=l2, linf or l1), or train on clean images with attack=null
    """
    if settings is None:
        return None
    renamed = [key for key in _RENAMED if isinstance(settings, Mapping) and key in settings]
    if renamed:
        key = renamed[0]
        raise UnknownSettingError(f"attack: `{key}` is no longer a setting: {_RENAMED[key]}",
                                  setting=key, value=settings[key])
    attack = Attack.from_dict(settings, where="attack")
    if attack.targeted:
        raise SettingError(
            "attack: `targeted` must be false for training (the attack raises the loss of the true labels)",
            setting="targeted",
            value=True,
        )
    return attack


def _attack_error(error: Exception, where: str, entry: Any, overrides: Sequence[str]) -> ConfigError:
    """The :class:`ConfigError` of an attack entry at config key ``where``, naming the key at fault.

    The key comes from the error's ``setting``: a field or alias is
    ``<where>.<name>``, an option ``<where>.options.<name>`` where it was
    written there (:func:`~rai_probe.perturbations.attacks.option_keys`).
    """
    if not isinstance(error, SettingError):
        error = SettingError(str(error))
    known = tuple(entry) + OPTION_ALIASES if isinstance(entry, Mapping) else ()
    options = {option: f"{where}.{key}" for option, key in option_keys(entry).items()} if known else {}
    return ConfigError.from_setting_error(error, config_key(where, error, known, options), overrides)


def _is_ensemble(entry: Any) -> bool:
    return isinstance(entry, Mapping) and "ensemble" in entry


def eval_attacks(settings: Mapping[str, Mapping[str, Any]] | None, overrides: Sequence[str] = ()) -> dict[str, EvalAttack]:
    """Named attacks of an ``eval_attacks`` config group (see rai_probe/configs/training/eval_attacks/).

    An entry is an :class:`Attack`, spelt as every attack config
    (:meth:`Attack.from_dict`: its fields, ``q``/``dq`` at the top level or in
    ``options``), or an ensemble: ``{ensemble:
    [names of other entries]}`` (or inline members, ``{ensemble: {name:
    attack settings}}``), the worst case over those attacks
    (:class:`~rai_probe.perturbations.ensemble.AttackEnsemble`). Entries keep
    their order. A bad entry is a :class:`ConfigError` naming
    ``eval_attacks.<name>.<key>``.

    Examples
    --------
    >>> attacks = eval_attacks({
    ...     "pgd": {"optimizer": "L1ProjectedOptim", "epsilon": 10.0, "q": 0.99},
    ...     "fw": {"optimizer": "L1qFrankWolfe", "epsilon": 10.0, "q": 0.99},
    ...     "worst": {"ensemble": ["pgd", "fw"]}})
    >>> list(attacks), attacks["worst"].names, attacks["worst"].attacks["fw"] == attacks["fw"]
    (['pgd', 'fw', 'worst'], ('pgd', 'fw'), True)
    >>> eval_attacks({"worst": {"ensemble": ["pgd"]}})
    Traceback (most recent call last):
    ...
    rai_probe.jobs.errors.ConfigError: eval_attacks.worst: unknown member 'pgd' in `ensemble`; the attacks of this group are: none. Fix it with the override `eval_attacks.worst.ensemble=...`.
    """
    attacks: dict[str, Attack] = {}
    entries = dict(settings or {})
    for name, entry in entries.items():
        if _is_ensemble(entry):
            continue
        where = f"eval_attacks.{name}"
        try:
            attacks[name] = Attack.from_dict(entry, where=where)
        except (TypeError, ValueError) as error:
            raise _attack_error(error, where, entry, overrides) from None
    ensembles = {name: _eval_ensemble(name, entry, attacks, overrides)
                 for name, entry in entries.items() if _is_ensemble(entry)}
    return {name: attacks[name] if name in attacks else ensembles[name] for name in entries}


def _eval_ensemble(name: str, entry: Mapping[str, Any], attacks: Mapping[str, Attack],
                   overrides: Sequence[str]) -> AttackEnsemble:
    """The ensemble entry ``name`` of an ``eval_attacks`` group, its members looked up among ``attacks``."""
    where = f"eval_attacks.{name}"
    try:
        check_settings(entry, EnsembleEntrySettings, prefix=where)
    except SettingError as error:
        raise ConfigError.from_setting_error(error, error.setting or where, overrides) from None
    try:
        return AttackEnsemble.from_dict(entry, where=where, named=attacks)
    except (TypeError, ValueError) as error:
        if not isinstance(error, SettingError):
            error = SettingError(str(error))
        key = f"{where}.{error.setting}" if error.setting else where
        raise ConfigError.from_setting_error(error, key, overrides) from None


def _dataset_kwargs(cfg: Mapping[str, Any], split: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"split": split}
    if cfg.get("data_root") is not None:
        kwargs["root"] = cfg["data_root"]
    return kwargs


def _prepare(cfg: Mapping[str, Any], schema: type, overrides: Sequence[str]) -> tuple[dict[str, Any], Any]:
    """Check the settings, set the threads and pick the device; return the settings and the device."""
    cfg = {key: value for key, value in cfg.items() if key != "_overrides"}
    check_job_settings(cfg, schema, overrides)
    _checked(lambda: set_threads(cfg.get("threads")), "", ("threads",), overrides, default="threads")
    device = _checked(lambda: select_device(cfg.get("device", "cpu")), "", ("device",), overrides, default="device")
    return cfg, device


def _load_data(cfg: Mapping[str, Any], split_key: str, overrides: Sequence[str]) -> Any:
    split = cfg.get(split_key, "test")
    return _checked(
        lambda: load_dataset(cfg["data"], **_dataset_kwargs(cfg, split)),
        "",
        ("data", "data_root"),
        overrides,
        default="data_root" if cfg.get("data_root") is not None else "data",
        rename={"root": "data_root", "split": split_key, "name": "data"},
    )


def train_from_config(
    cfg: Mapping[str, Any], output_dir: str | Path, overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """Run the training a ``rai_probe/configs/training/train.yaml``-shaped mapping describes; return its report.

    Every setting is checked first (a :class:`~rai_probe.jobs.errors.ConfigError`
    names the override to fix). Writes to ``output_dir``: ``model.pt``
    (rai_probe checkpoint recording the architecture, dataset,
    normalization, recipe and measured accuracies), ``history.json``
    (per-epoch records) and, last, ``metrics.json`` (the final held-out
    report, ``"status": "complete"``). With ``export`` set, the checkpoint is
    also copied there. With ``tensorboard: true``, each epoch's scalars
    also go to ``output_dir/tensorboard/`` as training runs
    (:mod:`~rai_probe.training.tensorboard_log`; needs the ``tensorboard``
    extra).
    """
    output_dir = Path(output_dir)
    with RunDirectory(output_dir):
        return _train(cfg, output_dir, list(overrides) or list(cfg.get("_overrides", [])))


def _train(cfg: Mapping[str, Any], output_dir: Path, overrides: Sequence[str]) -> dict[str, Any]:
    cfg, device = _prepare(cfg, TrainSettings, overrides)
    attack_settings = cfg.get("attack")
    try:
        attack = training_attack(attack_settings)
    except (TypeError, ValueError) as error:
        raise _attack_error(error, "attack", attack_settings, overrides) from None
    final_attacks = eval_attacks(cfg.get("eval_attacks"), overrides)
    recipe = _checked(
        lambda: TrainingRecipe(
            epochs=cfg.get("epochs", 20),
            batch_size=cfg.get("batch_size", 64),
            lr=cfg.get("lr", 1e-3),
            optimizer=cfg.get("optimizer", "adam"),
            weight_decay=cfg.get("weight_decay", 0.0),
            schedule=cfg.get("schedule", "cosine"),
            warmup_epochs=cfg.get("warmup_epochs", 1.0),
            max_shift=cfg.get("max_shift", 1),
            attack=attack,
            clean_weight=cfg.get("clean_weight", 0.0),
            attack_warmup_epochs=cfg.get("attack_warmup_epochs", 0.0) if attack else 0.0,
            seed=cfg.get("seed", 0),
        ),
        "",
        tuple(cfg),
        overrides,
    )
    writer_class = None
    if cfg.get("tensorboard"):  # the optional extra is there before anything is loaded
        writer_class = _checked(tensorboard_log.summary_writer_class, "", ("tensorboard",), overrides,
                                default="tensorboard")
    train_set = _load_data(cfg, "train_split", overrides)
    eval_set = _load_data(cfg, "eval_split", overrides)
    if cfg.get("n_train"):
        train_set = train_set.subset(min(cfg["n_train"], len(train_set)))
    if cfg.get("n_eval"):
        eval_set = eval_set.subset(min(cfg["n_eval"], len(eval_set)))
    if not train_set.labeled:
        raise ConfigError(f"data={cfg['data']!r}: training needs labeled images", typed_override("data", overrides))
    torch.manual_seed(cfg.get("seed", 0))  # the model's initial weights, so that a run repeats for its seed
    model = _checked(
        lambda: build_model(
            cfg.get("model", "small_cnn"),
            num_classes=train_set.num_classes,
            class_names=train_set.class_names,
            input_shape=train_set.image_shape,
        ),
        "",
        ("model",),
        overrides,
        default="model",
        rename={"name": "model", "arch": "model"},
    )
    model.info.dataset = cfg["data"]
    progress = cfg.get("progress", True)
    log.info(
        "training %s on %s (%d images, held-out %d) with %s; outputs in %s",
        cfg.get("model"),
        cfg["data"],
        len(train_set),
        len(eval_set),
        f"{attack.optimizer} eps={attack.epsilon} steps={attack.steps}" if attack else "clean images only",
        output_dir.resolve(),
    )
    scalars = None
    if writer_class is not None:
        scalars = tensorboard_log.EpochScalars(writer_class(log_dir=str(output_dir / "tensorboard")))
        log.info("TensorBoard scalars per epoch in %s", (output_dir / "tensorboard").resolve())
    try:
        history = adversarial_train(
            model,
            train_set.images,
            train_set.labels,
            recipe,
            eval_images=eval_set.images,
            eval_labels=eval_set.labels,
            eval_every=cfg.get("eval_every", 5),
            eval_size=cfg.get("eval_size", 500),
            device=device,
            progress=progress,
            on_epoch_end=scalars,
        )
    finally:
        if scalars is not None:
            scalars.close()
    log.info("final evaluation on %d held-out images under %s", len(eval_set), ", ".join(final_attacks) or "no attack")
    report = evaluate(
        model,
        eval_set.images,
        eval_set.labels,
        attacks=final_attacks,
        device=device,
        seed=cfg.get("seed", 0),
        progress=progress,
    )
    report["eval_split"] = cfg.get("eval_split", "test")
    report["attacks"] = {name: attack.to_dict() for name, attack in final_attacks.items()}
    report["train_seconds"] = round(history.seconds, 1)

    training = recipe.to_dict()
    training.update(
        {
            "data": cfg["data"],
            "train_split": cfg.get("train_split", "train"),
            "n_train": len(train_set),
            "command_overrides": list(overrides),
        }
    )
    model.to("cpu")
    checkpoint = output_dir / "model.pt"
    save_checkpoint(model, checkpoint, training=training, metrics=report)
    write_json(output_dir / "history.json", history.epochs)
    if cfg.get("export"):
        shutil.copyfile(checkpoint, cfg["export"])
        log.info("checkpoint copied to %s", cfg["export"])
    write_json(output_dir / "metrics.json", {"status": "complete", **report})
    robust = ", ".join(f"{k} {v:.3f}" for k, v in report["robust_accuracy"].items())
    log.info("clean accuracy %.4f; robust accuracy: %s", report["clean_accuracy"], robust or "n/a")
    for name, details in report.get("ensembles", {}).items():
        log.info("robust accuracy %s:", name)
        _log_ensemble(details)
    log.info("checkpoint: %s", checkpoint.resolve())
    return report


def evaluate_from_config(
    cfg: Mapping[str, Any], output_dir: str | Path, overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """Measure a model's clean and robust accuracy as a ``rai_probe/configs/training/evaluate.yaml`` mapping says.

    The model is a shipped one (``model``) or a checkpoint file
    (``checkpoint``, with ``arch`` unless it is in rai_probe's format; a file
    that holds code is refused unless ``trust_checkpoint`` is the real
    ``true``). Every setting is checked first. Writes ``metrics.json`` to
    ``output_dir`` with the measured numbers and, for a checkpoint that
    records them, the recorded ones beside them.
    """
    output_dir = Path(output_dir)
    with RunDirectory(output_dir):
        return _evaluate(cfg, output_dir, overrides)


def _evaluate(cfg: Mapping[str, Any], output_dir: Path, overrides: Sequence[str]) -> dict[str, Any]:
    cfg, device = _prepare(cfg, EvaluateSettings, overrides)
    attacks = eval_attacks(cfg.get("eval_attacks"), overrides)
    if cfg.get("checkpoint"):
        model = _checked(
            lambda: load_checkpoint(cfg["checkpoint"], cfg.get("arch"), trust_checkpoint=cfg.get("trust_checkpoint") is True),
            "",
            ("checkpoint", "arch", "trust_checkpoint"),
            overrides,
            default="checkpoint",
        )
    else:
        model = _checked(lambda: load_pretrained(cfg.get("model")), "", ("model",), overrides, default="model",
                         rename={"name": "model", "pretrained": "model"})
    model.to(device)
    data = _load_data(cfg, "split", overrides)
    if cfg.get("n_eval"):
        data = data.subset(min(cfg["n_eval"], len(data)))
    progress = cfg.get("progress", True)
    log.info(
        "evaluating %s on %d %s images under %s; outputs in %s",
        model.info.source,
        len(data),
        data.name,
        ", ".join(attacks) or "no attack",
        output_dir.resolve(),
    )
    report = evaluate(
        model,
        data.images,
        data.labels,
        attacks=attacks,
        batch_size=cfg.get("batch_size", 250),
        device=device,
        seed=cfg.get("seed", 0),
        progress=progress,
    )
    recorded = model.info.metrics or {}
    report["model"] = model.info.source
    report["recorded"] = {
        "clean_accuracy": recorded.get("clean_accuracy"),
        "robust_accuracy": recorded.get("robust_accuracy", {}),
    }
    write_json(output_dir / "metrics.json", {"status": "complete", **report})
    log.info("clean accuracy %.4f (recorded: %s)", report["clean_accuracy"], recorded.get("clean_accuracy"))
    for name, value in report["robust_accuracy"].items():
        log.info(
            "robust accuracy %s: %.4f (recorded: %s)",
            name,
            value,
            recorded.get("robust_accuracy", {}).get(name),
        )
        if name in report.get("ensembles", {}):
            _log_ensemble(report["ensembles"][name])
    return report


def _log_ensemble(details: Mapping[str, Any]) -> None:
    """The per-member lines under an ensemble's robust accuracy: what was left robust after each member."""
    log.info("  worst case of %s, run in this order on the images still robust:", ", ".join(details["members"]))
    for member in details["members"]:
        log.info(
            "    after %s: %.4f robust (%s broke %.4f of the images)",
            member,
            details["robust_accuracy_after"][member],
            member,
            details["broken_by"][member],
        )


def train_main(argv: Sequence[str] | None = None) -> int:
    """``rai-probe-train [overrides]`` (``python scripts/train.py`` in a checkout); returns the exit status."""
    return hydra_main(train_from_config, config_name="train", config_dir=CONFIG_DIR, argv=argv)


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    """``rai-probe-evaluate [overrides]`` (``python scripts/evaluate.py`` in a checkout); returns the exit status."""
    return hydra_main(evaluate_from_config, config_name="evaluate", config_dir=CONFIG_DIR, argv=argv)

"""Train a classifier from a ``scripts/train.py`` config and leave its checkpoint and report."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Mapping


from .._io import write_json
from ..data import load_dataset
from ..models import build_model, load_checkpoint, load_pretrained, save_checkpoint
from ..perturbations.attacks import Attack
from ..runtime import select_device, set_threads
from .adversarial import TrainingRecipe, adversarial_train
from .evaluation import evaluate

__all__ = ["training_attack", "eval_attacks", "train_from_config", "evaluate_from_config"]

log = logging.getLogger(__name__)

#: The projected (PGD) optimizer of each training norm; the random start is drawn in the same norm's ball.
_PGD = {"l2": "L2ProjectedOptim", "linf": "LinfProjectedOptim", "l1": "L1ProjectedOptim"}


def training_attack(settings: Mapping[str, Any]) -> Attack | None:
    """The PGD attack of a ``train.yaml`` ``attack`` block (``None`` for ``norm: none``).

    Examples
    --------
    >>> attack = training_attack({"norm": "l2", "epsilon": 1.5, "steps": 10, "step_size": None})
    >>> attack.optimizer, attack.lr, attack.random_init
    ('L2ProjectedOptim', 0.375, 'l2')
    >>> training_attack({"norm": "none"}) is None
    True
    """
    norm = str(settings.get("norm", "none")).lower()
    if norm == "none":
        return None
    if norm not in _PGD:
        raise ValueError(f"attack.norm must be one of l2, linf, l1, none; got attack.norm={norm!r}")
    optimizer = _PGD[norm]
    for key in ("epsilon", "steps"):
        if settings.get(key) is None:
            raise ValueError(f"attack.{key} is required for attack.norm={norm}")
    epsilon = float(settings["epsilon"])
    steps = int(settings["steps"])
    step_size = settings.get("step_size")
    lr = float(step_size) if step_size is not None else 2.5 * epsilon / steps
    options = {"q": float(settings.get("q", 0.99))} if norm == "l1" else {}
    return Attack(optimizer, epsilon=epsilon, steps=steps, lr=lr, options=options, random_init=norm)


def eval_attacks(settings: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Attack]:
    """Named attacks of an ``eval_attacks`` config group (see configs/eval_attacks/)."""
    return {
        name: Attack.from_dict(entry, where=f"eval_attacks.{name}") for name, entry in (settings or {}).items()
    }


def _dataset_kwargs(cfg: Mapping[str, Any], split: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"split": split}
    if cfg.get("data_root") is not None:
        kwargs["root"] = cfg["data_root"]
    return kwargs


def train_from_config(cfg: Mapping[str, Any], output_dir: str | Path) -> dict[str, Any]:
    """Run the training a ``configs/train.yaml``-shaped mapping describes; return its report.

    Writes to ``output_dir``: ``model.pt`` (rai_probe checkpoint recording the
    architecture, dataset, normalization, recipe and measured accuracies),
    ``history.json`` (per-epoch records) and ``metrics.json`` (the final
    held-out report). With ``export`` set, the checkpoint is also copied there.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    set_threads(cfg.get("threads"))
    device = select_device(cfg.get("device", "cpu"))

    train_set = load_dataset(cfg["data"], **_dataset_kwargs(cfg, cfg.get("train_split", "train")))
    eval_set = load_dataset(cfg["data"], **_dataset_kwargs(cfg, cfg.get("eval_split", "test")))
    if cfg.get("n_train"):
        train_set = train_set.subset(int(cfg["n_train"]))
    if cfg.get("n_eval"):
        eval_set = eval_set.subset(int(cfg["n_eval"]))
    if not train_set.labeled:
        raise ValueError(f"data={cfg['data']!r}: training needs labeled images")
    model = build_model(
        cfg["model"],
        num_classes=train_set.num_classes,
        class_names=train_set.class_names,
        input_shape=train_set.image_shape,
    )
    model.info.dataset = cfg["data"]

    attack = training_attack(cfg.get("attack") or {})
    recipe = TrainingRecipe(
        epochs=int(cfg["epochs"]),
        batch_size=int(cfg["batch_size"]),
        lr=float(cfg["lr"]),
        optimizer=str(cfg["optimizer"]),
        weight_decay=float(cfg["weight_decay"]),
        schedule=str(cfg["schedule"]),
        warmup_epochs=float(cfg["warmup_epochs"]),
        max_shift=int(cfg["max_shift"]),
        attack=attack,
        clean_weight=float(cfg["clean_weight"]),
        attack_warmup_epochs=float((cfg.get("attack") or {}).get("warmup_epochs", 0.0)) if attack else 0.0,
        seed=int(cfg["seed"]),
    )
    final_attacks = eval_attacks(cfg.get("eval_attacks"))
    log.info(
        "training %s on %s (%d images, held-out %d) with %s; outputs in %s",
        cfg["model"],
        cfg["data"],
        len(train_set),
        len(eval_set),
        f"{attack.optimizer} eps={attack.epsilon} steps={attack.steps}" if attack else "clean images only",
        output_dir.resolve(),
    )
    history = adversarial_train(
        model,
        train_set.images,
        train_set.labels,
        recipe,
        eval_images=eval_set.images,
        eval_labels=eval_set.labels,
        eval_every=int(cfg.get("eval_every", 5)),
        eval_size=int(cfg.get("eval_size", 500)),
        device=device,
        progress=True,
    )
    log.info("final evaluation on %d held-out images under %s", len(eval_set), ", ".join(final_attacks) or "no attack")
    report = evaluate(
        model,
        eval_set.images,
        eval_set.labels,
        attacks=final_attacks,
        device=device,
        seed=int(cfg["seed"]),
        progress=True,
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
            "command_overrides": list(cfg.get("_overrides", [])),
        }
    )
    model.to("cpu")
    checkpoint = output_dir / "model.pt"
    save_checkpoint(model, checkpoint, training=training, metrics=report)
    write_json(output_dir / "history.json", history.epochs)
    write_json(output_dir / "metrics.json", report)
    if cfg.get("export"):
        shutil.copyfile(checkpoint, cfg["export"])
        log.info("checkpoint copied to %s", cfg["export"])
    robust = ", ".join(f"{k} {v:.3f}" for k, v in report["robust_accuracy"].items())
    log.info("clean accuracy %.4f; robust accuracy: %s", report["clean_accuracy"], robust or "n/a")
    log.info("checkpoint: %s", checkpoint.resolve())
    return report


def evaluate_from_config(cfg: Mapping[str, Any], output_dir: str | Path) -> dict[str, Any]:
    """Measure a model's clean and robust accuracy as a ``configs/evaluate.yaml`` mapping says.

    The model is a shipped one (``model``) or a checkpoint file
    (``checkpoint``, with ``arch`` unless it is in rai_probe's format).
    Writes ``metrics.json`` to ``output_dir`` with the measured numbers and,
    for a checkpoint that records them, the recorded ones beside them.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    set_threads(cfg.get("threads"))
    device = select_device(cfg.get("device", "cpu"))
    if cfg.get("checkpoint"):
        model = load_checkpoint(cfg["checkpoint"], cfg.get("arch"))
    else:
        model = load_pretrained(cfg["model"])
    model.to(device)
    data = load_dataset(cfg["data"], **_dataset_kwargs(cfg, cfg.get("split", "test")))
    if cfg.get("n_eval"):
        data = data.subset(int(cfg["n_eval"]))
    attacks = eval_attacks(cfg.get("eval_attacks"))
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
        batch_size=int(cfg.get("batch_size", 250)),
        device=device,
        seed=int(cfg.get("seed", 0)),
        progress=True,
    )
    recorded = model.info.metrics or {}
    report["model"] = model.info.source
    report["recorded"] = {
        "clean_accuracy": recorded.get("clean_accuracy"),
        "robust_accuracy": recorded.get("robust_accuracy", {}),
    }
    write_json(output_dir / "metrics.json", report)
    log.info("clean accuracy %.4f (recorded: %s)", report["clean_accuracy"], recorded.get("clean_accuracy"))
    for name, value in report["robust_accuracy"].items():
        log.info(
            "robust accuracy %s: %.4f (recorded: %s)",
            name,
            value,
            recorded.get("robust_accuracy", {}).get(name),
        )
    return report

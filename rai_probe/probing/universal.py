"""The ``mode=universal`` stage of a probe job: one δ for all images (or one per class), fit and held out.

:func:`run_universal` takes the job's planned rows, splits their source
images into a fit part and a held-out part (``mode.holdout`` of them, drawn
with ``job.seed``), fits the perturbation on the fit part for
``mode.epochs`` passes in mini-batches of ``job.batch_size``
(:func:`~rai_probe.perturbations.universal.fit_universal_perturbation`),
applies it to every row, and writes:

=========================  ==================================================================
file                       content
=========================  ==================================================================
``universal.pt``           δ and how it was made (:data:`UNIVERSAL_KEYS`); loadable with
                           ``torch.load(..., weights_only=True)``
``perturbations.pt``       the usual per-row file (:func:`~rai_probe.probing.artifacts.save_perturbations`),
                           ``xadv = clamp(images + δ)``, plus ``heldout`` (bool per row)
``per_image.csv``          one row per planned row (:func:`~rai_probe.probing.artifacts.write_per_image_csv`)
``figures/universal.png``  δ as a signed heatmap with a colour bar (one panel per class with
                           ``mode.per_class``), and held-out images before and after
``figures/heldout.png``    the batch grid of the first held-out images (``figures.max_grids > 0``)
``figures/loss_trace.png`` the mean loss of each mini-batch along the fit
=========================  ==================================================================

``metrics.json`` is left to the caller's ``record`` stage:
:class:`UniversalOutcome` holds the per-image records (for
:func:`~rai_probe.probing.metrics.summarize`) and ``summary_extra``, the
``"universal"`` entry (success on the fit and on the held-out images, the
norms of δ, ...). Success is counted honestly: a clean mistake is never a
success (:func:`~rai_probe.probing.metrics.honest_success`).

Settings that cannot work are refused by :func:`check_universal_job`
before anything is loaded or attacked, naming the override.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from .._io import write_atomic
from ..errors import SettingError
from ..jobs.errors import ConfigError, config_key, typed_override
from ..perturbations.attacks import Attack
from ..perturbations.ensemble import attack_norm
from ..perturbations.universal import (
    UniversalResult,
    check_universal_attack,
    fit_universal_perturbation,
    goal_met,
    universal_outputs,
)
from .artifacts import FIGURES_DIR, save_perturbations, write_per_image_csv
from .figures import (
    FAIL_COLOR,
    HEAT_CMAP,
    SIGNED_CMAP,
    SUCCESS_COLOR,
    bare_axes,
    color_bar,
    displayable,
    frame_axes,
    image_grid,
    class_label,
    save_figure,
    show_image,
    color_limit,
    plot_batch_grid,
    plot_loss_trace,
)
from .job import ProbeInputs, ProbeJob
from .metrics import per_image_metrics, perturbation_norms
from .settings import ProbeConfigError, ProbePlan

__all__ = [
    "UNIVERSAL_FILE",
    "UNIVERSAL_KEYS",
    "UniversalSettings",
    "UniversalOutcome",
    "universal_settings",
    "check_universal_job",
    "split_sources",
    "run_universal",
    "plot_universal",
]

log = logging.getLogger("rai_probe.probing.run")

UNIVERSAL_FILE = "universal.pt"

#: Keys every ``universal.pt`` holds.
UNIVERSAL_KEYS = (
    "delta",            # (C, H, W), or (K, C, H, W) with per_class
    "per_class",        # bool
    "delta_classes",    # int64 (K,): the class of each δ row ([-1]: one δ for every class)
    "row_delta",        # int64 (M,): the δ row each planned row used (0 without per_class)
    "epsilon",          # float
    "norm",             # "l1" | "l2" | "linf"
    "fit_rows",         # int64: planned rows the δ was fit on
    "heldout_rows",     # int64: planned rows held out
    "heldout_sources",  # int64: source images held out (every row of theirs is held out)
    "epochs",           # int
    "steps",            # int: optimizer steps (epochs x mini-batches)
    "batch_size",       # int
    "holdout",          # float: the held-out fraction asked for
    "best_epoch",       # int64 (K,) or (1,): the epoch each δ row comes from
    "loss_trace",       # (steps,): mean loss of each mini-batch
    "success_trace",    # (steps,): fraction of each mini-batch whose goal was met before the step
    "epoch_success",    # (epochs,) with use_best, else an empty tensor
    "optimizer",        # str
    "targeted",         # bool
    "seed",             # int
)

#: ``mode`` defaults of ``rai_probe/configs/mode/universal.yaml``.
_DEFAULTS = {"per_class": False, "epochs": 20, "holdout": 0.25}


@dataclass(frozen=True)
class UniversalSettings:
    """The ``mode`` settings of ``mode=universal``, checked (see :func:`universal_settings`)."""

    per_class: bool = False
    epochs: int = 20
    holdout: float = 0.25


@dataclass
class UniversalOutcome:
    """What :func:`run_universal` returns (tensors on the CPU).

    Attributes
    ----------
    per_image : dict of str to Tensor
        :func:`~rai_probe.probing.metrics.per_image_metrics` of every
        planned row (``clamp(images + δ)``), as written to ``per_image.csv``.
    summary_extra : dict
        ``{"universal": {...}}`` for ``metrics.json``: success rates on the
        fit and held-out images, the norms of δ, epochs, steps, ...
    figures : list of str
        Written figures, relative to the output directory.
    xadv : Tensor, shape-(M, C, H, W)
        The perturbed rows.
    delta : Tensor
        The fitted δ, ``(C, H, W)`` or ``(K, C, H, W)``.
    logits : Tensor, shape-(M, classes)
        The model's outputs on ``xadv``.
    heldout : Tensor of bool, shape-(M,)
        Which rows were held out of the fit.
    """

    per_image: dict[str, Tensor]
    summary_extra: dict[str, Any]
    figures: list[str]
    xadv: Tensor
    delta: Tensor
    logits: Tensor
    heldout: Tensor


# --------------------------------------------------------------------------- #
# settings
# --------------------------------------------------------------------------- #
def universal_settings(mode: Mapping[str, Any], overrides: Sequence[str] = ()) -> UniversalSettings:
    """The checked ``mode.per_class``, ``mode.epochs`` and ``mode.holdout`` (defaults where missing).

    Examples
    --------
    >>> universal_settings({"name": "universal", "per_class": True, "epochs": 3})
    UniversalSettings(per_class=True, epochs=3, holdout=0.25)
    >>> universal_settings({"holdout": 1.0})
    Traceback (most recent call last):
    ...
    rai_probe.jobs.errors.ConfigError: mode.holdout must be a number within (0, 1), the fraction of the source images held out of the fit; got 1.0. Fix it with the override `mode.holdout=...`.
    """
    values = {**_DEFAULTS, **{k: v for k, v in mode.items() if k in _DEFAULTS and v is not None}}
    per_class, epochs, holdout = values["per_class"], values["epochs"], values["holdout"]
    if not isinstance(per_class, bool):
        raise ProbeConfigError(f"mode.per_class must be true or false; got {per_class!r}",
                               typed_override("mode.per_class", overrides))
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ProbeConfigError(f"mode.epochs must be an integer >= 1 (passes over the fit images); got {epochs!r}",
                               typed_override("mode.epochs", overrides))
    if (isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not math.isfinite(holdout)
            or not 0 < holdout < 1):
        raise ProbeConfigError(
            f"mode.holdout must be a number within (0, 1), the fraction of the source images held out of "
            f"the fit; got {holdout!r}",
            typed_override("mode.holdout", overrides),
        )
    return UniversalSettings(per_class=per_class, epochs=epochs, holdout=float(holdout))


def _attack_error(error: SettingError, job: ProbeJob) -> ConfigError:
    """The job-level error of a per-image attack setting the universal fit refuses."""
    cfg = dict(job.cfg.get("attack") or {})
    known = tuple(cfg) + ("q", "dq") + tuple(Attack.__dataclass_fields__)
    options = {name: f"attack.options.{name}" for name in job.attack.options if name not in ("q", "dq")}
    key = config_key("attack", error, known, options)
    return ConfigError.from_setting_error(error, key, job.overrides)


def check_universal_job(job: ProbeJob) -> UniversalSettings:
    """Refuse, before anything is loaded, what ``mode=universal`` cannot do; return its settings.

    Refused, each naming its override: the attack's per-image settings
    (``attack.early_stop``, ``attack.restarts``, ``attack.epsilon_schedule``,
    an APGD-family ``attack.optimizer``, ``attack.options.param_ndim``;
    :func:`~rai_probe.perturbations.universal.check_universal_attack`), a
    targeted job toward every class with one shared δ (``mode.per_class``),
    shards (``data.num_shards``), ``resume``, fewer than 2 images
    (``n_images``: one to fit, one to hold out), and bad ``mode`` values.

    Raises
    ------
    ProbeConfigError
    """
    settings = universal_settings(job.mode, job.overrides)
    try:
        check_universal_attack(job.attack)
    except SettingError as error:
        raise _attack_error(error, job) from None
    target = job.mode.get("target")
    if job.targeted and isinstance(target, str) and target.lower() == "all" and not settings.per_class:
        raise ProbeConfigError(
            "mode=universal with mode.target=all pushes every image toward every class, which one shared δ "
            "cannot do: set mode.per_class=true (one δ per target class: what the model takes each class "
            "to look like) or a single mode.target",
            typed_override("mode.per_class", job.overrides),
        )
    if job.num_shards > 1:
        raise ProbeConfigError(
            f"mode=universal fits one δ over all the selected images, which shards cannot split; got "
            f"data.num_shards={job.num_shards}: use data.num_shards=1",
            typed_override("data.num_shards", job.overrides),
        )
    if job.resume:
        raise ProbeConfigError(
            "mode=universal has no per-batch records to resume from (one δ is fit over every image): "
            "set resume=false",
            typed_override("resume", job.overrides),
        )
    if job.n_images < 2:
        raise ProbeConfigError(
            f"mode=universal needs n_images >= 2 (images to fit δ on and images held out to test it); "
            f"got n_images={job.n_images}",
            typed_override("n_images", job.overrides),
        )
    return settings


# --------------------------------------------------------------------------- #
# the split
# --------------------------------------------------------------------------- #
def split_sources(sources: Tensor, holdout: float, seed: int) -> Tensor:
    """Which rows are held out: those of a seeded ``holdout`` share of the distinct source images.

    Every row of a held-out source image is held out (in a targeted job
    toward every class an image has one row per class), so no held-out
    image is ever seen by the fit. At least one source is fit and one held
    out.

    Parameters
    ----------
    sources : Tensor of int, shape-(M,)
        The source image of each row.
    holdout : float
        Fraction of the distinct sources held out, within (0, 1).
    seed : int

    Returns
    -------
    Tensor of bool, shape-(M,)

    Examples
    --------
    >>> import torch
    >>> held = split_sources(torch.arange(8).repeat_interleave(2), 0.25, seed=0)   # 8 images, 2 rows each
    >>> int(held.sum()), bool((held.view(8, 2)[:, 0] == held.view(8, 2)[:, 1]).all())
    (4, True)
    """
    distinct = torch.unique(sources.cpu())
    count = distinct.numel()
    if count < 2:
        raise SettingError(f"`sources` must hold at least 2 distinct images to hold some out; got {count}",
                           setting="sources")
    held = min(max(round(holdout * count), 1), count - 1)
    order = torch.randperm(count, generator=torch.Generator().manual_seed(int(seed)))
    return torch.isin(sources.cpu(), distinct[order[:held]])


# --------------------------------------------------------------------------- #
# the stage
# --------------------------------------------------------------------------- #
def _fit(job: ProbeJob, inputs: ProbeInputs, images: Tensor, target: Tensor, classes: Tensor | None,
         settings: UniversalSettings) -> UniversalResult:
    generator = torch.Generator(device=job.device).manual_seed(int(job.seed))
    try:
        return fit_universal_perturbation(
            inputs.classifier,
            images,
            target,
            attack=job.attack,
            epochs=settings.epochs,
            batch_size=job.batch_size,
            per_class=settings.per_class,
            classes=classes,
            num_classes=inputs.model.info.num_classes if settings.per_class else None,
            generator=generator,
            progress=job.progress,
        )
    except SettingError as error:
        if error.setting in ("model", "images"):
            model_cfg = job.cfg["model"]
            key = "data" if error.setting == "images" else (
                "model.checkpoint" if model_cfg.get("checkpoint") else "model")
            raise ProbeConfigError(
                f"model={model_cfg.get('name')}, data={job.cfg['data'].get('name')}: {error}",
                typed_override(key, job.overrides),
            ) from None
        raise _attack_error(error, job) from None


def _rate(hits: Tensor, rows: Tensor) -> float | None:
    count = int(rows.sum())
    return int((hits & rows).sum()) / count if count else None


def _number(value: float | Tensor) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _delta_rows(delta: Tensor) -> Tensor:
    """δ as a batch ``(K, C, H, W)`` (one δ: ``K = 1``)."""
    return delta if delta.ndim == 4 else delta.unsqueeze(0)


def _delta_norms(delta: Tensor, epsilon: float, norm: str | None) -> list[dict[str, Any]]:
    norms = perturbation_norms(_delta_rows(delta).double())
    out = []
    for k in range(norms["l1"].shape[0]):  # JSON formatting, one entry per δ
        entry = {key: (int(norms[key][k]) if key.startswith("l0_") and key != "l0_fraction" else _number(norms[key][k]))
                 for key in norms}
        entry["budget_used"] = _number(norms[norm][k] / epsilon) if norm is not None else None
        out.append(entry)
    return out


def _summary(per_image: Mapping[str, Tensor], heldout: Tensor, fit: UniversalResult, settings: UniversalSettings,
             job: ProbeJob, norm: str | None, row_delta: Tensor, class_names: Sequence[str],
             heldout_sources: Tensor) -> dict[str, Any]:
    success = per_image["success"]
    eligible = (per_image["target"] >= 0) | per_image["clean_correct"] | (per_image["label"] < 0)
    fitted = ~heldout
    norms = _delta_norms(fit.delta, job.attack.epsilon, norm)
    entry: dict[str, Any] = {
        "per_class": settings.per_class,
        "epochs": settings.epochs,
        "steps": fit.steps_run,
        "batch_size": job.batch_size,
        "holdout": settings.holdout,
        "n_fit": int(fitted.sum()),
        "n_heldout": int(heldout.sum()),
        "n_heldout_sources": int(heldout_sources.numel()),
        "n_fit_eligible": int((fitted & eligible).sum()),
        "n_heldout_eligible": int((heldout & eligible).sum()),
        "fit_success_rate": _rate(success, fitted & eligible),
        "heldout_success_rate": _rate(success, heldout & eligible),
        "norm": norm,
        "epsilon": float(job.attack.epsilon),
        "use_best": job.attack.use_best,
        "fit_success_by_epoch": None if fit.epoch_success is None else [_number(v) for v in fit.epoch_success],
        "file": UNIVERSAL_FILE,
    }
    if not settings.per_class:
        entry["delta_norms"] = norms[0]
        entry["best_epoch"] = int(fit.best_epoch[0])
        return {"universal": entry}
    classes = []
    best_epoch = fit.best_epoch.cpu().tolist()
    for k, name in enumerate(class_names):  # JSON formatting, one entry per class
        mine = row_delta == k
        if not bool(mine.any()):
            continue
        classes.append({
            "class": k,
            "name": str(name),
            "n_fit": int((mine & fitted).sum()),
            "n_heldout": int((mine & heldout).sum()),
            "fit_success_rate": _rate(success, mine & fitted & eligible),
            "heldout_success_rate": _rate(success, mine & heldout & eligible),
            "best_epoch": int(best_epoch[k]),
            "delta_norms": norms[k],
        })
    entry["classes"] = classes
    used = torch.tensor([c["class"] for c in classes], dtype=torch.long)
    mean_norms = perturbation_norms(_delta_rows(fit.delta)[used].double())
    entry["delta_norms"] = {key: _number(values.double().mean()) for key, values in mean_norms.items()}
    entry["delta_norms"]["budget_used"] = (
        _number(mean_norms[norm].mean() / job.attack.epsilon) if norm is not None else None)
    entry["delta_norms_over"] = "mean over the classes that have rows"
    return {"universal": entry}


def run_universal(job: ProbeJob, inputs: ProbeInputs, output_dir: Path, clean_logits: Tensor,
                  plan: ProbePlan) -> UniversalOutcome:
    """Fit a universal (or per-class) δ on part of the planned rows, test it on the rest, write the files.

    Parameters
    ----------
    job : ProbeJob
        The checked job (``job.mode``: ``per_class``, ``epochs``, ``holdout``).
    inputs : ProbeInputs
        Model (``inputs.classifier`` runs the images), data, class names.
    output_dir : Path
        The job's directory: ``universal.pt``, ``perturbations.pt``,
        ``per_image.csv`` and ``figures/`` go there (not ``metrics.json``).
    clean_logits : Tensor, shape-(S, classes)
        The model's outputs on each **source** image (``inputs.data.images``,
        as ``plan_rows`` computes them); row ``i`` of the plan takes
        ``clean_logits[plan.sources[i]]``.
    plan : ProbePlan
        The rows: images, labels, targets, attack targets, sources.

    Returns
    -------
    UniversalOutcome

    Raises
    ------
    ProbeConfigError
        A setting ``mode=universal`` cannot work with (:func:`check_universal_job`),
        before the fit.
    """
    settings = check_universal_job(job)
    output_dir = Path(output_dir)
    device = job.device
    rows = plan.images.shape[0]
    sources = plan.sources.cpu()
    if clean_logits.ndim != 2 or int(sources.max()) >= clean_logits.shape[0]:
        raise ValueError(
            f"`clean_logits` must hold the logits of every source image, shape (S, classes) with S > "
            f"{int(sources.max())}; got {tuple(clean_logits.shape)}"
        )
    heldout = split_sources(sources, settings.holdout, job.seed)
    fit_rows = (~heldout).nonzero().flatten()
    heldout_rows = heldout.nonzero().flatten()
    heldout_sources = torch.unique(sources[heldout])
    images = plan.images.to(device)
    attack_target = plan.attack_target.to(device)
    row_delta = None
    if settings.per_class:
        row_delta = (plan.targets if job.targeted else plan.attack_target).to(device)
    log.info("universal δ (%s): fit on %d rows, %d held out (%d source images), %d epochs of batch_size=%d",
             "one per class" if settings.per_class else "one for all", fit_rows.numel(), heldout_rows.numel(),
             heldout_sources.numel(), settings.epochs, job.batch_size)
    fit_index = fit_rows.to(device)
    fit = _fit(job, inputs, images[fit_index], attack_target[fit_index],
               None if row_delta is None else row_delta[fit_index], settings)

    xadv, logits = universal_outputs(inputs.classifier, images, fit.delta, classes=row_delta,
                                     data_range=job.attack.data_range, batch_size=job.batch_size)
    met = goal_met(logits.float(), attack_target, targeted=job.targeted, confidence=job.attack.confidence)
    xadv, logits, met = xadv.detach().cpu(), logits.detach().float().cpu(), met.cpu()
    delta = fit.delta.detach().cpu()
    norm = attack_norm(job.attack)
    epsilon = job.attack.epsilon if norm is not None else None
    row_clean_logits = clean_logits.detach().float().cpu()[sources]
    per_image = per_image_metrics(
        plan.images.cpu(), xadv,
        clean_logits=row_clean_logits, adv_logits=logits,
        labels=plan.labels.cpu(), targets=plan.targets.cpu() if job.targeted else None,
        success=met, first_success_step=torch.full((rows,), fit.steps_run, dtype=torch.int64),
        epsilon=epsilon, norm=norm,
    )
    row_delta_cpu = row_delta.cpu() if row_delta is not None else torch.zeros(rows, dtype=torch.int64)
    summary_extra = _summary(per_image, heldout, fit, settings, job, norm, row_delta_cpu, inputs.class_names,
                             heldout_sources)

    output_dir.mkdir(parents=True, exist_ok=True)
    _save_universal(output_dir, job, settings, fit, delta, norm, row_delta_cpu, fit_rows, heldout_rows,
                    heldout_sources)
    files = None if inputs.data.files is None else [inputs.data.files[k] for k in sources.tolist()]
    extra: dict[str, Any] = {"sources": sources, "goal_met": met, "heldout": heldout, "row_delta": row_delta_cpu,
                             "rows": torch.arange(rows)}
    if files is not None:
        extra["source_files"] = files
    save_perturbations(
        output_dir, images=plan.images.cpu(), xadv=xadv, labels=plan.labels.cpu(),
        targets=plan.targets.cpu() if job.targeted else None, clean_logits=row_clean_logits, adv_logits=logits,
        success=per_image["success"], first_success_step=torch.full((rows,), fit.steps_run, dtype=torch.int64),
        loss_trace=fit.loss_trace.float().cpu(), class_names=inputs.class_names, extra=extra,
        epsilon=epsilon, norm=norm,
    )
    write_per_image_csv(output_dir, per_image, inputs.class_names, sources=files)
    figures = _draw(job, output_dir, plan, per_image, xadv, delta, fit, heldout_rows, row_delta_cpu,
                    inputs.class_names, summary_extra["universal"])
    entry = summary_extra["universal"]
    log.info("universal δ: success %s on the fit images, %s on the %d held-out images",
             _shown(entry["fit_success_rate"]), _shown(entry["heldout_success_rate"]), entry["n_heldout"])
    return UniversalOutcome(per_image=per_image, summary_extra=summary_extra, figures=figures, xadv=xadv,
                            delta=delta, logits=logits, heldout=heldout)


def _shown(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate:.3f}"


def _save_universal(output_dir: Path, job: ProbeJob, settings: UniversalSettings, fit: UniversalResult,
                    delta: Tensor, norm: str | None, row_delta: Tensor, fit_rows: Tensor, heldout_rows: Tensor,
                    heldout_sources: Tensor) -> Path:
    k = delta.shape[0] if settings.per_class else 1
    payload = {
        "delta": delta.clone(),
        "per_class": settings.per_class,
        "delta_classes": torch.arange(k) if settings.per_class else torch.tensor([-1]),
        "row_delta": row_delta.clone(),
        "epsilon": float(job.attack.epsilon),
        "norm": norm,
        "fit_rows": fit_rows.clone(),
        "heldout_rows": heldout_rows.clone(),
        "heldout_sources": heldout_sources.clone(),
        "epochs": settings.epochs,
        "steps": fit.steps_run,
        "batch_size": job.batch_size,
        "holdout": settings.holdout,
        "best_epoch": fit.best_epoch.cpu().clone(),
        "loss_trace": fit.loss_trace.float().cpu().clone(),
        "success_trace": fit.success_trace.float().cpu().clone(),
        "epoch_success": fit.epoch_success.clone() if fit.epoch_success is not None else torch.empty(0),
        "optimizer": job.attack.optimizer,
        "targeted": job.targeted,
        "seed": int(job.seed),
    }
    return write_atomic(output_dir / UNIVERSAL_FILE, save=lambda file: torch.save(payload, file))


# --------------------------------------------------------------------------- #
# figures
# --------------------------------------------------------------------------- #
def _draw(job: ProbeJob, output_dir: Path, plan: ProbePlan, per_image: Mapping[str, Tensor], xadv: Tensor,
          delta: Tensor, fit: UniversalResult, heldout_rows: Tensor, row_delta: Tensor,
          class_names: Sequence[str], entry: Mapping[str, Any]) -> list[str]:
    figures_dir = output_dir / FIGURES_DIR
    shown = heldout_rows[: job.images_per_grid]
    if entry["per_class"]:
        panels = torch.tensor([c["class"] for c in entry["classes"]], dtype=torch.long)
    else:
        panels = torch.tensor([-1])
    rate = _shown(entry["heldout_success_rate"])
    kind = "one δ per class" if entry["per_class"] else "one δ for every image"
    title = (f"universal perturbation: {kind}\n{job.attack.optimizer}, ε={job.attack.epsilon:g} "
             f"({entry['norm']}), held-out success {rate}")
    paths = [plot_universal(
        figures_dir / "universal.png", _delta_rows(delta)[panels.clamp(min=0)], delta_classes=panels,
        class_names=class_names, images=plan.images[shown], xadv=xadv[shown],
        labels=per_image["label"][shown], targets=per_image["target"][shown] if job.targeted else None,
        clean_pred=per_image["clean_pred"][shown], clean_conf=per_image["clean_conf"][shown],
        adv_pred=per_image["adv_pred"][shown], adv_conf=per_image["adv_conf"][shown],
        success=per_image["success"][shown], norm=entry["norm"], title=title,
    )]
    if job.max_grids > 0 and shown.numel():
        paths.append(plot_batch_grid(
            figures_dir / "heldout.png", plan.images[shown], xadv[shown], labels=per_image["label"][shown],
            clean_pred=per_image["clean_pred"][shown], clean_conf=per_image["clean_conf"][shown],
            adv_pred=per_image["adv_pred"][shown], adv_conf=per_image["adv_conf"][shown],
            class_names=class_names, targets=per_image["target"][shown] if job.targeted else None,
            max_images=job.images_per_grid, success=per_image["success"][shown],
            title=f"held-out images with the universal δ (clamped into the data range): success {rate}",
        ))
    paths.append(plot_loss_trace(figures_dir / "loss_trace.png", fit.loss_trace.float().cpu(),
                                 ylabel=f"{job.attack.loss} loss, mean over each mini-batch (one step each)"))
    return [str(path.relative_to(output_dir)) for path in paths]


def plot_universal(
    path: str | Path,
    delta: Tensor,
    *,
    delta_classes: Tensor,
    class_names: Sequence[str] | None,
    images: Tensor,
    xadv: Tensor,
    labels: Tensor,
    clean_pred: Tensor,
    clean_conf: Tensor,
    adv_pred: Tensor,
    adv_conf: Tensor,
    success: Tensor,
    targets: Tensor | None = None,
    norm: str | None = None,
    title: str | None = None,
) -> Path:
    """Draw δ (one panel per class) on one colour scale with a colour bar, then images before and after.

    Row 1: each δ of ``delta`` ``(K, C, H, W)``, signed (diverging colours,
    the colour bar in data units) for grayscale images, ``|δ|`` summed over
    channels for colour ones; the panel title names its class
    (``delta_classes[k]``, ``-1``: every image) and its norm. Rows 2 and 3:
    the images (true label, clean prediction) and their perturbed versions
    (prediction, ✓ framed green when the attack succeeded, ✗ red).

    Examples
    --------
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> gen = torch.Generator().manual_seed(0)
    >>> images = torch.rand(3, 1, 6, 6, generator=gen)
    >>> delta = torch.randn(2, 1, 6, 6, generator=gen) * 0.1
    >>> xadv = (images + delta[torch.tensor([0, 1, 1])]).clamp(0, 1)
    >>> n = torch.zeros(3, dtype=torch.long)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = plot_universal(Path(tmp) / "u.png", delta, delta_classes=torch.tensor([0, 1]),
    ...         class_names=["a", "b"], images=images, xadv=xadv, labels=n, clean_pred=n,
    ...         clean_conf=torch.ones(3), adv_pred=n + 1, adv_conf=torch.ones(3),
    ...         success=torch.tensor([True, False, True]), norm="l2")
    ...     print(path.stat().st_size > 1000)
    True
    """
    if delta.ndim != 4 or delta.shape[0] == 0:
        raise ValueError(f"`delta` must have shape (K, C, H, W) with K >= 1; got {tuple(delta.shape)}")
    k = delta.shape[0]
    if tuple(delta_classes.shape) != (k,):
        raise ValueError(f"`delta_classes` must have shape ({k},), one class per δ; got {tuple(delta_classes.shape)}")
    n = images.shape[0]
    grayscale = delta.shape[1] == 1
    values = delta.detach().to("cpu", torch.float32)
    maps = values[:, 0] if grayscale else values.abs().sum(dim=1)
    maps_np = maps.numpy()
    limit = color_limit(maps_np)
    cols = max(k, n, 1)
    rows = 3 if n else 1
    heading = [title] if title else []
    figure, axes = image_grid(rows, cols, cell=1.5, title_lines=3, right=0.8, left=0.45,
                               heading_lines=sum(text.count("\n") + 1 for text in heading))
    for ax in axes.flat:
        bare_axes(ax)
        ax.set_frame_on(False)
    shown = None
    classes_np = delta_classes.cpu().numpy().astype(np.int64)
    for j in range(k):  # drawing: one panel per δ
        ax = axes[0, j]
        ax.set_frame_on(True)
        if grayscale:
            shown = ax.imshow(maps_np[j], cmap=SIGNED_CMAP, vmin=-limit, vmax=limit, interpolation="nearest")
        else:
            shown = ax.imshow(maps_np[j], cmap=HEAT_CMAP, vmin=0.0, vmax=limit, interpolation="nearest")
        who = "every image" if classes_np[j] < 0 else f"class {class_label(int(classes_np[j]), class_names)}"
        size = ""
        if norm is not None:
            flat = values[j].flatten().double()
            size = {"l1": flat.abs().sum(), "l2": flat.norm(), "linf": flat.abs().max()}[norm]
            size = f"\n{norm} {float(size):.3g}"
        ax.set_title(f"δ for {who}{size}", fontsize=7)
    color_bar(figure, shown, [axes[0, k - 1]], "δ (signed)" if grayscale else "|δ| (sum over channels)")
    axes[0, 0].set_ylabel("δ", fontsize=8)
    if n:
        originals, perturbed = displayable(images), displayable(xadv)
        hits = success.cpu().numpy().astype(bool)
        for i in range(n):  # drawing: one column per image
            show_image(axes[1, i], originals[i])
            axes[1, i].set_frame_on(True)
            axes[1, i].set_title(
                f"true: {class_label(int(labels[i]), class_names)}\n"
                f"pred: {class_label(int(clean_pred[i]), class_names)} ({float(clean_conf[i]):.2f})", fontsize=7)
            show_image(axes[2, i], perturbed[i])
            axes[2, i].set_frame_on(True)
            text = f"adv: {class_label(int(adv_pred[i]), class_names)} ({float(adv_conf[i]):.2f})"
            if targets is not None and int(targets[i]) >= 0:
                text += f"\ntarget: {class_label(int(targets[i]), class_names)}"
            text += "\n✓ flipped" if hits[i] else "\n✗ not flipped"
            frame_axes(axes[2, i], SUCCESS_COLOR if hits[i] else FAIL_COLOR)
            axes[2, i].set_title(text, fontsize=7)
        axes[1, 0].set_ylabel("held-out", fontsize=8)
        axes[2, 0].set_ylabel("+ δ", fontsize=8)
    if heading:
        figure.suptitle("\n".join(heading), fontsize=9, y=1 - 0.05 / figure.get_figheight())
    return save_figure(figure, path)

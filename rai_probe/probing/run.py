"""Run one probe job: settings -> model -> data -> plan -> attack batches -> metrics -> files and pictures.

Every setting is checked before anything heavy is loaded (:func:`check_settings`
of the whole config, then the attack), the model is loaded and the attack's
shape-dependent options are checked against its input, then the data is
loaded. An attack that cannot spend its budget on these images (its
optimizer keeps too few entries per step for the box to let it reach ε; asked
of :class:`~rai_probe.perturbations.Attack` when it can say) is named in one
log warning before any image is attacked. Ctrl-C during the attack keeps every
finished batch: they are saved and the job is marked ``interrupted``
(:class:`~rai_probe.jobs.hydra_app.JobInterrupted`).

What the numbers mean is in :mod:`rai_probe.probing.metrics` (clean mistakes
are attacked and recorded, but never count as successes).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from ..errors import SettingError
from ..jobs.errors import typed_override
from ..jobs.hydra_app import JobInterrupted
from ..jobs.rundir import RunDirectory, RunDirectoryBusy
from ..perturbations.attacks import Attack
from ..perturbations.ensemble import attack_norm
from ..progress import Progress
from ..runtime import select_device, set_threads
from .artifacts import FIGURES_DIR, save_perturbations, write_metrics, write_per_image_csv
from .figures import plot_class_grid, plot_loss_trace, save_batch_grids
from .metrics import honest_success, per_image_metrics, summarize
from .schema import check_probe_settings
from .settings import (
    ProbeConfigError,
    ProbePlan,
    attack_from_config,
    check_attack_shape,
    data_from_config,
    model_from_config,
    plan_from_config,
)

__all__ = ["run_probe", "ProbeOutcome"]

log = logging.getLogger(__name__)


class ProbeOutcome(dict):
    """What :func:`run_probe` returns: the summary plus where the files went."""


@dataclass
class _Job:
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


@dataclass
class _Attacked:
    """The attack's results over the rows it finished (all of them unless interrupted)."""

    rows: int
    xadv: Tensor
    logits: Tensor
    success: Tensor
    first_success: Tensor
    loss_trace: Tensor
    datum_trace: Tensor | None
    interrupted: bool


def _checked_settings(cfg: Mapping[str, Any], overrides: Sequence[str]) -> _Job:
    """Every setting that can be checked without loading anything, checked."""
    if cfg.get("attack") is None:
        raise ProbeConfigError("no attack chosen", typed_override("+attack", overrides))
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
    targeted = mode.get("targeted", False)
    figures = dict(cfg.get("figures") or {})
    return _Job(
        cfg=cfg,
        overrides=overrides,
        n_images=cfg.get("n_images", 16),
        batch_size=cfg.get("batch_size", 64),
        seed=cfg.get("seed", 0),
        device=device,
        mode=mode,
        targeted=targeted,
        attack=attack_from_config(cfg["attack"], targeted=targeted, overrides=overrides),
        progress=cfg.get("progress", True),
        max_grids=figures.get("max_grids", 4),
        images_per_grid=figures.get("images_per_grid", 8),
    )


def _padded_traces(traces: Sequence[Tensor]) -> Tensor:
    """Stack traces of different lengths (early stopping) along dim 0, repeating each last value."""
    length = max(trace.shape[0] for trace in traces)
    padded = [
        torch.cat([trace, trace[-1:].expand(length - trace.shape[0], *trace.shape[1:])]) for trace in traces
    ]
    return torch.cat(padded, dim=1) if traces[0].ndim == 2 else torch.stack(padded)


def _reachable_norm(attack: Attack, image_shape: Sequence[int]) -> float | None:
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


def _warn_if_budget_unspendable(attack: Attack, image_shape: Sequence[int], reachable: float | None) -> None:
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


def _attack_batches(job: _Job, model: torch.nn.Module, plan: ProbePlan, clean_pred: Tensor) -> _Attacked:
    """Attack the plan's rows batch by batch; Ctrl-C keeps the finished batches.

    ``clean_pred`` (the model's clean prediction of each row) only feeds the
    progress bar's success rate, which counts no clean mistake.
    """
    rows = plan.images.shape[0]
    generator = torch.Generator(device=job.device).manual_seed(job.seed)
    pieces: dict[str, list[Tensor]] = {"xadv": [], "logits": [], "success": [], "first": []}
    traces: list[Tensor] = []
    datum_traces: list[Tensor] = []
    finished = succeeded = 0
    interrupted = False
    with Progress(rows, "attack", enabled=job.progress) as bar:
        try:
            for first in range(0, rows, job.batch_size):
                part = slice(first, min(first + job.batch_size, rows))
                result = job.attack.run(
                    model, plan.images[part], plan.attack_target[part], generator=generator, progress=job.progress
                )
                pieces["xadv"].append(result.xadv)
                pieces["logits"].append(result.logits.float())
                pieces["success"].append(result.success)
                pieces["first"].append(result.first_success_step)
                traces.append(result.loss_trace.float())
                if result.datum_loss_trace is not None:
                    datum_traces.append(result.datum_loss_trace.float())
                finished = part.stop
                honest = honest_success(result.success, clean_pred=clean_pred[part], labels=plan.labels[part],
                                        targets=plan.targets[part])[1]
                succeeded += int(honest.sum())
                bar.update(part.stop - part.start, success=round(succeeded / part.stop, 3))  # so far
        except KeyboardInterrupt:
            if not finished:
                raise
            interrupted = True
            log.warning("interrupted: saving the %d of %d images finished", finished, rows)
        except SettingError as error:  # the solver refused the model's outputs or the images themselves
            if error.setting not in ("model", "data"):
                raise
            model_cfg = job.cfg["model"]
            key = "data" if error.setting == "data" else ("model.checkpoint" if model_cfg.get("checkpoint") else "model")
            raise ProbeConfigError(
                f"model={model_cfg.get('name')}, data={job.cfg['data'].get('name')}: {error}",
                typed_override(key, job.overrides),
            ) from None
    datum_trace = _padded_traces(datum_traces) if len(datum_traces) == len(traces) else None
    if datum_trace is not None:
        loss_trace = datum_trace.mean(dim=1)
    else:  # a criterion without per-image losses: its batch totals, averaged over images
        loss_trace = _padded_traces(traces).sum(dim=0) / finished
    return _Attacked(
        rows=finished,
        xadv=torch.cat(pieces["xadv"]),
        logits=torch.cat(pieces["logits"]),
        success=torch.cat(pieces["success"]),
        first_success=torch.cat(pieces["first"]),
        loss_trace=loss_trace,
        datum_trace=datum_trace,
        interrupted=interrupted,
    )


def _draw_figures(job: _Job, output_dir: Path, plan: ProbePlan, attacked: _Attacked,
                  per_image: Mapping[str, Tensor], class_names: list[str]) -> list[str]:
    figures_dir = output_dir / FIGURES_DIR
    targets = plan.targets if job.targeted else None
    grids = save_batch_grids(
        output_dir,
        plan.images,
        attacked.xadv,
        labels=plan.labels,
        clean_pred=per_image["clean_pred"],
        clean_conf=per_image["clean_conf"],
        adv_pred=per_image["adv_pred"],
        adv_conf=per_image["adv_conf"],
        class_names=class_names,
        targets=targets,
        batch_size=job.images_per_grid,
        max_images=job.images_per_grid,
        max_grids=job.max_grids,
    )
    figures = [str(path.relative_to(output_dir)) for path in grids]
    trace_path = plot_loss_trace(
        figures_dir / "loss_trace.png",
        attacked.loss_trace,
        datum_loss_trace=attacked.datum_trace,
        ylabel="cross-entropy (mean over images)",
    )
    figures.append(str(trace_path.relative_to(output_dir)))
    if job.targeted:
        grid = plot_class_grid(
            figures_dir / "class_grid.png",
            attacked.xadv,
            sources=plan.sources,
            targets=plan.targets,
            class_names=class_names,
            deltas=attacked.xadv - plan.images,
            success=attacked.success,
        )
        figures.append(str(grid.relative_to(output_dir)))
    return figures


def _rates_text(summary: Mapping[str, Any]) -> str:
    """``"clean accuracy 0.938, robust accuracy 0.750, flip rate 0.200, budget used 0.61"`` (the rates that apply)."""
    shown = [("clean accuracy", "clean_accuracy"), ("robust accuracy", "robust_accuracy"),
             ("flip rate", "flip_rate")]
    if summary.get("flip_rate") is None:
        shown.append(("success rate", "attack_success_rate"))
    parts = [f"{label} {summary[key]:.3f}" for label, key in shown if summary.get(key) is not None]
    used = (summary.get("budget_used") or {}).get("mean")
    if used is not None:
        parts.append(f"budget used {used:.2f}")
    return ", ".join(parts) or "no rate applies"


def _first_rows(plan: ProbePlan, rows: int) -> ProbePlan:
    if rows == plan.images.shape[0]:
        return plan
    return ProbePlan(*(getattr(plan, name)[:rows] for name in ("images", "labels", "targets", "attack_target", "sources")))


def run_probe(cfg: Mapping[str, Any], output_dir: str | Path, overrides: Sequence[str] = ()) -> ProbeOutcome:
    """Run the probe a ``configs/probe.yaml``-shaped mapping describes, writing every output.

    Writes, in ``output_dir``: ``perturbations.pt`` (the attacked images
    only: images, perturbed images, deltas, labels, targets, logits,
    success), ``per_image.csv``, ``figures/`` (batch grids, loss trace, class
    grid in probe mode) and, last, ``metrics.json``, whose presence marks the
    job complete. The directory is held for the job (a second live job
    pointed at it is refused) and a previous run's completion markers are
    removed before any setting is checked.

    Raises
    ------
    ProbeConfigError
        A setting that cannot work, naming the override that fixes it.
    JobInterrupted
        Ctrl-C during the attack, after the finished images were saved and
        the job marked ``interrupted``.
    """
    output_dir = Path(output_dir)
    try:
        run_dir = RunDirectory(output_dir).__enter__()
    except RunDirectoryBusy as error:
        raise ProbeConfigError(str(error), typed_override("hydra.run.dir", overrides)) from None
    try:
        return _run(cfg, output_dir, overrides)
    finally:
        run_dir.release()


def _run(cfg: Mapping[str, Any], output_dir: Path, overrides: Sequence[str]) -> ProbeOutcome:
    start = time.monotonic()
    job = _checked_settings(cfg, overrides)
    model = model_from_config(cfg["model"], job.device, overrides)
    check_attack_shape(job.attack, cfg["attack"], tuple(model.info.input_shape), overrides)
    reachable = _reachable_norm(job.attack, tuple(model.info.input_shape))
    _warn_if_budget_unspendable(job.attack, tuple(model.info.input_shape), reachable)
    data = data_from_config(cfg["data"], model, n_images=job.n_images, seed=job.seed, overrides=overrides)
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
    log.info(
        "probing %s (%s) with %s on %d %s images (%s mode); outputs in %s",
        cfg["model"].get("name"),
        model.info.arch,
        cfg["attack"].get("name", job.attack.optimizer),
        len(data),
        data.name,
        job.mode.get("name", "explain"),
        output_dir.resolve(),
    )

    with torch.no_grad():
        source_logits = torch.cat(
            [model(data.images[i : i + job.batch_size].to(job.device)) for i in range(0, len(data), job.batch_size)]
        )
    full_plan = plan_from_config(job.mode, data, model, source_logits.argmax(dim=1))
    attacked = _attack_batches(job, model, full_plan, source_logits.argmax(dim=1)[full_plan.sources])
    plan = _first_rows(full_plan, attacked.rows)
    clean_logits = source_logits[plan.sources].float()
    targets = plan.targets if job.targeted else None
    norm = attack_norm(job.attack)
    epsilon = job.attack.epsilon if norm is not None else None

    per_image = per_image_metrics(
        plan.images,
        attacked.xadv,
        clean_logits=clean_logits,
        adv_logits=attacked.logits,
        labels=plan.labels,
        targets=targets,
        success=attacked.success,
        first_success_step=attacked.first_success,
        epsilon=epsilon,
        norm=norm,
    )
    summary = summarize(per_image)

    output_dir.mkdir(parents=True, exist_ok=True)
    save_perturbations(
        output_dir,
        images=plan.images,
        xadv=attacked.xadv,
        labels=plan.labels,
        targets=targets,
        clean_logits=clean_logits,
        adv_logits=attacked.logits,
        success=per_image["success"],
        first_success_step=attacked.first_success,
        loss_trace=attacked.loss_trace,
        class_names=class_names,
        extra={"sources": plan.sources.cpu(), "goal_met": attacked.success.cpu()}
        | ({"datum_loss_trace": attacked.datum_trace.cpu()} if attacked.datum_trace is not None else {}),
        epsilon=epsilon,
        norm=norm,
    )
    write_per_image_csv(output_dir, per_image, class_names)
    planned = full_plan.images.shape[0]
    if attacked.interrupted:
        write_metrics(
            output_dir,
            summary,
            config=dict(cfg),
            overrides=list(overrides),
            extra={"rows_finished": attacked.rows, "rows_planned": planned},
            status="interrupted",
        )
        raise JobInterrupted(attacked.rows, planned)

    figures = _draw_figures(job, output_dir, plan, attacked, per_image, class_names)
    seconds = time.monotonic() - start
    extra = {
        "attack": {"name": cfg["attack"].get("name"), **job.attack.to_dict()},
        "model": {
            "name": cfg["model"].get("name"),
            "arch": model.info.arch,
            "source": model.info.source,
            "num_classes": model.info.num_classes,
        },
        "data": {"name": data.name, "split": data.split, "n_sources": len(data)},
        "budget": {"norm": norm, "epsilon": epsilon, "reachable_norm": reachable},
        "mode": job.mode,
        "seconds": round(seconds, 2),
        "figures": figures,
    }
    metrics_path = write_metrics(output_dir, summary, config=dict(cfg), overrides=list(overrides), extra=extra)
    log.info(
        "done in %.1f s: %s, median L0 %s pixels; metrics in %s",
        seconds,
        _rates_text(summary),
        summary.get("l0_pixels", {}).get("median"),
        metrics_path.resolve(),
    )
    return ProbeOutcome(summary=summary, output_dir=str(output_dir), metrics=str(metrics_path), figures=figures)

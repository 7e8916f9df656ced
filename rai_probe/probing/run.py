"""Run one probe job, as a story of small stages sharing one result object (:class:`ProbeRun`).

settings (:func:`~rai_probe.probing.job.checked_job`: every setting checked
before anything heavy is loaded) -> model and images
(:func:`~rai_probe.probing.job.load_inputs`: the attack is checked against
the model's input and warns when it cannot spend its budget) -> the planned
rows (:func:`plan_rows`) -> the attack, batch by batch
(:func:`~rai_probe.probing.attacking.attack_rows`; Ctrl-C keeps the finished
batches) -> metrics (:func:`measure`) -> files (:func:`save_results`) ->
pictures (:func:`draw_figures`) -> ``metrics.json``, written last
(:func:`record`). An interrupted job is saved and marked ``interrupted``
(:class:`~rai_probe.jobs.hydra_app.JobInterrupted`).

What the numbers mean is in :mod:`rai_probe.probing.metrics` (clean mistakes
are attacked and recorded, but never count as successes).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from ..jobs.errors import typed_override
from ..jobs.hydra_app import JobInterrupted
from ..jobs.rundir import RunDirectory, RunDirectoryBusy
from ..perturbations.ensemble import attack_norm
from .artifacts import save_perturbations, write_metrics, write_per_image_csv
from .attacking import AttackedRows, attack_rows
from .batches import BatchRecords, config_fingerprint, shard_batches
from .quality import faithfulness, minimality, stability
from .row_figures import draw_row_figures
from .job import ProbeInputs, ProbeJob, checked_job, load_inputs
from .metrics import MINIMAL_KEYS, per_image_metrics, summarize
from .modes import (ModeInputs, ModeSummaries, add_mode_columns, draw_mode_figures, mode_record, mode_summaries,
                    save_mode_tensors)
from .universal import check_universal_job, run_universal
from .selection import class_index, needs_selection, select_sources
from .settings import ProbeConfigError, ProbePlan, plan_from_config

__all__ = ["run_probe", "ProbeOutcome", "ProbeRun", "plan_rows", "measure", "save_results", "draw_figures", "record"]

log = logging.getLogger(__name__)


class ProbeOutcome(dict):
    """What :func:`run_probe` returns: the summary plus where the files went."""


@dataclass
class ProbeRun:
    """Everything one probe job made, stage by stage (the fields after ``job`` fill in as it runs)."""

    output_dir: Path
    job: ProbeJob
    inputs: ProbeInputs | None = None
    planned_rows: int = 0
    plan: ProbePlan | None = None
    batches: range = range(0)
    first_row: int = 0
    clean_logits: Tensor | None = None
    attacked: AttackedRows | None = None
    per_image: dict[str, Tensor] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)
    records: BatchRecords | None = None
    quality: dict[str, Tensor] = field(default_factory=dict)
    mode_record: dict[str, Any] = field(default_factory=dict)  # the mode's entries of metrics.json
    mode_files: list[str] = field(default_factory=list)  # the mode's tensor files (contrast.pt, ...)
    mode_summaries: ModeSummaries = field(default_factory=ModeSummaries)  # its dataset-level tensors
    started: float = field(default_factory=time.monotonic)

    @property
    def norm(self) -> str | None:
        """The attack's norm (``"l1"``, ``"l2"``, ``"linf"``), when it has one."""
        return attack_norm(self.job.attack)

    @property
    def budget_norm(self) -> str | None:
        """The norm the fixed budget is measured in (None where there is no fixed budget)."""
        return self.norm if self.epsilon is not None else None

    @property
    def epsilon(self) -> float | None:
        """The fixed budget of the job's rows (None in ``mode=minimal``, where each row has its own ε*)."""
        return self.job.attack.epsilon if self.norm is not None and self.job.minimal is None else None


def plan_rows(run: ProbeRun) -> None:
    """The clean predictions of the source images, the rows the mode asks to attack, and this shard's part.

    A shard (``data.shard=I data.num_shards=N``) attacks a contiguous range of
    whole batches of the plan (:func:`~rai_probe.probing.batches.shard_batches`).
    """
    job, inputs = run.job, run.inputs
    source = None
    if job.mode_name == "contrast":
        source = class_index(job.mode.get("source"), inputs.class_names, typed_override("mode.source", job.overrides))
    inputs.data, run.clean_logits = select_sources(
        inputs.data, inputs.classifier, select=job.mode.get("select", "all"), source=source,
        n_images=job.n_images if needs_selection(job.mode) else len(inputs.data), batch_size=job.batch_size,
        device=job.device)
    plan = plan_from_config(job.mode, inputs.data, inputs.model, run.clean_logits.argmax(dim=1))
    total = plan.images.shape[0]
    run.batches = shard_batches(-(-total // job.batch_size), job.num_shards, job.shard)
    run.first_row = run.batches.start * job.batch_size
    stop = min(run.batches.stop * job.batch_size, total)
    run.plan = _rows(plan, slice(run.first_row, stop))
    run.planned_rows = run.plan.images.shape[0]
    if job.num_shards > 1:
        log.info("shard %d of %d: rows %d to %d of %d (batches %d to %d)", job.shard, job.num_shards,
                 run.first_row, stop - 1, total, run.batches.start, run.batches.stop - 1)
    if run.planned_rows == 0:
        raise ProbeConfigError(
            f"data.shard={job.shard} of data.num_shards={job.num_shards} holds no batch: the job has "
            f"{-(-total // job.batch_size)} batches of batch_size={job.batch_size}; use fewer shards",
            typed_override("data.num_shards", job.overrides),
        )


def attack(run: ProbeRun) -> None:
    """Attack the planned rows, reusing recorded batches with ``resume=true``; keep the rows finished."""
    records = BatchRecords(run.output_dir, config_fingerprint(run.job.cfg), resume=run.job.resume)
    clean_pred = run.clean_logits.argmax(dim=1)[run.plan.sources]
    run.attacked = attack_rows(run.job, run.inputs.classifier, run.plan, clean_pred, batches=run.batches,
                               records=records)
    run.plan = _rows(run.plan, slice(0, run.attacked.rows))
    run.plan = ProbePlan(*(getattr(run.plan, name).cpu() for name in _PLAN_FIELDS))
    run.clean_logits = run.clean_logits[run.plan.sources.to(run.clean_logits.device)].float().cpu()
    run.records = records


def measure(run: ProbeRun) -> None:
    """Per-image metrics and their summary (:mod:`rai_probe.probing.metrics`)."""
    plan, attacked = run.plan, run.attacked
    run.per_image = per_image_metrics(
        plan.images,
        attacked.xadv,
        clean_logits=run.clean_logits,
        adv_logits=attacked.logits,
        labels=plan.labels,
        targets=plan.targets if run.job.targeted else None,
        success=attacked.success,
        first_success_step=attacked.first_success,
        epsilon=run.epsilon,
        norm=run.budget_norm,
    )
    run.per_image["index"] = run.per_image["index"] + run.first_row  # a shard's rows keep their place in the job
    add_mode_columns(run)
    run.summary = summarize(run.per_image)


def assess(run: ProbeRun) -> None:
    """The explanation-quality metrics the job's ``metrics`` settings ask for, added to the per-image records.

    Computed batch by batch, on the job's own batches, so that a shard or a
    resumed job computes exactly what one whole job does.
    """
    job, settings = run.job, run.job.metrics
    rows = run.plan.images.shape[0]
    parts = [_assess_batch(run, slice(start, min(start + job.batch_size, rows)))
             for start in range(0, rows, job.batch_size)]
    quality = {key: torch.cat([part[key] for part in parts]) for key in (parts[0] if parts else {})}
    if settings["stability_restarts"] >= 2:
        quality.update(stability(_restarted_deltas(run, settings["stability_restarts"])))
    run.quality = {key: value.detach().double().cpu() for key, value in quality.items()}
    run.per_image.update(run.quality)
    run.summary = summarize(run.per_image)


def _assess_batch(run: ProbeRun, part: slice) -> dict[str, Tensor]:
    job, settings = run.job, run.job.metrics
    device = job.device
    x = run.plan.images[part].to(device)
    delta = (run.attacked.xadv[part] - run.plan.images[part]).to(device)
    reference = run.plan.attack_target[part].to(device)
    classifier = run.inputs.classifier
    quality: dict[str, Tensor] = {}
    if settings["faithfulness"]:
        rows = torch.arange(part.start, part.stop) + run.first_row
        quality.update(faithfulness(classifier, x, delta, reference=reference, targeted=job.targeted,
                                    points=settings["curve_points"], random_baseline=settings["random_baseline"],
                                    seed=job.seed, rows=rows))
    if settings["minimality"]:
        quality["droppable_fraction"] = minimality(
            classifier, x, delta, reference=reference, targeted=job.targeted,
            max_pixels=settings["max_greedy_pixels"])["droppable_fraction"]
    return {key: value.detach().double().cpu() for key, value in quality.items()}


def _restarted_deltas(run: ProbeRun, restarts: int) -> Tensor:
    """The perturbations of ``restarts`` runs of the attack (the job's own, then other seeds), ``(R, N, ...)``."""
    plan = ProbePlan(*(getattr(run.plan, name).to(run.job.device) for name in _PLAN_FIELDS))
    clean_pred = run.clean_logits.argmax(dim=1).to(run.job.device)
    deltas = [run.attacked.xadv - run.plan.images]
    for restart in range(1, restarts):
        job = dataclasses.replace(run.job, seed=run.job.seed + 7919 * restart, progress=False)
        again = attack_rows(job, run.inputs.classifier, plan, clean_pred, batches=run.batches)
        deltas.append(again.xadv - run.plan.images)
    return torch.stack(deltas)


def save_results(run: ProbeRun) -> None:
    """``perturbations.pt`` (the attacked rows only) and ``per_image.csv``."""
    plan, attacked = run.plan, run.attacked
    run.output_dir.mkdir(parents=True, exist_ok=True)
    extra = {"sources": plan.sources.cpu(), "goal_met": attacked.success.cpu(), "quality": run.quality,
             "rows": torch.arange(run.first_row, run.first_row + plan.images.shape[0])}
    minimal = {key: run.per_image[key] for key in MINIMAL_KEYS if key in run.per_image}
    if minimal:
        extra["minimal"] = minimal
    files = _source_files(run)
    if files is not None:
        extra["source_files"] = files
    if attacked.datum_trace is not None:
        extra["datum_loss_trace"] = attacked.datum_trace.cpu()
    save_perturbations(
        run.output_dir,
        images=plan.images,
        xadv=attacked.xadv,
        labels=plan.labels,
        targets=plan.targets if run.job.targeted else None,
        clean_logits=run.clean_logits,
        adv_logits=attacked.logits,
        success=run.per_image["success"],
        first_success_step=attacked.first_success,
        loss_trace=attacked.loss_trace,
        class_names=run.inputs.class_names,
        extra=extra,
        epsilon=run.epsilon,
        norm=run.budget_norm,
    )
    write_per_image_csv(run.output_dir, run.per_image, run.inputs.class_names, sources=files)
    inputs = ModeInputs.of_run(run)
    run.mode_summaries = mode_summaries(inputs)
    run.mode_files = save_mode_tensors(inputs, run.mode_summaries)


def _source_files(run: ProbeRun) -> list[str] | None:
    """Each attacked row's file (``data=folder``: relative to ``data.root``), or None."""
    files = run.inputs.data.files
    return None if files is None else [files[k] for k in run.plan.sources.tolist()]


def draw_figures(run: ProbeRun) -> None:
    """The batch grids, the loss trace, in probe mode the class grid, and the mode's own figures."""
    inputs = ModeInputs.of_run(run)
    run.mode_record = mode_record(inputs, run.mode_summaries)
    run.figures = _draw_figures(run.job, run.output_dir, run.plan, run.attacked, run.per_image, run.inputs.class_names)
    mode_figures = draw_mode_figures(inputs, run.mode_record, run.mode_summaries)
    run.figures += [str(path.relative_to(run.output_dir)) for path in mode_figures]


def record(run: ProbeRun, *, interrupted: bool = False, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``metrics.json``, last: ``"complete"``, or ``"interrupted"`` with the rows finished.

    ``extra`` (a mode's own entries) is merged in last.
    """
    job, inputs = run.job, run.inputs
    mode_extra = dict(extra or {})
    cfg = job.cfg
    if interrupted:
        return write_metrics(
            run.output_dir,
            run.summary,
            config=dict(cfg),
            overrides=list(job.overrides),
            extra={"rows_finished": run.attacked.rows, "rows_planned": run.planned_rows},
            status="interrupted",
        )
    metrics = {
        "attack": {"name": cfg["attack"].get("name"), **job.attack.to_dict()},
        "model": {
            "name": cfg["model"].get("name"),
            "arch": inputs.model.info.arch,
            "source": inputs.model.info.source,
            "num_classes": inputs.model.info.num_classes,
        },
        "data": {"name": inputs.data.name, "split": inputs.data.split, "n_sources": len(inputs.data)},
        "budget": {"norm": run.norm, "epsilon": run.epsilon, "reachable_norm": inputs.reachable},
        "mode": job.mode,
        "shard": {"shard": job.shard, "num_shards": job.num_shards, "first_row": run.first_row,
                  "rows": run.planned_rows},
        "precision": job.precision,
        "seconds": round(time.monotonic() - run.started, 2),
        "figures": run.figures,
        "files": run.mode_files,
        **run.mode_record,
        **mode_extra,
    }
    return write_metrics(run.output_dir, run.summary, config=dict(cfg), overrides=list(job.overrides), extra=metrics)


def run_probe(cfg: Mapping[str, Any], output_dir: str | Path, overrides: Sequence[str] = ()) -> ProbeOutcome:
    """Run the probe a ``rai_probe/configs/probe.yaml``-shaped mapping describes, writing every output.

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
    run = ProbeRun(output_dir=output_dir, job=checked_job(cfg, overrides))
    universal = run.job.mode_name == "universal"
    if universal:
        check_universal_job(run.job)  # per-image settings refused before anything loads
    run.inputs = load_inputs(run.job)
    _log_start(run)
    plan_rows(run)
    if universal:
        return _run_universal(run)
    attack(run)
    measure(run)
    if not run.attacked.interrupted:
        assess(run)
    save_results(run)
    if run.attacked.interrupted:
        record(run, interrupted=True)
        raise JobInterrupted(run.attacked.rows, run.planned_rows)
    draw_figures(run)
    metrics_path = record(run)
    run.records.clear()  # complete: the per-batch records are no longer needed
    log.info(
        "done in %.1f s: %s, median L0 %s pixels; metrics in %s",
        time.monotonic() - run.started,
        _rates_text(run.summary),
        run.summary.get("l0_pixels", {}).get("median"),
        metrics_path.resolve(),
    )
    return ProbeOutcome(summary=run.summary, output_dir=str(output_dir), metrics=str(metrics_path), figures=run.figures)


def _run_universal(run: ProbeRun) -> ProbeOutcome:
    """``mode=universal``: one perturbation (or one per class) fitted over the images, tested on held-out ones."""
    outcome = run_universal(run.job, run.inputs, run.output_dir, run.clean_logits, run.plan)
    run.per_image, run.figures = outcome.per_image, outcome.figures
    run.summary = summarize(outcome.per_image)
    metrics_path = record(run, extra=outcome.summary_extra)
    log.info("done in %.1f s: universal perturbation, held-out success rate %s; metrics in %s",
             time.monotonic() - run.started, outcome.summary_extra["universal"].get("heldout_success_rate"),
             metrics_path.resolve())
    return ProbeOutcome(summary=run.summary, output_dir=str(run.output_dir), metrics=str(metrics_path),
                        figures=run.figures, universal=outcome.summary_extra["universal"])


def _log_start(run: ProbeRun) -> None:
    cfg, inputs = run.job.cfg, run.inputs
    log.info(
        "probing %s (%s) with %s on %s%d %s images (%s mode); outputs in %s",
        cfg["model"].get("name"),
        inputs.model.info.arch,
        cfg["attack"].get("name", run.job.attack.optimizer),
        f"up to {run.job.n_images} selected from " if needs_selection(run.job.mode) else "",
        len(inputs.data),
        inputs.data.name,
        run.job.mode.get("name", "explain"),
        run.output_dir.resolve(),
    )


def _draw_figures(job: ProbeJob, output_dir: Path, plan: ProbePlan, attacked: AttackedRows,
                  per_image: Mapping[str, Tensor], class_names: list[str]) -> list[str]:
    paths = draw_row_figures(
        output_dir, images=plan.images, xadv=attacked.xadv, labels=plan.labels, per_image=per_image,
        class_names=class_names, loss_trace=attacked.loss_trace, datum_trace=attacked.datum_trace,
        loss=job.attack.loss, images_per_grid=job.images_per_grid, max_grids=job.max_grids,
        targets=plan.targets if job.targeted else None, sources=plan.sources, goal_met=attacked.success,
        one_loss_trace=job.minimal is None,  # rounds at different radii: no one loss trace
    )
    return [str(path.relative_to(output_dir)) for path in paths]


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


_PLAN_FIELDS = ("images", "labels", "targets", "attack_target", "sources")


def _rows(plan: ProbePlan, rows: slice) -> ProbePlan:
    return ProbePlan(*(getattr(plan, name)[rows] for name in _PLAN_FIELDS))



"""The attack stage of a probe job: the planned rows, batch by batch, Ctrl-C keeping the finished batches.

Each batch has its own generator, seeded by its global number, and may be
reloaded from, or written to, a durable record (:mod:`rai_probe.probing.batches`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from ..errors import SettingError
from ..jobs.errors import typed_override
from ..progress import Progress
from .batches import BatchRecords, BatchResult, batch_seed
from .job import ProbeJob
from .metrics import honest_success
from .settings import ProbeConfigError, ProbePlan

__all__ = ["AttackedRows", "attack_rows"]

log = logging.getLogger("rai_probe.probing.run")


@dataclass
class AttackedRows:
    """The attack's results over the rows it finished (all of them unless interrupted)."""

    rows: int
    xadv: Tensor
    logits: Tensor
    success: Tensor
    first_success: Tensor
    loss_trace: Tensor
    datum_trace: Tensor | None
    interrupted: bool
    extra: dict[str, Tensor] | None = None  # per-row values a mode adds (mode=minimal: ε*, steps, ...)


def _padded_traces(traces: Sequence[Tensor]) -> Tensor:
    """Stack traces of different lengths (early stopping) along dim 0, repeating each last value."""
    length = max(trace.shape[0] for trace in traces)
    padded = [
        torch.cat([trace, trace[-1:].expand(length - trace.shape[0], *trace.shape[1:])]) for trace in traces
    ]
    return torch.cat(padded, dim=1) if traces[0].ndim == 2 else torch.stack(padded)


def _run_batch(job: ProbeJob, model: torch.nn.Module, plan: ProbePlan, part: slice, batch: int) -> BatchResult:
    """Attack one batch, with the generator of its global number; the result on the CPU."""
    generator = torch.Generator(device=job.device).manual_seed(batch_seed(job.seed, batch))
    try:
        if job.minimal is not None:
            return _minimal_batch(job, model, plan, part, generator)
        result = job.attack.run(
            model, plan.images[part], plan.attack_target[part], generator=generator, progress=job.progress
        )
    except SettingError as error:  # the solver refused the model's outputs or the images themselves
        if error.setting not in ("model", "data"):
            raise
        model_cfg = job.cfg["model"]
        key = "data" if error.setting == "data" else ("model.checkpoint" if model_cfg.get("checkpoint") else "model")
        raise ProbeConfigError(
            f"model={model_cfg.get('name')}, data={job.cfg['data'].get('name')}: {error}",
            typed_override(key, job.overrides),
        ) from None
    return BatchResult(
        xadv=result.xadv.cpu(),
        logits=result.logits.float().cpu(),
        success=result.success.cpu(),
        first_success=result.first_success_step.cpu(),
        loss_trace=result.loss_trace.float().cpu(),
        datum_trace=None if result.datum_loss_trace is None else result.datum_loss_trace.float().cpu(),
    )


def _minimal_batch(job: ProbeJob, model: torch.nn.Module, plan: ProbePlan, part: slice,
                   generator: torch.Generator) -> BatchResult:
    """``mode=minimal`` on one batch: each row's ε* and the success found there."""
    found = job.minimal.run(job.attack, model, plan.images[part], plan.attack_target[part], generator=generator)
    return BatchResult(
        xadv=found.xadv.cpu(),
        logits=found.logits.float().cpu(),
        success=found.success.cpu(),
        first_success=found.first_success_step.cpu(),
        loss_trace=torch.full((1,), float("nan")),  # rounds at different radii: no one trace
        datum_trace=None,
        extra={"epsilon_min": found.epsilon.cpu(), "epsilon_failed": found.epsilon_failed.cpu(),
               "search_steps": found.steps.cpu(), "search_rounds": found.rounds.cpu()},
    )


def attack_rows(
    job: ProbeJob,
    model: torch.nn.Module,
    plan: ProbePlan,
    clean_pred: Tensor,
    *,
    batches: range | None = None,
    records: BatchRecords | None = None,
) -> AttackedRows:
    """Attack the plan's rows batch by batch; Ctrl-C keeps the finished batches.

    Parameters
    ----------
    plan : ProbePlan
        The rows to attack (a shard's rows, for a sharded job).
    clean_pred : Tensor
        The model's clean prediction of each row (only for the progress
        bar's success rate, which counts no clean mistake).
    batches : range, optional
        The global numbers of the plan's batches (default: from 0); each
        seeds its batch's generator (:func:`~rai_probe.probing.batches.batch_seed`).
    records : BatchRecords, optional
        Durable per-batch records: a batch already recorded under this
        configuration is reloaded instead of attacked, every other one is
        recorded when it finishes.

    Returns
    -------
    AttackedRows
        On the CPU.
    """
    rows = plan.images.shape[0]
    count = -(-rows // job.batch_size)
    batches = range(count) if batches is None else batches
    if len(batches) != count:
        raise ValueError(f"`batches` must number the plan's {count} batches; got {batches!r}")
    results: list[BatchResult] = []
    finished = succeeded = 0
    interrupted = False
    with Progress(rows, "attack", enabled=job.progress) as bar:
        try:
            for local, batch in enumerate(batches):
                part = slice(local * job.batch_size, min((local + 1) * job.batch_size, rows))
                result = records.load(batch) if records is not None else None
                if result is None:
                    result = _run_batch(job, model, plan, part, batch)
                    if records is not None:
                        records.save(batch, result)
                results.append(result)
                finished = part.stop
                honest = honest_success(result.success, clean_pred=clean_pred[part].cpu(),
                                        labels=plan.labels[part].cpu(), targets=plan.targets[part].cpu())[1]
                succeeded += int(honest.sum())
                bar.update(part.stop - part.start, success=round(succeeded / part.stop, 3))  # so far
        except KeyboardInterrupt:
            if not finished:
                raise
            interrupted = True
            log.warning("interrupted: saving the %d of %d images finished", finished, rows)
    if records is not None and records.reused:
        log.info("resume: %d of %d batches reloaded from %s", records.reused, count, records.folder)
    traces = [result.loss_trace for result in results]
    datum_traces = [result.datum_trace for result in results if result.datum_trace is not None]
    datum_trace = _padded_traces(datum_traces) if len(datum_traces) == len(traces) else None
    if datum_trace is not None:
        loss_trace = datum_trace.mean(dim=1)
    else:  # a criterion without per-image losses: its batch totals, averaged over images
        loss_trace = _padded_traces(traces).sum(dim=0) / finished
    return AttackedRows(
        rows=finished,
        xadv=torch.cat([result.xadv for result in results]),
        logits=torch.cat([result.logits for result in results]),
        success=torch.cat([result.success for result in results]),
        first_success=torch.cat([result.first_success for result in results]),
        loss_trace=loss_trace,
        datum_trace=datum_trace,
        interrupted=interrupted,
        extra=_joined_extra(results),
    )


def _joined_extra(results: Sequence[BatchResult]) -> dict[str, Tensor] | None:
    """The batches' per-row extra values, concatenated (None unless every batch has them)."""
    if not results or any(result.extra is None for result in results):
        return None
    return {key: torch.cat([result.extra[key] for result in results]) for key in results[0].extra}

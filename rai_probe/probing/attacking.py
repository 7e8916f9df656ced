"""The attack stage of a probe job: the planned rows, batch by batch, Ctrl-C keeping the finished batches."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from ..errors import SettingError
from ..jobs.errors import typed_override
from ..progress import Progress
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


def _padded_traces(traces: Sequence[Tensor]) -> Tensor:
    """Stack traces of different lengths (early stopping) along dim 0, repeating each last value."""
    length = max(trace.shape[0] for trace in traces)
    padded = [
        torch.cat([trace, trace[-1:].expand(length - trace.shape[0], *trace.shape[1:])]) for trace in traces
    ]
    return torch.cat(padded, dim=1) if traces[0].ndim == 2 else torch.stack(padded)


def attack_rows(job: ProbeJob, model: torch.nn.Module, plan: ProbePlan, clean_pred: Tensor) -> AttackedRows:
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
    return AttackedRows(
        rows=finished,
        xadv=torch.cat(pieces["xadv"]),
        logits=torch.cat(pieces["logits"]),
        success=torch.cat(pieces["success"]),
        first_success=torch.cat(pieces["first"]),
        loss_trace=loss_trace,
        datum_trace=datum_trace,
        interrupted=interrupted,
    )



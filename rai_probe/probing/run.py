"""Run one probe job: config -> model -> data -> plan -> attack -> metrics -> files and pictures."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from ..progress import Progress
from ..runtime import select_device, set_threads
from .artifacts import (
    ERROR_FILE,
    FIGURES_DIR,
    METRICS_FILE,
    save_perturbations,
    write_metrics,
    write_per_image_csv,
)
from .figures import plot_class_grid, plot_loss_trace, save_batch_grids
from .metrics import per_image_metrics, summarize
from .settings import (
    ProbeConfigError,
    attack_from_config,
    data_from_config,
    model_from_config,
    plan_from_config,
)

__all__ = ["run_probe", "ProbeOutcome"]

log = logging.getLogger(__name__)


class ProbeOutcome(dict):
    """What :func:`run_probe` returns: the summary plus where the files went."""


def _positive_int(cfg: Mapping[str, Any], key: str) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ProbeConfigError(f"{key} must be an integer >= 1; got {key}={value!r}", key)
    return value


def _device(cfg: Mapping[str, Any]) -> torch.device:
    try:
        return select_device(cfg.get("device", "cpu"))
    except ValueError as error:
        raise ProbeConfigError(str(error), "device") from None


def _padded_traces(traces: Sequence[Tensor]) -> Tensor:
    """Stack traces of different lengths (early stopping) along dim 0, repeating each last value."""
    length = max(trace.shape[0] for trace in traces)
    padded = [
        torch.cat([trace, trace[-1:].expand(length - trace.shape[0], *trace.shape[1:])]) for trace in traces
    ]
    return torch.cat(padded, dim=1) if traces[0].ndim == 2 else torch.stack(padded)


def run_probe(cfg: Mapping[str, Any], output_dir: str | Path, overrides: Sequence[str] = ()) -> ProbeOutcome:
    """Run the probe a ``configs/probe.yaml``-shaped mapping describes, writing every output.

    Writes, in ``output_dir``: ``perturbations.pt`` (images, perturbed images,
    deltas, labels, targets, logits, success), ``per_image.csv``,
    ``figures/`` (batch grids, loss trace, class grid in probe mode) and,
    last, ``metrics.json``, whose presence marks the job complete.

    Raises
    ------
    ProbeConfigError
        A setting that cannot work, naming the override that fixes it.
    """
    start = time.monotonic()
    output_dir = Path(output_dir)
    for stale in (METRICS_FILE, ERROR_FILE):  # a rerun in the same directory starts unfinished
        (output_dir / stale).unlink(missing_ok=True)
    if cfg.get("attack") is None:
        raise ProbeConfigError("no attack chosen", "+attack")
    try:
        set_threads(cfg.get("threads"))
    except ValueError as error:
        raise ProbeConfigError(str(error), "threads") from None
    n_images = _positive_int(cfg, "n_images")
    batch_size = _positive_int(cfg, "batch_size")
    seed = cfg.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ProbeConfigError(f"seed must be an integer; got seed={seed!r}", "seed")
    device = _device(cfg)
    mode = dict(cfg.get("mode") or {})
    targeted = bool(mode.get("targeted", False))
    attack = attack_from_config(cfg["attack"], targeted=targeted)
    model = model_from_config(cfg["model"], device)
    data = data_from_config(cfg["data"], model, n_images=n_images, seed=seed)
    if not targeted and not data.labeled and cfg["data"].get("name") in ("noise", "gray"):
        raise ProbeConfigError(
            f"data={cfg['data']['name']} gives seeds without labels, which only make sense as "
            "starting points of a targeted probe: add mode=probe",
            "mode",
        )
    class_names = list(model.info.class_names)
    default_names = [str(i) for i in range(model.info.num_classes)]
    if class_names == default_names and len(data.class_names) == len(class_names):
        class_names = list(data.class_names)  # e.g. a CIFAR-10 checkpoint that records no names
    log.info(
        "probing %s (%s) with %s on %d %s images (%s mode); outputs in %s",
        cfg["model"].get("name"),
        model.info.arch,
        cfg["attack"].get("name", attack.optimizer),
        len(data),
        data.name,
        mode.get("name", "explain"),
        output_dir.resolve(),
    )

    with torch.no_grad():
        source_logits = torch.cat(
            [model(data.images[i : i + batch_size].to(device)) for i in range(0, len(data), batch_size)]
        )
    plan = plan_from_config(mode, data, model, source_logits.argmax(dim=1))
    rows = plan.images.shape[0]
    generator = torch.Generator(device=device).manual_seed(seed)
    pieces: dict[str, list[Tensor]] = {"xadv": [], "logits": [], "success": [], "first": []}
    traces: list[Tensor] = []
    datum_traces: list[Tensor] = []
    show_progress = bool(cfg.get("progress", True))
    succeeded = 0
    with Progress(rows, "attack", enabled=show_progress) as bar:
        for first in range(0, rows, batch_size):
            part = slice(first, min(first + batch_size, rows))
            result = attack.run(
                model, plan.images[part], plan.attack_target[part], generator=generator, progress=show_progress
            )
            pieces["xadv"].append(result.xadv)
            pieces["logits"].append(result.logits.float())
            pieces["success"].append(result.success)
            pieces["first"].append(result.first_success_step)
            traces.append(result.loss_trace.float())
            if result.datum_loss_trace is not None:
                datum_traces.append(result.datum_loss_trace.float())
            succeeded += int(result.success.sum())
            bar.update(part.stop - part.start, success=round(succeeded / part.stop, 3))  # so far
    xadv = torch.cat(pieces["xadv"])
    adv_logits = torch.cat(pieces["logits"])
    success = torch.cat(pieces["success"])
    first_success = torch.cat(pieces["first"])
    datum_trace = _padded_traces(datum_traces) if len(datum_traces) == len(traces) else None
    if datum_trace is not None:
        loss_trace = datum_trace.mean(dim=1)
    else:  # a criterion without per-image losses: its batch totals, averaged over images
        loss_trace = _padded_traces(traces).sum(dim=0) / rows
    clean_logits = source_logits[plan.sources].float()
    labels = plan.labels
    targets = plan.targets if targeted else None

    per_image = per_image_metrics(
        plan.images,
        xadv,
        clean_logits=clean_logits,
        adv_logits=adv_logits,
        labels=labels,
        targets=targets,
        success=success,
        first_success_step=first_success,
    )
    summary = summarize(per_image)

    output_dir.mkdir(parents=True, exist_ok=True)
    save_perturbations(
        output_dir,
        images=plan.images,
        xadv=xadv,
        labels=labels,
        targets=targets,
        clean_logits=clean_logits,
        adv_logits=adv_logits,
        success=success,
        first_success_step=first_success,
        loss_trace=loss_trace,
        class_names=class_names,
        extra={"sources": plan.sources.cpu()}
        | ({"datum_loss_trace": datum_trace.cpu()} if datum_trace is not None else {}),
    )
    write_per_image_csv(output_dir, per_image, class_names)
    figures_dir = output_dir / FIGURES_DIR
    figure_settings = dict(cfg.get("figures") or {})
    grids = save_batch_grids(
        output_dir,
        plan.images,
        xadv,
        labels=labels,
        clean_pred=per_image["clean_pred"],
        clean_conf=per_image["clean_conf"],
        adv_pred=per_image["adv_pred"],
        adv_conf=per_image["adv_conf"],
        class_names=class_names,
        targets=targets,
        batch_size=int(figure_settings.get("images_per_grid", 8)),
        max_images=int(figure_settings.get("images_per_grid", 8)),
        max_grids=int(figure_settings.get("max_grids", 4)),
    )
    figures = [str(path.relative_to(output_dir)) for path in grids]
    trace_path = plot_loss_trace(
        figures_dir / "loss_trace.png",
        loss_trace,
        datum_loss_trace=datum_trace,
        ylabel="cross-entropy (mean over images)",
    )
    figures.append(str(trace_path.relative_to(output_dir)))
    if targeted:
        grid = plot_class_grid(
            figures_dir / "class_grid.png",
            xadv,
            sources=plan.sources,
            targets=plan.targets,
            class_names=class_names,
            deltas=xadv - plan.images,
            success=success,
        )
        figures.append(str(grid.relative_to(output_dir)))

    seconds = time.monotonic() - start
    extra = {
        "attack": {"name": cfg["attack"].get("name"), **attack.to_dict()},
        "model": {
            "name": cfg["model"].get("name"),
            "arch": model.info.arch,
            "source": model.info.source,
            "num_classes": model.info.num_classes,
        },
        "data": {"name": data.name, "split": data.split, "n_sources": len(data)},
        "mode": mode,
        "seconds": round(seconds, 2),
        "figures": figures,
    }
    metrics_path = write_metrics(output_dir, summary, config=dict(cfg), overrides=list(overrides), extra=extra)
    rate = summary.get("attack_success_rate")
    log.info(
        "done in %.1f s: success rate %s, median L0 %s pixels; metrics in %s",
        seconds,
        f"{rate:.3f}" if rate is not None else "n/a",
        summary.get("l0_pixels", {}).get("median"),
        metrics_path.resolve(),
    )
    return ProbeOutcome(summary=summary, output_dir=str(output_dir), metrics=str(metrics_path), figures=figures)

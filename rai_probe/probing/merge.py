"""Merge the shards of one probe job (``data.shard=I data.num_shards=N``) into one job's outputs.

``python scripts/report.py --merge DIR`` finds the shard jobs of a sweep
directory, checks that they are the ``N`` shards of one configuration (the
same config apart from ``data.shard``, every shard once, each complete) and
writes ``DIR/merged/``: ``perturbations.pt`` (the shards' rows in order),
``per_image.csv`` and ``metrics.json`` **recomputed from the merged
per-image records** (not averaged), the figures, and the mode's own outputs
(``contrast.pt``, ``concepts.pt``, the robustness curve of ``mode=minimal``:
:mod:`rai_probe.probing.modes`, from the merged rows). Since every batch is
seeded by its global number, the merged records equal those of the
unsharded job, exactly, and so do the files drawn from them.

Examples
--------
>>> from rai_probe.probing.merge import ShardMismatchError
>>> issubclass(ShardMismatchError, ValueError)
True
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from ..errors import SettingError
from .artifacts import (
    load_perturbations,
    per_image_from_perturbations,
    read_metrics,
    save_perturbations,
    write_metrics,
    write_per_image_csv,
)
from .attacking import _padded_traces
from .metrics import summarize
from .minimal import MinimalSearch
from .modes import ModeInputs, draw_mode_figures, mode_record, mode_summaries, save_mode_tensors
from .report import collect_jobs
from .row_figures import draw_row_figures

__all__ = ["merge_shards", "ShardMismatchError", "MERGED_DIR"]

#: Where the merged job goes, inside the sweep directory.
MERGED_DIR = "merged"

#: Per-row entries of perturbations.pt, concatenated in shard order.
_ROW_KEYS = ("images", "xadv", "labels", "targets", "clean_logits", "adv_logits", "success",
             "first_success_step", "sources", "goal_met", "rows")


class ShardMismatchError(SettingError):
    """The jobs given are not the shards of one configuration (the message says how)."""


def _shard_config(config: Mapping[str, Any]) -> str:
    """The config without its shard number, as comparable text."""
    plain = json.loads(json.dumps(config, default=str))
    plain.get("data", {}).pop("shard", None)
    return json.dumps(plain, sort_keys=True)


def _differences(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys = sorted(set(a) | set(b))
    found = []
    for key in keys:
        name = f"{prefix}{key}"
        if isinstance(a.get(key), Mapping) and isinstance(b.get(key), Mapping):
            found += _differences(a[key], b[key], name + ".")
        elif a.get(key) != b.get(key) and name != "data.shard":
            found.append(f"{name}={a.get(key)!r} vs {b.get(key)!r}")
    return found


def _checked_shards(sweep_dir: Path, skip: Sequence[Path]) -> list[tuple[Path, dict]]:
    jobs = [job for job in collect_jobs(sweep_dir) if not any(job.job_dir.resolve() == s for s in skip)]
    if not jobs:
        raise ShardMismatchError(f"{sweep_dir} holds no job to merge", setting="sweep_dir")
    incomplete = [job.name for job in jobs if job.status != "complete"]
    if incomplete:
        raise ShardMismatchError(
            f"cannot merge {sweep_dir}: job(s) {', '.join(incomplete)} did not complete (rerun them, "
            "e.g. with resume=true in their run directory)",
            setting="sweep_dir",
        )
    metrics = [(job.job_dir, read_metrics(job.job_dir)) for job in jobs]
    first_dir, first = metrics[0]
    for job_dir, record in metrics[1:]:
        if _shard_config(record["config"]) != _shard_config(first["config"]):
            diffs = _differences(first["config"], record["config"])
            raise ShardMismatchError(
                f"cannot merge {sweep_dir}: {job_dir} is not a shard of the same configuration as {first_dir} "
                f"(differs in {'; '.join(diffs[:5]) or 'its configuration'})",
                setting="sweep_dir",
            )
    num_shards = first["config"].get("data", {}).get("num_shards", 1)
    shards = sorted(record["config"].get("data", {}).get("shard", 0) for _, record in metrics)
    if shards != list(range(num_shards)):
        raise ShardMismatchError(
            f"cannot merge {sweep_dir}: expected shards 0..{num_shards - 1} of data.num_shards={num_shards} "
            f"once each; found shards {shards}",
            setting="sweep_dir",
        )
    metrics.sort(key=lambda item: item[1]["config"].get("data", {}).get("shard", 0))
    return metrics


def _merged_perturbations(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {key: torch.cat([part[key] for part in parts]) for key in _ROW_KEYS if key in parts[0]}
    if all("datum_loss_trace" in part for part in parts):
        merged["datum_loss_trace"] = _padded_traces([part["datum_loss_trace"] for part in parts])
        merged["loss_trace"] = merged["datum_loss_trace"].mean(dim=1)
    else:  # batch totals: weighted by the rows of each shard
        rows = torch.tensor([part["xadv"].shape[0] for part in parts], dtype=torch.float32)
        traces = _padded_traces([part["loss_trace"].float() for part in parts])
        merged["loss_trace"] = (traces * rows.view(-1, 1)).sum(dim=0) / rows.sum()
    for group in ("quality", "minimal"):  # per-row values beside the tensors: concatenated like the rows
        if all(group in part for part in parts):
            merged[group] = {key: torch.cat([part[group][key] for part in parts]) for key in parts[0][group]}
    if all("source_files" in part for part in parts):
        merged["source_files"] = [name for part in parts for name in part["source_files"]]
    for key in ("class_names", "epsilon", "budget_norm"):
        if key in parts[0]:
            merged[key] = parts[0][key]
    return merged


def merge_shards(sweep_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """Merge the shard jobs of ``sweep_dir`` into ``out_dir`` (default ``sweep_dir/merged``); return it.

    Raises
    ------
    ShardMismatchError
        The jobs are not the complete shards of one configuration.
    FileNotFoundError
        ``sweep_dir`` is missing or holds no job.
    """
    root = Path(sweep_dir)
    target = Path(out_dir) if out_dir is not None else root / MERGED_DIR
    skip = [target.resolve(), (root / "report").resolve()]
    shards = _checked_shards(root, skip)
    parts = [load_perturbations(job_dir) for job_dir, _ in shards]
    merged = _merged_perturbations(parts)
    targets = merged["targets"] if bool((merged["targets"] >= 0).any()) else None
    extra = {key: merged[key] for key in ("sources", "goal_met", "rows", "datum_loss_trace", "source_files", "quality",
                                          "minimal") if key in merged}
    save_perturbations(
        target,
        images=merged["images"],
        xadv=merged["xadv"],
        labels=merged["labels"],
        targets=targets,
        clean_logits=merged["clean_logits"],
        adv_logits=merged["adv_logits"],
        success=merged["success"],
        first_success_step=merged["first_success_step"],
        loss_trace=merged["loss_trace"],
        class_names=merged["class_names"],
        extra=extra,
        epsilon=merged.get("epsilon"),
        norm=merged.get("budget_norm"),
    )
    saved = load_perturbations(target)
    per_image = per_image_from_perturbations(saved)
    summary = summarize(per_image)
    write_per_image_csv(target, per_image, saved["class_names"], sources=saved.get("source_files"))
    first = shards[0][1]
    config = json.loads(json.dumps(first["config"]))
    config.get("data", {})["shard"] = None
    record = {key: first[key] for key in ("attack", "model", "data", "budget", "mode", "precision") if key in first}
    record["shard"] = {"shard": None, "num_shards": len(shards), "first_row": 0, "rows": int(saved["xadv"].shape[0])}
    record["merged_from"] = [str(job_dir) for job_dir, _ in shards]
    record["seconds"] = round(sum(float(m.get("seconds", 0.0)) for _, m in shards), 2)
    inputs = _mode_inputs(target, saved, per_image, targets, first)
    summaries = mode_summaries(inputs)  # contrast maps, class concepts: from the merged rows
    record["files"] = save_mode_tensors(inputs, summaries)
    record.update(mode_record(inputs, summaries))  # mode=minimal: the curve over every shard
    figures = _figures(inputs, saved, first) + draw_mode_figures(inputs, record, summaries)
    record["figures"] = [str(path.relative_to(target)) for path in figures]
    write_metrics(target, summary, config=config, overrides=[], extra=record)
    return target


def _mode_inputs(target: Path, saved: Mapping[str, Any], per_image: Mapping[str, Tensor], targets: Tensor | None,
                 first: Mapping[str, Any]) -> ModeInputs:
    """The mode's inputs from the merged rows and the first shard's record (all shards share its settings)."""
    config = first["config"]
    mode = config.get("mode", {})
    minimal = None
    if "robustness_curve" in first and "epsilon_min" in per_image:  # rebuilt from the settings the shards used
        curve = first["robustness_curve"]
        minimal = MinimalSearch(epsilon_min=float(curve["bracket"][0]), epsilon_max=float(curve["bracket"][1]),
                                tolerance=float(curve["tolerance"]), steps=int(curve["steps_per_round"]),
                                warm_start=bool(mode.get("warm_start", True)))
    attack = config.get("attack", {})
    return ModeInputs(
        mode_name=str(mode.get("name", "explain")), targeted=targets is not None, images=saved["images"],
        xadv=saved["xadv"], labels=saved["labels"], targets=targets, per_image=per_image,
        class_names=saved["class_names"], output_dir=target, minimal=minimal,
        norm=first.get("robustness_curve", {}).get("norm"),
        title=f"{config.get('model', {}).get('name')}, {attack.get('name', attack.get('optimizer'))}",
    )


def _figures(inputs: ModeInputs, saved: Mapping[str, Any], first: Mapping[str, Any]) -> list[Path]:
    """The batch grids, the loss trace and, for a targeted job, the class grid of the merged rows."""
    figures = first["config"].get("figures", {})
    return draw_row_figures(
        inputs.output_dir, images=inputs.images, xadv=inputs.xadv, labels=inputs.labels, per_image=inputs.per_image,
        class_names=inputs.class_names, loss_trace=saved["loss_trace"], datum_trace=saved.get("datum_loss_trace"),
        loss=first.get("attack", {}).get("loss", "ce"), images_per_grid=int(figures.get("images_per_grid", 8)),
        max_grids=int(figures.get("max_grids", 4)), targets=inputs.targets, sources=saved.get("sources"),
        goal_met=saved.get("goal_met"), one_loss_trace=inputs.minimal is None,
    )

"""What each mode adds to a probe job's outputs, after its rows are attacked and measured.

* ``minimal``: the ε* columns of ``per_image.csv`` (:data:`~rai_probe.probing.minimal.MINIMAL_KEYS`),
  ``robustness_curve`` in ``metrics.json`` (with ε* quantiles, also in
  the summary as ``epsilon_min``), ``figures/robustness_curve.png`` and
  ``figures/minimal_gallery.png``.
* ``contrast``: ``contrast.pt`` (mean signed and absolute δ, mean image),
  ``contrast`` in ``metrics.json``, ``figures/contrast.png``.
* ``probe`` with at least two sources per target class: ``concepts.pt``
  (per-class mean and spread), ``figures/class_concepts.png``.

The dataset-level outputs (the last three functions) are computed from a
:class:`ModeInputs`: the rows of a job after its attack
(:meth:`ModeInputs.of_run`), or the merged rows of a sharded job's shards
(:func:`~rai_probe.probing.merge.merge_shards`), so a merge writes the same
mode outputs as the unsharded job.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch
from torch import Tensor

from .._io import write_atomic
from .artifacts import FIGURES_DIR
from .concepts import class_concepts, contrast_maps
from .figures import plot_class_concepts, plot_contrast
from .metrics import MINIMAL_KEYS
from .minimal import MinimalSearch, curve_record, plot_minimal_gallery, plot_robustness_curve

if TYPE_CHECKING:  # pragma: no cover
    from .run import ProbeRun

__all__ = ["ModeInputs", "ModeSummaries", "add_mode_columns", "mode_summaries", "mode_record", "save_mode_tensors",
           "draw_mode_figures"]

CONTRAST_FILE = "contrast.pt"
CONCEPTS_FILE = "concepts.pt"


def add_mode_columns(run: "ProbeRun") -> None:
    """The mode's per-image values (``mode=minimal``: ε* and the search's cost) into ``run.per_image``."""
    extra = run.attacked.extra or {}
    for key in MINIMAL_KEYS:
        if key in extra:
            run.per_image[key] = extra[key].detach().cpu()
    if "epsilon_min" in run.per_image:
        # ε* of an image the attack cannot count (a clean mistake, untargeted) is not a success: empty
        star = run.per_image["epsilon_min"].double()
        run.per_image["epsilon_min"] = torch.where(run.per_image["success"], star, torch.full_like(star, float("nan")))


@dataclass
class ModeSummaries:
    """The dataset-level tensors a mode adds, computed once per job (None where the mode makes none)."""

    contrast: dict | None = None  # contrast_maps(...) of mode=contrast
    concepts: dict | None = None  # class_concepts(...) of a probe with several sources per class
    source: str | None = None  # mode=contrast: the class names
    target: str | None = None


@dataclass(frozen=True)
class ModeInputs:
    """What a mode's dataset-level outputs are computed from: the attacked rows, their records, the settings."""

    mode_name: str  # explain | probe | minimal | contrast
    targeted: bool
    images: Tensor  # (N, ...) the clean rows
    xadv: Tensor  # (N, ...) the attacked rows
    labels: Tensor  # (N,)
    targets: Tensor | None  # (N,) targeted runs, else None
    per_image: Mapping[str, Tensor]  # the per-image records (success, clean_pred, adv_pred, epsilon_min, ...)
    class_names: Sequence[str]
    output_dir: Path
    minimal: MinimalSearch | None = None  # mode=minimal: the search (its bracket sets the curve's grid)
    norm: str | None = None  # the attack's norm (the curve's ε axis)
    title: str = ""  # "model, attack", for the figures' titles

    @classmethod
    def of_run(cls, run: "ProbeRun") -> "ModeInputs":
        """The inputs of a job that has attacked and measured its rows."""
        job = run.job
        attack = job.cfg["attack"].get("name", job.attack.optimizer)
        return cls(mode_name=job.mode_name, targeted=job.targeted, images=run.plan.images, xadv=run.attacked.xadv,
                   labels=run.plan.labels, targets=run.plan.targets if job.targeted else None,
                   per_image=run.per_image, class_names=run.inputs.class_names, output_dir=run.output_dir,
                   minimal=job.minimal, norm=job.attack.norm, title=f"{job.cfg['model'].get('name')}, {attack}")


def _has_class_concepts(inputs: ModeInputs) -> bool:
    """A targeted probe with at least two rows toward some class (concepts need several sources)."""
    if not inputs.targeted or inputs.mode_name != "probe" or inputs.targets is None or inputs.targets.numel() == 0:
        return False
    return int(torch.bincount(inputs.targets.clamp(min=0)).max()) >= 2


def mode_summaries(inputs: ModeInputs) -> ModeSummaries:
    """The contrast maps and class concepts the job's mode asks for (one pass over its tensors)."""
    summaries = ModeSummaries()
    if inputs.mode_name == "contrast" and inputs.targets is not None and inputs.labels.numel() > 0:
        names = inputs.class_names
        summaries.contrast = contrast_maps(inputs.images, inputs.xadv, success=inputs.per_image["success"])
        summaries.source, summaries.target = names[int(inputs.labels[0])], names[int(inputs.targets[0])]
    if _has_class_concepts(inputs):
        summaries.concepts = class_concepts(inputs.images, inputs.xadv, inputs.targets,
                                            classes=len(inputs.class_names))
    return summaries


def mode_record(inputs: ModeInputs, summaries: ModeSummaries) -> dict[str, Any]:
    """The mode's entries of ``metrics.json`` (beside the summary)."""
    record: dict[str, Any] = {}
    if inputs.minimal is not None and "epsilon_min" in inputs.per_image:
        record["robustness_curve"] = curve_record(inputs.per_image, inputs.minimal, inputs.norm)
    if summaries.contrast is not None:
        maps = summaries.contrast
        record["contrast"] = {"source": summaries.source, "target": summaries.target, "n_moved": maps["n"],
                              "n_images": maps["n_all"],
                              "mean_abs_delta_total": float(maps["mean_abs_delta"].sum()), "file": CONTRAST_FILE}
    return record


def save_mode_tensors(inputs: ModeInputs, summaries: ModeSummaries) -> list[str]:
    """``contrast.pt`` / ``concepts.pt`` where the mode makes them (loadable with ``weights_only=True``)."""
    saved = []
    if summaries.contrast is not None:
        payload = {**{k: v.float() if torch.is_tensor(v) else v for k, v in summaries.contrast.items()},
                   "source": summaries.source, "target": summaries.target}
        write_atomic(inputs.output_dir / CONTRAST_FILE, save=lambda file: torch.save(payload, file))
        saved.append(CONTRAST_FILE)
    if summaries.concepts is not None:
        payload = {**{k: v.float() if v.is_floating_point() else v for k, v in summaries.concepts.items()},
                   "class_names": list(inputs.class_names)}
        write_atomic(inputs.output_dir / CONCEPTS_FILE, save=lambda file: torch.save(payload, file))
        saved.append(CONCEPTS_FILE)
    return saved


def draw_mode_figures(inputs: ModeInputs, record: dict[str, Any], summaries: ModeSummaries) -> list[Path]:
    """The mode's figures, in ``figures/``."""
    figures_dir = inputs.output_dir / FIGURES_DIR
    paths = []
    if "robustness_curve" in record:
        paths.append(plot_robustness_curve(figures_dir / "robustness_curve.png", record["robustness_curve"],
                                           title=f"{inputs.title}: robustness from one minimal run"))
        paths.append(plot_minimal_gallery(
            figures_dir / "minimal_gallery.png", inputs.images, inputs.xadv, inputs.per_image["epsilon_min"],
            clean_pred=inputs.per_image["clean_pred"], adv_pred=inputs.per_image["adv_pred"],
            class_names=inputs.class_names))
    if summaries.contrast is not None:
        paths.append(plot_contrast(figures_dir / "contrast.png", summaries.contrast, source=summaries.source,
                                   target=summaries.target))
    if summaries.concepts is not None:
        paths.append(plot_class_concepts(figures_dir / "class_concepts.png", summaries.concepts,
                                         inputs.class_names))
    return paths

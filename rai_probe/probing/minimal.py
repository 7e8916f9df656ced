"""``mode=minimal``: each image's minimal radius ε*, the robustness curve it gives, and its figures.

The search itself is :func:`rai_probe.perturbations.minimal.minimal_radius`
(a batched bisection over per-image radii). This module turns the mode's
settings into a checked :class:`MinimalSearch`, runs it on a batch, and
turns the ε* of every image into the **robustness curve**: for each radius
ε, the share of attackable images with ε* <= ε (success rate) and the
share of labeled images still classified correctly (robust accuracy: clean
mistakes count as broken at every ε). One run gives the whole curve, where
a fixed-ε sweep needs one job per radius.

Examples
--------
>>> import torch
>>> per_image = {"epsilon_min": torch.tensor([1.0, 4.0, float("nan"), 2.0], dtype=torch.float64),
...              "clean_correct": torch.tensor([True, True, True, False]),
...              "label": torch.tensor([0, 1, 2, 3]), "target": torch.tensor([-1, -1, -1, -1])}
>>> curve = robustness_curve(per_image, epsilons=[1.0, 2.0, 4.0])
>>> curve["success_rate"], curve["robust_accuracy"]   # image 3 is a clean mistake
([0.3333333333333333, 0.3333333333333333, 0.6666666666666666], [0.5, 0.5, 0.25])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from ..perturbations.attacks import Attack
from ..perturbations.minimal import MinimalRadii, max_rounds, minimal_radius
from .figures import CurvePanel, plot_curves, plot_overlay_rows
from .metrics import MINIMAL_KEYS, epsilon_quantiles
from .settings import ProbeConfigError

__all__ = [
    "MINIMAL_KEYS",
    "MinimalSearch",
    "minimal_search",
    "robustness_curve",
    "plot_robustness_curve",
    "plot_minimal_gallery",
]

#: Points of the robustness curve in ``metrics.json`` (a log grid over the bracket).
CURVE_POINTS = 41


@dataclass(frozen=True)
class MinimalSearch:
    """The checked settings of ``mode=minimal``."""

    epsilon_min: float
    epsilon_max: float
    tolerance: float
    steps: int
    warm_start: bool

    @property
    def rounds(self) -> int:
        """The most rounds the bracket and tolerance can take."""
        return max_rounds(self.epsilon_min, self.epsilon_max, self.tolerance)

    def run(self, attack: Attack, model: Any, images: Tensor, target: Tensor, *,
            generator: torch.Generator | None = None) -> MinimalRadii:
        """Run the search on one batch."""
        return minimal_radius(attack, model, images, target, epsilon_min=self.epsilon_min,
                              epsilon_max=self.epsilon_max, tolerance=self.tolerance, steps=self.steps,
                              warm_start=self.warm_start, generator=generator)


def minimal_search(mode: Mapping[str, Any], attack: Attack, override: Any) -> MinimalSearch:
    """``mode=minimal``'s settings checked: the bracket (default ``[ε / 8, 2 ε]``), tolerance and steps per round.

    ``override(key)`` gives the override that fixes ``mode.<key>`` (how
    the user typed it). The default steps per round spread the attack's
    ``steps`` over the most rounds the bracket needs, so a search costs
    about as many optimizer steps as one fixed-ε attack.

    Examples
    --------
    >>> search = minimal_search({"tolerance": 0.05}, Attack("L2ProjectedOptim", epsilon=2.0, steps=70), str)
    >>> search.epsilon_min, search.epsilon_max, search.rounds, search.steps
    (0.25, 4.0, 7, 10)
    >>> minimal_search({"epsilon_min": 3.0, "epsilon_max": 1.0}, Attack("L2ProjectedOptim", epsilon=2.0), str)
    Traceback (most recent call last):
    ...
    rai_probe.jobs.errors.ConfigError: mode.epsilon_max=1 must be above mode.epsilon_min=3 (the bracket [epsilon_min, epsilon_max] is reversed or empty). Fix it with the override `mode.epsilon_max=...`.
    """
    low = mode.get("epsilon_min")
    high = mode.get("epsilon_max")
    low = attack.epsilon / 8 if low is None else float(low)
    high = 2 * attack.epsilon if high is None else float(high)
    if not high > low:
        raise ProbeConfigError(
            f"mode.epsilon_max={high:g} must be above mode.epsilon_min={low:g} (the bracket "
            "[epsilon_min, epsilon_max] is reversed or empty)",
            override("mode.epsilon_max"),
        )
    tolerance = float(mode.get("tolerance", 0.05))
    if not 0 < tolerance < 1:
        raise ProbeConfigError(f"mode.tolerance={tolerance:g} must be in (0, 1), e.g. 0.05 for 5 %",
                               override("mode.tolerance"))
    rounds = max_rounds(low, high, tolerance)
    steps = mode.get("steps")
    steps = max(1, attack.steps // rounds) if steps is None else int(steps)
    return MinimalSearch(epsilon_min=low, epsilon_max=high, tolerance=tolerance, steps=steps,
                         warm_start=bool(mode.get("warm_start", True)))


def _rate(hits: Tensor, rows: Tensor) -> list[float | None]:
    """Per ε column: hits / rows, None where no row applies."""
    total = int(rows.sum())
    if total == 0:
        return [None] * hits.shape[1]
    return (hits & rows.unsqueeze(1)).sum(dim=0).double().div(total).tolist()


def robustness_curve(per_image: Mapping[str, Tensor], *, epsilons: Sequence[float]) -> dict:
    """Success rate and robust accuracy at each of ``epsilons``, from each image's ε* (``per_image["epsilon_min"]``).

    An image counts as broken at ε when its ε* <= ε (NaN: never). Success
    rate is over the attackable images (targeted rows, clean-correct and
    unlabeled untargeted ones); robust accuracy over the labeled untargeted
    images (a clean mistake is never robust). Both are None where no image
    applies.
    """
    eps = torch.as_tensor(list(epsilons), dtype=torch.float64)
    star = per_image["epsilon_min"].to(torch.float64)
    broken = (star.unsqueeze(1) <= eps.unsqueeze(0)) & ~star.isnan().unsqueeze(1)
    correct = per_image["clean_correct"].to(torch.bool)
    labeled = per_image["label"] >= 0
    targeted = per_image["target"] >= 0
    eligible = targeted | correct | ~labeled
    return {
        "epsilon": eps.tolist(),
        "success_rate": _rate(broken, eligible),
        "robust_accuracy": _rate(correct.unsqueeze(1) & ~broken, labeled & ~targeted),
    }


def curve_record(per_image: Mapping[str, Tensor], search: MinimalSearch, norm: str) -> dict:
    """The ``robustness_curve`` entry of ``metrics.json``: the curve on a log grid over the bracket, ε* statistics."""
    grid = torch.logspace(math.log10(search.epsilon_min), math.log10(search.epsilon_max), CURVE_POINTS,
                          dtype=torch.float64).tolist()
    steps = per_image["search_steps"]
    return {
        "norm": norm,
        "bracket": [search.epsilon_min, search.epsilon_max],
        "tolerance": search.tolerance,
        "steps_per_round": search.steps,
        "image_steps": int(steps.sum()),  # optimizer steps each image took part in, summed over images
        **robustness_curve(per_image, epsilons=grid),
        "epsilon_min": epsilon_quantiles(per_image["epsilon_min"]),
    }


def plot_robustness_curve(path: str | Path, curve: Mapping[str, Any], *, title: str | None = None) -> Path:
    """``figures/robustness_curve.png``: success rate and robust accuracy against ε, from one run.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> curve = {"norm": "l1", "epsilon": [1.0, 2.0, 4.0], "success_rate": [0.1, 0.5, 0.9],
    ...          "robust_accuracy": [None, None, None], "epsilon_min": {"n": 0, "median": None}}
    >>> with tempfile.TemporaryDirectory() as tmp:        # unlabeled images: no robust-accuracy panel
    ...     print(plot_robustness_curve(Path(tmp) / "r.png", curve).name)
    r.png
    """
    eps = curve["epsilon"]
    norm = {"l1": "L1", "l2": "L2", "linf": "L∞"}.get(curve.get("norm"), "")
    quantiles = curve.get("epsilon_min") or {}
    notes = [f"median ε* {quantiles['median']:.3g} over {quantiles['n']} broken images"] if quantiles.get("median") else []
    panels = [CurvePanel("success rate (ε* <= ε)", {"success rate": (eps, curve["success_rate"])}, ylim=(0, 1),
                         notes=notes)]
    if any(value is not None for value in curve["robust_accuracy"]):  # labeled untargeted images only
        panels.append(CurvePanel("robust accuracy", {"robust accuracy": (eps, curve["robust_accuracy"])}, ylim=(0, 1)))
    return plot_curves(path, panels, xlabel=f"{norm} radius ε", title=title, logx=True)


def plot_minimal_gallery(path: str | Path, images: Tensor, xadv: Tensor, star: Tensor, *, clean_pred: Tensor,
                         adv_pred: Tensor, class_names: Sequence[str], per_row: int = 6) -> Path:
    """The minimal explanations sorted by ε*: the least robust images (top row) and the most robust (bottom).

    Each panel is ``|δ|`` at the image's ε* over the faded image (one colour
    scale, with a colour bar), titled with ε* and the prediction before and
    after; no image appears twice.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> images = torch.rand(3, 1, 6, 6)
    >>> star = torch.tensor([2.0, float("nan"), 1.0], dtype=torch.float64)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     print(plot_minimal_gallery(Path(tmp) / "g.png", images, images.flip(0), star,
    ...                                clean_pred=torch.tensor([0, 1, 0]), adv_pred=torch.tensor([1, 1, 1]),
    ...                                class_names=["a", "b"]).name)
    g.png
    """
    finite = (~star.isnan()).nonzero().flatten()
    order = finite[star[finite].argsort()]
    count = min(per_row, order.numel())
    rows = [("least robust", order[:count])]
    if order.numel() > count:  # the most robust, without repeating an image of the first row
        rows.append(("most robust", order[count:][-count:].flip(0)))
    if count == 0:
        rows = [("no image broken within epsilon_max", order)]
    pictures, deltas, titles = [], [], []
    for _, picked in rows:
        pictures.append([images[k] for k in picked.tolist()])
        deltas.append([xadv[k] - images[k] for k in picked.tolist()])
        titles.append([f"ε*={float(star[k]):.3g}\n{class_names[int(clean_pred[k])]}→{class_names[int(adv_pred[k])]}"
                       for k in picked.tolist()])
    return plot_overlay_rows(path, pictures, deltas, titles, row_labels=[label for label, _ in rows],
                             title="minimal explanations, sorted by ε*")

"""The figures every probe job draws from its attacked rows: batch grids, the loss trace, the class grid.

One function for the job (:mod:`rai_probe.probing.run`) and for the merge of
its shards (:mod:`rai_probe.probing.merge`), so a merged job's pictures are
drawn from the same tensors with the same settings as the unsharded job's.

Examples
--------
>>> import tempfile, torch
>>> from pathlib import Path
>>> images = torch.rand(2, 1, 4, 4)
>>> xadv = (images + 0.1).clamp(0, 1)
>>> per_image = {"clean_pred": torch.tensor([0, 1]), "clean_conf": torch.tensor([0.9, 0.8]),
...              "adv_pred": torch.tensor([1, 1]), "adv_conf": torch.tensor([0.6, 0.7]),
...              "success": torch.tensor([True, False])}
>>> with tempfile.TemporaryDirectory() as tmp:
...     paths = draw_row_figures(Path(tmp), images=images, xadv=xadv, labels=torch.tensor([0, 1]),
...                              per_image=per_image, class_names=["a", "b"], loss_trace=torch.tensor([1.0, 2.0]),
...                              loss="ce", images_per_grid=8, max_grids=1)
...     [str(p.relative_to(tmp)) for p in paths]
['figures/batch_000.png', 'figures/loss_trace.png']
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from torch import Tensor

from .artifacts import FIGURES_DIR
from .figures import plot_class_grid, plot_loss_trace, save_batch_grids

__all__ = ["LOSS_NAMES", "draw_row_figures"]

#: The attack's ``loss`` setting as the loss trace's axis names it (the solver's log shows the same mean).
LOSS_NAMES = {"ce": "cross-entropy", "dlr": "DLR loss"}


def draw_row_figures(
    output_dir: Path,
    *,
    images: Tensor,
    xadv: Tensor,
    labels: Tensor,
    per_image: Mapping[str, Tensor],
    class_names: Sequence[str],
    loss_trace: Tensor,
    loss: str,
    images_per_grid: int,
    max_grids: int,
    datum_trace: Tensor | None = None,
    targets: Tensor | None = None,
    sources: Tensor | None = None,
    goal_met: Tensor | None = None,
    one_loss_trace: bool = True,
) -> list[Path]:
    """Draw ``figures/batch_*.png``, ``figures/loss_trace.png`` and (targeted) ``figures/class_grid.png``.

    Parameters
    ----------
    output_dir : Path
        The job's directory; the figures go to its ``figures/``.
    images, xadv, labels : Tensor
        The clean rows, the attacked rows and their labels.
    per_image : mapping
        The per-image records (``clean_pred``, ``clean_conf``, ``adv_pred``,
        ``adv_conf``, ``success``).
    class_names : sequence of str
    loss_trace : Tensor
        ``(steps,)`` the loss, mean over the images; ``datum_trace``
        ``(steps, N)`` per image, optional.
    loss : str
        The attack's ``loss`` setting (``ce``, ``dlr``), which labels the trace.
    images_per_grid, max_grids : int
        The job's ``figures`` settings.
    targets, sources, goal_met : Tensor, optional
        A targeted job's target classes, source rows and whether each attack
        met its goal (the class grid; ``goal_met`` defaults to
        ``per_image["success"]``).
    one_loss_trace : bool
        False for ``mode=minimal``, whose rounds at different radii have no
        one loss trace: only the batch grids are drawn.
    """
    grids = save_batch_grids(
        output_dir, images, xadv, labels=labels, clean_pred=per_image["clean_pred"],
        clean_conf=per_image["clean_conf"], adv_pred=per_image["adv_pred"], adv_conf=per_image["adv_conf"],
        class_names=list(class_names), targets=targets, batch_size=images_per_grid, max_images=images_per_grid,
        max_grids=max_grids, success=per_image["success"],
    )
    paths = list(grids)
    if not one_loss_trace:
        return paths
    figures_dir = output_dir / FIGURES_DIR
    paths.append(plot_loss_trace(figures_dir / "loss_trace.png", loss_trace, datum_loss_trace=datum_trace,
                                 ylabel=f"{LOSS_NAMES.get(loss, loss)} (mean over images)"))
    if targets is not None:
        paths.append(plot_class_grid(figures_dir / "class_grid.png", xadv, sources=sources, targets=targets,
                                     class_names=list(class_names), deltas=xadv - images,
                                     success=per_image["success"] if goal_met is None else goal_met))
    return paths

"""Pictures of a probe job and of a sweep: image grids, heatmaps, loss traces, curves.

Every function draws on its own :class:`matplotlib.figure.Figure` (no pyplot
state, no window, no backend switch) and writes one PNG; nothing keeps a
reference to the figure, so it is freed on return. Images are float ``(N, C, H, W)`` tensors in ``[0, 1]`` with 1
(grayscale) or 3 (RGB) channels; values outside ``[0, 1]`` are clipped for
display only.

=========================  ==============================================================
function                   picture
=========================  ==============================================================
``plot_batch_grid``        one column per image: original, perturbed, ``|δ|`` heatmap over
                           the grayscale original, and (grayscale) the signed ``δ``
``save_batch_grids``       ``figures/batch_000.png``, ... one grid per batch (capped)
``plot_loss_trace``        the solver's loss per evaluated iterate (and per image)
``plot_class_grid``        probe mode: one row per source image or seed, one column per
                           target class; failures framed in red
``plot_curves``            lines of a metric against a parameter (sweep reports)
``plot_heatmap_gallery``   a grid of heatmaps with titles (sweep reports)
=========================  ==============================================================

Examples
--------
>>> import tempfile, torch
>>> from pathlib import Path
>>> from rai_probe.probing.figures import plot_loss_trace
>>> with tempfile.TemporaryDirectory() as tmp:
...     path = plot_loss_trace(Path(tmp) / "loss.png", torch.tensor([2.0, 1.0, 0.5]))
...     print(path.name, path.read_bytes()[:8] == b"\\x89PNG\\r\\n\\x1a\\n")
loss.png True
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter
from torch import Tensor

from .artifacts import FIGURES_DIR

__all__ = [
    "heatmap",
    "signed_heatmap",
    "plot_batch_grid",
    "save_batch_grids",
    "plot_loss_trace",
    "plot_class_grid",
    "CurvePanel",
    "plot_curves",
    "plot_heatmap_gallery",
    "MAX_BATCH_GRIDS",
    "NEGLIGIBLE",
    "MIN_COLOR_LIMIT",
    "color_limit",
    "plot_contrast",
    "plot_class_concepts",
    "plot_overlay_rows",
    # the drawing kit the probing modules' own pictures share
    "FAIL_COLOR",
    "SUCCESS_COLOR",
    "HEAT_CMAP",
    "SIGNED_CMAP",
    "bare_axes",
    "color_bar",
    "displayable",
    "frame_axes",
    "gray_images",
    "image_grid",
    "class_label",
    "save_figure",
    "show_image",
    "show_overlay",
]

log = logging.getLogger(__name__)

#: At most this many ``figures/batch_*.png`` files per job by default.
MAX_BATCH_GRIDS = 10

HEAT_CMAP = "hot"
SIGNED_CMAP = "RdBu_r"
FAIL_COLOR = "tab:red"
SUCCESS_COLOR = "tab:green"
_DPI = 100
#: |δ| below this is drawn as no change (transparent): rounding noise, not a perturbation.
NEGLIGIBLE = 1e-6
#: The smallest colour limit of a heatmap: one gray level of an 8-bit image. A scale set by the
#: largest change alone would draw a near-zero perturbation as saturated squares.
MIN_COLOR_LIMIT = 1.0 / 255
#: Luminance weights (ITU-R BT.601) turning RGB into the gray under a heatmap.
_LUMA = (0.299, 0.587, 0.114)


# --------------------------------------------------------------------------- #
# tensors
# --------------------------------------------------------------------------- #
def _check_batch(name: str, x: object) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor; got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"`{name}` must have shape (N, C, H, W); got shape {tuple(x.shape)}")
    return x


def heatmap(delta: Tensor) -> Tensor:
    """``|delta|`` summed over channels: ``(N, C, H, W) -> (N, H, W)``.

    Examples
    --------
    >>> import torch
    >>> delta = torch.tensor([[[[0.5, 0.0]], [[-0.25, 0.0]], [[0.0, -1.0]]]])   # (1, 3, 1, 2)
    >>> heatmap(delta)
    tensor([[[0.7500, 1.0000]]])
    """
    return _check_batch("delta", delta).abs().sum(dim=1)


def signed_heatmap(delta: Tensor) -> Tensor:
    """The signed perturbation of grayscale images: ``(N, 1, H, W) -> (N, H, W)``.

    Raises
    ------
    ValueError
        For more than one channel (the sign of a colour change has no single value).

    Examples
    --------
    >>> import torch
    >>> signed_heatmap(torch.tensor([[[[0.5, -0.25]]]]))
    tensor([[[ 0.5000, -0.2500]]])
    """
    delta = _check_batch("delta", delta)
    if delta.shape[1] != 1:
        raise ValueError(
            f"`delta` must be grayscale, shape (N, 1, H, W), for a signed heatmap; got {delta.shape[1]} "
            "channels (use heatmap for colour images)"
        )
    return delta[:, 0]


def _numpy(x: Tensor) -> np.ndarray:
    return x.detach().to("cpu", torch.float32).numpy()


def displayable(images: Tensor) -> np.ndarray:
    """``(N, H, W)`` for grayscale, ``(N, H, W, 3)`` for RGB, clipped to ``[0, 1]``."""
    channels = images.shape[1]
    if channels not in (1, 3):
        raise ValueError(f"images must have 1 (grayscale) or 3 (RGB) channels; got {channels}")
    array = np.clip(_numpy(images), 0.0, 1.0)
    return array[:, 0] if channels == 1 else array.transpose(0, 2, 3, 1)


def gray_images(images: Tensor) -> np.ndarray:
    """``(N, H, W)`` luminance in ``[0, 1]``."""
    shown = displayable(images)
    return shown if shown.ndim == 3 else shown @ np.asarray(_LUMA, dtype=np.float32)


def _vector(name: str, x: object, n: int, *, floating: bool = False) -> np.ndarray:
    if not isinstance(x, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor of shape ({n},); got {type(x).__name__}")
    if tuple(x.shape) != (n,):
        raise ValueError(f"`{name}` must have shape ({n},), one entry per image; got {tuple(x.shape)}")
    return x.detach().cpu().numpy().astype(np.float64 if floating else np.int64)


def class_label(index: int, class_names: Sequence[str] | None) -> str:
    """The name of class ``index`` (``"?"`` for -1, the index itself without names).

    Examples
    --------
    >>> class_label(1, ["cat", "dog"]), class_label(-1, None), class_label(3, None)
    ('dog', '?', '3')
    """
    if index < 0:
        return "?"
    if class_names is None:
        return str(index)
    if index >= len(class_names):
        raise ValueError(f"class index {index} has no entry in `class_names` ({len(class_names)} names)")
    return str(class_names[index])


def _new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), dpi=_DPI, layout="constrained")


def image_grid(
    rows: int,
    cols: int,
    *,
    cell: float,
    title_lines: int,
    heading_lines: int,
    column_title_lines: int = 0,
    left: float = 0.35,
    right: float = 0.1,
    min_width: float = 3.2,
) -> tuple[Figure, np.ndarray]:
    """A figure of ``rows x cols`` square image axes, margins fixed in inches.

    A fixed layout instead of matplotlib's constrained one: grids have many
    axes and the layout solver would take most of the drawing time.
    ``title_lines`` lines of small text fit above every cell, and
    ``heading_lines`` lines of a heading above the grid (and
    ``column_title_lines`` above the first row only).
    """
    line = 0.17  # inches per line of 8-point text, with leading
    gap_w, gap_h = 0.1, 0.08 + line * title_lines
    top = 0.1 + line * 1.3 * heading_lines + line * max(title_lines, column_title_lines)
    bottom = 0.1
    width = left + cols * cell + (cols - 1) * gap_w + right
    if width < min_width:  # room for the heading: widen the right margin
        right += min_width - width
        width = min_width
    height = top + rows * cell + (rows - 1) * gap_h + bottom
    figure = Figure(figsize=(width, height), dpi=_DPI)
    axes = figure.subplots(
        rows,
        cols,
        squeeze=False,
        gridspec_kw=dict(
            left=left / width,
            right=1 - right / width,
            bottom=bottom / height,
            top=1 - top / height,
            wspace=gap_w / cell,
            hspace=gap_h / cell,
        ),
    )
    return figure, axes


def save_figure(figure: Figure, path: str | os.PathLike) -> Path:
    """Write ``figure`` as a PNG at ``path`` (creating its folder); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=_DPI)
    return path  # no pyplot manager holds the figure: it is freed with its last reference


def bare_axes(ax) -> None:
    """No ticks on ``ax`` (image panels)."""
    ax.set_xticks([])
    ax.set_yticks([])


def show_image(ax, image: np.ndarray) -> None:
    """Draw an ``(H, W)`` grayscale or ``(H, W, 3)`` RGB image in ``[0, 1]`` on ``ax``, without ticks."""
    if image.ndim == 2:
        ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(image, interpolation="nearest")
    bare_axes(ax)


def color_limit(values: np.ndarray | Tensor) -> float:
    """The colour limit of heatmaps of ``values``: their largest magnitude, at least :data:`MIN_COLOR_LIMIT`.

    Examples
    --------
    >>> import numpy as np
    >>> color_limit(np.array([0.0, -0.5, 0.2])), color_limit(np.array([1e-7])) == MIN_COLOR_LIMIT
    (0.5, True)
    """
    array = _numpy(values) if isinstance(values, Tensor) else np.asarray(values)
    top = float(np.abs(array).max()) if array.size else 0.0
    return max(top, MIN_COLOR_LIMIT)


def _opacity(values: np.ndarray, limit: float) -> np.ndarray:
    """Per-pixel opacity of an overlay: 0 for a negligible change, rising with ``|value| / limit``.

    Small changes fade into the image under them instead of showing as dark
    (or, signed, white) squares; every change above :data:`NEGLIGIBLE` stays
    visible (at least a quarter opaque).
    """
    magnitude = np.abs(values)
    return np.where(magnitude < NEGLIGIBLE, 0.0, 0.25 + 0.75 * np.clip(magnitude / limit, 0.0, 1.0))


def show_overlay(ax, gray: np.ndarray, values: np.ndarray, *, signed: bool, limit: float | None = None):
    """``values`` over a faded ``gray`` image; negligible changes stay transparent.

    ``limit`` (default :func:`color_limit` of ``values``) sets the colour
    scale, so heatmaps drawn with one limit compare; the opacity follows the
    size of the change (:func:`_opacity`). Returns the image the colour bar
    describes.
    """
    ax.imshow(0.25 + 0.5 * gray, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    limit = color_limit(values) if limit is None else limit
    alpha = _opacity(values, limit)
    if signed:
        shown = ax.imshow(values, cmap=SIGNED_CMAP, vmin=-limit, vmax=limit, alpha=alpha, interpolation="nearest")
    else:
        shown = ax.imshow(values, cmap=HEAT_CMAP, vmin=0.0, vmax=limit, alpha=alpha, interpolation="nearest")
    bare_axes(ax)
    return shown


def color_bar(figure: Figure, shown, axes_row: Sequence, label: str) -> None:
    """A colour bar for ``shown``, to the right of the last axes of ``axes_row``, as tall as the row."""
    last = axes_row[-1].get_position()
    width = figure.get_figwidth()
    cax = figure.add_axes((last.x1 + 0.08 / width, last.y0, 0.08 / width, last.height))
    bar = figure.colorbar(shown, cax=cax)
    bar.ax.tick_params(labelsize=6)
    bar.set_label(label, fontsize=7)


def frame_axes(ax, color: str) -> None:
    """A thick ``color`` frame around ``ax`` (success / failure marks)."""
    for spine in ax.spines.values():
        spine.set_edgecolor(color)
        spine.set_linewidth(3)


# --------------------------------------------------------------------------- #
# one job
# --------------------------------------------------------------------------- #
def plot_batch_grid(
    path: str | os.PathLike,
    images: Tensor,
    xadv: Tensor,
    *,
    labels: Tensor | None,
    clean_pred: Tensor,
    clean_conf: Tensor,
    adv_pred: Tensor,
    adv_conf: Tensor,
    class_names: Sequence[str] | None,
    targets: Tensor | None = None,
    max_images: int = 8,
    title: str | None = None,
    success: Tensor | None = None,
) -> Path:
    """Draw originals, perturbed images and their perturbation heatmaps, one column per image.

    Rows: the original (title: true label, clean prediction and its
    confidence); the perturbed image (adversarial prediction and confidence,
    the target when there is one, and with ``success`` whether the attack
    succeeded: "✓ flipped" framed green, "✗ not flipped" framed red);
    ``|δ|`` summed over channels, over the faded grayscale original; for
    grayscale images also the signed ``δ`` (diverging colours). The heatmaps
    of a grid share one colour scale (:func:`color_limit` over its images),
    shown by a colour bar per row, so columns compare; each column's title
    gives its own largest change, and changes below :data:`NEGLIGIBLE` are
    not drawn.

    Parameters
    ----------
    path : path
        The PNG to write (parent directories are created).
    images, xadv : Tensor, shape-(N, C, H, W)
        Originals and perturbed images, ``C`` 1 or 3.
    labels : Tensor of int, shape-(N,), or None
        True labels; ``-1`` (or ``None`` for all) shows ``?``.
    clean_pred, adv_pred : Tensor of int, shape-(N,)
    clean_conf, adv_conf : Tensor, shape-(N,)
        Softmax probabilities of the predictions.
    class_names : sequence of str or None
        ``None`` shows class indices.
    targets : Tensor of int, shape-(N,), optional
        Targets of a targeted attack (``-1``: none).
    max_images : int, optional (default=8)
        Only the first ``max_images`` images are drawn (the title says so).
    title : str, optional
    success : Tensor of bool, shape-(N,), optional
        Whether each image's attack succeeded (it "flipped").

    Returns
    -------
    Path

    Examples
    --------
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> images = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    >>> xadv = (images + 0.3 * (torch.arange(64).view(1, 1, 8, 8) % 7 == 0)).clamp(0, 1)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = plot_batch_grid(
    ...         Path(tmp) / "grid.png", images, xadv, labels=torch.tensor([3, -1]),
    ...         clean_pred=torch.tensor([3, 1]), clean_conf=torch.tensor([0.9, 0.6]),
    ...         adv_pred=torch.tensor([5, 2]), adv_conf=torch.tensor([0.7, 0.8]), class_names=None)
    ...     print(path.stat().st_size > 1000)
    True
    """
    images = _check_batch("images", images)
    xadv = _check_batch("xadv", xadv)
    if xadv.shape != images.shape:
        raise ValueError(f"`xadv` must have the shape of `images` {tuple(images.shape)}; got {tuple(xadv.shape)}")
    if isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1:
        raise ValueError(f"`max_images` must be an integer >= 1; got max_images={max_images!r}")
    n = images.shape[0]
    if n == 0:
        raise ValueError("`images` must hold at least one image to draw")
    labels_np = np.full(n, -1) if labels is None else _vector("labels", labels, n)
    targets_np = np.full(n, -1) if targets is None else _vector("targets", targets, n)
    clean_pred_np = _vector("clean_pred", clean_pred, n)
    adv_pred_np = _vector("adv_pred", adv_pred, n)
    clean_conf_np = _vector("clean_conf", clean_conf, n, floating=True)
    adv_conf_np = _vector("adv_conf", adv_conf, n, floating=True)
    success_np = None if success is None else _vector("success", success, n).astype(bool)

    shown = min(n, max_images)
    delta = (xadv[:shown].detach() - images[:shown].detach()).to("cpu", torch.float32)
    originals = displayable(images[:shown])
    perturbed = displayable(xadv[:shown])
    gray = gray_images(images[:shown])
    heat = _numpy(heatmap(delta))
    grayscale = images.shape[1] == 1
    signed = _numpy(signed_heatmap(delta)) if grayscale else None
    rows = 4 if grayscale else 3

    heading = [title] if title else []
    if shown < n:
        heading.append(f"first {shown} of {n} images shown")
    if success_np is not None:
        heading.append(f"{int(success_np[:shown].sum())} of {shown} shown flipped (✓ green, ✗ red)")
    figure, axes = image_grid(
        rows, shown, cell=1.7, title_lines=3 if success_np is not None else 2, heading_lines=len(heading),
        right=0.75,
    )
    heat_limit = color_limit(heat)
    signed_limit = color_limit(signed) if signed is not None else None
    heat_image = signed_image = None
    for col in range(shown):  # drawing: one column per image
        label = class_label(int(labels_np[col]), class_names)
        show_image(axes[0, col], originals[col])
        axes[0, col].set_title(
            f"true: {label}\npred: {class_label(int(clean_pred_np[col]), class_names)} ({clean_conf_np[col]:.2f})",
            fontsize=8,
        )
        show_image(axes[1, col], perturbed[col])
        text = f"adv: {class_label(int(adv_pred_np[col]), class_names)} ({adv_conf_np[col]:.2f})"
        if targets_np[col] >= 0:
            text += f"\ntarget: {class_label(int(targets_np[col]), class_names)}"
        if success_np is not None:
            flipped = bool(success_np[col])
            text += "\n✓ flipped" if flipped else "\n✗ not flipped"
            frame_axes(axes[1, col], SUCCESS_COLOR if flipped else FAIL_COLOR)
        axes[1, col].set_title(text, fontsize=8)
        heat_image = show_overlay(axes[2, col], gray[col], heat[col], signed=False, limit=heat_limit)
        axes[2, col].set_title(f"max {float(np.abs(heat[col]).max()):.3g}", fontsize=8)
        if signed is not None:
            signed_image = show_overlay(axes[3, col], gray[col], signed[col], signed=True, limit=signed_limit)
            axes[3, col].set_title(f"±{float(np.abs(signed[col]).max()):.3g}", fontsize=8)
    color_bar(figure, heat_image, axes[2], "|δ|")
    if signed_image is not None:
        color_bar(figure, signed_image, axes[3], "δ")
    row_names = ["original", "perturbed", "|δ| (sum over channels)", "δ (signed)"][:rows]
    for row, name in enumerate(row_names):
        axes[row, 0].set_ylabel(name, fontsize=8)
    if heading:
        figure.suptitle("\n".join(heading), fontsize=10, y=1 - 0.05 / figure.get_figheight())
    return save_figure(figure, path)


def save_batch_grids(
    out_dir: str | os.PathLike,
    images: Tensor,
    xadv: Tensor,
    *,
    labels: Tensor | None,
    clean_pred: Tensor,
    clean_conf: Tensor,
    adv_pred: Tensor,
    adv_conf: Tensor,
    class_names: Sequence[str] | None,
    batch_size: int,
    targets: Tensor | None = None,
    max_images: int = 8,
    max_grids: int = MAX_BATCH_GRIDS,
    success: Tensor | None = None,
) -> list[Path]:
    """One :func:`plot_batch_grid` per batch: ``out_dir/figures/batch_000.png``, ``batch_001.png``, ...

    ``out_dir`` is the job's directory; the grids go to its ``figures/``
    sub-directory. Batch ``b`` holds images ``b * batch_size`` to
    ``(b + 1) * batch_size - 1``; each grid draws the first ``max_images``
    images of its batch, and only the first ``max_grids`` batches get a grid
    (a log message says how many were skipped).

    Returns
    -------
    list of Path
        The written files, in batch order.

    Examples
    --------
    >>> import tempfile, torch
    >>> images = torch.rand(5, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    >>> zeros, ones = torch.zeros(5, dtype=torch.long), torch.ones(5)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     paths = save_batch_grids(
    ...         tmp, images, (images + 0.1).clamp(0, 1), labels=zeros, clean_pred=zeros,
    ...         clean_conf=ones, adv_pred=zeros + 1, adv_conf=ones, class_names=["a", "b"],
    ...         batch_size=2, max_grids=2)
    ...     print([p.relative_to(tmp).as_posix() for p in paths])
    ['figures/batch_000.png', 'figures/batch_001.png']
    """
    images = _check_batch("images", images)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be an integer >= 1; got batch_size={batch_size!r}")
    if isinstance(max_grids, bool) or not isinstance(max_grids, int) or max_grids < 0:
        raise ValueError(f"`max_grids` must be an integer >= 0; got max_grids={max_grids!r}")
    n = images.shape[0]
    batches = math.ceil(n / batch_size)
    if batches > max_grids:
        log.info("drawing batch grids for the first %d of %d batches (max_grids)", max_grids, batches)
    figures_dir = Path(out_dir) / FIGURES_DIR

    def part(x: Tensor | None, start: int, stop: int) -> Tensor | None:
        return None if x is None else x[start:stop]

    paths = []
    for batch in range(min(batches, max_grids)):
        start, stop = batch * batch_size, min((batch + 1) * batch_size, n)
        paths.append(
            plot_batch_grid(
                figures_dir / f"batch_{batch:03d}.png",
                images[start:stop],
                xadv[start:stop],
                labels=part(labels, start, stop),
                clean_pred=clean_pred[start:stop],
                clean_conf=clean_conf[start:stop],
                adv_pred=adv_pred[start:stop],
                adv_conf=adv_conf[start:stop],
                class_names=class_names,
                targets=part(targets, start, stop),
                max_images=max_images,
                title=f"batch {batch}: images {start}–{stop - 1}",
                success=part(success, start, stop),
            )
        )
    return paths


def plot_loss_trace(
    path: str | os.PathLike,
    loss_trace: Tensor,
    *,
    datum_loss_trace: Tensor | None = None,
    ylabel: str = "loss",
    max_datum_lines: int = 64,
) -> Path:
    """Plot the solver's loss against the evaluated iterate (0: the start).

    Parameters
    ----------
    path : path
        The PNG to write.
    loss_trace : Tensor, shape-(S,) or (R, S)
        The reduced loss per iterate; ``(R, S)`` (random restarts, NaN-padded)
        draws one line per restart.
    datum_loss_trace : Tensor, shape-(S, N), optional
        Per-image losses, drawn as thin lines under the trace (the first
        ``max_datum_lines`` images).
    ylabel : str, optional (default="loss")

    Examples
    --------
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> trace = torch.tensor([[0.1, 0.5, 0.9], [0.2, 0.4, float("nan")]])
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     print(plot_loss_trace(Path(tmp) / "loss.png", trace, ylabel="margin").suffix)
    .png
    """
    if not isinstance(loss_trace, Tensor):
        raise TypeError(f"`loss_trace` must be a torch.Tensor; got {type(loss_trace).__name__}")
    trace = _numpy(loss_trace)
    if trace.ndim == 1:
        trace = trace[None]
    if trace.ndim != 2 or trace.shape[1] == 0 or not np.isfinite(trace).any():
        raise ValueError(
            "`loss_trace` must have shape (S,) or (R, S) with S >= 1 and some finite values; "
            f"got shape {tuple(loss_trace.shape)}"
        )
    figure = _new_figure(6.0, 4.0)
    ax = figure.subplots()
    if datum_loss_trace is not None:
        if not isinstance(datum_loss_trace, Tensor) or datum_loss_trace.ndim != 2:
            raise ValueError(
                "`datum_loss_trace` must be a tensor of shape (S, N); got "
                f"{getattr(datum_loss_trace, 'shape', type(datum_loss_trace).__name__)}"
            )
        per_datum = _numpy(datum_loss_trace)[:, :max_datum_lines]
        steps = np.arange(per_datum.shape[0])
        ax.plot(steps, per_datum, color="0.6", linewidth=0.6, alpha=0.6)
        ax.plot([], [], color="0.6", linewidth=0.6, label=f"per image ({per_datum.shape[1]} shown)")
    steps = np.arange(trace.shape[1])
    for restart, line in enumerate(trace):
        label = "loss" if len(trace) == 1 else f"restart {restart}"
        ax.plot(steps, line, linewidth=1.8, label=label)
    ax.set_xlabel("evaluated iterate (0 = start)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(figure, path)


def plot_class_grid(
    path: str | os.PathLike,
    xadv: Tensor,
    *,
    sources: Tensor,
    targets: Tensor,
    class_names: Sequence[str] | None,
    deltas: Tensor | None = None,
    success: Tensor | None = None,
    max_sources: int = 16,
    max_targets: int = 20,
    wrap: int = 8,
) -> Path:
    """Probe mode: one row per source image (or seed), one column per target class.

    Entry ``i`` of ``xadv`` is source ``sources[i]`` pushed toward class
    ``targets[i]``; it is drawn in row ``sources[i]`` (rows in increasing
    order) and the column of ``targets[i]`` (the distinct targets in
    increasing order, titled with their class names). With ``deltas``, each
    source gets a second row with the ``|δ|`` heatmaps over the perturbed
    images, all on one colour scale with a colour bar. With ``success``,
    failed entries are framed in red and marked ``✗``. Cells of missing
    (source, target) pairs stay empty. Only the first ``max_sources``
    sources and ``max_targets`` targets are drawn (the title says so). With a
    single target class the sources are wrapped into a grid of up to
    ``wrap`` columns (each cell titled with its source) instead of one tall
    column.

    Raises
    ------
    ValueError
        When a (source, target) pair occurs twice.

    Examples
    --------
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> xadv = torch.rand(4, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = plot_class_grid(
    ...         Path(tmp) / "classes.png", xadv, sources=torch.tensor([0, 0, 1, 1]),
    ...         targets=torch.tensor([2, 5, 2, 5]), class_names=[str(k) for k in range(10)],
    ...         deltas=xadv - 0.5, success=torch.tensor([True, False, True, True]))
    ...     print(path.exists())
    True
    """
    xadv = _check_batch("xadv", xadv)
    n = xadv.shape[0]
    if n == 0:
        raise ValueError("`xadv` must hold at least one image to draw")
    sources_np = _vector("sources", sources, n)
    targets_np = _vector("targets", targets, n)
    if (targets_np < 0).any():
        raise ValueError("`targets` must hold class indices >= 0 in probe mode")
    pairs = sources_np * (int(targets_np.max()) + 1) + targets_np
    if np.unique(pairs).size != n:
        raise ValueError("every (source, target) pair must occur once in `sources` / `targets`")
    success_np = None if success is None else _vector("success", success, n).astype(bool)
    if deltas is not None:
        deltas = _check_batch("deltas", deltas)
        if deltas.shape != xadv.shape:
            raise ValueError(f"`deltas` must have the shape of `xadv` {tuple(xadv.shape)}; got {tuple(deltas.shape)}")

    all_sources, all_targets = np.unique(sources_np), np.unique(targets_np)
    row_ids, col_ids = all_sources[:max_sources], all_targets[:max_targets]
    shown = np.isin(sources_np, row_ids) & np.isin(targets_np, col_ids)
    keep = np.flatnonzero(shown)
    perturbed = displayable(xadv[torch.as_tensor(keep)])
    heat = gray = None
    if deltas is not None:
        heat = _numpy(heatmap(deltas[torch.as_tensor(keep)]))
        gray = gray_images(xadv[torch.as_tensor(keep)])
    per_source = 2 if deltas is not None else 1
    single = len(col_ids) == 1  # one target: wrap the sources into a grid, one source per cell
    if single:
        cols = min(len(row_ids), wrap)
        blocks = math.ceil(len(row_ids) / cols)
    else:
        cols, blocks = len(col_ids), len(row_ids)
    rows = blocks * per_source

    heading = [f"toward class {class_label(int(col_ids[0]), class_names)}" if single else "toward each target class"]
    if success_np is not None:
        heading.append(f"{int(success_np[keep].sum())}/{keep.size} succeeded (✗: failed)")
    if len(row_ids) < len(all_sources) or len(col_ids) < len(all_targets):
        heading.append(f"showing {len(row_ids)}/{len(all_sources)} sources, {len(col_ids)}/{len(all_targets)} targets")
    figure, axes = image_grid(
        rows, cols, cell=1.4, title_lines=1 if single else 0, column_title_lines=0 if single else 1,
        heading_lines=len(heading), right=0.75 if heat is not None else 0.1,
    )
    for ax in axes.flat:
        bare_axes(ax)
        ax.set_frame_on(False)
    row_of = {int(s): k for k, s in enumerate(row_ids)}
    col_of = {int(t): k for k, t in enumerate(col_ids)}

    def cell(source: int, target: int) -> tuple[int, int]:
        k = row_of[source]
        return ((k // cols) * per_source, k % cols) if single else (k * per_source, col_of[target])

    limit = color_limit(heat) if heat is not None else None
    heat_image = None
    for slot, entry in enumerate(keep):  # drawing: one cell per shown entry
        row, col = cell(int(sources_np[entry]), int(targets_np[entry]))
        ax = axes[row, col]
        ax.set_frame_on(True)
        show_image(ax, perturbed[slot])
        if single:
            ax.set_title(f"source {int(sources_np[entry])}", fontsize=8)
        failed = success_np is not None and not success_np[entry]
        if failed:
            frame_axes(ax, FAIL_COLOR)
            ax.text(0.03, 0.97, "✗", transform=ax.transAxes, color=FAIL_COLOR, fontsize=12,
                    fontweight="bold", va="top", ha="left")
        if heat is not None:
            below = axes[row + 1, col]
            below.set_frame_on(True)
            heat_image = show_overlay(below, gray[slot], heat[slot], signed=False, limit=limit)
            if failed:
                frame_axes(below, FAIL_COLOR)
    if single:
        for block in range(blocks):
            axes[block * per_source, 0].set_ylabel("perturbed", fontsize=9)
            if heat is not None:
                axes[block * per_source + 1, 0].set_ylabel("|δ|", fontsize=9)
    else:
        for k, target in enumerate(col_ids):
            axes[0, k].set_title(f"→ {class_label(int(target), class_names)}", fontsize=9)
        for k, source in enumerate(row_ids):
            axes[k * per_source, 0].set_ylabel(f"source {int(source)}", fontsize=9)
            if heat is not None:
                axes[k * per_source + 1, 0].set_ylabel("|δ|", fontsize=9)
    if heat_image is not None:
        color_bar(figure, heat_image, axes[per_source - 1], "|δ| (all cells)")
    figure.suptitle("\n".join(heading), fontsize=10, y=1 - 0.05 / figure.get_figheight())
    return save_figure(figure, path)


# --------------------------------------------------------------------------- #
# sweeps
# --------------------------------------------------------------------------- #
@dataclass
class CurvePanel:
    """One axes of :func:`plot_curves`: named curves ``label -> (xs, ys)``.

    Examples
    --------
    >>> CurvePanel("success rate", {"q=0.9": ([1.0, 2.0], [0.4, 0.8])}, ylim=(0, 1)).ylabel
    'success rate'
    """

    ylabel: str
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]]
    ylim: tuple[float, float] | None = None
    title: str | None = None
    notes: list[str] = field(default_factory=list)


def plot_curves(
    path: str | os.PathLike,
    panels: Sequence[CurvePanel],
    *,
    xlabel: str,
    title: str | None = None,
    logx: bool | None = None,
) -> Path:
    """Draw one axes per :class:`CurvePanel`, side by side, with a line and markers per curve.

    ``logx=None`` uses a log x axis when every x is positive and they span
    more than a factor of 20.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> panel = CurvePanel("success rate", {"q=0.9": ([1, 2, 4], [0.2, 0.5, 0.9]),
    ...                                     "q=n/a": ([1, 2, 4], [0.1, 0.3, 0.6])})
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     print(plot_curves(Path(tmp) / "c.png", [panel], xlabel="epsilon").name)
    c.png
    """
    if not panels:
        raise ValueError("`panels` must hold at least one CurvePanel")
    xs_all = [float(x) for panel in panels for xs, _ in panel.curves.values() for x in xs]
    if logx is None:
        positive = [x for x in xs_all if x > 0]
        logx = bool(xs_all) and len(positive) == len(xs_all) and max(positive) / min(positive) > 20
    figure = _new_figure(5.2 * len(panels), 4.0)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        for label, (xs, ys) in panel.curves.items():
            ax.plot(list(xs), [math.nan if y is None else y for y in ys], "o-", label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(panel.ylabel)
        if panel.title:
            ax.set_title(panel.title, fontsize=10)
        if panel.ylim is not None:
            ax.set_ylim(*panel.ylim)
        drawn = any(y is not None and math.isfinite(y) for _, ys in panel.curves.values() for y in ys)
        if not drawn:
            ax.text(0.5, 0.5, "no value applies", transform=ax.transAxes, ha="center", fontsize=8, color="0.3")
        if logx and drawn:  # an axes with nothing drawn cannot be log-scaled
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # decades only: minor labels overlap
        ax.grid(alpha=0.3)
        if panel.curves:
            ax.legend(fontsize=8)
        for k, note in enumerate(panel.notes):
            ax.text(0.01, 0.01 + 0.05 * k, note, transform=ax.transAxes, fontsize=7, color="0.3")
    if title:
        figure.suptitle(title, fontsize=10)
    return save_figure(figure, path)


def plot_heatmap_gallery(
    path: str | os.PathLike,
    heatmaps: Sequence[Tensor | None],
    titles: Sequence[str],
    *,
    ncols: int = 6,
    row_labels: Sequence[str] | None = None,
    failed: Sequence[bool] | None = None,
    title: str | None = None,
    shared_scale: bool = True,
) -> Path:
    """A grid of ``(H, W)`` heatmaps, row-major, ``ncols`` per row, on one colour scale with a colour bar.

    With ``shared_scale=False`` each panel gets its own scale (at least
    :data:`MIN_COLOR_LIMIT`) and no colour bar. Values below
    :data:`NEGLIGIBLE` are not drawn.

    A ``None`` heatmap leaves an empty panel that still shows its title (e.g.
    "no perturbations.pt"); an empty title with ``None`` leaves a blank cell.
    ``failed[i]`` frames panel ``i`` in red.

    Examples
    --------
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> maps = [torch.rand(8, 8), None, torch.rand(8, 8)]
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = plot_heatmap_gallery(Path(tmp) / "g.png", maps, ["a", "missing", "c"], ncols=2)
    ...     print(path.name)
    g.png
    """
    if len(heatmaps) != len(titles) or not heatmaps:
        raise ValueError(
            f"`heatmaps` and `titles` must be non-empty and of the same length; got {len(heatmaps)} and {len(titles)}"
        )
    if isinstance(ncols, bool) or not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"`ncols` must be an integer >= 1; got ncols={ncols!r}")
    ncols = min(ncols, len(heatmaps))
    nrows = math.ceil(len(heatmaps) / ncols)
    title_lines = max((text.count("\n") + 1 for text in titles if text), default=0)
    figure, axes = image_grid(
        nrows, ncols, cell=1.6, title_lines=title_lines, heading_lines=title.count("\n") + 1 if title else 0,
        left=0.45 if row_labels is not None else 0.1, right=0.8 if shared_scale else 0.1,
    )
    present = [_numpy(values) for values in heatmaps if values is not None]
    shared = max((color_limit(array) for array in present), default=MIN_COLOR_LIMIT)
    shown = None
    for ax in axes.flat:
        bare_axes(ax)
        ax.set_frame_on(False)
    for k, (values, text) in enumerate(zip(heatmaps, titles)):  # drawing: one panel each
        ax = axes[k // ncols, k % ncols]
        if values is not None:
            array = _numpy(values)
            if array.ndim != 2:
                raise ValueError(f"heatmap {k} must have shape (H, W); got {array.shape}")
            ax.set_frame_on(True)
            limit = shared if shared_scale else color_limit(array)
            shown = ax.imshow(np.ma.masked_where(np.abs(array) < NEGLIGIBLE, array), cmap=HEAT_CMAP,
                              vmin=0.0, vmax=limit, interpolation="nearest")
        if failed is not None and failed[k]:
            ax.set_frame_on(True)
            frame_axes(ax, FAIL_COLOR)
        ax.set_title(text, fontsize=7)
    if row_labels is not None:
        for row, label in enumerate(row_labels[:nrows]):
            axes[row, 0].set_ylabel(label, fontsize=8)
    if shared_scale and shown is not None:
        color_bar(figure, shown, axes[0], "|δ| (all panels)")
    if title:
        figure.suptitle(title, fontsize=10, y=1 - 0.05 / figure.get_figheight())
    return save_figure(figure, path)


# --------------------------------------------------------------------------- #
# dataset-level concepts (rai_probe.probing.concepts)
# --------------------------------------------------------------------------- #
def plot_contrast(path: str | os.PathLike, maps: Mapping, *, source: str, target: str) -> Path:
    """``figures/contrast.png``: the mean source image, the mean signed δ and the mean ``|δ|``, with colour bars.

    ``maps`` is :func:`~rai_probe.probing.concepts.contrast_maps`'s output.

    Examples
    --------
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from rai_probe.probing.concepts import contrast_maps
    >>> images = torch.rand(3, 1, 6, 6)
    >>> maps = contrast_maps(images, images + 0.1 * torch.randn(3, 1, 6, 6), success=torch.tensor([True, False, True]))
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     print(plot_contrast(Path(tmp) / "c.png", maps, source="3", target="8").name)
    c.png
    """
    signed = maps["mean_delta"][0].sum(dim=0)
    magnitude = maps["mean_abs_delta"][0].sum(dim=0)
    figure = _new_figure(9.0, 3.4)
    axes = figure.subplots(1, 3)
    show_image(axes[0], displayable(maps["mean_image"].float())[0])
    axes[0].set_title(f"mean image of {source}\n({maps['n']} of {maps['n_all']} moved to {target})", fontsize=8)
    limit = color_limit(signed)
    shown = axes[1].imshow(_numpy(signed), cmap=SIGNED_CMAP, vmin=-limit, vmax=limit, interpolation="nearest")
    axes[1].set_title(f"mean signed δ\n(red: added to make {target})", fontsize=8)
    figure.colorbar(shown, ax=axes[1], shrink=0.8).set_label("mean δ (channel sum)", fontsize=7)
    heat = axes[2].imshow(_numpy(magnitude), cmap=HEAT_CMAP, vmin=0.0, vmax=color_limit(magnitude),
                          interpolation="nearest")
    axes[2].set_title("mean |δ|\n(where it changes)", fontsize=8)
    figure.colorbar(heat, ax=axes[2], shrink=0.8).set_label("mean |δ| (channel sum)", fontsize=7)
    for ax in axes:
        bare_axes(ax)
    figure.suptitle(f"what turns {source} into {target} for this model", fontsize=10)
    return save_figure(figure, path)


def plot_class_concepts(path: str | os.PathLike, concepts: Mapping, class_names: Sequence[str]) -> Path:
    """``figures/class_concepts.png``: per target class, the mean perturbed image, the mean δ and the spread over the sources.

    ``concepts`` is :func:`~rai_probe.probing.concepts.class_concepts`'s
    output; classes without rows are left out.

    Examples
    --------
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from rai_probe.probing.concepts import class_concepts
    >>> images = torch.rand(4, 1, 6, 6)
    >>> concepts = class_concepts(images, images.flip(0), torch.tensor([0, 0, 2, 2]), classes=3)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     print(plot_class_concepts(Path(tmp) / "k.png", concepts, ["a", "b", "c"]).name)
    k.png
    """
    present = [k for k in range(len(class_names)) if int(concepts["count"][k]) > 0]
    if not present:
        raise ValueError("`concepts` has no class with rows")
    figure, axes = image_grid(3, len(present), cell=1.3, title_lines=2, heading_lines=1, left=0.6, right=0.8)
    means = displayable(concepts["mean_xadv"][present].float())
    signed = _numpy(concepts["mean_delta"][present].float().sum(dim=1))
    spread = _numpy(concepts["std_xadv"][present].float().mean(dim=1))
    signed_limit, spread_limit = color_limit(signed), color_limit(spread)
    added = shown = None
    for column, k in enumerate(present):
        show_image(axes[0, column], means[column])
        axes[0, column].set_title(f"{class_names[k]}\n(n={int(concepts['count'][k])})", fontsize=7)
        added = axes[1, column].imshow(signed[column], cmap=SIGNED_CMAP, vmin=-signed_limit, vmax=signed_limit,
                                       interpolation="nearest")
        shown = axes[2, column].imshow(spread[column], cmap="viridis", vmin=0.0, vmax=spread_limit,
                                       interpolation="nearest")
        bare_axes(axes[1, column])
        bare_axes(axes[2, column])
    axes[0, 0].set_ylabel("mean image", fontsize=8)
    axes[1, 0].set_ylabel("mean δ", fontsize=8)
    axes[2, 0].set_ylabel("spread (std)", fontsize=8)
    color_bar(figure, added, axes[1], "mean δ (channel sum)")
    color_bar(figure, shown, axes[2], "std over sources")
    figure.suptitle("class concepts: mean and spread over the sources", fontsize=10, y=0.99)
    return save_figure(figure, path)


def plot_overlay_rows(
    path: str | os.PathLike,
    images: Sequence[Sequence[Tensor]],
    deltas: Sequence[Sequence[Tensor]],
    titles: Sequence[Sequence[str]],
    *,
    row_labels: Sequence[str],
    title: str,
) -> Path:
    """Rows of ``|δ|`` over the faded image, on one colour scale with a colour bar; a row per label.

    ``images[r][k]`` and ``deltas[r][k]`` are ``(C, H, W)`` tensors; rows may
    be shorter than the longest (their cells stay blank).

    Examples
    --------
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> x, d = torch.rand(1, 4, 4), torch.zeros(1, 4, 4)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     print(plot_overlay_rows(Path(tmp) / "o.png", [[x, x], [x]], [[d, d], [d]], [["a", "b"], ["c"]],
    ...                             row_labels=["first", "second"], title="t").name)
    o.png
    """
    if not images or len(images) != len(deltas) or len(images) != len(titles) or len(images) != len(row_labels):
        raise ValueError("`images`, `deltas`, `titles` and `row_labels` must hold the same number of rows (>= 1)")
    cols = max(1, max(len(row) for row in images))
    figure, axes = image_grid(len(images), cols, cell=1.6, title_lines=2, heading_lines=1, left=0.45, right=0.8)
    magnitudes = [[_numpy(delta.abs().sum(dim=0)) for delta in row] for row in deltas]
    limit = max((color_limit(m) for row in magnitudes for m in row), default=MIN_COLOR_LIMIT)
    shown = None
    for r, row in enumerate(images):
        for k in range(cols):
            ax = axes[r, k]
            bare_axes(ax)
            if k >= len(row):
                ax.set_frame_on(False)
                continue
            gray = gray_images(row[k].unsqueeze(0))[0]
            shown = show_overlay(ax, gray, magnitudes[r][k], signed=False, limit=limit)
            ax.set_title(titles[r][k], fontsize=7)
        axes[r, 0].set_ylabel(row_labels[r], fontsize=8)
    if shown is not None:
        color_bar(figure, shown, axes[0], "|δ| (all panels)")
    figure.suptitle(title, fontsize=10, y=1 - 0.05 / figure.get_figheight())
    return save_figure(figure, path)


"""Which source images a job attacks: a class by index or name, and ``mode.select`` / ``mode.source``.

``mode.select=correct`` keeps the images the model classifies correctly,
``misclassified`` the ones it gets wrong, ``all`` every image;
``mode.source=c`` (contrast mode) keeps the images of true class ``c``.
:func:`select_sources` scans the split in the data's order, a batch of
clean predictions at a time, until ``n_images`` images match (or the split
ends), so ``n_images`` counts the selected images.

Examples
--------
>>> import torch
>>> from rai_probe.data import ImageDataset
>>> images = torch.rand(6, 1, 2, 2)
>>> data = ImageDataset(images=images, labels=torch.tensor([0, 1, 1, 0, 1, 0]), class_names=("a", "b"), name="toy")
>>> model = lambda x: torch.stack([x.sum((1, 2, 3)) * 0, torch.ones(len(x))], 1)  # always predicts b
>>> picked, logits = select_sources(data, model, select="misclassified", n_images=2, batch_size=4)
>>> picked.labels.tolist(), logits.argmax(1).tolist()        # the first two images of class a
([0, 0], [1, 1])
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from ..data import ImageDataset
from .settings import MISSING, ProbeConfigError

__all__ = ["SELECTIONS", "class_index", "select_sources", "needs_selection"]

log = logging.getLogger("rai_probe.probing.run")

#: The values of ``mode.select``.
SELECTIONS = ("all", "correct", "misclassified")


def class_index(value: Any, class_names: Sequence[str], key: str) -> int:
    """A class given by index or by name, checked against the model's classes (``key`` names the setting).

    Examples
    --------
    >>> class_index("dog", ["cat", "dog"], "mode.source"), class_index(0, ["cat", "dog"], "mode.source")
    (1, 0)
    >>> class_index(5, ["cat", "dog"], "mode.source")
    Traceback (most recent call last):
    ...
    rai_probe.jobs.errors.ConfigError: mode.source=5 is not a class of the model: use a class index in [0, 1] or a class name (cat, dog). Fix it with the override `mode.source=...`.
    """
    names = [str(name) for name in class_names]
    if value is None or value == MISSING:
        raise ProbeConfigError(f"{key} is required: a class index in [0, {len(names) - 1}] or a class name", key)
    if isinstance(value, str) and value in names:
        return names.index(value)
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(names):
        shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
        raise ProbeConfigError(
            f"{key}={value!r} is not a class of the model: use a class index in [0, {len(names) - 1}] "
            f"or a class name ({shown})",
            key,
        )
    return value


def needs_selection(mode: dict) -> bool:
    """Whether the mode picks its images by prediction or class (so the whole split is loaded)."""
    return mode.get("select", "all") != "all" or mode.get("name") == "contrast"


def select_sources(
    data: ImageDataset,
    classifier: Callable[[Tensor], Tensor],
    *,
    select: str = "all",
    source: int | None = None,
    n_images: int,
    batch_size: int,
    device: torch.device | str = "cpu",
) -> tuple[ImageDataset, Tensor]:
    """The first ``n_images`` images of ``data`` that match, and their clean logits (float32, on ``device``).

    Parameters
    ----------
    select : {"all", "correct", "misclassified"}
        Keep every image, the correctly classified ones, or the misclassified ones.
    source : int, optional
        Keep only the images of this true class.
    n_images, batch_size : int
        How many to keep; how many to classify at a time.

    Raises
    ------
    ProbeConfigError
        ``select``/``source`` on unlabeled images, or no image matches
        (naming ``mode.select`` or ``mode.source``).
    """
    if select not in SELECTIONS:
        raise ProbeConfigError(f"mode.select={select!r} must be one of {', '.join(SELECTIONS)}", "mode.select")
    if (select != "all" or source is not None) and not data.labeled:
        key = "mode.select" if select != "all" else "mode.source"
        raise ProbeConfigError(
            f"{key} picks images by their true label, but data={data.name} has no labels: use labeled data",
            key,
        )
    labels = data.labels if data.labeled else None
    candidates = torch.arange(len(data))
    if source is not None:
        candidates = candidates[labels == source]
    kept: list[Tensor] = []
    logits: list[Tensor] = []
    count = 0
    with torch.no_grad():
        for start in range(0, candidates.numel(), batch_size):  # chunks, until enough images match
            rows = candidates[start : start + batch_size]
            out = classifier(data.images[rows].to(device)).float()
            if select == "all":
                match = torch.ones(rows.numel(), dtype=torch.bool)
            else:
                correct = out.argmax(dim=1).cpu() == labels[rows]
                match = correct if select == "correct" else ~correct
            kept.append(rows[match])
            logits.append(out[match.to(out.device)])
            count += int(match.sum())
            if count >= n_images:
                break
    rows = torch.cat(kept)[:n_images] if kept else torch.zeros(0, dtype=torch.long)
    if rows.numel() == 0:
        what = f"of class {data.class_names[source]!r} " if source is not None else ""
        which = {"all": "", "correct": " correctly classified", "misclassified": " misclassified"}[select]
        key = "mode.select" if select != "all" else "mode.source"
        raise ProbeConfigError(
            f"no{which} image {what}in data={data.name} ({data.split} split, {candidates.numel()} candidates): "
            f"nothing to attack; choose another {key}",
            key,
        )
    if rows.numel() < n_images:
        log.warning("n_images=%d but only %d images match mode.select=%s%s: attacking those",
                    n_images, rows.numel(), select, f" and mode.source={source}" if source is not None else "")
    return data.subset(rows), torch.cat(logits)[: rows.numel()]

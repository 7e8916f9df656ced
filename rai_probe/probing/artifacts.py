"""The files a probe job leaves in its output directory, and how to read them back.

================================  ==========================================================
file                              content
================================  ==========================================================
``perturbations.pt``              a dict of tensors (:func:`save_perturbations`): images,
                                  perturbed images, deltas, labels, targets, logits,
                                  predictions, success, loss trace, class names, the
                                  budget (``epsilon``, ``budget_norm``); loadable
                                  with ``torch.load(..., weights_only=True)``
``per_image.csv``                 one row per image (:func:`write_per_image_csv`)
``metrics.json``                  ``{"status": "complete", "summary", "config",
                                  "overrides", ...}`` (:func:`write_metrics`), written
                                  **last** and atomically: its presence means the job
                                  completed (``"status": "interrupted"`` for a job
                                  stopped by Ctrl-C, whose finished images are saved)
``error.txt``                     the error of a failed job (:func:`write_error`)
``figures/``                      the pictures (:mod:`rai_probe.probing.figures`)
================================  ==========================================================

Every file is written to a temporary name in the same directory and then
renamed over its final name (:func:`os.replace`), so a reader never sees a
half-written file. :func:`job_status` reads a job directory back as
``"complete"``, ``"interrupted"`` (stopped by Ctrl-C; what finished is saved),
``"failed"`` or ``"unfinished"``.

Examples
--------
>>> import tempfile, torch
>>> from rai_probe.probing.artifacts import write_metrics, write_error, job_status
>>> with tempfile.TemporaryDirectory() as tmp:
...     before = job_status(tmp)
...     _ = write_error(tmp, "RuntimeError: out of memory")
...     failed = job_status(tmp)
...     _ = write_metrics(tmp, {"n_images": 2}, config={"mode": "explain"}, overrides=[])
...     print(before, failed, job_status(tmp))
unfinished failed complete
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from .._io import write_atomic
from ..jobs.rundir import ERROR_FILE, METRICS_FILE, job_status, write_error
from ..models import read_torch_file
from .metrics import OPTIONAL_KEYS, PER_IMAGE_KEYS, _check_budget, per_image_metrics

__all__ = [
    "METRICS_FILE",
    "PER_IMAGE_FILE",
    "PERTURBATIONS_FILE",
    "ERROR_FILE",
    "FIGURES_DIR",
    "save_perturbations",
    "load_perturbations",
    "per_image_from_perturbations",
    "write_per_image_csv",
    "read_per_image_csv",
    "write_metrics",
    "read_metrics",
    "write_error",
    "job_status",
]

PER_IMAGE_FILE = "per_image.csv"
PERTURBATIONS_FILE = "perturbations.pt"
FIGURES_DIR = "figures"

#: Keys every ``perturbations.pt`` holds.
PERTURBATION_KEYS = (
    "images",
    "xadv",
    "deltas",
    "labels",
    "targets",
    "clean_logits",
    "adv_logits",
    "clean_pred",
    "adv_pred",
    "success",
    "first_success_step",
    "loss_trace",
    "class_names",
)

#: Per-image CSV columns holding class names, and the index column each follows.
_NAME_COLUMNS = {
    "label": "label_name",
    "target": "target_name",
    "clean_pred": "clean_pred_name",
    "adv_pred": "adv_pred_name",
}
_INT_KEYS = frozenset({"index", "label", "target", "clean_pred", "adv_pred", "steps_to_success",
                       "l0_pixels", "l0_elements", "search_steps", "search_rounds"})
_BOOL_KEYS = frozenset({"success", "clean_correct"})
#: Integer columns whose -1 means "none / unknown": written as an empty cell, the CSV's one missing value.
_OPTIONAL_INT_KEYS = frozenset({"label", "target", "steps_to_success"})


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def _directory(out_dir: str | os.PathLike, *, create: bool) -> Path:
    if not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"`out_dir` must be a path; got {type(out_dir).__name__}")
    path = Path(out_dir)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"`out_dir` must be a directory; {str(path)!r} is a file")
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def _check_class_names(class_names: Any, classes: int) -> list[str]:
    if class_names is None:
        return [str(k) for k in range(classes)]
    if isinstance(class_names, str) or not isinstance(class_names, Sequence):
        raise TypeError(
            f"`class_names` must be a sequence of {classes} strings or None; got {type(class_names).__name__}"
        )
    names = list(class_names)
    if len(names) != classes or not all(isinstance(name, str) for name in names):
        raise ValueError(
            f"`class_names` must hold one string per class of the logits ({classes}); "
            f"got {len(names)} entries"
        )
    return names


def _cpu(name: str, x: Any) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor; got {type(x).__name__}")
    return _own_storage(x.detach().cpu())


def _own_storage(x: Tensor) -> Tensor:
    """``x`` in a storage of its own size: ``torch.save`` of a view writes its whole base tensor.

    (A batch sliced from a loaded dataset is a view of the whole split: saved
    as is, every job's file would hold every image of the split.)
    """
    if x.untyped_storage().nbytes() > x.numel() * x.element_size() or not x.is_contiguous():
        return x.clone(memory_format=torch.contiguous_format)
    return x


def _class_vector(name: str, x: Tensor | None, n: int) -> Tensor:
    if x is None:
        return torch.full((n,), -1, dtype=torch.int64)
    x = _cpu(name, x)
    if tuple(x.shape) != (n,) or x.is_floating_point() or x.dtype == torch.bool:
        raise ValueError(
            f"`{name}` must be an integer tensor of shape ({n},) (-1: unknown / none) or None; "
            f"got dtype {x.dtype} and shape {tuple(x.shape)}"
        )
    return x.to(torch.int64)


# --------------------------------------------------------------------------- #
# perturbations.pt
# --------------------------------------------------------------------------- #
def save_perturbations(
    out_dir: str | os.PathLike,
    *,
    images: Tensor,
    xadv: Tensor,
    labels: Tensor | None,
    targets: Tensor | None,
    clean_logits: Tensor,
    adv_logits: Tensor,
    success: Tensor,
    first_success_step: Tensor,
    loss_trace: Tensor | None,
    class_names: Sequence[str] | None,
    extra: Mapping[str, Any] | None = None,
    epsilon: float | None = None,
    norm: str | None = None,
) -> Path:
    """Save everything needed to recompute the metrics and redraw the pictures of a job.

    Parameters
    ----------
    out_dir : path
        The job's output directory (created if missing); the file is
        ``out_dir / "perturbations.pt"``.
    images, xadv : Tensor, shape-(N, C, H, W)
        The attacked images and their perturbed versions.
    labels, targets : Tensor of int, shape-(N,), or None
        True labels and attack targets, ``-1`` where unknown / untargeted;
        ``None`` stores all ``-1``.
    clean_logits, adv_logits : Tensor, shape-(N, K)
        The model's outputs on ``images`` and ``xadv``.
    success : Tensor of bool, shape-(N,)
        The per-image ``success`` of
        :func:`~rai_probe.probing.metrics.per_image_metrics` (clean mistakes
        are no successes; recomputing from the file gives the same).
    first_success_step : Tensor of int, shape-(N,)
    loss_trace : Tensor or None
        The solver's loss trace (``None`` stores an empty tensor).
    class_names : sequence of str, length K, or None
        Names of the classes (``None``: ``"0"``, ``"1"``, ...).
    extra : mapping of str to tensors / numbers / strings, optional
        More entries to store (e.g. ``"datum_loss_trace"`` or probe-mode
        ``"sources"``); their keys must differ from the standard ones.
    epsilon, norm : float and {"l1", "l2", "linf"}, optional
        The attack's budget and the norm of its ball, stored as
        ``"epsilon"`` and ``"budget_norm"`` (``None`` when not given) so that
        ``budget_used`` can be recomputed.

    Returns
    -------
    Path
        The written file. It holds a dict with the given tensors (detached,
        on the CPU), ``"deltas"`` (``xadv - images``), ``"clean_pred"`` and
        ``"adv_pred"`` (argmax of the logits) and ``"class_names"`` (a list
        of str).

    Examples
    --------
    >>> import tempfile, torch
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = save_perturbations(
    ...         tmp, images=torch.zeros(2, 1, 2, 2), xadv=torch.full((2, 1, 2, 2), 0.1),
    ...         labels=torch.tensor([0, 1]), targets=None,
    ...         clean_logits=torch.eye(2), adv_logits=torch.eye(2).flip(1),
    ...         success=torch.tensor([True, True]), first_success_step=torch.tensor([1, 2]),
    ...         loss_trace=torch.tensor([0.5, 1.0, 2.0]), class_names=["cat", "dog"])
    ...     saved = load_perturbations(tmp)
    >>> path.name, saved["adv_pred"].tolist(), saved["targets"].tolist(), saved["class_names"]
    ('perturbations.pt', [1, 0], [-1, -1], ['cat', 'dog'])
    """
    directory = _directory(out_dir, create=True)
    images = _cpu("images", images)
    xadv = _cpu("xadv", xadv)
    if images.ndim != 4 or xadv.shape != images.shape:
        raise ValueError(
            "`images` and `xadv` must have the same shape (N, C, H, W); "
            f"got {tuple(images.shape)} and {tuple(xadv.shape)}"
        )
    n = images.shape[0]
    clean_logits = _cpu("clean_logits", clean_logits)
    adv_logits = _cpu("adv_logits", adv_logits)
    if clean_logits.ndim != 2 or clean_logits.shape[0] != n or adv_logits.shape != clean_logits.shape:
        raise ValueError(
            f"`clean_logits` and `adv_logits` must both have shape (N, K) = ({n}, K); "
            f"got {tuple(clean_logits.shape)} and {tuple(adv_logits.shape)}"
        )
    success = _cpu("success", success)
    if tuple(success.shape) != (n,) or success.dtype != torch.bool:
        raise ValueError(
            f"`success` must be a bool tensor of shape ({n},); got dtype {success.dtype} "
            f"and shape {tuple(success.shape)}"
        )
    first = _class_vector("first_success_step", first_success_step, n)
    trace = torch.empty(0) if loss_trace is None else _cpu("loss_trace", loss_trace)
    epsilon, norm = _check_budget(epsilon, norm)
    payload: dict[str, Any] = {
        "images": images,
        "xadv": xadv,
        "deltas": xadv - images,
        "labels": _class_vector("labels", labels, n),
        "targets": _class_vector("targets", targets, n),
        "clean_logits": clean_logits,
        "adv_logits": adv_logits,
        "clean_pred": clean_logits.argmax(dim=1),
        "adv_pred": adv_logits.argmax(dim=1),
        "success": success,
        "first_success_step": first,
        "loss_trace": trace,
        "class_names": _check_class_names(class_names, clean_logits.shape[1]),
        "epsilon": epsilon,
        "budget_norm": norm,
    }
    for key, value in (extra or {}).items():
        if key in payload:
            raise ValueError(f"`extra` must not repeat a standard key of perturbations.pt; got {key!r}")
        payload[key] = _own_storage(value.detach().cpu()) if isinstance(value, Tensor) else value
    path = directory / PERTURBATIONS_FILE
    return write_atomic(path, save=lambda file: torch.save(payload, file))


def load_perturbations(path_or_dir: str | os.PathLike) -> dict:
    """Load a ``perturbations.pt`` (given itself or its job directory) safely.

    The file is read by :func:`rai_probe.models.read_torch_file`: its sizes
    are checked before reading, and it is loaded with ``weights_only=True``,
    so a file that holds code is refused and its code never runs.

    Raises
    ------
    FileNotFoundError
        When the file does not exist (the message names the path).
    rai_probe.models.CheckpointError
        When it is not a torch file, is corrupt, or holds code (a
        ``ValueError``).
    ValueError
        When it is not a dict holding the keys :func:`save_perturbations` writes.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     try:
    ...         load_perturbations(tmp)
    ...     except FileNotFoundError as error:
    ...         print("missing", str(error).endswith("perturbations.pt (no such file)"))
    missing True
    """
    path = Path(path_or_dir)
    if path.is_dir():
        path = path / PERTURBATIONS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"perturbations file {str(path)} (no such file)")
    saved = read_torch_file(path)  # size-guarded, weights-only: a file holding code is refused, never run
    if not isinstance(saved, dict):
        raise ValueError(f"{str(path)} must hold a dict; got {type(saved).__name__}")
    missing = [key for key in PERTURBATION_KEYS if key not in saved]
    if missing:
        raise ValueError(f"{str(path)} is not a perturbations file of rai_probe: missing keys {missing}")
    return saved


def per_image_from_perturbations(saved: Mapping[str, Any], *, atol: float = 0.0) -> dict[str, Tensor]:
    """Recompute :func:`~rai_probe.probing.metrics.per_image_metrics` from a loaded ``perturbations.pt``.

    The budget comes from the file's ``"epsilon"`` and ``"budget_norm"``
    (files written before they were stored give ``budget_used`` NaN).

    Examples
    --------
    >>> import tempfile, torch
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     _ = save_perturbations(
    ...         tmp, images=torch.zeros(1, 1, 2, 2), xadv=torch.eye(2).view(1, 1, 2, 2),
    ...         labels=torch.tensor([0]), targets=None, clean_logits=torch.tensor([[1.0, 0.0]]),
    ...         adv_logits=torch.tensor([[0.0, 1.0]]), success=torch.tensor([True]),
    ...         first_success_step=torch.tensor([4]), loss_trace=None, class_names=None)
    ...     per_image = per_image_from_perturbations(load_perturbations(tmp))
    >>> per_image["l0_pixels"].tolist(), per_image["steps_to_success"].tolist()
    ([2], [4])
    """
    per_image = per_image_metrics(
        saved["images"],
        saved["xadv"],
        clean_logits=saved["clean_logits"],
        adv_logits=saved["adv_logits"],
        labels=saved["labels"],
        targets=saved["targets"],
        success=saved["success"],
        first_success_step=saved["first_success_step"],
        atol=atol,
        epsilon=saved.get("epsilon"),
        norm=saved.get("budget_norm"),
    )
    for group in ("quality", "minimal"):  # optional per-image values a job saved beside the tensors
        per_image.update({key: value for key, value in (saved.get(group) or {}).items() if key in OPTIONAL_KEYS})
    return per_image


# --------------------------------------------------------------------------- #
# per_image.csv
# --------------------------------------------------------------------------- #
def _csv_columns() -> list[str]:
    columns = []
    for key in PER_IMAGE_KEYS:
        columns.append(key)
        if key in _NAME_COLUMNS:
            columns.append(_NAME_COLUMNS[key])
    return columns


def _format(key: str, value: Any) -> str:
    if key in _BOOL_KEYS:
        return "true" if value else "false"
    if key in _INT_KEYS:
        return "" if key in _OPTIONAL_INT_KEYS and int(value) < 0 else str(int(value))
    value = float(value)
    return repr(value) if math.isfinite(value) else ""  # NaN: an empty cell


def write_per_image_csv(
    out_dir: str | os.PathLike,
    per_image: Mapping[str, Tensor],
    class_names: Sequence[str] | None,
    *,
    sources: Sequence[str] | None = None,
) -> Path:
    """Write ``per_image.csv``: a header and one row per image of :func:`per_image_metrics`.

    Columns are :data:`~rai_probe.probing.metrics.PER_IMAGE_KEYS` in order,
    each class-index column (``label``, ``target``, ``clean_pred``,
    ``adv_pred``) followed by its class name (``label_name`` ...). One
    missing-value convention: an empty cell, for an unknown label or target,
    a ``steps_to_success`` of an image that never succeeded (``-1`` in the
    tensors) and a NaN float. Floats are written with full precision,
    ``clean_correct`` and ``success`` as ``true`` / ``false``. With
    ``sources`` (each image's file, e.g. ``data=folder``), a last column
    ``source`` holds it.

    Examples
    --------
    >>> import tempfile, torch
    >>> from rai_probe.probing.metrics import per_image_metrics
    >>> per_image = per_image_metrics(
    ...     torch.zeros(1, 1, 1, 2), torch.ones(1, 1, 1, 2), clean_logits=torch.tensor([[1.0, 0.0]]),
    ...     adv_logits=torch.tensor([[0.0, 1.0]]), labels=torch.tensor([0]),
    ...     success=torch.tensor([True]), first_success_step=torch.tensor([2]))
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     lines = write_per_image_csv(tmp, per_image, ["cat", "dog"]).read_text().splitlines()
    >>> lines[0][:46]
    'index,label,label_name,target,target_name,clea'
    >>> lines[1][:28]
    '0,0,cat,,,0,cat,0.7310585786'
    """
    directory = _directory(out_dir, create=True)
    missing = [key for key in PER_IMAGE_KEYS if key not in per_image]
    if missing:
        raise ValueError(f"`per_image` must hold every key of per_image_metrics; missing {missing}")
    n = int(per_image["index"].numel())
    names = None
    if class_names is not None:
        names = [str(name) for name in class_names]
    columns = {key: per_image[key].detach().cpu().tolist() for key in PER_IMAGE_KEYS}
    top = max((max(columns[key], default=-1) for key in _NAME_COLUMNS), default=-1)
    if names is not None and top >= len(names):
        raise ValueError(
            f"`class_names` has {len(names)} entries but the per-image metrics use class index {top}"
        )

    def name_of(index: int) -> str:
        if index < 0:
            return ""
        return names[index] if names is not None else str(index)

    if sources is not None and (isinstance(sources, str) or len(sources) != n):
        raise ValueError(f"`sources` must hold one file name per image ({n}); got {sources!r:.80}")

    optional = [key for key in OPTIONAL_KEYS if key in per_image]
    columns.update({key: per_image[key].detach().cpu().tolist() for key in optional})

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(_csv_columns() + optional + (["source"] if sources is not None else []))
    for row in range(n):  # formatting only: one CSV line per image
        cells = []
        for key in PER_IMAGE_KEYS:
            cells.append(_format(key, columns[key][row]))
            if key in _NAME_COLUMNS:
                cells.append(name_of(int(columns[key][row])))
        cells += [_format(key, columns[key][row]) for key in optional]
        if sources is not None:
            cells.append(str(sources[row]))
        writer.writerow(cells)
    return write_atomic(directory / PER_IMAGE_FILE, buffer.getvalue())


def read_per_image_csv(path_or_dir: str | os.PathLike) -> dict[str, Tensor]:
    """Read ``per_image.csv`` back into the tensors of :func:`per_image_metrics` (name columns dropped).

    Examples
    --------
    >>> import tempfile, torch
    >>> from rai_probe.probing.metrics import per_image_metrics
    >>> per_image = per_image_metrics(
    ...     torch.zeros(2, 1, 1, 2), torch.ones(2, 1, 1, 2), clean_logits=torch.eye(2),
    ...     adv_logits=torch.eye(2), success=torch.tensor([False, True]),
    ...     first_success_step=torch.tensor([-1, 0]), epsilon=2.0, norm="l2")
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     back = read_per_image_csv(write_per_image_csv(tmp, per_image, None))
    >>> all(torch.equal(back[k], per_image[k]) for k in per_image if "conf_" not in k)
    True
    >>> back["label_conf_before"].isnan().tolist()
    [True, True]
    """
    path = Path(path_or_dir)
    if path.is_dir():
        path = path / PER_IMAGE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"per-image CSV {str(path)} (no such file)")
    with open(path, newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        rows = list(reader)
        header = reader.fieldnames or []
    missing = [key for key in PER_IMAGE_KEYS if key not in header]
    if missing:
        raise ValueError(f"{str(path)} is not a per-image CSV of rai_probe: missing columns {missing}")
    out = {}
    for key in PER_IMAGE_KEYS + tuple(key for key in OPTIONAL_KEYS if key in header):
        cells = [row[key] for row in rows]
        if key in _BOOL_KEYS:
            out[key] = torch.tensor([cell.lower() == "true" for cell in cells], dtype=torch.bool)
        elif key in _INT_KEYS:
            out[key] = torch.tensor([int(cell) if cell else -1 for cell in cells], dtype=torch.int64)
        else:
            out[key] = torch.tensor([float(cell) if cell else math.nan for cell in cells], dtype=torch.float64)
    return out


# --------------------------------------------------------------------------- #
# metrics.json, error.txt, status
# --------------------------------------------------------------------------- #
_RESERVED = ("status", "summary", "config", "overrides")


def _plain_config(config: Any) -> Any:
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf ships with hydra-core
        return config
    if isinstance(config, (DictConfig, ListConfig)):
        return OmegaConf.to_container(config, resolve=True)
    return config


def write_metrics(
    out_dir: str | os.PathLike,
    summary: Mapping[str, Any],
    *,
    config: Mapping[str, Any],
    overrides: Sequence[str],
    extra: Mapping[str, Any] | None = None,
    status: str = "complete",
) -> Path:
    """Write ``metrics.json`` atomically; write it **last**: its presence marks the job complete.

    Parameters
    ----------
    out_dir : path
        The job's output directory (created if missing).
    summary : mapping
        :func:`~rai_probe.probing.metrics.summarize` output.
    config : mapping or omegaconf.DictConfig
        The job's resolved config.
    overrides : sequence of str
        The job's command-line overrides (``"attack.epsilon=10"``).
    extra : mapping, optional
        More top-level entries (e.g. timings); keys must differ from
        ``status``, ``summary``, ``config`` and ``overrides``.
    status : {"complete", "interrupted"}, optional (default="complete")
        How the job ended.

    Returns
    -------
    Path
        ``out_dir / "metrics.json"`` holding
        ``{"status": status, "summary", "config", "overrides", **extra}``.

    Raises
    ------
    ValueError
        When the payload holds NaN or infinity (JSON has neither: use
        ``None``) or ``extra`` repeats a reserved key.
    TypeError
        When the payload is not JSON-serializable.

    Examples
    --------
    >>> import json, tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = write_metrics(tmp, {"attack_success_rate": 0.5}, config={"seed": 0},
    ...                          overrides=["attack.epsilon=10"], extra={"seconds": 1.5})
    ...     print(json.loads(path.read_text()))
    {'status': 'complete', 'summary': {'attack_success_rate': 0.5}, 'config': {'seed': 0},
     'overrides': ['attack.epsilon=10'], 'seconds': 1.5}
    """
    directory = _directory(out_dir, create=True)
    if isinstance(overrides, str) or not all(isinstance(item, str) for item in overrides):
        raise TypeError(f"`overrides` must be a list of strings; got {overrides!r}")
    if status not in ("complete", "interrupted"):
        raise ValueError(f"`status` must be 'complete' or 'interrupted'; got status={status!r}")
    payload: dict[str, Any] = {
        "status": status,
        "summary": dict(summary),
        "config": _plain_config(config),
        "overrides": list(overrides),
    }
    for key, value in (extra or {}).items():
        if key in _RESERVED:
            raise ValueError(f"`extra` must not use the reserved key {key!r} (reserved: {list(_RESERVED)})")
        payload[key] = value
    try:
        text = json.dumps(payload, indent=2, allow_nan=False)
    except ValueError as error:
        raise ValueError(
            f"metrics.json must not hold NaN or infinity (use None for a missing value): {error}"
        ) from None
    except TypeError as error:
        raise TypeError(f"metrics.json payload is not JSON-serializable: {error}") from None
    return write_atomic(directory / METRICS_FILE, text + "\n")


def read_metrics(path_or_dir: str | os.PathLike) -> dict:
    """Read a job's ``metrics.json`` (given itself or its job directory).

    Raises
    ------
    FileNotFoundError
        When the file does not exist.
    ValueError
        When it is not a JSON object.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     _ = write_metrics(tmp, {"n_images": 3}, config={}, overrides=[])
    ...     print(read_metrics(tmp)["summary"])
    {'n_images': 3}
    """
    path = Path(path_or_dir)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"metrics file {str(path)} (no such file)")
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{str(path)} is not valid JSON: {error}") from None
    if not isinstance(metrics, dict):
        raise ValueError(f"{str(path)} must hold a JSON object; got {type(metrics).__name__}")
    return metrics

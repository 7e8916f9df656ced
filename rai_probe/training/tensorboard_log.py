"""Per-epoch training scalars for TensorBoard, beside the JSON history (the optional ``tensorboard`` extra).

:class:`EpochScalars` is an ``on_epoch_end`` callback of
:func:`~rai_probe.training.adversarial_train`: it writes each epoch's record
(:func:`epoch_scalars`: training loss and accuracy, learning rate, held-out
clean and robust accuracy) to a ``SummaryWriter`` of
``torch.utils.tensorboard``, which needs the ``tensorboard`` package:
``pip install -c constraints.txt -e '.[tensorboard]'``. It is imported only
when asked for (:func:`summary_writer_class`), so nothing else needs it.

Examples
--------
>>> record = {"epoch": 2, "loss": 0.5, "adversarial_accuracy": 0.75, "lr": 1e-3, "seconds": 3.0,
...           "eval": {"n": 8, "clean_accuracy": 0.875, "robust_accuracy": {"train_attack": 0.5}}}
>>> epoch_scalars(record)
{'train/loss': 0.5, 'train/adversarial_accuracy': 0.75, 'train/lr': 0.001, 'eval/clean_accuracy': 0.875, 'eval/robust_accuracy/train_attack': 0.5}
"""

from __future__ import annotations

from typing import Any, Mapping

from ..errors import SettingError

__all__ = ["EXTRA", "summary_writer_class", "epoch_scalars", "EpochScalars"]

#: How to install what :func:`summary_writer_class` needs.
EXTRA = "pip install -c constraints.txt -e '.[tensorboard]'"

#: TensorBoard tags of the keys of an epoch record of :func:`~rai_probe.training.adversarial_train`.
_TRAIN_TAGS = {
    "loss": "train/loss",
    "adversarial_accuracy": "train/adversarial_accuracy",
    "train_accuracy": "train/accuracy",
    "lr": "train/lr",
}


def summary_writer_class() -> type:
    """``torch.utils.tensorboard.SummaryWriter``, imported now.

    Raises
    ------
    SettingError
        The ``tensorboard`` package is not installed (``setting`` is
        ``"tensorboard"``); the message says how to install the extra.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise SettingError(
            f"TensorBoard logs need the optional `tensorboard` package ({error}): install the extra with "
            f"`{EXTRA}`",
            setting="tensorboard",
            value=True,
        ) from None
    return SummaryWriter


def epoch_scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The scalars of one epoch record, by TensorBoard tag.

    ``train/loss``, ``train/adversarial_accuracy`` (adversarial training) or
    ``train/accuracy`` (clean training), ``train/lr``; with a held-out
    check that epoch, ``eval/clean_accuracy`` and
    ``eval/robust_accuracy/<attack>`` for each attack.
    """
    scalars = {tag: float(record[key]) for key, tag in _TRAIN_TAGS.items() if key in record}
    held_out = record.get("eval")
    if held_out:
        scalars["eval/clean_accuracy"] = float(held_out["clean_accuracy"])
        for name, value in held_out.get("robust_accuracy", {}).items():
            scalars[f"eval/robust_accuracy/{name}"] = float(value)
    return scalars


class EpochScalars:
    """An ``on_epoch_end`` callback writing each epoch's :func:`epoch_scalars` at step ``epoch``.

    Parameters
    ----------
    writer
        A ``SummaryWriter`` (or anything with ``add_scalar(tag, value,
        step)``, ``flush()`` and ``close()``). Flushed after every epoch, so
        a running TensorBoard shows the epoch at once.

    Examples
    --------
    >>> class Writer:
    ...     def __init__(self): self.rows = []
    ...     def add_scalar(self, tag, value, step): self.rows.append((step, tag, value))
    ...     def flush(self): pass
    ...     def close(self): pass
    >>> log = EpochScalars(Writer())
    >>> log({"epoch": 1, "loss": 2.0, "train_accuracy": 0.25, "lr": 0.1, "seconds": 1.0})
    >>> log.writer.rows
    [(1, 'train/loss', 2.0), (1, 'train/accuracy', 0.25), (1, 'train/lr', 0.1)]
    """

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    def __call__(self, record: Mapping[str, Any]) -> None:
        for tag, value in epoch_scalars(record).items():
            self.writer.add_scalar(tag, value, record["epoch"])
        self.writer.flush()

    def close(self) -> None:
        """Close the writer (its files are complete)."""
        self.writer.close()

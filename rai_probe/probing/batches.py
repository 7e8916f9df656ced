"""Batches of a probe job: which ones a shard attacks, the seed of each, and their durable records (resume).

A job attacks its planned rows in batches of ``batch_size``, numbered
globally (batch ``b`` holds rows ``b * batch_size`` to
``(b + 1) * batch_size - 1`` of the whole plan). Everything random about a
batch comes from its own generator, seeded by the job's ``seed`` and the
batch's global number (:func:`batch_seed`), so a batch's result does not
depend on which other batches ran before it in the same process. Hence:

* **shards** (``data.shard=I data.num_shards=N``) take disjoint, contiguous
  ranges of whole batches (:func:`shard_batches`): their results, put back
  in shard order, are the unsharded job's, exactly;
* **resume** (``resume=true``): every finished batch is written to
  ``batches/batch_<b>.pt`` atomically (:class:`BatchRecords`); a rerun in the
  same directory reloads the batches whose records match its configuration
  and attacks only the rest, ending with the outputs an uninterrupted run
  writes. The records are removed once the job is complete.

Examples
--------
>>> shard_batches(10, 3, 0), shard_batches(10, 3, 1), shard_batches(10, 3, 2)
(range(0, 3), range(3, 6), range(6, 10))
>>> batch_seed(0, 5) == batch_seed(0, 5) != batch_seed(1, 5)
True
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

from .._io import write_atomic

__all__ = ["shard_batches", "batch_seed", "BatchResult", "BatchRecords", "config_fingerprint", "BATCHES_DIR"]

log = logging.getLogger("rai_probe.probing.run")

#: The folder of a job's per-batch records.
BATCHES_DIR = "batches"

#: Settings that do not change what a job computes (left out of its fingerprint).
_NOT_COMPUTED = ("resume", "progress", "threads", "figures")


def shard_batches(batches: int, num_shards: int, shard: int) -> range:
    """The global batch numbers shard ``shard`` of ``num_shards`` attacks: a contiguous, disjoint range.

    The ranges of shards ``0 .. num_shards - 1`` cover ``range(batches)`` in
    order, their sizes differing by at most one (a shard may be empty when
    there are fewer batches than shards).
    """
    start = shard * batches // num_shards
    stop = (shard + 1) * batches // num_shards
    return range(start, stop)


def batch_seed(seed: int, batch: int) -> int:
    """The seed of global batch ``batch`` of a job seeded ``seed`` (well mixed, 63 bits)."""
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF, batch]).generate_state(2)
    return int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)


def config_fingerprint(cfg: Mapping[str, Any]) -> str:
    """A digest of the settings that decide a job's results (not ``resume``, ``progress``, ``threads``, ``figures``).

    Examples
    --------
    >>> a = config_fingerprint({"seed": 0, "progress": True, "attack": {"epsilon": 1.0}})
    >>> a == config_fingerprint({"seed": 0, "progress": False, "attack": {"epsilon": 1.0}})
    True
    >>> a == config_fingerprint({"seed": 1, "progress": True, "attack": {"epsilon": 1.0}})
    False
    """
    relevant = {key: value for key, value in cfg.items() if key not in _NOT_COMPUTED}
    text = json.dumps(relevant, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class BatchResult:
    """What the attack gave for one batch, on the CPU."""

    xadv: Tensor
    logits: Tensor
    success: Tensor
    first_success: Tensor
    loss_trace: Tensor
    datum_trace: Tensor | None
    extra: dict[str, Tensor] | None = None  # per-row values a mode adds (mode=minimal: ε*, steps, ...)

    _KEYS = ("xadv", "logits", "success", "first_success", "loss_trace", "datum_trace", "extra")

    def to_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self._KEYS}


class BatchRecords:
    """The durable records of a job's finished batches, in ``out_dir/batches/``.

    Parameters
    ----------
    out_dir : path
        The job's run directory.
    fingerprint : str
        :func:`config_fingerprint` of the job: a record made under another
        configuration is never reused.
    resume : bool
        ``False`` removes every record first (a fresh run).
    """

    def __init__(self, out_dir: str | os.PathLike, fingerprint: str, *, resume: bool) -> None:
        self.folder = Path(out_dir) / BATCHES_DIR
        self.fingerprint = fingerprint
        if not resume:
            self.clear()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.reused = 0

    def _path(self, batch: int) -> Path:
        return self.folder / f"batch_{batch:06d}.pt"

    def load(self, batch: int) -> BatchResult | None:
        """The record of global batch ``batch``, or None (none, another configuration, unreadable)."""
        from ..models import read_torch_file

        path = self._path(batch)
        if not path.is_file():
            return None
        try:
            saved = read_torch_file(path)
        except (OSError, ValueError) as error:
            log.warning("resume: ignoring the unreadable record %s (%s)", path, error)
            return None
        if not isinstance(saved, dict) or saved.get("fingerprint") != self.fingerprint:
            log.warning("resume: %s was made under another configuration; attacking that batch again", path)
            return None
        self.reused += 1
        return BatchResult(**{key: saved.get(key) for key in BatchResult._KEYS})

    def save(self, batch: int, result: BatchResult) -> None:
        """Write the record of global batch ``batch`` atomically (a crash leaves the old one or none)."""
        payload = {"fingerprint": self.fingerprint, **result.to_dict()}
        write_atomic(self._path(batch), save=lambda file: torch.save(payload, file))

    def clear(self) -> None:
        """Remove every record (done once the job is complete, or when a run starts afresh)."""
        shutil.rmtree(self.folder, ignore_errors=True)

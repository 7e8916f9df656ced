"""Where a job runs: its device and its CPU threads, checked once for every entry point."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["select_device", "set_threads"]


def select_device(name: Any) -> torch.device:
    """The torch device ``name`` names, checked to exist on this machine.

    Examples
    --------
    >>> select_device("cpu")
    device(type='cpu')
    >>> select_device("gpu")
    Traceback (most recent call last):
    ...
    ValueError: `device`='gpu' is not a device name (e.g. cpu, cuda, cuda:1)
    """
    try:
        device = torch.device(str(name))
    except RuntimeError:
        raise ValueError(f"`device`={name!r} is not a device name (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"`device`={name} but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"`device`={name} but this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    return device


def set_threads(threads: Any) -> None:
    """Set torch's CPU threads; ``None`` keeps torch's default.

    Examples
    --------
    >>> set_threads(None)
    >>> set_threads(0)
    Traceback (most recent call last):
    ...
    ValueError: `threads` must be None or an integer >= 1; got threads=0
    """
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"`threads` must be None or an integer >= 1; got threads={threads!r}")
    torch.set_num_threads(threads)

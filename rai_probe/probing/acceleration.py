"""Running the classifier faster: mixed precision (``precision=bf16|fp16``) and ``torch.compile`` (``compile=true``).

:func:`accelerated` wraps a classifier for the attack: under
``precision=bf16`` or ``fp16`` its forward (and so its backward) runs inside
:func:`torch.autocast` and its logits come back as float32, so the
perturbation, the optimizer's projections and every metric stay in float32;
with ``compile=true`` the classifier is compiled once by :func:`torch.compile`
and reused by every batch, falling back to eager mode with one warning where
compilation fails (no compiler, an unsupported model).

Examples
--------
>>> import torch
>>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
>>> fast = accelerated(net, precision="bf16", compile=False, device=torch.device("cpu"))
>>> x = torch.rand(2, 1, 2, 2, requires_grad=True)
>>> logits = fast(x)
>>> logits.dtype, x.dtype                      # float32 out, float32 perturbation in
(torch.float32, torch.float32)
>>> logits.sum().backward(); x.grad.dtype
torch.float32
"""

from __future__ import annotations

import logging
import warnings

import torch
from torch import Tensor, nn

__all__ = ["PRECISIONS", "AutocastClassifier", "accelerated"]

log = logging.getLogger("rai_probe.probing.run")

#: ``precision`` settings and the autocast dtype of each (None: no autocast).
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class AutocastClassifier(nn.Module):
    """``model`` run under :func:`torch.autocast` (``dtype`` on ``device_type``), its outputs cast to float32.

    The wrapped model's parameters stay as they are (float32); autocast
    runs the matrix products and convolutions in ``dtype``. Gradients with
    respect to the inputs arrive in the inputs' dtype.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype, device_type: str) -> None:
        super().__init__()
        self.model = model
        self.dtype = dtype
        self.device_type = device_type

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(device_type=self.device_type, dtype=self.dtype):
            out = self.model(x)
        return out.float()


def _compiled(model: nn.Module, example: Tensor | None) -> nn.Module:
    """``torch.compile(model)``, checked by one forward and backward; eager ``model`` (one warning) if that fails."""
    try:
        compiled = torch.compile(model)
        if example is not None:
            probe = example.detach().clone().requires_grad_(True)
            compiled(probe).float().sum().backward()
            for param in model.parameters():  # the check leaves no gradient behind
                param.grad = None
        return compiled
    except Exception as error:  # no C++ compiler, an op inductor cannot lower, ...
        warnings.warn(
            f"compile=true: torch.compile failed ({type(error).__name__}: {str(error).splitlines()[0][:200]}); "
            "running the model eagerly",
            RuntimeWarning,
            stacklevel=2,
        )
        return model


def accelerated(
    model: nn.Module,
    *,
    precision: str = "fp32",
    compile: bool = False,
    device: torch.device,
    example: Tensor | None = None,
) -> nn.Module:
    """``model`` for the attack: under autocast for ``bf16``/``fp16``, compiled with ``compile=True``.

    Parameters
    ----------
    model : nn.Module
        The classifier (its ``info`` and weights are untouched).
    precision : {"fp32", "bf16", "fp16"}
        ``fp32`` returns ``model`` itself (unless compiled).
    compile : bool
        Compile once with :func:`torch.compile`; checked on ``example`` (a
        small input batch) so a failure falls back to eager mode at once.
    device : torch.device
        Where the model runs (the autocast device type).
    example : Tensor, optional
        An input batch for the compile check.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"`precision` must be one of {', '.join(PRECISIONS)}; got precision={precision!r}")
    wrapped = model
    dtype = PRECISIONS[precision]
    if dtype is not None:
        wrapped = AutocastClassifier(model, dtype, device.type)
    if compile:
        wrapped = _compiled(wrapped, example)
    return wrapped

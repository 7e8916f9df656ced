"""Running the classifier faster: mixed precision (``precision=bf16|fp16``) and ``torch.compile`` (``compile=true``).

:func:`accelerated` wraps a classifier for the attack: under
``precision=bf16`` or ``fp16`` its forward (and so its backward) runs inside
:func:`torch.autocast` and its logits come back as float32, so the
perturbation, the optimizer's projections and every metric stay in float32;
with ``compile=true`` the classifier is compiled once by :func:`torch.compile`
and reused by every batch, falling back to eager mode with one warning where
compilation fails (no compiler, an unsupported model).

float16 has 5 exponent bits: a gradient below about 6e-8 is zero in it. The
cross-entropy gradient of an image the model is sure of is ``1 - p``, often
far below that on a robust model, so under plain fp16 autocast its input
gradient underflows to exactly zero and the attack never moves it (a silent
failure). ``precision=fp16`` therefore scales each row's gradient on its way
back (:class:`RowGradientScaling`): at the logits by a power of two that
brings the row's largest entry to :data:`GRADIENT_PEAK`, and at the input
back by the same power, so the input gradient is the true one, without the
underflow (powers of two scale float values exactly). bfloat16 has float32's
exponent range and needs no scaling.

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

A confident row's gradient survives fp16 (plain fp16 autocast gives zeros):

>>> lin = torch.nn.Linear(1, 2, bias=False)
>>> with torch.no_grad():
...     _ = lin.weight.copy_(torch.tensor([[16.0], [8.0]]))
>>> x = torch.full((1, 1), 4.0, requires_grad=True)        # logits 64 and 32: p_1 = exp(-32)
>>> fp16 = accelerated(lin, precision="fp16", device=torch.device("cpu"))
>>> torch.nn.functional.cross_entropy(fp16(x), torch.tensor([0])).backward()
>>> bool(torch.isclose(x.grad, 8 * torch.exp(torch.tensor(-32.0)), rtol=1e-2, atol=0))   # 8 p_1, about 1e-13
True
"""

from __future__ import annotations

import logging
import warnings

import torch
from torch import Tensor, nn

__all__ = ["PRECISIONS", "GRADIENT_PEAK", "AutocastClassifier", "RowGradientScaling", "accelerated"]

log = logging.getLogger("rai_probe.probing.run")

#: ``precision`` settings and the autocast dtype of each (None: no autocast).
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

#: Under ``precision=fp16`` each row's logit gradient is scaled so that its largest entry lies in
#: ``(GRADIENT_PEAK / 2, GRADIENT_PEAK]``: far above float16's underflow (6e-8), and 2**8 below its
#: largest value (65504) for the growth of the gradient through the layers.
GRADIENT_PEAK = 2.0**8


class _Scales:
    """The per-row scales of one forward call, from the logits' backward to the input's."""

    value: Tensor | None = None


def _row_shape(scale: Tensor, like: Tensor) -> Tensor:
    return scale.reshape(-1, *([1] * (like.dim() - 1)))


class _RowScaled(torch.autograd.Function):
    """Identity forward that keeps the call's :class:`_Scales`; the subclasses' backward scales or unscales."""

    @staticmethod
    def forward(ctx, tensor: Tensor, scales: _Scales) -> Tensor:
        ctx.scales = scales
        return tensor.view_as(tensor)


class _ScaleLogitGradients(_RowScaled):
    """Backward multiplies each row's gradient by a power of two, kept in ``scales``."""

    @staticmethod
    def backward(ctx, grad: Tensor):
        peak = grad.detach().abs().flatten(1).amax(dim=1).float()
        usable = torch.isfinite(peak) & (peak > 0)
        exponent = torch.floor(torch.log2(GRADIENT_PEAK / torch.where(usable, peak, torch.ones_like(peak))))
        exponent = exponent.clamp(-126.0, 126.0)  # 2**exponent stays a finite, normal float32
        scale = torch.where(usable, torch.exp2(exponent), torch.ones_like(peak))
        ctx.scales.value = scale
        return grad * _row_shape(scale, grad).to(grad.dtype), None


class _UnscaleInputGradients(_RowScaled):
    """Backward divides each row's gradient by the scale its logits' gradient got."""

    @staticmethod
    def backward(ctx, grad: Tensor):
        scale = ctx.scales.value
        if scale is None or scale.numel() != grad.shape[0]:  # the logits took no gradient of this call's rows
            return grad, None
        return grad / _row_shape(scale, grad).to(grad.dtype), None


class RowGradientScaling(nn.Module):
    """``model`` whose backward runs on per-row power-of-two scaled gradients, unscaled again at its input.

    The input gradient equals the unscaled one (a power of two scales float
    values exactly) except that nothing underflows inside ``model``: what
    ``precision=fp16`` needs. Rows must not interact (a classifier in eval
    mode), since each row is scaled by its own factor.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        if not torch.is_grad_enabled():
            return self.model(x)
        scales = _Scales()
        return _ScaleLogitGradients.apply(self.model(_UnscaleInputGradients.apply(x, scales)), scales)


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
    if dtype == torch.float16:  # outside the compiled part: a plain autograd wrapper
        wrapped = RowGradientScaling(wrapped)
    return wrapped

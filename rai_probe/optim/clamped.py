"""Optimizers that clamp gradients or parameters elementwise."""

from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor
from torch.optim import SGD

from ..errors import SettingError, SettingTypeError
from . import options as opt
from .param_transforming import ParamTransformingOptimizer
from .types import InnerOptimizer, Params

__all__ = ["ClampedGradientOptimizer", "ClampedParameterOptimizer"]


class _ClampingOptimizer(ParamTransformingOptimizer):
    """Shared options and checks: ``clamp_min <= clamp_max``, at least one given."""

    _options = {"clamp_min": opt.lower_bound, "clamp_max": opt.upper_bound}

    def __init__(
        self,
        params: Params,
        InnerOpt: InnerOptimizer = SGD,
        *,
        clamp_min: float | None = None,
        clamp_max: float | None = None,
        param_ndim: int | None = -1,
        grad_scale: float = 1.0,
        grad_bias: float = 0.0,
        defaults: Mapping[str, Any] | None = None,
        **inner_opt_kwargs: Any,
    ) -> None:
        super().__init__(
            params,
            InnerOpt,
            param_ndim=param_ndim,
            grad_scale=grad_scale,
            grad_bias=grad_bias,
            defaults=opt.fill_defaults(defaults, clamp_min=clamp_min, clamp_max=clamp_max),
            **inner_opt_kwargs,
        )

    def _prepare_group(self, group: dict[str, Any], where: str) -> None:
        super()._prepare_group(group, where)
        low, high = group["clamp_min"], group["clamp_max"]
        if low is None and high is None:
            raise SettingTypeError(
                f"{where}: missing required option: give `clamp_min`, `clamp_max` or both",
                setting="clamp_min",
            )
        if low is not None and high is not None and low > high:
            raise SettingError(
                f"{where}: options must satisfy clamp_min <= clamp_max; "
                f"got clamp_min={low!r}, clamp_max={high!r}",
                setting="clamp_min",
                value=low,
            )

    @staticmethod
    def _clamp_(t: Tensor, group: dict[str, Any]) -> None:
        t.clamp_(min=group["clamp_min"], max=group["clamp_max"])


class ClampedGradientOptimizer(_ClampingOptimizer):
    """Clamps each gradient elementwise to ``[clamp_min, clamp_max]``, then steps ``InnerOpt``.

    Parameters
    ----------
    params, InnerOpt, param_ndim, grad_scale, grad_bias, defaults, **inner_opt_kwargs
        See :class:`~rai_probe.optim.ParamTransformingOptimizer`.
    clamp_min, clamp_max : float or None
        Bounds (``None``: unbounded on that side); at least one is required
        and ``clamp_min <= clamp_max``. Per group.

    Examples
    --------
    >>> import torch as tr
    >>> from rai_probe.optim import ClampedGradientOptimizer
    >>> x = tr.ones(2, requires_grad=True)
    >>> optim = ClampedGradientOptimizer([x], clamp_min=-1.0, clamp_max=3.0, lr=1.0)
    >>> x.backward(gradient=tr.tensor([-0.5, 10.0]))
    >>> optim.step()
    >>> x.grad
    tensor([-0.5000,  3.0000])
    >>> x
    tensor([ 1.5000, -2.0000], requires_grad=True)
    """

    def _pre_step_transform_(self, param: Tensor, optim_group: dict[str, Any]) -> None:
        self._clamp_(param.grad, optim_group)


class ClampedParameterOptimizer(_ClampingOptimizer):
    """Steps ``InnerOpt``, then clamps each parameter elementwise to ``[clamp_min, clamp_max]``.

    Keeps an input perturbation, or an image, inside a box (e.g. ``[0, 1]``).

    Parameters
    ----------
    params, InnerOpt, param_ndim, grad_scale, grad_bias, defaults, **inner_opt_kwargs
        See :class:`~rai_probe.optim.ParamTransformingOptimizer`.
    clamp_min, clamp_max : float or None
        Bounds (``None``: unbounded on that side); at least one is required
        and ``clamp_min <= clamp_max``. Per group.

    Examples
    --------
    >>> import torch as tr
    >>> from rai_probe.optim import ClampedParameterOptimizer
    >>> x = tr.ones(2, requires_grad=True)
    >>> optim = ClampedParameterOptimizer([x], clamp_min=-1.0, clamp_max=3.0, lr=1.0)
    >>> x.backward(gradient=tr.tensor([0.5, -10.0]))
    >>> optim.step()
    >>> x
    tensor([0.5000, 3.0000], requires_grad=True)
    """

    def _post_step_transform_(self, param: Tensor, optim_group: dict[str, Any]) -> None:
        self._clamp_(param, optim_group)

"""Projected-gradient optimizers: a normed step, then a projection onto an ε-ball."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor
from torch.optim import SGD

from . import options as opt
from . import functional as F
from .constraints import BallConstrained, bound_rows
from .options import REQUIRED, TINY
from .normed import L1qNormedGradientOptim, L2NormedGradientOptim, SignedGradientOptim
from .types import InnerOptimizer, Params

__all__ = ["L1ProjectedOptim", "L2ProjectedOptim", "LinfProjectedOptim"]


def _clamp_to_box_(param: Tensor, group: dict[str, Any]) -> None:
    if group["bounds"] is not None:
        lower, upper = (bound_rows(b, param) for b in group["bounds"])
        torch.clamp(param, lower, upper, out=param)


class L2ProjectedOptim(BallConstrained, L2NormedGradientOptim):
    """L2-normalized gradient step, then projection onto the L2 ε-ball (PGD-L2).

    After the inner step, each row with ``‖p‖₂ > ε`` is rescaled onto the
    ε-sphere; rows inside the ball are untouched.

    Parameters
    ----------
    params, InnerOpt, param_ndim, grad_scale, grad_bias, defaults, **inner_opt_kwargs
        See :class:`~rai_probe.optim.ParamTransformingOptimizer`.
    epsilon : float or Tensor, shape-(N,)
        Radius of the ball, > 0: one for all rows, or one per row (per datum
        with the default ``param_ndim=-1``). Required. Per group.
    bounds : (lower, upper), optional
        A box containing 0 that the parameter must also stay in (numbers, or
        tensors shaped like the parameter), e.g. ``(0 - x, 1 - x)`` for a
        perturbation of a valid image ``x``. Per group.
    div_by_zero_eps : float, optional (default=float32 tiny)
        Lower bound on the gradient norm. Per group.

    Examples
    --------
    >>> import torch as tr
    >>> from rai_probe.optim import L2ProjectedOptim
    >>> x = tr.tensor([-1.0, 1.0], requires_grad=True)
    >>> optim = L2ProjectedOptim([x], epsilon=0.8, param_ndim=None, lr=1.0)
    >>> x.backward(gradient=tr.tensor([2.0, 2.0]))
    >>> optim.step()
    >>> x
    tensor([-0.7885,  0.1353], requires_grad=True)
    """

    def __init__(
        self,
        params: Params,
        InnerOpt: InnerOptimizer = SGD,
        *,
        epsilon: float | Tensor = REQUIRED,  # type: ignore[assignment]
        bounds: tuple[float | Tensor, float | Tensor] | None = None,
        param_ndim: int | None = -1,
        grad_scale: float = 1.0,
        grad_bias: float = 0.0,
        defaults: Mapping[str, Any] | None = None,
        div_by_zero_eps: float = TINY,
        **inner_opt_kwargs: Any,
    ) -> None:
        super().__init__(
            params,
            InnerOpt,
            param_ndim=param_ndim,
            grad_scale=grad_scale,
            grad_bias=grad_bias,
            defaults=opt.fill_defaults(defaults, epsilon=epsilon, bounds=bounds),
            div_by_zero_eps=div_by_zero_eps,
            **inner_opt_kwargs,
        )

    def _post_step_transform_(self, param: Tensor, optim_group: dict[str, Any]) -> None:
        F.project_l2_ball_(param, optim_group["epsilon"])
        _clamp_to_box_(param, optim_group)  # moves entries toward 0: stays in the ball


class LinfProjectedOptim(BallConstrained, SignedGradientOptim):
    """Signed gradient step, then clamping to the L∞ ε-ball ``[-ε, ε]`` (PGD-L∞).

    Parameters
    ----------
    params, InnerOpt, param_ndim, grad_scale, grad_bias, defaults, **inner_opt_kwargs
        See :class:`~rai_probe.optim.ParamTransformingOptimizer`.
    epsilon : float or Tensor, shape-(N,)
        Radius of the ball, > 0: one for all rows, or one per row (per datum
        with the default ``param_ndim=-1``). Required. Per group.
    bounds : (lower, upper), optional
        A box containing 0 that the parameter must also stay in (numbers, or
        tensors shaped like the parameter), e.g. ``(0 - x, 1 - x)`` for a
        perturbation of a valid image ``x``. Per group.

    Examples
    --------
    >>> import torch as tr
    >>> from rai_probe.optim import LinfProjectedOptim
    >>> x = tr.tensor([-1.0, 0.5], requires_grad=True)
    >>> optim = LinfProjectedOptim([x], epsilon=1.8, param_ndim=None, lr=1.0)
    >>> x.backward(gradient=tr.tensor([2.0, -2.0]))
    >>> optim.step()
    >>> x
    tensor([-1.8000,  1.5000], requires_grad=True)
    """

    def __init__(
        self,
        params: Params,
        InnerOpt: InnerOptimizer = SGD,
        *,
        epsilon: float | Tensor = REQUIRED,  # type: ignore[assignment]
        bounds: tuple[float | Tensor, float | Tensor] | None = None,
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
            defaults=opt.fill_defaults(defaults, epsilon=epsilon, bounds=bounds),
            **inner_opt_kwargs,
        )

    def _post_step_transform_(self, param: Tensor, optim_group: dict[str, Any]) -> None:
        F.project_linf_ball_(param, optim_group["epsilon"])
        _clamp_to_box_(param, optim_group)  # exact: the intersection is a box


class L1ProjectedOptim(BallConstrained, L1qNormedGradientOptim):
    """Sparse L1q gradient step, then exact projection onto the L1 ε-ball (SLIDE-style PGD-L1).

    The pre-step is that of :class:`L1qNormedGradientOptim` (the top
    ``(1 - q)`` fraction of signs, L1-normalized); after the inner step each
    row is projected exactly (Euclidean) onto ``{‖p‖₁ <= ε}`` with the
    sort-based algorithm of Duchi et al. (2008), vectorized over rows. With
    ``grad_scale`` as the step size this is SLIDE (Tramèr & Boneh, 2019).

    Parameters
    ----------
    params, InnerOpt, param_ndim, grad_scale, grad_bias, defaults, **inner_opt_kwargs
        See :class:`~rai_probe.optim.ParamTransformingOptimizer`.
    epsilon : float or Tensor, shape-(N,)
        Radius of the L1 ball, > 0: one for all rows, or one per row (per datum
        with the default ``param_ndim=-1``). Required. Per group.
    bounds : (lower, upper), optional
        A box containing 0 that the parameter must also stay in (numbers, or
        tensors shaped like the parameter; the projection onto the ball
        intersected with the box is exact), e.g. ``(0 - x, 1 - x)`` for a
        perturbation of a valid image ``x``. With a box, the top ``k`` are
        chosen among the entries that the step can still move inside it
        (:func:`~rai_probe.optim.functional.movable_entries`): an entry at
        the box on the side the step pushes it to is skipped, so no part of
        the step is lost to the projection (Croce & Hein, 2021). Per group.
    q, dq, div_by_zero_eps, generator
        See :class:`L1qNormedGradientOptim`; ``q`` is required.

    Examples
    --------
    >>> import torch as tr
    >>> from rai_probe.optim import L1ProjectedOptim
    >>> x = tr.tensor([1.0, 0.0, 0.0], requires_grad=True)
    >>> optim = L1ProjectedOptim([x], epsilon=1.0, q=0.5, grad_scale=2.0, param_ndim=None, lr=1.0)
    >>> x.backward(gradient=tr.tensor([0.1, -3.0, 2.0]))
    >>> optim.step()  # step to [1, 1, -1], then project onto the unit L1 ball
    >>> x
    tensor([ 0.3333,  0.3333, -0.3333], requires_grad=True)
    """

    def __init__(
        self,
        params: Params,
        InnerOpt: InnerOptimizer = SGD,
        *,
        epsilon: float | Tensor = REQUIRED,  # type: ignore[assignment]
        bounds: tuple[float | Tensor, float | Tensor] | None = None,
        q: float = REQUIRED,  # type: ignore[assignment]
        dq: float = 0.0,
        param_ndim: int | None = -1,
        grad_scale: float = 1.0,
        grad_bias: float = 0.0,
        defaults: Mapping[str, Any] | None = None,
        div_by_zero_eps: float = TINY,
        generator: torch.Generator = torch.default_generator,
        **inner_opt_kwargs: Any,
    ) -> None:
        super().__init__(
            params,
            InnerOpt,
            q=q,
            dq=dq,
            param_ndim=param_ndim,
            grad_scale=grad_scale,
            grad_bias=grad_bias,
            defaults=opt.fill_defaults(defaults, epsilon=epsilon, bounds=bounds),
            div_by_zero_eps=div_by_zero_eps,
            generator=generator,
            **inner_opt_kwargs,
        )

    def _pre_step_transform_(self, param: Tensor, optim_group: dict[str, Any]) -> None:
        if optim_group["bounds"] is not None:  # choose the top k among entries that can still move
            lower, upper = (bound_rows(b, param) for b in optim_group["bounds"])
            descent = param.grad if optim_group["grad_scale"] >= 0 else -param.grad
            param.grad.masked_fill_(~F.movable_entries(param, descent, lower, upper), 0.0)
        super()._pre_step_transform_(param, optim_group)

    def _post_step_transform_(self, param: Tensor, optim_group: dict[str, Any]) -> None:
        if optim_group["bounds"] is None:
            F.project_l1_ball_(param, optim_group["epsilon"])
        else:
            lower, upper = (bound_rows(b, param) for b in optim_group["bounds"])
            F.project_l1_ball_box_(param, optim_group["epsilon"], lower, upper)

"""Gradient-transforming optimizers: signed, Lp-normed, top-q and L1q-sparse gradients."""

from __future__ import annotations

import math
import warnings
from typing import Any, ClassVar, Mapping

import torch
from torch import Tensor
from torch.optim import SGD

from . import options as opt
from . import functional as F
from .options import REQUIRED, TINY
from .param_transforming import ParamTransformingOptimizer
from .types import InnerOptimizer, Params

__all__ = [
    "SignedGradientOptim",
    "L1NormedGradientOptim",
    "L2NormedGradientOptim",
    "LinfNormedGradientOptim",
    "TopQGradientOptimizer",
    "L1qNormedGradientOptim",
]

#: Options shared by every optimizer that sparsifies with top-q.
TOPQ_OPTIONS: dict[str, opt.OptionCheck] = {
    "q": opt.unit_interval,
    "dq": opt.unit_interval,
    "generator": opt.generator,
}


def warn_if_nothing_kept(optimizer: Any, rows: Tensor, group: Mapping[str, Any]) -> None:
    """Warn, once per optimizer instance, when ``q`` keeps 0 entries of every row of ``rows``.

    A row of ``n`` entries keeps ``round((1 - q) n)``; when that is 0 (for
    every ``q`` that ``dq`` may draw), every sparsified gradient is zero and
    the optimizer silently does nothing. Host-side arithmetic on the shape and
    the options only: no device sync.
    """
    if optimizer.__dict__.get("_warned_nothing_kept", False):
        return
    n = math.prod(rows.shape[1:])
    q, dq = group["q"], group["dq"]
    if rows.shape[0] == 0 or n == 0 or F.num_kept(n, max(0.0, q - dq)) > 0:
        return
    optimizer.__dict__["_warned_nothing_kept"] = True
    drawn = f" (dq={dq}: q is drawn from [{max(0.0, q - dq):.6g}, {min(1.0, q + dq):.6g}])" if dq else ""
    warnings.warn(
        f"{type(optimizer).__name__}: q={q}{drawn} keeps round((1 - q) * {n}) = 0 of the {n} "
        f"entries of each row, so every sparsified gradient is zero and the step does "
        f"nothing; use q < 1 - 0.5/{n} = {1 - 0.5 / n:.6g} to keep at least one entry",
        UserWarning,
        stacklevel=2,
    )


class SignedGradientOptim(ParamTransformingOptimizer):
    """Replaces each gradient by its elementwise sign (±1, 0 for 0), then steps ``InnerOpt``.

    The steepest-ascent direction for the L∞ norm (the FGSM / PGD-L∞ step).
    Acts elementwise, so ``param_ndim`` does not change the result.

    Parameters
    ----------
    params, InnerOpt, param_ndim, grad_scale, grad_bias, defaults, **inner_opt_kwargs
        See :class:`~rai_probe.optim.ParamTransformingOptimizer`.

    Examples
    --------
    >>> import torch as tr
    >>> from rai_probe.optim import SignedGradientOptim
    >>> x = tr.tensor([-1.5, 1.5], requires_grad=True)
    >>> optim = SignedGradientOptim([x], lr=1.0, param_ndim=None)
    >>> x.backward(gradient=tr.tensor([-2.0, 20.0]))
    >>> optim.step()
    >>> x.grad
    tensor([-1.,  1.])
    >>> x
    tensor([-0.5000,  0.5000], requires_grad=True)
    """

    def _pre_step_transform_(self, param: Tensor, optim_group: dict[str, Any]) -> None:
        F.lmo_linf_(param.grad)


class _NormedGradientOptim(ParamTransformingOptimizer):
    """Divides each gradient row by ``max(‖row‖_p, div_by_zero_eps)``."""

    _p: ClassVar[float]
    _options = {"div_by_zero_eps": opt.positive}

    def __init__(
        self,
        params: Params,
        InnerOpt: InnerOptimizer = SGD,
        *,
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
            defaults=opt.fill_defaults(defaults, div_by_zero_eps=div_by_zero_eps),
            **inner_opt_kwargs,
        )

    def _pre_step_transform_(self, param: Tensor, optim_group: dict[str, Any]) -> None:
        F.normalize_(param.grad, self._p, optim_group["div_by_zero_eps"])


class L1NormedGradientOptim(_NormedGradientOptim):
    """Normalizes each gradient row to unit L1 norm, then steps ``InnerOpt``.

    Parameters
    ----------
    params, InnerOpt, param_ndim, grad_scale, grad_bias, defaults, **inner_opt_kwargs
        See :class:`~rai_probe.optim.ParamTransformingOptimizer`.
    div_by_zero_eps : float, optional (default=float32 tiny)
        Lower bound on the norm, so a zero gradient stays zero. Per group.

    Examples
    --------
    >>> import torch as tr
    >>> from rai_probe.optim import L1NormedGradientOptim
    >>> x = tr.tensor([-1.0, 1.0], requires_grad=True)
    >>> optim = L1NormedGradientOptim([x], param_ndim=None, lr=1.0)
    >>> x.backward(gradient=tr.tensor([2.0, 2.0]))
    >>> optim.step()
    >>> x.grad
    tensor([0.5000, 0.5000])
    >>> x
    tensor([-1.5000,  0.5000], requires_grad=True)
    """

    _p = 1.0


class L2NormedGradientOptim(_NormedGradientOptim):
    """Normalizes each gradient row to unit L2 norm, then steps ``InnerOpt``.

    Parameters
    ----------
    params, InnerOpt, param_ndim, grad_scale, grad_bias, defaults, **inner_opt_kwargs
        See :class:`~rai_probe.optim.ParamTransformingOptimizer`.
    div_by_zero_eps : float, optional (default=float32 tiny)
        Lower bound on the norm, so a zero gradient stays zero. Per group.

    Examples
    --------
    >>> import torch as tr
    >>> from rai_probe.optim import L2NormedGradientOptim
    >>> x = tr.tensor([-1.0, 1.0], requires_grad=True)
    >>> optim = L2NormedGradientOptim([x], param_ndim=None, InnerOpt=tr.optim.SGD, lr=1.0)
    >>> (tr.tensor([2.0, 2.0]) * x).sum().backward()
    >>> optim.step()
    >>> x.grad
    tensor([0.7071, 0.7071])
    >>> x
    tensor([-1.7071,  0.2929], requires_grad=True)
    """

    _p = 2.0


class LinfNormedGradientOptim(_NormedGradientOptim):
    """Divides each gradient row by its largest magnitude, then steps ``InnerOpt``.

    Parameters
    ----------
    params, InnerOpt, param_ndim, grad_scale, grad_bias, defaults, **inner_opt_kwargs
        See :class:`~rai_probe.optim.ParamTransformingOptimizer`.
    div_by_zero_eps : float, optional (default=float32 tiny)
        Lower bound on the norm, so a zero gradient stays zero. Per group.

    Examples
    --------
    >>> import torch as tr
    >>> from rai_probe.optim import LinfNormedGradientOptim
    >>> x = tr.zeros(2, 2, requires_grad=True)
    >>> optim = LinfNormedGradientOptim([x], lr=1.0)  # param_ndim=-1: one row per leading index
    >>> x.backward(gradient=tr.tensor([[1.0, -4.0], [0.5, 0.25]]))
    >>> optim.step()
    >>> x.grad
    tensor([[ 0.2500, -1.0000],
            [ 1.0000,  0.5000]])
    """

    _p = float("inf")


class TopQGradientOptimizer(ParamTransformingOptimizer):
    """Keeps the largest ``(1 - q)`` fraction of each gradient row (original values), zeros the rest.

    Per row of ``n`` entries, ``k = round((1 - q) * n)`` entries are kept: the
    ``k`` largest in magnitude, exactly ``k`` even with ties. ``q`` is the
    fraction **dropped** (``q=0.99`` keeps the top 1 %).

    Parameters
    ----------
    params, InnerOpt, param_ndim, grad_scale, grad_bias, defaults, **inner_opt_kwargs
        See :class:`~rai_probe.optim.ParamTransformingOptimizer`.
    q : float
        Fraction of entries dropped, within [0, 1]. Required. Per group.
    dq : float, optional (default=0.0)
        If positive, ``q`` is drawn once per parameter per step from
        ``U[max(0, q - dq), min(1, q + dq)]``. Per group.
    generator : torch.Generator, optional (default=torch.default_generator)
        RNG for the ``dq`` draw; may live on an accelerator. Per group.

    Examples
    --------
    >>> import torch as tr
    >>> from rai_probe.optim import TopQGradientOptimizer
    >>> x = tr.ones(2, 2, requires_grad=True)
    >>> optim = TopQGradientOptimizer([x], q=0.5, param_ndim=None, lr=1.0)
    >>> x.backward(gradient=tr.tensor([[0.5, 1.0], [-2.5, 0.3]]))
    >>> optim.step()
    >>> x.grad
    tensor([[ 0.0000,  1.0000],
            [-2.5000,  0.0000]])
    >>> x
    tensor([[1.0000, 0.0000],
            [3.5000, 1.0000]], requires_grad=True)
    """

    _options = TOPQ_OPTIONS

    def __init__(
        self,
        params: Params,
        InnerOpt: InnerOptimizer = SGD,
        *,
        q: float = REQUIRED,  # type: ignore[assignment]
        dq: float = 0.0,
        param_ndim: int | None = -1,
        grad_scale: float = 1.0,
        grad_bias: float = 0.0,
        defaults: Mapping[str, Any] | None = None,
        generator: torch.Generator = torch.default_generator,
        **inner_opt_kwargs: Any,
    ) -> None:
        super().__init__(
            params,
            InnerOpt,
            param_ndim=param_ndim,
            grad_scale=grad_scale,
            grad_bias=grad_bias,
            defaults=opt.fill_defaults(defaults, q=q, dq=dq, generator=generator),
            **inner_opt_kwargs,
        )

    def _pre_step_transform_(self, param: Tensor, optim_group: dict[str, Any]) -> None:
        warn_if_nothing_kept(self, param, optim_group)
        F.topq_(
            param.grad, optim_group["q"], dq=optim_group["dq"], generator=optim_group["generator"]
        )


class L1qNormedGradientOptim(ParamTransformingOptimizer):
    """Sparsifies each gradient row to its top ``(1 - q)`` fraction of signs, L1-normalized.

    Per row, the ``k = round((1 - q) * n)`` largest-magnitude entries become
    ``±1/k`` (their signs, divided by the L1 norm) and the rest become zero;
    ``grad_scale`` then sets the L1 norm of the step. This is the sparse
    steepest-ascent step of L1 attacks (SLIDE) and of sparse concept probing.

    Parameters
    ----------
    params, InnerOpt, param_ndim, grad_scale, grad_bias, defaults, **inner_opt_kwargs
        See :class:`~rai_probe.optim.ParamTransformingOptimizer`.
    q : float
        Fraction of entries dropped, within [0, 1]; ``q=0.9`` keeps the top
        10 %. Required. Per group.
    dq : float, optional (default=0.0)
        If positive, ``q`` is drawn once per parameter per step from
        ``U[max(0, q - dq), min(1, q + dq)]``. Per group.
    div_by_zero_eps : float, optional (default=float32 tiny)
        Lower bound on the L1 divisor, so a zero gradient stays zero. Per group.
    generator : torch.Generator, optional (default=torch.default_generator)
        RNG for the ``dq`` draw; may live on an accelerator. Per group.

    Examples
    --------
    Keep the top 70 % of the gradient and give it an L1 norm of 1.8:

    >>> import torch as tr
    >>> from rai_probe.optim import L1qNormedGradientOptim
    >>> x = tr.tensor([1.0, 1.0, 1.0], requires_grad=True)
    >>> optim = L1qNormedGradientOptim(
    ...     [x], q=0.30, grad_scale=1.8, InnerOpt=tr.optim.SGD, lr=1.0, param_ndim=None
    ... )
    >>> x.backward(gradient=tr.tensor([0.0, 1.0, 2.0]))
    >>> optim.step()
    >>> x.grad
    tensor([0.0000, 0.9000, 0.9000])
    >>> x
    tensor([1.0000, 0.1000, 0.1000], requires_grad=True)
    """

    _options = {**TOPQ_OPTIONS, "div_by_zero_eps": opt.positive}

    def __init__(
        self,
        params: Params,
        InnerOpt: InnerOptimizer = SGD,
        *,
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
            param_ndim=param_ndim,
            grad_scale=grad_scale,
            grad_bias=grad_bias,
            defaults=opt.fill_defaults(
                defaults, q=q, dq=dq, div_by_zero_eps=div_by_zero_eps, generator=generator
            ),
            **inner_opt_kwargs,
        )

    def _pre_step_transform_(self, param: Tensor, optim_group: dict[str, Any]) -> None:
        warn_if_nothing_kept(self, param, optim_group)
        F.l1q_normalize_(
            param.grad,
            optim_group["q"],
            dq=optim_group["dq"],
            generator=optim_group["generator"],
            eps=optim_group["div_by_zero_eps"],
        )

"""Chaining several parameter-transforming optimizers around one inner optimizer."""

from __future__ import annotations

import functools
from typing import Any, Iterable, Mapping

from torch import Tensor
from torch.optim import SGD, Optimizer

from ..errors import SettingError, SettingTypeError
from .param_transforming import ParamTransformingOptimizer

__all__ = ["ChainedParamTransformingOptimizer"]

#: Options the chain applies itself, once, after all members' pre-step transforms.
_CHAIN_ONLY = ("grad_scale", "grad_bias")


def _member_class(factory: Any) -> type[ParamTransformingOptimizer] | None:
    target = factory.func if isinstance(factory, functools.partial) else factory
    if isinstance(target, type) and issubclass(target, ParamTransformingOptimizer):
        return target
    return None


class ChainedParamTransformingOptimizer(ParamTransformingOptimizer):
    """Applies several transforming optimizers' transforms in sequence around one ``InnerOpt`` step.

    ``step()`` runs every member's pre-step transform (each followed by that
    member's own ``grad_scale``/``grad_bias``) left to right, then the
    chain's ``grad_scale``/``grad_bias``, then ``InnerOpt.step()``, then every
    member's post-step transform left to right.

    Parameters
    ----------
    *transforming_optimizers : Type[ParamTransformingOptimizer] | functools.partial
        The members, as classes or partials carrying their options (e.g.
        ``partial(TopQGradientOptimizer, q=0.9)``).
    params : iterable of Tensor or of dict
        Parameters or param-group dicts.
    InnerOpt, param_ndim, grad_scale, grad_bias, defaults, **inner_opt_kwargs
        See :class:`~rai_probe.optim.ParamTransformingOptimizer`; these are
        the chain's own options.

    Notes
    -----
    Each member is built over the same parameters and keeps its own param
    groups (``chain.members[i].param_groups``); the chain's
    ``param_groups`` are shared with ``InnerOpt``. A member's options come
    from its partial, else from the chain's param group when the group names
    that option (so ``{"params": ..., "q": 0.5}`` reaches every member with a
    ``q``), else from the member's defaults. ``param_ndim`` flows from the
    chain to every member whose partial does not set it. ``state_dict()``
    includes the members' param groups.

    Examples
    --------
    Keep the top 67 % of the gradient, then clamp it at 2.8:

    >>> from functools import partial
    >>> import torch as tr
    >>> from rai_probe.optim import (
    ...     ChainedParamTransformingOptimizer, ClampedGradientOptimizer, TopQGradientOptimizer)
    >>> x = tr.tensor([1.0, 1.0, 1.0], requires_grad=True)
    >>> optim = ChainedParamTransformingOptimizer(
    ...     partial(TopQGradientOptimizer, q=0.33),
    ...     partial(ClampedGradientOptimizer, clamp_max=2.8),
    ...     params=[x], lr=1.0, param_ndim=None,
    ... )
    >>> x.backward(gradient=tr.tensor([1.0, 2.0, 3.0]))
    >>> optim.step()
    >>> x.grad
    tensor([0.0000, 2.0000, 2.8000])
    >>> x
    tensor([ 1.0000, -1.0000, -1.8000], requires_grad=True)
    """

    def __init__(
        self,
        *transforming_optimizers: type[ParamTransformingOptimizer] | functools.partial,
        params: Iterable[Tensor] | Iterable[Mapping[str, Any]] | None = None,
        InnerOpt: type[Optimizer] | functools.partial | Optimizer = SGD,
        param_ndim: int | None = -1,
        grad_scale: float = 1.0,
        grad_bias: float = 0.0,
        defaults: Mapping[str, Any] | None = None,
        **inner_opt_kwargs: Any,
    ) -> None:
        if not transforming_optimizers:
            raise SettingTypeError(
                "ChainedParamTransformingOptimizer needs at least one transforming optimizer",
                setting="transforming_optimizers",
                value=(),
            )
        for index, factory in enumerate(transforming_optimizers):
            if _member_class(factory) is None:
                raise SettingTypeError(
                    f"ChainedParamTransformingOptimizer: member {index} must be a "
                    "ParamTransformingOptimizer subclass or a functools.partial of one; "
                    f"got {factory!r}",
                    setting="transforming_optimizers",
                    value=factory,
                )
        self._factories = transforming_optimizers
        self._members: tuple[ParamTransformingOptimizer, ...] = ()
        super().__init__(
            params,
            InnerOpt,
            param_ndim=param_ndim,
            grad_scale=grad_scale,
            grad_bias=grad_bias,
            defaults=defaults,
            **inner_opt_kwargs,
        )
        self._members = tuple(
            factory([self._member_group(group, factory) for group in self.param_groups])
            for factory in self._factories
        )

    @property
    def members(self) -> tuple[ParamTransformingOptimizer, ...]:
        """The member optimizers, in the order their transforms are applied."""
        return self._members

    @staticmethod
    def _member_group(group: Mapping[str, Any], factory: Any) -> dict[str, Any]:
        member_cls = _member_class(factory)
        fixed = factory.keywords if isinstance(factory, functools.partial) else {}
        member_group: dict[str, Any] = {"params": group["params"]}
        for name in member_cls.option_names():
            if name in _CHAIN_ONLY or name in fixed or name not in group:
                continue
            member_group[name] = group[name]
        return member_group

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group to the chain and to every member (all validated first)."""
        if getattr(self, "_constructing", False) or not self._members:
            super().add_param_group(param_group)
            return
        where = self._admit_group(param_group)
        member_groups = [self._member_group(param_group, f) for f in self._factories]
        for member, member_group in zip(self._members, member_groups):
            member._prepare_group(dict(member_group), f"{type(member).__name__} ({where})")
        self._inner_opt.add_param_group(param_group)
        for member, member_group in zip(self._members, member_groups):
            member.add_param_group(member_group)

    def _apply_pre_step_transform_(self) -> None:
        for member in self._members:
            member._apply_pre_step_transform_()
        self._scale_and_bias_grads()

    def _apply_post_step_transform_(self) -> None:
        for member in self._members:
            member._apply_post_step_transform_()

    def state_dict(self) -> dict[str, Any]:
        """The chain's state dict, with each member's under ``"members"``."""
        state = super().state_dict()
        state["members"] = [member.state_dict() for member in self._members]
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a state dict from :meth:`state_dict`, members included."""
        state = dict(state_dict)
        members = state.pop("members", None)
        super().load_state_dict(state)
        if members is not None:
            if len(members) != len(self._members):
                raise SettingError(
                    f"loaded state dict has {len(members)} chain members; "
                    f"this chain has {len(self._members)}",
                    setting="state_dict",
                )
            for member, member_state in zip(self._members, members):
                member.load_state_dict(member_state)

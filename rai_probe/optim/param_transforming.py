"""The :class:`ParamTransformingOptimizer` base class."""

from __future__ import annotations

import functools
from typing import Any, Callable, ClassVar, Iterable, Mapping

import torch
from torch import Tensor
from torch.optim import SGD, Optimizer

from ..errors import SettingError, SettingTypeError
from . import options as opt
from .nonfinite import SkipsNonFiniteRows, suspended
from .options import REQUIRED, OptionCheck
from .rows import Rows, rows_shape

__all__ = ["ParamTransformingOptimizer", "rows_shape"]

#: Key under which a saved param group stores a generator's state.
_GENERATOR_STATE = "rai_probe.generator_state"


def _check_param_ndim(where: str, param_ndim: int | None, params: Iterable[Tensor]) -> None:
    """``|param_ndim|`` may not exceed a parameter's ndim (a scalar counts as ndim 1)."""
    if param_ndim is None:
        return
    for index, p in enumerate(params):
        limit = max(p.ndim, 1)
        if abs(param_ndim) > limit:
            raise SettingError(
                f"{where}: option `param_ndim` must be None or an integer within "
                f"[-{limit}, {limit}] for parameter {index} of shape {tuple(p.shape)}; "
                f"got param_ndim={param_ndim}",
                setting="param_ndim",
                value=param_ndim,
            )


def _is_optimizer_factory(obj: Any) -> bool:
    if isinstance(obj, functools.partial):
        obj = obj.func
    return isinstance(obj, type) and issubclass(obj, Optimizer)


class ParamTransformingOptimizer(SkipsNonFiniteRows, Optimizer):
    """An optimizer that transforms each parameter before and after an inner optimizer's step.

    ``step()`` runs, for every parameter that has a gradient::

        zero the rows of param.grad holding a NaN or ±Inf (and remember them)
        _pre_step_transform_(param)      # e.g. sparsify / normalize param.grad
        param.grad *= grad_scale; param.grad += grad_bias
        InnerOpt.step()                  # any torch.optim optimizer
        _post_step_transform_(param)     # e.g. project param onto a ball
        restore the remembered rows of param, bit for bit

    Both transforms receive the parameter, and its ``.grad``, reshaped into
    contiguous rows of shape ``(N, d0, ...)`` according to ``param_ndim``,
    and must act in place, independently on each row.

    Parameters
    ----------
    params : iterable of Tensor or of dict, optional
        Parameters or param-group dicts. Must be ``None`` when ``InnerOpt`` is
        an optimizer instance (its param groups are used).
    InnerOpt : Type[Optimizer] | functools.partial | Optimizer, optional (default=SGD)
        The optimizer that updates the parameters: a class, a partial of one,
        or an already-built instance.
    param_ndim : int | None, optional (default=-1)
        How each parameter is reshaped into rows before the transforms (see
        Notes). Per param group.
    grad_scale : float, optional (default=1.0)
        Multiplies each gradient in place after the pre-step transform. Per group.
    grad_bias : float, optional (default=0.0)
        Added to each gradient in place after the pre-step transform. Per group.
    defaults : dict, optional
        Default options for all param groups; its entries take precedence over
        the keyword arguments of the same name.
    **inner_opt_kwargs
        Passed to ``InnerOpt`` (e.g. ``lr``).

    Notes
    -----
    ``param_ndim`` for a parameter of shape ``(3, 5, 2)``:

    ==============  ===================  ========================================
    param_ndim      rows                 the transform acts on
    ==============  ===================  ========================================
    0 or -3         (30, 1)              each element
    1 or -2         (15, 2)              each shape-(2,) slice
    2 or -1         (3, 5, 2)            each shape-(5, 2) slice (default)
    3 or None       (1, 3, 5, 2)         the whole tensor
    ==============  ===================  ========================================

    A 0-d parameter is one row of one element. ``|param_ndim|`` larger than a
    parameter's ``ndim`` is a ``ValueError``.

    The optimizer mirrors the inner optimizer: ``param_groups``, ``state`` and
    ``defaults`` are the very same objects, so LR schedulers, ``zero_grad``,
    ``state_dict`` and ``load_state_dict`` work on either. Every option
    (``param_ndim``, ``grad_scale``, ``grad_bias`` and each subclass's own) may
    be overridden per param group, and is validated at construction and in
    ``add_param_group``; so are the inner optimizer's well-known
    hyper-parameters (``lr``, ``momentum``, ``weight_decay``, ``betas``,
    ``eps``, ...: finite and in range, see
    :data:`~rai_probe.optim.options.INNER_OPTIONS`), and a NaN is refused for
    any numeric option. Parameters without a gradient are skipped.

    **Non-finite gradients.** A row whose gradient holds a NaN or ±Inf is left
    exactly unchanged by the step, its gradient is zeroed before any
    transform (so it cannot leak into the inner optimizer or other rows),
    and it is counted in :attr:`skipped_rows` (a device tensor, no host sync);
    see :mod:`rai_probe.optim.nonfinite`.

    With a closure (e.g. ``InnerOpt=torch.optim.LBFGS``), the inner optimizer
    receives a closure that evaluates yours with gradients enabled and then
    applies the pre-step transform, so every evaluation sees transformed
    gradients.

    Examples
    --------
    A gradient-transforming optimizer: the sign of the gradient, stepped by AdamW.

    >>> import torch as tr
    >>> from rai_probe.optim import ParamTransformingOptimizer
    >>> class SignedGradientOptim(ParamTransformingOptimizer):
    ...     def _pre_step_transform_(self, param: tr.Tensor, **_kwds) -> None:
    ...         if param.grad is None:
    ...             return
    ...         tr.sign(param.grad, out=param.grad)  # operates in-place
    >>> x = tr.tensor([-10.0, 10.0], requires_grad=True)
    >>> optim = SignedGradientOptim([x], InnerOpt=tr.optim.AdamW, lr=0.1)
    >>> (10_000 * x).sum().backward()
    >>> optim.step()
    >>> x
    tensor([-10.0900,   9.8900], requires_grad=True)

    Broadcasting with ``param_ndim``: a max-normalized gradient, per element,
    per row, or over the whole tensor.

    >>> class MaxNormedGradientOptim(ParamTransformingOptimizer):
    ...     def _pre_step_transform_(self, param: tr.Tensor, **_kwds) -> None:
    ...         g = param.grad.flatten(1)
    ...         max_norms = tr.max(g, dim=1).values
    ...         max_norms = max_norms.view(-1, *([1] * (param.ndim - 1)))
    ...         param.grad /= tr.clamp(max_norms, 1e-20, None)
    >>> x = tr.tensor([[1.0, 2.0], [20.0, 10.0]], requires_grad=True)
    >>> for param_ndim in [0, 1, 2]:
    ...     optim = MaxNormedGradientOptim([x], param_ndim=param_ndim, lr=0.0)
    ...     (x * x).sum().backward()
    ...     optim.step()
    ...     print(f"param_ndim={param_ndim}: {x.grad.tolist()}")
    ...     optim.zero_grad()
    param_ndim=0: [[1.0, 1.0], [1.0, 1.0]]
    param_ndim=1: [[0.5, 1.0], [1.0, 0.5]]
    param_ndim=2: [[0.05000000074505806, 0.10000000149011612], [1.0, 0.5]]

    A parameter-constraining optimizer: clamp after each SGD step.

    >>> class ClampedParamOptim(ParamTransformingOptimizer):
    ...     def _post_step_transform_(self, param: tr.Tensor, optim_group: dict) -> None:
    ...         param.clamp_(min=-1.0, max=1.0)
    >>> x = tr.tensor([-10.0, 1.0], requires_grad=True)
    >>> optim = ClampedParamOptim([x], lr=0.1)
    >>> x.backward(gradient=tr.tensor([-1.0, 1.0]))
    >>> optim.step()
    >>> x
    tensor([-1.0000,  0.9000], requires_grad=True)
    """

    #: Options this class stores per param group, with their checks.
    _options: ClassVar[dict[str, OptionCheck]] = {
        "param_ndim": opt.param_ndim,
        "grad_scale": opt.real,
        "grad_bias": opt.real,
    }
    _all_options: ClassVar[dict[str, OptionCheck]]

    #: Whether :meth:`step` needs the per-datum (per-row) losses of the current iterate
    #: (``step(losses=...)``), as the APGD family does; solvers pass them when it is True.
    needs_datum_losses: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._all_options = opt.collect_options(cls)

    @classmethod
    def takes_option(cls, name: str) -> bool:
        """Whether this optimizer stores the per-group option ``name`` (e.g. ``"bounds"``).

        The options are those the class validates per param group (its own
        and its bases'), not the inner optimizer's.

        Examples
        --------
        >>> from rai_probe.optim import L1qFrankWolfe, SignedGradientOptim
        >>> L1qFrankWolfe.takes_option("bounds"), SignedGradientOptim.takes_option("bounds")
        (True, False)
        """
        return name in cls._all_options

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """The names of all per-group options this optimizer stores, its bases' first.

        As for :meth:`takes_option`: the class's own options and its bases',
        not the inner optimizer's.

        Examples
        --------
        >>> from rai_probe.optim import ClampedGradientOptimizer, SignedGradientOptim
        >>> SignedGradientOptim.option_names()
        ('param_ndim', 'grad_scale', 'grad_bias')
        >>> ClampedGradientOptimizer.option_names()[3:]
        ('clamp_min', 'clamp_max')
        """
        return tuple(cls._all_options)

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]] | None = None,
        InnerOpt: type[Optimizer] | functools.partial | Optimizer = SGD,
        *,
        param_ndim: int | None = -1,
        grad_scale: float = 1.0,
        grad_bias: float = 0.0,
        defaults: Mapping[str, Any] | None = None,
        **inner_opt_kwargs: Any,
    ) -> None:
        where = type(self).__name__
        own_defaults = opt.fill_defaults(
            defaults, param_ndim=param_ndim, grad_scale=grad_scale, grad_bias=grad_bias
        )
        opt.check_options(where, self._all_options, own_defaults, complete=False)

        if isinstance(InnerOpt, Optimizer):
            if params is not None:
                raise SettingTypeError(
                    f"{where}: `params` must be None when `InnerOpt` is an optimizer "
                    "instance (its param groups are used)",
                    setting="params",
                )
            if inner_opt_kwargs:
                raise SettingTypeError(
                    f"{where}: unexpected keyword arguments {sorted(inner_opt_kwargs)} "
                    "with an already-built `InnerOpt`",
                    setting=sorted(inner_opt_kwargs)[0],
                    value=inner_opt_kwargs,
                )
            inner = InnerOpt
        elif _is_optimizer_factory(InnerOpt):
            if params is None:
                raise SettingTypeError(
                    f"{where}: `params` is required unless `InnerOpt` is an instance",
                    setting="params",
                )
            params = list(params)
            self._check_required_in_groups(where, own_defaults, params)
            self._check_inner_inputs(where, InnerOpt, params, inner_opt_kwargs)
            inner = InnerOpt(params, **inner_opt_kwargs)
        else:
            raise SettingTypeError(
                f"{where}: `InnerOpt` must be a torch.optim.Optimizer subclass, a "
                f"functools.partial of one, or an optimizer instance; got {InnerOpt!r}",
                setting="InnerOpt",
                value=InnerOpt,
            )

        self._inner_opt = inner
        inner.defaults.update(own_defaults)
        for index, group in enumerate(inner.param_groups):
            self._prepare_group(group, f"{where} (param group {index})")

        # Give this object the attributes (hooks, ...) of an Optimizer, then
        # share the inner optimizer's groups, state and defaults.
        self._constructing = True
        try:
            super().__init__(inner.param_groups, inner.defaults)
        finally:
            self._constructing = False
        self.param_groups = inner.param_groups
        self.state = inner.state
        self.defaults = inner.defaults

    # ------------------------------------------------------------------ #
    # param groups and options
    # ------------------------------------------------------------------ #
    def _check_required_in_groups(
        self, where: str, own_defaults: Mapping[str, Any], params: list
    ) -> None:
        """A REQUIRED option must be set in every group before the inner optimizer sees them."""
        groups = params if params and isinstance(params[0], dict) else [{}]
        for name, value in own_defaults.items():
            if value is REQUIRED and not all(name in group for group in groups):
                raise SettingTypeError(
                    f"{where}: missing required option `{name}`: pass it to the "
                    f"constructor or set it in every param group",
                    setting=name,
                )

    def _check_inner_inputs(
        self, where: str, InnerOpt: Any, params: list, inner_opt_kwargs: Mapping[str, Any]
    ) -> None:
        """Check the inner optimizer's options before it is built (it may accept a NaN ``lr``)."""
        fixed = InnerOpt.keywords if isinstance(InnerOpt, functools.partial) else {}
        opt.check_inner_options(where, {**fixed, **inner_opt_kwargs}, skip=self._all_options)
        for index, group in enumerate(params):
            if isinstance(group, dict):
                opt.check_inner_options(
                    f"{where} (param group {index})", group, skip=self._all_options
                )

    def _prepare_group(self, group: dict[str, Any], where: str) -> None:
        """Fill this optimizer's defaults into ``group`` and validate its options.

        Subclasses extend this for cross-option checks or derived options.
        """
        for name, value in self._group_defaults().items():
            group.setdefault(name, value)
        opt.check_options(where, self._all_options, group, complete=True)
        opt.check_inner_options(where, group, skip=self._all_options)
        _check_param_ndim(where, group["param_ndim"], group["params"])

    def _group_defaults(self) -> dict[str, Any]:
        """The defaults of this optimizer's own options (a view of ``self.defaults``)."""
        source = self._inner_opt.defaults
        return {name: source[name] for name in self._all_options if name in source}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group; its options are filled from the defaults and validated.

        Parameters
        ----------
        param_group : dict
            ``{"params": ..., <option>: <value>, ...}``; any option of this
            optimizer or of the inner optimizer may be given.
        """
        if getattr(self, "_constructing", False):
            super().add_param_group(param_group)
            return
        self._admit_group(param_group)
        self._inner_opt.add_param_group(param_group)

    def _admit_group(self, param_group: dict[str, Any]) -> str:
        """Normalize a new group's ``params``, fill and validate its options; return its label."""
        if not isinstance(param_group, dict):
            raise SettingTypeError(
                f"param_group must be a dict; got {type(param_group).__name__}",
                setting="param_group",
                value=param_group,
            )
        params = param_group["params"]
        param_group["params"] = [params] if isinstance(params, Tensor) else list(params)
        where = f"{type(self).__name__} (param group {len(self.param_groups)})"
        self._prepare_group(param_group, where)
        return where

    # ------------------------------------------------------------------ #
    # transforms
    # ------------------------------------------------------------------ #
    def _pre_step_transform_(self, param: Tensor, optim_group: dict[str, Any]) -> None:
        """Transform ``param`` (and ``param.grad``) in place before the inner step.

        Parameters
        ----------
        param : Tensor, shape-(N, d0, ...)
            The parameter reshaped into rows per ``param_ndim``; ``param.grad``
            is reshaped the same way. Act on each row independently, in place.
        optim_group : dict
            The parameter's param group (all options).
        """

    def _post_step_transform_(self, param: Tensor, optim_group: dict[str, Any]) -> None:
        """Transform ``param`` in place after the inner step (same layout as the pre-step)."""

    def _overrides(self, name: str) -> bool:
        return getattr(type(self), name) is not getattr(ParamTransformingOptimizer, name)

    def _transform_each_param(self, method: Callable[..., None]) -> None:
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                view = Rows(param, group["param_ndim"])
                method(view.rows, optim_group=group)
                view.write_back(method)

    def _apply_pre_step_transform_(self) -> None:
        """Apply ``_pre_step_transform_``, then ``grad_scale`` and ``grad_bias``, to every gradient."""
        if self._overrides("_pre_step_transform_"):
            self._transform_each_param(self._pre_step_transform_)
        self._scale_and_bias_grads()

    def _scale_and_bias_grads(self) -> None:
        for group in self.param_groups:
            scale, bias = group["grad_scale"], group["grad_bias"]
            if scale == 1 and bias == 0:
                continue
            for param in group["params"]:
                if param.grad is None:
                    continue
                if scale != 1:
                    param.grad.mul_(scale)
                if bias != 0:
                    param.grad.add_(bias)

    def _apply_post_step_transform_(self) -> None:
        """Apply ``_post_step_transform_`` to every parameter that has a gradient."""
        if self._overrides("_post_step_transform_"):
            self._transform_each_param(self._post_step_transform_)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Transform, step the inner optimizer, transform again; skip rows with non-finite gradients.

        Rows (per ``param_ndim``) whose gradient holds a NaN or ±Inf are
        zeroed before the transforms and restored after the step, and counted
        in :attr:`skipped_rows` (see :mod:`rai_probe.optim.nonfinite`).

        Parameters
        ----------
        closure : callable, optional
            Re-evaluates the model and returns the loss (needed by e.g. LBFGS).
            The pre-step transform is applied after every evaluation.

        Returns
        -------
        The closure's loss, or ``None``.
        """
        screen = self._screen()
        if closure is None:
            screen.screen_()
            self._apply_pre_step_transform_()
            with suspended(self._inner_opt):
                self._inner_opt.step()
            self._apply_post_step_transform_()
            screen.finish_()
            return None

        screen.snapshot_()

        def transformed_closure() -> Any:
            with torch.enable_grad():
                loss = closure()
            with torch.no_grad():  # the inner optimizer calls this with gradients enabled
                screen.screen_()
                self._apply_pre_step_transform_()
            return loss

        with suspended(self._inner_opt):
            loss = self._inner_opt.step(transformed_closure)
        self._apply_post_step_transform_()
        screen.finish_()
        return loss

    # ------------------------------------------------------------------ #
    # state
    # ------------------------------------------------------------------ #
    def state_dict(self) -> dict[str, Any]:
        """The inner optimizer's state dict; generator options are saved as their RNG state.

        The result holds only tensors and Python primitives, so it can be saved
        with ``torch.save`` and loaded with ``torch.load(..., weights_only=True)``.
        """
        state = super().state_dict()
        for saved in state["param_groups"]:
            for name, value in saved.items():
                if isinstance(value, torch.Generator):
                    saved[name] = {_GENERATOR_STATE: value.get_state()}
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a state dict from :meth:`state_dict`, restoring generators' RNG states.

        A generator option keeps its current object; its state is set from the
        saved one, except for ``torch.default_generator``, which is never
        modified (seed it yourself if you rely on it).
        """
        saved_groups = [dict(group) for group in state_dict["param_groups"]]
        live_groups = self.param_groups
        if len(saved_groups) != len(live_groups):
            raise SettingError(
                f"loaded state dict has {len(saved_groups)} parameter groups; "
                f"this optimizer has {len(live_groups)}",
                setting="state_dict",
            )
        restored_generators: list[tuple[int, str, torch.Generator, Tensor]] = []
        for index, (saved, live) in enumerate(zip(saved_groups, live_groups)):
            for name, value in list(saved.items()):
                if isinstance(value, dict) and _GENERATOR_STATE in value:
                    generator = live[name]
                    restored_generators.append((index, name, generator, value[_GENERATOR_STATE]))
                    saved[name] = None  # keep the live object; deepcopy-free placeholder
        inner_state = dict(state_dict)
        inner_state["param_groups"] = saved_groups
        self._inner_opt.load_state_dict(inner_state)
        self.param_groups = self._inner_opt.param_groups
        self.state = self._inner_opt.state
        for index, name, generator, rng_state in restored_generators:
            self.param_groups[index][name] = generator
            if generator is not torch.default_generator:
                generator.set_state(rng_state)

    def __repr__(self) -> str:
        return f"{super().__repr__()}\nInnerOpt: {type(self._inner_opt).__name__}"


ParamTransformingOptimizer._all_options = opt.collect_options(ParamTransformingOptimizer)

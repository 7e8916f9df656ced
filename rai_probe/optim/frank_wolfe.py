"""Frank-Wolfe: the plain optimizer and the L1, L1q, L2 and L∞ constrained family."""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Iterable, Mapping

import torch
from torch import Tensor
from torch.optim import Optimizer

from ..errors import SettingError
from . import options as opt
from . import functional as F
from .nonfinite import SkipsNonFiniteRows
from .options import REQUIRED, TINY
from .constraints import BallConstrained, bound_rows
from .normed import TOPQ_OPTIONS, warn_if_nothing_kept
from .rows import per_row_radius
from .types import Params

__all__ = ["FrankWolfe", "L1FrankWolfe", "L1qFrankWolfe", "L2FrankWolfe", "LinfFrankWolfe"]


class FrankWolfe(SkipsNonFiniteRows, Optimizer):
    """The Frank-Wolfe update ``p <- (1 - α) p - α · lmo_scaling_factor · p.grad``.

    ``p.grad`` is taken to already be a linear-minimization-oracle direction
    (a point of the unit ball maximizing ``<∇, s>``), as the transforms of
    :class:`L1FrankWolfe` and friends make it. With the default schedule,
    ``α_k = lr / (lr + k)``, where ``k`` counts this parameter's steps from 0
    (``lr = 2`` gives the classic ``2 / (k + 2)``, whose first step jumps to
    the vertex). With ``use_default_lr_schedule=False``, ``α = lr ∈ [0, 1]``.

    Rows of a gradient holding a NaN or ±Inf are skipped (left unchanged and
    counted in :attr:`skipped_rows`; see :mod:`rai_probe.optim.nonfinite`),
    with one row per leading index, as the transforming optimizers' default
    ``param_ndim=-1``. Inside the Frank-Wolfe family the outer optimizer
    applies that policy with its own ``param_ndim``.

    Parameters
    ----------
    params : iterable of Tensor or of dict
        Parameters or param-group dicts.
    lr : float, optional (default=2.0)
        >= 0 with the schedule, within [0, 1] without it. Per group.
    lmo_scaling_factor : float, optional (default=1.0)
        Radius ε of the constraint ball. Per group.
    use_default_lr_schedule : bool, optional (default=True)
        Per group.
    div_by_zero_eps : float, optional (default=float32 tiny)
        Lower bound on ``lr + k`` in the schedule. Per group.

    Examples
    --------
    >>> import torch as tr
    >>> from rai_probe.optim import FrankWolfe
    >>> x = tr.tensor([1.0, 1.0], requires_grad=True)
    >>> optim = FrankWolfe([x], lr=0.5, use_default_lr_schedule=False)
    >>> x.grad = tr.tensor([0.0, 1.0])  # an L1 LMO direction
    >>> optim.step()
    >>> x
    tensor([0.5000, 0.0000], requires_grad=True)
    """

    _options: ClassVar[dict[str, opt.OptionCheck]] = {
        "lr": opt.nonnegative,
        "lmo_scaling_factor": opt.real,
        "use_default_lr_schedule": opt.boolean,
        "div_by_zero_eps": opt.positive,
    }

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        *,
        lr: float = 2.0,
        lmo_scaling_factor: float = 1.0,
        use_default_lr_schedule: bool = True,
        div_by_zero_eps: float = TINY,
    ) -> None:
        defaults = dict(
            lr=lr,
            lmo_scaling_factor=lmo_scaling_factor,
            use_default_lr_schedule=use_default_lr_schedule,
            div_by_zero_eps=div_by_zero_eps,
        )
        self._check_group(defaults, type(self).__name__)
        super().__init__(params, defaults)

    def _check_group(self, group: Mapping[str, Any], where: str) -> None:
        opt.check_options(where, self._options, group, complete=True)
        if not group["use_default_lr_schedule"] and not 0.0 <= group["lr"] <= 1.0:
            raise SettingError(
                f"{where}: option `lr` must be within [0, 1] when "
                f"use_default_lr_schedule=False; got lr={group['lr']!r}",
                setting="lr",
                value=group["lr"],
            )

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group; its options are filled from the defaults and validated."""
        for name, value in self.defaults.items():
            param_group.setdefault(name, value)
        self._check_group(param_group, f"{type(self).__name__} (param group {len(self.param_groups)})")
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Take one Frank-Wolfe step for every parameter that has a gradient.

        Returns
        -------
        The closure's loss, or ``None``.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        screen = self._screen()
        screen.screen_()
        for group in self.param_groups:
            lr, scale = group["lr"], group["lmo_scaling_factor"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                count = state.get("step", 0)
                if group["use_default_lr_schedule"]:
                    alpha = lr / max(lr + count, group["div_by_zero_eps"])
                else:
                    alpha = lr
                F.frank_wolfe_update_(param, param.grad, alpha, scale)
                state["step"] = count + 1
        screen.finish_()
        return loss


class _FrankWolfeFamily(BallConstrained):
    """A :class:`FrankWolfe` step toward the LMO vertex of an ε-ball (optionally within a box).

    With a float ``epsilon`` and no ``bounds``, the pre-step turns the
    gradient into the unit-ball LMO direction and the inner optimizer's
    ``lmo_scaling_factor`` is ``epsilon``. With per-row ``epsilon`` or with
    ``bounds``, the gradient becomes minus the vertex of the ε-ball ∩ box
    (:func:`~rai_probe.optim.functional.fw_vertex_box_`) and the factor is 1.
    The factor is refreshed at every step, so changing ``epsilon`` or
    ``bounds`` in a param group takes effect at once.
    """

    _options = {"div_by_zero_eps": opt.positive}
    #: The ball's name for :func:`~rai_probe.optim.functional.fw_vertex_box_`.
    _norm: ClassVar[str]

    def __init__(
        self,
        params: Params,
        *,
        epsilon: float | Tensor = REQUIRED,  # type: ignore[assignment]
        lr: float = 2.0,
        use_default_lr_schedule: bool = True,
        param_ndim: int | None = -1,
        div_by_zero_eps: float = TINY,
        bounds: tuple[float | Tensor, float | Tensor] | None = None,
    ) -> None:
        self._init_family(
            params,
            epsilon=epsilon,
            lr=lr,
            use_default_lr_schedule=use_default_lr_schedule,
            param_ndim=param_ndim,
            div_by_zero_eps=div_by_zero_eps,
            lmo_options={"bounds": bounds},
        )

    def _init_family(
        self,
        params: Params,
        *,
        epsilon: float,
        lr: float,
        use_default_lr_schedule: bool,
        param_ndim: int | None,
        div_by_zero_eps: float,
        lmo_options: dict[str, Any],
    ) -> None:
        super().__init__(
            params,
            FrankWolfe,
            param_ndim=param_ndim,
            defaults=opt.fill_defaults(
                lmo_options, epsilon=epsilon, div_by_zero_eps=div_by_zero_eps
            ),
            lr=lr,
            use_default_lr_schedule=use_default_lr_schedule,
            div_by_zero_eps=div_by_zero_eps,
        )

    def _prepare_group(self, group: dict[str, Any], where: str) -> None:
        super()._prepare_group(group, where)
        if group["grad_scale"] != 1 or group["grad_bias"] != 0:
            bad = "grad_scale" if group["grad_scale"] != 1 else "grad_bias"
            raise SettingError(
                f"{where}: Frank-Wolfe optimizers need grad_scale=1 and grad_bias=0 (the "
                "direction must stay in the unit ball; set the radius with `epsilon`); got "
                f"grad_scale={group['grad_scale']!r}, grad_bias={group['grad_bias']!r}",
                setting=bad,
                value=group[bad],
            )
        group["lmo_scaling_factor"] = self._lmo_scale(group)

    @staticmethod
    def _lmo_scale(group: dict[str, Any]) -> float:
        epsilon = group["epsilon"]
        return epsilon if group["bounds"] is None and not isinstance(epsilon, Tensor) else 1.0

    def _apply_pre_step_transform_(self) -> None:
        for group in self.param_groups:
            group["lmo_scaling_factor"] = self._lmo_scale(group)
        super()._apply_pre_step_transform_()

    def _unit_lmo_(self, grad: Tensor, optim_group: dict[str, Any]) -> None:
        """``grad <-`` the LMO direction of the unit ball (per row, in place)."""
        raise NotImplementedError

    def _vertex_options(self, optim_group: dict[str, Any]) -> dict[str, Any]:
        return {}

    def _pre_step_transform_(self, param: Tensor, optim_group: dict[str, Any]) -> None:
        epsilon, box = optim_group["epsilon"], optim_group["bounds"]
        if box is None:
            self._unit_lmo_(param.grad, optim_group)
            if isinstance(epsilon, Tensor):
                param.grad.mul_(per_row_radius(epsilon, param.grad))
            return
        lower, upper = (bound_rows(b, param) for b in box)
        vertex = F.fw_vertex_box_(
            param.grad, self._norm, epsilon, lower, upper, **self._vertex_options(optim_group)
        )
        vertex.neg_()


class L1FrankWolfe(_FrankWolfeFamily):
    """Frank-Wolfe constrained to the L1 ε-ball: each step moves toward one signed vertex.

    The LMO direction is a signed one-hot vector at the entry of largest
    ``|grad|`` of each row, so every step changes one entry per row: the
    sparsest L1 attack.

    Parameters
    ----------
    params : iterable of Tensor or of dict
        Parameters or param-group dicts.
    epsilon : float or Tensor, shape-(N,)
        Radius of the L1 ball, > 0: one for all rows, or one per row (per
        datum with the default ``param_ndim=-1``). Required. Per group.
    lr : float, optional (default=2.0)
        See :class:`FrankWolfe`. Per group.
    use_default_lr_schedule : bool, optional (default=True)
        See :class:`FrankWolfe`. Per group.
    param_ndim : int | None, optional (default=-1)
        See :class:`~rai_probe.optim.ParamTransformingOptimizer`. Per group.
    div_by_zero_eps : float, optional (default=float32 tiny)
        Lower bound on the schedule's divisor. Per group.
    bounds : (lower, upper), optional
        A box containing 0 that the parameter must also stay in (numbers or
        parameter-shaped tensors), e.g. ``(0 - x, 1 - x)`` for a perturbation
        of a valid image ``x``. The LMO then returns the exact vertex of the
        ε-ball ∩ box, so iterates stay in both. Per group.

    Examples
    --------
    >>> import torch as tr
    >>> from rai_probe.optim import L1FrankWolfe
    >>> x = tr.tensor([1.0, 1.0], requires_grad=True)
    >>> optim = L1FrankWolfe([x], epsilon=1.8, param_ndim=None)
    >>> x.backward(gradient=tr.tensor([1.0, 2.0]))
    >>> optim.step()
    >>> x
    tensor([ 0.0000, -1.8000], requires_grad=True)
    """

    _norm = "l1"

    def _unit_lmo_(self, grad: Tensor, optim_group: dict[str, Any]) -> None:
        F.lmo_l1_(grad)


class L2FrankWolfe(_FrankWolfeFamily):
    """Frank-Wolfe constrained to the L2 ε-ball; the LMO direction is ``grad / ‖grad‖₂``.

    Parameters
    ----------
    params, epsilon, lr, use_default_lr_schedule, param_ndim, div_by_zero_eps, bounds
        See :class:`L1FrankWolfe`; ``div_by_zero_eps`` also bounds the gradient norm.

    Examples
    --------
    >>> import torch as tr
    >>> from rai_probe.optim import L2FrankWolfe
    >>> x = tr.tensor([1.0, 1.0], requires_grad=True)
    >>> optim = L2FrankWolfe([x], epsilon=1.8, param_ndim=None)
    >>> x.backward(gradient=tr.tensor([1.0, 2.0]))
    >>> optim.step()
    >>> x
    tensor([-0.8050, -1.6100], requires_grad=True)
    """

    _norm = "l2"

    def _unit_lmo_(self, grad: Tensor, optim_group: dict[str, Any]) -> None:
        F.lmo_l2_(grad, optim_group["div_by_zero_eps"])


class LinfFrankWolfe(_FrankWolfeFamily):
    """Frank-Wolfe constrained to the L∞ ε-ball; the LMO direction is ``sign(grad)``.

    Parameters
    ----------
    params, epsilon, lr, use_default_lr_schedule, param_ndim, div_by_zero_eps, bounds
        See :class:`L1FrankWolfe`.

    Examples
    --------
    >>> import torch as tr
    >>> from rai_probe.optim import LinfFrankWolfe
    >>> x = tr.tensor([1.0, 1.0], requires_grad=True)
    >>> optim = LinfFrankWolfe([x], epsilon=1.8, param_ndim=None)
    >>> x.backward(gradient=tr.tensor([1.0, 2.0]))
    >>> optim.step()
    >>> x
    tensor([-1.8000, -1.8000], requires_grad=True)
    """

    _norm = "linf"

    def _unit_lmo_(self, grad: Tensor, optim_group: dict[str, Any]) -> None:
        F.lmo_linf_(grad)


class L1qFrankWolfe(_FrankWolfeFamily):
    """Frank-Wolfe in the L1 ε-ball with a sparse L1q LMO: controllably sparse perturbations.

    The LMO direction keeps the signs of the top ``(1 - q)`` fraction of each
    gradient row, L1-normalized (see :class:`L1qNormedGradientOptim`), so the
    iterate stays in the L1 ε-ball while its sparsity is set by ``q``. This is
    the optimizer of Roberts & Tsiligkaridis (2021), "Controllably Sparse
    Perturbations of Robust Classifiers for Explaining Predictions and
    Probing Learned Concepts".

    Parameters
    ----------
    params : iterable of Tensor or of dict
        Parameters or param-group dicts.
    q : float
        Fraction of gradient entries dropped, within [0, 1]. Required. Per group.
    epsilon : float or Tensor, shape-(N,)
        Radius of the L1 ball, > 0: one for all rows, or one per row (per
        datum with the default ``param_ndim=-1``). Required. Per group.
    dq : float, optional (default=0.0)
        If positive, ``q`` is drawn once per parameter per step from
        ``U[max(0, q - dq), min(1, q + dq)]``. Per group.
    lr, use_default_lr_schedule, param_ndim, div_by_zero_eps
        See :class:`L1FrankWolfe`.
    generator : torch.Generator, optional (default=torch.default_generator)
        RNG for the ``dq`` draw. Per group.
    bounds : (lower, upper), optional
        See :class:`L1FrankWolfe`. In a box, the kept entries may saturate
        (an image pixel moves by at most its distance to 0 or 1), so the top
        ``k`` alone may be unable to spend ε.
    spend_budget : bool, optional (default=True)
        With ``bounds``: when the top ``k`` movable entries cannot take the
        whole budget, extend the vertex to the next-largest gradient entries
        that can still move, each up to the box, until ε is spent (``q``
        then fixes the *minimum* support of each vertex; see
        :func:`~rai_probe.optim.functional.fw_vertex_box_`). ``False`` keeps
        exactly ``k`` entries per vertex, which may leave budget unspent: on
        a 28x28 image in [0, 1] with ``q=0.99`` (``k = 8``) no iterate then
        exceeds an L1 norm of 8. No effect without ``bounds``. Per group.

    Examples
    --------
    >>> import torch as tr
    >>> from rai_probe.optim import L1qFrankWolfe
    >>> x = tr.tensor([1.0, 1.0, 1.0], requires_grad=True)
    >>> optim = L1qFrankWolfe([x], q=0.30, epsilon=1.8, param_ndim=None)
    >>> (tr.tensor([0.0, 1.0, 2.0]) * x).sum().backward()
    >>> optim.step()
    >>> x  # the updated parameter; has an L1 norm of 1.8
    tensor([ 0.0000, -0.9000, -0.9000], requires_grad=True)
    """

    _options = {**TOPQ_OPTIONS, "spend_budget": opt.boolean}

    def __init__(
        self,
        params: Params,
        *,
        q: float = REQUIRED,  # type: ignore[assignment]
        epsilon: float | Tensor = REQUIRED,  # type: ignore[assignment]
        dq: float = 0.0,
        lr: float = 2.0,
        use_default_lr_schedule: bool = True,
        param_ndim: int | None = -1,
        div_by_zero_eps: float = TINY,
        generator: torch.Generator = torch.default_generator,
        bounds: tuple[float | Tensor, float | Tensor] | None = None,
        spend_budget: bool = True,
    ) -> None:
        self._init_family(
            params,
            epsilon=epsilon,
            lr=lr,
            use_default_lr_schedule=use_default_lr_schedule,
            param_ndim=param_ndim,
            div_by_zero_eps=div_by_zero_eps,
            lmo_options={
                "q": q, "dq": dq, "generator": generator, "bounds": bounds, "spend_budget": spend_budget,
            },
        )

    _norm = "l1q"

    def _pre_step_transform_(self, param: Tensor, optim_group: dict[str, Any]) -> None:
        warn_if_nothing_kept(self, param, optim_group)
        super()._pre_step_transform_(param, optim_group)

    def _unit_lmo_(self, grad: Tensor, optim_group: dict[str, Any]) -> None:
        F.lmo_l1q_(
            grad,
            optim_group["q"],
            dq=optim_group["dq"],
            generator=optim_group["generator"],
            eps=optim_group["div_by_zero_eps"],
        )

    def _vertex_options(self, optim_group: dict[str, Any]) -> dict[str, Any]:
        return {
            "q": optim_group["q"],
            "dq": optim_group["dq"],
            "generator": optim_group["generator"],
            "spend_budget": optim_group["spend_budget"],
        }

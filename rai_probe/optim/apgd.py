"""Auto-PGD: projected gradient with per-datum step sizes, checkpoints and restarts (APGD).

APGD (Croce & Hein, 2020, "Reliable evaluation of adversarial robustness
with an ensemble of diverse parameter-free attacks") is PGD whose step size
each datum adapts on its own: a first step of fixed length, a momentum step
after that, and at a few *checkpoints* a halving of the step and a restart
from the best point found so far whenever progress has stalled. Its L1
version (Croce & Hein, 2021, "Mind the box: l1-APGD for sparse adversarial
attacks on image classifiers") steps along the signs of the ``k`` largest
gradient entries among those that can still move inside the image box,
adapts ``k`` to the support of its best point, and projects exactly onto the
L1 ball intersected with the box.

Every step needs the loss of the current iterate *per datum* (per row), to
track each datum's best point and progress: these optimizers have
``needs_datum_losses = True`` and take ``step(losses=...)`` (or a closure that
returns the per-datum losses). :func:`~rai_probe.perturbations.gradient_ascent`
passes them, and the run length ``total_steps``, by itself.
"""

from __future__ import annotations

import math
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor
from torch.optim import SGD

from ..errors import SettingError, SettingTypeError
from . import functional as F
from . import options as opt
from .constraints import BallConstrained, bound_rows
from .normed import TOPQ_OPTIONS, warn_if_nothing_kept
from .options import REQUIRED, TINY
from .rows import Rows, per_row, row_size
from .types import Params

__all__ = ["L1APGD", "L2APGD", "LinfAPGD", "L1qAutoFrankWolfe"]

#: The checkpoint schedule of Croce & Hein (2020): ``(first, shrink, least)`` fractions of the run.
PAPER_CHECKPOINTS = (0.22, 0.03, 0.06)
#: The schedule :class:`L1APGD` uses by default: a check every 6 % of the run (see its docstring).
L1_CHECKPOINTS = (0.06, 0.0, 0.06)


def _checkpoint_fractions(where: str, name: str, value: Any) -> None:
    """A triple ``(first, shrink, least)`` with ``first`` and ``least`` in (0, 1] and ``shrink`` >= 0."""
    ok = isinstance(value, (tuple, list)) and len(value) == 3 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
    )
    if ok:
        first, shrink, least = value
        ok = 0 < first <= 1 and 0 < least <= 1 and shrink >= 0
    if not ok:
        raise SettingError(
            f"{where}: option `{name}` must be a triple (first, shrink, least) of fractions of the "
            f"run, with first and least within (0, 1] and shrink >= 0; got {name}={value!r}",
            setting=name,
            value=value,
        )


class _APGDFamily(BallConstrained):
    """The APGD loop of one norm; subclasses give the direction and the projection.

    One call of :meth:`step` at iteration ``t`` (counted from 0, per
    parameter) receives ``f(x_t)`` per row and ``∇f(x_t)`` in ``.grad``
    (``f`` is minimized, as by every torch optimizer) and:

    1. records ``x_t`` as the row's best point if ``f(x_t)`` is its lowest
       loss so far (with the gradient there), and whether ``f(x_t)`` improved
       on ``f(x_{t-1})``;
    2. if ``t - 1`` is a checkpoint ``w_j``
       (:func:`~rai_probe.optim.functional.apgd_checkpoints`), i.e. once the
       iterate after iteration ``w_j`` is evaluated, each row whose progress
       stalled (:func:`~rai_probe.optim.functional.apgd_reduce_step`)
       halves its step size and restarts from its best point (its next step
       starts there, with the gradient saved there and no momentum);
    3. steps: ``z = P(x_t - η · d)``, ``d`` the unit-norm steepest-descent
       direction of the norm, and ``x_{t+1} = P(x_t + α (z - x_t) + (1 - α)
       (x_t - x_{t-1}))`` (for ``t = 0``: ``x_1 = z``), ``P`` the projection
       onto the ε-ball ∩ box.
    """

    needs_datum_losses: ClassVar[bool] = True
    #: Initial step size as a multiple of ε (2 for L2 / L∞, 1 for L1).
    _default_initial_step: ClassVar[float] = 2.0
    #: Whether the step size is ``initial_step · ε`` (a length) or ``initial_step`` (a Frank-Wolfe weight).
    _step_scales_with_radius: ClassVar[bool] = True
    #: Default ``checkpoints`` option.
    _default_checkpoints: ClassVar[tuple[float, float, float]] = PAPER_CHECKPOINTS

    _options = {
        "total_steps": opt.positive_integer,
        "alpha": opt.unit_interval,
        "rho": opt.unit_interval,
        "initial_step": opt.positive,
        "checkpoints": _checkpoint_fractions,
        "div_by_zero_eps": opt.positive,
    }

    def __init__(
        self,
        params: Params,
        *,
        epsilon: float | Tensor = REQUIRED,  # type: ignore[assignment]
        total_steps: int = REQUIRED,  # type: ignore[assignment]
        bounds: tuple[float | Tensor, float | Tensor] | None = None,
        alpha: float = 0.75,
        rho: float = 0.75,
        initial_step: float | None = None,
        checkpoints: tuple[float, float, float] | None = None,
        param_ndim: int | None = -1,
        div_by_zero_eps: float = TINY,
    ) -> None:
        self._init_apgd(
            params,
            epsilon=epsilon,
            total_steps=total_steps,
            bounds=bounds,
            alpha=alpha,
            rho=rho,
            initial_step=initial_step,
            checkpoints=checkpoints,
            param_ndim=param_ndim,
            div_by_zero_eps=div_by_zero_eps,
        )

    def _init_apgd(
        self,
        params: Params,
        *,
        epsilon: float | Tensor,
        total_steps: int,
        bounds: tuple[float | Tensor, float | Tensor] | None,
        alpha: float,
        rho: float,
        initial_step: float | None,
        checkpoints: tuple[float, float, float] | None,
        param_ndim: int | None,
        div_by_zero_eps: float,
        **own_options: Any,
    ) -> None:
        defaults = opt.fill_defaults(
            own_options,
            epsilon=epsilon,
            bounds=bounds,
            total_steps=total_steps,
            alpha=alpha,
            rho=rho,
            initial_step=self._default_initial_step if initial_step is None else initial_step,
            checkpoints=tuple(self._default_checkpoints if checkpoints is None else checkpoints),
            div_by_zero_eps=div_by_zero_eps,
        )
        super().__init__(params, SGD, param_ndim=param_ndim, defaults=defaults, lr=1.0)
        self._losses: Tensor | None = None

    def _prepare_group(self, group: dict[str, Any], where: str) -> None:
        super()._prepare_group(group, where)
        if group["grad_scale"] != 1 or group["grad_bias"] != 0 or group.get("lr", 1.0) != 1.0:
            bad = "grad_scale" if group["grad_scale"] != 1 else ("grad_bias" if group["grad_bias"] != 0 else "lr")
            raise SettingError(
                f"{where}: APGD sets its own step sizes (a first step of initial_step · ε, then "
                f"halved at checkpoints); grad_scale, grad_bias and lr cannot be changed; got "
                f"{bad}={group[bad]!r}",
                setting=bad,
                value=group[bad],
            )

    #: Per-row state and its dtype (``load_state_dict`` of torch casts a floating-point
    #: parameter's state to the parameter's dtype; these are restored as saved).
    _STATE_DTYPES: ClassVar[dict[str, torch.dtype]] = {
        "best_loss": torch.float64,
        "previous_loss": torch.float64,
        "best_at_checkpoint": torch.float64,
        "step_size": torch.float64,
        "improvements": torch.int64,
        "restarts": torch.int64,
        "reduced": torch.bool,
        "sparsity": torch.int64,
    }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict from :meth:`state_dict`; the per-row counters keep their dtypes."""
        super().load_state_dict(state_dict)
        params = [p for group in self.param_groups for p in group["params"]]
        for index, saved in state_dict["state"].items():
            param = params[int(index)]
            for key, dtype in self._STATE_DTYPES.items():
                if key in saved and isinstance(saved[key], Tensor):
                    self.state[param][key] = saved[key].to(device=param.device, dtype=dtype).clone()

    # ------------------------------------------------------------------ #
    # the step
    # ------------------------------------------------------------------ #
    def step(self, closure: Callable[[], Any] | None = None, *, losses: Tensor | None = None) -> Any:
        """One APGD iteration for every parameter that has a gradient.

        Parameters
        ----------
        closure : callable, optional
            Re-evaluates the model, backpropagates and returns the loss of
            each datum (shape ``(N,)``, the value being minimized); used
            when ``losses`` is not given.
        losses : Tensor, shape-(N,), optional
            The per-datum (per-row) loss at the current iterate, being
            minimized (for an attack that raises a loss, pass its negative),
            the gradients already in ``.grad``. A parameter with a single row
            (``param_ndim=None``) takes the sum of the losses.

        Returns
        -------
        The closure's loss, or ``None``.
        """
        if losses is None and closure is None:
            raise SettingTypeError(
                f"{type(self).__name__}.step needs the per-datum losses of the current iterate: "
                "call step(losses=...) after backward, or step(closure) with a closure that "
                "returns them (gradient_ascent passes them itself)",
                setting="losses",
            )
        if losses is not None:
            self._losses = torch.as_tensor(losses).detach()
            try:
                return super().step()
            finally:
                self._losses = None

        def recording() -> Any:
            value = closure()
            self._losses = torch.as_tensor(value).detach()
            return value

        try:
            return super().step(recording)
        finally:
            self._losses = None

    def _row_losses(self, n_rows: int, device: torch.device) -> Tensor:
        losses = self._losses
        if losses is None:  # pragma: no cover - step() guarantees it
            raise RuntimeError("no losses")
        flat = losses.reshape(-1).to(device=device, dtype=torch.float64)
        if flat.numel() == n_rows:
            return flat
        if n_rows == 1:
            return flat.sum().reshape(1)
        raise SettingError(
            f"{type(self).__name__}.step: `losses` must hold one loss per row of the parameter "
            f"({n_rows} rows, as param_ndim defines them); got {flat.numel()} values",
            setting="losses",
            value=tuple(losses.shape),
        )

    def _apply_pre_step_transform_(self) -> None:
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                view = Rows(param, group["param_ndim"])
                self._apgd_step_(view.rows, group, self.state[param])
                view.write_back(self._apgd_step_)

    def _post_step_transform_(self, param: Tensor, optim_group: dict[str, Any]) -> None:
        self._project_(param, optim_group)

    def _box(self, rows: Tensor, group: dict[str, Any]) -> tuple[Tensor, Tensor] | None:
        if group["bounds"] is None:
            return None
        lower, upper = (bound_rows(b, rows) for b in group["bounds"])
        return lower, upper

    def _apgd_step_(self, rows: Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        """Bookkeeping, checkpoint, and the displacement ``x_t - x_{t+1}`` written into ``rows.grad``."""
        x, g = rows, rows.grad
        n_rows = x.shape[0]
        if x.numel() == 0:
            g.zero_()
            return
        f = self._row_losses(n_rows, x.device)
        t = state.get("apgd_iteration", 0)
        if t == 0:
            self._start_(x, g, f, group, state)
        else:
            self._record_(x, g, f, group, state, t)
        z = self._propose_(x, g, group, state)
        if t > 0:  # momentum: x + α (z - x) + (1 - α) (x - x_prev)
            alpha = group["alpha"]
            z = x + alpha * (z - x) + (1 - alpha) * (x - state["previous"])
        state["previous"].copy_(x)
        torch.sub(x, z, out=g)  # the inner SGD step (lr = 1) lands on z; the post-step projects
        state["apgd_iteration"] = t + 1

    def _propose_(self, x: Tensor, g: Tensor, group: dict[str, Any], state: dict[str, Any]) -> Tensor:
        """``z = P(x - η · d)``: the projected steepest-descent step (before momentum)."""
        eta = per_row(state["step_size"], x).to(x.dtype)
        z = x - eta * self._direction_(x, g, group, state)
        self._project_(z, group)
        return z

    def _start_(self, x: Tensor, g: Tensor, f: Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        n_rows = x.shape[0]
        finite = torch.isfinite(f)
        loss = torch.where(finite, f, torch.full_like(f, math.inf))
        radius = group["epsilon"]
        radius = radius.to(device=x.device, dtype=torch.float64) if isinstance(radius, Tensor) else (
            torch.full((n_rows,), float(radius), dtype=torch.float64, device=x.device))
        state.update(
            checkpoints=F.apgd_checkpoints(group["total_steps"], *group["checkpoints"]),
            previous=x.clone(),
            best=x.clone(),
            best_grad=g.clone(),
            best_loss=loss,
            previous_loss=loss.clone(),
            best_at_checkpoint=loss.clone(),
            step_size=(radius if self._step_scales_with_radius else torch.ones_like(radius)) * group["initial_step"],
            improvements=torch.zeros(n_rows, dtype=torch.int64, device=x.device),
            reduced=torch.zeros(n_rows, dtype=torch.bool, device=x.device),
            restarts=torch.zeros(n_rows, dtype=torch.int64, device=x.device),
        )
        self._start_own_(x, group, state)

    def _record_(
        self, x: Tensor, g: Tensor, f: Tensor, group: dict[str, Any], state: dict[str, Any], t: int
    ) -> None:
        finite = torch.isfinite(f)
        improved_on_previous = finite & (f < state["previous_loss"])
        better = finite & (f < state["best_loss"])
        state["best_loss"] = torch.where(better, f, state["best_loss"])
        rows_better = per_row(better, x)
        state["best"].copy_(torch.where(rows_better, x, state["best"]))
        state["best_grad"].copy_(torch.where(rows_better, g, state["best_grad"]))
        previous_loss = torch.where(finite, f, state["previous_loss"])
        checkpoints = state["checkpoints"]
        if t - 1 in checkpoints:  # the iterate after iteration w_j has just been evaluated
            j = checkpoints.index(t - 1)
            interval = checkpoints[j] - (checkpoints[j - 1] if j else 0)
            reduce = F.apgd_reduce_step(
                state["improvements"], interval, group["rho"], state["reduced"],
                state["best_loss"], state["best_at_checkpoint"],
            )
            state["step_size"] = torch.where(reduce, state["step_size"] / 2, state["step_size"])
            restart = per_row(reduce, x)
            x.copy_(torch.where(restart, state["best"], x))
            g.copy_(torch.where(restart, state["best_grad"], g))
            state["previous"].copy_(torch.where(restart, state["best"], state["previous"]))
            previous_loss = torch.where(reduce, state["best_loss"], previous_loss)
            state["reduced"] = reduce
            state["restarts"] += reduce
            state["best_at_checkpoint"] = state["best_loss"].clone()
            state["improvements"].zero_()
            self._at_checkpoint_(x, group, state)
        state["improvements"] += improved_on_previous
        state["previous_loss"] = previous_loss

    # ------------------------------------------------------------------ #
    # per norm
    # ------------------------------------------------------------------ #
    def _start_own_(self, x: Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        """Initialize norm-specific state (the L1 sparsity)."""

    def _at_checkpoint_(self, x: Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        """Adapt norm-specific state at a checkpoint (one host sync allowed)."""

    def _direction_(self, x: Tensor, g: Tensor, group: dict[str, Any], state: dict[str, Any]) -> Tensor:
        """The unit-norm steepest-descent direction (a new tensor; ``x - η·d`` descends)."""
        raise NotImplementedError

    def _project_(self, x: Tensor, group: dict[str, Any]) -> None:
        """In place: onto the ε-ball ∩ box."""
        raise NotImplementedError


class L1APGD(_APGDFamily):
    """L1-APGD: sparse, box-aware APGD in the L1 ε-ball (Croce & Hein, 2021).

    Each step moves along the signs of the ``k`` largest gradient entries of
    each row among those that can still move inside the box
    (:func:`~rai_probe.optim.functional.movable_entries`), spread evenly so
    the step has L1 length ``η`` (:func:`~rai_probe.optim.functional.topk_signs_`),
    then projects exactly onto the L1 ε-ball ∩ box
    (:func:`~rai_probe.optim.functional.project_l1_ball_box_`). The first
    step has L1 length ``initial_step · ε`` (ε by default, as in the paper).

    **Adaptive sparsity.** ``k`` follows the support of the row's best point
    so far: ``k = clamp(ceil(support_factor · ‖x_best‖₀), 1, n)``, set at
    the start (from the starting point, when it has a support: a random or
    staged start) and at every checkpoint; a row whose best point has no
    support yet keeps ``k = round((1 - q) n)``. With ``support_factor < 1``
    each checkpoint concentrates the step on fewer entries, which is what
    makes the iterates sparse: with ``k`` equal to the support, a step along
    the signs of the support's own gradient is undone by the projection and
    the run stalls.

    **Checkpoints.** The sparsity must adapt within a few steps, so the
    checks come every 6 % of the run by default (``checkpoints=(0.06, 0,
    0.06)``; Croce & Hein's 2020 schedule for L2 / L∞,
    ``(0.22, 0.03, 0.06)``, adapts ``k`` too rarely: 53 % robust accuracy
    against 40 % at 100 steps and ε = 10 on the shipped model, see
    docs/attack_strength.md). At each, the rows whose progress stalled
    (:func:`~rai_probe.optim.functional.apgd_reduce_step`) halve their step
    size and restart from their best point; momentum ``α`` as in the
    module docstring.

    Parameters
    ----------
    params : iterable of Tensor or of dict
        Parameters or param-group dicts (one perturbation row per datum with
        the default ``param_ndim=-1``).
    epsilon : float or Tensor, shape-(N,)
        Radius of the L1 ball, > 0, one for all rows or one per row. Required.
    total_steps : int
        Iterations of the run (``N_iter``), which place the checkpoints;
        :func:`~rai_probe.perturbations.gradient_ascent` passes its ``steps``.
        Required.
    bounds : (lower, upper), optional
        A box containing 0, e.g. ``(0 - x, 1 - x)`` for a perturbation of an
        image ``x`` in [0, 1] (the solver's ``data_range`` sets it).
    q : float, optional (default=0.8)
        Initial sparsity, the fraction of entries dropped (``q=0.8`` keeps
        the top 20 %; AutoAttack's ``topk`` counts the kept fraction,
        ``1 - q``), for rows starting with no support.
    support_factor : float, optional (default=0.5)
        ``k`` at each checkpoint, as a multiple of the best point's support.
    alpha : float, optional (default=0.75)
        The momentum weight ``α`` of the new projected step against the
        previous displacement, within [0, 1] (1: no momentum). (Not called
        ``momentum``: that is the inner SGD's option.)
    rho : float, optional (default=0.75)
        A checkpoint halves the step size of rows whose loss improved in
        fewer than this fraction of the steps since the last checkpoint.
    initial_step : float, optional (default=1.0)
        The first step size, as a multiple of ε.
    checkpoints : (first, shrink, least), optional (default=(0.06, 0.0, 0.06))
        The checkpoint schedule, as fractions of ``total_steps``
        (:func:`~rai_probe.optim.functional.apgd_checkpoints`).
    param_ndim : int | None, optional (default=-1)
        See :class:`~rai_probe.optim.ParamTransformingOptimizer`.
    div_by_zero_eps : float, optional (default=float32 tiny)
        Lower bound on the L1 divisor of the direction.

    Notes
    -----
    ``step(losses=...)`` must receive the loss of each row at the current
    iterate (the value minimized; see :meth:`step`). Per-row state (step
    size, sparsity, best point and its loss and gradient, the counters of the
    checkpoint test) lives in ``optim.state[param]`` and round-trips through
    ``state_dict``. A step makes no host sync, except at checkpoints (one, to
    size the top-``k`` selection). Rows whose gradient is not finite are
    skipped (left unchanged) as by every optimizer of the package.

    Examples
    --------
    Three "images" of 8 pixels in [0, 1]; the loss is minimized:

    >>> import torch
    >>> from rai_probe.optim import L1APGD
    >>> x = torch.rand(3, 8, generator=torch.Generator().manual_seed(0))
    >>> w = torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
    >>> delta = torch.zeros_like(x, requires_grad=True)
    >>> optim = L1APGD([delta], epsilon=2.0, total_steps=10, bounds=(0 - x, 1 - x), q=0.5)
    >>> for _ in range(10):
    ...     optim.zero_grad()
    ...     losses = ((x + delta) * w).sum(dim=1)          # one loss per image
    ...     losses.sum().backward()
    ...     optim.step(losses=losses.detach())
    >>> d = delta.detach()
    >>> bool((d.abs().sum(1) <= 2.0 + 1e-5).all()), bool(((x + d >= 0) & (x + d <= 1)).all())
    (True, True)
    >>> optim.state[delta]["step_size"].shape               # one step size per image
    torch.Size([3])
    """

    _default_initial_step = 1.0
    _default_checkpoints = L1_CHECKPOINTS
    _options = {"q": opt.unit_interval, "support_factor": opt.positive}

    def __init__(
        self,
        params: Params,
        *,
        epsilon: float | Tensor = REQUIRED,  # type: ignore[assignment]
        total_steps: int = REQUIRED,  # type: ignore[assignment]
        bounds: tuple[float | Tensor, float | Tensor] | None = None,
        q: float = 0.8,
        support_factor: float = 0.5,
        alpha: float = 0.75,
        rho: float = 0.75,
        initial_step: float | None = None,
        checkpoints: tuple[float, float, float] | None = None,
        param_ndim: int | None = -1,
        div_by_zero_eps: float = TINY,
    ) -> None:
        self._init_apgd(
            params,
            epsilon=epsilon,
            total_steps=total_steps,
            bounds=bounds,
            alpha=alpha,
            rho=rho,
            initial_step=initial_step,
            checkpoints=checkpoints,
            param_ndim=param_ndim,
            div_by_zero_eps=div_by_zero_eps,
            q=q,
            support_factor=support_factor,
        )

    def _start_own_(self, x: Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        k = max(1, F.num_kept(row_size(x), group["q"]))
        state["sparsity"] = torch.full((x.shape[0],), k, dtype=torch.int64, device=x.device)
        self._follow_support_(x, group, state)  # a start with a support (a random start, a stage)

    @staticmethod
    def _follow_support_(point: Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        """``k <- clamp(ceil(support_factor · ‖point‖₀), 1, n)`` per row (kept where the support is 0)."""
        n_rows, n = point.shape[0], row_size(point)
        support = (point.reshape(n_rows, n) != 0).sum(dim=1)
        k = (support.to(torch.float64) * group["support_factor"]).ceil_().clamp_(1, max(n, 1)).to(torch.int64)
        state["sparsity"] = torch.where(support > 0, k, state["sparsity"])
        state["sparsity_max"] = int(state["sparsity"].max()) if n_rows else 0  # the one host sync

    def _at_checkpoint_(self, x: Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        self._follow_support_(state["best"], group, state)  # with the one host sync of a checkpoint

    def _direction_(self, x: Tensor, g: Tensor, group: dict[str, Any], state: dict[str, Any]) -> Tensor:
        box = self._box(x, group)
        movable = F.movable_entries(x, g, *box) if box is not None else g != 0
        direction = g.masked_fill(~movable, 0.0)
        return F.topk_signs_(
            direction, state["sparsity"], k_max=state["sparsity_max"], eps=group["div_by_zero_eps"]
        )

    def _project_(self, x: Tensor, group: dict[str, Any]) -> None:
        box = self._box(x, group)
        if box is None:
            F.project_l1_ball_(x, group["epsilon"])
        else:
            F.project_l1_ball_box_(x, group["epsilon"], *box)


class L2APGD(_APGDFamily):
    """APGD in the L2 ε-ball (Croce & Hein, 2020): L2-normalized gradient steps.

    The first step has L2 length ``initial_step · ε`` (2ε by default); each
    step is projected onto the L2 ε-ball, then clamped into the box (which
    stays in the ball, since the box contains 0). See :class:`L1APGD` for
    the parameters (all but ``q`` and ``support_factor``) and the notes.

    Examples
    --------
    >>> import torch
    >>> from rai_probe.optim import L2APGD
    >>> delta = torch.zeros(2, 5, requires_grad=True)
    >>> optim = L2APGD([delta], epsilon=1.0, total_steps=5)
    >>> for _ in range(5):
    ...     losses = -(delta * torch.arange(5.0)).sum(dim=1)   # minimized: raise <delta, w>
    ...     optim.zero_grad(); losses.sum().backward(); optim.step(losses=losses.detach())
    >>> bool((delta.detach().norm(dim=1) <= 1.0 + 1e-6).all())
    True
    """

    def _direction_(self, x: Tensor, g: Tensor, group: dict[str, Any], state: dict[str, Any]) -> Tensor:
        return F.normalize_(g.clone(), 2, group["div_by_zero_eps"])

    def _project_(self, x: Tensor, group: dict[str, Any]) -> None:
        F.project_l2_ball_(x, group["epsilon"])
        box = self._box(x, group)
        if box is not None:
            torch.clamp(x, *box, out=x)


class LinfAPGD(_APGDFamily):
    """APGD in the L∞ ε-ball (Croce & Hein, 2020): signed gradient steps.

    The first step has L∞ length ``initial_step · ε`` (2ε by default); each
    step is clamped into ``[-ε, ε]`` and into the box (exact: the
    intersection is a box). See :class:`L1APGD` for the parameters (all but
    ``q`` and ``support_factor``) and the notes.

    Examples
    --------
    >>> import torch
    >>> from rai_probe.optim import LinfAPGD
    >>> delta = torch.zeros(2, 5, requires_grad=True)
    >>> optim = LinfAPGD([delta], epsilon=0.1, total_steps=5, bounds=(-0.05, 1.0))
    >>> losses = (delta * torch.tensor([1.0, -1.0, 1.0, -1.0, 0.0])).sum(dim=1)
    >>> losses.sum().backward(); optim.step(losses=losses.detach())
    >>> delta.detach()[0]
    tensor([-0.0500,  0.1000, -0.0500,  0.1000,  0.0000])
    """

    def _direction_(self, x: Tensor, g: Tensor, group: dict[str, Any], state: dict[str, Any]) -> Tensor:
        return g.sign()

    def _project_(self, x: Tensor, group: dict[str, Any]) -> None:
        F.project_linf_ball_(x, group["epsilon"])
        box = self._box(x, group)
        if box is not None:
            torch.clamp(x, *box, out=x)


#: The checkpoints of :class:`L1qAutoFrankWolfe`: at 40 %, 60 % and 80 % of the run.
AUTO_FW_CHECKPOINTS = (0.4, 0.2, 0.2)


class L1qAutoFrankWolfe(_APGDFamily):
    """L1q Frank-Wolfe with APGD's per-datum step sizes and restarts: a strong sparse attack.

    Each step moves toward the box-aware L1q vertex of the ε-ball ∩ box
    (:func:`~rai_probe.optim.functional.fw_vertex_box_` with ``"l1q"``: the
    top ``k = round((1 - q) n)`` movable gradient entries, extended until ε
    is spent unless ``spend_budget=False``), as :class:`~rai_probe.optim.L1qFrankWolfe`
    does, but with a Frank-Wolfe weight ``γ`` of its own per row instead of
    the fixed ``2 / (t + 2)``: ``x_{t+1} = x_t + γ (v_t - x_t)``. ``γ``
    starts at ``initial_step`` (1: the first steps hop from vertex to
    vertex, each a sparse perturbation of about ε / pixel range entries) and
    the APGD checkpoint test (see :class:`L1APGD` and the module docstring)
    halves it, and restarts the row from its best point, when progress
    stalls; by default the checks come at 40, 60 and 80 % of the run, so a
    stalled row refines with γ = 1/2, 1/4, 1/8 around its best vertex mix.
    Iterates are convex combinations of points of the ε-ball ∩ box, so they
    stay in both without a projection. ``momentum`` (``alpha``) is off by
    default (1).

    Like the APGD family it needs the per-datum losses at every step
    (``step(losses=...)``; :func:`~rai_probe.perturbations.gradient_ascent`
    passes them) and ``total_steps``.

    Parameters
    ----------
    params, epsilon, total_steps, bounds, rho, param_ndim, div_by_zero_eps
        See :class:`L1APGD`.
    q, dq, generator, spend_budget
        See :class:`~rai_probe.optim.L1qFrankWolfe`; ``q`` defaults to 0.99.
    initial_step : float, optional (default=1.0)
        The first Frank-Wolfe weight ``γ``, within (0, 1].
    checkpoints : (first, shrink, least), optional (default=(0.4, 0.2, 0.2))
        See :func:`~rai_probe.optim.functional.apgd_checkpoints`.
    alpha : float, optional (default=1.0)
        Momentum weight (1: none).

    Examples
    --------
    >>> import torch
    >>> from rai_probe.optim import L1qAutoFrankWolfe
    >>> x = torch.rand(3, 16, generator=torch.Generator().manual_seed(0))
    >>> w = torch.randn(3, 16, generator=torch.Generator().manual_seed(1))
    >>> delta = torch.zeros_like(x, requires_grad=True)
    >>> optim = L1qAutoFrankWolfe([delta], q=0.9, epsilon=3.0, total_steps=10, bounds=(0 - x, 1 - x))
    >>> for _ in range(10):
    ...     optim.zero_grad()
    ...     losses = ((x + delta) * w).sum(dim=1)
    ...     losses.sum().backward()
    ...     optim.step(losses=losses.detach())
    >>> d = delta.detach()
    >>> bool((d.abs().sum(1) <= 3.0 + 1e-5).all()), bool(((x + d >= 0) & (x + d <= 1)).all())
    (True, True)
    """

    _default_initial_step = 1.0
    _default_checkpoints = AUTO_FW_CHECKPOINTS
    _step_scales_with_radius = False
    _options = {**TOPQ_OPTIONS, "spend_budget": opt.boolean}

    def __init__(
        self,
        params: Params,
        *,
        q: float = 0.99,
        epsilon: float | Tensor = REQUIRED,  # type: ignore[assignment]
        total_steps: int = REQUIRED,  # type: ignore[assignment]
        bounds: tuple[float | Tensor, float | Tensor] | None = None,
        dq: float = 0.0,
        generator: torch.Generator = torch.default_generator,
        spend_budget: bool = True,
        alpha: float = 1.0,
        rho: float = 0.75,
        initial_step: float | None = None,
        checkpoints: tuple[float, float, float] | None = None,
        param_ndim: int | None = -1,
        div_by_zero_eps: float = TINY,
    ) -> None:
        self._init_apgd(
            params,
            epsilon=epsilon,
            total_steps=total_steps,
            bounds=bounds,
            alpha=alpha,
            rho=rho,
            initial_step=initial_step,
            checkpoints=checkpoints,
            param_ndim=param_ndim,
            div_by_zero_eps=div_by_zero_eps,
            q=q,
            dq=dq,
            generator=generator,
            spend_budget=spend_budget,
        )

    def _prepare_group(self, group: dict[str, Any], where: str) -> None:
        super()._prepare_group(group, where)
        if group["initial_step"] > 1:
            raise SettingError(
                f"{where}: option `initial_step` (the first Frank-Wolfe weight) must be within "
                f"(0, 1]; got initial_step={group['initial_step']!r}",
                setting="initial_step",
                value=group["initial_step"],
            )

    def _propose_(self, x: Tensor, g: Tensor, group: dict[str, Any], state: dict[str, Any]) -> Tensor:
        warn_if_nothing_kept(self, x, group)
        box = self._box(x, group)
        lower, upper = box if box is not None else (-math.inf, math.inf)
        vertex = F.fw_vertex_box_(
            g.clone(), "l1q", group["epsilon"], lower, upper, q=group["q"], dq=group["dq"],
            generator=group["generator"], spend_budget=group["spend_budget"],
        )
        gamma = per_row(state["step_size"], x).to(x.dtype)
        return x + gamma * (vertex - x)

    def _post_step_transform_(self, param: Tensor, optim_group: dict[str, Any]) -> None:
        """Convex combinations stay in the ε-ball ∩ box: no projection (the solver clamps rounding)."""

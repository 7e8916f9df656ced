"""Gradient sampling: step on an aggregate of gradients sampled at perturbed points.

:class:`GradientSampling` replaces the gradient, and the loss, by an
aggregate over ``n`` evaluations of the closure at perturbed points
``x + σ·u``: a Gaussian-homotopy / gradient-sampling step for non-smooth
models (see its docstring).

Examples
--------
>>> import torch
>>> from rai_probe.optim.gradient_sampling import GradientSampling
>>> x = torch.tensor([1.0], requires_grad=True)
>>> optim = GradientSampling([x], sigma=0.1, n=8, seed=0, lr=0.5)
>>> def closure():
...     loss = (x ** 2).sum()
...     loss.backward()
...     return loss
>>> loss = optim.step(closure)  # the mean loss over x and x + 0.1·u_1, ..., x + 0.1·u_8
>>> bool(x.item() < 1.0)         # one step downhill
True
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any, Callable, NamedTuple, Sequence

import torch
from torch import Tensor
from torch.optim import SGD, Optimizer

from ..errors import SettingError, SettingTypeError
from . import functional as F
from . import options as opt
from .nonfinite import suspended
from .param_transforming import ParamTransformingOptimizer
from .rows import compute_dtype, rows_shape
from .types import InnerOptimizer, Params

__all__ = ["GradientSampling"]

#: Key of :class:`GradientSampling`'s own state in its ``state_dict()``.
_SAMPLING_STATE = "gradient_sampling"

#: Values of ``aggregate``, ``distribution`` and ``sigma_strategy``.
AGGREGATES = ("mean", "max", "min", "min-norm")
DISTRIBUTIONS = ("gaussian", "uniform", "rademacher", "sphere")
SIGMA_STRATEGIES = (None, "grad-norm", "value")


# --------------------------------------------------------------------------- #
# options and samples
# --------------------------------------------------------------------------- #
#: Options of the sampling itself: one value for the whole optimizer.
_SAMPLING_OPTIONS: dict[str, opt.OptionCheck] = {
    "n": opt.integer(1),
    "aggregate": opt.one_of(*AGGREGATES),
    "include_x0": opt.boolean,
    "fixed": opt.boolean,
    "pre_generate": opt.boolean,
    "termination": opt.optional_callable,
    "reset_on_termination": opt.boolean,
    "seed": opt.integer(0, optional=True),
}


class _Sample(NamedTuple):
    """The closure evaluated at one point."""

    loss: Tensor  # 0-d, float32 or wider, on the first parameter's device
    grads: list[Tensor]  # zeros for parameters the closure gave no gradient
    seen: list[bool]  # which parameters got a gradient
    finite: Tensor  # 0-d bool: the loss and every gradient entry are finite
    norm: Tensor | None  # L2 norm of all gradients, when an option needs it
    metrics: dict[int, Tensor]  # group index -> what its sigma_strategy compares


class _Evaluation(NamedTuple):
    """One sampled evaluation of the closure: aggregate, flags, and the point it was taken at."""

    loss: Tensor
    grads: list[Tensor | None]
    any_finite: Tensor  # 0-d bool, on the device
    grow: dict[int, Tensor]  # group index -> 0-d bool: sigma_strategy condition met
    versions: list[int]  # parameters' version counters after restoring them


def _total_norm(norms: Sequence[Tensor], device: torch.device) -> Tensor:
    """The L2 norm of a vector whose pieces have the L2 norms ``norms`` (overflow-free)."""
    if not norms:
        return torch.zeros((), device=device)
    return F.row_norms(torch.cat([v.to(device).reshape(1) for v in norms]).reshape(1, -1), 2)[0]


class _Aggregate:
    """Running aggregate of (loss, gradients) over the finite samples of one evaluation.

    Everything stays on the device: each sample is folded in with
    ``torch.where`` on its finiteness flag, so no value is read by the host.
    """

    def __init__(self, rule: str, params: list[Tensor], device: torch.device) -> None:
        self.rule = rule
        self.count = torch.zeros((), dtype=torch.int64, device=device)
        self.seen = [False] * len(params)
        self.grads = [
            torch.zeros(p.shape, dtype=compute_dtype(p), device=p.device) for p in params
        ]
        self.loss: Tensor | None = None
        if rule in ("max", "min"):  # |chosen| per element; any magnitude beats the start
            start = -1.0 if rule == "max" else math.inf
            self.keys = [torch.full_like(g, start) for g in self.grads]
        self.best_norm = torch.full((), math.inf, device=device)

    def add(self, sample: _Sample) -> None:
        loss, grads, ok, norm = sample.loss, sample.grads, sample.finite, sample.norm
        self.seen = [a or b for a, b in zip(self.seen, sample.seen)]
        if self.loss is None:
            start = {"mean": 0.0, "max": -math.inf, "min": math.inf, "min-norm": math.nan}
            self.loss = torch.full_like(loss, start[self.rule])
        if self.rule == "mean":
            self.loss.add_(torch.where(ok, loss, 0))
            for acc, g in zip(self.grads, grads):
                acc.add_(torch.where(ok, g, 0))
        elif self.rule == "min-norm":
            take = ok & ((self.count == 0) | (norm < self.best_norm))
            self.best_norm = torch.where(take, norm, self.best_norm)
            self.loss = torch.where(take, loss, self.loss)
            self.grads = [torch.where(take, g, acc) for acc, g in zip(self.grads, grads)]
        else:  # elementwise largest / smallest magnitude, keeping the chosen element's sign
            pick = torch.maximum if self.rule == "max" else torch.minimum
            self.loss = torch.where(ok, pick(self.loss, loss), self.loss)
            better = torch.gt if self.rule == "max" else torch.lt
            for j, g in enumerate(grads):
                magnitude = g.abs()
                take = ok & better(magnitude, self.keys[j])
                self.grads[j] = torch.where(take, g, self.grads[j])
                self.keys[j] = torch.where(take, magnitude, self.keys[j])
        self.count += ok

    def result(self) -> tuple[Tensor, list[Tensor | None]]:
        """``(loss, grads)``: NaN everywhere when no sample was finite; None for unseen grads."""
        empty = self.count == 0
        if self.rule == "mean":
            loss = self.loss / self.count
            grads = [acc.div_(self.count) for acc in self.grads]
        else:
            loss = self.loss.masked_fill(empty, math.nan)
            grads = [acc.masked_fill_(empty, math.nan) for acc in self.grads]
        return loss, [g if seen else None for g, seen in zip(grads, self.seen)]


class GradientSampling(ParamTransformingOptimizer):
    """Steps ``InnerOpt`` on an aggregate of gradients sampled at perturbed points ``x + σ·u``.

    Each evaluation of the objective evaluates the closure at ``n`` points
    ``x + σ·u_i`` (and, with ``include_x0``, at ``x`` itself), restores the
    parameters bit-exactly, and hands the aggregate of the finite samples'
    losses and gradients to the inner optimizer. With ``aggregate="mean"``
    this is the gradient of the Gaussian-smoothed objective (Gaussian
    homotopy); the other aggregates are gradient-sampling variants for
    non-smooth models (ReLU kinks, max-pooling, piecewise-linear losses).

    ``step(closure)`` requires a closure; it returns the aggregated loss at
    the current point (what the inner optimizer's ``step`` returns). A closure
    called several times per step (LBFGS, line searches) is re-sampled at
    every call around the point of that call, with the same perturbations.

    Parameters
    ----------
    params, InnerOpt, defaults, **inner_opt_kwargs
        See :class:`~rai_probe.optim.ParamTransformingOptimizer`. ``InnerOpt``
        receives the aggregated gradient; it may be a transforming optimizer
        or an already-built :class:`~rai_probe.optim.ChainedParamTransformingOptimizer`
        (e.g. Laplacian smoothing, then L1q sparsification, then SGD). An
        inner optimizer with an option of the same name as one below (such
        as ``LaplacianSmoothing``'s ``sigma``) would share it through the
        param groups and is refused: wrap it in a chain, whose members keep
        their own param groups.
    sigma : float, optional (default=1.0)
        Perturbation scale, >= 0; ``0`` gives the plain gradient. The current
        value lives in ``group["sigma"]`` (adapted by ``sigma_strategy``,
        decayed on termination, saved by ``state_dict``). Per group.
    n : int, optional (default=100)
        Number of perturbed points per evaluation, >= 1 (``x`` itself, with
        ``include_x0``, comes on top).
    aggregate : {"mean", "max", "min", "min-norm"}, optional (default="mean")
        ``"mean"``: mean gradient and loss. ``"max"`` / ``"min"``: per element,
        the sampled gradient entry of largest / smallest magnitude, with its
        own sign (first sample on ties); the loss is the largest / smallest
        loss. ``"min-norm"``: the gradient, and loss, of the sample whose
        gradient has the smallest L2 norm over all parameters.
    distribution : {"gaussian", "uniform", "rademacher", "sphere"}, optional (default="gaussian")
        Of ``u``: standard normal entries, ``U[-1, 1]`` entries, ``±1``
        entries, or uniform on the unit L2 sphere of each row (rows per
        ``param_ndim``). Per group.
    include_x0 : bool, optional (default=True)
        Also aggregate the sample at the unperturbed point.
    fixed : bool, optional (default=True)
        Keep the same perturbations ``u_i`` across steps until the
        termination rule fires (or a param group is added); ``False`` draws
        new ones every step. Within a step they never change.
    pre_generate : bool, optional (default=True)
        Store the perturbations (``n`` copies of the parameters) instead of
        regenerating them from their seed at every evaluation. Same results
        either way; it trades memory for compute.
    termination : callable, optional (default=None)
        ``termination(loss, grads) -> bool``, called once per step with the
        aggregated loss and gradients (None for parameters without one) at
        the current point. When it returns True, after the step: every
        group's ``sigma`` is multiplied by its ``decay``, new perturbations
        are drawn, and with ``reset_on_termination`` the inner optimizer's
        state is cleared.
    decay : float, optional (default=2/3)
        Multiplier of ``sigma`` on termination, > 0. Per group.
    reset_on_termination : bool, optional (default=True)
        Clear the inner optimizer's state (momenta, LBFGS history) on termination.
    sigma_strategy : {None, "grad-norm", "value"}, optional (default=None)
        Adapt ``sigma`` after every step from the samples at the current
        point: a sample *beats* ``x`` when its gradient norm (over the
        group's parameters; ``"grad-norm"``) or its loss (``"value"``) is
        lower than at ``x``. If at least ``sigma_target`` of the finite
        samples, and at least one, beat ``x``, ``sigma *= sigma_nplus``, else
        ``sigma *= sigma_nminus``. ``x`` is evaluated for this even without
        ``include_x0``. The adaptation happens once per step, never inside
        the closure, so line searches see a fixed objective. Per group.
    sigma_target : float, optional (default=0.2)
        Fraction within [0, 1]. Per group.
    sigma_nplus, sigma_nminus : float, optional (default=4/3, 2/3)
        Multipliers, > 0. Per group.
    seed : int, optional (default=None)
        Seed of the perturbations. ``None`` draws one from torch's global
        generator at construction, so ``torch.manual_seed`` makes runs
        reproducible too.
    param_ndim : int | None, optional (default=-1)
        Rows of the ``"sphere"`` distribution. Per group.
    grad_scale, grad_bias : float, optional (default=1.0, 0.0)
        Applied to the aggregated gradient. Per group. With a transforming
        ``InnerOpt``, these three options are the inner optimizer's (it
        shares the param groups and applies ``grad_scale`` and ``grad_bias``
        itself): set them there; here they must keep their defaults.

    Notes
    -----
    ``n``, ``aggregate``, ``include_x0``, ``fixed``, ``pre_generate``,
    ``termination``, ``reset_on_termination`` and ``seed`` shape the shared
    sampling of the closure (one closure call evaluates every group), so they
    are set once, at construction; all other options are per group.

    Samples whose loss or any gradient entry is not finite are skipped. When
    every sample of the first evaluation of a step is non-finite, no step is
    taken: parameters, gradients (left as None) and the inner optimizer's
    state are untouched, and ``step`` returns a NaN loss (``sigma_strategy``
    still shrinks ``sigma``), and every row with a gradient counts in
    :attr:`skipped_rows`. At later evaluations of the same step (line search
    trial points) such an evaluation reports a NaN loss to the inner
    optimizer. The aggregated gradient then follows the package's row policy
    (:mod:`rai_probe.optim.nonfinite`): its non-finite rows (a NaN
    evaluation, or a mean of huge samples that overflows) are zeroed before
    the inner optimizer sees them and left unchanged by the step. The step
    reads one small boolean tensor from the device to decide whether to
    step; everything else stays on the device.

    ``state_dict()`` adds, under ``"gradient_sampling"``, the generator
    state, the current perturbations' seed and (with ``pre_generate``) the
    perturbations themselves; ``sigma`` is saved with the param groups.
    Loading it continues a run identically.

    Examples
    --------
    ``|x|`` has a kink at 0 where SGD with a fixed step oscillates; the mean
    gradient over ``x + σu`` is smooth there, and the iterate settles:

    >>> import torch as tr
    >>> from rai_probe.optim import GradientSampling
    >>> def run(sigma):
    ...     x = tr.tensor([0.3], requires_grad=True)
    ...     optim = GradientSampling([x], sigma=sigma, n=50, seed=0, lr=0.2)
    ...     def closure():
    ...         optim.zero_grad()
    ...         loss = x.abs().sum()
    ...         loss.backward()
    ...         return loss
    ...     for _ in range(30):
    ...         optim.step(closure)
    ...     return round(abs(x.item()), 4)
    >>> run(sigma=0.0)  # plain SGD: bounces between +-0.1
    0.1
    >>> run(sigma=0.2) < 0.02
    True

    Without a closure there is nothing to sample:

    >>> GradientSampling([tr.zeros(1, requires_grad=True)], lr=0.1).step()  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    rai_probe.errors.SettingTypeError: GradientSampling.step needs a closure that re-evaluates the model, ...
    """

    _options = {
        "sigma": opt.nonnegative,
        "distribution": opt.one_of(*DISTRIBUTIONS),
        "decay": opt.positive,
        "sigma_strategy": opt.one_of(*SIGMA_STRATEGIES),
        "sigma_target": opt.unit_interval,
        "sigma_nplus": opt.positive,
        "sigma_nminus": opt.positive,
    }

    def __init__(
        self,
        params: Params = None,
        InnerOpt: InnerOptimizer = SGD,
        *,
        sigma: float = 1.0,
        n: int = 100,
        aggregate: str = "mean",
        distribution: str = "gaussian",
        include_x0: bool = True,
        fixed: bool = True,
        pre_generate: bool = True,
        termination: Callable[[Tensor, list[Tensor | None]], Any] | None = None,
        decay: float = 2 / 3,
        reset_on_termination: bool = True,
        sigma_strategy: str | None = None,
        sigma_target: float = 0.2,
        sigma_nplus: float = 4 / 3,
        sigma_nminus: float = 2 / 3,
        seed: int | None = None,
        param_ndim: int | None = -1,
        grad_scale: float = 1.0,
        grad_bias: float = 0.0,
        defaults: dict[str, Any] | None = None,
        **inner_opt_kwargs: Any,
    ) -> None:
        where = type(self).__name__
        settings = dict(
            n=n,
            aggregate=aggregate,
            include_x0=include_x0,
            fixed=fixed,
            pre_generate=pre_generate,
            termination=termination,
            reset_on_termination=reset_on_termination,
            seed=seed,
        )
        opt.check_options(where, _SAMPLING_OPTIONS, settings, complete=True)
        self._refuse_shared_options(
            where, InnerOpt, param_ndim=param_ndim, grad_scale=grad_scale, grad_bias=grad_bias
        )
        self._settings = settings
        self._generator = torch.Generator()
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()))
        self._generator.manual_seed(seed)
        self._device_generators: dict[torch.device, torch.Generator] = {}
        self._perturbation_seed: int | None = None  # None: draw a new set before the next use
        self._perturbations: list[Tensor] | None = None  # pre-generated, shape (n, *p.shape)
        super().__init__(
            params,
            InnerOpt,
            param_ndim=param_ndim,
            grad_scale=grad_scale,
            grad_bias=grad_bias,
            defaults=opt.fill_defaults(
                defaults,
                sigma=sigma,
                distribution=distribution,
                decay=decay,
                sigma_strategy=sigma_strategy,
                sigma_target=sigma_target,
                sigma_nplus=sigma_nplus,
                sigma_nminus=sigma_nminus,
            ),
            **inner_opt_kwargs,
        )

    @classmethod
    def _refuse_shared_options(cls, where: str, InnerOpt: Any, **base_options: Any) -> None:
        """Refuse option values that the shared param groups would silently drop or mix up.

        The inner optimizer shares the param groups: an inner option named like
        one of ours would be read by both, and a transforming inner optimizer's
        ``param_ndim``, ``grad_scale`` and ``grad_bias`` are the groups' values.
        """
        target = InnerOpt.func if isinstance(InnerOpt, functools.partial) else InnerOpt
        if isinstance(InnerOpt, Optimizer):
            target, names = type(InnerOpt), set(InnerOpt.defaults)
        elif isinstance(target, type):
            transforming = issubclass(target, ParamTransformingOptimizer)
            names = set(target.option_names()) if transforming else set()
            try:
                names |= set(inspect.signature(target).parameters)
            except (TypeError, ValueError):
                pass
        else:
            return  # not an optimizer: the base class reports it
        if issubclass(target, ParamTransformingOptimizer):
            base_defaults = {"param_ndim": -1, "grad_scale": 1.0, "grad_bias": 0.0}
            for name, value in base_options.items():
                if value != base_defaults[name]:
                    raise SettingError(
                        f"{where}: option `{name}` is taken from the transforming inner "
                        f"optimizer {target.__name__} (they share the param groups); set it "
                        f"there; got {name}={value!r}",
                        setting=name,
                        value=value,
                    )
        label = target.__name__
        shared = sorted(names & set(cls._options))
        if shared:
            raise SettingTypeError(
                f"{where}: the inner optimizer {label} also has the option(s) "
                f"{', '.join(f'`{s}`' for s in shared)}, and both would read them from the shared "
                "param groups; pass an already-built ChainedParamTransformingOptimizer as "
                "InnerOpt instead (its members keep their own param groups)",
                setting="InnerOpt",
                value=InnerOpt,
            )

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group (validated); the next step draws new perturbations."""
        super().add_param_group(param_group)
        self._perturbation_seed = None
        self._perturbations = None

    def _apply_pre_step_transform_(self) -> None:
        raise TypeError(
            "GradientSampling cannot be a member of a ChainedParamTransformingOptimizer "
            "(it needs the closure); pass the chain as its InnerOpt instead"
        )

    # ------------------------------------------------------------------ #
    # perturbations
    # ------------------------------------------------------------------ #
    def _flat(self) -> list[tuple[int, dict[str, Any], Tensor]]:
        return [(i, g, p) for i, g in enumerate(self.param_groups) for p in g["params"]]

    def _seeded_generators(self) -> dict[torch.device, torch.Generator]:
        """One generator per parameter device, each seeded with the current set's seed."""
        generators = {}
        for _, _, p in self._flat():
            if p.device not in generators:
                if p.device not in self._device_generators:
                    self._device_generators[p.device] = torch.Generator(device=p.device)
                gen = self._device_generators[p.device]
                generators[p.device] = gen.manual_seed(self._perturbation_seed)
        return generators

    @staticmethod
    def _fill_(out: Tensor, group: dict[str, Any], generator: torch.Generator) -> Tensor:
        distribution = group["distribution"]
        if distribution == "uniform":
            return out.uniform_(-1.0, 1.0, generator=generator)
        if distribution == "rademacher":
            return out.random_(0, 2, generator=generator).mul_(2).sub_(1)
        out.normal_(generator=generator)
        if distribution == "sphere":
            F.normalize_(out.view(rows_shape(out.shape, group["param_ndim"])), 2)
        return out

    def _perturbation_stream(self):
        """Yield, for each of the ``n`` samples, one perturbation per parameter (flat order)."""
        flat, n = self._flat(), self._settings["n"]
        if self._perturbations is not None:
            for i in range(n):
                yield [buffer[i] for buffer in self._perturbations]
            return
        generators = self._seeded_generators()
        for _ in range(n):  # sample-major, exactly as _pre_generate fills its buffers
            yield [
                self._fill_(p.new_empty(p.shape), g, generators[p.device]) for _, g, p in flat
            ]

    def _pre_generate(self) -> list[Tensor]:
        flat, n = self._flat(), self._settings["n"]
        buffers = [torch.empty((n, *p.shape), dtype=p.dtype, device=p.device) for _, _, p in flat]
        generators = self._seeded_generators()
        for i in range(n):
            for buffer, (_, g, p) in zip(buffers, flat):
                self._fill_(buffer[i], g, generators[p.device])
        return buffers

    def _ensure_perturbations(self) -> None:
        if self._perturbation_seed is None:
            self._perturbation_seed = int(torch.randint(0, 2**62, (), generator=self._generator))
            self._perturbations = None
        if self._settings["pre_generate"] and self._perturbations is None:
            self._perturbations = self._pre_generate()

    # ------------------------------------------------------------------ #
    # sampling
    # ------------------------------------------------------------------ #
    def _sample(
        self,
        closure: Callable[[], Any],
        flat: list[tuple[int, dict[str, Any], Tensor]],
        device: torch.device,
        strategies: dict[int, str],
        need_norms: bool,
    ) -> _Sample:
        """Evaluate ``closure`` at the parameters' current values, from cleared gradients."""
        params = [p for _, _, p in flat]
        for p in params:
            p.grad = None
        with torch.enable_grad():
            loss = closure()
        if loss is None:
            raise SettingTypeError(
                "GradientSampling: the closure must return the loss", setting="closure", value=closure
            )
        if not isinstance(loss, Tensor):
            loss = torch.tensor(loss, dtype=torch.float64)
        loss = loss.detach()
        if loss.numel() != 1:
            raise SettingError(
                "GradientSampling: the closure must return a scalar loss; "
                f"got shape {tuple(loss.shape)}",
                setting="closure",
                value=closure,
            )
        dtype = torch.promote_types(loss.dtype, torch.float32)
        loss = loss.reshape(()).to(device=device, dtype=dtype)
        seen = [p.grad is not None for p in params]
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        finite = loss.isfinite()
        for g, has_grad in zip(grads, seen):
            if has_grad:
                finite = finite & g.isfinite().all().to(device)
        norms = [F.row_norms(g.reshape(1, -1), 2) for g in grads] if need_norms else []
        metrics = {}
        for i, strategy in strategies.items():
            if strategy == "value":
                metrics[i] = loss
            else:
                metrics[i] = _total_norm([v for v, (j, _, _) in zip(norms, flat) if j == i], device)
        norm = _total_norm(norms, device) if need_norms else None
        return _Sample(loss, grads, seen, finite, norm, metrics)

    def _evaluate(self, closure: Callable[[], Any]) -> _Evaluation:
        """Sample the closure around the current point, restore it, and aggregate."""
        flat = self._flat()
        params = [p for _, _, p in flat]
        device = params[0].device
        settings = self._settings
        strategies = {
            i: g["sigma_strategy"] for i, g in enumerate(self.param_groups) if g["sigma_strategy"]
        }
        need_norms = settings["aggregate"] == "min-norm" or "grad-norm" in strategies.values()
        sample = functools.partial(self._sample, closure, flat, device, strategies, need_norms)
        aggregate = _Aggregate(settings["aggregate"], params, device)
        beats = {i: torch.zeros((), dtype=torch.int64, device=device) for i in strategies}
        finite_samples = torch.zeros((), dtype=torch.int64, device=device)

        origin = [p.detach().clone() for p in params]
        try:
            if settings["include_x0"] or strategies:
                reference = sample()
                if settings["include_x0"]:
                    aggregate.add(reference)
            for perturbation in self._perturbation_stream():
                with torch.no_grad():
                    for (_, g, p), x, u in zip(flat, origin, perturbation):
                        p.copy_(x)
                        if g["sigma"] != 0:
                            p.add_(u, alpha=g["sigma"])
                current = sample()
                aggregate.add(current)
                finite_samples += current.finite
                for i in strategies:
                    beats[i] += current.finite & (current.metrics[i] < reference.metrics[i])
        finally:
            with torch.no_grad():
                for p, x in zip(params, origin):
                    p.copy_(x)
        loss, grads = aggregate.result()
        grow = {
            i: beats[i] >= (finite_samples * self.param_groups[i]["sigma_target"]).clamp(min=1)
            for i in strategies
        }
        return _Evaluation(loss, grads, aggregate.count > 0, grow, [p._version for p in params])

    def _install(self, evaluation: _Evaluation, screen: Any) -> None:
        """Make the aggregated gradients the parameters' ``.grad``; screen their non-finite rows."""
        for (_, _, p), g in zip(self._flat(), evaluation.grads):
            p.grad = None if g is None else g.to(p.dtype)
        screen.screen_()  # before any transform: zero (and remember) rows with NaN / Inf
        if not isinstance(self._inner_opt, ParamTransformingOptimizer):
            self._scale_and_bias_grads()

    # ------------------------------------------------------------------ #
    # step
    # ------------------------------------------------------------------ #
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Sample, aggregate, step the inner optimizer; adapt ``sigma``.

        Parameters
        ----------
        closure : callable
            Re-evaluates the model (zeroing gradients is optional: they are
            cleared before every call), calls ``backward()`` and returns the
            loss. Required.

        Returns
        -------
        Tensor
            The aggregated loss at the current point (0-d; NaN if no sample
            was finite).
        """
        if closure is None or not callable(closure):
            raise SettingTypeError(
                "GradientSampling.step needs a closure that re-evaluates the model, calls "
                "backward() and returns the loss",
                setting="closure",
                value=closure,
            )
        self._ensure_perturbations()
        screen = self._screen()
        screen.snapshot_()
        first = self._evaluate(closure)
        flags = torch.stack([first.any_finite, *first.grow.values()]).tolist()
        grow = dict(zip(first.grow, flags[1:]))
        terminate = False
        if flags[0]:
            if self._settings["termination"] is not None:
                terminate = bool(self._settings["termination"](first.loss, first.grads))
            pending = [first]

            def sampled_closure() -> Tensor:
                params = [p for _, _, p in self._flat()]
                unchanged = pending and [p._version for p in params] == pending[0].versions
                evaluation = pending.pop() if unchanged else self._evaluate(closure)
                pending.clear()
                self._install(evaluation, screen)
                return evaluation.loss

            with suspended(self._inner_opt):
                loss = self._inner_opt.step(sampled_closure)
            screen.finish_()
        else:  # no finite sample: every row with a gradient is skipped, nothing moves
            for (_, group, p), g in zip(self._flat(), first.grads):
                if g is not None:
                    screen.count_(p, rows_shape(p.shape, group["param_ndim"])[0])
                p.grad = None
            loss = first.loss
        self._end_step(grow, terminate)
        return loss

    def _end_step(self, grow: dict[int, bool], terminate: bool) -> None:
        for i, grew in grow.items():
            group = self.param_groups[i]
            group["sigma"] *= group["sigma_nplus"] if grew else group["sigma_nminus"]
        if terminate:
            for group in self.param_groups:
                group["sigma"] *= group["decay"]
            if self._settings["reset_on_termination"]:
                self.state.clear()
        if terminate or not self._settings["fixed"]:
            self._perturbation_seed = None
            self._perturbations = None

    # ------------------------------------------------------------------ #
    # state
    # ------------------------------------------------------------------ #
    def state_dict(self) -> dict[str, Any]:
        """The inner optimizer's state dict plus this optimizer's own state.

        ``state["gradient_sampling"]`` holds ``generator`` (RNG state),
        ``perturbation_seed`` and ``perturbations`` (the pre-generated ones,
        or None); ``sigma`` is in the param groups.
        """
        if isinstance(self._inner_opt, ParamTransformingOptimizer):
            state = self._inner_opt.state_dict()
        else:
            state = super().state_dict()
        state[_SAMPLING_STATE] = {
            "generator": self._generator.get_state(),
            "perturbation_seed": self._perturbation_seed,
            "perturbations": None if self._perturbations is None else list(self._perturbations),
        }
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict from :meth:`state_dict`, sampling state included."""
        state = dict(state_dict)
        own = state.pop(_SAMPLING_STATE, None)
        if isinstance(self._inner_opt, ParamTransformingOptimizer):
            self._inner_opt.load_state_dict(state)
            self.param_groups = self._inner_opt.param_groups
            self.state = self._inner_opt.state
        else:
            super().load_state_dict(state)
        if own is None:
            return
        perturbations = own["perturbations"]
        if perturbations is not None:
            params = [p for _, _, p in self._flat()]
            shapes = [(self._settings["n"], *p.shape) for p in params]
            if len(perturbations) != len(params) or any(
                tuple(t.shape) != s for t, s in zip(perturbations, shapes)
            ):
                raise SettingError(
                    "loaded state dict has perturbations of shapes "
                    f"{[tuple(t.shape) for t in perturbations]}; this optimizer needs {shapes}",
                    setting="state_dict",
                )
            perturbations = [
                t.to(device=p.device, dtype=p.dtype) for t, p in zip(perturbations, params)
            ]
        self._generator.set_state(own["generator"])
        self._perturbation_seed = own["perturbation_seed"]
        self._perturbations = perturbations

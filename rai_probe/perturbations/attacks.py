"""Named attack recipes: an optimizer of :mod:`rai_probe.optim`, its options and a solver run.

An :class:`Attack` is the plain-data description of one attack (which
optimizer, the ε-ball, steps, step size, sparsity, random start, goal) that
configuration files, adversarial training and the probe CLI share. It is
checked when it is built, by constructing its optimizer once on a dummy
parameter, so a wrong option fails before any model runs. Every config that
describes an attack (``rai_probe/configs/attack/*.yaml``, the entries of
``rai_probe/configs/training/eval_attacks/*.yaml``, the ``attack`` of
``rai_probe/configs/training/train.yaml``) is spelt as :meth:`Attack.from_dict` reads it.
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from .. import optim as _optim
from ..optim import options as _options
from ..errors import SettingError, SettingTypeError, UnknownSettingError
from ..optim import ChainedParamTransformingOptimizer, LaplacianSmoothing
from ..optim import functional as _F
from ..optim.param_transforming import rows_shape
from .initializers import (
    sparse_l1_start_,
    uniform_like_l1_n_ball_,
    uniform_like_l2_n_ball_,
    uniform_like_linf_n_ball_,
)
from .losses import LOSSES, attack_criterion
from .models import AdditivePerturbation
from .solvers import AttackResult, gradient_ascent, random_restart, takes_option

__all__ = ["Attack", "ATTACK_OPTIMIZERS", "ATTACK_NORMS", "RANDOM_INITS", "OPTION_ALIASES", "option_keys"]

#: Optimizers an :class:`Attack` may name: those that keep the perturbation in an ε-ball.
ATTACK_OPTIMIZERS: tuple[str, ...] = (
    "L1qFrankWolfe",
    "L1FrankWolfe",
    "L2FrankWolfe",
    "LinfFrankWolfe",
    "L1ProjectedOptim",
    "L2ProjectedOptim",
    "LinfProjectedOptim",
    "L1APGD",
    "L2APGD",
    "LinfAPGD",
    "L1qAutoFrankWolfe",
)

#: The norm of each attack optimizer's ε-ball.
ATTACK_NORMS: dict[str, str] = {
    "L1qFrankWolfe": "l1",
    "L1FrankWolfe": "l1",
    "L2FrankWolfe": "l2",
    "LinfFrankWolfe": "linf",
    "L1ProjectedOptim": "l1",
    "L2ProjectedOptim": "l2",
    "LinfProjectedOptim": "linf",
    "L1APGD": "l1",
    "L2APGD": "l2",
    "LinfAPGD": "linf",
    "L1qAutoFrankWolfe": "l1",
}

#: Optimizers whose step length is the attack's ``lr`` (the projected family); the Frank-Wolfe
#: family has its own ``2 / (t + 2)`` schedule and APGD its own adaptive step sizes.
_TAKES_LR = frozenset({"L1ProjectedOptim", "L2ProjectedOptim", "LinfProjectedOptim"})

#: The Frank-Wolfe optimizers with an L1q vertex (whose support ``spend_budget=False`` caps).
_L1Q_FW = frozenset({"L1qFrankWolfe", "L1qAutoFrankWolfe"})

#: Share of the steps that the stages before the last one of an ``epsilon_schedule`` get.
_EARLY_STAGES_SHARE = 0.6

#: Random starts inside the ε-ball, by the ball's norm.
RANDOM_INITS: dict[str, Callable[..., Any]] = {
    "l1": uniform_like_l1_n_ball_,
    "l2": uniform_like_l2_n_ball_,
    "linf": uniform_like_linf_n_ball_,
    "l1_sparse": sparse_l1_start_,
}

#: Random starts that take the data's box (``bounds=``) so they can start on the ball ∩ box.
_BOX_AWARE_INITS = frozenset({"l1_sparse"})


#: Optimizer options that an attack's settings may also give at the top level, as the probe's
#: configs do (``q: 0.99`` for ``options: {q: 0.99}``); :meth:`Attack.from_dict` folds them in.
OPTION_ALIASES: tuple[str, ...] = ("q", "dq")


def option_keys(settings: Mapping[str, Any]) -> dict[str, str]:
    """Where each optimizer option of attack ``settings`` is written: ``"options.<name>"`` or ``"<name>"``.

    An option that an error names (its ``setting``) is fixed where the user
    wrote it: inside ``options``, or at the top level for an alias of
    :data:`OPTION_ALIASES` given there. An alias given nowhere is named at
    the top level, its usual spelling.

    Examples
    --------
    >>> option_keys({"optimizer": "L1APGD", "epsilon": 10, "q": 0.8, "options": {"initial_step": 2.0}})
    {'q': 'q', 'dq': 'dq', 'initial_step': 'options.initial_step'}
    >>> option_keys({"optimizer": "L1qFrankWolfe", "epsilon": 10, "options": {"q": 0.9}})["q"]
    'options.q'
    """
    if not isinstance(settings, Mapping):
        return {}
    nested = settings.get("options")
    nested = nested if isinstance(nested, Mapping) else {}
    keys = {name: name for name in OPTION_ALIASES if settings.get(name) is not None or name not in nested}
    for name in nested:
        keys.setdefault(str(name), f"options.{name}")
    return keys


def _fold_aliases(values: dict[str, Any], aliases: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``values`` with the top-level aliases (``q``, ``dq``; ``None``: not given) moved into ``options``."""
    given = {key: value for key, value in aliases.items() if value is not None}
    if not given:
        return values
    nested = values.get("options", {})
    if not isinstance(nested, Mapping):
        return values  # Attack names the bad `options`
    for key, value in given.items():
        if key in nested and nested[key] != value:
            raise SettingError(
                f"{where}: `{key}` is given twice, as {key}={value!r} and options.{key}={nested[key]!r}; give it once",
                setting=key,
                value=value,
            )
    return {**values, "options": {**nested, **given}}


def _pgd_step(epsilon: Any, steps: Any) -> Any:
    """The PGD step size ``2.5 * epsilon / steps`` (``None`` when they are not valid: Attack names them)."""
    valid = _finite_number(epsilon) and isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1
    return 2.5 * epsilon / steps if valid else None


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _probe_param(param_ndim: Any = None) -> Tensor:
    """A dummy perturbation for checking options: two rows, with room for any ``param_ndim``."""
    extra = abs(param_ndim) if isinstance(param_ndim, int) and not isinstance(param_ndim, bool) else 0
    return torch.zeros(2, 8, *[1] * max(0, extra - 1), requires_grad=True)


def _keyword_names(function: Callable[..., Any]) -> tuple[frozenset[str], Any]:
    """The named parameters of ``function`` and the default of its ``InnerOpt`` (if any) when it takes ``**kwargs``."""
    parameters = inspect.signature(function).parameters
    names = frozenset(name for name in parameters if name not in ("self", "params"))
    takes_more = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    inner = parameters["InnerOpt"].default if takes_more and "InnerOpt" in parameters else None
    return names, (inner if takes_more else False)


def _accepted_options(optimizer_class: type, options: Mapping[str, Any]) -> frozenset[str] | None:
    """Keyword options the optimizer takes: its own, plus its inner optimizer's (None: any)."""
    names, inner = _keyword_names(optimizer_class.__init__)
    if inner is False:
        return names
    inner = options.get("InnerOpt", inner)
    inner = inner.func if isinstance(inner, functools.partial) else inner
    if not isinstance(inner, type):
        return None
    inner_names, more = _keyword_names(inner.__init__)
    return None if more is not False else names | inner_names


def _check_number(name: str, value: Any, allowed: str, *, low: float | None = None,
                  high: float | None = None, low_open: float | None = None) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value >= low
    if ok and high is not None:
        ok = value <= high
    if ok and low_open is not None:
        ok = value > low_open
    if not ok:
        raise SettingError(f"Attack: `{name}` must be {allowed}; got {name}={value!r}", setting=name, value=value)


def _as_float(value: Any) -> Any:
    """An int as a float; anything else unchanged (and checked later)."""
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _check_data_range(data_range: Any) -> None:
    allowed = "None or a pair (low, high) of finite numbers with low < high"
    pair = tuple(data_range) if isinstance(data_range, (tuple, list)) else ()
    ok = len(pair) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in pair
    )
    if not ok or not pair[0] < pair[1]:
        raise SettingError(
            f"Attack: `data_range` must be {allowed}; got data_range={data_range!r}",
            setting="data_range",
            value=data_range,
        )


def _check_schedule(schedule: Any) -> tuple[float, ...] | None:
    if schedule is None:
        return None
    allowed = "None or a list of finite factors > 0 of epsilon ending with 1, e.g. [3, 2, 1]"
    values = tuple(schedule) if isinstance(schedule, (tuple, list)) else ()
    ok = len(values) >= 1 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in values
    )
    if not ok or values[-1] != 1:
        raise SettingError(
            f"Attack: `epsilon_schedule` must be {allowed}; got epsilon_schedule={schedule!r}",
            setting="epsilon_schedule",
            value=schedule,
        )
    return tuple(float(v) for v in values)


def stage_steps(steps: int, stages: int) -> list[int]:
    """How an ``epsilon_schedule`` of ``stages`` stages splits ``steps``: the last gets the rest.

    The stages before the last share 60 % of the steps equally (rounded up),
    so ``[3, 2, 1]`` over 100 steps runs 30, 30 and 40 (Croce & Hein, 2021).

    Examples
    --------
    >>> stage_steps(100, 3), stage_steps(20, 3), stage_steps(10, 1)
    ([30, 30, 40], [6, 6, 8], [10])
    """
    if stages == 1:
        return [steps]
    early = math.ceil(_EARLY_STAGES_SHARE * steps / (stages - 1))
    return [early] * (stages - 1) + [steps - early * (stages - 1)]


def _project_start_(delta: Tensor, norm: str, epsilon: float, lower: Tensor | None, upper: Tensor | None) -> Tensor:
    """In place: a stage's start onto its ε-ball (and the data's box), as the attack's optimizer would."""
    if norm == "l1":
        if lower is None:
            return _F.project_l1_ball_(delta, epsilon)
        return _F.project_l1_ball_box_(delta, epsilon, lower, upper)
    if norm == "l2":
        _F.project_l2_ball_(delta, epsilon)
    else:
        _F.project_linf_ball_(delta, epsilon)
    return delta if lower is None else torch.clamp(delta, lower, upper, out=delta)


def _chain(stages: list[AttackResult]) -> AttackResult:
    """One result for a run of stages: the last stage's, with the traces and step counts of all."""
    last = stages[-1]
    if len(stages) == 1:
        return last
    before = sum(stage.steps_run for stage in stages[:-1])
    first = last.first_success_step
    if first is not None:
        first = torch.where(first >= 0, first + before, first)
    traces = [stage.datum_loss_trace for stage in stages]
    skipped = [stage.skipped_rows for stage in stages]
    return AttackResult(
        xadv=last.xadv,
        losses=last.losses,
        loss_trace=torch.cat([stage.loss_trace for stage in stages]),
        datum_loss_trace=None if any(t is None for t in traces) else torch.cat(traces),
        success=last.success,
        first_success_step=first,
        logits=last.logits,
        steps_run=before + last.steps_run,
        skipped_rows=None if None in skipped else sum(skipped),
    )


@dataclass(frozen=True)
class Attack:
    """One attack: an ε-ball-constrained optimizer run by :func:`gradient_ascent`.

    Parameters
    ----------
    optimizer : str
        Name of the optimizer in :mod:`rai_probe.optim`, one of
        :data:`ATTACK_OPTIMIZERS` (its norm: :data:`ATTACK_NORMS`).
    epsilon : float
        Radius of each image's ε-ball, > 0 (in the optimizer's norm).
    steps : int, optional (default=10)
        Optimizer steps, >= 1 (per restart, all stages of an
        ``epsilon_schedule`` together).
    lr : float, optional (default=1.0)
        Step size of the inner SGD of the projected family (the step length
        in the ball's norm, since gradients are normalized). The Frank-Wolfe
        family ignores it (its own ``2 / (t + 2)`` schedule), and so does the
        APGD family (``L1APGD``, ...: its first step is ε or 2ε long, then
        adapts per image).
    options : Mapping, optional
        Further optimizer options, e.g. ``{"q": 0.99, "dq": 0.0}`` for the
        sparse optimizers.
    random_init : {"l1", "l2", "linf", "l1_sparse"} or None, optional (default=None)
        Start from a uniform draw in the ball of that norm and radius
        ``epsilon`` (the first stage's with an ``epsilon_schedule``) instead
        of from zero; ``"l1_sparse"``: a gaussian draw projected onto the L1
        ball ∩ box (:func:`~rai_probe.perturbations.initializers.sparse_l1_start_`),
        a sparse start on the sphere, the one :class:`~rai_probe.optim.L1APGD`
        works best from. Each restart draws a new start.
    smoothing_sigma : float or None, optional (default=None)
        Laplacian-smooth each gradient (:class:`~rai_probe.optim.LaplacianSmoothing`,
        one ring per image) with this ``sigma`` before the optimizer's own
        transform. Only with the projected family.
    targeted : bool, optional (default=False)
        Lower the loss toward the given targets instead of raising it.
    use_best : bool, optional (default=False)
        Return each image's best iterate instead of the last one: one that
        meets the goal when the image has any, else the one with the best
        loss. Among the successful iterates, the L1 attacks (sparse
        explanations) take the sparsest, fewest changed pixels first
        (``gradient_ascent(use_best="sparsest")``), the L2 and L∞ attacks
        the best loss (``use_best="success"``).
    early_stop, confidence, check_every
        See :func:`~rai_probe.perturbations.gradient_ascent`
        (``check_every``: with ``early_stop``, ask whether all images are
        done only every that many steps; default 1).
    data_range : (float, float) or None, optional (default=(0.0, 1.0))
        Valid input range the perturbed images stay in.
    loss : {"ce", "dlr"}, optional (default="ce")
        The criterion: cross-entropy, or the Difference of Logits Ratio of
        Croce & Hein (2020), untargeted or targeted with the attack
        (:mod:`rai_probe.perturbations.losses`; needs 3 or 4 classes).
    restarts : int, optional (default=1)
        Run the attack this many times and keep, per image, the best result:
        a success beats a failure, then the better loss. With a
        ``random_init`` each restart draws a new start from the generator;
        without randomness (no random start, ``dq = 0``) restarts repeat the
        same run.
    epsilon_schedule : sequence of float or None, optional (default=None)
        Run the steps in stages of radius ``factor · epsilon``, e.g.
        ``[3, 2, 1]`` (Croce & Hein, 2021): each stage starts from the
        previous stage's best point projected onto its own ball (and the
        box), with fresh optimizer state; the stages before the last share
        60 % of the steps (:func:`stage_steps`; 30, 30, 40 of 100) and keep
        their best-loss iterate; only the last stage, at ``epsilon`` itself,
        uses ``use_best`` and ``early_stop`` and gives the result. Must end
        with 1.

    Raises
    ------
    ValueError
        Unknown optimizer, random start or loss, ``epsilon <= 0``,
        ``steps < 1``, ``restarts < 1``, a bad ``epsilon_schedule``,
        smoothing with a Frank-Wolfe or APGD optimizer, or an option the
        optimizer rejects (its own message, naming the option and its
        allowed range).
    TypeError
        An option the optimizer does not take.

    Notes
    -----
    **Budget.** :meth:`reachable_norm` says how large (in the attack's norm)
    any iterate can get for data of a given shape in the box, so a caller
    can warn before attacking when a configuration cannot spend its budget
    (:meth:`budget_note` words it); ``L1qFrankWolfe`` with
    ``spend_budget=False`` is the case that needs it (``k`` kept entries,
    each moving by at most the data range).

    Examples
    --------
    A sparse L1 attack that keeps the top 10 % of each gradient (2 of the 16 pixels):

    >>> import torch
    >>> from rai_probe.perturbations import Attack
    >>> attack = Attack("L1qFrankWolfe", epsilon=5.0, steps=20, options={"q": 0.9})
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> images, labels = torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0])
    >>> result = attack.run(model, images, labels)
    >>> l1 = (result.xadv - images).flatten(1).abs().sum(dim=1)
    >>> bool((l1 <= 5.0 + 1e-4).all()), bool(((result.xadv >= 0) & (result.xadv <= 1)).all())
    (True, True)

    APGD-L1 with the 3ε → 2ε → ε schedule, the DLR loss and two random restarts:

    >>> apgd = Attack("L1APGD", epsilon=5.0, steps=12, loss="dlr", restarts=2, random_init="l1",
    ...               epsilon_schedule=[3, 2, 1], use_best=True)
    >>> result = apgd.run(model, images, labels, generator=torch.Generator().manual_seed(0))
    >>> bool(((result.xadv - images).flatten(1).abs().sum(dim=1) <= 5.0 + 1e-4).all())
    True

    Bad options fail when the attack is described, not when it runs:

    >>> Attack("L1qFrankWolfe", epsilon=5.0, options={"q": 1.5})
    Traceback (most recent call last):
    ...
    rai_probe.errors.SettingError: L1qFrankWolfe: option `q` must be a real number within [0, 1]; got q=1.5
    """

    optimizer: str
    epsilon: float
    steps: int = 10
    lr: float = 1.0
    options: Mapping[str, Any] = field(default_factory=dict)
    random_init: str | None = None
    smoothing_sigma: float | None = None
    targeted: bool = False
    use_best: bool = False
    early_stop: bool = False
    confidence: float | None = None
    data_range: tuple[float, float] | None = (0.0, 1.0)
    loss: str = "ce"
    restarts: int = 1
    epsilon_schedule: tuple[float, ...] | None = None
    check_every: int = 1

    def __post_init__(self) -> None:
        if self.optimizer not in ATTACK_OPTIMIZERS:
            raise SettingError(
                f"Attack: unknown `optimizer` {self.optimizer!r}; choose one of {', '.join(ATTACK_OPTIMIZERS)}",
                setting="optimizer",
                value=self.optimizer,
            )
        _check_number("epsilon", self.epsilon, "a finite number > 0", low_open=0.0)
        for name in ("steps", "restarts", "check_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SettingError(f"Attack: `{name}` must be an integer >= 1; got {name}={value!r}",
                                   setting=name, value=value)
        _check_number("lr", self.lr, "a finite number > 0", low_open=0.0)
        if self.random_init is not None and self.random_init not in RANDOM_INITS:
            raise SettingError(
                f"Attack: `random_init` must be None or one of {', '.join(RANDOM_INITS)}; "
                f"got random_init={self.random_init!r}",
                setting="random_init",
                value=self.random_init,
            )
        if self.loss not in LOSSES:
            raise SettingError(
                f"Attack: `loss` must be one of {', '.join(LOSSES)}; got loss={self.loss!r}",
                setting="loss",
                value=self.loss,
            )
        object.__setattr__(self, "epsilon_schedule", _check_schedule(self.epsilon_schedule))
        if self.epsilon_schedule is not None and self.steps < len(self.epsilon_schedule):
            raise SettingError(
                f"Attack: `steps` must be at least the number of stages of epsilon_schedule "
                f"({len(self.epsilon_schedule)}); got steps={self.steps}",
                setting="steps",
                value=self.steps,
            )
        if self.smoothing_sigma is not None:
            _check_number("smoothing_sigma", self.smoothing_sigma, "None or a finite number > 0", low_open=0.0)
            if self.optimizer not in _TAKES_LR:
                raise SettingError(
                    "Attack: `smoothing_sigma` needs a projected optimizer (the Frank-Wolfe family "
                    "steps to a vertex of the ball, not along the smoothed gradient, and APGD needs "
                    f"the per-image losses a chain does not pass); got {self.optimizer}",
                    setting="smoothing_sigma",
                    value=self.smoothing_sigma,
                )
        for flag in ("targeted", "use_best", "early_stop"):
            value = getattr(self, flag)
            if not isinstance(value, bool):
                raise SettingTypeError(
                    f"Attack: `{flag}` must be True or False; got {flag}={value!r}", setting=flag, value=value
                )
        if self.confidence is not None:
            _check_number("confidence", self.confidence, "None or a number within [0, 1]", low=0.0, high=1.0)
        if self.data_range is not None:
            _check_data_range(self.data_range)
        if not isinstance(self.options, Mapping):
            raise SettingTypeError(
                f"Attack: `options` must be a mapping of optimizer options; got {self.options!r}",
                setting="options",
                value=self.options,
            )
        object.__setattr__(self, "options", dict(self.options))
        # every option is checked now, with the optimizer's own messages; the range of param_ndim
        # depends on the data's shape and is checked by check_shape
        self._build_on(_probe_param(self.options.get("param_ndim")))

    def _build_on(self, param: Tensor) -> torch.optim.Optimizer:
        """Build the optimizer on ``param`` (checks every option); unknown options name themselves."""
        factory = self.make_optimizer()
        accepted = _accepted_options(self.optimizer_class, self.options)
        unknown = sorted(name for name in self.options if accepted is not None and name not in accepted)
        if unknown:
            raise UnknownSettingError(
                f"Attack: {self.optimizer} does not take the option `{unknown[0]}`",
                setting=unknown[0],
                value=self.options[unknown[0]],
            )
        return factory([param], **self._optimizer_kwargs(self.epsilon, self.steps))

    def check_shape(self, data_shape: tuple[int, ...]) -> None:
        """Check the options against perturbations of data of shape ``data_shape`` (``(N, ...)``).

        Options whose range depends on the perturbation's shape (``param_ndim``)
        are checked by building the optimizer once on a zero perturbation of
        one datum of that shape.

        Raises
        ------
        SettingError
            An option that does not fit the shape (``setting`` names it).

        Examples
        --------
        >>> attack = Attack("L2ProjectedOptim", epsilon=1.0, options={"param_ndim": 3})
        >>> attack.check_shape((8, 1, 28, 28))  # rows of (C, H, W): fine
        >>> attack.check_shape((8, 784))
        Traceback (most recent call last):
        ...
        rai_probe.errors.SettingError: Attack: option `param_ndim` must be None or an integer within [-2, 2] for perturbations of data of shape (8, 784); got param_ndim=3
        """
        data_shape = tuple(data_shape)
        param_ndim = self.options.get("param_ndim", -1)
        limit = max(len(data_shape), 1)
        if isinstance(param_ndim, int) and not isinstance(param_ndim, bool) and abs(param_ndim) > limit:
            raise SettingError(
                f"Attack: option `param_ndim` must be None or an integer within [-{limit}, {limit}] for "
                f"perturbations of data of shape {data_shape}; got param_ndim={param_ndim}",
                setting="param_ndim",
                value=param_ndim,
            )
        self._build_on(torch.zeros((1, *data_shape[1:]) if data_shape else (1,), requires_grad=True))

    @property
    def lr_is_step_length(self) -> bool:
        """Whether ``lr`` is the length of each step (the projected family), so fewer steps travel less far.

        The Frank-Wolfe and APGD families set their own steps relative to ε.

        Examples
        --------
        >>> Attack("L2ProjectedOptim", epsilon=1.0).lr_is_step_length, Attack("L1FrankWolfe", epsilon=1.0).lr_is_step_length
        (True, False)
        """
        return self.optimizer in _TAKES_LR

    @property
    def norm(self) -> str:
        """The norm of the attack's ε-ball: ``"l1"``, ``"l2"`` or ``"linf"``."""
        return ATTACK_NORMS[self.optimizer]

    def reachable_norm(
        self, data_shape: tuple[int, ...], data_range: tuple[float, float] | None | str = "attack"
    ) -> float:
        """The largest norm (in the attack's norm) that any iterate can reach for such data.

        An iterate is a perturbation of one datum of ``data_shape[1:]`` (one
        row per datum, or rows as the ``param_ndim`` option makes them),
        inside the ε-ball and, with a data range, inside the box
        ``[low - x, high - x]`` of a datum ``x`` in the range: each entry
        moves by at most ``high - low``. So the bound is
        ``min(ε, n · (high - low))`` for L1 (``n`` entries per row),
        ``min(ε, sqrt(n) · (high - low))`` for L2 and ``min(ε, high - low)``
        for L∞; ε itself without a data range. An ``L1qFrankWolfe`` with
        ``spend_budget=False`` keeps ``k = round((1 - q) n)`` entries per
        vertex (the fewest ``dq`` may draw), so its iterates stay within
        ``min(ε, k · (high - low))``: when that is below ε, the configuration
        cannot spend its budget (lower ``q``, or keep ``spend_budget=True``).
        With an ``epsilon_schedule`` the bound is that of the last stage, at
        ``epsilon`` (earlier stages explore larger balls; only the last one's
        iterates are returned).

        Parameters
        ----------
        data_shape : tuple of int
            The data's shape, ``(N, ...)`` (as for :meth:`check_shape`).
        data_range : (low, high) or None, optional
            The box; default: the attack's own ``data_range``.

        Returns
        -------
        float
            At most ``epsilon``; ``math.inf`` never occurs, since every
            attack has its ε-ball.

        Examples
        --------
        >>> fw = Attack("L1qFrankWolfe", epsilon=10.0, options={"q": 0.99})
        >>> fw.reachable_norm((1, 1, 28, 28))                 # spends the budget: 784 pixels could move
        10.0
        >>> fw.with_(options={"q": 0.99, "spend_budget": False}).reachable_norm((1, 1, 28, 28))
        8.0
        >>> Attack("LinfProjectedOptim", epsilon=2.0).reachable_norm((1, 3, 8, 8), data_range=(0, 1))
        1.0
        """
        low_high = self.data_range if data_range == "attack" else data_range
        shape = tuple(data_shape)
        rows = rows_shape(shape if shape else (1,), self.options.get("param_ndim", -1))
        n = math.prod(rows[1:])
        if low_high is None:
            return float(self.epsilon)
        width = float(low_high[1]) - float(low_high[0])
        if self.norm == "l1":
            entries = n
            if self.optimizer in _L1Q_FW and not self.options.get("spend_budget", True):
                q, dq = self.options.get("q", 0.0), self.options.get("dq", 0.0)
                entries = _F.num_kept(n, min(1.0, q + dq))
            reach = entries * width
        elif self.norm == "l2":
            reach = math.sqrt(n) * width
        else:
            reach = width if n else 0.0
        return float(min(self.epsilon, reach))

    def budget_note(self, data_shape: tuple[int, ...], data_range: tuple[float, float] | None | str = "attack") -> str | None:
        """One line saying why the attack cannot spend its budget on such data, or ``None`` if it can.

        Examples
        --------
        >>> fw = Attack("L1qFrankWolfe", epsilon=10.0, options={"q": 0.99, "spend_budget": False})
        >>> print(fw.budget_note((16, 1, 28, 28)))
        L1qFrankWolfe with q=0.99 and spend_budget=False keeps 8 of 784 entries per step, each moving by at most 1 in data_range [0.0, 1.0]: no iterate can exceed an L1 norm of 8 < epsilon=10 (lower q, or set spend_budget=true)
        >>> Attack("L1qFrankWolfe", epsilon=10.0, options={"q": 0.99}).budget_note((16, 1, 28, 28)) is None
        True
        """
        reach = self.reachable_norm(data_shape, data_range)
        if reach >= self.epsilon:
            return None
        low_high = self.data_range if data_range == "attack" else data_range
        width = float(low_high[1]) - float(low_high[0])
        shape = tuple(data_shape)
        n = math.prod(rows_shape(shape if shape else (1,), self.options.get("param_ndim", -1))[1:])
        norm = {"l1": "L1", "l2": "L2", "linf": "L∞"}[self.norm]
        where = f"in data_range [{float(low_high[0])}, {float(low_high[1])}]"
        if self.optimizer in _L1Q_FW and not self.options.get("spend_budget", True):
            k = round(reach / width) if width else 0
            return (
                f"{self.optimizer} with q={self.options.get('q')} and spend_budget=False keeps {k} of "
                f"{n} entries per step, each moving by at most {width:g} {where}: no iterate can exceed "
                f"an {norm} norm of {reach:g} < epsilon={self.epsilon:g} (lower q, or set spend_budget=true)"
            )
        return (
            f"{self.optimizer}: perturbations of {n} entries, each moving by at most {width:g} {where}, "
            f"cannot exceed an {norm} norm of {reach:g} < epsilon={self.epsilon:g}"
        )

    @property
    def optimizer_class(self) -> type[torch.optim.Optimizer]:
        """The optimizer class of :mod:`rai_probe.optim` that :attr:`optimizer` names."""
        return getattr(_optim, self.optimizer)

    def make_optimizer(self) -> Callable[..., torch.optim.Optimizer]:
        """A factory ``f(params, **kwargs)`` building the (possibly smoothed) optimizer.

        With ``smoothing_sigma`` the optimizer is a chain: Laplacian smoothing
        of each gradient, then the optimizer's own transform and projection,
        around one SGD step of size ``lr``.
        """
        if self.smoothing_sigma is None:
            return self.optimizer_class
        smoothing = functools.partial(LaplacianSmoothing, sigma=self.smoothing_sigma)
        optimizer_class = self.optimizer_class

        def smoothed(params: Any, lr: float = 1.0, **options: Any) -> torch.optim.Optimizer:
            return ChainedParamTransformingOptimizer(
                smoothing, functools.partial(optimizer_class, **options), params=params, lr=lr
            )

        return smoothed

    def _optimizer_kwargs(self, epsilon: float | Tensor, steps: int) -> dict[str, Any]:
        kwargs = {"epsilon": epsilon, **self.options}
        if self.optimizer in _TAKES_LR:
            kwargs["lr"] = self.lr
        if takes_option(self.optimizer_class, "total_steps"):
            kwargs.setdefault("total_steps", steps)
        return kwargs

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any], *, where: str = "attack") -> "Attack":
        """Build an attack from plain data (a config entry); an unknown key is an error naming it.

        This is the one spelling of an attack that every config describes:
        ``rai_probe/configs/attack/*.yaml`` (the probe), the entries of
        ``rai_probe/configs/training/eval_attacks/*.yaml`` and the ``attack`` of
        ``rai_probe/configs/training/train.yaml``. Its keys are the fields of
        :class:`Attack`, plus:

        * ``q``, ``dq`` (:data:`OPTION_ALIASES`): the sparsity options, which
          may be written at the top level (``q: 0.99``) instead of inside
          ``options`` (``options: {q: 0.99}``); they are folded into
          ``options``. ``None`` means not given. Giving one both ways with
          different values is an error naming it.
        * ``name``: a label of the config entry (a string or ``None``), not
          part of the attack.

        ``lr: None`` means the step size of PGD (Madry et al., 2018):
        ``2.5 * epsilon / steps`` (``steps`` counting all stages of an
        ``epsilon_schedule``), so a step count and a budget are enough.

        Values are taken as they are (a string is never read as a number or a
        boolean); integer ``epsilon`` and ``data_range`` bounds become floats,
        and an ``epsilon_schedule`` list a tuple.

        Raises
        ------
        UnknownSettingError
            A key that is not a field of :class:`Attack`, an alias or
            ``name`` (``setting`` names it).
        SettingError
            A value the attack refuses (see :class:`Attack`), or an alias
            given twice with different values (``setting`` is the alias).

        Examples
        --------
        >>> Attack.from_dict({"optimizer": "L2ProjectedOptim", "epsilon": 1.5, "steps": 5}).lr
        1.0
        >>> Attack.from_dict({"optimizer": "L2ProjectedOptim", "epsilon": 1.5, "steps": 10, "lr": None}).lr
        0.375
        >>> Attack.from_dict({"optimizer": "L1APGD", "epsilon": 10, "restarts": 2}).restarts
        2
        >>> sparse = {"name": "l1q", "optimizer": "L1qFrankWolfe", "epsilon": 10, "q": 0.99, "dq": None}
        >>> Attack.from_dict(sparse) == Attack("L1qFrankWolfe", epsilon=10.0, options={"q": 0.99})
        True
        >>> Attack.from_dict({**sparse, "options": {"q": 0.9}})
        Traceback (most recent call last):
        ...
        rai_probe.errors.SettingError: attack: `q` is given twice, as q=0.99 and options.q=0.9; give it once
        >>> Attack.from_dict({"optimizer": "L2ProjectedOptim", "epsilon": 1.5, "stpes": 5})
        Traceback (most recent call last):
        ...
        rai_probe.errors.UnknownSettingError: attack: unknown setting(s) ['stpes']; allowed: optimizer, epsilon, steps, lr, options, random_init, smoothing_sigma, targeted, use_best, early_stop, confidence, data_range, loss, restarts, epsilon_schedule, check_every, q, dq, name
        """
        if not isinstance(settings, Mapping):
            raise SettingTypeError(f"{where}: must be a mapping of settings; got {settings!r}", setting=None, value=settings)
        allowed = [f.name for f in fields(cls)] + list(OPTION_ALIASES) + ["name"]
        unknown = sorted(set(settings) - set(allowed))
        if unknown:
            raise UnknownSettingError(
                f"{where}: unknown setting(s) {unknown}; allowed: {', '.join(allowed)}",
                setting=unknown[0],
                value=settings[unknown[0]],
            )
        missing = [name for name in ("optimizer", "epsilon") if name not in settings]
        if missing:
            raise SettingTypeError(f"{where}: `{missing[0]}` is required", setting=missing[0])
        values = dict(settings)
        label = values.pop("name", None)
        if label is not None and not isinstance(label, str):
            raise SettingTypeError(f"{where}: `name` must be a string (a label); got name={label!r}",
                                   setting="name", value=label)
        aliases = {key: values.pop(key) for key in OPTION_ALIASES if key in values}
        if values.get("options") is None:
            values.pop("options", None)
        values = _fold_aliases(values, aliases, where)
        if isinstance(values.get("data_range"), (list, tuple)):
            values["data_range"] = tuple(_as_float(v) for v in values["data_range"])
        values["epsilon"] = _as_float(values["epsilon"])
        if "lr" in values and values["lr"] is None:
            values["lr"] = _pgd_step(values["epsilon"], values.get("steps", 10))
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain data that :meth:`from_dict` turns back into an equal attack."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["options"] = dict(self.options)
        values["data_range"] = list(self.data_range) if self.data_range is not None else None
        values["epsilon_schedule"] = list(self.epsilon_schedule) if self.epsilon_schedule is not None else None
        return values

    def with_(self, **changes: Any) -> "Attack":
        """A copy with some fields changed (checked again)."""
        return replace(self, **changes)

    def run(
        self,
        model: Callable[[Tensor], Tensor],
        images: Tensor,
        target: Tensor,
        *,
        generator: torch.Generator | None = None,
        progress: bool = False,
        epsilon: Tensor | None = None,
        start: Tensor | None = None,
    ) -> AttackResult:
        """Attack ``model`` at ``images``: see :func:`~rai_probe.perturbations.gradient_ascent`.

        ``target`` holds the true labels (untargeted) or the target classes
        (targeted); ``generator`` seeds the random starts and any random
        tie-breaking of the optimizer. With ``restarts > 1`` the runs are
        merged per image (:func:`~rai_probe.perturbations.random_restart`
        with ``prefer_success=True``): ``loss_trace`` then has one row per
        restart; with an ``epsilon_schedule`` each row holds the stages one
        after the other, and ``steps_run`` and ``first_success_step`` count
        the steps of all stages.

        ``epsilon``, a tensor of shape ``(N,)`` of finite radii > 0, gives
        each image its own radius instead of the attack's ``epsilon`` (an
        ``epsilon_schedule`` scales each). ``start``, a perturbation of the
        images' shape, is the first iterate instead of a zero or random
        start (a warm start), after its exact projection onto each image's
        ball and the data's box, so that every iterate stays feasible.

        Examples
        --------
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
        >>> images = torch.rand(3, 1, 2, 2)
        >>> attack = Attack("L2ProjectedOptim", epsilon=1.0, steps=3, lr=0.5, data_range=(0.0, 1.0))
        >>> radii = torch.tensor([0.1, 0.2, 0.4])
        >>> result = attack.run(model, images, torch.tensor([0, 1, 0]), epsilon=radii)
        >>> bool(((result.xadv - images).flatten(1).norm(dim=1) <= radii * (1 + 1e-5)).all())
        True
        """
        criterion = attack_criterion(self.loss, self.targeted)
        radius = self._checked_radius(epsilon, images)
        if start is not None and tuple(start.shape) != tuple(images.shape):
            raise SettingError(
                f"Attack.run: `start` must have the images' shape {tuple(images.shape)}; got {tuple(start.shape)}",
                setting="start",
            )

        def one_run(**_: Any) -> AttackResult:
            return self._run_once(model, images, target, generator, progress, criterion, radius, start)

        if self.restarts == 1:
            return one_run()
        return random_restart(one_run, self.restarts, prefer_success=True)(targeted=self.targeted)

    def _run_once(
        self,
        model: Callable[[Tensor], Tensor],
        images: Tensor,
        target: Tensor,
        generator: torch.Generator | None,
        progress: bool,
        criterion: Callable[[Tensor, Tensor], Tensor] | None,
        radius: float | Tensor | None = None,
        start: Tensor | None = None,
    ) -> AttackResult:
        factors = self.epsilon_schedule or (1.0,)
        plan = list(zip(factors, stage_steps(self.steps, len(factors))))
        radius = self.epsilon if radius is None else radius
        start = None if start is None else start.detach().to(images.dtype if images.is_floating_point() else torch.float32)
        stages: list[AttackResult] = []
        for index, (factor, steps) in enumerate(plan):
            epsilon = radius * factor
            last = index == len(plan) - 1
            perturbation = self._perturbation(images, epsilon, start, generator)
            kwargs = self._optimizer_kwargs(epsilon, steps)
            if generator is not None and takes_option(self.optimizer_class, "generator"):
                kwargs.setdefault("generator", generator)
            result = gradient_ascent(
                model=model,
                data=images,
                target=target,
                optimizer=self.make_optimizer(),
                steps=steps,
                perturbation_model=perturbation,
                targeted=self.targeted,
                use_best=(("sparsest" if self.norm == "l1" else "success") if self.use_best else False)
                if last else "loss",
                early_stop=self.early_stop and last,
                check_every=self.check_every,
                confidence=self.confidence,
                data_range=self.data_range,
                progress=progress,
                criterion=criterion,
                **kwargs,
            )
            stages.append(result)
            start = (result.xadv - images.to(result.xadv.dtype)).detach()
        return _chain(stages)

    def _checked_radius(self, epsilon: Tensor | None, images: Tensor) -> Tensor | None:
        """A per-image radius tensor checked: shape ``(N,)``, finite and > 0 (the optimizers' own radius check)."""
        if epsilon is None:
            return None
        n = images.shape[0] if images.ndim else 1
        if not isinstance(epsilon, Tensor) or tuple(epsilon.shape) != (n,):
            raise SettingError(
                f"Attack.run: `epsilon` must be a float tensor of shape ({n},), one radius per image; got {epsilon!r}",
                setting="epsilon",
                value=epsilon,
            )
        _options.radius("Attack.run", "epsilon", epsilon)
        return epsilon.detach().to(images.device)

    def _perturbation(
        self, images: Tensor, epsilon: float | Tensor, start: Tensor | None, generator: torch.Generator | None
    ) -> Any:
        """The perturbation model of a stage: a random or zero start, or the previous stage's point."""
        if start is not None:
            lower = upper = None
            if self.data_range is not None:
                data = images.to(start.dtype)
                lower, upper = self.data_range[0] - data, self.data_range[1] - data
            begin = _project_start_(start.clone(), self.norm, epsilon, lower, upper)

            def from_previous_stage(delta: Tensor) -> Tensor:
                return delta.copy_(begin)

            return functools.partial(AdditivePerturbation, init_fn=from_previous_stage)
        if self.random_init is None:
            return AdditivePerturbation
        init_kwargs: dict[str, Any] = {"epsilon": epsilon}
        if generator is not None:
            init_kwargs["generator"] = generator
        if self.random_init in _BOX_AWARE_INITS and self.data_range is not None:
            data = images.to(torch.float64 if images.dtype == torch.float64 else torch.float32)
            init_kwargs["bounds"] = (self.data_range[0] - data, self.data_range[1] - data)
        # the solver clamps this start into data_range (moving entries toward 0 keeps it in the ball)
        return functools.partial(AdditivePerturbation, init_fn=RANDOM_INITS[self.random_init], **init_kwargs)

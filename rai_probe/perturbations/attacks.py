"""Named attack recipes: an optimizer of :mod:`rai_probe.optim`, its options and a solver run.

An :class:`Attack` is the plain-data description of one attack (which
optimizer, the ε-ball, steps, step size, sparsity, random start, goal) that
configuration files, adversarial training and the probe CLI share. It is
checked when it is built, by constructing its optimizer once on a dummy
parameter, so a wrong option fails before any model runs.
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
from ..errors import SettingError, SettingTypeError, UnknownSettingError
from ..optim import ChainedParamTransformingOptimizer, LaplacianSmoothing
from .initializers import uniform_like_l1_n_ball_, uniform_like_l2_n_ball_, uniform_like_linf_n_ball_
from .models import AdditivePerturbation
from .solvers import AttackResult, gradient_ascent

__all__ = ["Attack", "ATTACK_OPTIMIZERS", "RANDOM_INITS"]

#: Optimizers an :class:`Attack` may name: those that keep the perturbation in an ε-ball.
ATTACK_OPTIMIZERS: tuple[str, ...] = (
    "L1qFrankWolfe",
    "L1FrankWolfe",
    "L2FrankWolfe",
    "LinfFrankWolfe",
    "L1ProjectedOptim",
    "L2ProjectedOptim",
    "LinfProjectedOptim",
)

#: Random starts inside the ε-ball, by the ball's norm.
RANDOM_INITS: dict[str, Callable[..., Any]] = {
    "l1": uniform_like_l1_n_ball_,
    "l2": uniform_like_l2_n_ball_,
    "linf": uniform_like_linf_n_ball_,
}


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


@dataclass(frozen=True)
class Attack:
    """One attack: an ε-ball-constrained optimizer run by :func:`gradient_ascent`.

    Parameters
    ----------
    optimizer : str
        Name of the optimizer in :mod:`rai_probe.optim`, one of
        :data:`ATTACK_OPTIMIZERS`.
    epsilon : float
        Radius of each image's ε-ball, > 0 (in the optimizer's norm).
    steps : int, optional (default=10)
        Optimizer steps, >= 1.
    lr : float, optional (default=1.0)
        Step size of the inner SGD (for the projected family the step length
        in the ball's norm, since gradients are normalized; the Frank-Wolfe
        family ignores it and uses its own ``2 / (t + 2)`` schedule).
    options : Mapping, optional
        Further optimizer options, e.g. ``{"q": 0.99, "dq": 0.0}`` for the
        sparse optimizers.
    random_init : {"l1", "l2", "linf"} or None, optional (default=None)
        Start from a uniform draw in the ball of that norm and radius
        ``epsilon`` instead of from zero.
    smoothing_sigma : float or None, optional (default=None)
        Laplacian-smooth each gradient (:class:`~rai_probe.optim.LaplacianSmoothing`,
        one ring per image) with this ``sigma`` before the optimizer's own
        transform. Not with the Frank-Wolfe family.
    targeted : bool, optional (default=False)
        Lower the loss toward the given targets instead of raising it.
    use_best, early_stop, confidence
        See :func:`~rai_probe.perturbations.gradient_ascent`.
    data_range : (float, float) or None, optional (default=(0.0, 1.0))
        Valid input range the perturbed images stay in.

    Raises
    ------
    ValueError
        Unknown optimizer or random start, ``epsilon <= 0``, ``steps < 1``,
        smoothing with a Frank-Wolfe optimizer, or an option the optimizer
        rejects (its own message, naming the option and its allowed range).
    TypeError
        An option the optimizer does not take.

    Examples
    --------
    A sparse L1 attack that keeps the top 10 % of each gradient (2 of the 16 pixels):

    >>> import torch
    >>> from rai_probe.perturbations.attacks import Attack
    >>> attack = Attack("L1qFrankWolfe", epsilon=5.0, steps=20, options={"q": 0.9})
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> images, labels = torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0])
    >>> result = attack.run(model, images, labels)
    >>> l1 = (result.xadv - images).flatten(1).abs().sum(dim=1)
    >>> bool((l1 <= 5.0 + 1e-4).all()), bool(((result.xadv >= 0) & (result.xadv <= 1)).all())
    (True, True)

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

    def __post_init__(self) -> None:
        if self.optimizer not in ATTACK_OPTIMIZERS:
            raise SettingError(
                f"Attack: unknown `optimizer` {self.optimizer!r}; choose one of {', '.join(ATTACK_OPTIMIZERS)}",
                setting="optimizer",
                value=self.optimizer,
            )
        _check_number("epsilon", self.epsilon, "a finite number > 0", low_open=0.0)
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise SettingError(f"Attack: `steps` must be an integer >= 1; got steps={self.steps!r}",
                               setting="steps", value=self.steps)
        _check_number("lr", self.lr, "a finite number > 0", low_open=0.0)
        if self.random_init is not None and self.random_init not in RANDOM_INITS:
            raise SettingError(
                f"Attack: `random_init` must be None or one of {', '.join(RANDOM_INITS)}; "
                f"got random_init={self.random_init!r}",
                setting="random_init",
                value=self.random_init,
            )
        if self.smoothing_sigma is not None:
            _check_number("smoothing_sigma", self.smoothing_sigma, "None or a finite number > 0", low_open=0.0)
            if "FrankWolfe" in self.optimizer:
                raise SettingError(
                    "Attack: `smoothing_sigma` needs a projected optimizer (the Frank-Wolfe family "
                    f"steps to a vertex of the ball, not along the smoothed gradient); got {self.optimizer}",
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
        return factory([param], **self._optimizer_kwargs(self.epsilon))

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

    def _optimizer_kwargs(self, epsilon: float | Tensor) -> dict[str, Any]:
        kwargs = {"epsilon": epsilon, **self.options}
        if "FrankWolfe" not in self.optimizer:
            kwargs["lr"] = self.lr
        return kwargs

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any], *, where: str = "attack") -> "Attack":
        """Build an attack from plain data (a config entry); an unknown key is an error naming it.

        Values are taken as they are (a string is never read as a number or a
        boolean); integer ``epsilon`` and ``data_range`` bounds become floats.

        Raises
        ------
        UnknownSettingError
            A key that is not a field of :class:`Attack` (``setting`` names it).
        SettingError
            A value the attack refuses (see :class:`Attack`).

        Examples
        --------
        >>> Attack.from_dict({"optimizer": "L2ProjectedOptim", "epsilon": 1.5, "steps": 5}).lr
        1.0
        >>> Attack.from_dict({"optimizer": "L2ProjectedOptim", "epsilon": 1.5, "stpes": 5})
        Traceback (most recent call last):
        ...
        rai_probe.errors.UnknownSettingError: attack: unknown setting(s) ['stpes']; allowed: optimizer, epsilon, steps, lr, options, random_init, smoothing_sigma, targeted, use_best, early_stop, confidence, data_range
        """
        if not isinstance(settings, Mapping):
            raise SettingTypeError(f"{where}: must be a mapping of settings; got {settings!r}", setting=None, value=settings)
        allowed = [f.name for f in fields(cls)]
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
        if values.get("options") is None:
            values.pop("options", None)
        if isinstance(values.get("data_range"), (list, tuple)):
            values["data_range"] = tuple(_as_float(v) for v in values["data_range"])
        if "epsilon" in values:
            values["epsilon"] = _as_float(values["epsilon"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain data that :meth:`from_dict` turns back into an equal attack."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["options"] = dict(self.options)
        values["data_range"] = list(self.data_range) if self.data_range is not None else None
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
    ) -> AttackResult:
        """Attack ``model`` at ``images``: see :func:`~rai_probe.perturbations.gradient_ascent`.

        ``target`` holds the true labels (untargeted) or the target classes
        (targeted); ``generator`` seeds the random start and any random
        tie-breaking of the optimizer.
        """
        if self.random_init is None:
            perturbation = AdditivePerturbation
        else:
            init_kwargs: dict[str, Any] = {"epsilon": self.epsilon}
            if generator is not None:
                init_kwargs["generator"] = generator
            # the solver clamps this start into data_range (moving entries toward 0 keeps it in the ball)
            perturbation = functools.partial(
                AdditivePerturbation, init_fn=RANDOM_INITS[self.random_init], **init_kwargs
            )

        kwargs = self._optimizer_kwargs(self.epsilon)
        if generator is not None and "generator" in getattr(self.optimizer_class, "_all_options", {}):
            kwargs.setdefault("generator", generator)
        return gradient_ascent(
            model=model,
            data=images,
            target=target,
            optimizer=self.make_optimizer(),
            steps=self.steps,
            perturbation_model=perturbation,
            targeted=self.targeted,
            use_best=self.use_best,
            early_stop=self.early_stop,
            confidence=self.confidence,
            data_range=self.data_range,
            progress=progress,
            **kwargs,
        )

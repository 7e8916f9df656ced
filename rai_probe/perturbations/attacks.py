"""Named attack recipes: an optimizer of :mod:`rai_probe.optim`, its options and a solver run.

An :class:`Attack` is the plain-data description of one attack (which
optimizer, the ε-ball, steps, step size, sparsity, random start, goal) that
configuration files, adversarial training and the probe CLI share. It is
checked when it is built, by constructing its optimizer once on a dummy
parameter, so a wrong option fails before any model runs.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from .. import optim as _optim
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


def _probe_param() -> Tensor:
    return torch.zeros(2, 8, requires_grad=True)


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
    A sparse L1 attack that keeps the top 1 % of each gradient:

    >>> import torch
    >>> from rai_probe.perturbations.attacks import Attack
    >>> attack = Attack("L1qFrankWolfe", epsilon=5.0, steps=20, options={"q": 0.99})
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
    ValueError: L1qFrankWolfe: option `q` must be a real number within [0, 1]; got q=1.5
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
            raise ValueError(
                f"Attack: unknown `optimizer` {self.optimizer!r}; choose one of {', '.join(ATTACK_OPTIMIZERS)}"
            )
        if isinstance(self.epsilon, bool) or not isinstance(self.epsilon, (int, float)) or not self.epsilon > 0:
            raise ValueError(f"Attack: `epsilon` must be a number > 0; got epsilon={self.epsilon!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"Attack: `steps` must be an integer >= 1; got steps={self.steps!r}")
        if self.random_init is not None and self.random_init not in RANDOM_INITS:
            raise ValueError(
                f"Attack: `random_init` must be None or one of {', '.join(RANDOM_INITS)}; "
                f"got random_init={self.random_init!r}"
            )
        if self.smoothing_sigma is not None and "FrankWolfe" in self.optimizer:
            raise ValueError(
                "Attack: `smoothing_sigma` needs a projected optimizer (the Frank-Wolfe family "
                f"steps to a vertex of the ball, not along the smoothed gradient); got {self.optimizer}"
            )
        object.__setattr__(self, "options", dict(self.options))
        try:  # validates every option now, with the optimizer's own messages
            self.make_optimizer()([_probe_param()], **self._optimizer_kwargs(self.epsilon))
        except TypeError as error:
            unexpected = re.search(r"unexpected keyword argument '(\w+)'", str(error))
            if unexpected is None:
                raise
            raise TypeError(
                f"Attack: {self.optimizer} does not take the option `{unexpected.group(1)}`"
            ) from None

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
        """Build an attack from plain data (a config entry); unknown keys are a ``ValueError``.

        Examples
        --------
        >>> Attack.from_dict({"optimizer": "L2ProjectedOptim", "epsilon": 1.5, "steps": 5}).lr
        1.0
        >>> Attack.from_dict({"optimizer": "L2ProjectedOptim", "epsilon": 1.5, "stpes": 5})
        Traceback (most recent call last):
        ...
        ValueError: attack: unknown setting(s) ['stpes']; allowed: optimizer, epsilon, steps, lr, options, random_init, smoothing_sigma, targeted, use_best, early_stop, confidence, data_range
        """
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(settings) - set(allowed))
        if unknown:
            raise ValueError(f"{where}: unknown setting(s) {unknown}; allowed: {', '.join(allowed)}")
        values = dict(settings)
        if values.get("options") is None:
            values.pop("options", None)
        if values.get("data_range") is not None:
            values["data_range"] = tuple(float(v) for v in values["data_range"])
        if "epsilon" in values and isinstance(values["epsilon"], int) and not isinstance(values["epsilon"], bool):
            values["epsilon"] = float(values["epsilon"])
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

"""The ``gradient_ascent`` solver: any rai_probe optimizer against a frozen classifier."""

from __future__ import annotations

import functools
import logging
import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from ..errors import SettingError, SettingTypeError
from ..optim.constraints import bound_rows
from ..optim.nonfinite import SkipsNonFiniteRows
from .models import AdditivePerturbation

__all__ = ["AttackResult", "gradient_ascent", "random_restart", "frozen_eval", "takes_option", "optimizer_class", "goal_met"]

log = logging.getLogger(__name__)

@dataclass
class AttackResult:
    """What :func:`gradient_ascent` returns; unpacks as the reference ``(xadv, losses)``.

    Attributes
    ----------
    xadv : Tensor, shape-(N, ...)
        The perturbed data (the best iterate per datum with ``use_best``).
    losses : Tensor
        The criterion's value at ``xadv``, in the criterion's own sign.
    loss_trace : Tensor, shape-(S,)
        ``reduction_fn`` of the losses at every evaluated iterate (``S`` is the
        number of steps run plus the final evaluation). After
        :func:`random_restart`: shape ``(R, S)``, NaN-padded.
    datum_loss_trace : Tensor, shape-(S, N), or None
        Per-datum losses at every evaluated iterate, when the criterion
        returns one loss per datum.
    success : Tensor of bool, shape-(N,), or None
        Whether ``xadv`` meets the goal: untargeted, the predicted class
        differs from ``target``; targeted, it equals ``target`` (with at least
        ``confidence`` softmax probability when given). ``None`` unless the
        model outputs ``(N, C)`` logits for integer class targets.
    first_success_step : Tensor of int64, shape-(N,), or None
        Index of the first evaluated iterate that met the goal (0 is the
        initial perturbation), -1 if none did.
    logits : Tensor
        The model's output at ``xadv``.
    steps_run : int
        Optimizer steps taken (fewer than ``steps`` when early stopping ended
        the run; 0 for an empty batch).
    skipped_rows : int or None
        Rows of the perturbation the optimizer left unchanged during the run
        because their gradient held a NaN or ±Inf, summed over steps (see
        :mod:`rai_probe.optim.nonfinite`; one row per datum for the default
        per-datum perturbation); ``None`` when the optimizer does not count
        them (e.g. a plain ``torch.optim`` optimizer). After
        :func:`random_restart`: the sum over all runs.
    """

    xadv: Tensor
    losses: Tensor
    loss_trace: Tensor
    datum_loss_trace: Tensor | None
    success: Tensor | None
    first_success_step: Tensor | None
    logits: Tensor
    steps_run: int
    skipped_rows: int | None = None

    def __iter__(self) -> Iterator[Tensor]:
        return iter((self.xadv, self.losses))

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> Tensor:
        return (self.xadv, self.losses)[index]


@contextmanager
def frozen_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode with no parameter gradients; restore both on exit, even on error.

    Examples
    --------
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout()).train()
    >>> with frozen_eval(net):
    ...     print(net.training, net[0].weight.requires_grad)
    False False
    >>> net.training, net[0].weight.requires_grad
    (True, True)
    """
    modes = [(module, module.training) for module in model.modules()]
    flags = [(param, param.requires_grad) for param in model.parameters()]
    try:
        model.eval()
        for param, _ in flags:
            param.requires_grad_(False)
        yield model
    finally:
        for module, training in modes:
            module.train(training)
        for param, requires_grad in flags:
            param.requires_grad_(requires_grad)


def _nonfinite_indices(t: Tensor, limit: int = 8) -> str:
    """The leading indices of ``t`` holding a NaN or ±Inf, for an error message (host sync)."""
    bad = ~torch.isfinite(t)
    rows = bad.reshape(t.shape[0], -1).any(dim=1) if t.ndim else bad.reshape(1)
    found = rows.nonzero().flatten().tolist()
    shown = ", ".join(map(str, found[:limit])) + (", ..." if len(found) > limit else "")
    return f"{len(found)} of {rows.numel()} (indices {shown})"


def _check_inputs(data: Any, target: Any, steps: Any, data_range: Any, confidence: Any) -> None:
    if not isinstance(data, Tensor):
        raise SettingTypeError(
            f"`data` must be a torch.Tensor; got {type(data).__name__}", setting="data", value=data
        )
    if not isinstance(target, Tensor):
        raise SettingTypeError(
            f"`target` must be a torch.Tensor; got {type(target).__name__}",
            setting="target",
            value=target,
        )
    if data.ndim == 0 or target.ndim == 0 or data.shape[0] != target.shape[0]:
        raise SettingError(
            "`data` and `target` must have the same batch size (leading dimension); "
            f"got data of shape {tuple(data.shape)} and target of shape {tuple(target.shape)}",
            setting="target" if data.ndim else "data",
            value=tuple(target.shape) if data.ndim else tuple(data.shape),
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise SettingError(f"`steps` must be an integer >= 1; got steps={steps!r}", setting="steps", value=steps)
    if data.is_floating_point() or data.is_complex():
        if not bool(torch.isfinite(data).all()):  # once per run, before any work
            raise SettingError(
                f"`data` must be finite: {_nonfinite_indices(data)} data hold NaN or Inf values, "
                "which no perturbation can make valid inputs (and NaN passes every range check)",
                setting="data",
            )
    if data_range is not None:
        try:
            low, high = (float(v) for v in data_range)
        except (TypeError, ValueError):
            raise SettingError(
                f"`data_range` must be a pair (low, high) of numbers; got data_range={data_range!r}",
                setting="data_range",
                value=data_range,
            ) from None
        if not low < high:  # also refuses NaN
            raise SettingError(
                f"`data_range` must satisfy low < high; got data_range={data_range!r}",
                setting="data_range",
                value=data_range,
            )
        if bool((data < low).any()) or bool((data > high).any()):
            raise SettingError(
                f"`data` has values outside data_range={data_range!r}: every input must "
                "already be valid for the perturbed inputs to stay valid",
                setting="data",
            )
    if confidence is not None and (
        isinstance(confidence, bool)
        or not isinstance(confidence, (int, float))
        or not 0 <= confidence <= 1
    ):
        raise SettingError(
            f"`confidence` must be None or within [0, 1]; got confidence={confidence!r}",
            setting="confidence",
            value=confidence,
        )


def _check_classes(logits: Tensor, target: Tensor, n: int) -> bool:
    """Check class targets against the first logits (before any criterion sees them).

    Returns whether the model is a classifier here (outputs ``(N, C)``,
    integer targets ``(N,)``), i.e. whether success is defined.
    """
    classifies = (
        logits.ndim == 2 and logits.shape[0] == n and target.ndim == 1 and not target.is_floating_point()
    )
    if classifies:
        classes = logits.shape[1]
        if bool((target < 0).any()) or bool((target >= classes).any()):
            raise SettingError(
                f"`target` holds class indices outside [0, {classes - 1}], the range of the "
                f"model's {classes} outputs",
                setting="target",
            )
    return classifies


def _check_losses(losses: Tensor, n: int, needs_per_datum: str | None) -> None:
    if needs_per_datum is not None and tuple(losses.shape) != (n,):
        raise SettingError(
            f"`criterion` must return one loss per datum, shape ({n},), when {needs_per_datum}; "
            f"got shape {tuple(losses.shape)} (use reduction='none')",
            setting="criterion",
        )


def _check_start(logits: Any, losses: Tensor) -> None:
    """Refuse a run whose starting point already has non-finite model outputs or losses.

    One host sync, at the first evaluation only. Nothing an optimizer does
    can recover from a model that is not finite at the start, and a NaN
    logit would otherwise count as a successful attack.
    """
    outputs = logits if isinstance(logits, Tensor) and logits.is_floating_point() else None
    flags = [torch.isfinite(t).all() for t in (outputs, losses) if t is not None and t.is_floating_point()]
    if not flags or all(torch.stack([f.to(flags[0].device) for f in flags]).tolist()):
        return
    if outputs is not None and not bool(torch.isfinite(outputs).all()):
        raise SettingError(
            f"`model` returned NaN or Inf outputs at the start of the attack (the data plus the "
            f"initial perturbation) for {_nonfinite_indices(outputs)} data: an attack needs a "
            "model that is finite on its inputs",
            setting="model",
        )
    raise SettingError(
        f"`criterion` returned NaN or Inf losses at the start of the attack for "
        f"{_nonfinite_indices(losses)} data, with finite model outputs",
        setting="criterion",
    )


def _finite_per_datum(values: Any, n: int) -> Tensor | None:
    """Per datum, whether every entry of ``values`` (shape ``(n, ...)``) is finite; None if not per datum."""
    if not isinstance(values, Tensor) or values.ndim == 0 or values.shape[0] != n:
        return None
    if not values.is_floating_point():
        return torch.ones(n, dtype=torch.bool, device=values.device)
    return torch.isfinite(values).reshape(n, math.prod(values.shape[1:])).all(dim=1)


def goal_met(logits: Tensor, target: Tensor, *, targeted: bool, confidence: float | None = None) -> Tensor:
    """Per image, whether the model's output meets the attack's goal.

    Untargeted: the prediction differs from ``target`` (the true label);
    targeted: it is ``target``, with at least ``confidence`` softmax
    probability when given.

    Examples
    --------
    >>> import torch
    >>> logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    >>> goal_met(logits, torch.tensor([0, 0]), targeted=False).tolist()
    [False, True]
    >>> goal_met(logits, torch.tensor([1, 1]), targeted=True, confidence=0.9).tolist()
    [False, False]
    """
    target = target.to(logits.device)
    predicted = logits.argmax(dim=1)
    if not targeted:
        return predicted != target
    met = predicted == target
    if confidence is not None:
        probability = logits.float().softmax(dim=1).gather(1, target.view(-1, 1)).squeeze(1)
        met = met & (probability >= confidence)
    return met


def _rows(mask: Tensor, like: Tensor) -> Tensor:
    """A per-datum mask of shape (N,) viewed to broadcast against ``like`` of shape (N, ...)."""
    return mask.view(-1, *[1] * (like.ndim - 1))


class _Box:
    """Keeps ``data + delta`` of an additive per-datum perturbation inside ``[low, high]``.

    An optimizer with a ``bounds`` option (the projected and Frank-Wolfe
    families) gets the box ``[low - data, high - data]`` for the run and keeps
    its iterates in ball ∩ box itself (exactly, up to rounding, which a final
    clamp removes); any other optimizer's iterates are clamped into the box
    after each step.
    """

    def __init__(self, delta: nn.Parameter, data: Tensor, low: float, high: float, optimizer: Optimizer):
        self.delta = delta
        data = data.to(delta.dtype)  # integer images: no wrap-around in low - data
        self.lower = low - data
        self.upper = high - data
        self.group = None
        if takes_option(optimizer, "bounds"):
            groups = [g for g in optimizer.param_groups if any(p is delta for p in g["params"])]
            if len(groups) == 1 and len(groups[0]["params"]) == 1:
                self.group = groups[0]
        self._previous = self.group["bounds"] if self.group is not None else None
        if self._previous is not None:  # the optimizer's own box also holds: intersect
            own_lower, own_upper = (bound_rows(bound, self.lower) for bound in self._previous)
            self.lower = torch.maximum(self.lower, own_lower)
            self.upper = torch.minimum(self.upper, own_upper)

    def __enter__(self) -> "_Box":
        if self.group is not None:
            self.group["bounds"] = (self.lower, self.upper)
        self.clamp_()  # the initial perturbation: moving entries toward 0 keeps it in any ball
        return self

    def __exit__(self, *exc: object) -> None:
        if self.group is not None:
            self.group["bounds"] = self._previous

    @torch.no_grad()
    def clamp_(self) -> None:
        delta = self.delta.detach()
        torch.clamp(delta, self.lower, self.upper, out=delta)

    def after_step_(self) -> None:
        # bounded optimizers are exact up to rounding; the clamp removes ulp-level excursions
        self.clamp_()


def takes_option(optimizer: Any, name: str) -> bool:
    """Whether ``optimizer`` (an optimizer, its class or a partial of it) stores the option ``name``.

    Asks the class's :meth:`~rai_probe.optim.ParamTransformingOptimizer.takes_option`;
    optimizers without that question (plain ``torch.optim`` ones) take none.

    Examples
    --------
    >>> from functools import partial
    >>> from rai_probe.optim import L1qFrankWolfe
    >>> takes_option(partial(L1qFrankWolfe, q=0.9), "bounds"), takes_option(torch.optim.SGD, "bounds")
    (True, False)
    """
    cls = optimizer_class(optimizer)
    question = getattr(cls, "takes_option", None)
    return bool(question(name)) if callable(question) else False


def optimizer_class(optimizer: Any) -> type | None:
    """The optimizer class behind an instance, a class or a (nested) ``functools.partial``; else None."""
    while isinstance(optimizer, functools.partial):
        optimizer = optimizer.func
    if isinstance(optimizer, type):
        return optimizer
    if isinstance(optimizer, Optimizer):
        return type(optimizer)
    return None


def _partial_keywords(factory: Any) -> dict[str, Any]:
    keywords: dict[str, Any] = {}
    while isinstance(factory, functools.partial):
        keywords = {**factory.keywords, **keywords}
        factory = factory.func
    return keywords


def _build(factory: Any, what: str, *args: Any, **kwargs: Any) -> Any:
    """Call a class / partial / factory function; pass an instance through (no kwargs allowed)."""
    if isinstance(factory, (nn.Module, Optimizer)):
        if kwargs:
            raise SettingTypeError(
                f"keyword arguments {sorted(kwargs)} given with an already-built `{what}`",
                setting=sorted(kwargs)[0],
                value=kwargs,
            )
        return factory
    if not callable(factory):
        raise SettingTypeError(
            f"`{what}` must be a class, a partial, a factory or an instance; got {factory!r}",
            setting=what,
            value=factory,
        )
    return factory(*args, **kwargs)


def gradient_ascent(
    *,
    model: Callable[[Tensor], Tensor],
    data: Tensor,
    target: Tensor,
    optimizer: type[Optimizer] | functools.partial | Optimizer,
    steps: int,
    perturbation_model: Any = AdditivePerturbation,
    targeted: bool = False,
    use_best: bool | str = False,
    criterion: Callable[[Tensor, Tensor], Tensor] | None = None,
    reduction_fn: Callable[[Tensor], Tensor] = torch.sum,
    data_range: tuple[float, float] | None = None,
    early_stop: bool = False,
    confidence: float | None = None,
    progress: bool = False,
    check_every: int = 1,
    **optim_kwargs: Any,
) -> AttackResult:
    """Optimize a perturbation of ``data`` to raise (or, targeted, lower) a frozen model's loss.

    Each step evaluates ``criterion(model(perturbation_model(data)), target)``,
    reduces it with ``reduction_fn`` and takes one ``optimizer`` step on the
    perturbation model's parameters: untargeted runs maximize the loss,
    targeted runs minimize it. The model is in eval mode with its parameters
    frozen during the run; both are restored afterwards, also when an error
    is raised. Works when called under ``torch.no_grad()``.

    Non-finite values: ``data`` holding a NaN or ±Inf, and a model (or
    criterion) that is not finite at the starting point, are refused with a
    :class:`~rai_probe.errors.SettingError` naming ``data``, ``model`` or
    ``criterion`` (one host sync, at the start). A later iterate whose logits
    or loss are not finite is never a success and never the ``use_best``
    pick. Rows the optimizer skips for non-finite gradients are counted in
    ``AttackResult.skipped_rows`` and logged once at the end of the run. An
    empty batch takes no step and returns an empty, well-shaped result.

    Parameters
    ----------
    model : Callable[[Tensor], Tensor]
        The classifier (any ``nn.Module`` taking a batch, or a function).
    data : Tensor, shape-(N, ...)
        Inputs; never modified.
    target : Tensor, shape-(N, ...)
        The true labels (untargeted) or the target labels (targeted).
    optimizer : Type[Optimizer] | functools.partial | Optimizer
        Built as ``optimizer(perturbation_model.parameters(), **optim_kwargs)``
        unless it is an instance (which must hold the perturbation model's
        parameters).
    steps : int
        Number of optimizer steps, >= 1.
    perturbation_model : class, partial, factory or instance, optional (default=AdditivePerturbation)
        Built as ``perturbation_model(data)`` unless it is an instance.
    targeted : bool, optional (default=False)
        Minimize instead of maximize the loss.
    use_best : bool or {"loss", "success"}, optional (default=False)
        Return, per datum, the best iterate seen (initial and final iterates
        included) instead of the final one. ``True`` or ``"loss"``: the best
        loss. ``"success"``: an iterate that meets the goal when the datum
        has any (the best loss among those), else the best loss; needs a
        classifier (else it is ``"loss"``). An attack that counts any
        adversarial iterate it visits, as robust-accuracy evaluations do.
        ``"sparsest"``: as ``"success"``, but among the successful iterates
        the one whose perturbation ``xadv - data`` has the fewest nonzero
        entries (then the best loss): the sparsest explanation found.
    criterion : Callable[[Tensor, Tensor], Tensor], optional
        Default: ``CrossEntropyLoss(reduction="none")``. Must return one loss
        per datum when ``use_best`` or ``early_stop`` is set.
    reduction_fn : Callable[[Tensor], Tensor], optional (default=torch.sum)
        Reduces the criterion's output to the scalar that is differentiated.
    data_range : (float, float), optional
        Valid input range, e.g. ``(0, 1)``, so that every iterate is a valid
        input. An additive per-datum perturbation is kept in the box
        ``[low - data, high - data]``. Optimizers with a ``bounds`` option get
        that box for the run (restored afterwards): ``L1ProjectedOptim``
        projects exactly onto the ε-ball ∩ box, the Frank-Wolfe family steps
        toward the exact vertex of the ε-ball ∩ box, and ``L2ProjectedOptim``
        / ``LinfProjectedOptim`` project onto the ball then clamp (exact for
        L∞; for L2 it stays in the ball since the box contains 0). Any other
        optimizer's iterates are clamped into the box after each step; any
        other perturbation model's output is clamped to the range.
    early_stop : bool, optional (default=False)
        Freeze each datum once its goal is met (untargeted: misclassified;
        targeted: classified as ``target``, with at least ``confidence``), so
        its perturbation is left untouched, and end the run once all are done
        (that check syncs with the device; see ``check_every``). Needs a
        classifier, per-datum perturbation parameters and per-datum losses.
    confidence : float, optional
        Targeted goal: the target's softmax probability must reach it.
    progress : bool, optional (default=False)
        Log the loss and success rate about ten times during the run.
    check_every : int, optional (default=1)
        With ``early_stop``: ask whether every datum is done (the one host
        sync of a step) only every ``check_every`` steps, so an accelerator
        is not stalled at each step. Freezing stays per step and on the
        device, so the result (``xadv``, ``success``, ``first_success_step``,
        the best iterates) is exactly that of ``check_every=1``; only
        ``steps_run`` may count up to ``check_every - 1`` more steps, run
        after the last datum succeeded and changing nothing. >= 1.
    **optim_kwargs
        Passed to ``optimizer`` (e.g. ``q=0.99, epsilon=20.0``).

    Returns
    -------
    AttackResult
        Unpacks as ``xadv, losses``; also holds the loss traces, per-datum
        success, the first successful step and the final logits.

    Examples
    --------
    The reference vector: an identity "model" and the loss ``|x - 0|``.

    >>> import torch as tr
    >>> from rai_probe.perturbations import gradient_ascent
    >>> loss = lambda x, target: (x - target).abs()
    >>> xadv, losses = gradient_ascent(
    ...     model=lambda x: x, data=tr.tensor([-1.0, 2.0]), target=tr.zeros(2),
    ...     optimizer=tr.optim.SGD, lr=0.1, steps=5, criterion=loss)
    >>> xadv
    tensor([-1.5000,  2.5000])
    >>> gradient_ascent(model=lambda x: x, data=tr.tensor([-1.0, 2.0]), target=tr.zeros(2),
    ...                 optimizer=tr.optim.SGD, lr=0.1, steps=5, criterion=loss, targeted=True).xadv
    tensor([-0.5000,  1.5000])
    """
    _check_inputs(data, target, steps, data_range, confidence)
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
        raise SettingError(
            f"`check_every` must be an integer >= 1; got check_every={check_every!r}",
            setting="check_every",
            value=check_every,
        )
    if use_best not in (False, True, "loss", "success", "sparsest") or (isinstance(use_best, int) and not isinstance(use_best, bool)):
        raise SettingError(
            f"`use_best` must be True, False, 'loss', 'success' or 'sparsest'; got use_best={use_best!r}",
            setting="use_best",
            value=use_best,
        )
    if criterion is None:
        criterion = nn.CrossEntropyLoss(reduction="none")
    needs_per_datum = f"use_best={use_best!r}" if use_best else ("early_stop=True" if early_stop else None)
    data = data.detach()
    n = data.shape[0]

    perturbation = _build(perturbation_model, "perturbation_model", data)
    params = list(perturbation.parameters())
    if (
        not isinstance(optimizer, Optimizer)
        and takes_option(optimizer, "total_steps")
        and "total_steps" not in optim_kwargs
        and "total_steps" not in _partial_keywords(optimizer)
    ):
        optim_kwargs = {**optim_kwargs, "total_steps": steps}  # APGD places its checkpoints by it
    optim = _build(optimizer, "optimizer", params, **optim_kwargs)
    needs_losses = bool(getattr(optim, "needs_datum_losses", False))
    if needs_losses and needs_per_datum is None:
        needs_per_datum = f"the optimizer ({type(optim).__name__}) needs per-datum losses"
    held = {id(p) for group in optim.param_groups for p in group["params"]}
    if not all(id(p) in held for p in params):
        raise SettingError(
            "`optimizer` does not hold the perturbation model's parameters: pass an optimizer "
            "class or partial, or build it on the parameters of the `perturbation_model` "
            "instance you pass",
            setting="optimizer",
        )
    if early_stop and not all(p.ndim >= 1 and p.shape[0] == n for p in params):
        raise SettingError(
            "`early_stop=True` needs per-datum perturbation parameters (leading dimension "
            f"{n}); got parameter shapes {[tuple(p.shape) for p in params]}",
            setting="early_stop",
            value=early_stop,
        )
    counts_skipped = isinstance(optim, SkipsNonFiniteRows)
    skipped_before = optim.skipped_rows if counts_skipped else None

    box = None
    delta = getattr(perturbation, "delta", None)
    if (
        data_range is not None
        and isinstance(perturbation, AdditivePerturbation)
        and isinstance(delta, Tensor)
        and delta.shape == data.shape
    ):
        box = _Box(delta, data, *data_range, optim)
    clamp_output = data_range is not None and box is None

    trace: list[Tensor] = []
    datum_trace: list[Tensor] = []
    best_x = best_losses = best_logits = best_success = best_sparsity = success = first_success = None
    has_success = False
    report_every = max(1, steps // 10)
    steps_run = 0

    def evaluate(step: int) -> tuple[Tensor, Tensor, Tensor]:
        nonlocal has_success, success, first_success, best_x, best_losses, best_logits, best_success
        nonlocal best_sparsity
        xadv = perturbation(data)
        if clamp_output:
            xadv = xadv.clamp(*data_range)
        logits = model(xadv)
        if step == 0:
            has_success = _check_classes(logits, target, n)
        losses = criterion(logits, target)
        if step == 0:
            _check_losses(losses, n, needs_per_datum)
            _check_start(logits, losses)
            if early_stop and not has_success:
                raise SettingError(
                    "`early_stop=True` needs a classifier: model outputs of shape (N, C) and "
                    f"integer class targets of shape (N,); got outputs {tuple(logits.shape)} and "
                    f"target {tuple(target.shape)} of dtype {target.dtype}",
                    setting="early_stop",
                    value=early_stop,
                )
            if has_success:
                first_success = torch.full((n,), -1, dtype=torch.long, device=logits.device)
        trace.append(reduction_fn(losses).detach())
        if tuple(losses.shape) == (n,):
            datum_trace.append(losses.detach())
        # an iterate with a NaN / Inf output or loss is never a success nor the best
        finite = _finite_per_datum(logits.detach(), n)
        if tuple(losses.shape) == (n,):
            finite_losses = _finite_per_datum(losses.detach(), n)
            finite = finite_losses if finite is None else finite & finite_losses.to(finite.device)
        if has_success:
            success = goal_met(logits.detach(), target, targeted=targeted, confidence=confidence) & finite
            first_success = torch.where(success & (first_success < 0), step, first_success)
        if use_best:
            current = losses.detach()
            by_success = use_best in ("success", "sparsest") and has_success
            sparsity = None
            if use_best == "sparsest" and has_success:
                sparsity = (xadv.detach() != data).reshape(n, -1).sum(dim=1) if n else None
            if best_losses is None:
                best_x, best_losses = xadv.detach().clone(), current.clone()
                best_logits = logits.detach().clone()
                best_success = success.clone() if by_success else None
                best_sparsity = sparsity
            else:
                better = current < best_losses if targeted else current > best_losses
                better &= finite.to(better.device)
                if by_success:  # a success beats a failure; among equals, the better loss
                    met = success.to(better.device)
                    if sparsity is not None:  # among successes: fewer changed entries, then the loss
                        fewer = (sparsity < best_sparsity) | ((sparsity == best_sparsity) & better)
                        better = (met & ~best_success) | (met & best_success & fewer) | (
                            ~met & ~best_success & better)
                        best_sparsity = torch.where(better, sparsity, best_sparsity)
                    else:
                        better = (met & ~best_success) | (better & (met | ~best_success))
                    best_success = best_success | met
                best_losses = torch.where(better, current, best_losses)
                best_x = torch.where(_rows(better, xadv), xadv.detach(), best_x)
                best_logits = torch.where(_rows(better, logits), logits.detach(), best_logits)
        return xadv, logits, losses

    freeze = frozen_eval(model) if isinstance(model, nn.Module) else nullcontext()
    with freeze, box if box is not None else nullcontext(), torch.enable_grad():
        final = None
        for step in range(steps if n else 0):  # an empty batch: nothing to optimize
            xadv, logits, losses = evaluate(step)
            frozen = success if early_stop else None
            if frozen is not None and step % check_every == 0 and bool(frozen.all()):  # the host sync
                final = (xadv, logits, losses)  # nothing moved since: no re-evaluation
                break
            objective = reduction_fn(losses)
            optim.zero_grad(set_to_none=True)
            (objective if targeted else -objective).backward()
            saved = [p.detach().clone() for p in params] if frozen is not None else None
            if needs_losses:  # the value the optimizer minimizes, per datum
                optim.step(losses=(losses if targeted else -losses).detach())
            else:
                optim.step()
            steps_run += 1
            if box is not None:
                box.after_step_()
            if frozen is not None:
                with torch.no_grad():
                    for param, before in zip(params, saved):
                        param.copy_(torch.where(_rows(frozen, param), before, param))
            if progress and (step % report_every == 0 or step == steps - 1):
                rate = f", success {success.float().mean().item():.3f}" if success is not None else ""
                if datum_trace:  # the quantity the probe job's loss_trace.png shows
                    log.info("step %d/%d: loss (mean over data) %.4g%s", step + 1, steps,
                             datum_trace[-1].float().mean().item(), rate)
                else:
                    log.info("step %d/%d: loss (reduced) %.4g%s", step + 1, steps, trace[-1].item(), rate)
        if final is None:
            with torch.no_grad():
                final = _evaluate_empty(evaluate, data) if n == 0 else evaluate(steps_run)
        xadv, logits, losses = final

    if use_best:
        xadv, losses, logits = best_x, best_losses, best_logits
        if has_success:
            finite = _finite_per_datum(logits, n)
            success = goal_met(logits, target, targeted=targeted, confidence=confidence) & finite
    skipped = _report_skipped(optim, skipped_before) if counts_skipped else None
    return AttackResult(
        xadv=xadv.detach(),
        losses=losses.detach(),
        loss_trace=torch.stack(trace),
        datum_loss_trace=torch.stack(datum_trace) if len(datum_trace) == len(trace) else None,
        success=success,
        first_success_step=first_success,
        logits=logits.detach(),
        steps_run=steps_run,
        skipped_rows=skipped,
    )


def _evaluate_empty(evaluate: Callable[[int], Any], data: Tensor) -> Any:
    """Evaluate an empty batch once (no steps), naming ``data`` if the model cannot take it."""
    try:
        return evaluate(0)
    except SettingError:
        raise
    except Exception as error:
        raise SettingError(
            f"`data` is an empty batch (shape {tuple(data.shape)}) and the model or criterion "
            f"cannot evaluate it ({type(error).__name__}: {error}); pass at least one datum",
            setting="data",
        ) from error


def _report_skipped(optim: SkipsNonFiniteRows, before: Tensor) -> int:
    """Rows the optimizer skipped during the run (one host sync, after the run); log them."""
    skipped = int(optim.skipped_rows - before.to(optim.skipped_rows.device))
    if skipped:
        log.warning(
            "gradient_ascent: %d perturbation row(s) had NaN or Inf gradients and were left "
            "unchanged at those steps (summed over steps; see AttackResult.skipped_rows): the "
            "model or criterion is not finite somewhere along the attack",
            skipped,
        )
    return skipped


def random_restart(
    solver: Callable[..., AttackResult], repeats: int, *, prefer_success: bool = False
) -> Callable[..., AttackResult]:
    """Wrap ``solver`` to run ``repeats`` times and keep each datum's best result.

    "Best" is the highest loss, or the lowest with ``targeted=True``; with
    ``prefer_success=True`` a run that met the goal for a datum beats one
    that did not, and the loss decides between equals (so the result is
    successful for every datum that any run broke). Ties keep the earlier
    run. Restarts differ only through randomness, e.g. a perturbation model
    with a random initializer.

    Parameters
    ----------
    solver : Callable[..., AttackResult]
        Usually :func:`gradient_ascent`; must return one loss per datum.
    repeats : int
        Number of runs, >= 1.
    prefer_success : bool, optional (default=False)
        Rank runs by success first (when the solver reports it), then loss.

    Returns
    -------
    Callable[..., AttackResult]
        Takes the solver's keyword arguments.

    Examples
    --------
    >>> import torch as tr
    >>> from functools import partial
    >>> from rai_probe.perturbations import (
    ...     AdditivePerturbation, gradient_ascent, random_restart, uniform_like_linf_n_ball_)
    >>> gen = tr.Generator().manual_seed(0)
    >>> start = partial(AdditivePerturbation, init_fn=uniform_like_linf_n_ball_, epsilon=1.0,
    ...                 generator=gen, param_ndim=0)
    >>> solve = random_restart(gradient_ascent, repeats=4)
    >>> result = solve(model=lambda x: x, data=tr.zeros(3), target=tr.zeros(3),
    ...                criterion=lambda x, t: (x - t).abs(), optimizer=tr.optim.SGD, lr=0.0,
    ...                steps=1, perturbation_model=start)
    >>> result.loss_trace.shape  # (repeats, evaluations)
    torch.Size([4, 2])
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise SettingError(
            f"`repeats` must be an integer >= 1; got repeats={repeats!r}", setting="repeats", value=repeats
        )

    @functools.wraps(solver)
    def run(**kwargs: Any) -> AttackResult:
        targeted = kwargs.get("targeted", False)
        best: AttackResult | None = None
        traces, skipped = [], []
        for _ in range(repeats):
            result = solver(**kwargs)
            traces.append(result.loss_trace)
            skipped.append(getattr(result, "skipped_rows", None))
            if result.losses.ndim != 1:
                raise SettingError(
                    "random_restart needs a solver that returns one loss per datum",
                    setting="solver",
                )
            if best is None:
                best = result
                continue
            better = result.losses < best.losses if targeted else result.losses > best.losses
            if prefer_success and best.success is not None and result.success is not None:
                won, had = result.success, best.success
                better = (won & ~had) | (better & (won | ~had))
            best = _merge(best, result, better)
        length = max(t.shape[0] for t in traces)
        padded = torch.full(
            (repeats, length), float("nan"), dtype=traces[0].dtype, device=traces[0].device
        )
        for row, t in enumerate(traces):
            padded[row, : t.shape[0]] = t
        best.loss_trace = padded
        best.skipped_rows = None if None in skipped else sum(skipped)
        return best

    return run


def _merge(best: AttackResult, other: AttackResult, better: Tensor) -> AttackResult:
    """Per datum, ``other``'s results where ``better`` else ``best``'s."""

    def pick(a: Tensor | None, b: Tensor | None) -> Tensor | None:
        if a is None or b is None:
            return None
        return torch.where(_rows(better, a), b, a)

    return AttackResult(
        xadv=pick(best.xadv, other.xadv),
        losses=pick(best.losses, other.losses),
        loss_trace=best.loss_trace,
        datum_loss_trace=None,
        success=pick(best.success, other.success),
        first_success_step=pick(best.first_success_step, other.first_success_step),
        logits=pick(best.logits, other.logits),
        steps_run=max(best.steps_run, other.steps_run),
    )

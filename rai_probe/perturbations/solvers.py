"""The ``gradient_ascent`` solver: any rai_probe optimizer against a frozen classifier."""

from __future__ import annotations

import functools
import logging
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from ..optim.constraints import bound_rows
from .models import AdditivePerturbation

__all__ = ["AttackResult", "gradient_ascent", "random_restart", "frozen_eval"]

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
        the run).
    """

    xadv: Tensor
    losses: Tensor
    loss_trace: Tensor
    datum_loss_trace: Tensor | None
    success: Tensor | None
    first_success_step: Tensor | None
    logits: Tensor
    steps_run: int

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


def _check_inputs(data: Any, target: Any, steps: Any, data_range: Any, confidence: Any) -> None:
    if not isinstance(data, Tensor):
        raise TypeError(f"`data` must be a torch.Tensor; got {type(data).__name__}")
    if not isinstance(target, Tensor):
        raise TypeError(f"`target` must be a torch.Tensor; got {type(target).__name__}")
    if data.ndim == 0 or target.ndim == 0 or data.shape[0] != target.shape[0]:
        raise ValueError(
            "`data` and `target` must have the same batch size (leading dimension); "
            f"got data of shape {tuple(data.shape)} and target of shape {tuple(target.shape)}"
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"`steps` must be an integer >= 1; got steps={steps!r}")
    if data_range is not None:
        try:
            low, high = (float(v) for v in data_range)
        except (TypeError, ValueError):
            raise ValueError(
                f"`data_range` must be a pair (low, high) of numbers; got data_range={data_range!r}"
            ) from None
        if not low < high:
            raise ValueError(f"`data_range` must satisfy low < high; got data_range={data_range!r}")
        if bool((data < low).any()) or bool((data > high).any()):
            raise ValueError(
                f"`data` has values outside data_range={data_range!r}: every input must "
                "already be valid for the perturbed inputs to stay valid"
            )
    if confidence is not None and (
        isinstance(confidence, bool)
        or not isinstance(confidence, (int, float))
        or not 0 <= confidence <= 1
    ):
        raise ValueError(f"`confidence` must be None or within [0, 1]; got confidence={confidence!r}")


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
            raise ValueError(
                f"`target` holds class indices outside [0, {classes - 1}], the range of the "
                f"model's {classes} outputs"
            )
    return classifies


def _check_losses(losses: Tensor, n: int, needs_per_datum: str | None) -> None:
    if needs_per_datum is not None and tuple(losses.shape) != (n,):
        raise ValueError(
            f"`criterion` must return one loss per datum, shape ({n},), when {needs_per_datum}; "
            f"got shape {tuple(losses.shape)} (use reduction='none')"
        )


def _goal_met(logits: Tensor, target: Tensor, targeted: bool, confidence: float | None) -> Tensor:
    predicted = logits.argmax(dim=1)
    if not targeted:
        return predicted != target
    met = predicted == target
    if confidence is not None:
        probability = logits.float().softmax(dim=1).gather(1, target.view(-1, 1)).squeeze(1)
        met &= probability >= confidence
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
        if "bounds" in getattr(type(optimizer), "_all_options", {}):
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


def _build(factory: Any, what: str, *args: Any, **kwargs: Any) -> Any:
    """Call a class / partial / factory function; pass an instance through (no kwargs allowed)."""
    if isinstance(factory, (nn.Module, Optimizer)):
        if kwargs:
            raise TypeError(f"keyword arguments {sorted(kwargs)} given with an already-built `{what}`")
        return factory
    if not callable(factory):
        raise TypeError(f"`{what}` must be a class, a partial, a factory or an instance; got {factory!r}")
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
    use_best: bool = False,
    criterion: Callable[[Tensor, Tensor], Tensor] | None = None,
    reduction_fn: Callable[[Tensor], Tensor] = torch.sum,
    data_range: tuple[float, float] | None = None,
    early_stop: bool = False,
    confidence: float | None = None,
    progress: bool = False,
    **optim_kwargs: Any,
) -> AttackResult:
    """Optimize a perturbation of ``data`` to raise (or, targeted, lower) a frozen model's loss.

    Each step evaluates ``criterion(model(perturbation_model(data)), target)``,
    reduces it with ``reduction_fn`` and takes one ``optimizer`` step on the
    perturbation model's parameters: untargeted runs maximize the loss,
    targeted runs minimize it. The model is in eval mode with its parameters
    frozen during the run; both are restored afterwards, also when an error
    is raised. Works when called under ``torch.no_grad()``.

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
    use_best : bool, optional (default=False)
        Return, per datum, the iterate with the best loss seen (initial and
        final iterates included) instead of the final one.
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
        (the check syncs with the device once per step). Needs a classifier,
        per-datum perturbation parameters and per-datum losses.
    confidence : float, optional
        Targeted goal: the target's softmax probability must reach it.
    progress : bool, optional (default=False)
        Log the loss and success rate about ten times during the run.
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
    if criterion is None:
        criterion = nn.CrossEntropyLoss(reduction="none")
    needs_per_datum = "use_best=True" if use_best else ("early_stop=True" if early_stop else None)
    data = data.detach()
    n = data.shape[0]

    perturbation = _build(perturbation_model, "perturbation_model", data)
    params = list(perturbation.parameters())
    optim = _build(optimizer, "optimizer", params, **optim_kwargs)
    held = {id(p) for group in optim.param_groups for p in group["params"]}
    if not all(id(p) in held for p in params):
        raise ValueError(
            "`optimizer` does not hold the perturbation model's parameters: pass an optimizer "
            "class or partial, or build it on the parameters of the `perturbation_model` "
            "instance you pass"
        )
    if early_stop and not all(p.ndim >= 1 and p.shape[0] == n for p in params):
        raise ValueError(
            "`early_stop=True` needs per-datum perturbation parameters (leading dimension "
            f"{n}); got parameter shapes {[tuple(p.shape) for p in params]}"
        )

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
    best_x = best_losses = best_logits = success = first_success = None
    has_success = False
    report_every = max(1, steps // 10)
    steps_run = 0

    def evaluate(step: int) -> tuple[Tensor, Tensor, Tensor]:
        nonlocal has_success, success, first_success, best_x, best_losses, best_logits
        xadv = perturbation(data)
        if clamp_output:
            xadv = xadv.clamp(*data_range)
        logits = model(xadv)
        if step == 0:
            has_success = _check_classes(logits, target, n)
        losses = criterion(logits, target)
        if step == 0:
            _check_losses(losses, n, needs_per_datum)
            if early_stop and not has_success:
                raise ValueError(
                    "`early_stop=True` needs a classifier: model outputs of shape (N, C) and "
                    f"integer class targets of shape (N,); got outputs {tuple(logits.shape)} and "
                    f"target {tuple(target.shape)} of dtype {target.dtype}"
                )
            if has_success:
                first_success = torch.full((n,), -1, dtype=torch.long, device=logits.device)
        trace.append(reduction_fn(losses).detach())
        if tuple(losses.shape) == (n,):
            datum_trace.append(losses.detach())
        if has_success:
            success = _goal_met(logits.detach(), target, targeted, confidence)
            first_success = torch.where(success & (first_success < 0), step, first_success)
        if use_best:
            current = losses.detach()
            if best_losses is None:
                best_x, best_losses = xadv.detach().clone(), current.clone()
                best_logits = logits.detach().clone()
            else:
                better = current < best_losses if targeted else current > best_losses
                best_losses = torch.where(better, current, best_losses)
                best_x = torch.where(_rows(better, xadv), xadv.detach(), best_x)
                best_logits = torch.where(_rows(better, logits), logits.detach(), best_logits)
        return xadv, logits, losses

    freeze = frozen_eval(model) if isinstance(model, nn.Module) else nullcontext()
    with freeze, box if box is not None else nullcontext(), torch.enable_grad():
        final = None
        for step in range(steps):
            xadv, logits, losses = evaluate(step)
            frozen = success if early_stop else None
            if frozen is not None and bool(frozen.all()):  # one host sync per step
                final = (xadv, logits, losses)  # nothing moved since: no re-evaluation
                break
            objective = reduction_fn(losses)
            optim.zero_grad(set_to_none=True)
            (objective if targeted else -objective).backward()
            saved = [p.detach().clone() for p in params] if frozen is not None else None
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
                log.info("step %d/%d: loss %.4g%s", step + 1, steps, trace[-1].item(), rate)
        if final is None:
            with torch.no_grad():
                final = evaluate(steps_run)
        xadv, logits, losses = final

    if use_best:
        xadv, losses, logits = best_x, best_losses, best_logits
        if has_success:
            success = _goal_met(logits, target, targeted, confidence)
    return AttackResult(
        xadv=xadv.detach(),
        losses=losses.detach(),
        loss_trace=torch.stack(trace),
        datum_loss_trace=torch.stack(datum_trace) if len(datum_trace) == len(trace) else None,
        success=success,
        first_success_step=first_success,
        logits=logits.detach(),
        steps_run=steps_run,
    )


def random_restart(solver: Callable[..., AttackResult], repeats: int) -> Callable[..., AttackResult]:
    """Wrap ``solver`` to run ``repeats`` times and keep each datum's best result.

    "Best" is the highest loss, or the lowest with ``targeted=True``. Restarts
    differ only through randomness, e.g. a perturbation model with a random
    initializer.

    Parameters
    ----------
    solver : Callable[..., AttackResult]
        Usually :func:`gradient_ascent`; must return one loss per datum.
    repeats : int
        Number of runs, >= 1.

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
        raise ValueError(f"`repeats` must be an integer >= 1; got repeats={repeats!r}")

    @functools.wraps(solver)
    def run(**kwargs: Any) -> AttackResult:
        targeted = kwargs.get("targeted", False)
        best: AttackResult | None = None
        traces = []
        for _ in range(repeats):
            result = solver(**kwargs)
            traces.append(result.loss_trace)
            if result.losses.ndim != 1:
                raise ValueError("random_restart needs a solver that returns one loss per datum")
            if best is None:
                best = result
                continue
            better = result.losses < best.losses if targeted else result.losses > best.losses
            best = _merge(best, result, better)
        length = max(t.shape[0] for t in traces)
        padded = torch.full(
            (repeats, length), float("nan"), dtype=traces[0].dtype, device=traces[0].device
        )
        for row, t in enumerate(traces):
            padded[row, : t.shape[0]] = t
        best.loss_trace = padded
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

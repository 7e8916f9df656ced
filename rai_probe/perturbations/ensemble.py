"""Worst-case evaluation over several attacks of one threat model: :class:`AttackEnsemble`.

A single attack gives an upper bound on robust accuracy; running several and
counting an image as robust only when none of them breaks it gives a tighter
one. :class:`AttackEnsemble` runs its members in order, each later member on
the images no earlier member broke, and keeps one result per image:

* a **success** beats a failure; among successes (when several members ran on
  an image, ``run_all=True``) the **sparsest** wins: fewest changed pixels,
  then the smallest norm of the perturbation in the members' norm;
* among failures, the one closest to succeeding wins: the smallest
  **margin** (untargeted: the label's logit minus the largest other logit;
  targeted: the largest other logit minus the target's);
* ties go to the earlier member. ``member`` records which member produced
  each image's result.

Untargeted, ``labels`` are the true labels and an image the model already
gets wrong is **not attacked** and never a success (``clean_correct`` is
false, ``member`` is -1, ``xadv`` is the image): robust accuracy is then
``(clean_correct & ~success).mean()``, as in
:func:`rai_probe.training.evaluation.robust_accuracy`. Targeted (all members
``targeted=True``), ``labels`` are the targets, every image is attacked and a
success is reaching the target. For unlabeled images pass the model's clean
predictions as ``labels``: every image is then clean-correct.

All members attack the same threat model: the same norm (read from the
optimizer's name, ``L1...``, ``L2...``, ``Linf...``), ``epsilon``,
``data_range`` and ``targeted`` flag; otherwise the worst case over them
would mix budgets.

Examples
--------
>>> import torch
>>> from rai_probe.perturbations.attacks import Attack
>>> from rai_probe.perturbations.ensemble import AttackEnsemble
>>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
>>> with torch.no_grad():
...     _ = model[1].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])); _ = model[1].bias.zero_()
>>> images = torch.tensor([[0.9, 0.1, 0.5, 0.5], [0.6, 0.5, 0.5, 0.5], [0.2, 0.8, 0.5, 0.5]]).view(3, 1, 2, 2)
>>> labels = torch.tensor([0, 0, 0])                   # image 2 is a clean mistake
>>> ensemble = AttackEnsemble({
...     "fw": Attack("L1qFrankWolfe", epsilon=0.3, steps=5, options={"q": 0.5}),
...     "pgd": Attack("L1ProjectedOptim", epsilon=0.3, steps=5, lr=0.3, options={"q": 0.5}),
... })
>>> result = ensemble.run(model, images, labels)
>>> result.clean_correct.tolist(), result.success.tolist()
([True, True, False], [False, True, False])
>>> result.produced_by()[1:], result.broken_by()       # image 2 was never attacked
(['fw', None], {'fw': 1, 'pgd': 0})
>>> result.attacked.tolist()                            # pgd ran only on what fw left robust
[[True, True, False], [True, False, False]]
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from ..errors import SettingError, SettingTypeError, UnknownSettingError
from .attacks import Attack
from .solvers import frozen_eval

__all__ = ["AttackEnsemble", "EnsembleResult", "attack_norm", "ENSEMBLE_KEYS"]

#: Keys of an ensemble's plain-data form (:meth:`AttackEnsemble.from_dict`).
ENSEMBLE_KEYS = ("ensemble", "run_all")

#: Optimizer-name prefixes and the norm of their ball, longest first.
_NORM_PREFIXES = (("Linf", "linf"), ("L1", "l1"), ("L2", "l2"))


def attack_norm(attack: Attack) -> str | None:
    """The norm of an attack's ε-ball: ``"l1"``, ``"l2"``, ``"linf"``, or ``None`` when unknown.

    Read from the optimizer's name (``L1qFrankWolfe``, ``L1ProjectedOptim``
    and any ``L1...`` optimizer: ``"l1"``).

    Examples
    --------
    >>> from rai_probe.perturbations.attacks import Attack
    >>> attack_norm(Attack("L1qFrankWolfe", epsilon=1.0, options={"q": 0.9}))
    'l1'
    >>> attack_norm(Attack("LinfProjectedOptim", epsilon=0.1)), attack_norm(Attack("L2FrankWolfe", epsilon=1.0))
    ('linf', 'l2')
    """
    declared = getattr(attack, "norm", None)
    if isinstance(declared, str) and declared in ("l1", "l2", "linf"):
        return declared
    name = getattr(attack, "optimizer", "")
    for prefix, norm in _NORM_PREFIXES:
        if isinstance(name, str) and name.startswith(prefix):
            return norm
    return None


@dataclass
class EnsembleResult:
    """What :meth:`AttackEnsemble.run` returns: one result per image, the strongest any member found.

    Attributes
    ----------
    xadv : Tensor, shape-(N, ...)
        The kept perturbed images (the image itself where no member ran).
    success : Tensor of bool, shape-(N,)
        Whether ``xadv`` meets the goal; never true for an untargeted clean
        mistake.
    logits : Tensor, shape-(N, C)
        The model's output at ``xadv``.
    first_success_step : Tensor of int64, shape-(N,)
        The producing member's first successful iterate, -1 if none.
    clean_correct : Tensor of bool, shape-(N,), or None
        Untargeted: whether the clean image is classified as its label
        (``None`` for a targeted ensemble).
    member : Tensor of int64, shape-(N,)
        Index in ``members`` of the member whose result was kept; -1 where
        no member ran.
    members : tuple of str
        The members' names, in the order they ran.
    attacked : Tensor of bool, shape-(M, N)
        Which images each member ran on.
    """

    xadv: Tensor
    success: Tensor
    logits: Tensor
    first_success_step: Tensor
    clean_correct: Tensor | None
    member: Tensor
    members: tuple[str, ...]
    attacked: Tensor

    def produced_by(self) -> list[str | None]:
        """Per image, the name of the member whose result was kept (``None``: not attacked)."""
        return [self.members[i] if i >= 0 else None for i in self.member.tolist()]

    def broken_by(self) -> dict[str, int]:
        """Per member, how many images its result broke (successes it produced).

        Examples
        --------
        >>> import torch
        >>> result = EnsembleResult(torch.zeros(3, 1), torch.tensor([True, False, True]), torch.zeros(3, 2),
        ...                         torch.tensor([2, -1, 0]), None, torch.tensor([1, 0, 1]), ("a", "b"),
        ...                         torch.ones(2, 3, dtype=torch.bool))
        >>> result.broken_by()
        {'a': 0, 'b': 2}
        """
        counts = torch.bincount(self.member[self.success].cpu(), minlength=len(self.members))
        return {name: int(count) for name, count in zip(self.members, counts.tolist())}


def _fail(message: str, setting: str | None, value: Any = None, kind: type[SettingError] = SettingError) -> SettingError:
    return kind(f"AttackEnsemble: {message}", setting=setting, value=value)


def _threat_model(attack: Attack) -> tuple:
    data_range = tuple(attack.data_range) if attack.data_range is not None else None
    return attack_norm(attack), float(attack.epsilon), data_range, attack.targeted


def _describe(threat: tuple) -> str:
    norm, epsilon, data_range, targeted = threat
    return (f"{norm or 'unknown norm'} epsilon={epsilon:g}, data_range={list(data_range) if data_range else None}, "
            f"{'targeted' if targeted else 'untargeted'}")


class AttackEnsemble:
    """Several attacks of one threat model, run in order; per image, the strongest result.

    Parameters
    ----------
    attacks : Mapping[str, Attack]
        The members by name, in the order they run (at least one). They must
        share the norm, ``epsilon``, ``data_range`` and ``targeted``.
    run_all : bool, optional (default=False)
        Run every member on every (clean-correct) image and keep the
        sparsest success, instead of running later members only on the
        images no earlier member broke (the same robust accuracy, at more
        cost; for sparsest explanations).

    Raises
    ------
    SettingError
        No member, a member that is not an :class:`Attack`, or members of
        different threat models (``setting`` names the offending member).

    Examples
    --------
    >>> from rai_probe.perturbations.attacks import Attack
    >>> AttackEnsemble({"a": Attack("L1qFrankWolfe", epsilon=10.0, options={"q": 0.9}),
    ...                 "b": Attack("L2ProjectedOptim", epsilon=1.0)})
    Traceback (most recent call last):
    ...
    rai_probe.errors.SettingError: AttackEnsemble: every member must attack the same threat model; member 'b' has l2 epsilon=1, data_range=[0.0, 1.0], untargeted but 'a' has l1 epsilon=10, data_range=[0.0, 1.0], untargeted
    """

    def __init__(self, attacks: Mapping[str, Attack], *, run_all: bool = False) -> None:
        if not isinstance(attacks, Mapping) or not attacks:
            raise _fail(f"`attacks` must be a non-empty mapping of names to Attack; got {attacks!r}",
                        "ensemble", attacks, SettingTypeError)
        if not isinstance(run_all, bool):
            raise _fail(f"`run_all` must be True or False; got run_all={run_all!r}", "run_all", run_all,
                        SettingTypeError)
        members: dict[str, Attack] = {}
        for name, attack in attacks.items():
            if not isinstance(name, str) or not isinstance(attack, Attack):
                raise _fail(f"member {name!r} must be an Attack (named by a string); got {type(attack).__name__}",
                            str(name), attack, SettingTypeError)
            members[name] = attack
        first_name, first = next(iter(members.items()))
        expected = _threat_model(first)
        for name, attack in members.items():
            threat = _threat_model(attack)
            if threat != expected:
                raise _fail(
                    f"every member must attack the same threat model; member {name!r} has {_describe(threat)} "
                    f"but {first_name!r} has {_describe(expected)}",
                    name,
                    attack,
                )
        self._attacks = members
        self.run_all = run_all

    # ------------------------------------------------------------------ #
    # description
    # ------------------------------------------------------------------ #
    @property
    def attacks(self) -> dict[str, Attack]:
        """The members by name, in the order they run (a copy)."""
        return dict(self._attacks)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._attacks)

    @property
    def _first(self) -> Attack:
        return next(iter(self._attacks.values()))

    @property
    def epsilon(self) -> float:
        """The members' common budget."""
        return float(self._first.epsilon)

    @property
    def norm(self) -> str | None:
        """The members' common norm (:func:`attack_norm`)."""
        return attack_norm(self._first)

    @property
    def targeted(self) -> bool:
        return self._first.targeted

    def __repr__(self) -> str:
        return f"AttackEnsemble({self._attacks!r}, run_all={self.run_all})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AttackEnsemble):
            return NotImplemented
        return list(self._attacks.items()) == list(other._attacks.items()) and self.run_all == other.run_all

    def with_(self, **changes: Any) -> "AttackEnsemble":
        """A copy with the same fields changed in every member (see :meth:`Attack.with_`)."""
        return AttackEnsemble({name: attack.with_(**changes) for name, attack in self._attacks.items()},
                              run_all=self.run_all)

    def to_dict(self) -> dict[str, Any]:
        """Plain data that :meth:`from_dict` turns back into an equal ensemble (members inline).

        Examples
        --------
        >>> from rai_probe.perturbations.attacks import Attack
        >>> ensemble = AttackEnsemble({"fw": Attack("L1qFrankWolfe", epsilon=10.0, options={"q": 0.99})})
        >>> data = ensemble.to_dict()
        >>> sorted(data), list(data["ensemble"]), AttackEnsemble.from_dict(data) == ensemble
        (['ensemble', 'run_all'], ['fw'], True)
        """
        return {"ensemble": {name: attack.to_dict() for name, attack in self._attacks.items()},
                "run_all": self.run_all}

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any], *, where: str = "ensemble",
                  named: Mapping[str, Attack] | None = None) -> "AttackEnsemble":
        """Build an ensemble from plain data: ``{"ensemble": members, "run_all": false}``.

        ``members`` is a list of names of attacks in ``named`` (the other
        entries of a config group: ``ensemble: [l1_eps10, l1q_fw_eps10]``),
        or a mapping of names to :class:`Attack` settings (inline members, as
        :meth:`to_dict` writes them).

        Raises
        ------
        SettingError
            ``setting`` is ``"ensemble"`` (a bad member list or an unknown
            name), ``"run_all"``, an unknown key, or
            ``"ensemble.<member>.<key>"`` for a bad inline member.

        Examples
        --------
        >>> from rai_probe.perturbations.attacks import Attack
        >>> group = {"fw": Attack("L1qFrankWolfe", epsilon=10.0, options={"q": 0.99}),
        ...          "pgd": Attack("L1ProjectedOptim", epsilon=10.0, options={"q": 0.99})}
        >>> AttackEnsemble.from_dict({"ensemble": ["pgd", "fw"]}, named=group).names
        ('pgd', 'fw')
        >>> AttackEnsemble.from_dict({"ensemble": ["pgd", "apgd"]}, where="eval_attacks.l1", named=group)
        Traceback (most recent call last):
        ...
        rai_probe.errors.SettingError: eval_attacks.l1: unknown member 'apgd' in `ensemble`; the attacks of this group are: fw, pgd
        """
        if not isinstance(settings, Mapping):
            raise SettingTypeError(f"{where}: must be a mapping of settings; got {settings!r}", setting=None,
                                   value=settings)
        unknown = sorted(set(settings) - set(ENSEMBLE_KEYS))
        if unknown:
            raise UnknownSettingError(
                f"{where}: unknown setting(s) {unknown} of an ensemble; allowed: {', '.join(ENSEMBLE_KEYS)}",
                setting=unknown[0], value=settings[unknown[0]],
            )
        members = settings.get("ensemble")
        run_all = settings.get("run_all", False)
        if isinstance(members, Mapping):
            attacks = {}
            for name, entry in members.items():
                try:
                    attacks[str(name)] = Attack.from_dict(entry, where=f"{where}.ensemble.{name}")
                except SettingError as error:
                    setting = f"ensemble.{name}" + (f".{error.setting}" if error.setting else "")
                    raise type(error)(str(error), setting=setting, value=error.value) from None
        elif isinstance(members, (list, tuple)) and members and all(isinstance(m, str) for m in members):
            named = dict(named or {})
            for name in members:
                if name not in named:
                    raise SettingError(
                        f"{where}: unknown member {name!r} in `ensemble`; the attacks of this group are: "
                        f"{', '.join(sorted(named)) or 'none'}",
                        setting="ensemble", value=list(members),
                    )
            if len(set(members)) < len(members):
                raise SettingError(f"{where}: `ensemble` names a member twice: {list(members)}",
                                   setting="ensemble", value=list(members))
            attacks = {name: named[name] for name in members}
        else:
            raise SettingError(
                f"{where}: `ensemble` must be a non-empty list of attack names (or a mapping of names to "
                f"attack settings); got ensemble={members!r}",
                setting="ensemble", value=members,
            )
        try:
            return cls(attacks, run_all=run_all)
        except SettingError as error:
            setting = error.setting if error.setting == "run_all" else "ensemble"
            message = str(error).removeprefix("AttackEnsemble: ")
            raise type(error)(f"{where}: {message}", setting=setting, value=error.value) from None

    # ------------------------------------------------------------------ #
    # running
    # ------------------------------------------------------------------ #
    def run(
        self,
        model: Callable[[Tensor], Tensor],
        images: Tensor,
        labels: Tensor,
        *,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> EnsembleResult:
        """Run the members in order and keep, per image, the strongest result (see the module docs).

        Parameters
        ----------
        model : Callable[[Tensor], Tensor]
            A classifier returning ``(N, C)`` logits.
        images : Tensor, shape-(N, ...)
        labels : Tensor of int, shape-(N,)
            True labels (untargeted) or target classes (targeted).
        generator : torch.Generator, optional
            Passed to every member in turn (random starts, randomized sparsity).
        progress : bool, optional (default=False)
            Each member's progress bar.

        Returns
        -------
        EnsembleResult
        """
        if not isinstance(images, Tensor) or images.ndim < 1:
            raise SettingTypeError(f"AttackEnsemble.run: `images` must be a tensor of shape (N, ...); got {images!r}",
                                   setting="data")
        n = images.shape[0]
        if not isinstance(labels, Tensor) or tuple(labels.shape) != (n,):
            raise SettingError(
                f"AttackEnsemble.run: `labels` must be a tensor of shape ({n},); got "
                f"{tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__}",
                setting="labels",
            )
        labels = labels.to(images.device, torch.int64)
        with torch.no_grad(), frozen_eval(model) if isinstance(model, nn.Module) else nullcontext():
            clean_logits = model(images).detach()  # in eval mode, as the members' solver runs it
        if self.targeted:
            clean_correct = None
            eligible = torch.ones(n, dtype=torch.bool, device=images.device)
        else:
            clean_correct = clean_logits.argmax(dim=1) == labels
            eligible = clean_correct
        best = _Kept.start(images, clean_logits)
        attacked = torch.zeros(len(self._attacks), n, dtype=torch.bool, device=images.device)
        for index, (name, attack) in enumerate(self._attacks.items()):
            todo = eligible if self.run_all else eligible & ~best.success
            rows = todo.nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            attacked[index, rows] = True
            result = attack.run(model, images[rows], labels[rows], generator=generator, progress=progress)
            if result.success is None:
                raise _fail(f"member {name!r} could not tell success: the model must return (N, C) logits",
                            "model")
            candidate = _Kept.of(result, images[rows], labels[rows], index, self.targeted, self.norm)
            best.update(rows, candidate)
        return EnsembleResult(
            xadv=best.xadv,
            success=best.success,
            logits=best.logits,
            first_success_step=best.first,
            clean_correct=clean_correct,
            member=best.member,
            members=self.names,
            attacked=attacked,
        )


def _margin(logits: Tensor, classes: Tensor, targeted: bool) -> Tensor:
    """How far each row is from the goal (< 0: met): untargeted ``z_y - max_{k != y} z_k``, targeted its negative."""
    logits = logits.detach().to(torch.float64)
    own = logits.gather(1, classes.view(-1, 1)).squeeze(1)
    others = logits.scatter(1, classes.view(-1, 1), -math.inf).amax(dim=1)
    return others - own if targeted else own - others


def _changed(delta: Tensor) -> Tensor:
    """Changed pixels per row (any channel of an (N, C, H, W) image; entries otherwise)."""
    moved = delta.detach() != 0
    if moved.ndim == 4:
        moved = moved.any(dim=1)
    return moved.reshape(moved.shape[0], -1).sum(dim=1)


def _size(delta: Tensor, norm: str | None) -> Tensor:
    flat = delta.detach().reshape(delta.shape[0], -1).to(torch.float64)
    if norm == "l1":
        return flat.abs().sum(dim=1)
    if norm == "linf":
        return flat.abs().amax(dim=1) if flat.shape[1] else flat.new_zeros(flat.shape[0])
    return flat.norm(dim=1)


@dataclass
class _Kept:
    """Per image, the result kept so far and what ranks it."""

    xadv: Tensor
    logits: Tensor
    success: Tensor
    first: Tensor
    member: Tensor
    changed: Tensor
    size: Tensor
    margin: Tensor

    @classmethod
    def start(cls, images: Tensor, clean_logits: Tensor) -> "_Kept":
        n = images.shape[0]
        device = images.device
        return cls(
            xadv=images.detach().clone(),
            logits=clean_logits.clone(),
            success=torch.zeros(n, dtype=torch.bool, device=device),
            first=torch.full((n,), -1, dtype=torch.int64, device=device),
            member=torch.full((n,), -1, dtype=torch.int64, device=device),
            changed=torch.zeros(n, dtype=torch.int64, device=device),
            size=torch.zeros(n, dtype=torch.float64, device=device),
            margin=torch.full((n,), math.inf, dtype=torch.float64, device=device),  # any result beats none
        )

    @classmethod
    def of(cls, result: Any, images: Tensor, classes: Tensor, index: int, targeted: bool,
           norm: str | None) -> "_Kept":
        delta = result.xadv.detach() - images.detach()
        n = images.shape[0]
        first = result.first_success_step
        first = torch.full((n,), -1, dtype=torch.int64, device=images.device) if first is None else first
        success = result.success.to(images.device, torch.bool)
        return cls(
            xadv=result.xadv.detach(),
            logits=result.logits.detach(),
            success=success,
            first=torch.where(success, first.to(images.device, torch.int64), torch.full_like(first, -1)),
            member=torch.full((n,), index, dtype=torch.int64, device=images.device),
            changed=_changed(delta).to(images.device),
            size=_size(delta, norm).to(images.device),
            margin=_margin(result.logits, classes, targeted).to(images.device),
        )

    def better(self, other: "_Kept") -> Tensor:
        """Per row, whether ``other`` (a candidate for these rows) beats this result."""
        sparser = (other.changed < self.changed) | ((other.changed == self.changed) & (other.size < self.size))
        both_succeed = other.success & self.success
        both_fail = ~other.success & ~self.success
        return (other.success & ~self.success) | (both_succeed & sparser) | (both_fail & (other.margin < self.margin))

    def update(self, rows: Tensor, candidate: "_Kept") -> None:
        """Replace the results of ``rows`` that ``candidate`` beats."""
        current = _Kept(*(getattr(self, name)[rows] for name in _KEPT_FIELDS))
        wins = current.better(candidate)
        chosen = rows[wins]
        for name in _KEPT_FIELDS:
            getattr(self, name)[chosen] = getattr(candidate, name)[wins].to(getattr(self, name).dtype)


_KEPT_FIELDS = ("xadv", "logits", "success", "first", "member", "changed", "size", "margin")

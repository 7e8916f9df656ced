"""Clean and robust accuracy of a classifier on a labeled image set.

Robust accuracy under an attack counts an image as robust when the model
classifies it correctly and no iterate of the attack is misclassified (the
attack runs untargeted, with early stopping and without ``use_best``). Under
an :class:`~rai_probe.perturbations.ensemble.AttackEnsemble` (a worst case
over several attacks of one threat model), an image is robust when it is
clean-correct and **no** member broke it: each member runs on the images the
earlier members left robust, so the ensemble's robust accuracy is at most
each member's, and :func:`evaluate` also reports after each member how many
images were still robust and how many that member broke.
"""

from __future__ import annotations

from typing import Callable, Mapping, Union

import torch
from torch import Tensor

from ..perturbations.attacks import Attack
from ..perturbations.ensemble import AttackEnsemble
from ..progress import Progress

__all__ = ["evaluate", "robust_accuracy", "EvalAttack"]

#: What robust accuracy is measured under: one attack, or the worst case over an ensemble.
EvalAttack = Union[Attack, AttackEnsemble]


def _batches(n: int, batch_size: int) -> list[slice]:
    return [slice(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def robust_accuracy(
    model: Callable[[Tensor], Tensor],
    images: Tensor,
    labels: Tensor,
    attack: EvalAttack,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Which images the model still classifies correctly under ``attack`` (bool, shape-(N,)).

    An image is robust when the model classifies it correctly and no iterate
    of the attack is misclassified: the attack runs untargeted with early
    stopping and without ``use_best`` (which could report a later, still
    correct iterate), and clean mistakes count as broken even when the attack
    starts from a random point of the ball. Under an
    :class:`~rai_probe.perturbations.ensemble.AttackEnsemble` every member
    runs so, and an image is robust when no member broke it.

    Examples
    --------
    >>> import torch
    >>> from rai_probe.perturbations.attacks import Attack
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    >>> images, labels = torch.rand(6, 1, 2, 2), torch.zeros(6, dtype=torch.long)
    >>> held = robust_accuracy(model, images, labels, Attack("L2ProjectedOptim", epsilon=0.5, steps=5))
    >>> held.shape, held.dtype
    (torch.Size([6]), torch.bool)
    >>> clean = model(images).argmax(1) == labels
    >>> bool((held <= clean).all())           # robust implies clean-correct
    True
    """
    with torch.no_grad():
        correct = model(images).argmax(dim=1) == labels
    return _held(model, images, labels, _breaking(attack), correct, generator)[0]


def _breaking(attack: EvalAttack) -> EvalAttack:
    """``attack`` set up to find any misclassified iterate (untargeted, early stop, no best-loss pick)."""
    return attack.with_(targeted=False, early_stop=True, use_best=False)


def _held(
    model: Callable[[Tensor], Tensor],
    images: Tensor,
    labels: Tensor,
    attack: EvalAttack,
    correct: Tensor,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor | None]:
    """The robust images and, for an ensemble, the member that broke each image (-1: none)."""
    result = attack.run(model, images, labels, generator=generator)
    held = correct & ~result.success
    if isinstance(attack, AttackEnsemble):
        return held, torch.where(held, torch.full_like(result.member, -1), result.member)
    return held, None


def _ensemble_report(ensemble: AttackEnsemble, correct: Tensor, broken_by: Tensor) -> dict:
    """Per member of an ensemble: robust accuracy after it ran, and the fraction of images it broke."""
    robust_after, broke = {}, {}
    for index, name in enumerate(ensemble.names):  # fractions computed like evaluate's own accuracies
        broke[name] = (broken_by == index).float().mean().item()
        robust_after[name] = (correct & ~((broken_by >= 0) & (broken_by <= index))).float().mean().item()
    return {"members": list(ensemble.names), "robust_accuracy_after": robust_after, "broken_by": broke}


def evaluate(
    model: torch.nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    attacks: Mapping[str, EvalAttack] | None = None,
    batch_size: int = 250,
    device: torch.device | str | None = None,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Clean accuracy and, per named attack, robust accuracy of ``model`` on ``(images, labels)``.

    Parameters
    ----------
    model : nn.Module
        A classifier taking ``images`` (e.g. in [0, 1]); its train/eval mode
        and ``requires_grad`` flags are restored afterwards.
    images : Tensor, shape-(N, C, H, W)
    labels : Tensor of int64, shape-(N,)
    attacks : Mapping[str, Attack or AttackEnsemble], optional
        Attacks to measure robust accuracy under, by name; an ensemble
        measures the worst case over its members.
    batch_size : int, optional (default=250)
    device : torch.device or str, optional
        Where to run (default: the model's device).
    seed : int, optional (default=0)
        Seeds the attacks' random starts (reproducible numbers). Ensembles
        draw from a generator of their own (seeded alike), so adding one
        changes no other attack's number.
    progress : bool, optional (default=False)
        Draw a progress bar over batches.

    Returns
    -------
    dict
        ``{"n": N, "clean_accuracy": float, "robust_accuracy": {name: float}}``
        (ensembles included), and with any ensemble ``"ensembles": {name:
        {"members": [...], "robust_accuracy_after": {member: float},
        "broken_by": {member: float}}}``: the robust accuracy once the
        members up to that one have run, and the fraction of all images that
        member broke (none of the earlier ones had); fractions of ``N``.

    Examples
    --------
    >>> import torch
    >>> from rai_probe.perturbations.attacks import Attack
    >>> torch.manual_seed(0) and None
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    >>> images, labels = torch.rand(8, 1, 2, 2), torch.randint(0, 2, (8,))
    >>> report = evaluate(model, images, labels,
    ...                   attacks={"l2": Attack("L2ProjectedOptim", epsilon=0.25, steps=5)})
    >>> sorted(report), sorted(report["robust_accuracy"])
    (['clean_accuracy', 'n', 'robust_accuracy'], ['l2'])
    >>> report["robust_accuracy"]["l2"] <= report["clean_accuracy"]
    True

    The worst case over two attacks of one threat model:

    >>> from rai_probe.perturbations.ensemble import AttackEnsemble
    >>> pgd, fw = Attack("L2ProjectedOptim", epsilon=0.25, steps=5), Attack("L2FrankWolfe", epsilon=0.25, steps=5)
    >>> report = evaluate(model, images, labels,
    ...                   attacks={"pgd": pgd, "fw": fw, "worst": AttackEnsemble({"pgd": pgd, "fw": fw})})
    >>> robust = report["robust_accuracy"]
    >>> robust["worst"] <= min(robust["pgd"], robust["fw"])
    True
    >>> report["ensembles"]["worst"]["robust_accuracy_after"]["fw"] == robust["worst"]
    True
    """
    attacks = {name: _breaking(attack) for name, attack in (attacks or {}).items()}
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    n = images.shape[0]
    if labels.shape != (n,):
        raise ValueError(f"evaluate: `labels` must have shape ({n},); got {tuple(labels.shape)}")
    generator = torch.Generator(device=device).manual_seed(seed)
    ensemble_generator = torch.Generator(device=device).manual_seed(seed)
    correct = torch.zeros(n, dtype=torch.bool, device=device)
    held = {name: torch.zeros(n, dtype=torch.bool, device=device) for name in attacks}
    broken_by = {name: torch.full((n,), -1, dtype=torch.int64, device=device)
                 for name, attack in attacks.items() if isinstance(attack, AttackEnsemble)}
    single = [name for name in attacks if name not in broken_by]
    was_training = model.training
    model.eval()
    try:
        with Progress(n, "evaluate", enabled=progress) as bar:
            for rows in _batches(n, batch_size):
                x = images[rows].to(device)
                y = labels[rows].to(device)
                with torch.no_grad():
                    correct[rows] = model(x).argmax(dim=1) == y
                for name in single:
                    held[name][rows] = _held(model, x, y, attacks[name], correct[rows], generator)[0]
                for name in broken_by:  # after the single attacks: their random draws do not depend on these
                    held[name][rows], broken_by[name][rows] = _held(
                        model, x, y, attacks[name], correct[rows], ensemble_generator
                    )
                bar.update(x.shape[0])
    finally:
        model.train(was_training)
    report = {
        "n": n,
        "clean_accuracy": correct.float().mean().item(),
        "robust_accuracy": {name: mask.float().mean().item() for name, mask in held.items()},
    }
    if broken_by:
        report["ensembles"] = {name: _ensemble_report(attacks[name], correct, members)
                               for name, members in broken_by.items()}
    return report

"""Clean and robust accuracy of a classifier on a labeled image set."""

from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import Tensor

from ..perturbations.attacks import Attack
from ..progress import Progress

__all__ = ["evaluate", "robust_accuracy"]


def _batches(n: int, batch_size: int) -> list[slice]:
    return [slice(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def robust_accuracy(
    model: Callable[[Tensor], Tensor],
    images: Tensor,
    labels: Tensor,
    attack: Attack,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Which images the model still classifies correctly under ``attack`` (bool, shape-(N,)).

    An image is robust when the model classifies it correctly and no iterate
    of the attack is misclassified: the attack runs untargeted with early
    stopping and without ``use_best`` (which could report a later, still
    correct iterate), and clean mistakes count as broken even when the attack
    starts from a random point of the ball.

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
    return _held(model, images, labels, _breaking(attack), correct, generator)


def _breaking(attack: Attack) -> Attack:
    """``attack`` set up to find any misclassified iterate (untargeted, early stop, no best-loss pick)."""
    return attack.with_(targeted=False, early_stop=True, use_best=False)


def _held(
    model: Callable[[Tensor], Tensor],
    images: Tensor,
    labels: Tensor,
    attack: Attack,
    correct: Tensor,
    generator: torch.Generator | None,
) -> Tensor:
    return correct & ~attack.run(model, images, labels, generator=generator).success


def evaluate(
    model: torch.nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    attacks: Mapping[str, Attack] | None = None,
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
    attacks : Mapping[str, Attack], optional
        Attacks to measure robust accuracy under, by name.
    batch_size : int, optional (default=250)
    device : torch.device or str, optional
        Where to run (default: the model's device).
    seed : int, optional (default=0)
        Seeds the attacks' random starts (reproducible numbers).
    progress : bool, optional (default=False)
        Draw a progress bar over batches.

    Returns
    -------
    dict
        ``{"n": N, "clean_accuracy": float, "robust_accuracy": {name: float}}``.

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
    """
    attacks = {name: _breaking(attack) for name, attack in (attacks or {}).items()}
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    n = images.shape[0]
    if labels.shape != (n,):
        raise ValueError(f"evaluate: `labels` must have shape ({n},); got {tuple(labels.shape)}")
    generator = torch.Generator(device=device).manual_seed(seed)
    correct = torch.zeros(n, dtype=torch.bool, device=device)
    held = {name: torch.zeros(n, dtype=torch.bool, device=device) for name in attacks}
    was_training = model.training
    model.eval()
    try:
        with Progress(n, "evaluate", enabled=progress) as bar:
            for rows in _batches(n, batch_size):
                x = images[rows].to(device)
                y = labels[rows].to(device)
                with torch.no_grad():
                    correct[rows] = model(x).argmax(dim=1) == y
                for name, attack in attacks.items():
                    held[name][rows] = _held(model, x, y, attack, correct[rows], generator)
                bar.update(x.shape[0])
    finally:
        model.train(was_training)
    return {
        "n": n,
        "clean_accuracy": correct.float().mean().item(),
        "robust_accuracy": {name: mask.float().mean().item() for name, mask in held.items()},
    }

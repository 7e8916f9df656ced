"""A self-contained demo of the optimizers: sparse versus dense attacks on a trained classifier.

It trains a linear softmax classifier on synthetic 28x28 images (ten classes,
each a bright blob at its own position, plus noise), then attacks every test
image twice with the optimizers of :mod:`rai_probe.optim` used as plain
``torch.optim`` building blocks: an L1 Frank-Wolfe attack whose sparsity is set
by ``q`` (:class:`~rai_probe.optim.L1qFrankWolfe`) and a dense L2 PGD attack
(:class:`~rai_probe.optim.L2ProjectedOptim`). It reports success rates and
the sparsity of both perturbations, and draws them.

This is the project's main job until the probe CLI exists; run it with
``python scripts/demo.py`` (Hydra config: ``configs/demo.yaml``).

Examples
--------
>>> from rai_probe.demo import DemoConfig, run_demo
>>> metrics = run_demo(DemoConfig(n_test=20, train_steps=100, attack_steps=20), output_dir=None)
>>> sorted(metrics["attacks"])
['l1q_frank_wolfe', 'l2_projected']
>>> metrics["clean_accuracy"] > 0.9
True
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .optim import L1qFrankWolfe, L2ProjectedOptim

__all__ = ["DemoConfig", "make_blob_images", "run_demo", "attack"]

log = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    """Settings of the demo (mirrored by ``configs/demo.yaml``)."""

    seed: int = 0
    n_train: int = 2000
    n_test: int = 200
    noise: float = 0.3
    train_steps: int = 300
    attack_steps: int = 100
    l1q: dict[str, float] = field(default_factory=lambda: {"epsilon": 20.0, "q": 0.99})
    l2: dict[str, float] = field(default_factory=lambda: {"epsilon": 2.0, "lr": 0.25})


def make_blob_images(n: int, noise: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``n`` synthetic 1x28x28 images in [0, 1]; class ``c`` is a blob at the c-th grid cell.

    Examples
    --------
    >>> x, y = make_blob_images(4, 0.1, torch.Generator().manual_seed(0))
    >>> x.shape, y.shape, bool(x.min() >= 0) and bool(x.max() <= 1)
    (torch.Size([4, 1, 28, 28]), torch.Size([4]), True)
    """
    labels = torch.randint(0, 10, (n,), generator=generator)
    grid = torch.arange(28.0)
    rows, cols = (labels // 4) * 8 + 6, (labels % 4) * 6 + 5
    blob = torch.exp(
        -((grid.view(1, 28, 1) - rows.view(-1, 1, 1)) ** 2 + (grid.view(1, 1, 28) - cols.view(-1, 1, 1)) ** 2)
        / 8.0
    )
    images = blob + noise * torch.rand(n, 28, 28, generator=generator)
    return images.clamp_(0, 1).unsqueeze(1), labels


def _train_classifier(cfg: DemoConfig, generator: torch.Generator) -> nn.Module:
    x, y = make_blob_images(cfg.n_train, cfg.noise, generator)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(cfg.train_steps):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        if step % max(1, cfg.train_steps // 5) == 0 or step == cfg.train_steps - 1:
            log.info("train step %d/%d  loss %.4f", step + 1, cfg.train_steps, loss.item())
    return model.eval().requires_grad_(False)


def attack(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    make_optimizer: Callable[[list[Tensor]], torch.optim.Optimizer],
    steps: int,
) -> Tensor:
    """Untargeted attack: minimize the negative cross-entropy over a per-image perturbation.

    Returns the perturbations, shape of ``images``. Any optimizer of
    :mod:`rai_probe.optim` works here with its default ``param_ndim=-1``, which
    makes each image's perturbation its own row (own ball, own sparsity).
    """
    delta = torch.zeros_like(images, requires_grad=True)
    optimizer = make_optimizer([delta])
    for step in range(steps):
        optimizer.zero_grad()
        loss = -nn.functional.cross_entropy(model(images + delta), labels, reduction="sum")
        loss.backward()
        optimizer.step()
        if step % max(1, steps // 4) == 0 or step == steps - 1:
            log.info("  attack step %d/%d  mean loss %.4f", step + 1, steps, -loss.item() / len(images))
    return delta.detach()


def _perturbation_metrics(model: nn.Module, images: Tensor, labels: Tensor, delta: Tensor) -> dict[str, float]:
    flat = delta.flatten(1)
    with torch.no_grad():
        fooled = model(images + delta).argmax(1) != labels
    return {
        "success_rate": fooled.float().mean().item(),
        "mean_l0_fraction": (flat != 0).float().mean(1).mean().item(),
        "mean_l1": flat.abs().sum(1).mean().item(),
        "mean_l2": flat.norm(dim=1).mean().item(),
        "mean_linf": flat.abs().amax(1).mean().item(),
    }


def _draw(images: Tensor, deltas: dict[str, Tensor], path: Path, columns: int = 6) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(deltas)
    fig, axes = plt.subplots(1 + len(names), columns, figsize=(1.6 * columns, 1.8 * (1 + len(names))))
    for col in range(columns):
        axes[0, col].imshow(images[col, 0], cmap="gray", vmin=0, vmax=1)
        for row, name in enumerate(names, start=1):
            d = deltas[name][col, 0]
            bound = max(float(d.abs().max()), 1e-12)
            axes[row, col].imshow(d, cmap="seismic", vmin=-bound, vmax=bound)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for row, name in enumerate(["image"] + names):
        axes[row, 0].set_ylabel(name, fontsize=8)
    fig.suptitle("perturbations (red +, blue -): sparse L1q Frank-Wolfe vs dense L2 PGD", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_demo(cfg: DemoConfig, output_dir: str | Path | None = ".") -> dict[str, Any]:
    """Train, attack with both optimizers, and write ``metrics.json`` and ``perturbations.png``.

    Parameters
    ----------
    cfg : DemoConfig
        Settings.
    output_dir : str or Path or None
        Where the outputs go; ``None`` writes nothing.

    Returns
    -------
    dict
        The metrics that ``metrics.json`` holds.
    """
    generator = torch.Generator().manual_seed(cfg.seed)
    model = _train_classifier(cfg, generator)
    images, labels = make_blob_images(cfg.n_test, cfg.noise, generator)
    with torch.no_grad():
        clean_accuracy = (model(images).argmax(1) == labels).float().mean().item()
    log.info("clean test accuracy %.3f on %d images", clean_accuracy, cfg.n_test)

    optimizers = {
        "l1q_frank_wolfe": lambda params: L1qFrankWolfe(params, **cfg.l1q),
        "l2_projected": lambda params: L2ProjectedOptim(params, **cfg.l2),
    }
    deltas, attacks = {}, {}
    for name, make_optimizer in optimizers.items():
        log.info("attack %s", name)
        deltas[name] = attack(model, images, labels, make_optimizer, cfg.attack_steps)
        attacks[name] = _perturbation_metrics(model, images, labels, deltas[name])
        log.info("  %s", json.dumps({k: round(v, 4) for k, v in attacks[name].items()}))

    metrics = {"config": asdict(cfg), "clean_accuracy": clean_accuracy, "attacks": attacks}
    if not all(math.isfinite(v) for a in attacks.values() for v in a.values()):
        raise RuntimeError("non-finite metric; refusing to report partial results")
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        _draw(images, deltas, out / "perturbations.png")
        log.info("wrote %s and %s", out / "metrics.json", out / "perturbations.png")
    return metrics

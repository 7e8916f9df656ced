"""PGD adversarial training with this project's own optimizers and solver."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import SettingError, SettingTypeError
from ..perturbations.attacks import Attack
from ..progress import Progress
from .evaluation import evaluate

__all__ = ["TrainingRecipe", "TrainingHistory", "adversarial_train", "random_shift"]

log = logging.getLogger(__name__)


def random_shift(images: Tensor, max_shift: int, generator: torch.Generator | None = None) -> Tensor:
    """Shift each image by its own random offset of up to ``max_shift`` pixels, padding with zeros.

    Vectorized: one gather for the whole batch.

    Examples
    --------
    >>> import torch
    >>> x = torch.arange(9.0).view(1, 1, 3, 3)
    >>> random_shift(x, 0).equal(x)
    True
    >>> shifted = random_shift(x.expand(64, 1, 3, 3), 1, torch.Generator().manual_seed(0))
    >>> shifted.shape, bool((shifted.flatten(1).sum(1) <= x.sum()).all())
    (torch.Size([64, 1, 3, 3]), True)
    """
    if max_shift == 0:
        return images
    n, _, height, width = images.shape
    padded = F.pad(images, (max_shift,) * 4)
    offsets = torch.randint(
        0, 2 * max_shift + 1, (2, n), generator=generator, device="cpu"
    ).to(images.device)
    rows = offsets[0].view(n, 1) + torch.arange(height, device=images.device)  # (N, H)
    cols = offsets[1].view(n, 1) + torch.arange(width, device=images.device)  # (N, W)
    batch = torch.arange(n, device=images.device).view(n, 1, 1)
    picked = padded.permute(0, 2, 3, 1)[batch, rows.view(n, height, 1), cols.view(n, 1, width)]
    return picked.permute(0, 3, 1, 2).contiguous()


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _fail(name: str, value: Any, allowed: str) -> SettingError:
    return SettingError(f"TrainingRecipe: `{name}` must be {allowed}; got {name}={value!r}", setting=name, value=value)


@dataclass
class TrainingRecipe:
    """How a model is trained: recorded verbatim in its checkpoint.

    Parameters
    ----------
    epochs : int
        Passes over the training set, >= 1.
    batch_size : int
    lr : float
        Peak learning rate of the optimizer.
    optimizer : {"sgd", "adam"}
        SGD with Nesterov momentum 0.9, or Adam.
    weight_decay : float
    schedule : {"cosine", "constant"}
        Learning rate per step: cosine decay to zero after ``warmup_epochs``
        of linear warm-up, or constant.
    warmup_epochs : float
    max_shift : int
        Random translation augmentation in pixels (0: none).
    attack : Attack or None
        The training attack (PGD); ``None`` trains on clean images only.
    clean_weight : float
        Weight of the clean loss, in [0, 1]: the loss is
        ``clean_weight * CE(clean) + (1 - clean_weight) * CE(adversarial)``.
    attack_warmup_epochs : float
        The training attack's ε grows linearly from 0 over these epochs.
    seed : int
    """

    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    max_shift: int = 0
    attack: Attack | None = None
    clean_weight: float = 0.0
    attack_warmup_epochs: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise _fail(name, value, "an integer >= 1")
        if not _finite(self.lr) or not self.lr > 0:
            raise _fail("lr", self.lr, "a finite number > 0")
        if self.optimizer not in ("sgd", "adam"):
            raise _fail("optimizer", self.optimizer, "'sgd' or 'adam'")
        if self.schedule not in ("cosine", "constant"):
            raise _fail("schedule", self.schedule, "'cosine' or 'constant'")
        if not _finite(self.clean_weight) or not 0 <= self.clean_weight <= 1:
            raise _fail("clean_weight", self.clean_weight, "a number within [0, 1]")
        for name in ("weight_decay", "warmup_epochs", "attack_warmup_epochs"):
            value = getattr(self, name)
            if not _finite(value) or not value >= 0:
                raise _fail(name, value, "a finite number >= 0")
        if self.attack is not None and not isinstance(self.attack, Attack):
            raise SettingTypeError(
                f"TrainingRecipe: `attack` must be an Attack or None; got {type(self.attack).__name__} "
                "(build one with Attack.from_dict)",
                setting="attack",
                value=self.attack,
            )
        if isinstance(self.max_shift, bool) or not isinstance(self.max_shift, int) or self.max_shift < 0:
            raise _fail("max_shift", self.max_shift, "an integer >= 0")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise _fail("seed", self.seed, "an integer")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the attack as a dict of its fields)."""
        recipe = asdict(self)
        recipe["attack"] = self.attack.to_dict() if self.attack is not None else None
        return recipe

    def learning_rate(self, step: int, total_steps: int, steps_per_epoch: int) -> float:
        """Learning rate at optimizer step ``step`` (0-based) of ``total_steps``."""
        warmup = self.warmup_epochs * steps_per_epoch
        if step < warmup:
            return self.lr * min(1.0, (step + 1) / warmup)
        if self.schedule == "constant":
            return self.lr
        progress = (step - warmup) / max(total_steps - warmup, 1)
        return 0.5 * self.lr * (1 + math.cos(math.pi * progress))


@dataclass
class TrainingHistory:
    """Per-epoch records of :func:`adversarial_train`."""

    epochs: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def _make_optimizer(recipe: TrainingRecipe, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=recipe.lr, momentum=0.9, nesterov=True, weight_decay=recipe.weight_decay
        )
    return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)


def adversarial_train(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    recipe: TrainingRecipe,
    *,
    eval_images: Tensor | None = None,
    eval_labels: Tensor | None = None,
    eval_attacks: Mapping[str, Attack] | None = None,
    eval_every: int = 5,
    eval_size: int = 500,
    device: torch.device | str = "cpu",
    progress: bool = True,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
) -> TrainingHistory:
    """Train ``model`` in place on ``(images, labels)``, adversarially when ``recipe.attack`` is set.

    Every batch, the training attack (e.g. L2 PGD: ``Attack("L2ProjectedOptim",
    epsilon, steps, lr, random_init="l2")``) runs against the current model,
    frozen, through :func:`~rai_probe.perturbations.gradient_ascent`; the model
    then takes one step on the cross-entropy of the adversarial images (mixed
    with the clean loss by ``recipe.clean_weight``).

    Parameters
    ----------
    model : nn.Module
        A classifier of images in [0, 1] (e.g. a
        :class:`~rai_probe.models.NormalizedModel`); trained in place.
    images : Tensor, shape-(N, C, H, W); labels : Tensor of int64, shape-(N,)
        The training set (kept where it is; batches move to ``device``).
    recipe : TrainingRecipe
    eval_images, eval_labels : Tensor, optional
        A held-out set measured every ``eval_every`` epochs and after the last
        one (its first ``eval_size`` images), clean and under ``eval_attacks``
        (default: the training attack, when there is one).
    device : torch.device or str
    progress : bool
        A progress bar per epoch with the running loss and accuracy.
    on_epoch_end : callable, optional
        Called with each epoch's record (e.g. to checkpoint).

    Returns
    -------
    TrainingHistory

    Examples
    --------
    Two epochs of L2 adversarial training of a linear model on random data:

    >>> import torch
    >>> from rai_probe.perturbations.attacks import Attack
    >>> torch.manual_seed(0) and None
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    >>> x, y = torch.rand(64, 1, 4, 4), torch.randint(0, 2, (64,))
    >>> recipe = TrainingRecipe(epochs=2, batch_size=32, lr=0.01,
    ...                         attack=Attack("L2ProjectedOptim", epsilon=0.5, steps=3, lr=0.25))
    >>> history = adversarial_train(model, x, y, recipe, progress=False)
    >>> [sorted(record) for record in history.epochs][0]
    ['adversarial_accuracy', 'epoch', 'loss', 'lr', 'seconds']
    """
    device = torch.device(device)
    n = images.shape[0]
    if n == 0:
        raise ValueError("adversarial_train: `images` holds no images")
    if labels.shape != (n,):
        raise ValueError(f"adversarial_train: `labels` must have shape ({n},); got {tuple(labels.shape)}")
    if (eval_images is None) != (eval_labels is None):
        raise ValueError("adversarial_train: give both `eval_images` and `eval_labels`, or neither")
    if isinstance(eval_every, bool) or not isinstance(eval_every, int) or eval_every < 1:
        raise ValueError(f"adversarial_train: `eval_every` must be an integer >= 1; got eval_every={eval_every!r}")
    if eval_attacks is None:
        eval_attacks = {"train_attack": recipe.attack} if recipe.attack is not None else {}
    torch.manual_seed(recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)
    attack_generator = torch.Generator(device=device).manual_seed(recipe.seed + 1)
    model.to(device)
    optimizer = _make_optimizer(recipe, model)
    steps_per_epoch = math.ceil(n / recipe.batch_size)
    total_steps = recipe.epochs * steps_per_epoch
    history = TrainingHistory()
    start = time.monotonic()
    step = 0
    for epoch in range(recipe.epochs):
        epoch_start = time.monotonic()
        order = torch.randperm(n, generator=generator)
        loss_sum = torch.zeros((), device=device)
        hits = torch.zeros((), device=device, dtype=torch.long)
        model.train()
        with Progress(n, f"epoch {epoch + 1}/{recipe.epochs}", enabled=progress) as bar:
            for first in range(0, n, recipe.batch_size):
                index = order[first : first + recipe.batch_size]
                x = random_shift(images[index].to(device), recipe.max_shift, generator)
                y = labels[index].to(device)
                lr = recipe.learning_rate(step, total_steps, steps_per_epoch)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                if recipe.attack is not None:
                    ramp = 1.0
                    if recipe.attack_warmup_epochs > 0:
                        ramp = min(1.0, (step + 1) / (recipe.attack_warmup_epochs * steps_per_epoch))
                    attack = recipe.attack if ramp == 1.0 else recipe.attack.with_(
                        epsilon=recipe.attack.epsilon * ramp, lr=recipe.attack.lr * ramp
                    )
                    x_train = attack.run(model, x, y, generator=attack_generator).xadv
                else:
                    x_train = x
                model.train()
                logits = model(x_train)
                loss = F.cross_entropy(logits, y)
                if recipe.attack is not None and recipe.clean_weight > 0:
                    loss = recipe.clean_weight * F.cross_entropy(model(x), y) + (
                        1 - recipe.clean_weight
                    ) * loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                loss_sum += loss.detach() * y.shape[0]
                hits += (logits.detach().argmax(1) == y).sum()
                if bar.enabled and (bar.interactive or first + recipe.batch_size >= n):  # reads sync
                    bar.update(y.shape[0], loss=loss.item(), acc=hits.item() / min(first + y.shape[0], n))
                else:
                    bar.update(y.shape[0])
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": loss_sum.item() / n,
            ("adversarial_accuracy" if recipe.attack is not None else "train_accuracy"): hits.item() / n,
            "lr": lr,
            "seconds": time.monotonic() - epoch_start,
        }
        last = epoch + 1 == recipe.epochs
        if eval_images is not None and ((epoch + 1) % eval_every == 0 or last):
            held_out = evaluate(
                model,
                eval_images[:eval_size],
                eval_labels[:eval_size],
                attacks=eval_attacks,
                device=device,
                seed=recipe.seed,
            )
            record["eval"] = held_out
            robust = ", ".join(f"{k} {v:.3f}" for k, v in held_out["robust_accuracy"].items())
            log.info(
                "epoch %d: held-out clean accuracy %.3f%s",
                epoch + 1,
                held_out["clean_accuracy"],
                f", robust accuracy {robust}" if robust else "",
            )
        log.info("epoch %d: loss %.4f (%.1f s)", epoch + 1, record["loss"], record["seconds"])
        history.epochs.append(record)
        if on_epoch_end is not None:
            on_epoch_end(record)
    history.seconds = time.monotonic() - start
    model.eval()
    return history

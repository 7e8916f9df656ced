"""Weight-randomized copies of a model: the reference of the model-randomization sanity check.

Adebayo et al. (2018), "Sanity Checks for Saliency Maps" (NeurIPS), ask of
an explanation method that its explanations *depend on the model*: explaining
a network whose learned weights were replaced by random ones should give
visibly different explanations. Their *cascading randomization* reinitializes
the layers one by one from the top (logits) down; its end state, every layer
random, is :func:`randomized_copy`. :func:`cascading_randomization` returns
the whole cascade.

A layer is a module that owns learnable parameters directly (``Conv2d``,
``Linear``, ``BatchNorm2d``, ...), in the order the modules are registered
(for the sequential architectures of :mod:`rai_probe.models`, the order of
the forward pass). Each layer is reinitialized by its own
``reset_parameters()`` (PyTorch's default initialization of a fresh layer:
Kaiming-uniform weights and uniform biases for convolutions and linear
layers; ones, zeros and reset running statistics for batch norm); a
parameter of a module without ``reset_parameters`` is drawn from a normal
distribution with the trained tensor's mean and standard deviation. Every
layer draws from its own generator seeded by ``seed`` and the layer's name,
so the cascade's last copy equals :func:`randomized_copy` exactly and the
same seed gives the same copy on every call. The caller's global random
state is left untouched.

The copy keeps the :class:`~rai_probe.models.NormalizedModel` wrapper and its
normalization buffers, and the descriptive part of ``info`` (architecture,
classes, input shape, mean/std, class names, dataset); what no longer holds
changes: ``info.metrics`` is emptied (the accuracies were the trained
weights'), ``info.training`` gains a ``"randomization"`` record and
``info.source`` says the copy is randomized.

Cost: no forward pass; one pass over the weights (a deep copy).

Examples
--------
>>> import torch
>>> from rai_probe.models import build_model, randomized_copy
>>> model = build_model("small_cnn").eval()
>>> random = randomized_copy(model, seed=1)
>>> all(not torch.equal(a, b) for a, b in zip(model.parameters(), random.parameters()))
True
>>> torch.equal(random.normalizer.std, model.normalizer.std), random.info.arch, random.training
(True, 'small_cnn', False)
>>> sorted(random.info.training["randomization"])
['layers', 'seed', 'source']
>>> torch.equal(randomized_copy(model, seed=1).model.classifier.fc3.weight, random.model.classifier.fc3.weight)
True
"""

from __future__ import annotations

import copy
import dataclasses
import zlib

import torch
from torch import nn

from .normalize import NormalizedModel

__all__ = ["randomized_copy", "cascading_randomization", "learnable_layers"]


def _check(model: object, seed: object) -> None:
    if not isinstance(model, NormalizedModel):
        raise TypeError(
            f"`model` must be a rai_probe.models.NormalizedModel (build_model, load_checkpoint, "
            f"load_pretrained); got {type(model).__name__}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"`seed` must be an int; got {seed!r}")
    if not learnable_layers(model):
        raise ValueError("`model` has no learnable parameters to randomize")


def learnable_layers(model: NormalizedModel) -> list[str]:
    """Names (in ``model.model``) of the modules owning learnable parameters, in registration order.

    Examples
    --------
    >>> from rai_probe.models import build_model
    >>> learnable_layers(build_model("small_cnn"))[-2:]
    ['classifier.fc2', 'classifier.fc3']
    """
    return [name for name, module in model.model.named_modules()
            if any(True for _ in module.parameters(recurse=False))]


def _layer_seed(seed: int, name: str) -> int:
    """A stable seed for one layer: the same for the same ``(seed, name)`` in every process."""
    return (seed * 1_000_003 + zlib.crc32(name.encode("utf-8"))) % (2**63 - 1)


@torch.no_grad()
def _reinitialize(module: nn.Module, seed: int, devices: list[int]) -> None:
    """Redraw ``module``'s own parameters (not its children's) from generators seeded by ``seed``.

    Called inside :func:`torch.random.fork_rng` over the CUDA ``devices``
    holding parameters: ``reset_parameters`` draws from the default generators.
    """
    before = {name: (p.detach().float().mean(), p.detach().float().std(unbiased=False))
              for name, p in module.named_parameters(recurse=False)}
    torch.default_generator.manual_seed(seed)
    for index in devices:
        torch.cuda.default_generators[index].manual_seed(seed)
    reset = getattr(module, "reset_parameters", None)
    if callable(reset):
        reset()
        return
    for name, parameter in module.named_parameters(recurse=False):
        mean, std = before[name]
        parameter.normal_(float(mean), float(std) if float(std) > 0 else 1.0)


def _randomized(model: NormalizedModel, layers: list[str], seed: int) -> NormalizedModel:
    clone = copy.deepcopy(model)
    modules = dict(clone.model.named_modules())
    devices = sorted({p.device.index for p in clone.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):  # the caller's random state is left as it was
        for name in layers:
            _reinitialize(modules[name], _layer_seed(seed, name), devices)
    info = model.info
    clone.info = dataclasses.replace(
        info,
        training={**info.training,
                  "randomization": {"seed": seed, "layers": list(layers), "source": info.source}},
        metrics={},
        source=f"randomized(seed={seed}, layers={len(layers)}) of {info.source}",
    )
    clone.train(model.training)
    return clone


def randomized_copy(model: NormalizedModel, seed: int = 0) -> NormalizedModel:
    """A copy of ``model`` with every learnable layer reinitialized (full cascading randomization).

    Parameters
    ----------
    model : NormalizedModel
        Left unchanged.
    seed : int, default 0
        The same seed gives the same copy.

    Returns
    -------
    NormalizedModel
        Same architecture, normalization and descriptive ``info``, random
        weights (see the module docs), in ``model``'s train/eval mode.

    Raises
    ------
    TypeError
        ``model`` is not a NormalizedModel, or ``seed`` not an int.
    ValueError
        ``model`` has no learnable parameters.

    Examples
    --------
    >>> randomized_copy(torch.nn.Linear(2, 2))
    Traceback (most recent call last):
    ...
    TypeError: `model` must be a rai_probe.models.NormalizedModel (build_model, load_checkpoint, load_pretrained); got Linear
    """
    _check(model, seed)
    return _randomized(model, learnable_layers(model), seed)


def cascading_randomization(model: NormalizedModel, seed: int = 0) -> list[tuple[str, NormalizedModel]]:
    """The cascade of Adebayo et al.: copies with the top 1, 2, ..., all layers randomized.

    Returns
    -------
    list of (str, NormalizedModel)
        ``(name of the last layer randomized, copy)``, from the top layer
        down; the last copy equals ``randomized_copy(model, seed)``.

    Examples
    --------
    >>> from rai_probe.models import build_model
    >>> model = build_model("small_cnn").eval()
    >>> cascade = cascading_randomization(model, seed=3)
    >>> [name for name, _ in cascade][:2], len(cascade)
    (['classifier.fc3', 'classifier.fc2'], 7)
    >>> first = cascade[0][1]     # only the logit layer is random
    >>> torch.equal(first.model.classifier.fc2.weight, model.model.classifier.fc2.weight)
    True
    >>> last = cascade[-1][1]
    >>> torch.equal(last.model.feature_extractor.conv1.weight,
    ...             randomized_copy(model, seed=3).model.feature_extractor.conv1.weight)
    True
    """
    _check(model, seed)
    top_down = learnable_layers(model)[::-1]
    return [(name, _randomized(model, top_down[: k + 1], seed)) for k, name in enumerate(top_down)]

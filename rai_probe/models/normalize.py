"""Input normalization owned by the model, and the metadata that describes a model.

Every model of :mod:`rai_probe.models` takes images in ``[0, 1]`` and
normalizes them itself: a :class:`NormalizedModel` is a :class:`Normalize`
layer (``(x - mean) / std`` per channel, with ``mean`` and ``std`` stored as
buffers) followed by the classifier. Attacks therefore perturb, clip and
measure in ``[0, 1]`` pixel space, whatever statistics the classifier was
trained with. :class:`ModelInfo` records what a model is (architecture,
classes, input shape, normalization) and where it came from (dataset,
training recipe, measured accuracies, source file).

Examples
--------
>>> import torch
>>> from rai_probe.models import ModelInfo, NormalizedModel
>>> info = ModelInfo(arch="linear", num_classes=2, input_shape=(1, 2, 2),
...                  mean=(0.5,), std=(0.25,))
>>> model = NormalizedModel(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)), info)
>>> model.normalizer(torch.full((1, 1, 2, 2), 0.75)).flatten().tolist()
[1.0, 1.0, 1.0, 1.0]
>>> model(torch.rand(3, 1, 2, 2)).shape
torch.Size([3, 2])
>>> info.class_names
('0', '1')
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..errors import SettingError, SettingTypeError

__all__ = ["Normalize", "NormalizedModel", "ModelInfo"]


def _float_tuple(where: str, name: str, values: Any) -> tuple[float, ...]:
    """``values`` (a sequence of reals or a tensor) as a non-empty tuple of finite floats."""
    if isinstance(values, Tensor):
        values = values.detach().cpu().reshape(-1).tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise SettingTypeError(
            f"{where}: `{name}` must be a sequence of numbers (one per channel); got {values!r}",
            setting=name,
            value=values,
        )
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise SettingTypeError(
                f"{where}: `{name}` must hold real numbers (one per channel); got {values!r}",
                setting=name,
                value=values,
            )
        if not math.isfinite(float(v)):
            raise SettingError(
                f"{where}: `{name}` must hold finite numbers; got {values!r}", setting=name, value=values
            )
        out.append(float(v))
    if not out:
        raise SettingError(
            f"{where}: `{name}` must hold at least one value (one per channel)", setting=name, value=values
        )
    return tuple(out)


def _check_mean_std(
    where: str, mean: Any, std: Any, *, same_length: bool = True, blame: str = "std"
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Both as tuples of finite floats, ``std > 0``; SettingError with ``setting`` "mean" or "std".

    ``blame`` is the setting a length mismatch is reported against (the one
    the caller was given, when the other is a default).
    """
    mean_t = _float_tuple(where, "mean", mean)
    std_t = _float_tuple(where, "std", std)
    if same_length and len(mean_t) != len(std_t):
        raise SettingError(
            f"{where}: `mean` and `std` must have one value per channel, the same number; "
            f"got {len(mean_t)} means {mean_t} and {len(std_t)} stds {std_t}",
            setting=blame,
            value=mean if blame == "mean" else std,
        )
    if any(s <= 0 for s in std_t):
        raise SettingError(
            f"{where}: every entry of `std` must be > 0; got std={std_t}", setting="std", value=std
        )
    return mean_t, std_t


class Normalize(nn.Module):
    """Per-channel normalization ``(x - mean) / std`` with ``mean`` and ``std`` as buffers.

    Parameters
    ----------
    mean, std : sequence of float or 1-D tensor
        One value per channel; every ``std`` must be > 0. They are stored as
        float32 buffers ``mean`` and ``std`` of shape ``(C, 1, 1)``, so they
        appear in the ``state_dict`` and follow ``.to(device)``.

    Notes
    -----
    The input must have ``C`` channels at dimension ``-3`` (``(N, C, H, W)`` or
    ``(C, H, W)``); any other shape raises a ``ValueError`` instead of being
    broadcast silently. Inputs are not clamped to ``[0, 1]``.

    Examples
    --------
    >>> import torch
    >>> norm = Normalize(mean=(0.5, 0.0), std=(0.5, 2.0))
    >>> norm.mean.shape, norm.std.shape
    (torch.Size([2, 1, 1]), torch.Size([2, 1, 1]))
    >>> norm(torch.ones(1, 2, 1, 1)).flatten().tolist()
    [1.0, 0.5]
    >>> sorted(norm.state_dict())
    ['mean', 'std']
    """

    mean: Tensor
    std: Tensor

    def __init__(self, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor) -> None:
        super().__init__()
        mean_t, std_t = _check_mean_std("Normalize", mean, std)
        self.register_buffer("mean", torch.tensor(mean_t, dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(std_t, dtype=torch.float32).view(-1, 1, 1))

    @property
    def num_channels(self) -> int:
        """Number of channels ``C`` this layer normalizes."""
        return self.mean.shape[0]

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim < 3 or x.shape[-3] != self.num_channels:
            raise ValueError(
                f"Normalize: expected input of shape (N, {self.num_channels}, H, W) or "
                f"({self.num_channels}, H, W); got {tuple(x.shape)}"
            )
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        mean = tuple(round(v, 4) for v in self.mean.flatten().tolist())
        std = tuple(round(v, 4) for v in self.std.flatten().tolist())
        return f"mean={mean}, std={std}"


@dataclass
class ModelInfo:
    """What a model is and where it came from; a plain attribute of :class:`NormalizedModel`.

    Parameters
    ----------
    arch : str
        Registry name of the architecture (see :data:`rai_probe.models.MODELS`).
    num_classes : int
        Number of logits.
    input_shape : tuple of int
        ``(C, H, W)`` of one input image.
    mean, std : tuple of float
        Normalization statistics, one per channel (``len == C``).
    class_names : tuple of str, optional
        One name per class; defaults to ``("0", "1", ...)``.
    dataset : str, optional
        Dataset the weights were trained on (``None`` for random weights).
    training : dict
        Training recipe, free-form but JSON-like (``str`` keys; ``str``, ``int``,
        ``float``, ``bool``, ``None``, lists, tuples and dicts as values).
    metrics : dict
        Measured accuracies, e.g. ``{"clean_accuracy": 0.98, "robust_accuracy":
        {"l2_eps1.5": 0.7}}``; JSON-like as ``training``.
    source : str, optional
        Where the weights came from: the file path for
        :func:`~rai_probe.models.load_checkpoint`, ``"builtin:<name>"`` for
        :func:`~rai_probe.models.load_pretrained`, ``None`` for a freshly built
        (randomly initialized) model.
    checkpoint_format : str, optional
        Format of the file the weights were read from: ``"rai_probe"``,
        ``"madrylab"`` or ``"state_dict"`` (``None`` when not loaded from a file).

    Raises
    ------
    TypeError, ValueError
        A field of the wrong type, ``len(mean) != C``, a ``std`` <= 0, or
        ``len(class_names) != num_classes``.

    Examples
    --------
    >>> info = ModelInfo(arch="small_cnn", num_classes=3, input_shape=(1, 28, 28),
    ...                  mean=[0.0], std=[1.0], dataset="mnist")
    >>> info.class_names, info.mean, info.input_shape
    (('0', '1', '2'), (0.0,), (1, 28, 28))
    >>> ModelInfo(arch="x", num_classes=2, input_shape=(3, 8, 8), mean=(0.5,), std=(1.0,))
    Traceback (most recent call last):
    ...
    rai_probe.errors.SettingError: ModelInfo: `mean` and `std` need one value per input channel (input_shape[0] = 3); got 1
    """

    arch: str
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] = ()
    dataset: str | None = None
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    source: str | None = None
    checkpoint_format: str | None = None

    def __post_init__(self) -> None:
        where = "ModelInfo"
        if not isinstance(self.arch, str) or not self.arch:
            raise SettingTypeError(
                f"{where}: `arch` must be a non-empty str; got {self.arch!r}", setting="arch", value=self.arch
            )
        self.num_classes = _positive_int(where, "num_classes", self.num_classes)
        self.input_shape = _input_shape(where, self.input_shape)
        self.mean, self.std = _check_mean_std(where, self.mean, self.std)
        if len(self.mean) != self.input_shape[0]:
            raise SettingError(
                f"{where}: `mean` and `std` need one value per input channel "
                f"(input_shape[0] = {self.input_shape[0]}); got {len(self.mean)}",
                setting="mean",
                value=self.mean,
            )
        names = self.class_names
        if isinstance(names, str) or not isinstance(names, Sequence):
            raise SettingTypeError(
                f"{where}: `class_names` must be a sequence of str; got {names!r}",
                setting="class_names",
                value=names,
            )
        if len(names) == 0:
            names = tuple(str(i) for i in range(self.num_classes))
        if not all(isinstance(n, str) for n in names):
            raise SettingTypeError(
                f"{where}: `class_names` must hold str only; got {tuple(names)!r}",
                setting="class_names",
                value=names,
            )
        if len(names) != self.num_classes:
            raise SettingError(
                f"{where}: `class_names` must have num_classes = {self.num_classes} entries; "
                f"got {len(names)}",
                setting="class_names",
                value=names,
            )
        self.class_names = tuple(names)
        for name in ("dataset", "source", "checkpoint_format"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise SettingTypeError(
                    f"{where}: `{name}` must be a str or None; got {value!r}", setting=name, value=value
                )
        for name in ("training", "metrics"):
            if not isinstance(getattr(self, name), dict):
                raise SettingTypeError(
                    f"{where}: `{name}` must be a dict; got {type(getattr(self, name)).__name__}",
                    setting=name,
                    value=getattr(self, name),
                )


def _positive_int(where: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise SettingTypeError(
            f"{where}: `{name}` must be a positive int; got {value!r}", setting=name, value=value
        )
    if value < 1:
        raise SettingError(
            f"{where}: `{name}` must be a positive int; got {value!r}",
            setting=name,
            value=value,
        )
    return int(value)


def _input_shape(where: str, shape: Any) -> tuple[int, int, int]:
    ok = isinstance(shape, Sequence) and not isinstance(shape, str) and len(shape) == 3
    ok = ok and all(
        isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 1 for s in shape
    )
    if not ok:
        raise SettingError(
            f"{where}: `input_shape` must be (C, H, W), three positive ints; got {shape!r}",
            setting="input_shape",
            value=shape,
        )
    return tuple(int(s) for s in shape)  # type: ignore[return-value]


class NormalizedModel(nn.Module):
    """A classifier that takes ``[0, 1]`` inputs and owns its normalization.

    ``forward(x) = model(normalizer(x))``. The normalizer is built from
    ``info.mean`` and ``info.std``; its buffers are part of the ``state_dict``
    (keys ``normalizer.mean``, ``normalizer.std``, then the classifier's keys
    under ``model.``). ``info`` is a plain attribute, not saved in the
    ``state_dict``; use :func:`~rai_probe.models.save_checkpoint` to keep both.

    Parameters
    ----------
    model : nn.Module
        The classifier, mapping normalized ``(N, C, H, W)`` inputs to
        ``(N, num_classes)`` logits.
    info : ModelInfo
        Metadata; ``info.mean`` / ``info.std`` set the normalizer.

    Attributes
    ----------
    normalizer : Normalize
    model : nn.Module
    info : ModelInfo

    Examples
    --------
    >>> import torch
    >>> info = ModelInfo(arch="tiny", num_classes=2, input_shape=(3, 4, 4),
    ...                  mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 2))
    >>> model = NormalizedModel(net, info)
    >>> list(model.state_dict())
    ['normalizer.mean', 'normalizer.std', 'model.1.weight', 'model.1.bias']
    >>> x = torch.rand(5, 3, 4, 4)
    >>> torch.equal(model(x), net((x - 0.5) / 0.5))
    True
    """

    info: ModelInfo

    def __init__(self, model: nn.Module, info: ModelInfo) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise SettingTypeError(
                f"NormalizedModel: `model` must be an nn.Module; got {type(model).__name__}",
                setting="model",
                value=model,
            )
        if not isinstance(info, ModelInfo):
            raise SettingTypeError(
                f"NormalizedModel: `info` must be a ModelInfo; got {type(info).__name__}",
                setting="info",
                value=info,
            )
        self.normalizer = Normalize(info.mean, info.std)
        self.model = model
        self.info = info

    def forward(self, x: Tensor) -> Tensor:
        return self.model(self.normalizer(x))

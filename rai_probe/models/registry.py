"""The architecture registry: names (used by the configs) mapped to builders and defaults.

======================  ================  =============  ======================  ==========
name                    input             classes        normalization           dataset
======================  ================  =============  ======================  ==========
``small_cnn``           1 x 28 x 28       10             identity                mnist
``madry_mnist_cnn``     1 x 28 x 28       10             identity                mnist
``cifar_resnet18``      3 x 32 x 32       10             CIFAR-10                cifar10
``cifar_resnet50``      3 x 32 x 32       10             CIFAR-10                cifar10
``wrn28_10``            3 x 32 x 32       10             CIFAR-10                cifar10
``imagenet_resnet50``   3 x 224 x 224     1000           ImageNet                imagenet
``torchvision:<name>``  3 x 224 x 224     1000           ImageNet                imagenet
======================  ================  =============  ======================  ==========

``torchvision:<name>`` builds ``torchvision.models.<name>`` (random weights,
nothing downloaded) when torchvision is installed (``pip install
rai_probe[vision]``); it is resolved on demand, not stored in :data:`MODELS`.

Examples
--------
>>> from rai_probe.models import MODELS, build_model
>>> sorted(MODELS)   # doctest: +NORMALIZE_WHITESPACE
['cifar_resnet18', 'cifar_resnet50', 'imagenet_resnet50', 'madry_mnist_cnn', 'small_cnn',
 'wrn28_10']
>>> model = build_model("small_cnn", num_classes=3)
>>> model.info.arch, model.info.num_classes, model.info.mean
('small_cnn', 3, (0.0,))
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Sequence

from torch import nn

from ..errors import SettingError, SettingTypeError
from .normalize import ModelInfo, NormalizedModel, _check_mean_std, _input_shape, _positive_int
from .resnet_cifar import cifar_resnet18, cifar_resnet50
from .resnet_imagenet import imagenet_resnet50
from .small_cnn import MadryMnistCNN, SmallCNN
from .wide_resnet import wide_resnet28_10

__all__ = [
    "ArchSpec",
    "MODELS",
    "TORCHVISION_PREFIX",
    "MNIST_MEAN",
    "MNIST_STD",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "build_model",
    "register_model",
    "get_arch_spec",
]

#: Identity normalization of the classic MNIST nets (they take raw [0, 1] pixels).
MNIST_MEAN: tuple[float, ...] = (0.0,)
MNIST_STD: tuple[float, ...] = (1.0,)
CIFAR10_MEAN: tuple[float, ...] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, ...] = (0.2471, 0.2435, 0.2616)
IMAGENET_MEAN: tuple[float, ...] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, ...] = (0.229, 0.224, 0.225)

#: Names starting with this prefix are built from ``torchvision.models``.
TORCHVISION_PREFIX = "torchvision:"


@dataclass(frozen=True)
class ArchSpec:
    """One registered architecture and its defaults.

    Parameters
    ----------
    name : str
        Registry key.
    builder : callable
        ``builder(num_classes) -> nn.Module``: the classifier, taking
        *normalized* inputs.
    input_shape : tuple of int
        Default ``(C, H, W)``.
    num_classes : int
        Default number of classes.
    mean, std : tuple of float
        Default normalization (one value per channel).
    dataset : str or None
        Dataset the defaults belong to.
    description : str
        One line for listings.
    flexible_size : bool, default True
        Whether inputs of another height and width than ``input_shape`` work
        (global pooling); ``False`` makes :func:`build_model` refuse them.
    ignored_keys : tuple of str, default ()
        Prefixes of checkpoint keys that this architecture knows to be unused
        (e.g. ``"sub_block1."`` of some WideResNet files);
        :func:`~rai_probe.models.load_checkpoint` drops them before the strict
        key check.

    Examples
    --------
    >>> import torch
    >>> def linear(num_classes):
    ...     return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, num_classes))
    >>> spec = ArchSpec("tiny", linear, (1, 2, 2), 2, (0.5,), (0.5,), None, "a linear probe",
    ...                 flexible_size=False)
    >>> spec.builder(spec.num_classes)(torch.rand(1, 1, 2, 2)).shape
    torch.Size([1, 2])
    """

    name: str
    builder: Callable[[int], nn.Module]
    input_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dataset: str | None
    description: str
    flexible_size: bool = True
    ignored_keys: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        where = f"ArchSpec({self.name!r})"
        if not isinstance(self.name, str) or not self.name:
            raise SettingTypeError(
                f"ArchSpec: `name` must be a non-empty str; got {self.name!r}", setting="name", value=self.name
            )
        if not callable(self.builder):
            raise SettingTypeError(
                f"{where}: `builder` must be callable(num_classes) -> nn.Module",
                setting="builder",
                value=self.builder,
            )
        shape = _input_shape(where, self.input_shape)
        mean, std = _check_mean_std(where, self.mean, self.std)
        if len(mean) != shape[0]:
            raise SettingError(
                f"{where}: `mean` and `std` need one value per input channel "
                f"(input_shape[0] = {shape[0]}); got {len(mean)}",
                setting="mean",
                value=self.mean,
            )
        if isinstance(self.ignored_keys, str):
            raise SettingTypeError(
                f"{where}: `ignored_keys` must be a tuple of str, not a str",
                setting="ignored_keys",
                value=self.ignored_keys,
            )
        object.__setattr__(self, "input_shape", shape)
        object.__setattr__(self, "num_classes", _positive_int(where, "num_classes", self.num_classes))
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "ignored_keys", tuple(self.ignored_keys))


#: The registry, keyed by name. Add to it with :func:`register_model`.
MODELS: dict[str, ArchSpec] = {
    spec.name: spec
    for spec in (
        ArchSpec(
            "small_cnn",
            lambda num_classes: SmallCNN(num_classes),
            (1, 28, 28),
            10,
            MNIST_MEAN,
            MNIST_STD,
            "mnist",
            "TRADES-style small CNN: 4 conv 3x3 (32, 32, 64, 64), 2 max-pools, fc 1024-200-200-classes",
            flexible_size=False,
        ),
        ArchSpec(
            "madry_mnist_cnn",
            lambda num_classes: MadryMnistCNN(num_classes),
            (1, 28, 28),
            10,
            MNIST_MEAN,
            MNIST_STD,
            "mnist",
            "MadryLab MNIST-challenge CNN: conv 5x5 32, pool, conv 5x5 64, pool, fc 3136-1024-classes",
            flexible_size=False,
        ),
        ArchSpec(
            "cifar_resnet18",
            cifar_resnet18,
            (3, 32, 32),
            10,
            CIFAR10_MEAN,
            CIFAR10_STD,
            "cifar10",
            "CIFAR ResNet-18 (MadryLab / RobustBench layout: shortcut, linear)",
        ),
        ArchSpec(
            "cifar_resnet50",
            cifar_resnet50,
            (3, 32, 32),
            10,
            CIFAR10_MEAN,
            CIFAR10_STD,
            "cifar10",
            "CIFAR ResNet-50 (MadryLab / RobustBench layout: shortcut, linear)",
        ),
        ArchSpec(
            "wrn28_10",
            wide_resnet28_10,
            (3, 32, 32),
            10,
            CIFAR10_MEAN,
            CIFAR10_STD,
            "cifar10",
            "WideResNet-28-10 (RobustBench layout: block1-3, convShortcut, fc)",
            ignored_keys=("sub_block1.",),
        ),
        ArchSpec(
            "imagenet_resnet50",
            imagenet_resnet50,
            (3, 224, 224),
            1000,
            IMAGENET_MEAN,
            IMAGENET_STD,
            "imagenet",
            "ImageNet ResNet-50 (torchvision keys: downsample, fc)",
        ),
    )
}


def register_model(spec: ArchSpec, *, replace: bool = False) -> None:
    """Add an architecture to :data:`MODELS` so configs and checkpoints can name it.

    Parameters
    ----------
    spec : ArchSpec
    replace : bool, default False
        Allow replacing an existing entry of the same name.

    Raises
    ------
    TypeError
        ``spec`` is not an :class:`ArchSpec`.
    ValueError
        The name is taken (and ``replace`` is false) or starts with
        ``"torchvision:"``.

    Examples
    --------
    >>> import torch
    >>> def linear(num_classes):
    ...     return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, num_classes))
    >>> spec = ArchSpec("doc_linear", linear, (1, 2, 2), 2, (0.0,), (1.0,), None, "a linear probe")
    >>> register_model(spec)
    >>> build_model("doc_linear")(torch.rand(3, 1, 2, 2)).shape
    torch.Size([3, 2])
    >>> del MODELS["doc_linear"]    # tidy up the global registry
    """
    if not isinstance(spec, ArchSpec):
        raise SettingTypeError(
            f"register_model: `spec` must be an ArchSpec; got {type(spec).__name__}", setting="spec", value=spec
        )
    if spec.name.startswith(TORCHVISION_PREFIX):
        raise SettingError(
            f"register_model: names starting with {TORCHVISION_PREFIX!r} are reserved for "
            f"torchvision models; got {spec.name!r}",
            setting="spec",
            value=spec.name,
        )
    if spec.name in MODELS and not replace:
        raise SettingError(
            f"register_model: {spec.name!r} is already registered; pass replace=True to replace it",
            setting="replace",
            value=replace,
        )
    MODELS[spec.name] = spec


def _unknown(name: object) -> SettingError:
    return SettingError(
        f"unknown model architecture {name!r}; registered names: {sorted(MODELS)}, "
        f"or '{TORCHVISION_PREFIX}<name>' for any torchvision.models classifier "
        f"(needs the optional torchvision: pip install rai_probe[vision])",
        setting="arch",
        value=name,
    )


def _torchvision_spec(name: str) -> ArchSpec:
    tv_name = name[len(TORCHVISION_PREFIX):]
    try:
        tv_models = importlib.import_module("torchvision.models")
    except ImportError as err:  # not installed, or a broken build
        raise ImportError(
            f"model {name!r} needs torchvision, an optional dependency of rai_probe that is not "
            f"importable here ({err}); install it with: pip install rai_probe[vision]"
        ) from err
    if hasattr(tv_models, "list_models"):
        available = sorted(tv_models.list_models(module=tv_models))
        known = tv_name in available
    else:  # torchvision < 0.14
        available, known = [], callable(getattr(tv_models, tv_name, None))
    if not tv_name or not known:
        raise SettingError(
            f"unknown torchvision model {tv_name!r} (from {name!r}); torchvision classifiers: "
            f"{available or 'see torchvision.models'}",
            setting="arch",
            value=name,
        )

    def builder(num_classes: int) -> nn.Module:
        if hasattr(tv_models, "get_model"):
            return tv_models.get_model(tv_name, weights=None, num_classes=num_classes)
        return getattr(tv_models, tv_name)(num_classes=num_classes)

    return ArchSpec(
        name,
        builder,
        (3, 224, 224),
        1000,
        IMAGENET_MEAN,
        IMAGENET_STD,
        "imagenet",
        f"torchvision.models {tv_name} (random weights; nothing is downloaded)",
    )


def get_arch_spec(name: str) -> ArchSpec:
    """The :class:`ArchSpec` registered as ``name``, or built for ``"torchvision:<name>"``.

    Raises
    ------
    SettingError
        Unknown name (the message lists the registered names); ``setting="arch"``.
    SettingTypeError
        ``name`` is not a str.
    ImportError
        A ``torchvision:`` name without torchvision installed.

    Examples
    --------
    >>> get_arch_spec("cifar_resnet18").mean
    (0.4914, 0.4822, 0.4465)
    >>> get_arch_spec("resnet18")    # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    rai_probe.errors.SettingError: unknown model architecture 'resnet18'; registered names: [...], or 'torchvision:<name>' ...
    """
    if not isinstance(name, str):
        raise SettingTypeError(
            f"model architecture name must be a str; got {type(name).__name__}", setting="arch", value=name
        )
    if name in MODELS:
        return MODELS[name]
    if name.startswith(TORCHVISION_PREFIX):
        return _torchvision_spec(name)
    raise _unknown(name)


def build_model(
    name: str,
    *,
    num_classes: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
    input_shape: Sequence[int] | None = None,
) -> NormalizedModel:
    """Build a registered architecture (random weights) wrapped with its normalization.

    Parameters
    ----------
    name : str
        A key of :data:`MODELS`, or ``"torchvision:<name>"``.
    num_classes : int, optional
        Defaults to ``len(class_names)`` when given, else the spec's default.
    mean, std : sequence of float, optional
        Override the spec's normalization (one value per channel; both or
        either).
    class_names : sequence of str, optional
        Defaults to ``("0", "1", ...)``.
    input_shape : (C, H, W), optional
        Nominal input shape recorded in ``info``; ``C`` must be the
        architecture's, and ``H, W`` may differ only for architectures with
        ``flexible_size``.

    Returns
    -------
    NormalizedModel
        In training mode (as any fresh ``nn.Module``), with ``info`` filled
        from the spec (``source=None``).

    Raises
    ------
    SettingError
        Unknown ``name`` (listing the registered names; ``setting="arch"``) or
        inconsistent options (``setting`` names the option: ``"num_classes"``,
        ``"class_names"``, ``"input_shape"``, ``"mean"``, ``"std"``).
    SettingTypeError
        An option of the wrong type.

    Examples
    --------
    >>> import torch
    >>> model = build_model("small_cnn", class_names=["cat", "dog"])
    >>> model.info.num_classes, model.info.class_names, model.info.input_shape
    (2, ('cat', 'dog'), (1, 28, 28))
    >>> model.eval()(torch.rand(4, 1, 28, 28)).shape
    torch.Size([4, 2])
    >>> build_model("small_cnn", mean=(0.1307,), std=(0.3081,)).normalizer
    Normalize(mean=(0.1307,), std=(0.3081,))
    """
    spec = get_arch_spec(name)
    where = f"build_model({name!r})"
    if class_names is not None:
        if isinstance(class_names, str) or not isinstance(class_names, Sequence):
            raise SettingTypeError(
                f"{where}: `class_names` must be a sequence of str; got {class_names!r}",
                setting="class_names",
                value=class_names,
            )
        class_names = tuple(class_names)
    if num_classes is None:
        num_classes = len(class_names) if class_names else spec.num_classes
    num_classes = _positive_int(where, "num_classes", num_classes)
    if class_names and len(class_names) != num_classes:
        raise SettingError(
            f"{where}: `class_names` has {len(class_names)} entries but num_classes={num_classes}",
            setting="class_names",
            value=class_names,
        )
    shape = spec.input_shape if input_shape is None else _input_shape(where, input_shape)
    if shape[0] != spec.input_shape[0]:
        raise SettingError(
            f"{where}: this architecture takes {spec.input_shape[0]} input channel(s); "
            f"got input_shape={shape}",
            setting="input_shape",
            value=input_shape,
        )
    if shape[1:] != spec.input_shape[1:] and not spec.flexible_size:
        raise SettingError(
            f"{where}: this architecture needs inputs of exactly {spec.input_shape}; "
            f"got input_shape={shape}",
            setting="input_shape",
            value=input_shape,
        )
    mean_t, std_t = _check_mean_std(
        where,
        spec.mean if mean is None else mean,
        spec.std if std is None else std,
        blame="mean" if mean is not None and std is None else "std",
    )
    if len(mean_t) != shape[0]:
        raise SettingError(
            f"{where}: `mean` and `std` need one value per input channel ({shape[0]}); "
            f"got mean={mean_t}, std={std_t}",
            setting="mean" if mean is not None else "std",
            value=mean if mean is not None else std,
        )
    info = ModelInfo(
        arch=name,
        num_classes=int(num_classes),
        input_shape=shape,
        mean=mean_t,
        std=std_t,
        class_names=class_names or (),
        dataset=spec.dataset,
    )
    classifier = spec.builder(int(num_classes))
    if not isinstance(classifier, nn.Module):
        raise SettingTypeError(
            f"{where}: the spec's builder returned {type(classifier).__name__}, not an nn.Module",
            setting="arch",
            value=name,
        )
    return NormalizedModel(classifier, info)

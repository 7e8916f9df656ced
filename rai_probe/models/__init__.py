"""Robust-classifier architectures, their registry, and safe checkpoint loading.

Every model is a :class:`NormalizedModel`: it takes images in ``[0, 1]`` and
owns its normalization (a :class:`Normalize` layer with ``mean`` / ``std``
buffers) in front of the classifier. :func:`build_model` builds a registered
architecture by name (see :data:`MODELS`); :func:`load_checkpoint` reads
MadryLab ``robustness``, RobustBench, plain state_dict and rai_probe files,
always with ``torch.load(weights_only=True)`` unless ``trust_checkpoint=True``;
:func:`save_checkpoint` writes the rai_probe format, which records everything
needed to rebuild the model; :func:`load_pretrained` loads a model shipped
with the package; :func:`randomized_copy` reinitializes a model's weights
(the reference of the sanity checks, docs/sanity_checks.md). See docs/models.md.

Examples
--------
>>> import torch
>>> from rai_probe.models import build_model
>>> model = build_model("small_cnn").eval()
>>> model(torch.rand(2, 1, 28, 28)).shape
torch.Size([2, 10])
"""

from .checkpoints import (
    CheckpointError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    UnreadableCheckpointError,
    UnsafeCheckpointError,
    detect_format,
    load_checkpoint,
    read_checkpoint_info,
    read_torch_file,
    save_checkpoint,
)
from .normalize import ModelInfo, Normalize, NormalizedModel
from .pretrained import DEFAULT_MODEL, PRETRAINED, load_pretrained, pretrained_path
from .randomize import cascading_randomization, learnable_layers, randomized_copy
from .registry import MODELS, ArchSpec, build_model, get_arch_spec, register_model
from .resnet_cifar import CifarResNet, cifar_resnet18, cifar_resnet50
from .resnet_imagenet import ImageNetResNet, imagenet_resnet50
from .small_cnn import MadryMnistCNN, SmallCNN
from .wide_resnet import WideResNet, wide_resnet28_10

__all__ = [
    "Normalize",
    "NormalizedModel",
    "ModelInfo",
    "ArchSpec",
    "MODELS",
    "build_model",
    "register_model",
    "get_arch_spec",
    "CheckpointError",
    "CheckpointMismatchError",
    "UnsafeCheckpointError",
    "UnreadableCheckpointError",
    "CheckpointNotFoundError",
    "read_torch_file",
    "load_checkpoint",
    "save_checkpoint",
    "detect_format",
    "read_checkpoint_info",
    "PRETRAINED",
    "DEFAULT_MODEL",
    "pretrained_path",
    "load_pretrained",
    "randomized_copy",
    "cascading_randomization",
    "learnable_layers",
    "SmallCNN",
    "MadryMnistCNN",
    "CifarResNet",
    "cifar_resnet18",
    "cifar_resnet50",
    "WideResNet",
    "wide_resnet28_10",
    "ImageNetResNet",
    "imagenet_resnet50",
]

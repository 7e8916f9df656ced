"""Image datasets for probing: built-in offline digits, the user's files, synthetic seeds.

Every loader returns an :class:`ImageDataset`: ``float32`` images in
``[0, 1]`` of shape ``(N, C, H, W)``, ``int64`` labels (or ``None``) and the
class names.

* Built in, no download: ``mnist5k`` (:func:`load_mnist5k`, the default: 5,000
  real 28x28 MNIST digits) and ``digits`` (:func:`load_digits`, the UCI 8x8
  digits), each with a fixed train/test split; their small data files ship
  inside the package (``rai_probe/data/files/``, with their licences).
* From disk, in their standard formats, without torchvision: MNIST-style idx
  files (:func:`load_mnist_idx`), CIFAR-10 python batches
  (:func:`load_cifar10`, unpickled with an allow-list), image folders
  (:func:`load_image_folder`).
* Seeds for concept probing: :func:`make_seeds` (``noise``, ``gray``).
* Synthetic labeled images for tests and examples: :func:`make_blob_images`.
* By name: :func:`load_dataset` and the :data:`DATASETS` registry.

Missing files raise :class:`DataNotFoundError` (a :class:`FileNotFoundError`),
unreadable ones :class:`UnreadableDataError` (an :class:`OSError`), malformed
ones :class:`DataFormatError`; all three are
:class:`~rai_probe.errors.SettingError` s (``ValueError``) with
``setting="root"``, and name the path, the cause and the expected format.
Declared sizes are checked before data is read or decompressed. See
docs/data.md.

Examples
--------
>>> from rai_probe.data import load_dataset
>>> test = load_dataset("mnist5k")
>>> len(test), test.image_shape, test.num_classes
(1000, (1, 28, 28), 10)
"""

from .builtin import DIGIT_CLASSES, load_digits, load_mnist5k
from .cifar import CIFAR10_CLASSES, RestrictedUnpickler, load_cifar10
from .datasets import DataFormatError, DataNotFoundError, ImageDataset, UnreadableDataError
from .folder import IMAGE_EXTENSIONS, load_image_folder
from .idx import FASHION_MNIST_CLASSES, load_mnist_idx, read_idx
from .registry import DATASETS, DEFAULT_DATASET, load_dataset
from .seeds import make_seeds
from .synthetic import make_blob_images

__all__ = [
    "ImageDataset",
    "DataFormatError",
    "UnreadableDataError",
    "DataNotFoundError",
    "load_mnist5k",
    "load_digits",
    "load_mnist_idx",
    "read_idx",
    "load_cifar10",
    "RestrictedUnpickler",
    "load_image_folder",
    "make_seeds",
    "make_blob_images",
    "DATASETS",
    "DEFAULT_DATASET",
    "load_dataset",
    "DIGIT_CLASSES",
    "FASHION_MNIST_CLASSES",
    "CIFAR10_CLASSES",
    "IMAGE_EXTENSIONS",
]

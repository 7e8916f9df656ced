"""Images from a folder on the user's disk, decoded with Pillow.

Two layouts are recognized:

* **class folders** -- ``root/<class name>/<image>``: labeled, the classes are
  the subfolder names in sorted order (label ``i`` is the ``i``-th name), and
  images may sit in nested folders below their class folder;
* **flat** -- ``root/<image>``: unlabeled (``labels`` is ``None``, no class
  names), for probing a model on arbitrary pictures.

Files and folders whose names start with ``.`` are skipped, as are files
whose extension is not in ``extensions``. Images are read in sorted path
order.

Examples
--------
>>> import tempfile
>>> from pathlib import Path
>>> from PIL import Image
>>> from rai_probe.data import load_image_folder
>>> root = Path(tempfile.mkdtemp())
>>> for cls, value in (("cat", 0), ("dog", 255)):
...     (root / cls).mkdir()
...     Image.new("L", (4, 3), value).save(root / cls / "0.png")
>>> ds = load_image_folder(root)
>>> ds.class_names, ds.labels, ds.images.shape, ds.images.amax(dim=(1, 2, 3))
(('cat', 'dog'), tensor([0, 1]), torch.Size([2, 1, 3, 4]), tensor([0., 1.]))
"""

from __future__ import annotations

import numbers
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .._io import os_error_reason
from ..errors import SettingError, SettingTypeError
from .datasets import DataFormatError, ImageDataset, UnreadableDataError, checked_folder, open_data_file

__all__ = ["load_image_folder", "IMAGE_EXTENSIONS", "IMAGE_MODES", "MAX_IMAGE_PIXELS", "FITS"]

#: The most pixels (width x height, from the file's header) an image may declare; larger
#: ones are refused before their pixels are decoded (decompression bombs). 2**26 is
#: 8192 x 8192; Pillow's own limit (``PIL.Image.MAX_IMAGE_PIXELS``) applies too.
MAX_IMAGE_PIXELS = 2**26

#: File extensions read by default (compared case-insensitively).
IMAGE_EXTENSIONS = (
    ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp",
    ".ppm", ".pgm", ".pbm", ".pnm",
)  # fmt: skip

#: Values of ``mode``.
IMAGE_MODES = ("auto", "L", "RGB")

#: Pillow modes counted as grayscale by ``mode="auto"``.
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
#: Pillow modes holding more than 8 bits per pixel, scaled by their full range.
_DEEP_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N"}
#: How :func:`load_image_folder` brings images of another aspect ratio to ``size``.
FITS = ("crop", "pad", "stretch")
_LAYOUTS = "root/<class>/<image> (one subfolder per class) or a flat folder of images"


def load_image_folder(
    root: str | os.PathLike,
    *,
    size: int | tuple[int, int] | None = None,
    mode: str = "auto",
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    fit: str = "crop",
) -> ImageDataset:
    """The images of a folder: one subfolder per class (labeled) or flat (unlabeled).

    Parameters
    ----------
    root : path
        The folder; see the module docstring for the two layouts.
    size : None, int or (int, int)
        ``None``: every image must already have the same size. An ``int``
        ``s`` or a pair ``(H, W)``: every image is brought to ``s x s`` or
        ``H x W`` as `fit` says, with Pillow's bilinear filter (antialiased
        when shrinking).
    fit : {"crop", "pad", "stretch"}
        How an image of another aspect ratio is brought to `size`:
        ``"crop"`` (default) resizes it, keeping its aspect ratio, until it
        covers ``H x W`` and cuts the centre (the usual resize + centre crop);
        ``"pad"`` resizes it until it fits inside and pads the borders with
        black; ``"stretch"`` resizes each side on its own (distorts).
    mode : {"auto", "L", "RGB"}
        ``"L"``: one channel (color images converted with Pillow's luma
        formula); ``"RGB"``: three channels (grayscale replicated, alpha
        dropped); ``"auto"``: ``"L"`` if every image is grayscale (Pillow
        modes ``1``, ``L``, ``LA``, ``I``, ``I;16``, ``F``), else ``"RGB"``.
    extensions : sequence of str
        The file extensions to read, case-insensitive, with or without the dot.

    Returns
    -------
    ImageDataset
        ``float32`` images in ``[0, 1]`` (8-bit pixels / 255, 16-bit / 65535),
        name ``"folder"``, split ``None``; labels and class names for the
        class-folder layout, ``None`` and ``()`` for a flat folder; ``files``:
        each image's path relative to `root` (posix form).

    Raises
    ------
    DataNotFoundError
        `root` is not a folder (a ``FileNotFoundError``).
    UnreadableDataError
        `root` or an image cannot be read (permission denied, ...).
    DataFormatError
        No images in `root`; a class folder without images; images both
        directly in `root` and in subfolders; a file Pillow cannot decode;
        an image whose header declares more than :data:`MAX_IMAGE_PIXELS`
        pixels, or that Pillow flags as a decompression bomb (refused before
        its pixels are decoded); a floating-point image with values outside
        ``[0, 1]``. ``setting="root"``, ``value`` the path at fault.
    SettingError, SettingTypeError
        Images of different sizes with ``size=None`` (the error names the
        first one that differs; ``setting="size"``); a bad `size`, `mode` or
        `extensions` (``setting`` names it).

    Examples
    --------
    A flat folder of RGB images, resized:

    >>> import tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> root = Path(tempfile.mkdtemp())
    >>> Image.new("RGB", (8, 8), (255, 0, 0)).save(root / "red.png")
    >>> Image.new("RGB", (4, 6), (0, 0, 255)).save(root / "blue.png")
    >>> ds = load_image_folder(root, size=2)
    >>> ds.labeled, ds.images.shape, ds.images[:, :, 0, 0]   # blue.png sorts first
    (False, torch.Size([2, 3, 2, 2]), tensor([[0., 0., 1.], [1., 0., 0.]]))
    >>> ds.files
    ('blue.png', 'red.png')
    """
    target = _checked_size(size)
    if not isinstance(fit, str) or fit not in FITS:
        raise SettingError(f"`fit` must be one of {FITS}; got {fit!r}", setting="fit", value=fit)
    if not isinstance(mode, str) or mode not in IMAGE_MODES:
        raise SettingError(f"`mode` must be one of {IMAGE_MODES}; got {mode!r}", setting="mode", value=mode)
    suffixes = _checked_extensions(extensions)
    folder = checked_folder(root, f"expected {_LAYOUTS}")
    files, labels, class_names = _list_images(folder, suffixes)
    decoded = [_decode(path, mode, target, fit) for path in files]
    if target is None:
        first = decoded[0].shape[:2]
        for path, array in zip(files, decoded):
            if array.shape[:2] != first:
                raise SettingError(
                    f"{path} is {array.shape[0]}x{array.shape[1]} (H x W) but {files[0]} is "
                    f"{first[0]}x{first[1]}; all images of {folder} must share one size, "
                    f"or pass size=(H, W) to resize them, e.g. size={tuple(first)}",
                    setting="size",
                    value=size,
                )
    gray = mode == "L" or (mode == "auto" and all(array.ndim == 2 for array in decoded))
    if gray:
        stacked = np.stack(decoded)[:, None]
    else:
        stacked = np.stack([_as_rgb(array) for array in decoded]).transpose(0, 3, 1, 2)
    return ImageDataset(
        images=torch.from_numpy(np.ascontiguousarray(stacked)),
        labels=None if labels is None else torch.tensor(labels, dtype=torch.int64),
        class_names=class_names,
        name="folder",
        split=None,
        files=tuple(path.relative_to(folder).as_posix() for path in files),
    )


def _checked_size(size: object) -> tuple[int, int] | None:
    if size is None:
        return None
    pair = (size, size) if isinstance(size, numbers.Integral) else size
    if (
        not isinstance(pair, (tuple, list))
        or len(pair) != 2
        or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in pair)
    ):
        raise SettingTypeError(
            f"`size` must be None, an int or a pair of ints (H, W); got {size!r}", setting="size", value=size
        )
    if min(pair) < 1:
        raise SettingError(f"`size` must be positive; got {size!r}", setting="size", value=size)
    return int(pair[0]), int(pair[1])


def _checked_extensions(extensions: object) -> tuple[str, ...]:
    if isinstance(extensions, str):
        extensions = (extensions,)
    if not isinstance(extensions, Sequence) or not extensions or not all(
        isinstance(e, str) and e.strip(".") for e in extensions
    ):
        raise SettingError(
            f"`extensions` must be a non-empty sequence of file extensions such as "
            f"('.png', '.jpg'); got {extensions!r}",
            setting="extensions",
            value=extensions,
        )
    return tuple("." + e.lower().lstrip(".") for e in extensions)


def _is_image(path: Path, suffixes: tuple[str, ...]) -> bool:
    return path.is_file() and path.suffix.lower() in suffixes and not path.name.startswith(".")


def _list_images(
    folder: Path, suffixes: tuple[str, ...]
) -> tuple[list[Path], list[int] | None, tuple[str, ...]]:
    """``(files, labels or None, class names)`` of the folder's layout."""
    try:
        entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as err:
        raise UnreadableDataError(
            f"{folder}: cannot be read ({os_error_reason(err)}); expected {_LAYOUTS}", path=folder, cause=err
        ) from None
    top = [p for p in entries if _is_image(p, suffixes)]
    per_class = {}
    for sub in (p for p in entries if p.is_dir()):
        per_class[sub.name] = sorted(
            p
            for p in sub.rglob("*")
            if _is_image(p, suffixes)
            and not any(part.startswith(".") for part in p.relative_to(sub).parts)
        )
    with_images = [name for name, found in per_class.items() if found]
    wanted = f"files ending in {', '.join(suffixes)}"
    if top and with_images:
        raise DataFormatError(
            f"{folder}: holds images both directly ({top[0].name}, ...) and in subfolders "
            f"({with_images[0]}/, ...); expected {_LAYOUTS}, not both",
            value=str(folder),
        )
    if top:
        return top, None, ()
    if not with_images:
        raise DataFormatError(f"{folder}: no images ({wanted}); expected {_LAYOUTS}", value=str(folder))
    empty = [name for name, found in per_class.items() if not found]
    if empty:
        raise DataFormatError(
            f"{folder / empty[0]}: class folder without images ({wanted}); expected "
            f"{_LAYOUTS}, with at least one image per class"
        )
    class_names = tuple(per_class)  # sorted, as `entries` is
    files = [path for name in class_names for path in per_class[name]]
    labels = [label for label, name in enumerate(class_names) for _ in per_class[name]]
    return files, labels, class_names


_DECODABLE = (
    "expected an image file that Pillow reads (PNG, JPEG, BMP, GIF, TIFF, WebP, PPM, ...)"
)


def _decode(path: Path, mode: str, size: tuple[int, int] | None, fit: str = "crop") -> np.ndarray:
    """``float32`` pixels in ``[0, 1]``: ``(H, W)`` for grayscale, ``(H, W, 3)`` for color.

    The file's header is read first and its declared size checked
    (:func:`_check_pixels`) before a single pixel is decoded.
    """
    from PIL import Image

    with open_data_file(path, _DECODABLE) as file:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(file) as image:  # reads the header only
                    _check_pixels(image.size, path)
                    image.load()
                    return _pixels(image, path, mode, size, fit)
        except (DataFormatError, MemoryError):
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise DataFormatError(
                f"{path}: refused as a decompression bomb before decoding it ({err})",
                value=str(path),
            ) from None
        except Exception as err:  # a malformed image surfaces as many exception types
            if isinstance(err, OSError) and err.errno is not None:
                raise UnreadableDataError(
                    f"{path}: reading failed ({os_error_reason(err)}); {_DECODABLE}", path=path, cause=err
                ) from None
            raise DataFormatError(
                f"{path}: could not be decoded as an image ({err}); {_DECODABLE}", value=str(path)
            ) from None


def _check_pixels(declared: tuple[int, int], path: Path) -> None:
    width, height = declared
    if width * height > MAX_IMAGE_PIXELS:
        raise DataFormatError(
            f"{path}: its header declares {width}x{height} = {width * height} pixels, more than "
            f"the limit of {MAX_IMAGE_PIXELS} (rai_probe.data.folder.MAX_IMAGE_PIXELS); refused as "
            f"a decompression bomb before decoding it",
            value=str(path),
        )


def _fitted(image, size: tuple[int, int], fit: str, resample):
    """``image`` (a Pillow image) brought to ``size`` (H, W) as `fit` says (see load_image_folder)."""
    from PIL import Image

    height, width = size
    if fit == "stretch" or image.size == (width, height):
        return image.resize((width, height), resample)
    scale = (max if fit == "crop" else min)(height / image.height, width / image.width)
    new_width, new_height = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    resized = image.resize((new_width, new_height), resample)
    left, top = (new_width - width) // 2, (new_height - height) // 2
    if fit == "crop":
        return resized.crop((left, top, left + width, top + height))
    canvas = Image.new(resized.mode, (width, height), 0)
    canvas.paste(resized, (-left, -top))
    return canvas


def _pixels(image, path: Path, mode: str, size: tuple[int, int] | None, fit: str = "crop") -> np.ndarray:
    from PIL import Image

    resample = Image.Resampling.BILINEAR
    if image.mode in _GRAY_MODES and image.mode not in ("1", "L", "LA", "La"):
        array = np.asarray(image, dtype=np.float32)  # 16-bit / 32-bit integer or float
        if image.mode in _DEEP_MODES:
            scale = 65535.0
        else:
            scale = 1.0
        low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
        if not (0.0 <= low and high <= scale):
            raise DataFormatError(
                f"{path}: {image.mode}-mode pixels in [{low:g}, {high:g}]; expected "
                f"values in [0, {scale:g}] for this mode",
                value=str(path),
            )
        array = array / scale
        if size is not None:
            resized = _fitted(Image.fromarray(array, mode="F"), size, fit, resample)
            array = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)
        return array
    if mode == "L" or image.mode in _GRAY_MODES:
        image = image.convert("L")
    else:
        image = image.convert("RGB")
    if size is not None:
        image = _fitted(image, size, fit, resample)
    return np.asarray(image, dtype=np.float32) / 255.0


def _as_rgb(array: np.ndarray) -> np.ndarray:
    return np.repeat(array[:, :, None], 3, axis=2) if array.ndim == 2 else array

"""Safe checkpoint loading (MadryLab, RobustBench, plain state_dicts, our own format) and saving.

Every file is first checked without unpickling anything
(:func:`read_torch_file`, built on :mod:`rai_probe.models._torchfile`): it
must be a file ``torch.save`` writes, its declared sizes must be plausible,
and the Python globals its pickles name are listed. A file of tensors and
plain containers is then read with ``torch.load(..., weights_only=True)``.
A file that names other globals (a pickled ``argparse.Namespace``, a whole
``nn.Module``, ``os.system``...) holds code and raises
:class:`UnsafeCheckpointError`; ``trust_checkpoint=True`` (the bool, nothing
else) is the explicit, per-call opt-in to full unpickling, with a warning.
A file that is not a checkpoint at all (corrupt, truncated, random bytes,
another format) raises a plain :class:`CheckpointError`, which never
suggests trusting it; a file that cannot be read raises
:class:`UnreadableCheckpointError` (:class:`CheckpointNotFoundError` when it
is missing). Every error is a :class:`~rai_probe.errors.SettingError` whose
``setting`` names the argument to change.

==============  ===========================================  ==========================================
format          how it is recognized                         what is loaded
==============  ===========================================  ==========================================
``rai_probe``   ``{"format": "rai_probe.checkpoint", ...}``  everything: architecture, classes, input
                written by :func:`save_checkpoint`           shape, normalization, class names, dataset,
                                                             training recipe, metrics, weights
``madrylab``    a state_dict (under ``"model"`` or           the classifier (``model.*``) and the
                ``"state_dict"``, or top-level) with keys    normalizer (``normalizer.new_mean`` /
                ``[module.]normalizer.new_mean`` or          ``new_std``); ``attacker.*`` (a second
                ``[module.]attacker.model.*``                reference to the same weights) is ignored
``state_dict``  a mapping of names to tensors, top-level or  the classifier; normalization from the
                under ``"state_dict"`` / ``"model"`` /       arguments or the architecture's defaults
                ``"net"`` (RobustBench and plain files)      (or from ``normalizer.mean`` / ``std`` in
                                                             a ``NormalizedModel.state_dict()``)
==============  ===========================================  ==========================================

Leading ``module.`` prefixes (``nn.DataParallel``) are stripped. Loading is
strict by default: any missing key, unexpected key or shape mismatch raises
:class:`CheckpointMismatchError` with a readable report.

Examples
--------
>>> import tempfile, pathlib, torch
>>> from rai_probe.models import build_model, save_checkpoint, load_checkpoint
>>> model = build_model("small_cnn").eval()
>>> x = torch.rand(2, 1, 28, 28)
>>> with tempfile.TemporaryDirectory() as tmp:
...     path = pathlib.Path(tmp) / "net.pt"
...     save_checkpoint(model, path, metrics={"clean_accuracy": 0.1})
...     loaded = load_checkpoint(path)
>>> torch.equal(loaded(x), model(x)), loaded.info.metrics, loaded.info.checkpoint_format
(True, {'clean_accuracy': 0.1}, 'rai_probe')
"""

from __future__ import annotations

import os
import pathlib
import warnings
from collections import OrderedDict
from typing import Any, BinaryIO, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .._io import open_regular_file, os_error_reason, rebuild_error, write_atomic
from ..errors import UNSET, SettingError, SettingTypeError
from ._torchfile import ImplausibleSize, NotATorchFile, inspect_torch_file
from .normalize import ModelInfo, NormalizedModel, _check_mean_std, _positive_int
from .registry import MODELS, TORCHVISION_PREFIX, build_model, get_arch_spec

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "UnsafeCheckpointError",
    "UnreadableCheckpointError",
    "CheckpointNotFoundError",
    "FORMAT_TAG",
    "FORMAT_VERSION",
    "load_checkpoint",
    "save_checkpoint",
    "detect_format",
    "read_checkpoint_info",
    "read_torch_file",
]

#: The ``"format"`` entry of a file written by :func:`save_checkpoint`.
FORMAT_TAG = "rai_probe.checkpoint"
#: The ``"version"`` entry of a file written by :func:`save_checkpoint`.
FORMAT_VERSION = 1

#: Keys under which a state_dict may sit in a RobustBench / plain file.
_STATE_DICT_KEYS = ("state_dict", "model", "net")
#: Keys under which MadryLab ``robustness`` stores the attacker model's state_dict.
_MADRYLAB_KEYS = ("model", "state_dict")
_MADRYLAB_MARKERS = (
    "normalizer.new_mean",
    "normalizer.new_std",
    "attacker.model.",
    "attacker.normalize.",
)
#: At most this many keys of each kind are listed in a mismatch report.
_REPORT_LIMIT = 8


# --------------------------------------------------------------------------- #
# errors
# --------------------------------------------------------------------------- #
class CheckpointError(SettingError):
    """A checkpoint that cannot be used: not a readable checkpoint of a supported format, or
    one that contradicts the arguments.

    A :class:`~rai_probe.errors.SettingError` (hence a ``ValueError``): ``setting`` names
    the argument to change (``"checkpoint"``, the file, unless a subclass or the raising
    code says otherwise: ``"arch"``, ``"num_classes"``, ``"mean"``, ``"std"``, ...) and
    ``value`` its value.

    Examples
    --------
    >>> err = CheckpointError("not a checkpoint", value="/tmp/x.pt")
    >>> isinstance(err, ValueError), err.setting, err.value
    (True, 'checkpoint', '/tmp/x.pt')
    """

    def __init__(self, message: str, *, setting: str | None = "checkpoint", value: Any = UNSET) -> None:
        super().__init__(message, setting=setting, value=value)

    def __reduce__(self) -> tuple:  # picklable with every attribute, whatever the constructor
        return (rebuild_error, (type(self), str(self), dict(self.__dict__)))


class CheckpointMismatchError(CheckpointError):
    """The checkpoint's weights do not fit the architecture (strict loading).

    ``setting`` is ``"num_classes"`` when the classifier's output layer is the
    only kind of mismatch that explains it (``value``: the file's number of
    outputs), ``"arch"`` when no key of the file fits the architecture, and
    ``"checkpoint"`` otherwise.

    Attributes
    ----------
    missing : list of str
        Keys the architecture has and the file lacks.
    unexpected : list of str
        Keys the file has and the architecture lacks.
    mismatched : list of (str, tuple, tuple)
        ``(key, shape in the file, shape in the model)``.
    """

    def __init__(
        self,
        message: str,
        missing: Sequence[str] = (),
        unexpected: Sequence[str] = (),
        mismatched: Sequence[tuple[str, tuple, tuple]] = (),
        *,
        setting: str | None = "checkpoint",
        value: Any = UNSET,
    ) -> None:
        super().__init__(message, setting=setting, value=value)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)


class UnsafeCheckpointError(CheckpointError):
    """The file holds code: reading it needs full unpickling, which only ``trust_checkpoint=True`` allows.

    Raised when the file names a Python global that ``torch.load(weights_only=True)``
    does not admit (an ``argparse.Namespace``, a pickled ``nn.Module``, ``os.system``
    ...), found by walking the file's pickle before torch reads it; nothing from
    the file runs. ``setting`` is ``"trust_checkpoint"`` (``value`` False).

    Attributes
    ----------
    path : pathlib.Path
        The file.
    global_name : str or None
        The first offending global (e.g. ``"argparse.Namespace"``).
    globals : tuple of str
        Every offending global, in file order.
    """

    def __init__(
        self,
        path: pathlib.Path,
        global_name: str | None,
        reason: str = "",
        *,
        globals: Sequence[str] = (),
    ) -> None:
        found = tuple(globals) or ((global_name,) if global_name else ())
        if global_name:
            others = [g for g in found if g != global_name]
            more = f" (and {len(others)} more: {', '.join(others[:4])})" if others else ""
            what = f"it references the Python global `{global_name}`{more}"
        else:
            what = f"it holds more than tensors and plain containers ({reason})"
        super().__init__(
            f"refusing to unpickle checkpoint {path}: {what}, which torch.load(weights_only=True) "
            f"does not admit. Loading it fully means unpickling, and unpickling can run arbitrary "
            f"code chosen by whoever made the file; nothing from it was run. If you trust the "
            f"file's source, pass trust_checkpoint=True (load_checkpoint(path, arch, "
            f"trust_checkpoint=True), or model.trust_checkpoint=true on the command line); then "
            f"re-save the model with rai_probe.models.save_checkpoint so that it never needs "
            f"trust again.",
            setting="trust_checkpoint",
            value=False,
        )
        self.path = path
        self.global_name = global_name
        self.globals = found


class UnreadableCheckpointError(CheckpointError, OSError):
    """The checkpoint file cannot be opened or read: permission denied, a folder, not a regular file...

    Also an :class:`OSError` (``errno``, ``strerror`` and ``filename`` come from
    the cause). ``setting`` is ``"checkpoint"``.

    Attributes
    ----------
    path : pathlib.Path
    reason : str
        E.g. ``"permission denied"``.
    """

    def __init__(self, path: pathlib.Path, cause: OSError) -> None:
        reason = os_error_reason(cause)
        self.path, self.reason = path, reason
        super().__init__(self._message(path, reason), value=str(path))
        self.errno, self.strerror, self.filename = cause.errno, cause.strerror, str(path)

    @staticmethod
    def _message(path: pathlib.Path, reason: str) -> str:
        extra = ", not a file" if reason == "is a directory" else ""
        return f"cannot read checkpoint {path}: {reason}{extra}"

    def __str__(self) -> str:  # the message, not OSError's "[Errno 13] ..."
        return str(self.args[0]) if self.args else ""


class CheckpointNotFoundError(UnreadableCheckpointError, FileNotFoundError):
    """No file at the checkpoint path (also a :class:`FileNotFoundError`)."""

    @staticmethod
    def _message(path: pathlib.Path, reason: str) -> str:
        return f"checkpoint file not found: {path}"


# --------------------------------------------------------------------------- #
# reading files
# --------------------------------------------------------------------------- #
def _checked_path(path: Any) -> pathlib.Path:
    if not isinstance(path, (str, os.PathLike)):
        raise SettingTypeError(
            f"checkpoint path must be a str or os.PathLike; got {type(path).__name__}",
            setting="checkpoint",
            value=path,
        )
    return pathlib.Path(path)


def _check_trust(trust_checkpoint: Any) -> bool:
    """Only the bool ``True`` trusts; ``False`` does not; anything else (1, "yes", a numpy bool) is refused."""
    if trust_checkpoint is True or trust_checkpoint is False:
        return trust_checkpoint
    raise SettingTypeError(
        f"`trust_checkpoint` must be the bool True or False; got {trust_checkpoint!r} "
        f"({type(trust_checkpoint).__name__}). Only a real True allows full unpickling",
        setting="trust_checkpoint",
        value=trust_checkpoint,
    )


def _open_checkpoint(path: pathlib.Path) -> BinaryIO:
    try:
        return open_regular_file(path)
    except FileNotFoundError as err:
        raise CheckpointNotFoundError(path, err) from None
    except OSError as err:
        raise UnreadableCheckpointError(path, err) from None


def _corrupt(path: pathlib.Path, reason: str) -> CheckpointError:
    return CheckpointError(
        f"could not read {path} as a torch checkpoint: {reason}; expected a file written by "
        f"torch.save (a zip archive holding <name>/data.pkl, or torch's legacy format)",
        value=str(path),
    )


def _brief(err: BaseException) -> str:
    """One line of an exception's message (torch's are paragraphs)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    picked = next((line for line in lines if "WeightsUnpickler error" in line or "Unsupported" in line), None)
    text = picked or (lines[0] if lines else "")
    return f"{type(err).__name__}: {text[:300]}"


def _torch_load(file: BinaryIO, path: pathlib.Path, *, map_location: Any, weights_only: bool) -> Any:
    file.seek(0)
    try:
        return torch.load(file, map_location=map_location, weights_only=weights_only)
    except MemoryError:
        raise
    except OSError as err:
        if err.errno is not None:
            raise UnreadableCheckpointError(path, err) from err
        raise _corrupt(path, f"torch.load failed ({_brief(err)})") from err
    except Exception as err:  # a corrupt file surfaces as many exception types
        how = "torch.load(weights_only=True)" if weights_only else "torch.load"
        raise _corrupt(path, f"{how} failed ({_brief(err)})") from err


def read_torch_file(
    path: str | os.PathLike, *, trust_checkpoint: bool = False, map_location: Any = "cpu"
) -> Any:
    """What ``torch.save`` stored in ``path``, read safely; the reader under every checkpoint loader.

    The file is checked before torch sees it (see
    :mod:`rai_probe.models._torchfile`): that it is a file ``torch.save``
    writes (a zip archive with ``<name>/data.pkl``, or the legacy format),
    that the sizes it declares are plausible, and which Python globals its
    pickles name. A file of tensors and plain containers is then read with
    ``torch.load(weights_only=True)``. A file that names other globals holds
    code: it is refused, unless ``trust_checkpoint`` is the bool ``True``,
    which fully unpickles it (``weights_only=False``) with a warning.

    Parameters
    ----------
    path : str or os.PathLike
    trust_checkpoint : bool, default False
        Only ``True`` itself trusts (not ``1``, not ``"true"``).
    map_location : default "cpu"
        Passed to ``torch.load``.

    Raises
    ------
    CheckpointNotFoundError, UnreadableCheckpointError
        No file, or it cannot be read (the message gives the cause).
    CheckpointError
        Not a torch checkpoint (empty, truncated, random bytes, another format),
        a declared size that is refused before reading, or a file torch cannot
        parse. Never suggests ``trust_checkpoint``.
    UnsafeCheckpointError
        The file holds code and ``trust_checkpoint`` is not True.
    SettingTypeError
        ``path`` or ``trust_checkpoint`` of the wrong type.

    Examples
    --------
    >>> import tempfile, pathlib, torch
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = pathlib.Path(tmp) / "t.pt"
    ...     torch.save({"w": torch.ones(2)}, path)
    ...     print(read_torch_file(path))
    ...     _ = path.write_bytes(b"not a checkpoint")
    ...     try:
    ...         read_torch_file(path)
    ...     except CheckpointError as err:
    ...         print(type(err).__name__, "trust_checkpoint" in str(err))
    {'w': tensor([1., 1.])}
    CheckpointError False
    """
    path = _checked_path(path)
    trusted = _check_trust(trust_checkpoint)
    with _open_checkpoint(path) as file:
        try:
            layout = inspect_torch_file(file, os.fstat(file.fileno()).st_size)
        except NotATorchFile as err:
            raise _corrupt(path, str(err)) from None
        except ImplausibleSize as err:
            raise CheckpointError(
                f"refusing to read checkpoint {path}: {err}", value=str(path)
            ) from None
        except OSError as err:
            raise UnreadableCheckpointError(path, err) from err
        if layout.missing:  # not loadable here, trusted or not: never suggest trusting it
            also = f"; it also names {', '.join(layout.code[:4])}" if layout.code else ""
            raise _corrupt(
                path,
                f"it names the Python global `{layout.missing[0]}`, which does not exist here "
                f"(a corrupt file, or one pickled with code that is not installed), so it cannot "
                f"be unpickled{also}; nothing from it was run",
            )
        if not layout.code:
            return _torch_load(file, path, map_location=map_location, weights_only=True)
        if not trusted:
            raise UnsafeCheckpointError(path, layout.code[0], globals=layout.code)
        warnings.warn(
            f"trust_checkpoint=True: fully unpickling {path} (torch.load(weights_only=False)), "
            f"which names {', '.join(layout.code[:4])}; this runs any code the file contains. "
            f"Re-save it with save_checkpoint to avoid this.",
            UserWarning,
            stacklevel=3,
        )
        return _torch_load(file, path, map_location=map_location, weights_only=False)


# --------------------------------------------------------------------------- #
# format detection
# --------------------------------------------------------------------------- #
def _is_tensor_mapping(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    )


def _renamed(
    state: Mapping[str, Tensor], pairs: Sequence[tuple[str, str]]
) -> "OrderedDict[str, Tensor]":
    """A copy with keys renamed (old -> new), keeping the ``_metadata`` torch uses for versions."""
    out: OrderedDict[str, Tensor] = OrderedDict(
        (new, state[old]) for old, new in pairs
    )
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:
        out._metadata = metadata  # type: ignore[attr-defined]
    return out


def _strip_module(state: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    """Remove leading ``module.`` prefixes shared by every key (``nn.DataParallel``)."""
    prefix = ""
    while state and all(k.startswith(prefix + "module.") for k in state):
        prefix += "module."
    if not prefix:
        return state
    return _renamed(state, [(k, k[len(prefix):]) for k in state])


def _select(state: Mapping[str, Tensor], prefix: str) -> "OrderedDict[str, Tensor]":
    """The entries under ``prefix``, with the prefix removed."""
    return _renamed(state, [(k, k[len(prefix):]) for k in state if k.startswith(prefix)])


def _madrylab_state(obj: Any) -> Mapping[str, Tensor] | None:
    """The attacker model's state_dict (``module.`` stripped) of a MadryLab file, else None."""
    if not isinstance(obj, Mapping):
        return None
    candidates = [obj.get(key) for key in _MADRYLAB_KEYS] + [obj]
    for candidate in candidates:
        if _is_tensor_mapping(candidate):
            state = _strip_module(candidate)
            if any(k.startswith(_MADRYLAB_MARKERS) for k in state):
                return state
    return None


def _plain_state(obj: Any) -> Mapping[str, Tensor] | None:
    """The state_dict (``module.`` stripped) of a RobustBench / plain file, else None."""
    if isinstance(obj, nn.Module):  # a whole pickled module (only with trust_checkpoint)
        return obj.state_dict()
    if not isinstance(obj, Mapping):
        return None
    candidates = [obj] + [obj.get(key) for key in _STATE_DICT_KEYS]
    for candidate in candidates:
        if _is_tensor_mapping(candidate):
            return _strip_module(candidate)
    return None


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        keys = list(obj)
        shown = ", ".join(repr(k) for k in keys[:_REPORT_LIMIT])
        more = f", ... ({len(keys)} keys)" if len(keys) > _REPORT_LIMIT else ""
        return f"a {type(obj).__name__} with keys [{shown}{more}]"
    return f"a {type(obj).__name__}"


def detect_format(obj: Any) -> str:
    """The checkpoint format of a loaded object (or of a file, read safely).

    Parameters
    ----------
    obj : object or path
        What ``torch.load`` returned, or a file path (then read with
        ``weights_only=True``; a file that needs unpickling raises
        :class:`UnsafeCheckpointError` and runs nothing).

    Returns
    -------
    str
        ``"rai_probe"`` (written by :func:`save_checkpoint`), ``"madrylab"``
        (MadryLab ``robustness``: classifier plus normalizer) or
        ``"state_dict"`` (RobustBench and plain state_dicts).

    Raises
    ------
    CheckpointError
        None of the supported formats (the message lists what was found).

    Examples
    --------
    >>> import torch
    >>> detect_format({"format": "rai_probe.checkpoint", "version": 1})
    'rai_probe'
    >>> detect_format({"model": {"module.normalizer.new_mean": torch.zeros(3, 1, 1),
    ...                          "module.model.linear.weight": torch.zeros(2, 3)}, "epoch": 3})
    'madrylab'
    >>> detect_format({"state_dict": {"module.fc.weight": torch.zeros(2, 3)}})
    'state_dict'
    >>> detect_format({"epoch": 3})
    Traceback (most recent call last):
    ...
    rai_probe.models.checkpoints.CheckpointError: not a supported checkpoint: got a dict with keys ['epoch']; expected a rai_probe checkpoint, a MadryLab robustness checkpoint, or a state_dict (a mapping of names to tensors, top-level or under 'state_dict', 'model' or 'net')
    """
    if isinstance(obj, (str, os.PathLike)):
        obj = read_torch_file(obj, trust_checkpoint=False, map_location="cpu")
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT_TAG:
        return "rai_probe"
    if _madrylab_state(obj) is not None:
        return "madrylab"
    if _plain_state(obj) is not None:
        return "state_dict"
    raise CheckpointError(
        f"not a supported checkpoint: got {_describe(obj)}; expected a rai_probe checkpoint, "
        f"a MadryLab robustness checkpoint, or a state_dict (a mapping of names to tensors, "
        f"top-level or under 'state_dict', 'model' or 'net')"
    )


# --------------------------------------------------------------------------- #
# JSON-like metadata
# --------------------------------------------------------------------------- #
_SCALARS = (str, int, float, bool, type(None))


def _json_like(value: Any, where: str, setting: str | None = None) -> Any:
    """A copy of ``value`` made of plain containers and scalars; SettingTypeError naming the key."""
    if type(value) in _SCALARS:
        return value
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if type(key) is not str:
                raise SettingTypeError(
                    f"{where}: keys must be str; got {type(key).__name__} key {key!r}",
                    setting=setting,
                    value=key,
                )
            out[key] = _json_like(item, f"{where}[{key!r}]", setting)
        return out
    if isinstance(value, (list, tuple)):
        items = [_json_like(item, f"{where}[{i}]", setting) for i, item in enumerate(value)]
        return tuple(items) if isinstance(value, tuple) else items
    hint = " (convert it with .item() / float() / int())" if hasattr(value, "item") else ""
    raise SettingTypeError(
        f"{where}: must be JSON-like (str, int, float, bool, None, list, tuple, dict with str "
        f"keys); got {type(value).__module__}.{type(value).__qualname__} {value!r}{hint}",
        setting=setting,
        value=value,
    )


# --------------------------------------------------------------------------- #
# strict weight loading with a report
# --------------------------------------------------------------------------- #
def _listing(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:_REPORT_LIMIT])
    if len(keys) > _REPORT_LIMIT:
        shown += f", ... ({len(keys) - _REPORT_LIMIT} more)"
    return shown


def _mismatch_report(
    where: str,
    expected: Mapping[str, Tensor],
    given: Mapping[str, Tensor],
    missing: list[str],
    unexpected: list[str],
    mismatched: list[tuple[str, tuple, tuple]],
    num_classes: int,
) -> tuple[str, str, Any]:
    """The report, and the setting that most likely fixes it (with the value it needs)."""
    setting, value = "checkpoint", UNSET
    lines = [f"{where} does not match the architecture:"]
    if missing:
        lines.append(f"  missing keys ({len(missing)} of {len(expected)}): {_listing(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)} of {len(given)}): {_listing(unexpected)}")
    if mismatched:
        shapes = [f"{k}: file {list(f)} vs model {list(m)}" for k, f, m in mismatched]
        lines.append(f"  shape mismatches ({len(mismatched)}): {_listing(shapes)}")
    for key, file_shape, model_shape in mismatched:
        if (
            len(file_shape) in (1, 2)
            and model_shape[0] == num_classes
            and file_shape[1:] == model_shape[1:]
        ):
            lines.append(
                f"  hint: {key} has {file_shape[0]} outputs in the file; "
                f"pass num_classes={file_shape[0]}"
            )
            if not missing and not unexpected:
                setting, value = "num_classes", file_shape[0]
            break
    if given and not any(k in expected and given[k].shape == expected[k].shape for k in given):
        lines.append(
            f"  hint: no key matches; is `arch` right? the file's keys look like: "
            f"{_listing(list(given)[:3])}"
        )
        setting, value = "arch", UNSET
    return "\n".join(lines), setting, value


def _load_weights(
    classifier: nn.Module,
    state: Mapping[str, Tensor],
    *,
    ignored_prefixes: tuple[str, ...],
    strict: bool,
    where: str,
    num_classes: int,
) -> None:
    if ignored_prefixes:
        state = _renamed(state, [(k, k) for k in state if not k.startswith(ignored_prefixes)])
    expected = classifier.state_dict()
    # Files from before torch 0.4.1 lack BatchNorm's counter; torch then sets it to 0.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        (k, tuple(state[k].shape), tuple(expected[k].shape))
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        report, setting, value = _mismatch_report(
            where, expected, state, missing, unexpected, mismatched, num_classes
        )
        if strict:
            raise CheckpointMismatchError(
                report + "\n  (strict=False loads the matching keys and leaves the rest as built)",
                missing,
                unexpected,
                mismatched,
                setting=setting,
                value=value,
            )
        warnings.warn(
            report + "\n  (strict=False: loaded the matching keys only)", UserWarning, stacklevel=3
        )
        bad = {k for k, _, _ in mismatched}
        state = _renamed(state, [(k, k) for k in state if k in expected and k not in bad])
    classifier.load_state_dict(state, strict=False)


# --------------------------------------------------------------------------- #
# loading
# --------------------------------------------------------------------------- #
def _same_values(a: Sequence[float], b: Sequence[float]) -> bool:
    return len(a) == len(b) and torch.equal(
        torch.tensor(list(a), dtype=torch.float32), torch.tensor(list(b), dtype=torch.float32)
    )


def _check_override(where: str, name: str, given: Any, recorded: Any, same: bool) -> None:
    """A :class:`CheckpointError` with ``setting=name`` when an argument contradicts the file."""
    if given is not None and not same:
        raise CheckpointError(
            f"{where}: `{name}`={given!r} contradicts the file, which records {name}={recorded!r}; "
            f"leave `{name}` unset to use the file's value",
            setting=name,
            value=given,
        )


def _check_stats(
    where: str,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    recorded_mean: Sequence[float],
    recorded_std: Sequence[float],
) -> None:
    """A ``mean`` / ``std`` argument must agree (at float32 precision) with the file's."""
    for name, given, recorded in (("mean", mean, recorded_mean), ("std", std, recorded_std)):
        same = given is not None and _same_values(given, recorded)
        _check_override(where, name, None if given is None else tuple(given), recorded, same)


def _require_arch(arch: str | None, fmt: str, path: pathlib.Path) -> str:
    if arch is None:
        raise SettingTypeError(
            f"load_checkpoint: `arch` is required for {path}, a {fmt} checkpoint, which does not "
            f"record its architecture; pass one of {sorted(MODELS)} or "
            f"'{TORCHVISION_PREFIX}<name>'",
            setting="arch",
        )
    return arch


def _own_record(obj: Mapping[str, Any], path: pathlib.Path) -> dict[str, Any]:
    """Validated fields of a file written by :func:`save_checkpoint`."""
    version = obj.get("version")
    if type(version) is not int:
        raise CheckpointError(f"{path}: rai_probe checkpoint without an integer 'version'", value=str(path))
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: rai_probe checkpoint version {version} is newer than this rai_probe "
            f"reads (version {FORMAT_VERSION}); upgrade rai_probe",
            value=str(path),
        )
    required = ("arch", "num_classes", "input_shape", "mean", "std", "state_dict")
    absent = [k for k in required if k not in obj]
    if absent:
        raise CheckpointError(f"{path}: rai_probe checkpoint lacks the entries {absent}", value=str(path))
    if not _is_tensor_mapping(obj["state_dict"]):
        raise CheckpointError(
            f"{path}: the 'state_dict' entry is not a mapping of names to tensors",
            value=str(path),
        )
    record = {k: obj.get(k) for k in ModelInfo.__dataclass_fields__ if k in obj}
    record.pop("source", None)
    record.pop("checkpoint_format", None)
    try:
        for key in ("training", "metrics"):
            record[key] = dict(record.get(key) or {})
        names = record.get("class_names") or ()
        record["class_names"] = names if isinstance(names, str) else tuple(names)
    except (TypeError, ValueError) as err:
        raise CheckpointError(
            f"{path}: invalid metadata in rai_probe checkpoint: {err}", value=str(path)
        ) from None
    return record


def _info_from_record(record: Mapping[str, Any], path: pathlib.Path) -> ModelInfo:
    try:
        return ModelInfo(**record, source=str(path), checkpoint_format="rai_probe")
    except (TypeError, ValueError) as err:
        raise CheckpointError(
            f"{path}: invalid metadata in rai_probe checkpoint: {err}", value=str(path)
        ) from err


def _load_own(
    obj: Mapping[str, Any],
    path: pathlib.Path,
    arch: str | None,
    num_classes: int | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    class_names: Sequence[str] | None,
    strict: bool,
) -> NormalizedModel:
    record = _own_record(obj, path)
    info = _info_from_record(record, path)
    where = f"load_checkpoint({str(path)!r})"
    _check_override(where, "arch", arch, info.arch, arch == info.arch)
    _check_override(
        where, "num_classes", num_classes, info.num_classes, num_classes == info.num_classes
    )
    _check_stats(where, mean, std, info.mean, info.std)
    if info.arch not in MODELS and not info.arch.startswith(TORCHVISION_PREFIX):
        raise CheckpointError(
            f"{path} was saved with architecture {info.arch!r}, which is not registered here; "
            f"register it with rai_probe.models.register_model first (registered: {sorted(MODELS)})",
            value=str(path),
        )
    if class_names is not None:  # the one override that may differ from the file: check it here
        names = _checked_class_names(where, class_names)
        if len(names) != info.num_classes:
            raise SettingError(
                f"{where}: `class_names` has {len(names)} entries but the file's model has "
                f"num_classes={info.num_classes}",
                setting="class_names",
                value=class_names,
            )
        info.class_names = names
    try:  # every other value comes from the file: a failure is the file's
        model = build_model(
            info.arch,
            num_classes=info.num_classes,
            mean=info.mean,
            std=info.std,
            class_names=info.class_names,
            input_shape=info.input_shape,
        )
    except (ValueError, TypeError) as err:
        raise CheckpointError(
            f"{path}: the rai_probe checkpoint's metadata does not fit architecture "
            f"{info.arch!r}: {err}",
            value=str(path),
        ) from err
    model.info = info
    _load_weights(
        model.model,
        obj["state_dict"],
        ignored_prefixes=get_arch_spec(info.arch).ignored_keys,
        strict=strict,
        where=f"checkpoint {path} (architecture {info.arch!r})",
        num_classes=info.num_classes,
    )
    return model


def _normalizer_from_file(
    state: Mapping[str, Tensor], mean_key: str, std_key: str, path: pathlib.Path
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    if mean_key not in state and std_key not in state:
        return None
    if mean_key not in state or std_key not in state:
        raise CheckpointError(
            f"{path}: the normalizer has only one of {mean_key!r} and {std_key!r}",
            value=str(path),
        )
    return _short_floats(state[mean_key]), _short_floats(state[std_key])


def _short_floats(values: Tensor) -> tuple[float, ...]:
    """Each float32 value as the shortest decimal that rounds back to it (0.4914, not 0.49140000343).

    ``Normalize`` stores float32 buffers, so a model built from these floats
    has bit-identical buffers.
    """
    flat = values.detach().to("cpu", torch.float32).reshape(-1).numpy()
    return tuple(float(np.format_float_positional(v, unique=True, trim="0")) for v in flat)


def _checked_class_names(where: str, class_names: Any) -> tuple[str, ...]:
    if isinstance(class_names, (str, bytes)) or not isinstance(class_names, Sequence) or not all(
        isinstance(name, str) for name in class_names
    ):
        raise SettingTypeError(
            f"{where}: `class_names` must be a sequence of str; got {class_names!r}",
            setting="class_names",
            value=class_names,
        )
    return tuple(class_names)


def _check_arguments(
    arch: Any, num_classes: Any, mean: Any, std: Any, class_names: Any, strict: Any
) -> None:
    """Cheap checks of :func:`load_checkpoint`'s arguments, before the file is read."""
    where = "load_checkpoint"
    if not isinstance(strict, bool):
        raise SettingTypeError(
            f"{where}: `strict` must be a bool; got {strict!r}", setting="strict", value=strict
        )
    if arch is not None:
        get_arch_spec(arch)  # a SettingError (setting="arch") listing the names
    if num_classes is not None:
        _positive_int(where, "num_classes", num_classes)
    if mean is not None or std is not None:
        _check_mean_std(where, (0.0,) if mean is None else mean, (1.0,) if std is None else std,
                        same_length=mean is not None and std is not None)
    if class_names is not None:
        _checked_class_names(where, class_names)


def load_checkpoint(
    path: str | os.PathLike,
    arch: str | None = None,
    *,
    num_classes: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
    trust_checkpoint: bool = False,
    map_location: Any = "cpu",
    strict: bool = True,
) -> NormalizedModel:
    """Load a classifier with its normalization from a checkpoint file of any supported format.

    Parameters
    ----------
    path : str or os.PathLike
    arch : str, optional
        Registry name of the architecture. Required for MadryLab and
        state_dict files (they do not record it); optional for rai_probe files
        (if given, it must match the file).
    num_classes : int, optional
        Defaults to the file's (rai_probe) or the architecture's default.
    mean, std : sequence of float, optional
        Normalization for state_dict files without one (default: the
        architecture's). For files that record a normalization (rai_probe,
        MadryLab), a value that differs from the file's raises ``ValueError``.
    class_names : sequence of str, optional
        Replace the recorded / default class names.
    trust_checkpoint : bool, default False
        Allow full unpickling (``torch.load(weights_only=False)``) of a file
        that holds code (Python globals ``weights_only=True`` does not admit).
        Only the bool ``True`` trusts (``1`` or ``"true"`` are refused). Only
        for files from a source you trust: unpickling can run arbitrary code.
        A warning is issued when it happens; a file without code is read with
        ``weights_only=True`` either way.
    map_location : default "cpu"
        Passed to ``torch.load``; the model is built on the CPU and receives
        the loaded values.
    strict : bool, default True
        Require the file's keys and shapes to match the architecture exactly.
        ``False`` loads the matching entries, keeps the others as built, and
        warns with the report.

    Returns
    -------
    NormalizedModel
        In eval mode; ``info.source`` is the path and ``info.checkpoint_format``
        the detected format. A MadryLab file's ``"epoch"`` goes to
        ``info.training["epoch"]``.

    Raises
    ------
    CheckpointNotFoundError
        No file at ``path`` (a ``FileNotFoundError``; ``setting="checkpoint"``).
    UnreadableCheckpointError
        The file cannot be read: permission denied, a folder, ... (an ``OSError``).
    UnsafeCheckpointError
        The file holds code and ``trust_checkpoint`` is not ``True``
        (``setting="trust_checkpoint"``).
    CheckpointMismatchError
        Keys or shapes do not match (strict; ``setting`` ``"num_classes"``,
        ``"arch"`` or ``"checkpoint"``).
    CheckpointError
        Not a torch checkpoint (corrupt, truncated, another format), a size
        refused before reading, an unsupported format (``setting="checkpoint"``),
        or an argument that contradicts the file (``setting`` is that argument).
    SettingError, SettingTypeError
        A bad argument (``setting`` names it): a missing or unknown ``arch``, a
        ``num_classes`` that is not a positive int, a bad ``mean`` / ``std``,
        ``strict`` or ``trust_checkpoint`` not a bool.

    Examples
    --------
    A plain state_dict saved by ``nn.DataParallel`` (``module.`` prefix):

    >>> import tempfile, pathlib, torch
    >>> from rai_probe.models import build_model
    >>> net = build_model("small_cnn", mean=(0.1307,), std=(0.3081,)).eval()
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = pathlib.Path(tmp) / "plain.pt"
    ...     state = {"module." + k: v for k, v in net.model.state_dict().items()}
    ...     torch.save({"state_dict": state}, path)
    ...     loaded = load_checkpoint(path, "small_cnn", mean=(0.1307,), std=(0.3081,))
    >>> x = torch.rand(3, 1, 28, 28)
    >>> torch.equal(loaded(x), net(x)), loaded.info.checkpoint_format, loaded.training
    (True, 'state_dict', False)
    """
    _check_arguments(arch, num_classes, mean, std, class_names, strict)
    obj = read_torch_file(path, trust_checkpoint=trust_checkpoint, map_location=map_location)
    path = pathlib.Path(path)
    fmt = detect_format(obj)
    if fmt == "rai_probe":
        model = _load_own(obj, path, arch, num_classes, mean, std, class_names, strict)
        return model.eval()

    arch = _require_arch(arch, fmt, path)
    training: dict[str, Any] = {}
    if fmt == "madrylab":
        state = _madrylab_state(obj)
        assert state is not None
        recorded = _normalizer_from_file(state, "normalizer.new_mean", "normalizer.new_std", path)
        classifier_state = _select(state, "model.")
        if isinstance(obj, Mapping) and type(obj.get("epoch")) is int:
            training["epoch"] = obj["epoch"]
    else:
        state = _plain_state(obj)
        assert state is not None
        recorded = None
        if "normalizer.mean" in state and all(
            k.startswith(("normalizer.", "model.")) for k in state
        ):  # the state_dict of a whole NormalizedModel
            recorded = _normalizer_from_file(state, "normalizer.mean", "normalizer.std", path)
            state = _select(state, "model.")
        classifier_state = state

    where = f"load_checkpoint({str(path)!r})"
    if recorded is not None:
        _check_stats(where, mean, std, *recorded)
        mean, std = recorded
    model = build_model(arch, num_classes=num_classes, mean=mean, std=std, class_names=class_names)
    _load_weights(
        model.model,
        classifier_state,
        ignored_prefixes=get_arch_spec(arch).ignored_keys,
        strict=strict,
        where=f"checkpoint {path} ({fmt} format, architecture {arch!r})",
        num_classes=model.info.num_classes,
    )
    model.info.source = str(path)
    model.info.checkpoint_format = fmt
    model.info.training = training
    return model.eval()


def read_checkpoint_info(path: str | os.PathLike) -> ModelInfo:
    """The metadata of a rai_probe checkpoint, without building the model.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by :func:`save_checkpoint` (read with ``weights_only=True``).

    Returns
    -------
    ModelInfo
        With ``source`` the path and ``checkpoint_format="rai_probe"``.

    Raises
    ------
    FileNotFoundError, UnsafeCheckpointError
    CheckpointError
        Not a rai_probe checkpoint (other formats record no metadata).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from rai_probe.models import build_model, save_checkpoint
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = pathlib.Path(tmp) / "net.pt"
    ...     save_checkpoint(build_model("small_cnn"), path, training={"epochs": 2})
    ...     info = read_checkpoint_info(path)
    >>> info.arch, info.dataset, info.training
    ('small_cnn', 'mnist', {'epochs': 2})
    """
    obj = read_torch_file(path, trust_checkpoint=False, map_location="cpu")
    path = pathlib.Path(path)
    fmt = detect_format(obj)
    if fmt != "rai_probe":
        raise CheckpointError(
            f"{path} is a {fmt} checkpoint, which records no metadata; only files written by "
            f"save_checkpoint do. Load it with load_checkpoint(path, arch=...)",
            value=str(path),
        )
    return _info_from_record(_own_record(obj, path), path)


# --------------------------------------------------------------------------- #
# saving
# --------------------------------------------------------------------------- #
def _recorded_stats(declared: Sequence[float], buffer: Tensor) -> tuple[float, ...]:
    """``info``'s values when the normalizer's buffer holds exactly them, else the buffer's."""
    actual = _short_floats(buffer)
    return tuple(declared) if _same_values(declared, actual) else actual


def save_checkpoint(
    model: NormalizedModel,
    path: str | os.PathLike,
    *,
    training: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> None:
    """Save a model in the rai_probe format: weights plus everything needed to rebuild it.

    The file is a dict of plain types (loadable with ``weights_only=True``):
    ``format`` (``"rai_probe.checkpoint"``), ``version`` (1), ``arch``,
    ``num_classes``, ``input_shape``, ``mean``, ``std`` (read from the
    model's normalizer), ``class_names``, ``dataset``, ``training``,
    ``metrics`` and ``state_dict`` (the classifier's, without the normalizer,
    on the CPU). The file is written to a temporary name and then renamed, so
    a crash never leaves a half-written checkpoint at ``path``.

    Parameters
    ----------
    model : NormalizedModel
        Its ``info.arch`` must be registered (or ``"torchvision:<name>"``).
    path : str or os.PathLike
        Target file; its directory must exist.
    training, metrics : dict, optional
        JSON-like dicts (str keys; str, int, float, bool, None, list, tuple,
        dict values). Default: ``model.info.training`` / ``model.info.metrics``.

    Raises
    ------
    TypeError
        ``model`` is not a NormalizedModel, or ``training`` / ``metrics`` is
        not JSON-like (the message names the offending key).
    ValueError
        ``model.info.arch`` is not registered.
    FileNotFoundError
        The directory of ``path`` does not exist.

    Examples
    --------
    >>> import tempfile, pathlib, torch
    >>> from rai_probe.models import build_model
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = pathlib.Path(tmp) / "net.pt"
    ...     save_checkpoint(build_model("small_cnn"), path, metrics={"clean_accuracy": 0.5})
    ...     raw = torch.load(path, weights_only=True)
    >>> raw["format"], raw["arch"], raw["mean"], list(raw["state_dict"])[:2]
    ('rai_probe.checkpoint', 'small_cnn', (0.0,), ['feature_extractor.conv1.weight', 'feature_extractor.conv1.bias'])
    >>> save_checkpoint(build_model("small_cnn"), "unused.pt", metrics={"acc": torch.tensor(0.5)})
    Traceback (most recent call last):
    ...
    rai_probe.errors.SettingTypeError: save_checkpoint: metrics['acc']: must be JSON-like (str, int, float, bool, None, list, tuple, dict with str keys); got torch.Tensor tensor(0.5000) (convert it with .item() / float() / int())
    """
    if not isinstance(model, NormalizedModel):
        raise SettingTypeError(
            f"save_checkpoint: `model` must be a NormalizedModel (see build_model); "
            f"got {type(model).__name__}",
            setting="model",
            value=model,
        )
    info = model.info
    training = _json_like(
        dict(info.training) if training is None else training, "save_checkpoint: training", "training"
    )
    metrics = _json_like(
        dict(info.metrics) if metrics is None else metrics, "save_checkpoint: metrics", "metrics"
    )
    for name, value in (("training", training), ("metrics", metrics)):
        if not isinstance(value, dict):
            raise SettingTypeError(
                f"save_checkpoint: `{name}` must be a dict; got {type(value).__name__}",
                setting=name,
                value=value,
            )
    try:
        get_arch_spec(info.arch)
    except (ValueError, ImportError) as err:
        raise SettingError(
            f"save_checkpoint: the model's architecture {info.arch!r} could not be rebuilt from "
            f"the file ({err})",
            setting="model",
            value=info.arch,
        ) from err
    if not isinstance(path, (str, os.PathLike)):
        raise SettingTypeError(
            f"save_checkpoint: `path` must be a str or os.PathLike; got {type(path).__name__}",
            setting="path",
            value=path,
        )
    path = pathlib.Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"save_checkpoint: directory does not exist: {path.parent}")

    state = model.model.state_dict()
    for key in state:
        state[key] = state[key].detach().cpu()
    record = {
        "format": FORMAT_TAG,
        "version": FORMAT_VERSION,
        "arch": info.arch,
        "num_classes": info.num_classes,
        "input_shape": tuple(info.input_shape),
        "mean": _recorded_stats(info.mean, model.normalizer.mean),
        "std": _recorded_stats(info.std, model.normalizer.std),
        "class_names": tuple(info.class_names),
        "dataset": info.dataset,
        "training": training,
        "metrics": metrics,
        "state_dict": state,
    }
    write_atomic(path, save=lambda file: torch.save(record, file))

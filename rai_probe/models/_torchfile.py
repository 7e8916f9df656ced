"""What a torch checkpoint file is, decided from its structure before torch reads it.

:func:`inspect_torch_file` answers three questions about an open file without
unpickling anything and without inflating anything large:

1. **Is it a torch checkpoint at all?** ``torch.save`` writes either a zip
   archive holding ``<name>/data.pkl`` (and the tensor data as stored entries
   ``<name>/data/<key>``), or, in the legacy format, a run of pickles that
   starts with torch's magic number. Anything else (random bytes, a
   truncated file, a bare pickle, another archive) is :class:`NotATorchFile`.
2. **Are its declared sizes plausible?** The zip central directory is checked
   before any entry is read: a compressed entry that would inflate far beyond
   its stored size, an entry that claims more bytes than the file holds, or a
   pickle entry larger than :data:`MAX_PICKLE_BYTES` is refused
   (:class:`ImplausibleSize`); so are tensors declared larger than the data
   the file holds for them.
3. **Does it hold code?** Every pickle in the file is walked opcode by opcode
   with :func:`pickletools.genops` and a small symbolic stack (nothing is
   constructed or called). Every global it names (``GLOBAL``,
   ``STACK_GLOBAL``, ``INST``) is compared with what
   ``torch.load(weights_only=True)`` admits (:func:`allowed_globals`); the
   names outside it, and opcodes that reach callables in other ways
   (``EXT1``/``EXT2``/``EXT4``, an unresolvable ``STACK_GLOBAL``), are the
   file's *code* (:attr:`TorchFileLayout.code`).

Examples
--------
>>> import io, torch
>>> buffer = io.BytesIO()
>>> torch.save({"w": torch.zeros(2)}, buffer)
>>> layout = inspect_torch_file(buffer, len(buffer.getvalue()))
>>> layout.kind, layout.code, layout.missing
('zip', (), ())
>>> inspect_torch_file(io.BytesIO(b"hello"), 5)
Traceback (most recent call last):
...
rai_probe.models._torchfile.NotATorchFile: neither a zip archive nor torch's legacy format (the file starts with b'hello')
"""

from __future__ import annotations

import functools
import io
import pickletools
import zipfile
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Iterable

__all__ = [
    "MAX_PICKLE_BYTES",
    "MAX_COMPRESSION_RATIO",
    "NotATorchFile",
    "ImplausibleSize",
    "TorchFileLayout",
    "allowed_globals",
    "global_exists",
    "scan_pickle",
    "inspect_torch_file",
]

#: The largest pickle (``data.pkl``, or a legacy file's object pickle) that is read. A
#: checkpoint's pickle holds only the structure (keys, shapes, dtypes): tens to hundreds of
#: kilobytes even for ImageNet networks; the tensor data lives outside it.
MAX_PICKLE_BYTES = 64 * 2**20
#: A compressed zip entry may inflate to at most this many times its stored size (``torch.save``
#: never compresses; compressed entries above :data:`_SMALL_ENTRY` need a plausible ratio).
MAX_COMPRESSION_RATIO = 20
#: Compressed entries that inflate to at most this many bytes are not ratio-checked.
_SMALL_ENTRY = 2**20

#: ``torch.serialization.MAGIC_NUMBER``, the first pickle of a legacy-format file.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
#: The first bytes of a zip archive (a local file header); torch.load tests exactly these.
_ZIP_MAGIC = b"PK\x03\x04"
#: Modules whose globals torch never admits, whatever the user allowlisted.
_BLOCKED_MODULES = ("sys", "os", "posix", "nt")
#: Bytes per element of the storage types named in persistent ids (others count 1 byte).
_ITEMSIZE = {
    "DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2,
    "LongStorage": 8, "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1,
    "BoolStorage": 1, "ComplexFloatStorage": 8, "ComplexDoubleStorage": 16, "QInt32Storage": 4,
}  # fmt: skip


class NotATorchFile(ValueError):
    """The bytes are not a checkpoint ``torch.save`` writes: corrupt, truncated or another format."""


class ImplausibleSize(ValueError):
    """A size declared in the file is refused before it is read (a decompression or allocation bomb)."""


@dataclass(frozen=True)
class TorchFileLayout:
    """The outcome of :func:`inspect_torch_file`.

    Attributes
    ----------
    kind : {"zip", "legacy"}
        The container ``torch.save`` wrote.
    code : tuple of str
        The globals (``"module.name"``) and opcodes outside what
        ``torch.load(weights_only=True)`` admits and that exist here (see
        :func:`global_exists`), in file order, without repeats; empty for a
        file of tensors and plain containers.
    missing : tuple of str
        Globals outside what ``weights_only`` admits that do not exist here
        (a corrupt name, or code that is not installed): even full unpickling
        could not load the file.
    """

    kind: str
    code: tuple[str, ...]
    missing: tuple[str, ...] = ()


# --------------------------------------------------------------------------- #
# what weights_only admits
# --------------------------------------------------------------------------- #
@functools.lru_cache(maxsize=1)
def _torch_allowed() -> frozenset[str]:
    """The names ``torch.load(weights_only=True)`` admits by default (torch's own table)."""
    try:
        from torch import _weights_only_unpickler as unpickler

        return frozenset(unpickler._get_allowed_globals())
    except (ImportError, AttributeError):  # pragma: no cover - a torch without the table
        import torch

        names = {"collections.OrderedDict", "torch.Size", "torch.device", "_codecs.encode"}
        names |= {f"torch._utils.{n}" for n in dir(torch._utils) if n.startswith("_rebuild_")}
        names |= {f"torch.{n}" for n in dir(torch) if n.endswith("Storage")}
        names |= {str(v) for v in vars(torch).values() if isinstance(v, torch.dtype)}
        return frozenset(names)


def allowed_globals() -> frozenset[str]:
    """Every ``"module.name"`` that ``torch.load(weights_only=True)`` admits right now.

    torch's default table (tensor rebuild functions, storage and tensor
    classes, dtypes, ``collections.OrderedDict``, ...) plus whatever the user
    added with ``torch.serialization.add_safe_globals``; never a name of the
    modules torch blocks (``os``, ``posix``, ``nt``, ``sys``).

    Examples
    --------
    >>> names = allowed_globals()
    >>> "torch._utils._rebuild_tensor_v2" in names, "collections.OrderedDict" in names
    (True, True)
    >>> "posix.system" in names, "builtins.eval" in names, "argparse.Namespace" in names
    (False, False, False)
    """
    names = set(_torch_allowed())
    try:
        from torch import _weights_only_unpickler as unpickler

        names |= set(unpickler._get_user_allowed_globals())
    except (ImportError, AttributeError, TypeError, ValueError):  # pragma: no cover
        pass
    return frozenset(n for n in names if n.split(".", 1)[0] not in _BLOCKED_MODULES)


@functools.lru_cache(maxsize=1)
def _name_mappings() -> tuple[dict, dict]:
    """Python 2 -> 3 renames torch applies to the globals of protocol-2 pickles."""
    try:
        from torch._utils import IMPORT_MAPPING, NAME_MAPPING
    except ImportError:  # pragma: no cover
        from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING
    return dict(NAME_MAPPING), dict(IMPORT_MAPPING)


def _mapped(module: str, name: str) -> tuple[str, str]:
    names, imports = _name_mappings()
    if (module, name) in names:
        return names[(module, name)]
    return imports.get(module, module), name


def global_exists(module: str, name: str) -> bool:
    """Whether ``module.name`` could be imported here, decided without importing anything new.

    A module already imported is looked up (``name``'s first part must be in
    its namespace, or the module must define ``__getattr__``). A module not
    imported yet is located with :func:`importlib.util.find_spec` as far as
    that needs no import (its parent package is imported, or it is
    top-level); a module that is found but not imported counts as existing.
    Importing would run the module's code, which a file must not be able to
    trigger.

    Examples
    --------
    >>> global_exists("os", "system"), global_exists("argparse", "Namespace")
    (True, True)
    >>> global_exists("torch._utilz", "_rebuild_tensor_v2"), global_exists("os", "sistem")
    (False, False)
    """
    import importlib.util
    import sys

    if module in sys.modules:
        namespace = vars(sys.modules[module])
        return name.split(".", 1)[0] in namespace or "__getattr__" in namespace
    parts = module.split(".")
    for depth in range(1, len(parts) + 1):
        prefix = ".".join(parts[:depth])
        if prefix in sys.modules:
            continue
        if depth > 1 and ".".join(parts[: depth - 1]) not in sys.modules:
            return True  # found so far, but looking further would import a package
        try:
            spec = importlib.util.find_spec(prefix)
        except (ImportError, ValueError, AttributeError):
            return False
        if spec is None:
            return False
    return True


# --------------------------------------------------------------------------- #
# a symbolic walk over one pickle
# --------------------------------------------------------------------------- #
class _Mark:
    def __repr__(self) -> str:
        return "<mark>"


class _Opaque:
    def __repr__(self) -> str:
        return "<object>"


@dataclass(frozen=True)
class _Global:
    name: str


_MARK, _OPAQUE = _Mark(), _Opaque()
#: Opcodes whose argument is the value they push.
_LITERALS = {
    "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "STRING", "BINSTRING",
    "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "UNICODE", "SHORT_BINUNICODE",
    "BINUNICODE", "BINUNICODE8", "FLOAT", "BINFLOAT", "BYTEARRAY8",
}  # fmt: skip
_CONSTANTS = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False, "EMPTY_TUPLE": ()}
_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}
_GETS = {"GET", "BINGET", "LONG_BINGET"}


@dataclass
class PickleScan:
    """What one pickle names, found without running it (see :func:`scan_pickle`)."""

    globals: list[str]
    """Every global it names (``"module.name"``), in order, with repeats."""
    code: list[str]
    """What reaches a callable other than through a resolvable global (``EXT*``, ...)."""
    persistent_ids: list[Any]
    """The symbolic persistent ids (tuples of literals, :class:`_Global` and opaque parts)."""
    value: Any
    """The symbolic value the pickle returns (a literal, a tuple, or opaque)."""
    sources: dict = field(default_factory=dict)
    """``"module.name"`` -> ``(module, name)`` for every global."""


class _Stack(list):
    def pop_value(self) -> Any:
        if not self or self[-1] is _MARK:
            raise NotATorchFile("a pickle that pops from an empty stack")
        return self.pop()

    def pop_to_mark(self) -> list:
        items = []
        while self:
            item = self.pop()
            if item is _MARK:
                items.reverse()
                return items
            items.append(item)
        raise NotATorchFile("a pickle that closes a MARK it never opened")


def _apply(op: pickletools.OpcodeInfo, arg: Any, stack: _Stack, memo: dict, scan: PickleScan) -> None:
    """One opcode's effect on the symbolic stack (values are literals, globals or opaque)."""
    name = op.name
    if name in _LITERALS:
        stack.append(arg)
    elif name in _CONSTANTS:
        stack.append(_CONSTANTS[name])
    elif name == "MARK":
        stack.append(_MARK)
    elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
        items = [stack.pop_value() for _ in range(int(name[-1]))]
        stack.append(tuple(reversed(items)))
    elif name == "TUPLE":
        stack.append(tuple(stack.pop_to_mark()))
    elif name == "GLOBAL":
        module, _, attr = str(arg).partition(" ")
        module, attr = _mapped(module, attr)
        found = f"{module}.{attr}"
        scan.globals.append(found)
        scan.sources[found] = (module, attr)
        stack.append(_Global(found))
    elif name == "STACK_GLOBAL":
        attr, module = stack.pop_value(), stack.pop_value()
        if isinstance(module, str) and isinstance(attr, str):
            found = module + "." + attr
            scan.globals.append(found)
            scan.sources[found] = (module, attr)
            stack.append(_Global(found))
        else:
            scan.code.append("STACK_GLOBAL of a name built at load time")
            stack.append(_OPAQUE)
    elif name == "INST":
        module, _, attr = str(arg).partition(" ")
        module, attr = _mapped(module, attr)
        scan.globals.append(f"{module}.{attr}")
        scan.sources[f"{module}.{attr}"] = (module, attr)
        stack.pop_to_mark()
        stack.append(_OPAQUE)
    elif name.startswith("EXT"):
        scan.code.append(f"copyreg extension code {arg}")
        stack.append(_OPAQUE)
    elif name == "PERSID":
        scan.persistent_ids.append(arg)
        stack.append(_OPAQUE)
    elif name == "BINPERSID":
        scan.persistent_ids.append(stack.pop_value())
        stack.append(_OPAQUE)
    elif name in _PUTS or name == "MEMOIZE":
        if not stack or stack[-1] is _MARK:
            raise NotATorchFile("a pickle that memoizes an empty stack")
        memo[len(memo) if name == "MEMOIZE" else arg] = stack[-1]
    elif name in _GETS:
        if arg not in memo:
            raise NotATorchFile(f"a pickle that reads memo entry {arg} before writing it")
        stack.append(memo[arg])
    elif name == "DUP":
        if not stack:
            raise NotATorchFile("a pickle that duplicates an empty stack")
        stack.append(stack[-1])
    elif name == "POP":
        if not stack:
            raise NotATorchFile("a pickle that pops from an empty stack")
        stack.pop()
    elif name == "POP_MARK":
        stack.pop_to_mark()
    elif name in ("PROTO", "FRAME", "STOP"):
        pass
    else:  # containers, REDUCE, BUILD, NEWOBJ, ...: generic stack effect, opaque results
        before = op.stack_before
        if pickletools.markobject in before:
            stack.pop_to_mark()
            count = before.index(pickletools.markobject)
        else:
            count = len(before)
        for _ in range(count):
            stack.pop_value()
        stack.extend([_OPAQUE] * len(op.stack_after))


def scan_pickle(file: BinaryIO) -> PickleScan:
    """Walk one pickle from ``file``'s position to its ``STOP``, naming what it would import.

    Nothing is unpickled: :func:`pickletools.genops` decodes the opcodes and
    a symbolic stack follows literals, tuples and globals (enough to resolve
    ``STACK_GLOBAL`` and to read persistent ids); containers and call results
    stay opaque. The file is left just after the ``STOP`` opcode.

    Raises
    ------
    NotATorchFile
        Not a well-formed pickle: an unknown opcode, a truncated argument, no
        ``STOP``, or a stack that does not add up.

    Examples
    --------
    >>> import io, os, pickle
    >>> class Payload:
    ...     def __reduce__(self):
    ...         return (os.system, ("echo never",))
    >>> system = f"{os.system.__module__}.system"          # posix.system on Linux
    >>> [scan_pickle(io.BytesIO(pickle.dumps(Payload(), p))).globals == [system] for p in (2, 4)]
    [True, True]
    >>> scan_pickle(io.BytesIO(pickle.dumps({"a": (1, 2)}))).value
    <object>
    >>> scan_pickle(io.BytesIO(b"\\x80\\x02K"))     # truncated
    Traceback (most recent call last):
    ...
    rai_probe.models._torchfile.NotATorchFile: not a well-formed pickle (not enough data in stream to read uint1)
    """
    scan = PickleScan(globals=[], code=[], persistent_ids=[], value=_OPAQUE)
    stack, memo = _Stack(), {}
    try:
        for op, arg, _ in pickletools.genops(file):
            _apply(op, arg, stack, memo, scan)
    except NotATorchFile:
        raise
    except (ValueError, EOFError, TypeError, IndexError, KeyError, UnicodeDecodeError) as err:
        raise NotATorchFile(f"not a well-formed pickle ({err})") from None
    scan.value = stack[-1] if stack else _OPAQUE
    return scan


def _code_in(scans: Iterable[PickleScan]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(code, missing)``: the disallowed globals that exist here (and other code), and those that do not."""
    allowed = allowed_globals()
    code: dict[str, None] = {}
    missing: dict[str, None] = {}
    for scan in scans:
        for name in scan.globals:
            if name in allowed:
                continue
            module, attr = scan.sources.get(name, (name, ""))
            if module.split(".", 1)[0] in _BLOCKED_MODULES or global_exists(module, attr):
                code[name] = None
            else:
                missing[name] = None
        for what in scan.code:
            code[what] = None
    return tuple(code), tuple(missing)


# --------------------------------------------------------------------------- #
# the two containers
# --------------------------------------------------------------------------- #
class _Bounded:
    """A read-only view of ``file`` that refuses to hand out more than ``limit`` bytes.

    It reads straight from ``file`` (no read-ahead), so ``file`` is left just
    after what was read.
    """

    def __init__(self, file: BinaryIO, limit: int, what: str) -> None:
        self._file, self._left, self._limit, self._what = file, limit, limit, what

    def _take(self, data: bytes) -> bytes:
        if len(data) > self._left:
            raise ImplausibleSize(
                f"{self._what} is larger than {self._limit} bytes (MAX_PICKLE_BYTES); a "
                f"checkpoint's pickle holds only its structure and is far smaller"
            )
        self._left -= len(data)
        return data

    def read(self, n: int = -1) -> bytes:
        wanted = self._left + 1 if n is None or n < 0 else min(n, self._left + 1)
        return self._take(self._file.read(wanted))

    def readline(self) -> bytes:
        return self._take(self._file.readline(self._left + 1))

    def tell(self) -> int:
        return self._file.tell()


def _reraise_io(err: BaseException) -> None:
    """Re-raise a genuine I/O failure (an OSError with an errno); anything else means corrupt bytes."""
    if isinstance(err, OSError) and not isinstance(err, zipfile.BadZipFile) and err.errno is not None:
        raise err


def _storage_bytes(pid: Any) -> tuple[str, int] | None:
    """``(key, declared bytes)`` of a ``("storage", type, key, location, numel, ...)`` persistent id."""
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
        return None
    storage_type, key, numel = pid[1], pid[2], pid[4]
    if not isinstance(numel, int) or isinstance(numel, bool) or numel < 0:
        raise NotATorchFile("a tensor storage whose size is not a non-negative int")
    if not isinstance(key, str):
        raise NotATorchFile("a tensor storage whose key is not a str")
    type_name = storage_type.name.rsplit(".", 1)[-1] if isinstance(storage_type, _Global) else ""
    return str(key), numel * _ITEMSIZE.get(type_name, 1)


def _check_zip_entries(archive: zipfile.ZipFile, file_size: int) -> None:
    for entry in archive.infolist():
        where = f"zip entry {entry.filename!r}"
        if entry.compress_size > file_size or entry.header_offset + entry.compress_size > file_size:
            raise ImplausibleSize(
                f"{where} declares {entry.compress_size} stored bytes at offset "
                f"{entry.header_offset}, beyond the end of the {file_size}-byte file"
            )
        if entry.compress_type == zipfile.ZIP_STORED:
            if entry.file_size != entry.compress_size:
                raise NotATorchFile(
                    f"{where} is stored uncompressed in {entry.compress_size} bytes but "
                    f"declares {entry.file_size}"
                )
        elif entry.file_size > _SMALL_ENTRY and entry.file_size > MAX_COMPRESSION_RATIO * max(
            entry.compress_size, 1
        ):
            raise ImplausibleSize(
                f"{where} declares {entry.file_size} bytes compressed into {entry.compress_size} "
                f"(a ratio above the limit of {MAX_COMPRESSION_RATIO}; torch.save never "
                f"compresses): refused as a decompression bomb"
            )


def _inspect_zip(file: BinaryIO, file_size: int) -> TorchFileLayout:
    try:
        archive = zipfile.ZipFile(file)
        names = archive.namelist()
    except Exception as err:  # a damaged central directory surfaces as many exception types
        _reraise_io(err)
        raise NotATorchFile(f"a damaged zip archive ({type(err).__name__}: {err})") from None
    if not names:
        raise NotATorchFile("an empty zip archive, not a torch checkpoint")
    if len(set(names)) != len(names):
        raise NotATorchFile("a zip archive with two entries of the same name")
    _check_zip_entries(archive, file_size)
    prefix = names[0].split("/", 1)[0]
    if f"{prefix}/constants.pkl" in names or any(n.startswith(f"{prefix}/code/") for n in names):
        raise NotATorchFile(
            "a TorchScript archive (torch.jit.save), not a checkpoint of weights; save the "
            "model's state_dict() with torch.save instead"
        )
    pickle_name = f"{prefix}/data.pkl"
    if pickle_name not in names:
        raise NotATorchFile(
            f"a zip archive without {pickle_name!r}, not a checkpoint torch.save writes"
        )
    entry = archive.getinfo(pickle_name)
    if entry.file_size > MAX_PICKLE_BYTES:
        raise ImplausibleSize(
            f"zip entry {pickle_name!r} declares a {entry.file_size}-byte pickle, more than "
            f"the limit of {MAX_PICKLE_BYTES} bytes (MAX_PICKLE_BYTES); a checkpoint's pickle "
            f"holds only its structure"
        )
    try:
        with archive.open(entry) as stream:
            raw = stream.read(MAX_PICKLE_BYTES + 1)
    except Exception as err:  # bad CRC, bad deflate data, an unsupported compression method, ...
        _reraise_io(err)
        raise NotATorchFile(
            f"zip entry {pickle_name!r} cannot be read ({type(err).__name__}: {err})"
        ) from None
    scan = scan_pickle(io.BytesIO(raw))
    for pid in scan.persistent_ids:
        declared = _storage_bytes(pid)
        if declared is None:
            continue
        key, nbytes = declared
        record = f"{prefix}/data/{key}"
        if record not in names:
            raise NotATorchFile(f"the pickle refers to tensor data {record!r}, which the archive lacks")
        held = archive.getinfo(record).file_size
        if nbytes > held:
            raise ImplausibleSize(
                f"a tensor declares {nbytes} bytes of data but zip entry {record!r} holds {held}"
            )
    return TorchFileLayout("zip", *_code_in([scan]))


def _inspect_legacy(file: BinaryIO, file_size: int) -> TorchFileLayout:
    start = file.read(8)
    file.seek(0)
    try:
        first = scan_pickle(_Bounded(file, MAX_PICKLE_BYTES, "the first pickle"))
    except NotATorchFile:
        raise NotATorchFile(
            f"neither a zip archive nor torch's legacy format (the file starts with {start!r})"
        ) from None
    if type(first.value) is not int or first.value != _LEGACY_MAGIC:
        found = sum(_code_in([first]), ())
        also = (
            f"; it also names the Python global `{found[0]}` (nothing from it was unpickled)"
            if found
            else ""
        )
        raise NotATorchFile(
            "a pickle stream, but not one torch.save writes (no torch magic number at its "
            f"start){also}"
        )
    scans = [first]
    for what in ("protocol version", "system info", "object pickle", "storage keys"):
        scans.append(scan_pickle(_Bounded(file, MAX_PICKLE_BYTES, f"the legacy {what}")))
    declared: dict[str, int] = {}
    for pid in scans[3].persistent_ids:
        storage = _storage_bytes(pid)
        if storage is not None:
            declared[storage[0]] = storage[1]
    remaining = file_size - file.tell()
    needed = sum(declared.values()) + 8 * len(declared)
    if needed > remaining:
        raise ImplausibleSize(
            f"its tensors declare {needed} bytes of data but only {remaining} bytes follow "
            "the pickles"
        )
    return TorchFileLayout("legacy", *_code_in(scans))


def inspect_torch_file(file: BinaryIO, file_size: int) -> TorchFileLayout:
    """Check an open checkpoint file's container, sizes and globals without unpickling it.

    Parameters
    ----------
    file : binary file object
        Seekable, at any position (it is read from the start and left at an
        unspecified position).
    file_size : int
        The file's size in bytes (``os.fstat(file.fileno()).st_size``).

    Returns
    -------
    TorchFileLayout
        Its container and the code it holds.

    Raises
    ------
    NotATorchFile
        Empty, truncated, random bytes, a bare pickle, another archive.
    ImplausibleSize
        A declared size refused before reading it (see the module docstring).
    OSError
        Reading the file failed.
    """
    if file_size == 0:
        raise NotATorchFile("an empty file (0 bytes)")
    file.seek(0)
    is_zip = file.read(4) == _ZIP_MAGIC  # torch decides the same way, from the first bytes
    file.seek(0)
    return (_inspect_zip if is_zip else _inspect_legacy)(file, file_size)

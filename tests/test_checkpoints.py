"""Tests of checkpoint loading and saving in :mod:`rai_probe.models.checkpoints`.

Every supported format is created here, in ``tmp_path``, the way its
producer writes it — our own format, a MadryLab ``robustness`` file (an
attacker model with ``normalizer`` / ``model`` / ``attacker`` submodules in
``nn.DataParallel``, saved with its optimizer, schedule and epoch),
RobustBench-style and plain state_dicts with and without ``module.`` — and
loaded back to bit-identical logits. Strict loading reports missing /
unexpected keys and shape mismatches. Files that need arbitrary unpickling are
refused unless ``trust_checkpoint=True``: a malicious pickle never runs, via
any entry point.
"""

from __future__ import annotations

import argparse
import os
import pickle
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rai_probe.models import (
    MODELS,
    ArchSpec,
    CheckpointError,
    CheckpointMismatchError,
    ModelInfo,
    NormalizedModel,
    UnsafeCheckpointError,
    build_model,
    detect_format,
    load_checkpoint,
    read_checkpoint_info,
    register_model,
    save_checkpoint,
)
from rai_probe.errors import SettingError, SettingTypeError
from rai_probe.models import CheckpointNotFoundError, UnreadableCheckpointError, read_torch_file
from rai_probe.models.checkpoints import FORMAT_TAG, FORMAT_VERSION

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)


def seeded(name: str, seed: int = 0, **kwargs) -> NormalizedModel:
    """A built model with random weights *and* random BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    model = build_model(name, **kwargs)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
                module.num_batches_tracked.fill_(7)
    return model.eval()


def images(shape, seed: int = 1) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def same_logits(a: nn.Module, b: nn.Module, x: torch.Tensor) -> bool:
    with torch.no_grad():
        return torch.equal(a(x), b(x))


# --------------------------------------------------------------------------- #
# a MadryLab `robustness` checkpoint, built the way that library builds and saves it
# --------------------------------------------------------------------------- #
class InputNormalize(nn.Module):
    """MadryLab's normalizer: buffers ``new_mean`` / ``new_std`` of shape (C, 1, 1)."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("new_mean", torch.tensor(mean)[..., None, None])
        self.register_buffer("new_std", torch.tensor(std)[..., None, None])

    def forward(self, x):
        return (torch.clamp(x, 0, 1) - self.new_mean) / self.new_std


class Attacker(nn.Module):
    """Holds the same classifier and normalizer again (``attacker.model``, ``attacker.normalize``)."""

    def __init__(self, model, normalizer):
        super().__init__()
        self.model = model
        self.normalize = normalizer


class AttackerModel(nn.Module):
    def __init__(self, model, mean, std):
        super().__init__()
        self.normalizer = InputNormalize(mean, std)
        self.model = model
        self.attacker = Attacker(model, self.normalizer)

    def forward(self, x):
        return self.model(self.normalizer(x))


def madrylab_checkpoint(classifier, mean, std, path, *, data_parallel=True, extra=None):
    """Save as ``robustness.train`` does: the attacker model's state_dict plus training state."""
    attacker_model = AttackerModel(classifier, mean, std)
    if data_parallel:
        attacker_model = nn.DataParallel(attacker_model)
    optimizer = torch.optim.SGD(attacker_model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=50)
    for param in attacker_model.parameters():  # one training step leaves momentum buffers
        param.grad = torch.full_like(param, 1e-3)
    optimizer.step()
    schedule.step()
    attacker_model.eval()
    payload = {
        "model": attacker_model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "epoch": 42,
        **(extra or {}),
    }
    torch.save(payload, path)
    # the unwrapped module: DataParallel's forward would need the weights on a GPU where one exists
    return attacker_model.module if data_parallel else attacker_model


@pytest.mark.parametrize("data_parallel", [True, False])
def test_madrylab_small_cnn(tmp_path, data_parallel):
    torch.manual_seed(3)
    classifier = build_model("small_cnn").model
    path = tmp_path / "madry.pt"
    saved = madrylab_checkpoint(classifier, [0.1307], [0.3081], path, data_parallel=data_parallel)
    keys = torch.load(path, weights_only=True)["model"].keys()
    prefix = "module." if data_parallel else ""
    assert {f"{prefix}normalizer.new_mean", f"{prefix}attacker.normalize.new_std"} <= set(keys)
    assert f"{prefix}attacker.model.classifier.fc3.weight" in keys
    loaded = load_checkpoint(path, "small_cnn")
    x = images((4, 1, 28, 28))
    assert same_logits(loaded, saved, x)
    assert loaded.info.mean == (0.1307,) and loaded.info.std == (0.3081,)
    assert loaded.info.checkpoint_format == "madrylab" and loaded.info.training == {"epoch": 42}
    assert detect_format(path) == "madrylab"


def test_madrylab_cifar_resnet18_with_batchnorm(tmp_path):
    source = seeded("cifar_resnet18", seed=5)
    path = tmp_path / "cifar_l2_0_5.pt"
    saved = madrylab_checkpoint(source.model, list(CIFAR10_MEAN), list(CIFAR10_STD), path)
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"model", "optimizer", "schedule", "epoch"}
    assert raw["optimizer"]["state"] and raw["schedule"]["last_epoch"] == 1
    assert "module.model.layer2.0.shortcut.0.weight" in raw["model"]
    assert "module.attacker.model.layer2.0.shortcut.0.weight" in raw["model"]
    loaded = load_checkpoint(path, "cifar_resnet18")
    assert not loaded.training
    x = images((2, 3, 32, 32))
    assert same_logits(loaded, saved, x)
    assert loaded.info.mean == CIFAR10_MEAN and loaded.info.std == CIFAR10_STD
    file_mean = raw["model"]["module.normalizer.new_mean"]
    assert torch.equal(loaded.normalizer.mean, file_mean) and loaded.normalizer.mean.shape == (3, 1, 1)
    assert torch.equal(loaded.normalizer.std, raw["model"]["module.normalizer.new_std"])
    assert torch.equal(
        loaded.model.layer3[1].bn2.running_var,
        raw["model"]["module.model.layer3.1.bn2.running_var"],
    )


def test_madrylab_normalizer_wins_over_arch_defaults_and_conflicts_are_errors(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "madry.pt"
    madrylab_checkpoint(build_model("small_cnn").model, [0.5], [0.25], path)
    assert load_checkpoint(path, "small_cnn", mean=(0.5,), std=(0.25,)).info.mean == (0.5,)
    with pytest.raises(ValueError, match=r"`mean`=\(0.1,\) contradicts the file.*mean=\(0.5,\)"):
        load_checkpoint(path, "small_cnn", mean=(0.1,))


def test_madrylab_with_namespace_needs_trust(tmp_path):
    torch.manual_seed(1)
    path = tmp_path / "released.pt"
    saved = madrylab_checkpoint(
        build_model("small_cnn").model, [0.0], [1.0], path,
        extra={"args": argparse.Namespace(arch="small_cnn", eps=0.5)},
    )
    with pytest.raises(UnsafeCheckpointError) as caught:
        load_checkpoint(path, "small_cnn")
    message = str(caught.value)
    assert str(path) in message and "`argparse.Namespace`" in message
    assert "arbitrary code" in message and "trust_checkpoint=True" in message
    assert caught.value.global_name == "argparse.Namespace" and caught.value.path == path
    with pytest.warns(UserWarning, match="trust_checkpoint=True: fully unpickling"):
        loaded = load_checkpoint(path, "small_cnn", trust_checkpoint=True)
    assert same_logits(loaded, saved, images((3, 1, 28, 28)))
    assert loaded.info.checkpoint_format == "madrylab"


# --------------------------------------------------------------------------- #
# our own format
# --------------------------------------------------------------------------- #
def test_own_format_round_trip(tmp_path):
    model = seeded("small_cnn", mean=(0.1307,), std=(0.3081,), class_names=list("abcdefghij"))
    model.info.dataset = "mnist5k"
    training = {"epochs": 3, "attack": {"norm": "l2", "eps": 1.5, "steps": [7, 10]}, "seed": None}
    metrics = {"clean_accuracy": 0.981, "robust_accuracy": {"l2_eps1.5": 0.52}, "n": 1000}
    path = tmp_path / "own.pt"
    save_checkpoint(model, path, training=training, metrics=metrics)
    loaded = load_checkpoint(path)
    assert same_logits(loaded, model, images((5, 1, 28, 28)))
    assert not loaded.training
    expected = ModelInfo(
        arch="small_cnn", num_classes=10, input_shape=(1, 28, 28), mean=(0.1307,), std=(0.3081,),
        class_names=tuple("abcdefghij"), dataset="mnist5k", training=training, metrics=metrics,
        source=str(path), checkpoint_format="rai_probe",
    )
    assert loaded.info == expected
    assert read_checkpoint_info(path) == expected
    assert detect_format(path) == "rai_probe"


def test_own_format_file_contents(tmp_path):
    model = seeded("cifar_resnet18")
    path = tmp_path / "own.pt"
    save_checkpoint(model, path)
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {
        "format", "version", "arch", "num_classes", "input_shape", "mean", "std",
        "class_names", "dataset", "training", "metrics", "state_dict",
    }
    assert (raw["format"], raw["version"]) == (FORMAT_TAG, FORMAT_VERSION)
    assert raw["arch"] == "cifar_resnet18"
    assert raw["mean"] == CIFAR10_MEAN and raw["std"] == CIFAR10_STD
    assert raw["input_shape"] == (3, 32, 32) and raw["dataset"] == "cifar10"
    assert list(raw["state_dict"]) == list(model.model.state_dict())  # classifier only
    assert raw["state_dict"]["layer1.0.bn1.num_batches_tracked"].item() == 7
    loaded = load_checkpoint(path, "cifar_resnet18")
    assert same_logits(loaded, model, images((2, 3, 32, 32)))
    assert not list(tmp_path.glob(".*tmp"))  # the temporary file was renamed


def test_own_format_records_the_normalizer_buffers(tmp_path):
    model = seeded("small_cnn")
    with torch.no_grad():
        model.normalizer.mean.fill_(0.25)  # the buffers, not info, define the model
    save_checkpoint(model, tmp_path / "m.pt")
    loaded = load_checkpoint(tmp_path / "m.pt")
    assert loaded.info.mean == (0.25,)
    assert same_logits(loaded, model, images((2, 1, 28, 28)))


def test_own_format_defaults_to_info_training_and_metrics(tmp_path):
    model = seeded("small_cnn")
    model.info.training = {"lr": 0.01}
    model.info.metrics = {"clean_accuracy": 0.5}
    save_checkpoint(model, tmp_path / "m.pt")
    info = read_checkpoint_info(tmp_path / "m.pt")
    assert info.training == {"lr": 0.01} and info.metrics == {"clean_accuracy": 0.5}


json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3)
    | st.lists(inner, max_size=3).map(tuple)
    | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)

_PROPERTY_MODEL = build_model("small_cnn")


@settings(max_examples=20)
@given(
    training=st.dictionaries(st.text(max_size=6), json_like, max_size=4),
    metrics=st.dictionaries(st.text(max_size=6), json_like, max_size=4),
)
def test_own_format_metadata_round_trip(tmp_path_factory, training, metrics):
    path = tmp_path_factory.mktemp("meta") / "m.pt"
    save_checkpoint(_PROPERTY_MODEL, path, training=training, metrics=metrics)
    info = read_checkpoint_info(path)
    assert info.training == training and info.metrics == metrics
    assert type(info.training) is dict


def test_own_format_overrides(tmp_path):
    model = seeded("small_cnn")
    path = tmp_path / "m.pt"
    save_checkpoint(model, path)
    renamed = load_checkpoint(path, "small_cnn", class_names=list("ABCDEFGHIJ"), num_classes=10)
    assert renamed.info.class_names == tuple("ABCDEFGHIJ")
    with pytest.raises(ValueError, match="`arch`='madry_mnist_cnn' contradicts the file"):
        load_checkpoint(path, "madry_mnist_cnn")
    with pytest.raises(ValueError, match="`num_classes`=3 contradicts"):
        load_checkpoint(path, num_classes=3)
    with pytest.raises(ValueError, match="`std`=.* contradicts"):
        load_checkpoint(path, std=(0.5,))
    with pytest.raises(ValueError, match="class_names"):
        load_checkpoint(path, class_names=("a",))


def test_own_format_newer_version_and_broken_records(tmp_path):
    model = seeded("small_cnn")
    save_checkpoint(model, tmp_path / "m.pt")
    raw = torch.load(tmp_path / "m.pt", weights_only=True)
    torch.save({**raw, "version": 2}, tmp_path / "v2.pt")
    with pytest.raises(CheckpointError, match="version 2 is newer"):
        load_checkpoint(tmp_path / "v2.pt")
    torch.save({k: v for k, v in raw.items() if k != "mean"}, tmp_path / "nomean.pt")
    with pytest.raises(CheckpointError, match=r"lacks the entries \['mean'\]"):
        read_checkpoint_info(tmp_path / "nomean.pt")
    torch.save({**raw, "num_classes": -1}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="invalid metadata.*num_classes"):
        load_checkpoint(tmp_path / "bad.pt")
    torch.save({**raw, "arch": "unregistered_net"}, tmp_path / "arch.pt")
    with pytest.raises(CheckpointError, match="'unregistered_net', which is not registered"):
        load_checkpoint(tmp_path / "arch.pt")


def test_own_format_with_a_registered_architecture(tmp_path):
    spec = ArchSpec(
        "ckpt_linear", lambda n: nn.Sequential(nn.Flatten(), nn.Linear(4, n)),
        (1, 2, 2), 3, (0.5,), (0.5,), "toy", "test linear probe", flexible_size=False,
    )
    saved = dict(MODELS)
    try:
        register_model(spec)
        model = build_model("ckpt_linear").eval()
        save_checkpoint(model, tmp_path / "lin.pt")
        assert same_logits(load_checkpoint(tmp_path / "lin.pt"), model, images((3, 1, 2, 2)))
    finally:
        MODELS.clear()
        MODELS.update(saved)
    with pytest.raises(CheckpointError, match="register it with"):
        load_checkpoint(tmp_path / "lin.pt")


@pytest.mark.parametrize(
    "where, value, match",
    [
        ("training", {"lr": torch.tensor(0.1)}, r"training\['lr'\].*torch.Tensor.*\.item\(\)"),
        ("metrics", {"acc": {"l2": [0.5, {1, 2}]}}, r"metrics\['acc'\]\['l2'\]\[1\].*builtins.set"),
        ("metrics", {1: 0.5}, r"metrics: keys must be str; got int key 1"),
        ("training", {"opt": torch.optim.SGD}, r"training\['opt'\]"),
    ],
)
def test_save_rejects_non_json_metadata(tmp_path, where, value, match):
    with pytest.raises(TypeError, match=match):
        save_checkpoint(seeded("small_cnn"), tmp_path / "m.pt", **{where: value})
    assert not (tmp_path / "m.pt").exists()


def test_save_rejects_numpy_scalars(tmp_path):
    import numpy as np

    with pytest.raises(TypeError, match=r"metrics\['acc'\].*numpy.float64"):
        save_checkpoint(seeded("small_cnn"), tmp_path / "m.pt", metrics={"acc": np.float64(0.5)})


def test_save_argument_errors(tmp_path):
    with pytest.raises(TypeError, match="NormalizedModel"):
        save_checkpoint(nn.Linear(2, 2), tmp_path / "m.pt")
    model = seeded("small_cnn")
    with pytest.raises(FileNotFoundError, match="directory does not exist"):
        save_checkpoint(model, tmp_path / "missing" / "m.pt")
    stray = NormalizedModel(nn.Flatten(), ModelInfo("nowhere", 784, (1, 28, 28), (0.0,), (1.0,)))
    with pytest.raises(ValueError, match="'nowhere' could not be rebuilt"):
        save_checkpoint(stray, tmp_path / "m.pt")


# --------------------------------------------------------------------------- #
# RobustBench / plain state_dicts
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("container", [None, "state_dict", "model", "net"])
@pytest.mark.parametrize("prefix", ["", "module."])
def test_plain_state_dicts(tmp_path, container, prefix):
    model = seeded("small_cnn", seed=2)
    state = {prefix + k: v for k, v in model.model.state_dict().items()}
    payload = state if container is None else {container: state, "epoch": 9}
    torch.save(payload, tmp_path / "plain.pt")
    loaded = load_checkpoint(tmp_path / "plain.pt", "small_cnn")
    assert same_logits(loaded, model, images((3, 1, 28, 28)))
    assert loaded.info.checkpoint_format == "state_dict"
    assert loaded.info.source == str(tmp_path / "plain.pt")
    assert loaded.info.mean == (0.0,) and loaded.info.training == {}


def test_plain_state_dict_takes_normalization_from_arguments(tmp_path):
    model = seeded("cifar_resnet18", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    torch.save({"state_dict": model.model.state_dict()}, tmp_path / "rb.pt")
    loaded = load_checkpoint(tmp_path / "rb.pt", "cifar_resnet18", mean=(0.5,) * 3, std=(0.25,) * 3)
    assert same_logits(loaded, model, images((1, 3, 32, 32)))
    default = load_checkpoint(tmp_path / "rb.pt", "cifar_resnet18")
    assert default.info.mean == CIFAR10_MEAN


def test_normalized_model_state_dict_carries_its_normalizer(tmp_path):
    model = seeded("small_cnn", mean=(0.2,), std=(0.7,))
    torch.save(model.state_dict(), tmp_path / "whole.pt")
    loaded = load_checkpoint(tmp_path / "whole.pt", "small_cnn")
    assert loaded.info.mean == (0.2,) and loaded.info.std == (0.7,)
    assert same_logits(loaded, model, images((2, 1, 28, 28)))


def test_robustbench_wrn28_10_with_unused_sub_block1(tmp_path):
    model = seeded("wrn28_10", seed=4)
    state = model.model.state_dict()
    unused = {"sub_" + k: v for k, v in state.items() if k.startswith("block1.")}
    assert len(unused) == 4 * 12 + 1  # 4 blocks of 2 convs + 2 BNs (5 entries each), 1 shortcut
    state.update(unused)
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, tmp_path / "wrn.pt")
    loaded = load_checkpoint(tmp_path / "wrn.pt", "wrn28_10")
    assert not any(k.startswith("model.sub_block1") for k in loaded.state_dict())
    assert same_logits(loaded, model, images((1, 3, 8, 8)))
    # another architecture does not ignore them
    with pytest.raises(CheckpointMismatchError, match="unexpected keys"):
        load_checkpoint(tmp_path / "wrn.pt", "cifar_resnet18")


def test_old_files_without_num_batches_tracked_load(tmp_path):
    model = seeded("cifar_resnet18")
    state = {k: v for k, v in model.model.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pt")
    loaded = load_checkpoint(tmp_path / "old.pt", "cifar_resnet18")
    assert same_logits(loaded, model, images((1, 3, 32, 32)))


@given(depth=st.integers(0, 3))
def test_any_number_of_module_prefixes_is_stripped(tmp_path_factory, depth):
    state = {"module." * depth + k: v for k, v in _PROPERTY_MODEL.model.state_dict().items()}
    path = tmp_path_factory.mktemp("prefix") / "p.pt"
    torch.save(state, path)
    loaded = load_checkpoint(path, "small_cnn")
    for key, value in _PROPERTY_MODEL.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value)


def test_arch_is_required_without_metadata(tmp_path):
    torch.save(seeded("small_cnn").model.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(ValueError, match=r"`arch` is required .* state_dict checkpoint.*'small_cnn'"):
        load_checkpoint(tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="unknown model architecture 'smallcnn'"):
        load_checkpoint(tmp_path / "plain.pt", "smallcnn")
    with pytest.raises(CheckpointError, match="state_dict checkpoint, which records no metadata"):
        read_checkpoint_info(tmp_path / "plain.pt")


# --------------------------------------------------------------------------- #
# strict key matching
# --------------------------------------------------------------------------- #
def test_strict_mismatch_report(tmp_path):
    model = seeded("small_cnn")
    state = model.model.state_dict()
    del state["classifier.fc2.bias"]
    state["classifier.fc4.weight"] = torch.zeros(3)
    state["feature_extractor.conv1.weight"] = torch.zeros(16, 1, 3, 3)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointMismatchError) as caught:
        load_checkpoint(tmp_path / "bad.pt", "small_cnn")
    err = caught.value
    assert isinstance(err, CheckpointError) and isinstance(err, ValueError)
    assert err.missing == ["classifier.fc2.bias"]
    assert err.unexpected == ["classifier.fc4.weight"]
    assert err.mismatched == [("feature_extractor.conv1.weight", (16, 1, 3, 3), (32, 1, 3, 3))]
    message = str(err)
    assert "architecture 'small_cnn'" in message and str(tmp_path / "bad.pt") in message
    assert "missing keys (1 of 14): classifier.fc2.bias" in message
    assert "unexpected keys (1 of 14): classifier.fc4.weight" in message
    assert (
        "shape mismatches (1): feature_extractor.conv1.weight: file [16, 1, 3, 3] "
        "vs model [32, 1, 3, 3]" in message
    )


def test_mismatch_report_truncates_long_lists_and_hints(tmp_path):
    torch.save(seeded("madry_mnist_cnn").model.state_dict(), tmp_path / "madry.pt")
    with pytest.raises(CheckpointMismatchError) as caught:
        load_checkpoint(tmp_path / "madry.pt", "cifar_resnet18")
    message = str(caught.value)
    # all but conv1.weight (present, another shape) and the 20 num_batches_tracked counters
    assert len(caught.value.missing) == 101
    assert "missing keys (101 of 122): bn1.weight, bn1.bias, bn1.running_mean" in message
    assert "... (93 more)" in message
    assert caught.value.mismatched == [("conv1.weight", (32, 1, 5, 5), (64, 3, 3, 3))]
    assert "no key matches; is `arch` right?" in message


def test_mismatch_hints_num_classes(tmp_path):
    torch.save(seeded("small_cnn", num_classes=100).model.state_dict(), tmp_path / "c100.pt")
    with pytest.raises(CheckpointMismatchError, match="pass num_classes=100"):
        load_checkpoint(tmp_path / "c100.pt", "small_cnn")
    loaded = load_checkpoint(tmp_path / "c100.pt", "small_cnn", num_classes=100)
    assert loaded.info.num_classes == 100


def test_non_strict_loads_the_matching_keys_and_warns(tmp_path):
    source = seeded("small_cnn", seed=8)
    state = source.model.state_dict()
    del state["classifier.fc3.weight"]
    state["classifier.fc2.weight"] = torch.zeros(5, 5)
    state["extra"] = torch.zeros(1)
    torch.save(state, tmp_path / "partial.pt")
    with pytest.warns(UserWarning, match="strict=False: loaded the matching keys only"):
        loaded = load_checkpoint(tmp_path / "partial.pt", "small_cnn", strict=False)
    got = loaded.model.state_dict()
    assert torch.equal(got["feature_extractor.conv1.weight"], state["feature_extractor.conv1.weight"])
    assert torch.equal(got["classifier.fc3.bias"], state["classifier.fc3.bias"])
    built_fc3 = got["classifier.fc3.weight"]  # kept as built, not the source's
    assert not torch.equal(built_fc3, source.model.state_dict()["classifier.fc3.weight"])
    assert got["classifier.fc2.weight"].shape == (200, 200)


# --------------------------------------------------------------------------- #
# unreadable and unsupported files
# --------------------------------------------------------------------------- #
def test_file_errors(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match=f"checkpoint file not found: {missing}"):
        load_checkpoint(missing, "small_cnn")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        read_checkpoint_info(missing)
    with pytest.raises(CheckpointError, match="is a directory, not a file"):
        load_checkpoint(tmp_path, "small_cnn")
    (tmp_path / "text.pt").write_bytes(b"hello, not a checkpoint")
    with pytest.raises(CheckpointError, match="could not read .*text.pt as a torch checkpoint"):
        load_checkpoint(tmp_path / "text.pt", "small_cnn")
    torch.save({"epoch": 3, "lr": [0.1]}, tmp_path / "meta.pt")
    expected = r"not a supported checkpoint: got a dict with keys \['epoch', 'lr'\]"
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(tmp_path / "meta.pt", "small_cnn")
    with pytest.raises(TypeError, match="str or os.PathLike"):
        load_checkpoint(123, "small_cnn")
    with pytest.raises(TypeError, match="trust_checkpoint"):
        load_checkpoint(tmp_path / "meta.pt", "small_cnn", trust_checkpoint="yes")


def test_detect_format_on_objects():
    tensors = {"fc.weight": torch.zeros(2, 2)}
    assert detect_format({"format": FORMAT_TAG}) == "rai_probe"
    assert detect_format({"model": {"module.attacker.model.fc.weight": torch.zeros(1)}}) == "madrylab"
    assert detect_format(tensors) == "state_dict"
    assert detect_format({"net": tensors, "acc": 0.9}) == "state_dict"
    assert detect_format(nn.Linear(2, 2)) == "state_dict"
    for bad in ({}, {"state_dict": {"a": 1}}, [torch.zeros(1)], None):
        with pytest.raises(CheckpointError, match="not a supported checkpoint"):
            detect_format(bad)


# --------------------------------------------------------------------------- #
# security: nothing is unpickled beyond tensors and plain containers without the flag
# --------------------------------------------------------------------------- #
class Payload:
    """Unpickling this object calls ``os.mkdir(marker)``: arbitrary code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def write_malicious(path, marker, how):
    state = build_model("small_cnn").model.state_dict()
    payload = {"model": state, "hook": Payload(marker)}
    if how == "zip":
        torch.save(payload, path)
    elif how == "legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:  # a bare pickle stream
        with open(path, "wb") as f:
            pickle.dump(Payload(marker), f, protocol=2)


def _entry_points(path):
    return [
        lambda: load_checkpoint(path, "small_cnn"),
        lambda: load_checkpoint(path),                      # format detection from the file alone
        lambda: load_checkpoint(path, "small_cnn", strict=False),
        lambda: detect_format(path),
        lambda: read_checkpoint_info(path),
    ]


@pytest.mark.parametrize("how", ["zip", "legacy"])
def test_malicious_pickle_never_runs(tmp_path, how):
    marker = tmp_path / "pwned"
    path = tmp_path / f"evil_{how}.pt"
    write_malicious(path, marker, how)
    for call in _entry_points(path):
        with pytest.raises(UnsafeCheckpointError) as caught:
            call()
        assert not marker.exists()
        assert str(path) in str(caught.value) and "trust_checkpoint=True" in str(caught.value)
        assert caught.value.setting == "trust_checkpoint" and caught.value.value is False
        assert caught.value.global_name in ("posix.mkdir", "os.mkdir", "nt.mkdir")
        assert caught.value.globals == (caught.value.global_name,)


def test_bare_pickle_with_a_payload_is_not_a_checkpoint(tmp_path):
    """A pickle stream torch.save never writes: even full unpickling could not load it, so trust is never suggested."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil_raw.pt"
    write_malicious(path, marker, "raw")
    for call in _entry_points(path):
        with pytest.raises(CheckpointError) as caught:
            call()
        assert not marker.exists()
        assert type(caught.value) is CheckpointError and caught.value.setting == "checkpoint"
        message = str(caught.value)
        assert "trust_checkpoint" not in message and str(path) in message
        assert "not one torch.save writes" in message and "mkdir`" in message
    with pytest.raises(CheckpointError, match="not one torch.save writes"):
        load_checkpoint(path, "small_cnn", trust_checkpoint=True)  # trusting does not unpickle it
    assert not marker.exists()


def test_trusting_a_file_really_unpickles_it(tmp_path):
    """The flag is the only way in, and it does what it says: the payload runs."""
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    write_malicious(path, marker, "zip")
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(path, "small_cnn", trust_checkpoint=False)
    assert not marker.exists()
    with pytest.warns(UserWarning, match="this runs any code the file contains"):
        load_checkpoint(path, "small_cnn", trust_checkpoint=True)  # the hook entry is ignored
    assert marker.is_dir()


def test_whole_pickled_module_needs_trust(tmp_path):
    model = seeded("small_cnn")
    torch.save(model.model, tmp_path / "module.pt")
    with pytest.raises(UnsafeCheckpointError, match="rai_probe.models.small_cnn.SmallCNN"):
        load_checkpoint(tmp_path / "module.pt", "small_cnn")
    with pytest.warns(UserWarning, match="trust_checkpoint=True"):
        loaded = load_checkpoint(tmp_path / "module.pt", "small_cnn", trust_checkpoint=True)
    assert same_logits(loaded, model, images((2, 1, 28, 28)))


def test_legacy_format_loads(tmp_path):
    model = seeded("small_cnn", seed=4)
    torch.save({"state_dict": model.model.state_dict()}, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    assert tmp_path.joinpath("old.pt").read_bytes()[:2] == b"\x80\x02"  # not a zip archive
    loaded = load_checkpoint(tmp_path / "old.pt", "small_cnn")
    assert same_logits(loaded, model, images((2, 1, 28, 28)))


@pytest.mark.parametrize("value", [1, 0, "true", "yes", None, 1.0, "True"])
def test_trust_checkpoint_takes_only_a_real_bool(tmp_path, value):
    import numpy as np

    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    write_malicious(path, marker, "zip")
    for trust in (value, np.bool_(True), torch.tensor(True)):
        with pytest.raises(TypeError, match="`trust_checkpoint` must be the bool True or False") as caught:
            load_checkpoint(path, "small_cnn", trust_checkpoint=trust)
        assert caught.value.setting == "trust_checkpoint"
        with pytest.raises(TypeError, match="trust_checkpoint"):
            read_torch_file(path, trust_checkpoint=trust)
    assert not marker.exists()


def test_argument_errors_carry_the_setting(tmp_path):
    model = seeded("small_cnn")
    save_checkpoint(model, tmp_path / "own.pt")
    torch.save(model.model.state_dict(), tmp_path / "plain.pt")
    torch.save(seeded("small_cnn", num_classes=7).model.state_dict(), tmp_path / "c7.pt")
    cases = [
        (lambda: load_checkpoint(tmp_path / "plain.pt"), SettingTypeError, "arch"),
        (lambda: load_checkpoint(tmp_path / "plain.pt", "resnet9"), SettingError, "arch"),
        (lambda: load_checkpoint(tmp_path / "plain.pt", 3), SettingTypeError, "arch"),
        (lambda: load_checkpoint(tmp_path / "plain.pt", "small_cnn", num_classes=0), SettingError, "num_classes"),
        (lambda: load_checkpoint(tmp_path / "plain.pt", "small_cnn", mean=(0.5, 0.5)), SettingError, "mean"),
        (lambda: load_checkpoint(tmp_path / "plain.pt", "small_cnn", std=(0.0,)), SettingError, "std"),
        (lambda: load_checkpoint(tmp_path / "plain.pt", "small_cnn", strict=1), SettingTypeError, "strict"),
        (lambda: load_checkpoint(tmp_path / "own.pt", class_names="ab"), SettingTypeError, "class_names"),
        (lambda: load_checkpoint(tmp_path / "own.pt", class_names=("a",)), SettingError, "class_names"),
        (lambda: load_checkpoint(tmp_path / "own.pt", "madry_mnist_cnn"), CheckpointError, "arch"),
        (lambda: load_checkpoint(tmp_path / "own.pt", num_classes=3), CheckpointError, "num_classes"),
        (lambda: load_checkpoint(tmp_path / "own.pt", mean=(0.5,)), CheckpointError, "mean"),
        (lambda: load_checkpoint(tmp_path / "c7.pt", "small_cnn"), CheckpointMismatchError, "num_classes"),
        (lambda: load_checkpoint(tmp_path / "plain.pt", "cifar_resnet18"), CheckpointMismatchError, "arch"),
        (lambda: load_checkpoint(tmp_path / "missing.pt", "small_cnn"), CheckpointNotFoundError, "checkpoint"),
        (lambda: load_checkpoint(tmp_path, "small_cnn"), UnreadableCheckpointError, "checkpoint"),
        (lambda: load_checkpoint(42, "small_cnn"), SettingTypeError, "checkpoint"),
        (lambda: read_checkpoint_info(tmp_path / "plain.pt"), CheckpointError, "checkpoint"),
    ]
    for call, error, setting in cases:
        with pytest.raises(error) as caught:
            call()
        assert isinstance(caught.value, SettingError) and isinstance(caught.value, ValueError)
        assert caught.value.setting == setting, (caught.value, setting)
    with pytest.raises(CheckpointMismatchError) as caught:
        load_checkpoint(tmp_path / "c7.pt", "small_cnn")
    assert caught.value.value == 7  # the file's number of outputs: what num_classes must be


def test_errors_survive_pickling(tmp_path):
    """Errors cross process boundaries (submitit, joblib) with their class, message and data."""
    marker = tmp_path / "pwned"
    write_malicious(tmp_path / "evil.pt", marker, "zip")
    torch.save(seeded("small_cnn", num_classes=7).model.state_dict(), tmp_path / "c7.pt")
    calls = [
        lambda: load_checkpoint(tmp_path / "evil.pt", "small_cnn"),
        lambda: load_checkpoint(tmp_path / "c7.pt", "small_cnn"),
        lambda: load_checkpoint(tmp_path / "nope.pt", "small_cnn"),
        lambda: load_checkpoint(tmp_path, "small_cnn"),
    ]
    for call in calls:
        with pytest.raises(CheckpointError) as caught:
            call()
        copy = pickle.loads(pickle.dumps(caught.value))
        assert type(copy) is type(caught.value) and str(copy) == str(caught.value)
        assert copy.setting == caught.value.setting
        for name in ("global_name", "globals", "missing", "mismatched", "path", "reason"):
            assert getattr(copy, name, None) == getattr(caught.value, name, None)


def test_trust_on_a_safe_file_stays_on_the_safe_path(tmp_path):
    model = seeded("small_cnn")
    save_checkpoint(model, tmp_path / "m.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "fully unpickling" warning: weights_only sufficed
        loaded = load_checkpoint(tmp_path / "m.pt", trust_checkpoint=True)
    assert same_logits(loaded, model, images((2, 1, 28, 28)))


# --------------------------------------------------------------------------- #
# file modes of what is written (rai_probe._io.write_atomic, used by every writer)
# --------------------------------------------------------------------------- #
@pytest.fixture
def umask():
    """Set the process umask for one test, and restore it."""
    saved = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(saved)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664), (0o000, 0o666)])
def test_saved_files_get_the_mode_open_would_give(tmp_path, umask, mask, mode):
    import stat

    from rai_probe._io import current_umask, write_atomic, write_json

    umask(mask)
    assert current_umask() == mask
    save_checkpoint(seeded("small_cnn"), tmp_path / "m.pt")
    write_atomic(tmp_path / "a.txt", "x")
    write_json(tmp_path / "m.json", {"a": 1})
    with open(tmp_path / "plain.txt", "w") as file:  # the reference: a normal open
        file.write("x")
    for name in ("m.pt", "a.txt", "m.json", "plain.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "m.json", "m.pt", "plain.txt"]


def test_replacing_a_file_keeps_its_mode_like_open_does(tmp_path, umask):
    import stat

    from rai_probe._io import write_atomic

    umask(0o022)
    path = write_atomic(tmp_path / "a.txt", "one")
    path.chmod(0o640)
    write_atomic(path, "two")
    assert path.read_text() == "two" and stat.S_IMODE(path.stat().st_mode) == 0o640


def test_umask_is_read_without_proc_too(tmp_path, umask, monkeypatch):
    import rai_probe._io as io_module

    umask(0o027)
    monkeypatch.setattr(io_module, "_PROC_STATUS", str(tmp_path / "missing"))
    assert io_module.current_umask() == 0o027
    assert io_module.current_umask() == 0o027  # the fallback restored it
    assert os.umask(0o027) == 0o027


def test_a_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path):
    from rai_probe._io import write_atomic

    path = write_atomic(tmp_path / "a.txt", "old")

    def broken(file):
        file.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomic(path, save=broken)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]

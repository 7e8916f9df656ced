"""Tests of the architectures, the normalization wrapper and the registry of :mod:`rai_probe.models`.

Every registered architecture maps ``[0, 1]`` inputs to ``(N, classes)``
logits, has the documented parameter count and ``state_dict`` layout
(MadryLab / RobustBench CIFAR ResNets, RobustBench WideResNet, torchvision
ResNet-50); ``Normalize`` / ``NormalizedModel`` / ``ModelInfo`` compute and
validate exactly; ``build_model`` / ``register_model`` honour and check their
options; ``torchvision:<name>`` is optional; the shipped-weights lookup.
"""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import rai_probe.models.pretrained as pretrained_module
from rai_probe.models import (
    DEFAULT_MODEL,
    MODELS,
    PRETRAINED,
    ArchSpec,
    ModelInfo,
    Normalize,
    NormalizedModel,
    build_model,
    get_arch_spec,
    load_pretrained,
    pretrained_path,
    register_model,
    save_checkpoint,
)

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# name -> (input batch shape for the forward test, classes, parameters for 10 / 1000 classes)
ARCHS = {
    "small_cnn": ((2, 1, 28, 28), 10, 312_202),
    "madry_mnist_cnn": ((2, 1, 28, 28), 10, 3_274_634),
    "cifar_resnet18": ((2, 3, 32, 32), 10, 11_173_962),
    "cifar_resnet50": ((1, 3, 32, 32), 10, 23_520_842),
    "wrn28_10": ((1, 3, 32, 32), 10, 36_479_194),
    "imagenet_resnet50": ((1, 3, 64, 64), 1000, 25_557_032),
}

_BUILT: dict[str, NormalizedModel] = {}


def built(name: str) -> NormalizedModel:
    """Each big architecture is built once per test session (eval mode, seeded)."""
    if name not in _BUILT:
        torch.manual_seed(0)
        _BUILT[name] = build_model(name).eval()
    return _BUILT[name]


@pytest.fixture(scope="module", autouse=True)
def _release_built_models():
    """Free the cached models (about 400 MB) when this module's tests are done."""
    yield
    _BUILT.clear()


@pytest.fixture
def registry_snapshot():
    """Restore the global registry after a test that registers architectures."""
    saved = dict(MODELS)
    yield MODELS
    MODELS.clear()
    MODELS.update(saved)


def tiny_linear(num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(4, num_classes))


# --------------------------------------------------------------------------- #
# architectures
# --------------------------------------------------------------------------- #
def test_registry_names():
    assert sorted(MODELS) == sorted(ARCHS)


@pytest.mark.parametrize("name", list(ARCHS))
def test_architecture_maps_unit_inputs_to_logits(name):
    shape, classes, _ = ARCHS[name]
    model = built(name)
    with torch.no_grad():
        logits = model(torch.rand(shape, generator=torch.Generator().manual_seed(1)))
    assert logits.shape == (shape[0], classes)
    assert logits.dtype == torch.float32
    assert bool(torch.isfinite(logits).all())
    # the registry's defaults are recorded in info
    spec = MODELS[name]
    assert model.info.arch == name
    assert model.info.num_classes == classes == spec.num_classes
    assert model.info.input_shape == spec.input_shape
    assert model.info.source is None and model.info.checkpoint_format is None


@pytest.mark.parametrize("name", list(ARCHS))
def test_parameter_counts(name):
    assert sum(p.numel() for p in built(name).model.parameters()) == ARCHS[name][2]


@pytest.mark.parametrize(
    "name, mean, std, dataset",
    [
        ("small_cnn", (0.0,), (1.0,), "mnist"),
        ("madry_mnist_cnn", (0.0,), (1.0,), "mnist"),
        ("cifar_resnet18", CIFAR10_MEAN, CIFAR10_STD, "cifar10"),
        ("cifar_resnet50", CIFAR10_MEAN, CIFAR10_STD, "cifar10"),
        ("wrn28_10", CIFAR10_MEAN, CIFAR10_STD, "cifar10"),
        ("imagenet_resnet50", IMAGENET_MEAN, IMAGENET_STD, "imagenet"),
    ],
)
def test_default_normalization(name, mean, std, dataset):
    model = built(name)
    assert model.info.mean == mean and model.info.std == std and model.info.dataset == dataset
    assert torch.equal(model.normalizer.mean.flatten(), torch.tensor(mean))
    assert torch.equal(model.normalizer.std.flatten(), torch.tensor(std))


def test_small_cnn_layout():
    sd = built("small_cnn").model.state_dict()
    convs = [f"feature_extractor.conv{i}" for i in range(1, 5)]
    fcs = [f"classifier.fc{i}" for i in range(1, 4)]
    assert list(sd) == [f"{m}.{p}" for m in convs + fcs for p in ("weight", "bias")]
    shapes = {k: tuple(v.shape) for k, v in sd.items() if k.endswith("weight")}
    assert shapes == {
        "feature_extractor.conv1.weight": (32, 1, 3, 3),
        "feature_extractor.conv2.weight": (32, 32, 3, 3),
        "feature_extractor.conv3.weight": (64, 32, 3, 3),
        "feature_extractor.conv4.weight": (64, 64, 3, 3),
        "classifier.fc1.weight": (200, 1024),
        "classifier.fc2.weight": (200, 200),
        "classifier.fc3.weight": (10, 200),
    }


def test_madry_mnist_cnn_layout():
    sd = built("madry_mnist_cnn").model.state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items() if k.endswith("weight")} == {
        "conv1.weight": (32, 1, 5, 5),
        "conv2.weight": (64, 32, 5, 5),
        "fc1.weight": (1024, 3136),
        "fc2.weight": (10, 1024),
    }
    assert len(sd) == 8


def test_cifar_resnet18_layout():
    sd = built("cifar_resnet18").model.state_dict()
    # stem 6 + layer1 2 x 12 + layers 2-4 (18 + 12) x 3 + linear 2 (BN: 5 entries each)
    assert len(sd) == 122
    assert tuple(sd["conv1.weight"].shape) == (64, 3, 3, 3)
    assert "conv1.bias" not in sd
    assert "layer1.0.shortcut.0.weight" not in sd  # identity shortcut: an empty Sequential
    assert tuple(sd["layer2.0.shortcut.0.weight"].shape) == (128, 64, 1, 1)
    assert "layer2.0.shortcut.1.running_var" in sd
    assert "layer2.1.shortcut.0.weight" not in sd
    assert tuple(sd["layer4.1.conv2.weight"].shape) == (512, 512, 3, 3)
    assert tuple(sd["linear.weight"].shape) == (10, 512)
    assert not any(k.startswith(("fc.", "layer5")) for k in sd)


def test_cifar_resnet50_layout():
    sd = built("cifar_resnet50").model.state_dict()
    assert tuple(sd["layer1.0.shortcut.0.weight"].shape) == (256, 64, 1, 1)  # 64 -> 4 x 64
    assert tuple(sd["layer1.0.conv3.weight"].shape) == (256, 64, 1, 1)
    assert "layer1.1.shortcut.0.weight" not in sd
    assert tuple(sd["layer3.5.bn3.weight"].shape) == (1024,)
    assert "layer3.6.conv1.weight" not in sd  # 6 blocks in stage 3
    assert tuple(sd["linear.weight"].shape) == (10, 2048)


def test_wrn28_10_layout():
    net = built("wrn28_10").model
    sd = net.state_dict()
    assert tuple(sd["conv1.weight"].shape) == (16, 3, 3, 3)
    assert tuple(sd["block1.layer.0.convShortcut.weight"].shape) == (160, 16, 1, 1)
    assert "block1.layer.1.convShortcut.weight" not in sd
    assert tuple(sd["block2.layer.0.convShortcut.weight"].shape) == (320, 160, 1, 1)
    assert tuple(sd["block3.layer.0.convShortcut.weight"].shape) == (640, 320, 1, 1)
    assert tuple(sd["block1.layer.0.bn1.weight"].shape) == (16,)  # pre-activation on the input
    assert tuple(sd["block3.layer.3.conv2.weight"].shape) == (640, 640, 3, 3)
    assert "block3.layer.4.conv1.weight" not in sd
    assert tuple(sd["bn1.running_mean"].shape) == (640,)
    assert tuple(sd["fc.weight"].shape) == (10, 640)
    assert not any(k.startswith("sub_block1") for k in sd)
    assert [len(b.layer) for b in (net.block1, net.block2, net.block3)] == [4, 4, 4]
    assert MODELS["wrn28_10"].ignored_keys == ("sub_block1.",)


def test_imagenet_resnet50_layout_matches_torchvision_names():
    sd = built("imagenet_resnet50").model.state_dict()
    # torchvision's resnet50 state_dict has 320 entries
    assert len(sd) == 320
    assert tuple(sd["conv1.weight"].shape) == (64, 3, 7, 7)
    assert tuple(sd["layer1.0.downsample.0.weight"].shape) == (256, 64, 1, 1)
    assert "layer1.0.downsample.1.num_batches_tracked" in sd
    assert "layer1.1.downsample.0.weight" not in sd
    assert tuple(sd["layer2.0.conv2.weight"].shape) == (128, 128, 3, 3)
    assert tuple(sd["layer4.2.conv3.weight"].shape) == (2048, 512, 1, 1)
    assert tuple(sd["fc.weight"].shape) == (1000, 2048)
    assert not any("shortcut" in k for k in sd)


def test_imagenet_resnet50_stride_is_on_the_3x3_conv():
    block = built("imagenet_resnet50").model.layer2[0]
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)


def test_wide_resnet_rejects_bad_depth():
    from rai_probe.models import WideResNet

    with pytest.raises(ValueError, match="depth"):
        WideResNet(depth=27)


@pytest.mark.parametrize(
    "name, shape", [("cifar_resnet18", (1, 3, 16, 16)), ("small_cnn", (3, 1, 28, 28))]
)
def test_num_classes_override(name, shape):
    model = build_model(name, num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.rand(shape)).shape == (shape[0], 7)
    assert model.info.class_names == tuple(str(i) for i in range(7))


# --------------------------------------------------------------------------- #
# Normalize and NormalizedModel
# --------------------------------------------------------------------------- #
def test_normalize_exact_values():
    norm = Normalize((0.5, 0.25, 0.0), (0.5, 0.25, 2.0))
    x = torch.tensor([1.0, 0.75, 1.0]).view(1, 3, 1, 1)
    assert norm(x).flatten().tolist() == [1.0, 2.0, 0.5]
    assert norm.mean.shape == norm.std.shape == (3, 1, 1)
    assert norm.mean.dtype == norm.std.dtype == torch.float32
    assert sorted(norm.state_dict()) == ["mean", "std"]
    assert norm(x[0]).shape == (3, 1, 1)  # unbatched (C, H, W)


def test_normalize_accepts_tensors_and_follows_dtype_conversions():
    norm = Normalize(torch.tensor([0.5]), torch.tensor([0.25])).double()
    out = norm(torch.ones(2, 1, 3, 3, dtype=torch.float64))
    assert out.dtype == torch.float64 and bool((out == 2.0).all())


@pytest.mark.parametrize(
    "mean, std, error, match",
    [
        ((0.5,), (0.0,), ValueError, "std"),
        ((0.5,), (-1.0,), ValueError, "std"),
        ((0.5, 0.5), (1.0,), ValueError, "same number"),
        ((math.nan,), (1.0,), ValueError, "finite"),
        ((0.5,), (math.inf,), ValueError, "finite"),
        ((), (), ValueError, "at least one"),
        ("0.5", (1.0,), TypeError, "mean"),
        ((0.5,), (True,), TypeError, "std"),
    ],
)
def test_normalize_validates(mean, std, error, match):
    with pytest.raises(error, match=match):
        Normalize(mean, std)


@pytest.mark.parametrize("shape", [(2, 1, 4, 4), (4, 4), (2, 3, 4, 4, 1)])
def test_normalize_rejects_wrong_channel_count(shape):
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 3, H, W\)"):
        Normalize(CIFAR10_MEAN, CIFAR10_STD)(torch.rand(shape))


@given(
    channels=st.integers(1, 4),
    data=st.data(),
)
def test_normalize_inverts(channels, data):
    means = data.draw(st.lists(st.floats(-2, 2), min_size=channels, max_size=channels))
    stds = data.draw(st.lists(st.floats(0.01, 5), min_size=channels, max_size=channels))
    norm = Normalize(means, stds)
    x = torch.rand(2, channels, 3, 3, generator=torch.Generator().manual_seed(0))
    back = norm(x) * norm.std + norm.mean
    assert torch.allclose(back, x, atol=1e-5)


def test_normalized_model_forward_and_state_dict():
    info = ModelInfo("tiny", 2, (1, 2, 2), (0.25,), (0.5,))
    net = tiny_linear(2)
    model = NormalizedModel(net, info)
    x = torch.rand(3, 1, 2, 2)
    assert torch.equal(model(x), net((x - 0.25) / 0.5))
    assert list(model.state_dict()) == [
        "normalizer.mean", "normalizer.std", "model.1.weight", "model.1.bias"
    ]
    assert model.info is info
    assert isinstance(model.normalizer, Normalize) and model.model is net


def test_normalized_model_type_errors():
    info = ModelInfo("tiny", 2, (1, 2, 2), (0.0,), (1.0,))
    with pytest.raises(TypeError, match="`model`"):
        NormalizedModel(lambda x: x, info)
    with pytest.raises(TypeError, match="`info`"):
        NormalizedModel(tiny_linear(2), {"arch": "tiny"})


def test_model_info_defaults_and_conversions():
    info = ModelInfo("a", 3, [1, 28, 28], [0], [1])
    assert info.class_names == ("0", "1", "2")
    assert info.input_shape == (1, 28, 28) and info.mean == (0.0,) and info.std == (1.0,)
    assert info.training == {} and info.metrics == {} and info.dataset is None and info.source is None
    assert ModelInfo("a", 2, (1, 1, 1), (0,), (1,), class_names=["x", "y"]).class_names == ("x", "y")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(num_classes=0), ValueError, "num_classes"),
        (dict(num_classes=True), ValueError, "num_classes"),
        (dict(input_shape=(1, 28)), ValueError, "input_shape"),
        (dict(input_shape=(3, 28, 28)), ValueError, "one value per input channel"),
        (dict(class_names=("a",)), ValueError, "class_names"),
        (dict(class_names="ab"), TypeError, "class_names"),
        (dict(class_names=(1, 2)), TypeError, "class_names"),
        (dict(arch=""), TypeError, "arch"),
        (dict(dataset=5), TypeError, "dataset"),
        (dict(training=[1]), TypeError, "training"),
        (dict(std=(0.0,)), ValueError, "std"),
    ],
)
def test_model_info_validates(kwargs, error, match):
    base = dict(arch="a", num_classes=2, input_shape=(1, 28, 28), mean=(0.0,), std=(1.0,))
    with pytest.raises(error, match=match):
        ModelInfo(**{**base, **kwargs})


# --------------------------------------------------------------------------- #
# build_model and the registry
# --------------------------------------------------------------------------- #
def test_unknown_name_lists_the_registry():
    expected = r"unknown model architecture 'resnet18'.*'cifar_resnet18'.*torchvision"
    with pytest.raises(ValueError, match=expected):
        build_model("resnet18")


def test_build_model_options():
    model = build_model("small_cnn", class_names=("cat", "dog", "eel"), mean=(0.1307,), std=(0.3081,))
    assert model.info.num_classes == 3 and model.info.class_names == ("cat", "dog", "eel")
    assert model.model.classifier.fc3.out_features == 3
    assert model.info.mean == (0.1307,) and model.info.std == (0.3081,)
    assert torch.equal(model.normalizer.mean.flatten(), torch.tensor([0.1307]))
    flexible = build_model("cifar_resnet18", input_shape=(3, 64, 64)).eval()
    assert flexible.info.input_shape == (3, 64, 64)
    with torch.no_grad():
        assert flexible(torch.rand(1, 3, 64, 64)).shape == (1, 10)


@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        ("small_cnn", dict(num_classes=3, class_names=("a", "b")), "class_names"),
        ("small_cnn", dict(num_classes=0), "num_classes"),
        ("small_cnn", dict(num_classes=2.0), "num_classes"),
        ("small_cnn", dict(input_shape=(1, 32, 32)), "exactly"),
        ("small_cnn", dict(input_shape=(3, 28, 28)), "input channel"),
        ("cifar_resnet18", dict(mean=(0.5,)), "one value per"),
        ("cifar_resnet18", dict(std=(0.5, 0.5, 0.0)), "std"),
    ],
)
def test_build_model_rejects_inconsistent_options(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_model(name, **kwargs)


def test_build_model_type_checks():
    with pytest.raises(TypeError, match="str"):
        build_model(3)
    with pytest.raises(TypeError, match="class_names"):
        build_model("small_cnn", class_names="abc")


def test_register_model(registry_snapshot):
    spec = ArchSpec("probe_linear", tiny_linear, (1, 2, 2), 2, (0.5,), (0.5,), "toy", "linear probe")
    register_model(spec)
    model = build_model("probe_linear", num_classes=3)
    assert model.info.dataset == "toy" and model.info.num_classes == 3
    assert model(torch.rand(4, 1, 2, 2)).shape == (4, 3)
    with pytest.raises(ValueError, match="already registered"):
        register_model(spec)
    other = ArchSpec("probe_linear", tiny_linear, (1, 2, 2), 5, (0.0,), (1.0,), None, "other")
    register_model(other, replace=True)
    assert build_model("probe_linear").info.num_classes == 5
    with pytest.raises(ValueError, match="reserved"):
        register_model(ArchSpec("torchvision:x", tiny_linear, (1, 2, 2), 2, (0.0,), (1.0,), None, ""))
    with pytest.raises(TypeError, match="ArchSpec"):
        register_model({"name": "x"})


def test_arch_spec_validates():
    with pytest.raises(ValueError, match="one value per input channel"):
        ArchSpec("x", tiny_linear, (3, 2, 2), 2, (0.0,), (1.0,), None, "")
    with pytest.raises(TypeError, match="builder"):
        ArchSpec("x", None, (1, 2, 2), 2, (0.0,), (1.0,), None, "")
    spec = ArchSpec("x", tiny_linear, [1, 2, 2], 2, [0], [1], None, "")
    assert spec.input_shape == (1, 2, 2) and spec.mean == (0.0,) and spec.std == (1.0,)


def test_builder_must_return_a_module(registry_snapshot):
    register_model(ArchSpec("broken", lambda n: "not a module", (1, 2, 2), 2, (0.0,), (1.0,), None, ""))
    with pytest.raises(TypeError, match="not an nn.Module"):
        build_model("broken")


# --------------------------------------------------------------------------- #
# torchvision (optional)
# --------------------------------------------------------------------------- #
def test_torchvision_missing_says_it_is_optional(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    with pytest.raises(ImportError, match=r"optional.*pip install rai_probe\[vision\]"):
        build_model("torchvision:resnet18")


@pytest.fixture
def fake_torchvision(monkeypatch):
    """A stand-in ``torchvision.models`` exposing ``list_models`` / ``get_model``."""
    calls = []
    models = types.ModuleType("torchvision.models")

    def list_models(module=None):
        return ["resnet18", "vit_b_16"]

    def get_model(name, **config):
        calls.append((name, config))
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, config["num_classes"]))

    models.list_models = list_models
    models.get_model = get_model
    package = types.ModuleType("torchvision")
    package.models = models
    monkeypatch.setitem(sys.modules, "torchvision", package)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    return calls


def test_torchvision_models_by_name(fake_torchvision):
    model = build_model("torchvision:resnet18", num_classes=4).eval()
    assert fake_torchvision == [("resnet18", {"weights": None, "num_classes": 4})]  # nothing downloaded
    assert model.info.arch == "torchvision:resnet18" and model.info.input_shape == (3, 224, 224)
    assert model.info.mean == IMAGENET_MEAN and model.info.std == IMAGENET_STD
    assert model(torch.rand(2, 3, 8, 8)).shape == (2, 4)
    assert "torchvision:resnet18" not in MODELS
    assert get_arch_spec("torchvision:vit_b_16").num_classes == 1000
    with pytest.raises(ValueError, match=r"unknown torchvision model 'resnet9'.*resnet18"):
        build_model("torchvision:resnet9")


# --------------------------------------------------------------------------- #
# shipped weights
# --------------------------------------------------------------------------- #
def test_pretrained_names():
    assert DEFAULT_MODEL == "small_cnn_mnist5k_l2"
    assert PRETRAINED[DEFAULT_MODEL] == "small_cnn_mnist5k_l2.pt"
    expected = r"unknown pretrained model 'nope'; available: \['small_cnn_mnist5k_l2', 'small_cnn_mnist5k_standard'\]"
    with pytest.raises(ValueError, match=expected):
        pretrained_path("nope")


def test_pretrained_missing_file_names_the_path(monkeypatch, tmp_path):
    monkeypatch.setattr(pretrained_module, "_weights_dir", lambda: tmp_path)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "small_cnn_mnist5k_l2.pt")):
        pretrained_path()
    with pytest.raises(FileNotFoundError, match="package data"):
        load_pretrained()


def test_load_pretrained_reads_the_packaged_file(monkeypatch, tmp_path):
    torch.manual_seed(0)
    model = build_model("small_cnn").eval()
    save_checkpoint(model, tmp_path / "small_cnn_mnist5k_l2.pt", metrics={"clean_accuracy": 0.5})
    monkeypatch.setattr(pretrained_module, "_weights_dir", lambda: tmp_path)
    assert pretrained_path() == tmp_path / "small_cnn_mnist5k_l2.pt"
    loaded = load_pretrained()
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(loaded(x), model(x))
    assert loaded.info.source == "builtin:small_cnn_mnist5k_l2"
    assert loaded.info.metrics == {"clean_accuracy": 0.5} and not loaded.training


def test_weights_dir_is_inside_the_package():
    folder = pretrained_module._weights_dir()
    assert folder.name == "weights" and folder.parent.name == "models"
    assert (folder.parent / "pretrained.py").is_file()


def test_shipped_default_model():
    """The shipped robust model: present, small, fast to load, with its card's numbers recorded."""
    path = pretrained_module._weights_dir() / PRETRAINED[DEFAULT_MODEL]
    assert path.is_file(), f"the shipped weights file is missing: {path}"
    assert path.stat().st_size < 3 * 2**20  # "a few MB at most"
    model = load_pretrained()
    assert model.info.arch == "small_cnn" and model.info.num_classes == 10
    assert model.info.input_shape == (1, 28, 28) and model.info.dataset == "mnist5k"
    assert not model.training
    metrics = model.info.metrics
    assert metrics["clean_accuracy"] >= 0.95 and metrics["n"] == 1000
    assert set(metrics["robust_accuracy"]) >= {"l2_eps1_5", "l1_eps10"}
    assert model.info.training["attack"]["optimizer"] == "L2ProjectedOptim"
    with torch.no_grad():
        assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_shipped_default_model_reproduces_its_clean_accuracy():
    """The recorded accuracy is re-measured up to the predictions float rounding can flip.

    Logits differ in their last bits between CPUs (Intel / AMD kernels, batch
    sizes), so only an image whose two best logits are within rounding of each
    other may be classified differently here than when the metric was
    recorded: the count of correct images may differ by at most the number of
    such near ties (in practice zero), never more.
    """
    from rai_probe.data import load_mnist5k

    model = load_pretrained()
    test = load_mnist5k("test")
    with torch.no_grad():
        logits = model(test.images)
    top2 = logits.topk(2, dim=1).values
    near_ties = int(((top2[:, 0] - top2[:, 1]) <= 1e-3 * (1 + top2[:, 0].abs())).sum())
    correct = int((logits.argmax(1) == test.labels).sum())
    n = model.info.metrics["n"]
    assert n == len(test) == 1000
    recorded = round(model.info.metrics["clean_accuracy"] * n)
    assert abs(correct - recorded) <= near_ties
    assert near_ties <= 10  # a handful at most: the check above stays meaningful


def test_build_model_errors_name_the_setting():
    from rai_probe.errors import SettingError, SettingTypeError

    cases = [
        (lambda: build_model("resnet18"), SettingError, "arch", "resnet18"),
        (lambda: build_model(3), SettingTypeError, "arch", 3),
        (lambda: build_model("small_cnn", num_classes=0), SettingError, "num_classes", 0),
        (lambda: build_model("small_cnn", num_classes=2.0), SettingTypeError, "num_classes", 2.0),
        (lambda: build_model("small_cnn", class_names="ab"), SettingTypeError, "class_names", "ab"),
        (lambda: build_model("small_cnn", num_classes=3, class_names=("a",)), SettingError, "class_names", ("a",)),
        (lambda: build_model("small_cnn", input_shape=(1, 32, 32)), SettingError, "input_shape", (1, 32, 32)),
        (lambda: build_model("cifar_resnet18", mean=(0.5,)), SettingError, "mean", (0.5,)),
        (lambda: build_model("cifar_resnet18", std=(0.5, 0.5, 0.0)), SettingError, "std", (0.5, 0.5, 0.0)),
        (lambda: build_model("small_cnn", mean="0.5"), SettingTypeError, "mean", "0.5"),
        (lambda: pretrained_path("nope"), SettingError, "pretrained", "nope"),
        (lambda: load_pretrained("nope"), SettingError, "pretrained", "nope"),
    ]
    for call, error, setting, value in cases:
        with pytest.raises(error) as caught:
            call()
        assert isinstance(caught.value, ValueError)
        assert (caught.value.setting, caught.value.value) == (setting, value), caught.value

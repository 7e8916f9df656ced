"""ImageNet ResNet-50 whose ``state_dict`` keys match ``torchvision.models.resnet50``.

Written in plain torch (torchvision is optional), with the same module names
as torchvision, so torchvision, MadryLab and RobustBench ImageNet checkpoints
of a ResNet-50 load directly:

=============================  ============================================================
``state_dict`` prefix          module
=============================  ============================================================
``conv1``, ``bn1``             7x7 convolution, 64 channels, stride 2, no bias; batch norm
                               (then ReLU and a 3x3 max-pool with stride 2)
``layer1`` ... ``layer4``      3, 4, 6, 3 :class:`ImageNetBottleneck` of 64, 128, 256, 512
                               planes (strides 1, 2, 2, 2; the stride is on the 3x3
                               convolution, "ResNet v1.5")
``layerK.0.downsample.0/1``    1x1 convolution and batch norm of the first block's shortcut
``fc``                         fully connected layer ``2048 -> num_classes``
=============================  ============================================================

Features are globally average-pooled, so any input of at least 32 x 32 works;
the registry's nominal input is 3 x 224 x 224.

Examples
--------
>>> import torch
>>> net = ImageNetResNet((1, 1, 1, 1), num_classes=5)     # a small one
>>> net.eval()(torch.rand(1, 3, 64, 64)).shape
torch.Size([1, 5])
>>> "layer1.0.downsample.0.weight" in net.state_dict()
True
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from ..errors import SettingError

__all__ = ["ImageNetBottleneck", "ImageNetResNet", "imagenet_resnet50"]


class ImageNetBottleneck(nn.Module):
    """1x1, 3x3 (strided), 1x1 convolutions with batch norm; ``expansion = 4``.

    ``downsample`` (``Sequential(conv1x1, batch norm)``) projects the input when
    the stride or the number of channels changes, and is ``None`` otherwise.

    Examples
    --------
    >>> import torch
    >>> block = ImageNetBottleneck(256, 128, stride=2)
    >>> block(torch.rand(1, 256, 8, 8)).shape
    torch.Size([1, 512, 4, 4])
    """

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes),
            )
            if stride != 1 or in_planes != out_planes
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ImageNetResNet(nn.Module):
    """Bottleneck ResNet with the torchvision module names.

    Parameters
    ----------
    layers : sequence of 4 int
        Blocks per stage; ``(3, 4, 6, 3)`` is ResNet-50.
    num_classes : int, default 1000
    in_channels : int, default 3

    Examples
    --------
    >>> net = ImageNetResNet((1, 1, 1, 1))
    >>> net.fc
    Linear(in_features=2048, out_features=1000, bias=True)
    """

    def __init__(self, layers: Sequence[int], num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        if len(layers) != 4:
            raise SettingError(
                f"ImageNetResNet: `layers` must have 4 entries; got {layers!r}", setting="layers", value=layers
            )
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_planes = 64
        for index, (planes, stride, count) in enumerate(
            zip((64, 128, 256, 512), (1, 2, 2, 2), layers), start=1
        ):
            blocks = []
            for block_stride in [stride] + [1] * (count - 1):
                blocks.append(ImageNetBottleneck(in_planes, planes, block_stride))
                in_planes = planes * ImageNetBottleneck.expansion
            setattr(self, f"layer{index}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * ImageNetBottleneck.expansion, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        out = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.fc(self.avgpool(out).flatten(1))


def imagenet_resnet50(num_classes: int = 1000) -> ImageNetResNet:
    """ImageNet ResNet-50 (25.6 M parameters for 1000 classes), torchvision key layout.

    Examples
    --------
    >>> net = imagenet_resnet50(num_classes=10)
    >>> [len(net.layer1), len(net.layer2), len(net.layer3), len(net.layer4)]
    [3, 4, 6, 3]
    """
    return ImageNetResNet((3, 4, 6, 3), num_classes)

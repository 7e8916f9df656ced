"""CIFAR ResNets in the layout of the MadryLab ``robustness`` and RobustBench models.

The layout (often called the "kuangliu" CIFAR ResNet) differs from the
ImageNet ResNet: a 3x3 stem convolution with stride 1 and no max-pool, the
residual branch of a block named ``shortcut`` (empty, or a 1x1 convolution
plus batch norm), and the classifier named ``linear``:

=========================  =================================================================
``state_dict`` prefix      module
=========================  =================================================================
``conv1``, ``bn1``         3x3 convolution, 64 channels, stride 1, no bias; batch norm
``layer1`` ... ``layer4``  stages of 64, 128, 256, 512 planes (strides 1, 2, 2, 2) of
                           :class:`BasicBlock` (``conv1, bn1, conv2, bn2, shortcut``) or
                           :class:`Bottleneck` (``conv1..conv3, bn1..bn3, shortcut``,
                           expansion 4)
``layerK.I.shortcut.0/1``  1x1 convolution and batch norm, only where the block changes
                           the stride or the number of channels
``linear``                 fully connected layer ``512 * expansion -> num_classes``
=========================  =================================================================

The features are averaged over the final 4 x 4 map of a 32 x 32 input (global
average pooling, so other input sizes work too).

Examples
--------
>>> import torch
>>> net = cifar_resnet18(num_classes=10)
>>> "layer2.0.shortcut.0.weight" in net.state_dict(), "layer1.0.shortcut.0.weight" in net.state_dict()
(True, False)
>>> net.eval()(torch.rand(1, 3, 32, 32)).shape
torch.Size([1, 10])
"""

from __future__ import annotations

from typing import Sequence, Type, Union

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import SettingError

__all__ = ["BasicBlock", "Bottleneck", "CifarResNet", "cifar_resnet18", "cifar_resnet50"]


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """Identity (an empty ``Sequential``) or a strided 1x1 projection with batch norm."""
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a ``shortcut``; ``expansion = 1``.

    Examples
    --------
    >>> import torch
    >>> block = BasicBlock(64, 128, stride=2)
    >>> block(torch.rand(1, 64, 8, 8)).shape
    torch.Size([1, 128, 4, 4])
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1, 3x3 (strided), 1x1 convolutions with batch norm and a ``shortcut``; ``expansion = 4``.

    Examples
    --------
    >>> import torch
    >>> block = Bottleneck(64, 64)
    >>> block(torch.rand(1, 64, 8, 8)).shape
    torch.Size([1, 256, 8, 8])
    """

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


Block = Union[Type[BasicBlock], Type[Bottleneck]]


class CifarResNet(nn.Module):
    """A CIFAR ResNet: stem, four stages of ``block``, global average pool, ``linear``.

    Parameters
    ----------
    block : BasicBlock or Bottleneck
        The block class.
    num_blocks : sequence of 4 int
        Blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18, ``(3, 4, 6, 3)``
        for ResNet-50.
    num_classes : int, default 10
    in_channels : int, default 3

    Examples
    --------
    >>> import torch
    >>> net = CifarResNet(BasicBlock, (1, 1, 1, 1), num_classes=4)
    >>> net.eval()(torch.rand(2, 3, 32, 32)).shape
    torch.Size([2, 4])
    """

    def __init__(
        self,
        block: Block,
        num_blocks: Sequence[int],
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if len(num_blocks) != 4:
            raise SettingError(
                f"CifarResNet: `num_blocks` must have 4 entries; got {num_blocks!r}",
                setting="num_blocks",
                value=num_blocks,
            )
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        for index, (planes, stride, count) in enumerate(
            zip((64, 128, 256, 512), (1, 2, 2, 2), num_blocks), start=1
        ):
            blocks = []
            for block_stride in [stride] + [1] * (count - 1):
                blocks.append(block(in_planes, planes, block_stride))
                in_planes = planes * block.expansion
            setattr(self, f"layer{index}", nn.Sequential(*blocks))
        self.linear = nn.Linear(512 * block.expansion, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def cifar_resnet18(num_classes: int = 10) -> CifarResNet:
    """CIFAR ResNet-18: :class:`BasicBlock` stages of 2, 2, 2, 2 blocks (11.2 M parameters).

    Examples
    --------
    >>> sum(p.numel() for p in cifar_resnet18().parameters())
    11173962
    """
    return CifarResNet(BasicBlock, (2, 2, 2, 2), num_classes)


def cifar_resnet50(num_classes: int = 10) -> CifarResNet:
    """CIFAR ResNet-50: :class:`Bottleneck` stages of 3, 4, 6, 3 blocks (23.5 M parameters).

    Examples
    --------
    >>> net = cifar_resnet50(num_classes=100)
    >>> net.linear
    Linear(in_features=2048, out_features=100, bias=True)
    """
    return CifarResNet(Bottleneck, (3, 4, 6, 3), num_classes)

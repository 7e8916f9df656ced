"""WideResNet in the layout of the RobustBench CIFAR models (pre-activation blocks).

=====================================  =======================================================
``state_dict`` prefix                  module
=====================================  =======================================================
``conv1``                              3x3 convolution, 16 channels, stride 1, no bias
``block1``, ``block2``, ``block3``     :class:`NetworkBlock` stages of ``16 k``, ``32 k``,
                                       ``64 k`` channels (strides 1, 2, 2); each holds its
                                       blocks in ``.layer`` (a ``Sequential``)
``blockS.layer.I.bn1/conv1/bn2/conv2`` a pre-activation :class:`WideBasicBlock`
``blockS.layer.I.convShortcut``        1x1 convolution on the pre-activated input, only where
                                       the number of channels changes (the first block)
``bn1``, ``fc``                        final batch norm (then ReLU, global average pool) and
                                       fully connected layer ``64 k -> num_classes``
=====================================  =======================================================

A WideResNet-``depth``-``k`` has ``(depth - 4) / 6`` blocks per stage;
WideResNet-28-10 has 4 blocks per stage and widths 16, 160, 320, 640
(36.5 M parameters).

Some released checkpoints also hold ``sub_block1.*`` weights: a copy of the
first stage that the network's ``forward`` never uses. This module does not
create it; :func:`~rai_probe.models.load_checkpoint` drops those keys for
``wrn28_10`` (the registry lists ``sub_block1.`` in the spec's
``ignored_keys``) instead of reporting them as unexpected.

Examples
--------
>>> import torch
>>> net = WideResNet(depth=10, widen_factor=1, num_classes=3)   # a small one
>>> net.eval()(torch.rand(1, 3, 32, 32)).shape
torch.Size([1, 3])
>>> "block1.layer.0.convShortcut.weight" in net.state_dict()
False
>>> "block2.layer.0.convShortcut.weight" in net.state_dict()
True
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import SettingError

__all__ = ["WideBasicBlock", "NetworkBlock", "WideResNet", "wide_resnet28_10"]


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3, BN-ReLU-conv3x3, plus a (projected) shortcut.

    When the number of channels changes, the shortcut is ``convShortcut``
    applied to the *pre-activated* input; otherwise it is the identity on the
    raw input.

    Parameters
    ----------
    in_planes, out_planes : int
    stride : int
    drop_rate : float, default 0.0
        Dropout between the two convolutions (training only).

    Examples
    --------
    >>> import torch
    >>> block = WideBasicBlock(16, 32, stride=2)
    >>> block(torch.rand(1, 16, 8, 8)).shape
    torch.Size([1, 32, 4, 4])
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = (
            None
            if self.equal_in_out
            else nn.Conv2d(in_planes, out_planes, 1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        activated = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(activated)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        shortcut = x if self.convShortcut is None else self.convShortcut(activated)
        return shortcut + out


class NetworkBlock(nn.Module):
    """A stage of ``num_layers`` :class:`WideBasicBlock` in ``.layer``; the first one strides.

    Examples
    --------
    >>> stage = NetworkBlock(2, 16, 32, stride=2)
    >>> len(stage.layer), stage.layer[0].convShortcut is not None, stage.layer[1].convShortcut
    (2, True, None)
    """

    def __init__(
        self, num_layers: int, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(
                WideBasicBlock(
                    in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate
                )
                for i in range(num_layers)
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WideResNet-``depth``-``widen_factor`` for 32 x 32 images.

    Parameters
    ----------
    depth : int, default 28
        ``depth - 4`` must be a positive multiple of 6.
    widen_factor : int, default 10
    num_classes : int, default 10
    drop_rate : float, default 0.0
    in_channels : int, default 3

    Examples
    --------
    >>> net = WideResNet(depth=16, widen_factor=2)
    >>> len(net.block1.layer), net.fc.in_features
    (2, 128)
    """

    def __init__(
        self,
        depth: int = 28,
        widen_factor: int = 10,
        num_classes: int = 10,
        drop_rate: float = 0.0,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise SettingError(
                f"WideResNet: `depth` - 4 must be a positive multiple of 6 (10, 16, 22, 28, ...); "
                f"got depth={depth!r}",
                setting="depth",
                value=depth,
            )
        n = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(widths[3], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def wide_resnet28_10(num_classes: int = 10) -> WideResNet:
    """WideResNet-28-10 (widths 16, 160, 320, 640; 36.5 M parameters).

    Examples
    --------
    >>> net = wide_resnet28_10(num_classes=100)
    >>> [len(net.block1.layer), net.block1.layer[0].conv1.out_channels, net.fc.in_features]
    [4, 160, 640]
    >>> net.fc
    Linear(in_features=640, out_features=100, bias=True)
    """
    return WideResNet(28, 10, num_classes)

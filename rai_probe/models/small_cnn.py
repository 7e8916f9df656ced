"""Two classic convolutional nets for 1 x 28 x 28 images (MNIST-like data).

=====================  ==========================================================  ==========
class                  layers                                                       parameters
=====================  ==========================================================  ==========
:class:`SmallCNN`      conv 32 3x3, conv 32 3x3, max-pool, conv 64 3x3, conv 64     312,202
                       3x3, max-pool, fc 1024->200, fc 200->200, fc 200->classes
:class:`MadryMnistCNN` conv 32 5x5 "same", max-pool, conv 64 5x5 "same",            3,274,634
                       max-pool, fc 3136->1024, fc 1024->classes
=====================  ==========================================================  ==========

(parameter counts for 10 classes). Both use ReLU activations, take raw
``[0, 1]`` pixels (the registry pairs them with the identity normalization
``mean=(0,)``, ``std=(1,)``) and expect exactly 28 x 28 inputs.

:class:`SmallCNN` is the network of the TRADES paper's MNIST experiments; its
``state_dict`` keys follow that layout (``feature_extractor.conv1.weight``,
..., ``classifier.fc3.bias``), so checkpoints of that layout load directly.
:class:`MadryMnistCNN` is the network of the MadryLab MNIST challenge
(keys ``conv1``, ``conv2``, ``fc1``, ``fc2``).

Examples
--------
>>> import torch
>>> net = SmallCNN(num_classes=10)
>>> net(torch.rand(2, 1, 28, 28)).shape
torch.Size([2, 10])
>>> sum(p.numel() for p in net.parameters())
312202
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from ..errors import SettingError

__all__ = ["SmallCNN", "MadryMnistCNN"]


class SmallCNN(nn.Module):
    """The TRADES-style small CNN for 1 x 28 x 28 inputs.

    Parameters
    ----------
    num_classes : int, default 10
    dropout : float, default 0.5
        Dropout probability between the first two fully connected layers (as in
        TRADES); it has no parameters, so it does not change the ``state_dict``.

    Examples
    --------
    >>> import torch
    >>> net = SmallCNN(num_classes=3, dropout=0.0)
    >>> [k for k in net.state_dict() if k.endswith("weight")]   # doctest: +NORMALIZE_WHITESPACE
    ['feature_extractor.conv1.weight', 'feature_extractor.conv2.weight',
     'feature_extractor.conv3.weight', 'feature_extractor.conv4.weight',
     'classifier.fc1.weight', 'classifier.fc2.weight', 'classifier.fc3.weight']
    >>> net(torch.rand(1, 1, 28, 28)).shape
    torch.Size([1, 3])
    """

    def __init__(self, num_classes: int = 10, dropout: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise SettingError(
                f"SmallCNN: `dropout` must be in [0, 1); got {dropout!r}", setting="dropout", value=dropout
            )
        self.feature_extractor = nn.Sequential(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(1, 32, 3)),
                    ("relu1", nn.ReLU()),
                    ("conv2", nn.Conv2d(32, 32, 3)),
                    ("relu2", nn.ReLU()),
                    ("maxpool1", nn.MaxPool2d(2, 2)),
                    ("conv3", nn.Conv2d(32, 64, 3)),
                    ("relu3", nn.ReLU()),
                    ("conv4", nn.Conv2d(64, 64, 3)),
                    ("relu4", nn.ReLU()),
                    ("maxpool2", nn.MaxPool2d(2, 2)),
                ]
            )
        )
        self.classifier = nn.Sequential(
            OrderedDict(
                [
                    ("fc1", nn.Linear(64 * 4 * 4, 200)),
                    ("relu1", nn.ReLU()),
                    ("drop", nn.Dropout(dropout)),
                    ("fc2", nn.Linear(200, 200)),
                    ("relu2", nn.ReLU()),
                    ("fc3", nn.Linear(200, num_classes)),
                ]
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.feature_extractor(x).flatten(1))


class MadryMnistCNN(nn.Module):
    """The MadryLab MNIST-challenge CNN for 1 x 28 x 28 inputs.

    Parameters
    ----------
    num_classes : int, default 10

    Examples
    --------
    >>> import torch
    >>> net = MadryMnistCNN()
    >>> list(net.state_dict())   # doctest: +NORMALIZE_WHITESPACE
    ['conv1.weight', 'conv1.bias', 'conv2.weight', 'conv2.bias',
     'fc1.weight', 'fc1.bias', 'fc2.weight', 'fc2.bias']
    >>> net(torch.rand(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
        self.pool = nn.MaxPool2d(2, 2)
        self.relu = nn.ReLU()
        self.fc1 = nn.Linear(7 * 7 * 64, 1024)
        self.fc2 = nn.Linear(1024, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        return self.fc2(self.relu(self.fc1(x.flatten(1))))

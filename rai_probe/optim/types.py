"""Type aliases shared by the modules of :mod:`rai_probe.optim`.

Examples
--------
>>> import torch
>>> from rai_probe.optim.types import Radius
>>> def describe(epsilon: Radius) -> str:
...     return "per row" if isinstance(epsilon, torch.Tensor) else "one for all rows"
>>> describe(1.0), describe(torch.tensor([1.0, 2.0]))
('one for all rows', 'per row')
"""

from __future__ import annotations

import functools
from typing import Any, Iterable, Mapping, Union

from torch import Tensor
from torch.optim import Optimizer

__all__ = ["Radius", "Params", "InnerOptimizer"]

#: ``epsilon`` may be one radius for all rows or a tensor of shape ``(N,)``.
Radius = Union[float, Tensor]

#: What an optimizer's ``params`` may be: tensors, param-group dicts, or None
#: (when ``InnerOpt`` is an already-built optimizer).
Params = Union[Iterable[Tensor], Iterable[Mapping[str, Any]], None]

#: What ``InnerOpt`` may be: an optimizer class, a partial of one, or an instance.
InnerOptimizer = Union[type[Optimizer], functools.partial, Optimizer]

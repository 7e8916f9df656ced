"""The ε-ball (and optional box) constraint shared by the projected and Frank-Wolfe families."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..errors import SettingError
from . import options as opt
from .param_transforming import ParamTransformingOptimizer, rows_shape

__all__ = ["BallConstrained", "bound_rows"]


def bound_rows(bound: Tensor | float, rows: Tensor) -> Tensor:
    """A box bound (number or parameter-shaped tensor) as a tensor laid out like ``rows``.

    Examples
    --------
    >>> import torch
    >>> bound_rows(torch.arange(6.0).view(2, 3), torch.zeros(6, 1)).shape
    torch.Size([6, 1])
    >>> bound_rows(0.5, torch.zeros(6, 1))
    tensor(0.5000)
    """
    bound = torch.as_tensor(bound, dtype=rows.dtype, device=rows.device)
    return bound.reshape(rows.shape) if bound.numel() > 1 else bound.reshape(())


class BallConstrained(ParamTransformingOptimizer):
    """Options ``epsilon`` (a radius per group, or one per row) and ``bounds`` (a box).

    ``epsilon`` is a float, or a 1-D tensor with one radius per row of every
    parameter in the group (rows as given by ``param_ndim``: one per datum by
    default). ``bounds=(lower, upper)`` constrains the parameter to a box
    containing 0, e.g. ``(0 - x, 1 - x)`` so that ``x + delta`` stays a valid
    image; each side is a number or a tensor with the parameter's shape (the
    group's parameters must then share that shape).
    """

    _options = {"epsilon": opt.radius, "bounds": opt.bounds}

    def _prepare_group(self, group: dict[str, Any], where: str) -> None:
        super()._prepare_group(group, where)
        epsilon, box = group["epsilon"], group["bounds"]
        for index, param in enumerate(group["params"]):
            n_rows = rows_shape(param.shape, group["param_ndim"])[0]
            if isinstance(epsilon, Tensor) and epsilon.numel() != n_rows:
                raise SettingError(
                    f"{where}: option `epsilon` must be a float or hold one radius per row; "
                    f"parameter {index} of shape {tuple(param.shape)} has {n_rows} rows with "
                    f"param_ndim={group['param_ndim']}, got epsilon of shape {tuple(epsilon.shape)}",
                    setting="epsilon",
                    value=epsilon,
                )
            for side in box or ():
                if isinstance(side, Tensor) and side.numel() not in (1, param.numel()):
                    raise SettingError(
                        f"{where}: option `bounds` must hold numbers or tensors with the "
                        f"parameter's {param.numel()} elements; parameter {index} has shape "
                        f"{tuple(param.shape)}, got a bound of shape {tuple(side.shape)}",
                        setting="bounds",
                        value=box,
                    )

"""Rows: how :mod:`rai_probe.optim` sees a tensor, and the helpers its modules share for them.

Every transform of the package acts on a tensor of shape ``(N, d0, ...)``
row by row: :func:`rows_shape` says which shape ``param_ndim`` gives a
parameter, :class:`Rows` views a parameter and its gradient that way, and the
functions below check rows, broadcast one value per row against them, and run
an in-place kernel on their flat ``(N, n)`` view.

Examples
--------
>>> import torch
>>> from rai_probe.optim.rows import per_row, rows_shape
>>> rows_shape((3, 5, 2), -1)
(3, 5, 2)
>>> x = torch.ones(2, 3)
>>> x * per_row(torch.tensor([1.0, 2.0]), x)
tensor([[1., 1., 1.],
        [2., 2., 2.]])
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from ..errors import SettingError, SettingTypeError
from .types import Radius

__all__ = [
    "HALF_DTYPES",
    "compute_dtype",
    "per_row",
    "per_row_radius",
    "check_rows",
    "flat_shape",
    "row_size",
    "inplace_on_flat_rows",
    "rows_shape",
    "Rows",
]

#: Half-precision dtypes: their reductions are computed in float32.
HALF_DTYPES = (torch.float16, torch.bfloat16)


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype reductions of ``x`` are computed in (float32 for half types).

    Examples
    --------
    >>> compute_dtype(torch.zeros(1, dtype=torch.bfloat16)), compute_dtype(torch.zeros(1))
    (torch.float32, torch.float32)
    >>> compute_dtype(torch.zeros(1, dtype=torch.float64))
    torch.float64
    """
    return torch.float32 if x.dtype in HALF_DTYPES else x.dtype


def per_row(values: Tensor, x: Tensor) -> Tensor:
    """Reshape per-row ``values`` of shape ``(N,)`` to broadcast against ``x``.

    Examples
    --------
    >>> per_row(torch.tensor([1.0, 2.0]), torch.zeros(2, 3, 4)).shape
    torch.Size([2, 1, 1])
    """
    return values.reshape(x.shape[0], *([1] * (x.ndim - 1)))


def per_row_radius(epsilon: Radius, x: Tensor) -> Radius:
    """``epsilon`` as a scalar or as a per-row tensor broadcasting against ``x``.

    A tensor is moved to ``x``'s device and :func:`compute_dtype`.

    Examples
    --------
    >>> per_row_radius(2.0, torch.zeros(3, 4))
    2.0
    >>> per_row_radius(torch.tensor([1.0, 2.0, 3.0]), torch.zeros(3, 4)).shape
    torch.Size([3, 1])
    """
    if isinstance(epsilon, Tensor):
        return per_row(epsilon.to(device=x.device, dtype=compute_dtype(x)), x)
    return epsilon


def check_rows(x: Tensor, name: str = "x") -> None:
    """Refuse anything but a floating-point tensor with a leading row dimension.

    Raises
    ------
    SettingTypeError
        ``x`` is not a tensor, or not floating-point.
    SettingError
        ``x`` is 0-d.

    Examples
    --------
    >>> check_rows(torch.zeros(2, 3))  # fine: returns None
    >>> check_rows(torch.tensor(1.0), name="grad")
    Traceback (most recent call last):
    ...
    rai_probe.errors.SettingError: `grad` must have a leading row dimension, shape (N, ...); got a 0-d tensor
    """
    if not isinstance(x, Tensor):
        raise SettingTypeError(
            f"`{name}` must be a torch.Tensor; got {type(x).__name__}", setting=name, value=x
        )
    if x.ndim < 1:
        raise SettingError(
            f"`{name}` must have a leading row dimension, shape (N, ...); got a 0-d tensor",
            setting=name,
            value=x,
        )
    if not x.is_floating_point():
        raise SettingTypeError(
            f"`{name}` must be a floating-point tensor; got dtype {x.dtype}", setting=name, value=x
        )


def flat_shape(x: Tensor) -> tuple[int, int]:
    """``(N, n)``: the rows of ``x`` flattened, spelled out so that empty tensors reshape too.

    (``view(N, -1)`` is ambiguous for a tensor with no elements.)

    Examples
    --------
    >>> flat_shape(torch.zeros(2, 3, 4)), flat_shape(torch.zeros(0, 5))
    ((2, 12), (0, 5))
    """
    return x.shape[0], math.prod(x.shape[1:])


def row_size(x: Tensor) -> int:
    """Entries per row of ``x`` (also when ``x`` has no rows).

    Examples
    --------
    >>> row_size(torch.zeros(0, 3, 4))
    12
    """
    return math.prod(x.shape[1:])


def inplace_on_flat_rows(x: Tensor, fn: Callable[[Tensor], None]) -> Tensor:
    """Run ``fn`` on a contiguous ``(N, n)`` view of ``x`` and make its writes land in ``x``.

    ``fn`` is not called when ``x`` has no elements: there is nothing to transform.

    Returns
    -------
    Tensor
        ``x``.

    Examples
    --------
    >>> x = torch.arange(6.0).view(2, 3).t()  # not contiguous
    >>> inplace_on_flat_rows(x, lambda rows: rows.mul_(10))
    tensor([[ 0., 30.],
            [10., 40.],
            [20., 50.]])
    """
    check_rows(x)
    if x.numel() == 0:
        return x
    if x.is_contiguous():
        fn(x.view(flat_shape(x)))
        return x
    work = x.contiguous()
    fn(work.view(flat_shape(x)))
    return x.copy_(work)


def rows_shape(shape: torch.Size | tuple[int, ...], param_ndim: int | None) -> tuple[int, ...]:
    """The ``(N, d0, ...)`` shape that ``param_ndim`` gives a tensor of ``shape``.

    Parameters
    ----------
    shape : tuple of int
        Shape of the parameter.
    param_ndim : int or None
        ``None``: the whole tensor is one row. ``0``: every element is its own
        row. ``m > 0``: rows are the trailing ``m`` dimensions. ``m < 0``: rows
        drop ``|m|`` leading dimensions. A 0-d tensor is always one row of one
        element.

    Returns
    -------
    tuple of int

    Examples
    --------
    >>> [rows_shape((3, 5, 2), nd) for nd in (0, 1, -1, None)]
    [(30, 1), (15, 2), (3, 5, 2), (1, 3, 5, 2)]
    >>> rows_shape((), -1)
    (1, 1)
    """
    ndim = len(shape)
    if ndim == 0:
        return (1, 1)
    if param_ndim is None:
        return (1, *shape)
    kept = param_ndim + ndim if param_ndim < 0 else param_ndim
    if kept == 0:
        return (math.prod(shape), 1)
    return (math.prod(shape[: ndim - kept]), *shape[ndim - kept :])


class Rows:
    """A parameter (and its gradient) seen as contiguous ``(N, d0, ...)`` rows.

    Writes to the rows land in the parameter: contiguous tensors are viewed,
    others are transformed as a contiguous copy that :meth:`write_back` copies
    back.

    Parameters
    ----------
    param : Tensor
        The parameter; its ``.grad``, if any, is viewed the same way (as
        ``rows.grad``). A sparse gradient is refused (``TypeError``).
    param_ndim : int or None
        As for :func:`rows_shape`.

    Examples
    --------
    >>> p = torch.zeros(2, 3).t()  # not contiguous: transformed as a copy
    >>> p.grad = torch.ones(3, 2)
    >>> view = Rows(p, param_ndim=0)
    >>> view.rows.shape
    torch.Size([6, 1])
    >>> _ = view.rows.add_(view.rows.grad)
    >>> view.write_back(Rows.write_back)
    >>> p
    tensor([[1., 1.],
            [1., 1.],
            [1., 1.]])
    """

    __slots__ = ("param", "rows", "grad_rows", "_param_copied", "_grad_copied")

    def __init__(self, param: Tensor, param_ndim: int | None) -> None:
        shape = rows_shape(param.shape, param_ndim)
        self.param = param
        self.rows, self._param_copied = self._view(param.detach(), shape)
        self.grad_rows = None
        self._grad_copied = False
        if param.grad is not None:
            if param.grad.is_sparse:
                raise TypeError(
                    "parameter-transforming optimizers need dense gradients; got a sparse "
                    f"gradient for a parameter of shape {tuple(param.shape)}"
                )
            self.grad_rows, self._grad_copied = self._view(param.grad, shape)
            self.rows.grad = self.grad_rows

    @staticmethod
    def _view(t: Tensor, shape: tuple[int, ...]) -> tuple[Tensor, bool]:
        if t.is_contiguous():
            return t.view(shape), False
        return t.contiguous().view(shape), True

    def write_back(self, method: Callable) -> None:
        """Copy the rows (and gradient rows) back where they are a copy.

        ``method`` is the transform that ran, named in the error raised when
        it rebound ``rows.grad`` instead of modifying it in place.
        """
        if self.rows.grad is not self.grad_rows:
            raise RuntimeError(
                f"{method.__qualname__} rebound `param.grad`; transforms must modify the "
                "gradient in place (e.g. `param.grad.mul_(...)` or "
                "`torch.sign(param.grad, out=param.grad)`)"
            )
        if self._param_copied:
            self.param.detach().copy_(self.rows.view(self.param.shape))
        if self._grad_copied:
            self.param.grad.copy_(self.grad_rows.view(self.param.shape))

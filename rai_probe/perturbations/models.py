"""Perturbation models: the trainable part of an attack.

A perturbation model is anything that maps data to perturbed data and exposes
the tensors an optimizer should update through ``parameters()``; every
:class:`torch.nn.Module` with a ``forward(data)`` qualifies
(:class:`PerturbationModel`). :class:`AdditivePerturbation` is the usual one,
``data + delta``, with ``delta`` shaped either like the whole batch (one
perturbation per datum) or like one datum (a universal perturbation shared by
the whole batch, ``delta_ndim=-1``).

Examples
--------
>>> import torch
>>> from rai_probe.perturbations import AdditivePerturbation, PerturbationModel
>>> batch = torch.zeros(8, 3, 32, 32)
>>> per_datum = AdditivePerturbation(batch)
>>> universal = AdditivePerturbation(batch, delta_ndim=-1)
>>> per_datum.delta.shape, universal.delta.shape
(torch.Size([8, 3, 32, 32]), torch.Size([3, 32, 32]))
>>> universal(batch).shape, isinstance(universal, PerturbationModel)
(torch.Size([8, 3, 32, 32]), True)
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, Iterator, Protocol, Sequence, Union, runtime_checkable

import torch
from torch import Tensor, nn

from ..errors import SettingError, SettingTypeError

__all__ = ["PerturbationModel", "AdditivePerturbation"]

#: A tensor whose shape (and device, dtype) a perturbation copies, or a shape.
DataOrShape = Union[Tensor, torch.Size, Sequence[int]]


@runtime_checkable
class PerturbationModel(Protocol):
    """What a solver needs from a perturbation model.

    A perturbation model is called on a batch of data and returns the perturbed
    batch; the tensors that define the perturbation are its ``parameters()``,
    which the solver hands to the optimizer. Any :class:`torch.nn.Module`
    whose ``forward`` takes the data satisfies the protocol, and
    ``isinstance(obj, PerturbationModel)`` checks that both methods exist
    (not their signatures).

    Examples
    --------
    A multiplicative perturbation, ``data * (1 + delta)``, as a plain module:

    >>> import torch
    >>> class Multiplicative(torch.nn.Module):
    ...     def __init__(self, data):
    ...         super().__init__()
    ...         self.delta = torch.nn.Parameter(torch.zeros_like(data))
    ...     def forward(self, data):
    ...         return data * (1 + self.delta)
    >>> isinstance(Multiplicative(torch.ones(2)), PerturbationModel)
    True
    >>> isinstance(lambda data: data, PerturbationModel)   # no parameters()
    False
    """

    def __call__(self, data: Tensor) -> Tensor:
        """The perturbed data."""
        ...

    def parameters(self, recurse: bool = True) -> Iterator[Tensor]:
        """The tensors the optimizer updates."""
        ...


def _delta_shape(shape: tuple[int, ...], delta_ndim: Any) -> tuple[int, ...]:
    """The trailing dimensions of ``shape`` that ``delta_ndim`` keeps."""
    if delta_ndim is None:
        return shape
    if not isinstance(delta_ndim, numbers.Integral) or isinstance(delta_ndim, bool):
        raise SettingTypeError(
            f"AdditivePerturbation: `delta_ndim` must be None or an integer; "
            f"got {type(delta_ndim).__name__} {delta_ndim!r}",
            setting="delta_ndim",
        )
    ndim, delta_ndim = len(shape), int(delta_ndim)
    if abs(delta_ndim) > ndim:
        raise SettingError(
            f"AdditivePerturbation: `delta_ndim` must be None or an integer within "
            f"[-{ndim}, {ndim}] for data of shape {shape}; got delta_ndim={delta_ndim}",
            setting="delta_ndim",
        )
    kept = delta_ndim if delta_ndim >= 0 else ndim + delta_ndim
    return shape[ndim - kept :]


def _data_layout(
    data_or_shape: DataOrShape, device: Any, dtype: torch.dtype | None
) -> tuple[tuple[int, ...], torch.device | None, torch.dtype]:
    """``(shape, device, dtype)`` of the perturbation, from the data and the overrides."""
    if isinstance(data_or_shape, Tensor):
        shape = tuple(data_or_shape.shape)
        if device is None:
            device = data_or_shape.device
        if dtype is None and (data_or_shape.is_floating_point() or data_or_shape.is_complex()):
            dtype = data_or_shape.dtype
    else:
        if isinstance(data_or_shape, (str, bytes)) or not isinstance(data_or_shape, Sequence):
            raise SettingTypeError(
                "AdditivePerturbation: `data_or_shape` must be a tensor or a shape (a "
                f"sequence of ints); got {type(data_or_shape).__name__}",
                setting="data_or_shape",
            )
        if not all(
            isinstance(d, numbers.Integral) and not isinstance(d, bool) and d >= 0
            for d in data_or_shape
        ):
            raise SettingError(
                "AdditivePerturbation: `data_or_shape`, given as a shape, must hold "
                f"non-negative ints; got {tuple(data_or_shape)!r}",
                setting="data_or_shape",
            )
        shape = tuple(int(d) for d in data_or_shape)
    if dtype is None:
        dtype = torch.get_default_dtype()
    elif not isinstance(dtype, torch.dtype) or not (dtype.is_floating_point or dtype.is_complex):
        raise SettingTypeError(
            f"AdditivePerturbation: `dtype` must be a floating-point torch.dtype (delta is "
            f"trained by gradients); got {dtype!r}",
            setting="dtype",
        )
    return shape, device, dtype


def _shares_storage(a: Tensor, b: Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


class AdditivePerturbation(nn.Module):
    """Additive perturbation ``data + delta``, with ``delta`` a trainable parameter.

    Parameters
    ----------
    data_or_shape : Tensor or tuple of int
        The data to perturb, or its shape. From a tensor, ``delta`` takes the
        shape, the device and, for floating-point data, the dtype (integer or
        boolean data gives the default float dtype); ``device`` and ``dtype``
        override them.
    init_fn : Callable[[Tensor], Any], optional
        Initializes ``delta`` in place: called once as
        ``init_fn(delta, **init_fn_kwargs)`` under ``torch.no_grad()``, after
        ``delta`` is created as zeros. Without it ``delta`` stays zero. The
        initializers of :mod:`rai_probe.perturbations` (e.g.
        ``uniform_like_l1_n_ball_``) and ``torch.nn.init`` functions fit.
    device : torch.device, optional
        Device of ``delta`` (default: the data's, else torch's default).
    dtype : torch.dtype, optional
        Floating-point dtype of ``delta`` (default: see ``data_or_shape``).
    delta_ndim : int | None, optional (default=None)
        Which trailing dimensions of the data ``delta`` spans; ``delta``
        broadcasts over the others. ``None``: the whole shape (one perturbation
        per datum). ``m >= 0``: the trailing ``m`` dims (``0`` gives a scalar).
        ``m < 0``: drop ``|m|`` leading dims (``-1`` on a batch gives one
        universal perturbation shared by every datum).
    **init_fn_kwargs
        Keyword arguments for ``init_fn`` (e.g. ``epsilon``, ``generator``).

    Raises
    ------
    TypeError
        ``init_fn`` is not callable, or keyword arguments are given without
        ``init_fn``, or ``init_fn`` returns a new tensor instead of filling
        ``delta`` in place; ``dtype`` is not floating point; ``delta_ndim`` is
        not None or an integer.
    ValueError
        ``|delta_ndim|`` exceeds the number of dimensions of the data.

    Notes
    -----
    **Per-datum or universal.** With the default ``delta_ndim=None`` and a
    batch of shape ``(N, C, H, W)``, ``delta`` has shape ``(N, C, H, W)``:
    each datum gets its own perturbation. Pair it with an optimizer and an
    initializer using ``param_ndim=-1`` (their default), so each datum has its
    own ε-ball. With ``delta_ndim=-1``, ``delta`` has shape ``(C, H, W)`` and
    the same perturbation is added to every datum; that whole tensor is then
    one ε-ball, so pass ``param_ndim=None`` to the initializer and the
    optimizer (with ``-1`` they would treat each of the ``C`` channels as a
    separate ball).

    Examples
    --------
    One perturbation per image, each drawn uniformly from its own L1 ball:

    >>> import torch
    >>> from rai_probe.perturbations import AdditivePerturbation, uniform_like_l1_n_ball_
    >>> images = torch.rand(4, 1, 28, 28)
    >>> gen = torch.Generator().manual_seed(0)
    >>> pert = AdditivePerturbation(images, uniform_like_l1_n_ball_, epsilon=10.0, generator=gen)
    >>> pert.delta.shape
    torch.Size([4, 1, 28, 28])
    >>> l1 = pert.delta.detach().flatten(1).abs().sum(dim=1)
    >>> bool((l1 <= 10.0 + 1e-4).all())
    True
    >>> torch.equal(pert(images), images + pert.delta)
    True

    A universal perturbation, one L2 ball for the whole tensor:

    >>> from rai_probe.perturbations import uniform_like_l2_n_ball_
    >>> universal = AdditivePerturbation(
    ...     images, uniform_like_l2_n_ball_, delta_ndim=-1, epsilon=2.0, param_ndim=None)
    >>> universal.delta.shape, bool(universal.delta.norm() <= 2.0 + 1e-5)
    (torch.Size([1, 28, 28]), True)
    >>> torch.equal(universal(images)[3], images[3] + universal.delta)   # same delta for every image
    True

    Integer data gives a float perturbation; a shape works too:

    >>> AdditivePerturbation(torch.zeros(2, 3, dtype=torch.uint8)).delta.dtype
    torch.float32
    >>> AdditivePerturbation((5, 2), delta_ndim=0).delta
    Parameter containing:
    tensor(0., requires_grad=True)
    >>> AdditivePerturbation((5, 2), epsilon=1.0)
    Traceback (most recent call last):
    ...
    rai_probe.errors.SettingTypeError: AdditivePerturbation: keyword arguments ['epsilon'] are for `init_fn`, but no init_fn was given
    """

    delta: nn.Parameter

    def __init__(
        self,
        data_or_shape: DataOrShape,
        init_fn: Callable[..., Any] | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        delta_ndim: int | None = None,
        **init_fn_kwargs: Any,
    ) -> None:
        super().__init__()
        if init_fn is None and init_fn_kwargs:
            raise SettingTypeError(
                f"AdditivePerturbation: keyword arguments {sorted(init_fn_kwargs)} are for "
                "`init_fn`, but no init_fn was given",
                setting="init_fn",
            )
        if init_fn is not None and not callable(init_fn):
            raise SettingTypeError(
                f"AdditivePerturbation: `init_fn` must be callable; got {type(init_fn).__name__}",
                setting="init_fn",
            )
        shape, device, dtype = _data_layout(data_or_shape, device, dtype)
        shape = _delta_shape(shape, delta_ndim)
        self.delta = nn.Parameter(torch.zeros(shape, device=device, dtype=dtype))
        if init_fn is not None:
            with torch.no_grad():
                result = init_fn(self.delta, **init_fn_kwargs)
            if isinstance(result, Tensor) and not _shares_storage(result, self.delta):
                raise SettingTypeError(
                    f"AdditivePerturbation: `init_fn` must fill `delta` in place; "
                    f"{getattr(init_fn, '__name__', repr(init_fn))} returned a new tensor "
                    "(use an in-place initializer, e.g. `uniform_like_l2_n_ball_` or "
                    "`torch.nn.init.normal_`)",
                    setting="init_fn",
                )

    def forward(self, data: Tensor) -> Tensor:
        """``data + delta`` (``delta`` broadcasts over the dims it does not span)."""
        return data + self.delta

    def extra_repr(self) -> str:
        return f"delta: shape={tuple(self.delta.shape)}, dtype={self.delta.dtype}, device={self.delta.device}"

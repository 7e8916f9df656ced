"""The non-finite gradient policy shared by every optimizer of :mod:`rai_probe.optim`.

**Policy.** In a step, a *row* (as ``param_ndim`` defines rows, see
:func:`~rai_probe.optim.param_transforming.rows_shape`) whose gradient holds
any NaN or ±Inf is **skipped**: its gradient is set to zero before any
transform (so nothing non-finite reaches the transforms, the inner
optimizer or the other rows), and its parameter row is restored bit for bit
after the inner step and the post-step transform. Rows with finite
gradients are stepped exactly as without the policy. Every skipped row is
counted, on the device, without synchronizing with the host; an optimizer's
:attr:`~SkipsNonFiniteRows.skipped_rows` is the total so far.

The inner optimizer sees a zero gradient for a skipped row, so per-parameter
state it keeps (Adam's moments, a momentum buffer, a step count) is updated
as for a zero gradient; only the parameter row itself is restored.

Everything here is vectorized and device-side. A row is non-finite exactly
when its largest or smallest entry is (``max`` and ``min`` propagate NaN and,
unlike a sum, cannot overflow); rows are zeroed and restored by bitwise
selection on the raw bits, which is exact for every value (signed zeros, NaN
payloads) and about twice as fast as ``torch.where`` on the CPU. The value
of each parameter before the step is kept in a buffer the optimizer reuses
from step to step (one copy of each parameter that has had a gradient), so a
step allocates nothing the size of a parameter.

Examples
--------
>>> import torch
>>> from rai_probe.optim import L2NormedGradientOptim
>>> x = torch.ones(3, 2, requires_grad=True)         # three rows (param_ndim=-1)
>>> optim = L2NormedGradientOptim([x], lr=1.0)
>>> x.grad = torch.tensor([[3.0, 4.0], [float("nan"), 1.0], [0.0, float("inf")]])
>>> optim.step()
>>> x.detach()                                       # rows 1 and 2 are left as they were
tensor([[0.4000, 0.2000],
        [1.0000, 1.0000],
        [1.0000, 1.0000]])
>>> x.grad                                           # their gradients were zeroed
tensor([[0.6000, 0.8000],
        [0.0000, 0.0000],
        [0.0000, 0.0000]])
>>> int(optim.skipped_rows)
2
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterable, Iterator

import torch
from torch import Tensor

__all__ = ["SkipsNonFiniteRows", "nonfinite_rows", "suspended"]

#: Integer dtypes with the element size of each float dtype (for bitwise selection).
_BITS = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def _row_dims(ndim: int, param_ndim: int | None) -> tuple[int, ...]:
    """The trailing dimensions that make up one row; ``()`` when every element is a row."""
    if ndim == 0:
        return ()
    if param_ndim is None:
        return tuple(range(ndim))
    kept = param_ndim + ndim if param_ndim < 0 else param_ndim
    return tuple(range(ndim - kept, ndim))


def nonfinite_rows(grad: Tensor, param_ndim: int | None) -> Tensor:
    """A bool mask, broadcastable against ``grad``: True for each row holding a NaN or ±Inf.

    Rows are those of :func:`~rai_probe.optim.param_transforming.rows_shape`;
    the mask keeps the row's leading dimensions and has size 1 along the
    row's own, so ``grad.shape[:-k] + (1,) * k`` for rows of ``k`` trailing
    dimensions (the full shape when each element is a row). A row is
    non-finite exactly when its largest or its smallest entry is (max and min
    propagate NaN, and cannot overflow as a sum would). No host sync, no
    temporary the size of ``grad``.

    Parameters
    ----------
    grad : Tensor
        A dense floating-point tensor, any layout.
    param_ndim : int or None
        As for the optimizers.

    Returns
    -------
    Tensor of bool

    Examples
    --------
    >>> g = torch.tensor([[1.0, float("nan")], [2.0, 3.0], [float("-inf"), 0.0]])
    >>> nonfinite_rows(g, -1).squeeze(1)
    tensor([ True, False,  True])
    >>> nonfinite_rows(g, None).shape, nonfinite_rows(g, 0).sum().item()
    (torch.Size([1, 1]), 2)
    >>> nonfinite_rows(torch.tensor([[3e38, 3e38]]), -1).item()   # finite, though its sum is not
    False
    """
    dims = _row_dims(grad.ndim, param_ndim)
    if not dims:
        return ~torch.isfinite(grad)
    if grad.is_complex():  # no max / min: the (slower) elementwise test
        return ~torch.isfinite(grad).all(dim=dims, keepdim=True)
    if grad.numel() == 0:  # max and min refuse empty rows; empty rows are finite
        return grad.new_zeros([1 if d in dims else s for d, s in enumerate(grad.shape)], dtype=torch.bool)
    largest = grad.amax(dim=dims, keepdim=True)
    smallest = grad.amin(dim=dims, keepdim=True)
    return ~(torch.isfinite(largest) & torch.isfinite(smallest))


def _bits(t: Tensor) -> Tensor | None:
    """``t`` reinterpreted as integers of the same size (a view), or None for other dtypes."""
    bits = _BITS.get(t.element_size())
    return None if bits is None or t.is_complex() else t.view(bits)


def _masks(bad: Tensor, bits: Tensor) -> tuple[Tensor, Tensor]:
    """``(keep, take)``: integer masks with every bit set on the good rows, resp. on the bad rows."""
    take = bad.to(bits.dtype).neg_()
    return ~take, take


class _StepScreen:
    """Applies the policy to one step of one optimizer.

    ``screen_()`` (after each evaluation of the gradients) marks and zeroes
    non-finite rows and saves the marked rows of each parameter it has not
    yet saved this step; ``finish_()`` (after the inner step and the
    post-step transform) restores the marked rows and counts them. With a
    closure, ``snapshot_()`` first saves every parameter whole, since the
    closure may produce gradients only once the inner optimizer calls it. An
    inactive screen (the optimizer is stepped by an outer one that screens)
    does nothing.

    Rows are zeroed, saved and restored by bitwise selection: ``grad &= keep``,
    ``saved = param & take`` and ``param = (param & keep) | saved``, with
    ``keep`` all ones on the good rows and ``take = ~keep``: exact for every
    bit pattern, and one pass over the tensor each.
    """

    __slots__ = ("_owner", "_groups", "_entries")

    def __init__(self, owner: "SkipsNonFiniteRows", groups: Iterable[dict[str, Any]]) -> None:
        self._owner = owner
        active = not owner.__dict__.get("_nonfinite_suspended", False)
        self._groups = groups if active else ()
        # id(param) -> [param, bad rows or None, saved value, (keep, take) when only the
        # bad rows were saved (with the masks used), else None]
        self._entries: dict[int, list] = {}

    def snapshot_(self) -> None:
        """Save every parameter of every group whole (before a closure is first evaluated)."""
        for group in self._groups:
            for param in group["params"]:
                if id(param) not in self._entries:
                    saved = self._owner._buffer(param).copy_(param.detach())
                    self._entries[id(param)] = [param, None, saved, None]

    def screen_(self) -> None:
        """Mark and zero the non-finite rows of every (dense) gradient; save those rows."""
        for group in self._groups:
            param_ndim = group.get("param_ndim", -1)
            for param in group["params"]:
                grad = param.grad
                if grad is None or grad.is_sparse:
                    continue
                bad = nonfinite_rows(grad, param_ndim)
                bits = _bits(grad)
                if bits is None:
                    grad.masked_fill_(bad, 0)
                else:
                    keep, take = _masks(bad, bits)
                    bits.bitwise_and_(keep)
                entry = self._entries.get(id(param))
                if entry is None:  # save only the rows to restore
                    saved = self._owner._buffer(param)
                    if bits is None or _bits(saved) is None:
                        saved.copy_(param.detach())
                        self._entries[id(param)] = [param, bad, saved, None]
                    else:
                        torch.bitwise_and(_bits(param.detach()), take, out=_bits(saved))
                        self._entries[id(param)] = [param, bad, saved, (keep, take)]
                else:
                    entry[1] = bad if entry[1] is None else entry[1] | bad

    def count_(self, param: Tensor, rows: int | Tensor) -> None:
        """Add ``rows`` skipped rows of ``param`` to the owner's count (no host sync)."""
        if self._groups:
            self._owner._add_skipped(param.device, rows)

    def finish_(self) -> None:
        """Restore the marked rows to their values before the step, and count them."""
        for param, bad, saved, masks in self._entries.values():
            if bad is None:
                continue
            value, old = param.detach(), _bits(saved)
            bits = _bits(value)
            if bits is None or old is None:
                torch.where(bad, saved, value, out=value)
            else:
                if masks is None:  # saved whole: keep only its rows to restore
                    masks = _masks(bad, bits)
                    old.bitwise_and_(masks[1])
                bits.bitwise_and_(masks[0]).bitwise_or_(old)
            self.count_(param, bad.sum())
        self._entries.clear()


class SkipsNonFiniteRows:
    """Mixin: an optimizer that applies the non-finite gradient policy and counts skipped rows.

    See :mod:`rai_probe.optim.nonfinite` for the policy. The count lives on
    the parameters' device(s) and is updated without host synchronization.
    """

    @property
    def skipped_rows(self) -> Tensor:
        """Number of rows skipped so far because their gradient held a NaN or ±Inf.

        A new 0-d ``int64`` tensor, on the device of the first parameter
        (counts from parameters on other devices are moved there); reading
        its value (``int(optim.skipped_rows)``) synchronizes with that
        device. Each skipped row of each parameter counts once per step.
        """
        device = self._first_device()
        total = torch.zeros((), dtype=torch.int64, device=device)
        for count in self.__dict__.get("_nonfinite_counts", {}).values():
            total += count.to(device)
        return total

    def _first_device(self) -> torch.device:
        for group in getattr(self, "param_groups", ()):
            for param in group["params"]:
                return param.device
        return torch.device("cpu")

    def _add_skipped(self, device: torch.device, rows: int | Tensor) -> None:
        counts = self.__dict__.setdefault("_nonfinite_counts", {})
        if device not in counts:
            counts[device] = torch.zeros((), dtype=torch.int64, device=device)
        counts[device] += rows

    def _buffer(self, param: Tensor) -> Tensor:
        """This optimizer's reusable buffer for saving ``param`` (laid out like it)."""
        buffers = self.__dict__.setdefault("_nonfinite_buffers", {})
        held = buffers.get(id(param))
        if held is None or held[0] is not param or held[1].shape != param.shape or (
            held[1].dtype != param.dtype or held[1].device != param.device
            or held[1].stride() != param.stride()
        ):
            held = buffers[id(param)] = (param, torch.empty_like(param.detach()))
        return held[1]

    def _screen(self, groups: Iterable[dict[str, Any]] | None = None) -> _StepScreen:
        """A screen applying the policy to one step over ``groups`` (default: the param groups)."""
        return _StepScreen(self, self.param_groups if groups is None else groups)


@contextmanager
def suspended(optimizer: Any) -> Iterator[None]:
    """Turn off ``optimizer``'s own screening while an outer optimizer that screens steps it.

    The outer optimizer zeroes non-finite rows before the inner one sees them
    and restores them afterwards; screening again inside would only cost time.
    Optimizers without the policy are left alone.
    """
    if not isinstance(optimizer, SkipsNonFiniteRows):
        yield
        return
    previous = optimizer.__dict__.get("_nonfinite_suspended", False)
    optimizer.__dict__["_nonfinite_suspended"] = True
    try:
        yield
    finally:
        optimizer.__dict__["_nonfinite_suspended"] = previous

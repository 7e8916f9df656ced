"""In-place initializers that draw each row uniformly from an ε-ball.

Each function fills a tensor, in place, with samples drawn **uniformly**
(with respect to volume) from the ε-ball of one norm, independently for every
row. Rows follow the :mod:`rai_probe.optim` convention: the tensor is seen as
``rows_shape(x.shape, param_ndim)`` (``param_ndim=-1``, the default, gives one
row per leading index, i.e. one ball per datum of a batch), so an initializer
pairs with an optimizer using the same ``param_ndim``.

=============================  =========================================================
function                       sample, per row of ``n`` entries
=============================  =========================================================
``uniform_like_l1_n_ball_``    the first ``n`` gaps between ``n`` sorted uniforms (uniform
                               on the solid simplex), random signs, times ε
``uniform_like_l2_n_ball_``    a normalized gaussian direction, times ``ε · U^(1/n)``
``uniform_like_linf_n_ball_``  every entry uniform in ``[-ε, ε]``
=============================  =========================================================

For the L1 and L2 balls the radius ``r = ‖row‖ / ε`` of a uniform sample has
CDF ``t^n`` on ``[0, 1]``: in many dimensions almost all samples lie close to
the sphere.

Random numbers come from ``generator`` (default: torch's global CPU
generator), which may live on another device than ``x``: the samples are
drawn on the generator's device and then moved to ``x``'s, so a seeded CPU
generator gives the same values on every device. Samples are computed in
float64 for float64 tensors and in float32 otherwise; float16 and bfloat16
results are rounded **toward zero** from float32, so rounding never moves a
sample out of the ball. Rounding of the float32 / float64 arithmetic itself
may leave a norm above ε by a few units in the last place.

Examples
--------
>>> import torch
>>> from rai_probe.perturbations import uniform_like_l2_n_ball_
>>> gen = torch.Generator().manual_seed(0)
>>> delta = uniform_like_l2_n_ball_(torch.empty(4, 3, 8, 8), epsilon=2.0, generator=gen)
>>> norms = delta.flatten(1).norm(dim=1)       # one ball per leading index
>>> norms.shape, bool((norms <= 2.0 + 1e-5).all()), bool((norms > 1.8).all())
(torch.Size([4]), True, True)
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, Union

import torch
from torch import Tensor

from ..errors import SettingError, SettingTypeError
from rai_probe.optim.functional import TINY
from rai_probe.optim.param_transforming import rows_shape

__all__ = [
    "uniform_like_l1_n_ball_",
    "uniform_like_l2_n_ball_",
    "uniform_like_linf_n_ball_",
    "sparse_l1_start_",
]

#: ``epsilon`` may be one radius for all rows or a tensor of shape ``(N,)``.
Radius = Union[float, Tensor]

#: ``sampler(rows, n, generator, dtype) -> (rows, n)`` samples of the unit ball.
_Sampler = Callable[[int, int, torch.Generator, torch.dtype], Tensor]


# --------------------------------------------------------------------------- #
# validation
# --------------------------------------------------------------------------- #
def _check_x(where: str, x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise SettingTypeError(f"{where}: `x` must be a torch.Tensor; got {type(x).__name__}", setting="x")
    if not x.is_floating_point():
        raise SettingTypeError(f"{where}: `x` must be a floating-point tensor; got dtype {x.dtype}", setting="x")


def _check_param_ndim(where: str, param_ndim: int | None, x: Tensor) -> None:
    limit = max(x.ndim, 1)  # a 0-d tensor counts as one row of one element
    is_int = isinstance(param_ndim, numbers.Integral) and not isinstance(param_ndim, bool)
    if param_ndim is not None and (not is_int or abs(int(param_ndim)) > limit):
        raise SettingError(
            f"{where}: `param_ndim` must be None or an integer within [-{limit}, {limit}] "
            f"for a tensor of shape {tuple(x.shape)}; got param_ndim={param_ndim!r}",
            setting="param_ndim",
        )


def _check_generator(where: str, generator: torch.Generator | None) -> torch.Generator:
    if generator is None:
        return torch.default_generator
    if not isinstance(generator, torch.Generator):
        raise SettingTypeError(
            f"{where}: `generator` must be a torch.Generator; got {type(generator).__name__}",
            setting="generator",
        )
    return generator


def _check_epsilon(where: str, epsilon: Radius, num_rows: int) -> Radius:
    """``epsilon`` validated: a positive finite float, or a tensor of shape ``(N,)``."""
    if isinstance(epsilon, Tensor):
        if epsilon.ndim == 0:
            epsilon = epsilon.item()  # a 0-d tensor is one radius for all rows
        else:
            if epsilon.shape != (num_rows,):
                raise SettingError(
                    f"{where}: `epsilon` must be a positive float or a tensor of shape "
                    f"(N,) = ({num_rows},), one radius per row; got a tensor of shape "
                    f"{tuple(epsilon.shape)}",
                    setting="epsilon",
                )
            if epsilon.is_complex() or epsilon.dtype == torch.bool:
                raise SettingError(
                    f"{where}: `epsilon` must hold real numbers; got dtype {epsilon.dtype}",
                    setting="epsilon",
                )
            # An initializer runs once per attack: reading the check's result
            # back to the host is acceptable here.
            valid = torch.isfinite(epsilon) & (epsilon > 0)
            if not bool(valid.all()):
                bad = epsilon[~valid][0].item()
                raise SettingError(
                    f"{where}: every entry of `epsilon` must be a finite number > 0; "
                    f"got {bad} among epsilon={epsilon.tolist()}",
                    setting="epsilon",
                )
            return epsilon
    is_real = isinstance(epsilon, numbers.Real) and not isinstance(epsilon, bool)
    if not is_real or not 0.0 < float(epsilon) < math.inf:
        raise SettingError(
            f"{where}: `epsilon` must be a finite number > 0 or a tensor of shape (N,); "
            f"got epsilon={epsilon!r}",
            setting="epsilon",
        )
    return float(epsilon)


# --------------------------------------------------------------------------- #
# unit-ball samplers: (rows, n) samples on the generator's device
# --------------------------------------------------------------------------- #
def _random_signs(shape: tuple[int, int], generator: torch.Generator, dtype: torch.dtype) -> Tensor:
    bits = torch.randint(0, 2, shape, generator=generator, device=generator.device, dtype=dtype)
    return bits.mul_(2).sub_(1)  # {0, 1} -> {-1, +1}


def _unit_l1(rows: int, n: int, generator: torch.Generator, dtype: torch.dtype) -> Tensor:
    # n sorted uniforms cut [0, 1] into n + 1 gaps, jointly Dirichlet(1, ..., 1):
    # uniform on the n-simplex. Dropping the last gap leaves a point uniform on
    # the solid simplex {y >= 0, sum(y) <= 1}; one independent sign per entry
    # maps it onto the 2^n orthants of the L1 ball.
    cuts = torch.rand(rows, n, generator=generator, device=generator.device, dtype=dtype)
    cuts = cuts.sort(dim=1).values
    gaps = torch.diff(cuts, dim=1, prepend=cuts.new_zeros(rows, 1))
    return gaps.mul_(_random_signs((rows, n), generator, dtype))


def _unit_l2(rows: int, n: int, generator: torch.Generator, dtype: torch.dtype) -> Tensor:
    # A standard gaussian vector has a uniformly distributed direction; a
    # uniform point of the n-ball has radius with CDF t^n, i.e. U^(1/n).
    direction = torch.randn(rows, n, generator=generator, device=generator.device, dtype=dtype)
    norms = torch.linalg.vector_norm(direction, dim=1, keepdim=True).clamp_min_(TINY)
    radii = torch.rand(rows, 1, generator=generator, device=generator.device, dtype=dtype)
    return direction.mul_(radii.pow_(1.0 / n).div_(norms))


def _unit_linf(rows: int, n: int, generator: torch.Generator, dtype: torch.dtype) -> Tensor:
    # torch.rand is in [0, 1): 2u - 1 is exact and within [-1, 1).
    u = torch.rand(rows, n, generator=generator, device=generator.device, dtype=dtype)
    return u.mul_(2).sub_(1)


def _round_toward_zero(values: Tensor, dtype: torch.dtype) -> Tensor:
    """``values`` cast to the narrower ``dtype`` with no magnitude rounded up."""
    cast = values.to(dtype)
    grew = cast.to(values.dtype).abs() > values.abs()
    return torch.where(grew, torch.nextafter(cast, torch.zeros_like(cast)), cast)


def _fill_from_ball_(
    where: str,
    sampler: _Sampler,
    x: Tensor,
    epsilon: Radius,
    param_ndim: int | None,
    generator: torch.Generator | None,
) -> Tensor:
    _check_x(where, x)
    _check_param_ndim(where, param_ndim, x)
    generator = _check_generator(where, generator)
    num_rows, *row = rows_shape(x.shape, param_ndim)
    epsilon = _check_epsilon(where, epsilon, num_rows)
    n = math.prod(row)
    if num_rows * n == 0:
        return x
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    samples = sampler(num_rows, n, generator, dtype)
    if isinstance(epsilon, Tensor):
        samples.mul_(epsilon.detach().to(device=samples.device, dtype=dtype).unsqueeze(1))
    else:
        samples.mul_(epsilon)
    samples = samples.to(x.device)
    if x.dtype != dtype:
        samples = _round_toward_zero(samples, x.dtype)
    with torch.no_grad():  # like torch.nn.init: works on parameters that require grad
        x.copy_(samples.view(x.shape))
    return x


# --------------------------------------------------------------------------- #
# public initializers
# --------------------------------------------------------------------------- #
def uniform_like_l1_n_ball_(
    x: Tensor,
    epsilon: Radius = 1.0,
    param_ndim: int | None = -1,
    generator: torch.Generator = torch.default_generator,
) -> Tensor:
    """In place: fill each row of ``x`` with a sample uniform in the L1 ball of radius ε.

    A row of ``n`` entries is ``ε · s ⊙ g``: ``g`` holds the first ``n`` gaps
    between ``n`` sorted ``U[0, 1)`` draws (uniform on the solid simplex
    ``{g >= 0, Σg <= 1}``) and ``s`` independent random signs.

    Parameters
    ----------
    x : Tensor
        A floating-point tensor of any dtype and device, overwritten in place.
    epsilon : float or Tensor, shape-(N,), optional (default=1.0)
        Radius of the ball: one finite value > 0 for all rows, or one per row.
    param_ndim : int | None, optional (default=-1)
        How ``x`` is split into rows, as in :mod:`rai_probe.optim`:
        ``rows_shape(x.shape, param_ndim)``. ``-1``: one row per leading index;
        ``None``: the whole tensor is one row; ``0``: every element is a row.
    generator : torch.Generator, optional (default=torch.default_generator)
        Source of randomness, on any device (the samples are drawn there and
        moved to ``x.device``).

    Returns
    -------
    Tensor
        ``x``.

    Raises
    ------
    TypeError
        ``x`` is not a floating-point tensor, or ``generator`` is not a generator.
    ValueError
        ``epsilon`` is not finite and > 0 (or a tensor of the wrong shape), or
        ``|param_ndim|`` exceeds ``x.ndim``.

    Examples
    --------
    >>> import torch
    >>> gen = torch.Generator().manual_seed(0)
    >>> x = uniform_like_l1_n_ball_(torch.empty(1000, 5), epsilon=0.5, generator=gen)
    >>> l1 = x.abs().sum(dim=1)
    >>> bool((l1 <= 0.5 + 1e-6).all()), round(float(l1.mean() / 0.5), 1)   # E[r] = n / (n + 1)
    (True, 0.8)
    """
    return _fill_from_ball_(
        "uniform_like_l1_n_ball_", _unit_l1, x, epsilon, param_ndim, generator
    )


def uniform_like_l2_n_ball_(
    x: Tensor,
    epsilon: Radius = 1.0,
    param_ndim: int | None = -1,
    generator: torch.Generator = torch.default_generator,
) -> Tensor:
    """In place: fill each row of ``x`` with a sample uniform in the L2 ball of radius ε.

    A row of ``n`` entries is ``ε · U^(1/n) · z / ‖z‖₂`` with ``z`` standard
    gaussian (a uniform direction) and ``U ~ U[0, 1)`` (the radius of a uniform
    point of the n-ball has CDF ``t^n``).

    Parameters
    ----------
    x : Tensor
        A floating-point tensor of any dtype and device, overwritten in place.
    epsilon : float or Tensor, shape-(N,), optional (default=1.0)
        Radius of the ball: one finite value > 0 for all rows, or one per row.
    param_ndim : int | None, optional (default=-1)
        How ``x`` is split into rows: ``rows_shape(x.shape, param_ndim)``.
    generator : torch.Generator, optional (default=torch.default_generator)
        Source of randomness, on any device.

    Returns
    -------
    Tensor
        ``x``.

    Raises
    ------
    TypeError, ValueError
        As :func:`uniform_like_l1_n_ball_`.

    Examples
    --------
    >>> import torch
    >>> gen = torch.Generator().manual_seed(0)
    >>> x = uniform_like_l2_n_ball_(torch.empty(2, 3), epsilon=torch.tensor([1.0, 10.0]), generator=gen)
    >>> x.norm(dim=1) <= torch.tensor([1.0, 10.0]) * (1 + 1e-6)
    tensor([True, True])
    >>> y = uniform_like_l2_n_ball_(torch.empty(2, 3), param_ndim=None)   # one ball for all
    >>> bool(y.norm() <= 1.0 + 1e-6)
    True
    """
    return _fill_from_ball_(
        "uniform_like_l2_n_ball_", _unit_l2, x, epsilon, param_ndim, generator
    )


def uniform_like_linf_n_ball_(
    x: Tensor,
    epsilon: Radius = 1.0,
    param_ndim: int | None = -1,
    generator: torch.Generator = torch.default_generator,
) -> Tensor:
    """In place: fill each row of ``x`` with a sample uniform in the L∞ ball of radius ε.

    Every entry is independent and uniform in ``[-ε, ε)``, with the row's ε.
    Rows matter only through a per-row ``epsilon`` tensor, whose length must
    match the number of rows that ``param_ndim`` gives.

    Parameters
    ----------
    x : Tensor
        A floating-point tensor of any dtype and device, overwritten in place.
    epsilon : float or Tensor, shape-(N,), optional (default=1.0)
        Radius of the ball: one finite value > 0 for all rows, or one per row.
    param_ndim : int | None, optional (default=-1)
        How ``x`` is split into rows: ``rows_shape(x.shape, param_ndim)``.
    generator : torch.Generator, optional (default=torch.default_generator)
        Source of randomness, on any device.

    Returns
    -------
    Tensor
        ``x``.

    Raises
    ------
    TypeError, ValueError
        As :func:`uniform_like_l1_n_ball_`.

    Examples
    --------
    >>> import torch
    >>> gen = torch.Generator().manual_seed(0)
    >>> x = uniform_like_linf_n_ball_(torch.empty(2, 1000), epsilon=torch.tensor([0.1, 8 / 255]), generator=gen)
    >>> x.abs().amax(dim=1) <= torch.tensor([0.1, 8 / 255])
    tensor([True, True])
    """
    return _fill_from_ball_(
        "uniform_like_linf_n_ball_", _unit_linf, x, epsilon, param_ndim, generator
    )


def sparse_l1_start_(
    x: Tensor,
    epsilon: Radius = 1.0,
    param_ndim: int | None = -1,
    generator: torch.Generator = torch.default_generator,
    *,
    bounds: tuple[Tensor | float, Tensor | float] | None = None,
) -> Tensor:
    """In place: a sparse random start, a gaussian draw projected onto the L1 ε-ball (∩ a box).

    Not uniform in the ball: the exact Euclidean projection of a standard
    gaussian row onto ``{‖v‖₁ <= ε}`` (intersected with ``bounds``, e.g.
    ``(0 - x, 1 - x)`` for a perturbation of an image ``x`` in [0, 1]:
    :func:`~rai_probe.optim.functional.project_l1_ball_box_`) soft-thresholds
    it, so the start lies on the sphere (when the box leaves room) and keeps
    only the largest of the gaussian entries: a few dozen of 784 at ε = 10 on
    MNIST, the support a sparse L1 attack such as
    :class:`~rai_probe.optim.L1APGD` starts from (a uniform sample of the
    ball has every entry nonzero). Rows, dtypes, generator and errors as for
    :func:`uniform_like_l1_n_ball_`.

    Examples
    --------
    >>> import torch
    >>> gen = torch.Generator().manual_seed(0)
    >>> image = torch.zeros(2, 784)                       # black images: pixels can only rise
    >>> start = sparse_l1_start_(torch.empty(2, 784), 10.0, generator=gen, bounds=(-image, 1 - image))
    >>> l1, support = start.abs().sum(1), (start != 0).sum(1)
    >>> bool(((l1 - 10.0).abs() < 1e-4).all()), bool((support < 100).all()), bool((start >= 0).all())
    (True, True, True)
    """
    from rai_probe.optim import functional as F  # the projection; no import cycle at module level

    def gaussian(rows: int, n: int, gen: torch.Generator, dtype: torch.dtype) -> Tensor:
        return torch.randn((rows, n), generator=gen, device=gen.device, dtype=dtype)

    _fill_from_ball_("sparse_l1_start_", gaussian, x, 1.0, param_ndim, generator)
    radius = _check_epsilon("sparse_l1_start_", epsilon, rows_shape(x.shape, param_ndim)[0])
    with torch.no_grad():
        rows = x.reshape(rows_shape(x.shape, param_ndim)).clone()
        if bounds is None:
            F.project_l1_ball_(rows, radius)
        else:
            lower, upper = (torch.as_tensor(b, dtype=x.dtype, device=x.device).expand(x.shape).reshape(rows.shape)
                            for b in bounds)
            F.project_l1_ball_box_(rows, radius, lower, upper)
        x.copy_(rows.view(x.shape))
    return x

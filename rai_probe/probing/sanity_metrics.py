"""How alike two models' explanations are, and how concentrated on the digit one is: pure tensor functions.

The model-specificity sanity check (:mod:`rai_probe.probing.sanity`,
docs/sanity_checks.md; Adebayo et al., "Sanity Checks for Saliency Maps",
NeurIPS 2018) compares the perturbations ``δ = xadv - x`` that the same
attack finds on the same images for different models. Everything here works
on a batch at once (no loop over images) and uses **no forward pass**: it
reads perturbations and images only.

=====================  =====================================================================
function               per image (``(N,)``; ``δ`` of shape ``(N, C, H, W)``)
=====================  =====================================================================
``pixel_magnitude``    ``|δ|`` summed over channels, ``(N, H, W)``: the explanation's map
``support_iou``        intersection over union of the changed pixels (``|δ| > atol`` in any
                       channel) of two perturbations; 1 when both change nothing
``rank_correlation``   Spearman's rank correlation of two ``|δ|`` maps over all ``H · W``
                       pixels, ties at their average rank; NaN when a map is constant
``stroke_mask``        the digit's strokes, dilated: pixels within ``dilation`` pixels
                       (Chebyshev distance, a ``(2·dilation + 1)²`` square) of a pixel
                       whose clean luminance is ``> threshold``
``concentration``      the fraction of ``|δ|`` mass (channel sums) on a mask; NaN when
                       ``δ = 0``
``mask_fraction``      the fraction of pixels in a mask: the concentration of a
                       perturbation spread evenly over the image (the chance level)
``clustered_fraction`` the fraction of changed pixels with a changed 8-neighbour: 1 for
                       stroke-like (connected) changes, 0 for isolated pixels; NaN when
                       nothing changed
=====================  =====================================================================

Why average ranks and not ``argsort(argsort(·))``: a sparse perturbation
leaves most pixels at exactly 0. Ordinal ranks break those ties by pixel
position, identically in both maps, so two perturbations with *disjoint*
supports would correlate almost perfectly through their shared zeros. With
every tie at its average rank (computed by sorting once and two
``searchsorted`` calls), such a pair correlates at ``-1 / (H·W - 1)``.

Examples
--------
>>> import torch
>>> a = torch.zeros(1, 1, 2, 3); a[0, 0, 0, :2] = torch.tensor([0.5, -0.25])
>>> b = torch.zeros(1, 1, 2, 3); b[0, 0, 0, 1:] = torch.tensor([0.4, 0.3])
>>> support_iou(a, b).tolist()          # pixel (0, 1) of the three changed
[0.3333333333333333]
>>> support_iou(a, a).tolist(), rank_correlation(a, a).tolist()
([1.0], [1.0])
>>> image = torch.zeros(1, 1, 2, 3); image[0, 0, 0, 0] = 1.0
>>> mask = stroke_mask(image, threshold=0.5, dilation=0)
>>> concentration(a, mask).tolist(), mask_fraction(mask).tolist()
([0.6666666666666666], [0.16666666666666666])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "pixel_magnitude",
    "support_iou",
    "rank_correlation",
    "stroke_mask",
    "concentration",
    "mask_fraction",
    "clustered_fraction",
    "STROKE_THRESHOLD",
    "STROKE_DILATION",
]

#: A pixel is on a stroke when its clean luminance is above this (MNIST: ink is near 1, paper 0).
STROKE_THRESHOLD = 0.5
#: Strokes are widened by this many pixels, so thickening or thinning a stroke counts as on it.
STROKE_DILATION = 1

#: Luminance weights (ITU-R BT.601) of an RGB image, as the figures use.
_LUMA = (0.299, 0.587, 0.114)


def _batch(name: str, x: object) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor of shape (N, C, H, W); got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"`{name}` must have shape (N, C, H, W); got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"`{name}` must be a floating-point tensor; got {x.dtype}")
    return x


def _pair(a: object, b: object, names: tuple[str, str] = ("delta_a", "delta_b")) -> tuple[Tensor, Tensor]:
    a, b = _batch(names[0], a), _batch(names[1], b)
    if a.shape != b.shape:
        raise ValueError(f"`{names[0]}` and `{names[1]}` must have the same shape; got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    return a, b


def _check_atol(atol: object) -> float:
    if isinstance(atol, bool) or not isinstance(atol, (int, float)) or not math.isfinite(atol) or atol < 0:
        raise ValueError(f"`atol` must be a finite number >= 0; got atol={atol!r}")
    return float(atol)


def pixel_magnitude(delta: Tensor) -> Tensor:
    """``|δ|`` summed over channels, in float64: ``(N, C, H, W) -> (N, H, W)``.

    Examples
    --------
    >>> pixel_magnitude(torch.tensor([[[[0.5, 0.0]], [[-0.25, 0.0]]]])).tolist()
    [[[0.75, 0.0]]]
    """
    return _batch("delta", delta).detach().double().abs().sum(dim=1)


def support_iou(delta_a: Tensor, delta_b: Tensor, *, atol: float = 0.0) -> Tensor:
    """IoU of the changed pixels of two perturbations of the same images, ``(N,)`` float64.

    A pixel changed when ``|δ| > atol`` in any channel (as ``l0_pixels``
    counts). Two perturbations that change nothing agree: 1.

    Raises
    ------
    TypeError, ValueError
        Not floating-point ``(N, C, H, W)`` tensors of one shape; a negative ``atol``.

    Examples
    --------
    >>> a = torch.tensor([[[[1.0, 0.0, 0.0, 0.0]]]])
    >>> support_iou(a, torch.tensor([[[[0.0, 0.0, 2.0, 0.0]]]])).tolist()   # disjoint
    [0.0]
    >>> support_iou(torch.zeros(1, 1, 1, 4), torch.zeros(1, 1, 1, 4)).tolist()
    [1.0]
    """
    delta_a, delta_b = _pair(delta_a, delta_b)
    atol = _check_atol(atol)
    a = (delta_a.detach().abs() > atol).any(dim=1).flatten(1)
    b = (delta_b.detach().abs() > atol).any(dim=1).flatten(1)
    inter = (a & b).sum(dim=1).double()
    union = (a | b).sum(dim=1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def _average_ranks(values: Tensor) -> Tensor:
    """Each entry's rank within its row, ties at their average rank (0-based), ``(N, P)`` float64."""
    ordered = values.sort(dim=1).values.contiguous()
    values = values.contiguous()
    below = torch.searchsorted(ordered, values, right=False)      # entries smaller than the value
    through = torch.searchsorted(ordered, values, right=True)     # entries at most the value
    return (below + through - 1).double() / 2


def rank_correlation(delta_a: Tensor, delta_b: Tensor) -> Tensor:
    """Spearman's rank correlation of the ``|δ|`` maps of two perturbations, per image, ``(N,)`` float64.

    The Pearson correlation of the pixels' ranks by :func:`pixel_magnitude`,
    ties (the many unchanged pixels of a sparse perturbation) at their
    average rank. NaN where either map is constant (e.g. ``δ = 0``): a
    constant map has no ranking to compare.

    Examples
    --------
    >>> maps = lambda *rows: torch.tensor(rows, dtype=torch.float64).view(len(rows), 1, 1, -1)
    >>> rank_correlation(maps([1, 2, 3, 4]), maps([1, 3, 2, 4])).tolist()   # 1 - 6 · 2 / (4 · 15)
    [0.8]
    >>> rank_correlation(maps([1, 2, 3, 4]), maps([4, 3, 2, 1])).tolist()
    [-1.0]
    >>> rank_correlation(maps([0, 0, 1, 2]), maps([0, 0, 2, 1])).tolist()   # ties: 3.5 / 4.5
    [0.7777777777777778]
    >>> rank_correlation(maps([0, 0, 0, 0]), maps([0, 0, 2, 1])).tolist()
    [nan]
    """
    delta_a, delta_b = _pair(delta_a, delta_b)
    ranks_a = _average_ranks(pixel_magnitude(delta_a).flatten(1))
    ranks_b = _average_ranks(pixel_magnitude(delta_b).flatten(1))
    ranks_a = ranks_a - ranks_a.mean(dim=1, keepdim=True)
    ranks_b = ranks_b - ranks_b.mean(dim=1, keepdim=True)
    spread = (ranks_a.square().sum(dim=1) * ranks_b.square().sum(dim=1)).sqrt()
    correlation = (ranks_a * ranks_b).sum(dim=1) / spread.clamp(min=1e-300)
    return torch.where(spread > 0, correlation.clamp(-1.0, 1.0), torch.full_like(spread, float("nan")))


def stroke_mask(images: Tensor, *, threshold: float = STROKE_THRESHOLD, dilation: int = STROKE_DILATION) -> Tensor:
    """The class-relevant strokes of clean images: their bright pixels, widened by ``dilation``, ``(N, H, W)`` bool.

    A pixel is in the mask when some pixel within ``dilation`` pixels of it
    (in both directions: a ``(2·dilation + 1)²`` square) has a clean
    luminance ``> threshold``. Luminance is the gray value of a grayscale
    image and the BT.601 weighting of an RGB one.

    Parameters
    ----------
    images : Tensor, shape-(N, C, H, W)
        Clean images in ``[0, 1]`` (``C`` 1 or 3).
    threshold : float in [0, 1], default :data:`STROKE_THRESHOLD`
    dilation : int >= 0, default :data:`STROKE_DILATION`

    Examples
    --------
    >>> image = torch.zeros(1, 1, 3, 4); image[0, 0, 1, 1] = 0.9
    >>> stroke_mask(image, dilation=1).int()
    tensor([[[1, 1, 1, 0],
             [1, 1, 1, 0],
             [1, 1, 1, 0]]], dtype=torch.int32)
    >>> stroke_mask(image, threshold=1.5)
    Traceback (most recent call last):
    ...
    ValueError: `threshold` must be a number in [0, 1]; got threshold=1.5
    """
    images = _batch("images", images)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise ValueError(f"`threshold` must be a number in [0, 1]; got threshold={threshold!r}")
    if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 0:
        raise ValueError(f"`dilation` must be an integer >= 0; got dilation={dilation!r}")
    channels = images.shape[1]
    if channels == 1:
        luminance = images[:, 0]
    elif channels == 3:
        luminance = torch.einsum("nchw,c->nhw", images, images.new_tensor(_LUMA))
    else:
        raise ValueError(f"`images` must have 1 (grayscale) or 3 (RGB) channels; got {channels}")
    bright = (luminance.detach() > threshold).float().unsqueeze(1)
    if dilation:
        bright = F.max_pool2d(bright, kernel_size=2 * dilation + 1, stride=1, padding=dilation)
    return bright[:, 0] > 0


def _mask(mask: object, shape: tuple[int, ...]) -> Tensor:
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"`mask` must be a bool tensor of shape {shape}; got "
                        f"{getattr(mask, 'dtype', type(mask).__name__)}")
    if tuple(mask.shape) != shape:
        raise ValueError(f"`mask` must have shape (N, H, W) = {shape}; got {tuple(mask.shape)}")
    return mask


def concentration(delta: Tensor, mask: Tensor) -> Tensor:
    """The fraction of each perturbation's ``|δ|`` mass (channel sums) inside ``mask``, ``(N,)`` float64.

    NaN where ``δ = 0`` (no mass to place).

    Examples
    --------
    >>> delta = torch.tensor([[[[0.5, -0.25, 0.0]]], [[[0.0, 0.0, 0.0]]]])
    >>> mask = torch.tensor([[[True, False, False]], [[True, True, True]]])
    >>> concentration(delta, mask).tolist()
    [0.6666666666666666, nan]
    """
    magnitude = pixel_magnitude(delta)
    mask = _mask(mask, tuple(magnitude.shape))
    total = magnitude.flatten(1).sum(dim=1)
    inside = (magnitude * mask.to(magnitude.device)).flatten(1).sum(dim=1)
    return torch.where(total > 0, inside / total.clamp(min=1e-300), torch.full_like(total, float("nan")))


def mask_fraction(mask: Tensor) -> Tensor:
    """The fraction of each image's pixels inside ``mask``, ``(N,)`` float64: the chance level of :func:`concentration`.

    Examples
    --------
    >>> mask_fraction(torch.tensor([[[True, False], [False, False]]])).tolist()
    [0.25]
    """
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.ndim != 3:
        raise TypeError("`mask` must be a bool tensor of shape (N, H, W)")
    return mask.flatten(1).double().mean(dim=1)


def clustered_fraction(delta: Tensor, *, atol: float = 0.0) -> Tensor:
    """The fraction of each perturbation's changed pixels that touch another changed pixel, ``(N,)`` float64.

    A pixel changed when ``|δ| > atol`` in any channel; it is clustered when
    one of its 8 neighbours changed too. Strokes drawn or erased are
    clustered (near 1); scattered single pixels are not (near 0; ``k``
    pixels placed at random among ``P`` score about ``1 - (1 - k/P)^8``).
    NaN where nothing changed.

    Examples
    --------
    >>> delta = torch.zeros(2, 1, 4, 4)
    >>> delta[0, 0, 1, 1:3] = 0.5            # a two-pixel stroke ...
    >>> delta[0, 0, 3, 0] = 0.5              # ... and an isolated pixel
    >>> clustered_fraction(delta).tolist()
    [0.6666666666666666, nan]
    """
    delta = _batch("delta", delta)
    atol = _check_atol(atol)
    changed = (delta.detach().abs() > atol).any(dim=1, keepdim=True).double()
    ring = torch.ones(1, 1, 3, 3, dtype=torch.float64, device=changed.device)
    ring[0, 0, 1, 1] = 0.0
    neighbours = F.conv2d(changed, ring, padding=1)
    count = changed.flatten(1).sum(dim=1)
    clustered = (changed * (neighbours > 0)).flatten(1).sum(dim=1)
    return torch.where(count > 0, clustered / count.clamp(min=1), torch.full_like(count, float("nan")))

"""Smoothing optimizers, by their old address: Laplacian smoothing and gradient sampling.

The two live in their own modules, :mod:`rai_probe.optim.laplacian_smoothing`
(:func:`laplacian_smooth_`, :class:`LaplacianSmoothing`, ...) and
:mod:`rai_probe.optim.gradient_sampling` (:class:`GradientSampling`); this
module re-exports their public names, so ``from rai_probe.optim.smoothing
import ...`` keeps working. Patch the solver's internals (tests, benchmarks)
in :mod:`rai_probe.optim.laplacian_smoothing` itself.

Examples
--------
>>> from rai_probe.optim import gradient_sampling, laplacian_smoothing, smoothing
>>> smoothing.laplacian_smooth_ is laplacian_smoothing.laplacian_smooth_
True
>>> smoothing.GradientSampling is gradient_sampling.GradientSampling
True
"""

from .gradient_sampling import GradientSampling
from .laplacian_smoothing import (
    LaplacianSmoothing,
    laplacian_eigenvalues,
    laplacian_smooth,
    laplacian_smooth_,
)

__all__ = [
    "laplacian_eigenvalues",
    "laplacian_smooth_",
    "laplacian_smooth",
    "LaplacianSmoothing",
    "GradientSampling",
]

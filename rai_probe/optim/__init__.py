"""Parameter-transforming optimizers, usable as drop-in ``torch.optim`` building blocks.

Every class wraps an inner ``torch.optim`` optimizer (SGD by default) and
transforms each parameter and its gradient in place before and after the inner
step, broadcasting over rows chosen by ``param_ndim``. The tensor math lives in
:mod:`rai_probe.optim.functional`. Names, arguments and defaults match
``rai_toolbox.optim``, so existing code switches by changing one import.

Sparsity convention: ``q`` is the fraction of entries **dropped** (``q=0.99``
keeps the largest 1 %).

Non-finite gradients: a row whose gradient holds a NaN or ±Inf is left
unchanged by a step and counted in ``optim.skipped_rows``
(:mod:`rai_probe.optim.nonfinite`).
"""

from . import functional, nonfinite, options
from .options import REQUIRED
from .apgd import L1APGD, L1qAutoFrankWolfe, L2APGD, LinfAPGD
from .chained import ChainedParamTransformingOptimizer
from .clamped import ClampedGradientOptimizer, ClampedParameterOptimizer
from .frank_wolfe import FrankWolfe, L1FrankWolfe, L1qFrankWolfe, L2FrankWolfe, LinfFrankWolfe
from .normed import (
    L1NormedGradientOptim,
    L1qNormedGradientOptim,
    L2NormedGradientOptim,
    LinfNormedGradientOptim,
    SignedGradientOptim,
    TopQGradientOptimizer,
)
from .param_transforming import ParamTransformingOptimizer
from .projected import L1ProjectedOptim, L2ProjectedOptim, LinfProjectedOptim

__all__ = [
    "REQUIRED",
    "functional",
    "nonfinite",
    "options",
    "ParamTransformingOptimizer",
    "ChainedParamTransformingOptimizer",
    "SignedGradientOptim",
    "L1NormedGradientOptim",
    "L2NormedGradientOptim",
    "LinfNormedGradientOptim",
    "TopQGradientOptimizer",
    "L1qNormedGradientOptim",
    "ClampedGradientOptimizer",
    "ClampedParameterOptimizer",
    "L1ProjectedOptim",
    "L2ProjectedOptim",
    "LinfProjectedOptim",
    "FrankWolfe",
    "L1FrankWolfe",
    "L2FrankWolfe",
    "LinfFrankWolfe",
    "L1qFrankWolfe",
    "L1APGD",
    "L2APGD",
    "LinfAPGD",
    "L1qAutoFrankWolfe",
]

from . import gradient_sampling, laplacian_smoothing, smoothing
from .gradient_sampling import GradientSampling
from .laplacian_smoothing import LaplacianSmoothing

__all__ += ["smoothing", "laplacian_smoothing", "gradient_sampling", "LaplacianSmoothing", "GradientSampling"]

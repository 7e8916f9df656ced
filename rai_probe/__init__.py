"""rai_probe: sparse adversarial perturbations and concept probing of robust classifiers.

Subpackages
-----------
optim
    Parameter-transforming optimizers (normed gradients, top-q sparsity,
    projections, Frank-Wolfe) and the pure tensor functions they call.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]

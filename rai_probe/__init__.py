"""rai_probe: sparse adversarial perturbations and concept probing of robust classifiers.

Subpackages
-----------
optim
    Parameter-transforming optimizers (normed gradients, top-q sparsity,
    projections, Frank-Wolfe, smoothing) and the pure tensor functions they call.
perturbations
    Perturbation models, ball-uniform initializers, the ``gradient_ascent``
    solver and named attack recipes (:class:`~rai_probe.perturbations.attacks.Attack`).
data
    Offline datasets (built-in mnist5k and digits; MNIST idx, CIFAR-10 batches
    and image folders from disk; noise/gray seeds) as float NCHW tensors in [0, 1].
models
    Architectures that own their normalization, a registry, safe checkpoint
    loading (MadryLab, RobustBench, plain, own format) and the shipped robust model.
training
    PGD adversarial training and clean/robust evaluation.
probing
    The probe job behind ``rai-probe`` (``scripts/probe.py``): metrics, artefacts, pictures, sweep reports.

Data flows one way: probing and training use models, data and perturbations;
perturbations use optim.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]

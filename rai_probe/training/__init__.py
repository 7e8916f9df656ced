"""Adversarial training and robustness evaluation of image classifiers.

:func:`adversarial_train` runs PGD adversarial training (L2, L∞, or sparse L1
through the L1 optimizers) with this project's own optimizers and solver;
:func:`evaluate` measures clean and robust accuracy. ``scripts/train.py`` is
the Hydra entry point; docs/model_card.md documents the shipped model.
"""

from .adversarial import TrainingHistory, TrainingRecipe, adversarial_train, random_shift
from .evaluation import evaluate, robust_accuracy

__all__ = [
    "TrainingRecipe",
    "TrainingHistory",
    "adversarial_train",
    "random_shift",
    "evaluate",
    "robust_accuracy",
]

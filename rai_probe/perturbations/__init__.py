"""Perturbation models, ball-uniform initializers and the solver that runs attacks.

A perturbation model (:class:`AdditivePerturbation` or any module satisfying
:class:`PerturbationModel`) holds the trainable perturbation; the
``uniform_like_*_n_ball_`` initializers draw its starting point uniformly from
an ε-ball, per row as in :mod:`rai_probe.optim`; :func:`gradient_ascent`
pairs it with any optimizer of :mod:`rai_probe.optim` against a frozen
classifier; :class:`Attack` is the named recipe (optimizer, budget, loss,
restarts, ε schedule) that the CLI and training share;
:func:`fit_universal_perturbation` fits one perturbation shared by a whole set
of images, or one per class (docs/universal.md). See docs/perturbations.md.
"""

from .initializers import (
    uniform_like_l1_n_ball_,
    uniform_like_l2_n_ball_,
    uniform_like_linf_n_ball_,
)
from .models import AdditivePerturbation, PerturbationModel
from .solvers import AttackResult, gradient_ascent, random_restart
from .losses import dlr_loss, targeted_dlr_loss
from .attacks import ATTACK_NORMS, ATTACK_OPTIMIZERS, Attack
from .universal import (
    UniversalResult,
    apply_universal,
    fit_universal_perturbation,
    universal_success,
)

__all__ = [
    "PerturbationModel",
    "AdditivePerturbation",
    "uniform_like_l1_n_ball_",
    "uniform_like_l2_n_ball_",
    "uniform_like_linf_n_ball_",
    "gradient_ascent",
    "random_restart",
    "AttackResult",
    "Attack",
    "ATTACK_OPTIMIZERS",
    "ATTACK_NORMS",
    "dlr_loss",
    "targeted_dlr_loss",
    "fit_universal_perturbation",
    "apply_universal",
    "universal_success",
    "UniversalResult",
]

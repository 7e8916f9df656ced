"""Adversarially train a classifier: ``python scripts/train.py [overrides]``.

The checkout's spelling of the installed command ``rai-probe-train``
(:func:`rai_probe.training.run.train_main`).

Defaults (rai_probe/configs/training/train.yaml) train the shipped model: the small CNN on
mnist5k with L2 PGD (epsilon 1.5). Examples::

    python scripts/train.py attack=null                        # standard training
    python scripts/train.py attack.optimizer=LinfProjectedOptim attack.random_init=linf attack.epsilon=0.3
    python scripts/train.py attack.optimizer=L1ProjectedOptim attack.random_init=l1 attack.q=0.99 attack.epsilon=10
    python scripts/train.py model=cifar_resnet18 data=cifar10 data_root=/data/cifar device=cuda
    python scripts/train.py tensorboard=true                   # also TensorBoard logs (the tensorboard extra)

The ``attack`` is spelt as every attack config (rai_probe/configs/attack/*.yaml,
rai_probe/configs/training/eval_attacks/): the fields of rai_probe.perturbations.Attack,
with ``attack.lr=null`` for the PGD step 2.5 * epsilon / steps; its epsilon
ramps up over ``attack_warmup_epochs``. Outputs (config, log, model.pt,
history.json, metrics.json, and tensorboard/ with ``tensorboard=true``) go to
Hydra's run directory under outputs/train/. A bad setting exits with status 2
and one paragraph naming the override to fix.
"""

import sys

from rai_probe.training.run import train_main

if __name__ == "__main__":
    sys.exit(train_main())

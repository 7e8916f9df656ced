"""Adversarially train a classifier: ``python scripts/train.py [overrides]``.

Defaults (configs/training/train.yaml) train the shipped model: the small CNN on
mnist5k with L2 PGD (epsilon 1.5). Examples::

    python scripts/train.py attack.norm=none                   # standard training
    python scripts/train.py attack.norm=linf attack.epsilon=0.3
    python scripts/train.py model=cifar_resnet18 data=cifar10 data_root=/data/cifar device=cuda

Outputs (config, log, model.pt, history.json, metrics.json) go to Hydra's run
directory under outputs/train/. A bad setting exits with status 2 and one
paragraph naming the override to fix.
"""

import sys

from rai_probe.training.run import train_main

if __name__ == "__main__":
    sys.exit(train_main())

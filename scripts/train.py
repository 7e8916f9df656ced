"""Adversarially train a classifier: ``python scripts/train.py [overrides]``.

Defaults (configs/train.yaml) train the shipped model: the small CNN on
mnist5k with L2 PGD (epsilon 1.5). Examples::

    python scripts/train.py attack.norm=none                   # standard training
    python scripts/train.py attack.norm=linf attack.epsilon=0.3
    python scripts/train.py model=cifar_resnet18 data=cifar10 data_root=/data/cifar device=cuda

Outputs (config, log, model.pt, history.json, metrics.json) go to Hydra's run
directory under outputs/train/.
"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from rai_probe.training.run import train_from_config


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> None:
    settings = OmegaConf.to_container(cfg, resolve=True)
    settings["_overrides"] = list(HydraConfig.get().overrides.task)
    train_from_config(settings, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()

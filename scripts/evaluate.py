"""Clean and robust accuracy of a model: ``python scripts/evaluate.py [overrides]``.

With no overrides it re-measures the shipped model's recorded accuracies
(docs/model_card.md). Outputs (config, log, metrics.json with measured and
recorded numbers) go to Hydra's run directory under outputs/evaluate/.
"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from rai_probe.training.run import evaluate_from_config


@hydra.main(version_base="1.3", config_path="../configs", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    evaluate_from_config(OmegaConf.to_container(cfg, resolve=True), HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()

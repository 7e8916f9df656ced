"""Run the optimizer demo: sparse (L1q Frank-Wolfe) vs dense (L2 PGD) attacks.

Usage: ``python scripts/demo.py [overrides]``, e.g. ``python scripts/demo.py l1q.q=0.9``.
Outputs (config, log, metrics.json, perturbations.png) go to Hydra's run
directory under ``outputs/demo/``.
"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from rai_probe.demo import DemoConfig, run_demo


@hydra.main(version_base="1.3", config_path="../configs", config_name="demo")
def main(cfg: DictConfig) -> None:
    settings = DemoConfig(**OmegaConf.to_container(cfg, resolve=True))
    run_demo(settings, output_dir=HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()

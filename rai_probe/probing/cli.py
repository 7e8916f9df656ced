"""The Hydra side of ``scripts/probe.py``: config in, one job run, errors as one paragraph."""

from __future__ import annotations

import logging
import sys
import textwrap
from pathlib import Path
from typing import Any

from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from .artifacts import write_error
from .run import run_probe
from .settings import ProbeConfigError

__all__ = ["probe_main", "available"]

log = logging.getLogger("rai_probe.probe")

#: Exit status of a run that could not start or finish because of its settings.
EXIT_BAD_CONFIG = 2


def available(group: str) -> list[str]:
    """Names of the configs in a config group (e.g. ``"attack"``) of the running Hydra app."""
    return sorted(GlobalHydra.instance().config_loader().get_group_options(group))


def _paragraph(message: str) -> str:
    return textwrap.fill(" ".join(message.split()), width=100)


def probe_main(cfg: DictConfig) -> dict[str, Any] | None:
    """Run one probe job from Hydra's config; report bad settings without a traceback.

    In a single run a bad setting prints one paragraph to stderr and exits with
    status 2. In a multirun the job leaves ``error.txt`` (so the sweep report
    lists it as failed), logs the paragraph and returns, so the other jobs go on.
    """
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        if "attack" not in cfg:
            raise ProbeConfigError(
                "no attack chosen: add one of " + ", ".join(f"+attack={name}" for name in available("attack")),
                "+attack",
            )
        settings = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
        return run_probe(settings, output_dir, overrides)
    except ProbeConfigError as error:
        message = _paragraph(f"rai_probe: {error}")
        write_error(output_dir, message)
        log.error("%s", message)
        if not multirun:
            print(f"\n{message}\n", file=sys.stderr)
            sys.exit(EXIT_BAD_CONFIG)
        return None
    except Exception as error:  # an unexpected failure: keep the traceback, mark the job failed
        write_error(output_dir, f"{type(error).__name__}: {error}")
        raise

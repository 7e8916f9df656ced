"""The probe job as the scripts and Hydra see it: ``python scripts/probe.py +attack=l1q``.

:func:`probe_job` is the job function :func:`~rai_probe.jobs.hydra_app.hydra_main`
runs for every (multi)run: it lists the attacks when none was chosen and runs
:func:`~rai_probe.probing.run.run_probe`. Errors, Ctrl-C and sweeps are handled
by :mod:`rai_probe.jobs.hydra_app`: a bad setting is one paragraph naming the
override (exit status 2, ``error.txt``), Ctrl-C one line (exit status 130).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..jobs.errors import ConfigError, typed_override
from ..jobs.hydra_app import hydra_main
from .run import run_probe

__all__ = ["probe_job", "main", "available", "CONFIG_DIR"]

#: The project's Hydra configs (``probe.yaml`` and its groups).
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def available(group: str, config_dir: str | os.PathLike = CONFIG_DIR) -> list[str]:
    """Names of the configs of a config group (e.g. ``"attack"``).

    Examples
    --------
    >>> "l1q" in available("attack")
    True
    """
    return sorted(path.stem for path in (Path(config_dir) / group).glob("*.yaml"))


def probe_job(settings: Mapping[str, Any], output_dir: Path, overrides: Sequence[str]) -> dict[str, Any]:
    """Run one probe job from its resolved settings (the task of ``scripts/probe.py``)."""
    if settings.get("attack") is None:
        raise ConfigError(
            "no attack chosen: add one of " + ", ".join(f"+attack={name}" for name in available("attack")),
            typed_override("+attack", overrides),
        )
    return run_probe(settings, output_dir, overrides)


def main(argv: Sequence[str] | None = None) -> int:
    """``python scripts/probe.py [overrides]``; returns the exit status."""
    return hydra_main(probe_job, config_name="probe", config_dir=CONFIG_DIR, argv=argv)

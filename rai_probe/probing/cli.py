"""The probe job as the commands and Hydra see it: ``rai-probe +attack=l1q`` (or ``python scripts/probe.py``).

:func:`probe_job` is the job function :func:`~rai_probe.jobs.hydra_app.hydra_main`
runs for every (multi)run: it lists the attacks when none was chosen and runs
:func:`~rai_probe.probing.run.run_probe`. Errors, Ctrl-C and sweeps are handled
by :mod:`rai_probe.jobs.hydra_app`: a bad setting is one paragraph naming the
override (exit status 2, ``error.txt``), Ctrl-C one line (exit status 130).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from ..jobs.config_dir import CONFIG_DIR, available
from ..jobs.hydra_app import hydra_main
from .job import require_attack
from .run import run_probe

# CONFIG_DIR and available (rai_probe.jobs.config_dir) are re-exported: the probe's configs are that tree.
__all__ = ["probe_job", "main", "available", "CONFIG_DIR"]


def probe_job(settings: Mapping[str, Any], output_dir: Path, overrides: Sequence[str]) -> dict[str, Any]:
    """Run one probe job from its resolved settings (the task of ``rai-probe`` and ``scripts/probe.py``)."""
    require_attack(settings, overrides)
    return run_probe(settings, output_dir, overrides)


def main(argv: Sequence[str] | None = None) -> int:
    """``rai-probe [overrides]`` (``python scripts/probe.py [overrides]`` in a checkout); returns the exit status."""
    return hydra_main(probe_job, config_name="probe", config_dir=CONFIG_DIR, argv=argv)

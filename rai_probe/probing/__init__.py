"""Probing: run an attack from a config and turn its result into metrics, pictures and reports.

One job flows config -> model -> data -> plan -> attack -> metrics -> files:

settings
    Checks a probe config and builds the attack, model, images and plan
    (:class:`ProbeConfigError` names the override that fixes a problem).
run
    :func:`run_probe`: one job, writing every output into its directory.
metrics, artifacts, figures
    Per-image metrics and their summary; ``metrics.json``, ``per_image.csv``,
    ``perturbations.pt``; batch grids, loss traces, class-by-class grids.
report
    Tables and plots over a multirun sweep (``scripts/report.py``).
cli
    The Hydra side of ``scripts/probe.py``.
"""

from .report import collect_jobs, write_report
from .run import run_probe
from .settings import ProbeConfigError

__all__ = ["run_probe", "ProbeConfigError", "collect_jobs", "write_report"]

"""What every job script shares: typed settings, run directories, errors that name the override.

* :mod:`~rai_probe.jobs.schema`: dataclass schemas and the strict
  :func:`~rai_probe.jobs.schema.check_settings`.
* :mod:`~rai_probe.jobs.errors`: :class:`~rai_probe.jobs.errors.ConfigError`
  and the override the user typed.
* :mod:`~rai_probe.jobs.rundir`: the run directory's lock, completion markers
  and status.
* :mod:`~rai_probe.jobs.hydra_app`: the Hydra entry point of the commands and
  scripts, and the sweep summary.
* :mod:`~rai_probe.jobs.config_dir`: where the configs they compose live
  (``rai_probe/configs/``, shipped in the package).
"""

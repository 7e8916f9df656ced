"""The Hydra side of every job script: one paragraph per bad setting, one line per Ctrl-C, honest sweeps.

:func:`hydra_main` runs a Hydra app whose task is a *job function*
``job(settings, output_dir, overrides)`` and returns the process's exit
status. Around every job it:

* holds the run directory (:class:`~rai_probe.jobs.rundir.RunDirectory`):
  a directory another live job uses is refused before anything is written
  there, and stale completion markers are removed before any check can fail;
* saves Hydra's record of the job (``.hydra/config.yaml``, ``hydra.yaml``,
  ``overrides.yaml``) only once the directory is held;
* turns a :class:`~rai_probe.jobs.errors.ConfigError` into one paragraph on
  stderr (printed once), ``error.txt`` and exit status 2; in a multirun the
  job is marked failed and the sweep goes on;
* turns Ctrl-C (SIGINT) into one line and exit status 130 (a job function
  saves what it finished first, see :class:`JobInterrupted`);
* reports Hydra's own composition errors (unknown config group option, key
  typo, bad override syntax) and a run directory that cannot be created as
  one paragraph with exit status 2, leaving ``error.txt`` in an existing run
  directory given by ``hydra.run.dir=...``.

A sweep whose jobs failed exits non-zero after all its jobs ran, with one
summary naming them (:class:`SweepSummary`, a Hydra callback the job configs
register); every other job keeps its results.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from hydra.experimental.callback import Callback

from .errors import EXIT_BAD_CONFIG, EXIT_INTERRUPTED, ConfigError, paragraph, typed_override
from .rundir import RunDirectory, RunDirectoryBusy, job_status, mark_interrupted, write_error

__all__ = ["hydra_main", "run_task", "JobInterrupted", "SweepSummary", "JobFunction"]

log = logging.getLogger("rai_probe.jobs")

#: A job: ``job(settings, output_dir, overrides)``, settings a plain (resolved) mapping.
JobFunction = Callable[[Mapping[str, Any], Path, Sequence[str]], Any]


class JobInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a job after it saved what it had finished.

    Parameters
    ----------
    finished, planned : int
        Units of work done and planned (e.g. attacked images).
    unit : str, optional
        What the units are.
    """

    def __init__(self, finished: int, planned: int, unit: str = "images") -> None:
        super().__init__(f"interrupted after {finished} of {planned} {unit}")
        self.finished = finished
        self.planned = planned
        self.unit = unit


def _print(message: str) -> None:
    print(f"\n{message}\n", file=sys.stderr, flush=True)


def _save_hydra_record(cfg: Any, hydra_cfg: Any, output_dir: Path) -> None:
    """Hydra's ``.hydra/`` files, written by the job once it holds its directory."""
    from omegaconf import OmegaConf

    if hydra_cfg.output_subdir is not None:  # Hydra wrote them itself
        return
    record = output_dir / ".hydra"
    record.mkdir(parents=True, exist_ok=True)
    task_cfg = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"]) if "hydra" in cfg else cfg
    OmegaConf.save(task_cfg, record / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": hydra_cfg}), record / "hydra.yaml")
    OmegaConf.save(hydra_cfg.overrides.task, record / "overrides.yaml")


def run_task(cfg: Any, job: JobFunction) -> Any:
    """Run ``job`` as the task function of a Hydra app (see the module docs for what surrounds it)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    overrides = list(hydra_cfg.overrides.task)
    where = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    try:
        run_dir = RunDirectory(output_dir, setting=where).__enter__()
    except (RunDirectoryBusy, OSError) as error:  # never write into another job's directory
        reason = str(error) if isinstance(error, RunDirectoryBusy) else f"cannot write the run directory: {error}"
        message = paragraph(f"rai_probe: {ConfigError(reason, typed_override(where, overrides))}")
        _print(message)
        if multirun:
            return None
        raise SystemExit(EXIT_BAD_CONFIG) from None
    try:
        _save_hydra_record(cfg, hydra_cfg, output_dir)
        settings = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
        return job(settings, output_dir, overrides)
    except ConfigError as error:
        message = paragraph(f"rai_probe: {error}")
        write_error(output_dir, message)
        if multirun:
            log.error("%s", message)
            return None
        _print(message)
        raise SystemExit(EXIT_BAD_CONFIG) from None
    except KeyboardInterrupt as stop:
        if not isinstance(stop, JobInterrupted):
            mark_interrupted(output_dir, "interrupted before any result was saved")
            line = f"rai_probe: interrupted; nothing was finished (the job in {output_dir} is marked interrupted)"
        else:
            line = (
                f"rai_probe: {stop}; their results are saved in {output_dir} (marked interrupted, not "
                "complete)"
            )
        print(line, file=sys.stderr, flush=True)
        raise SystemExit(EXIT_INTERRUPTED) from None
    except Exception as error:  # an unexpected failure: keep the traceback, mark the job failed
        write_error(output_dir, f"{type(error).__name__}: {error}\n\n{traceback.format_exc()}")
        if not multirun:
            raise
        log.error("job in %s failed: %s: %s (traceback in error.txt)", output_dir, type(error).__name__, error)
        return None
    finally:
        run_dir.release()


def _explicit_run_dir(argv: Sequence[str]) -> Path | None:
    for arg in argv:
        key, _, value = arg.partition("=")
        if key.lstrip("+") == "hydra.run.dir" and value:
            return Path(value)
    return None


def _report_startup_error(message: str, argv: Sequence[str]) -> int:
    """A failure before the job started: one paragraph; ``error.txt`` in an existing explicit run dir."""
    text = paragraph(f"rai_probe: {message}")
    run_dir = _explicit_run_dir(argv)
    if run_dir is not None and run_dir.is_dir():
        try:
            with RunDirectory(run_dir):
                write_error(run_dir, text)
        except (RunDirectoryBusy, OSError):
            pass  # another live job's directory, or not writable: leave it alone
    _print(text)
    return EXIT_BAD_CONFIG


_SWEEP_FUNCTIONS = ("choice(", "range(", "glob(", "interval(")


def swept_group_overrides(argv: Sequence[str]) -> list[str]:
    """``argv`` with the overrides inside a swept appended group made to work in a multirun.

    In a multirun Hydra first composes the config without the swept overrides,
    so with ``-m +attack=l1q,l2 attack.steps=5`` the group ``attack`` does
    not exist yet when ``attack.steps=5`` is applied and the whole sweep
    fails ("Could not override 'attack.steps'"). Such overrides (of a group
    appended with ``+group=`` and swept) become ``++group.key=value``, which
    sets the key whether or not the group is there, so every job gets its
    group's config with the value overridden. Anything else is left as typed.

    Examples
    --------
    >>> swept_group_overrides(["-m", "+attack=l1q,l2", "attack.steps=5", "n_images=4"])
    ['-m', '+attack=l1q,l2', '++attack.steps=5', 'n_images=4']
    >>> swept_group_overrides(["+attack=l1q,l2", "attack.steps=5"])      # no multirun: as typed
    ['+attack=l1q,l2', 'attack.steps=5']
    >>> swept_group_overrides(["-m", "+attack=l1q", "attack.epsilon=5,10"])  # group not swept
    ['-m', '+attack=l1q', 'attack.epsilon=5,10']
    """
    words = list(argv)
    if not any(word in ("-m", "--multirun") or word == "hydra.mode=MULTIRUN" for word in words):
        return words
    swept = set()
    for word in words:
        if word.startswith("+") and not word.startswith("++") and "=" in word:
            key, value = word[1:].split("=", 1)
            if "." not in key and ("," in value or value.startswith(_SWEEP_FUNCTIONS)):
                swept.add(key)
    if not swept:
        return words
    return [
        f"++{word}" if not word.startswith(("+", "~", "-")) and word.split(".", 1)[0] in swept
        and "." in word.split("=", 1)[0] else word
        for word in words
    ]


def hydra_main(
    job: JobFunction, *, config_name: str, config_dir: str | os.PathLike, argv: Sequence[str] | None = None
) -> int:
    """Run the Hydra app of ``config_name`` in ``config_dir`` with ``job`` as its task; return the exit status.

    Parameters
    ----------
    job : JobFunction
        ``job(settings, output_dir, overrides)``.
    config_name : str
        The primary config (``"probe"`` for ``probe.yaml``).
    config_dir : path
        The directory holding it (absolute, or relative to the working directory); the
        shipped jobs use the package's tree, :data:`rai_probe.jobs.config_dir.CONFIG_DIR`.
        A missing ``<config_dir>/<config_name>.yaml`` is one paragraph and exit status 2.
    argv : sequence of str, optional
        Command-line arguments (default: ``sys.argv[1:]``).
    """
    import hydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    argv = swept_group_overrides(sys.argv[1:] if argv is None else argv)
    primary = Path(config_dir).resolve() / f"{config_name}.yaml"
    if not primary.is_file():  # e.g. a package installed without its data files
        return _report_startup_error(
            f"the job's config {primary} does not exist; rai_probe ships its configs inside the package "
            "(rai_probe/configs/): reinstall it (pip install -c constraints.txt .) if they are missing",
            argv,
        )
    started = False

    def task(cfg: Any) -> Any:
        nonlocal started
        started = True
        return run_task(cfg, job)

    app = hydra.main(version_base="1.3", config_path=str(Path(config_dir).resolve()), config_name=config_name)(task)
    saved_argv, saved_env = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    sys.argv = [sys.argv[0] if sys.argv else config_name, *argv]
    os.environ["HYDRA_FULL_ERROR"] = "1"  # errors come back here, to be reported as one paragraph
    try:
        app()
        return 0
    except SystemExit as exit:
        return exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
    except KeyboardInterrupt:
        print("rai_probe: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except (HydraException, OmegaConfBaseException) as error:
        cause = f" ({error.__cause__})" if isinstance(error.__cause__, OmegaConfBaseException) else ""
        return _report_startup_error(f"{error}{cause}", argv)
    except OSError as error:
        if started:
            raise
        where = "hydra.sweep.dir" if any(a in ("-m", "--multirun") for a in argv) else "hydra.run.dir"
        return _report_startup_error(
            str(ConfigError(f"cannot create or write the run directory: {error}", typed_override(where, argv))),
            argv,
        )
    finally:
        sys.argv = saved_argv
        if saved_env is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved_env


def _job_dirs(sweep_dir: Path) -> list[Path]:
    """Job folders of a sweep: those holding Hydra's ``.hydra/overrides.yaml``, in numeric order."""
    found = [path.parent.parent for path in sweep_dir.glob("**/.hydra/overrides.yaml")]
    return sorted(found, key=lambda p: [int(part) if part.isdigit() else part for part in p.relative_to(sweep_dir).parts])


class SweepSummary(Callback):
    """Hydra callback: after every job of a sweep ran, exit non-zero naming the failed jobs.

    Registered in the job configs as ``hydra.callbacks.sweep_summary``. It
    reads each job's state from its directory (so it works for every
    launcher, local or SLURM), prints one summary line to stderr and raises
    ``SystemExit(1)`` when any job failed, was interrupted or left no result.
    """

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        jobs = _job_dirs(sweep_dir) if sweep_dir.is_dir() else []
        bad = [(job, job_status(job)) for job in jobs]
        bad = [(job, status) for job, status in bad if status != "complete"]
        if not bad:
            return
        shown = []
        for job, status in bad[:10]:
            first = ""
            error_file = job / "error.txt"
            if status == "failed" and error_file.is_file():
                first = error_file.read_text(encoding="utf-8", errors="replace").strip().split("\n\n")[0]
                first = " ".join(first.split()).removeprefix("rai_probe: ")
                first = first if len(first) <= 200 else first[:199] + "…"
            name = str(job.relative_to(sweep_dir))
            shown.append(f"job {name} {status}" + (f" ({first})" if first else ""))
        more = f"; and {len(bad) - 10} more" if len(bad) > 10 else ""
        print(
            f"\nrai_probe: {len(bad)} of {len(jobs)} jobs of the sweep did not complete: "
            f"{'; '.join(shown)}{more}. The other jobs' results are in {sweep_dir}.\n",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(1)

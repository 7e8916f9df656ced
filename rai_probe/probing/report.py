"""The report of a sweep: one table over all jobs of a Hydra multirun, curves and a heatmap gallery.

A Hydra multirun directory holds one folder per job (``0/``, ``1/``, ...;
possibly nested under date/time folders), each with ``.hydra/config.yaml``
and ``.hydra/overrides.yaml`` (written when the job starts) and the files of
:mod:`rai_probe.probing.artifacts`. :func:`collect_jobs` reads every job,
whatever its state; :func:`write_report` writes, by default into
``SWEEP/report/``:

==========================  ================================================================
file                        content
==========================  ================================================================
``report.csv``              one row per job: status, parameters, summary metrics (clean
                            accuracy, robust accuracy, flip rate, success rate, mean budget
                            used, sparsity; see :mod:`rai_probe.probing.metrics`), note
``report.md``               the same table, then the failed jobs (first line of their
                            error) and the unfinished ones, and links to the pictures
``success_vs_epsilon.png``  attack success rate against epsilon, one line per q
``sparsity_vs_epsilon.png`` median L0 fraction against epsilon (all images; successful
                            images), one line per q
``gallery.png``             the first image's ``|δ|`` heatmap of every complete job
==========================  ================================================================

Attacks without ``q`` (L2, L∞) form the line ``q=n/a``; when other parameters
(attack, model, ...) vary across the sweep they name the lines too, and jobs
differing only in their seed are averaged. The pictures cover the complete
jobs only, and the report says so whenever some jobs failed or did not
finish; with no complete job the table is still written and the pictures are
skipped (and stale ones from an earlier report removed).

Examples
--------
>>> import tempfile
>>> from pathlib import Path
>>> from rai_probe.probing.report import collect_jobs, summary_line
>>> with tempfile.TemporaryDirectory() as tmp:
...     for job in ("0", "1"):
...         (Path(tmp) / job / ".hydra").mkdir(parents=True)
...         _ = (Path(tmp) / job / ".hydra" / "overrides.yaml").write_text(f"- attack.epsilon={job}\\n")
...     _ = (Path(tmp) / "1" / "error.txt").write_text("ValueError: bad\\n")
...     print(summary_line(collect_jobs(tmp)))
2 jobs: 0 complete, 1 failed (job 1), 1 unfinished (job 0)
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .._io import write_atomic
from .artifacts import ERROR_FILE, METRICS_FILE, job_status, load_perturbations, read_metrics

__all__ = [
    "JobRecord",
    "collect_jobs",
    "summary_line",
    "report_rows",
    "write_report",
    "REPORT_FILES",
    "main",
]

#: Names of the report's files, by the keys :func:`write_report` returns.
REPORT_FILES = {
    "csv": "report.csv",
    "markdown": "report.md",
    "success_vs_epsilon": "success_vs_epsilon.png",
    "sparsity_vs_epsilon": "sparsity_vs_epsilon.png",
    "gallery": "gallery.png",
    "epsilon_star": "epsilon_star.png",
}

#: Parameters of interest: (column, dotted path in the job's config).
PARAMETERS = (
    ("mode", "mode.name"),
    ("target", "mode.target"),
    ("model", "model.name"),
    ("data", "data.name"),
    ("attack", "attack.name"),
    ("optimizer", "attack.optimizer"),
    ("epsilon", "attack.epsilon"),
    ("q", "attack.q"),
    ("steps", "attack.steps"),
    ("lr", "attack.lr"),
    ("n_images", "n_images"),
    ("seed", "seed"),
)

#: Metric columns: (column, path in the summary of ``metrics.json``).
METRICS = (
    ("n_images_run", ("n_images",)),
    ("clean_accuracy", ("clean_accuracy",)),
    ("robust_accuracy", ("robust_accuracy",)),
    ("flip_rate", ("flip_rate",)),
    ("success_rate", ("attack_success_rate",)),
    ("mean_budget_used", ("budget_used", "mean")),
    ("median_l0_fraction", ("l0_fraction", "median")),
    ("median_l0_pixels", ("l0_pixels", "median")),
    ("mean_l1", ("l1", "mean")),
    ("mean_l2", ("l2", "mean")),
    ("mean_linf", ("linf", "mean")),
    ("median_steps_to_success", ("steps_to_success", "median")),
    ("successful_median_l0_fraction", ("successful", "l0_fraction", "median")),
    ("median_pixels_to_flip", ("quality", "pixels_to_flip", "median")),
    ("median_pixels_to_flip_random", ("quality", "pixels_to_flip_random", "median")),
    ("mean_insertion_auc", ("quality", "insertion_auc", "mean")),
    ("mean_deletion_auc", ("quality", "deletion_auc", "mean")),
    ("mean_droppable_fraction", ("quality", "droppable_fraction", "mean")),
    ("mean_stability_iou", ("quality", "stability_iou", "mean")),
    ("median_epsilon_star", ("epsilon_min", "median")),
    ("q25_epsilon_star", ("epsilon_min", "q25")),
    ("q75_epsilon_star", ("epsilon_min", "q75")),
)

#: At most this many panels in ``gallery.png``.
MAX_GALLERY = 48

_STATUSES = ("complete", "interrupted", "failed", "unfinished")


@dataclass
class JobRecord:
    """One job of a sweep, as :func:`collect_jobs` found it.

    Attributes
    ----------
    job_dir : Path
    status : str
        ``"complete"``, ``"interrupted"``, ``"failed"`` or ``"unfinished"``
        (:func:`~rai_probe.probing.artifacts.job_status`).
    overrides : list of str
        The job's overrides (``.hydra/overrides.yaml``).
    params : dict
        The parameters of :data:`PARAMETERS` found in the job's config
        (missing ones left out) plus every swept (overridden) config value,
        under its dotted key.
    summary : dict or None
        The ``summary`` of ``metrics.json`` for a complete job (for an
        interrupted one: of the images it finished).
    error : str or None
        The text of ``error.txt`` for a failed job.
    name : str
        The job's folder relative to the sweep directory (``"3"``).
    notes : list of str
        Problems met while reading the job (an unreadable config, ...).

    Examples
    --------
    >>> from pathlib import Path
    >>> JobRecord(Path("sweep/3"), "failed", [], {}, None, "ValueError: bad\\nmore", name="3").error_line
    'ValueError: bad'
    """

    job_dir: Path
    status: str
    overrides: list[str]
    params: dict
    summary: dict | None
    error: str | None
    name: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def error_line(self) -> str | None:
        """The one-line reason of a failure: the first line of the error, or the last line of a bare traceback."""
        if not self.error:
            return None
        lines = [line.strip() for line in self.error.splitlines() if line.strip()]
        if not lines:
            return None
        return lines[-1] if lines[0].startswith("Traceback") else lines[0]


# --------------------------------------------------------------------------- #
# reading a sweep
# --------------------------------------------------------------------------- #
def _natural_key(name: str) -> list:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name) if part]


def _is_job(directory: Path) -> bool:
    return (
        (directory / ".hydra").is_dir()
        or (directory / METRICS_FILE).is_file()
        or (directory / ERROR_FILE).is_file()
    )


def _find_job_dirs(sweep_dir: Path, skip: Path | None) -> list[Path]:
    if _is_job(sweep_dir):
        return [sweep_dir]
    found = []
    for root, dirs, _ in os.walk(sweep_dir):
        here = Path(root)
        keep = []
        for name in sorted(dirs):
            child = here / name
            if name.startswith(".") or (skip is not None and child.resolve() == skip):
                continue
            if _is_job(child):
                found.append(child)
            else:
                keep.append(name)
        dirs[:] = keep  # descend only into folders that are not jobs themselves
    return found


def _load_yaml(path: Path) -> Any:
    from omegaconf import OmegaConf

    loaded = OmegaConf.load(path)
    try:
        return OmegaConf.to_container(loaded, resolve=True)
    except Exception:  # interpolations needing Hydra's runtime (${hydra:...}): keep them as text
        return OmegaConf.to_container(loaded, resolve=False)


def _lookup(config: Any, path: str) -> Any:
    value = config
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _override_key(override: str) -> tuple[str | None, str]:
    """``"+attack.q=0.9"`` -> ``("attack.q", "0.9")``; deletions and Hydra's own keys -> ``(None, ...)``."""
    key, _, value = override.partition("=")
    key = key.lstrip("+").split("@")[0].strip()
    if not key or key.startswith("~") or key.startswith("hydra.") or key == "hydra":
        return None, value
    return key, value


def _params(config: Any, overrides: Sequence[str]) -> dict:
    params: dict[str, Any] = {}
    config = config if isinstance(config, dict) else {}
    for column, path in PARAMETERS:
        value = _lookup(config, path)
        if value is None and "." in path:  # a group given as a plain string: model: resnet18
            head = _lookup(config, path.split(".")[0])
            value = head if path.endswith(".name") and isinstance(head, (str, int, float)) else None
        if value is not None:
            params[column] = value
    known = {path for _, path in PARAMETERS}
    for override in overrides:
        key, text = _override_key(override)
        if key is None or key in known:
            continue
        value = _lookup(config, key)
        if isinstance(value, dict):  # a config-group choice (attack=l2): named by its .name column
            if f"{key}.name" in known:
                continue
            value = text
        params[key] = text if value is None else value
    return params


def _unspendable_budget(metrics: dict) -> str | None:
    """The note of a job whose attack could not spend its budget (``metrics.json``'s ``"budget"``), else None.

    Examples
    --------
    >>> _unspendable_budget({"budget": {"norm": "l1", "epsilon": 20.0, "reachable_norm": 8.0}})
    'attack.epsilon=20 cannot be spent: no iterate reaches an l1 norm above 8 (budget_used <= 0.4)'
    >>> _unspendable_budget({"budget": {"norm": "l1", "epsilon": 20.0, "reachable_norm": None}}) is None
    True
    """
    budget = metrics.get("budget")
    if not isinstance(budget, dict):
        return None
    epsilon, reachable = _number(budget.get("epsilon")), _number(budget.get("reachable_norm"))
    if epsilon is None or reachable is None or epsilon <= 0 or reachable >= epsilon * (1 - 1e-6):
        return None
    return (f"attack.epsilon={epsilon:g} cannot be spent: no iterate reaches an {budget.get('norm')} norm "
            f"above {reachable:.4g} (budget_used <= {reachable / epsilon:.3g})")


def _read_job(job_dir: Path, name: str) -> JobRecord:
    notes: list[str] = []
    config: Any = None
    overrides: list[str] = []
    hydra_dir = job_dir / ".hydra"
    for file_name in ("config.yaml", "overrides.yaml"):
        path = hydra_dir / file_name
        if not path.is_file():
            continue
        try:
            loaded = _load_yaml(path)
        except Exception as error:  # a half-written or hand-edited file must not stop the report
            notes.append(f"unreadable .hydra/{file_name}: {type(error).__name__}")
            continue
        if file_name == "config.yaml":
            config = loaded
        elif isinstance(loaded, list):
            overrides = [str(item) for item in loaded]
    status = job_status(job_dir)
    summary = None
    metrics: dict = {}
    if (job_dir / METRICS_FILE).is_file():
        try:
            metrics = read_metrics(job_dir)
        except ValueError as error:
            notes.append(f"unreadable {METRICS_FILE}: {error}")
    if status == "interrupted":
        notes.append(
            f"interrupted (Ctrl-C) after {metrics.get('rows_finished', '?')} of {metrics.get('rows_planned', '?')} "
            "images: its numbers cover those only"
        )
    unspendable = _unspendable_budget(metrics)
    if unspendable:
        notes.append(unspendable)
    if status in ("complete", "interrupted"):
        summary = metrics.get("summary") if isinstance(metrics.get("summary"), dict) else {}
        if config is None:
            config = metrics.get("config")
        if not overrides and isinstance(metrics.get("overrides"), list):
            overrides = [str(item) for item in metrics["overrides"]]
    error = None
    if status == "failed":
        error = (job_dir / ERROR_FILE).read_text(encoding="utf-8", errors="replace").strip()
    return JobRecord(job_dir, status, overrides, _params(config, overrides), summary, error, name, notes)


def collect_jobs(sweep_dir: str | os.PathLike, *, skip: str | os.PathLike | None = None) -> list[JobRecord]:
    """Read every job of a sweep directory, complete or not, sorted by job number.

    A job is a folder holding ``.hydra/``, ``metrics.json`` or ``error.txt``;
    folders under ``sweep_dir`` are searched recursively (nested sweeps),
    except hidden ones and ``skip`` (the report's own folder). A
    ``sweep_dir`` that is itself a job gives that one job.

    Raises
    ------
    FileNotFoundError
        When ``sweep_dir`` does not exist, is not a directory or holds no job.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     for job in ("10", "2"):
    ...         (Path(tmp) / job / ".hydra").mkdir(parents=True)
    ...     print([(job.name, job.status) for job in collect_jobs(tmp)])
    [('2', 'unfinished'), ('10', 'unfinished')]
    """
    root = Path(sweep_dir)
    if not root.exists():
        raise FileNotFoundError(f"sweep directory {str(root)} does not exist")
    if not root.is_dir():
        raise FileNotFoundError(f"sweep directory {str(root)} is not a directory")
    skip_dir = Path(skip).resolve() if skip is not None else None
    job_dirs = _find_job_dirs(root, skip_dir)
    if not job_dirs:
        raise FileNotFoundError(
            f"sweep directory {str(root)} holds no job (expected Hydra multirun job folders "
            f"such as {str(root / '0')} with a .hydra/ folder)"
        )
    named = [(directory, directory.relative_to(root).as_posix()) for directory in job_dirs]
    named.sort(key=lambda item: _natural_key(item[1]))
    return [_read_job(directory, name) for directory, name in named]


def summary_line(jobs: Sequence[JobRecord]) -> str:
    """``"6 jobs: 4 complete, 1 failed (job 3), 1 unfinished (job 5)"`` (interrupted jobs named when any).

    Examples
    --------
    >>> from pathlib import Path
    >>> jobs = [JobRecord(Path(n), s, [], {}, None, None, name=n)
    ...         for n, s in [("0", "complete"), ("1", "failed"), ("2", "failed")]]
    >>> summary_line(jobs)
    '3 jobs: 1 complete, 2 failed (jobs 1, 2), 0 unfinished'
    """
    parts = []
    for status in _STATUSES:
        names = [job.name for job in jobs if job.status == status]
        if status == "interrupted" and not names:
            continue
        text = f"{len(names)} {status}"
        if names and status != "complete":
            text += f" ({'job' if len(names) == 1 else 'jobs'} {', '.join(names)})"
        parts.append(text)
    return f"{len(jobs)} job{'' if len(jobs) == 1 else 's'}: " + ", ".join(parts)


# --------------------------------------------------------------------------- #
# the table
# --------------------------------------------------------------------------- #
def _metric(summary: dict | None, path: Sequence[str]) -> Any:
    value: Any = summary
    for part in path:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _param_columns(jobs: Sequence[JobRecord]) -> list[str]:
    present = {key for job in jobs for key in job.params}
    fixed = [column for column, _ in PARAMETERS if column in present]
    swept = sorted(present - set(fixed))
    return fixed + swept


def _note(job: JobRecord) -> str:
    if job.status == "failed":
        text = job.error_line or "error.txt is empty"
    elif job.status == "unfinished":
        text = "no metrics.json: still running, killed or never started"
    else:
        text = ""
    return "; ".join(filter(None, [text] + job.notes))


def report_rows(jobs: Sequence[JobRecord]) -> tuple[list[str], list[dict[str, Any]]]:
    """The report table: its columns and one row (dict) per job; missing values are ``None``.

    Examples
    --------
    >>> from pathlib import Path
    >>> job = JobRecord(Path("0"), "complete", ["attack.epsilon=5"], {"attack": "l1q", "epsilon": 5},
    ...                 {"attack_success_rate": 0.75}, None, name="0")
    >>> columns, rows = report_rows([job])
    >>> columns[:5], rows[0]["success_rate"], rows[0]["clean_accuracy"]
    (['job', 'status', 'attack', 'epsilon', 'n_images_run'], 0.75, None)
    """
    params = _param_columns(jobs)
    columns = ["job", "status"] + params + [column for column, _ in METRICS] + ["note"]
    rows = []
    for job in jobs:
        row: dict[str, Any] = {"job": job.name, "status": job.status}
        row.update({key: job.params.get(key) for key in params})
        row.update({column: _metric(job.summary, path) for column, path in METRICS})
        row["note"] = _note(job)
        rows.append(row)
    return columns, rows


def _cell(value: Any, *, markdown: bool) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—" if markdown else ""
    if isinstance(value, float):
        return f"{value:.4g}" if markdown else repr(value)
    text = str(value)
    return text.replace("|", "\\|").replace("\n", " ") if markdown else text


def _csv_text(columns: list[str], rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row[column], markdown=False) for column in columns])
    return buffer.getvalue()


def _fixed_parameters(columns: list[str], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Parameter columns with one value (set in every job) across a sweep of several jobs."""
    if len(rows) < 2:
        return {}
    parameters = [c for c in columns if c not in ("job", "status", "note") and c not in dict(METRICS)]
    fixed = {}
    for column in parameters:
        values = {repr(row[column]) for row in rows}
        if len(values) == 1 and rows[0][column] is not None:
            fixed[column] = rows[0][column]
    return fixed


def _markdown_table(columns: list[str], rows: list[dict[str, Any]], leave_out: Iterable[str]) -> list[str]:
    skip = set(leave_out) | {"note"}
    columns = [column for column in columns if column not in skip]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row[column], markdown=True) for column in columns) + " |")
    return lines


# --------------------------------------------------------------------------- #
# the pictures
# --------------------------------------------------------------------------- #
def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _q_label(job: JobRecord) -> str:
    q = job.params.get("q")
    return "q=n/a" if q is None else f"q={q}"


def _line_keys(jobs: Sequence[JobRecord]) -> list[str]:
    """The parameters (besides q) that tell the lines apart: those that vary, except epsilon
    and seed, and except one that only repeats the ones before it (optimizer given attack)."""
    order = [column for column, _ in PARAMETERS]
    present = {key for job in jobs for key in job.params} - {"epsilon", "q", "seed"}
    keys = sorted(present, key=lambda key: (order.index(key) if key in order else len(order), key))
    kept: list[str] = []
    distinct = 1
    for key in keys:
        count = len({tuple(repr(job.params.get(k)) for k in kept + [key]) for job in jobs})
        if count > distinct:  # the key splits some group further
            kept.append(key)
            distinct = count
    return kept


def _groups(jobs: Sequence[JobRecord]) -> dict[str, list[JobRecord]]:
    """Jobs grouped into the lines of the epsilon plots: by q and the parameters of :func:`_line_keys`."""
    keys = _line_keys(jobs)
    groups: dict[str, list[JobRecord]] = {}
    for job in jobs:
        parts = [f"{key}={job.params.get(key, 'n/a')}" for key in keys] + [_q_label(job)]
        groups.setdefault(", ".join(parts), []).append(job)
    return dict(sorted(groups.items()))


def _curves(groups: dict[str, list[JobRecord]], path: Sequence[str]) -> tuple[dict, bool]:
    """Per group: mean of the metric per epsilon, epsilons increasing. Also whether any point averages jobs."""
    curves, averaged = {}, False
    for label, members in groups.items():
        by_epsilon: dict[float, list[float]] = {}
        for job in members:
            value = _number(_metric(job.summary, path))
            if value is not None:
                by_epsilon.setdefault(_number(job.params["epsilon"]), []).append(value)
        if by_epsilon:
            xs = sorted(by_epsilon)
            averaged |= any(len(by_epsilon[x]) > 1 for x in xs)
            curves[label] = (xs, [sum(by_epsilon[x]) / len(by_epsilon[x]) for x in xs])
    return curves, averaged


def _is_minimal(job: JobRecord) -> bool:
    """A ``mode=minimal`` job: each image has its own ε* (its attack.epsilon is only the bracket's default)."""
    return isinstance((job.summary or {}).get("epsilon_min"), dict)


def _epsilon_star_plot(out_dir: Path, complete: Sequence[JobRecord], notes: list[str]) -> dict[str, Path]:
    """``epsilon_star.png``: the distribution of ε* of every minimal job, as its success-rate curve, one line per job."""
    from .artifacts import read_per_image_csv
    from .figures import CurvePanel, plot_curves

    minimal = [job for job in complete if _is_minimal(job)]
    if not minimal:
        return {}
    groups = _groups(minimal)
    curves = {}
    for label, members in groups.items():
        for job in members:
            try:
                star = read_per_image_csv(job.job_dir)["epsilon_min"]
            except (OSError, ValueError, KeyError) as error:
                notes.append(f"job {job.name}: its eps* could not be read ({error}); left out of the eps* plot")
                continue
            finite = star[~star.isnan()].sort().values.tolist()
            if not finite:
                continue
            n = max(int(star.numel()), 1)
            name = label if len(members) == 1 else f"{label} (job {job.name})"
            curves[name] = (finite, [(k + 1) / n for k in range(len(finite))])
    if not curves:
        notes.append("No minimal job broke any image: the eps* plot was skipped.")
        return {}
    path = plot_curves(
        out_dir / REPORT_FILES["epsilon_star"],
        [CurvePanel("share of images with ε* <= ε", curves, ylim=(-0.02, 1.02))],
        xlabel="radius ε (each image's minimal ε*)",
        title=f"ε* distributions ({len(minimal)} minimal jobs)",
    )
    return {"epsilon_star": path}


def _epsilon_plots(out_dir: Path, complete: Sequence[JobRecord], notes: list[str]) -> dict[str, Path]:
    from .figures import CurvePanel, plot_curves

    complete = [job for job in complete if not _is_minimal(job)]  # their curves are in epsilon_star.png
    if not complete:
        return {}
    with_epsilon = [job for job in complete if _number(job.params.get("epsilon")) is not None]
    if len(with_epsilon) < len(complete):
        notes.append(
            f"{len(complete) - len(with_epsilon)} complete job(s) have no numeric attack.epsilon "
            "and are left out of the epsilon plots."
        )
    if not with_epsilon:
        notes.append("No complete job has an epsilon: the epsilon plots were skipped.")
        return {}
    groups = _groups(with_epsilon)
    written = {}
    success, averaged = _curves(groups, ("attack_success_rate",))
    panel_notes = ["points average jobs that differ only in seed"] if averaged else []
    written["success_vs_epsilon"] = plot_curves(
        out_dir / REPORT_FILES["success_vs_epsilon"],
        [CurvePanel("attack success rate", success, ylim=(-0.02, 1.02), notes=panel_notes)],
        xlabel="epsilon",
        title=f"success rate vs epsilon ({len(with_epsilon)} complete jobs)",
    )
    every, averaged_all = _curves(groups, ("l0_fraction", "median"))
    successful, averaged_ok = _curves(groups, ("successful", "l0_fraction", "median"))
    panel_notes = ["points average jobs that differ only in seed"] if averaged_all or averaged_ok else []
    written["sparsity_vs_epsilon"] = plot_curves(
        out_dir / REPORT_FILES["sparsity_vs_epsilon"],
        [
            CurvePanel("median L0 fraction (changed pixels)", every, title="all images", notes=panel_notes),
            CurvePanel("median L0 fraction (changed pixels)", successful, title="successful images"),
        ],
        xlabel="epsilon",
        title=f"sparsity vs epsilon ({len(with_epsilon)} complete jobs)",
    )
    return written


def _common_success(saved: Iterable[Mapping[str, Any]]) -> int | None:
    """The first image index that succeeded in every job (all of the same length), else None."""
    masks = [item["success"] for item in saved]
    if not masks or len({mask.shape[0] for mask in masks}) != 1:
        return None
    both = masks[0].clone()
    for mask in masks[1:]:
        both &= mask
    hits = both.nonzero()
    return int(hits[0, 0]) if hits.numel() else None


def _gallery_image(success: Any, common: int | None) -> int:
    """The image a job shows: the common success, else its own first success, else image 0."""
    if common is not None:
        return common
    hits = success.nonzero()
    return int(hits[0, 0]) if hits.numel() else 0


def _gallery(out_dir: Path, complete: Sequence[JobRecord], notes: list[str]) -> Path:
    from .figures import heatmap, plot_heatmap_gallery

    shown = list(complete[:MAX_GALLERY])
    if len(shown) < len(complete):
        notes.append(f"The gallery shows the first {len(shown)} of {len(complete)} complete jobs.")
    groups = _groups(shown)
    line_of = {job.name: label for label, members in groups.items() for job in members}
    loaded: dict[str, dict] = {}
    for job in shown:  # one safe load per job
        try:
            saved = load_perturbations(job.job_dir)
            if saved["deltas"].ndim != 4 or saved["deltas"].shape[0] == 0:
                raise ValueError(f"deltas of shape {tuple(saved['deltas'].shape)}")
            loaded[job.name] = saved
        except Exception as error:  # one unreadable or unsafe file must not stop the report
            reason = " ".join(f"{type(error).__name__}: {error}".split())[:300]
            notes.append(
                f"job {job.name}: skipped in the gallery, its perturbations.pt could not be loaded safely ({reason})"
            )
    common = _common_success(loaded.values())
    panels: dict[str, tuple[Any, str, bool]] = {}
    for job in shown:
        parameters = f"{line_of[job.name]}\nepsilon={job.params.get('epsilon', 'n/a')}"
        saved = loaded.get(job.name)
        if saved is None:
            panels[job.name] = (None, f"job {job.name}\n{parameters}\nno perturbations.pt", False)
            continue
        index = _gallery_image(saved["success"], common)
        succeeded = bool(saved["success"][index])
        values = heatmap(saved["deltas"][index : index + 1])[0]
        text = (
            f"job {job.name}\n{parameters}\n"
            f"image {index}: {'success' if succeeded else 'failed'}, max {float(values.max()):.3g}"
        )
        panels[job.name] = (values, text, not succeeded)
    if common is None and loaded:
        notes.append("No image succeeded in every job shown: the gallery shows each job's first success.")

    # a table layout (rows: lines of the plots, columns: epsilon) when each cell holds one job
    epsilons = sorted({_number(job.params.get("epsilon")) for job in shown}, key=lambda x: (x is None, x or 0))
    cells = {(label, _number(job.params.get("epsilon"))) for label, members in groups.items() for job in members}
    if None not in epsilons and len(cells) == len(shown) and len(epsilons) <= 12:
        heatmaps, titles, failed = [], [], []
        for members in groups.values():
            by_epsilon = {_number(job.params["epsilon"]): job for job in members}
            for epsilon in epsilons:
                job = by_epsilon.get(epsilon)
                values, text, bad = panels[job.name] if job is not None else (None, "", False)
                heatmaps.append(values)
                titles.append(text)
                failed.append(bad)
        ncols = len(epsilons)
    else:
        heatmaps = [panels[job.name][0] for job in shown]
        titles = [panels[job.name][1] for job in shown]
        failed = [panels[job.name][2] for job in shown]
        ncols = 6
    return plot_heatmap_gallery(
        out_dir / REPORT_FILES["gallery"],
        heatmaps,
        titles,
        ncols=ncols,
        failed=failed,
        title="|δ| of one image per complete job, on one colour scale: the same image in every job where one\n"
              "succeeded in all (red frame: no success in that job)",
    )


# --------------------------------------------------------------------------- #
# the report
# --------------------------------------------------------------------------- #
def _bullets(items: Iterable[str]) -> list[str]:
    return [f"- {item}" for item in items]


def write_report(
    sweep_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    jobs: Sequence[JobRecord] | None = None,
) -> dict[str, Path]:
    """Write the sweep's table (CSV and markdown) and, over its complete jobs, the curves and the gallery.

    Parameters
    ----------
    sweep_dir : path
        A Hydra multirun directory (see :func:`collect_jobs`).
    out_dir : path, optional
        Where the report goes; default ``sweep_dir / "report"``.
    jobs : sequence of JobRecord, optional
        :func:`collect_jobs` output, when the caller already has it.

    Returns
    -------
    dict of str to Path
        The written files by key of :data:`REPORT_FILES`: always ``"csv"``
        and ``"markdown"``; the pictures only when some job completed.

    Raises
    ------
    FileNotFoundError
        When ``sweep_dir`` is missing or holds no job.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     (Path(tmp) / "0" / ".hydra").mkdir(parents=True)
    ...     written = write_report(tmp)
    ...     print(sorted(written), "No job completed" in written["markdown"].read_text())
    ['csv', 'markdown'] True
    """
    root = Path(sweep_dir)
    target = Path(out_dir) if out_dir is not None else root / "report"
    if jobs is None:
        jobs = collect_jobs(root, skip=target)
    target.mkdir(parents=True, exist_ok=True)
    columns, rows = report_rows(jobs)
    written: dict[str, Path] = {"csv": write_atomic(target / REPORT_FILES["csv"], _csv_text(columns, rows))}

    complete = [job for job in jobs if job.status == "complete"]
    notes: list[str] = []
    pictures: dict[str, Path] = {}
    if complete:
        pictures.update(_epsilon_plots(target, complete, notes))
        pictures.update(_epsilon_star_plot(target, complete, notes))
        pictures["gallery"] = _gallery(target, complete, notes)
    for key in ("success_vs_epsilon", "sparsity_vs_epsilon", "gallery", "epsilon_star"):  # no stale pictures
        stale = target / REPORT_FILES[key]
        if key not in pictures and stale.exists():
            stale.unlink()

    lines = [f"# Sweep report: {root}", "", summary_line(jobs) + ".", ""]
    if not complete:
        lines += ["**No job completed**: the table below is all there is; the plots and the gallery were skipped.", ""]
    elif len(complete) < len(jobs):
        lines += [
            f"**Partial sweep**: only {len(complete)} of {len(jobs)} jobs completed; "
            "the plots and the gallery cover the complete jobs only.",
            "",
        ]
    fixed = _fixed_parameters(columns, rows)
    if fixed:
        settings = ", ".join(f"{key}={_cell(value, markdown=True)}" for key, value in fixed.items())
        lines += [f"Same in every job: {settings}.", ""]
    lines += _markdown_table(columns, rows, fixed) + [""]
    sections = (
        ("failed", "Failed jobs",
         lambda job: f"`{job.error_line or 'error.txt is empty'}` ({job.job_dir / ERROR_FILE})"),
        ("interrupted", "Interrupted jobs",
         lambda job: f"stopped by Ctrl-C; the images it finished are saved, the rest never ran ({job.job_dir})"),
        ("unfinished", "Unfinished jobs",
         lambda job: f"no metrics.json (still running, killed or never started) ({job.job_dir})"),
    )
    for status, heading, describe in sections:
        listed = [job for job in jobs if job.status == status]
        if listed:
            lines += [f"## {heading}", ""] + _bullets(f"job {job.name}: {describe(job)}" for job in listed) + [""]
    reading = [f"job {job.name}: {note}" for job in jobs for note in job.notes]
    if notes or reading:
        lines += ["## Notes", ""] + _bullets(notes + reading) + [""]
    if pictures:
        lines += ["## Pictures", ""]
        lines += [f"![{key.replace('_', ' ')}]({path.name})" for key, path in pictures.items()]
        lines.append("")
    written["markdown"] = write_atomic(target / REPORT_FILES["markdown"], "\n".join(lines))
    written.update(pictures)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """``python scripts/report.py DIR [--out OUT]``: write the report; return the exit status.

    A problem with ``DIR`` or ``OUT`` is one paragraph on stderr and exit
    status 2; a job that cannot be read is named in the report, never fatal.
    """
    import argparse
    import sys

    from ..jobs.errors import EXIT_BAD_CONFIG, paragraph

    parser = argparse.ArgumentParser(description="Report over a sweep: one table of all jobs, curves and a gallery.")
    parser.add_argument("sweep_dir", metavar="DIR", help="a Hydra multirun directory")
    parser.add_argument("--out", default=None, help="where the report goes (default: DIR/report)")
    parser.add_argument(
        "--merge", action="store_true",
        help="merge the shards (data.shard=I data.num_shards=N) of one job into DIR/merged (or --out) instead",
    )
    args = parser.parse_args(argv)
    if args.merge:
        from .merge import merge_shards

        try:
            merged = merge_shards(args.sweep_dir, args.out)
        except (OSError, ValueError) as error:  # ShardMismatchError is a ValueError
            print(paragraph(f"rai_probe: report --merge: {error}"), file=sys.stderr)
            return EXIT_BAD_CONFIG
        print(merged / "metrics.json")
        return 0
    try:
        jobs = collect_jobs(args.sweep_dir, skip=args.out)
        written = write_report(args.sweep_dir, args.out, jobs=jobs)
    except OSError as error:  # missing DIR, no job, an OUT that is a file or not writable
        print(paragraph(f"rai_probe: report: {error}"), file=sys.stderr)
        return EXIT_BAD_CONFIG
    print(written["markdown"])
    print(summary_line(jobs))
    return 0

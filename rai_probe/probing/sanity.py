"""The model-specificity sanity check: one probe, three models, how different their explanations are.

``rai-probe-sanity +attack=l1q`` (rai_probe/configs/sanity.yaml,
docs/sanity_checks.md) runs the same probe (same images, attack, seed and
settings; rai_probe/configs/probe.yaml's meaning) on

* ``robust``: the ``model`` group, the model whose explanations are checked
  (default: the shipped L2-robust ``small_cnn_mnist5k_l2``);
* ``standard``: the ``twin`` group, its standard-trained twin (default:
  the shipped ``small_cnn_mnist5k_standard``);
* ``random``: :func:`~rai_probe.models.randomized_copy` of ``model``, every
  learnable layer reinitialized (the end state of Adebayo et al.'s cascading
  randomization), saved as ``random/model.pt``,

and compares what the attack found. An explanation method passes the check
(Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018) when its
explanations of the trained model differ clearly from those of the random
one. The report also measures how much of each model's perturbation sits on
the digit's strokes, side by side (expected to be most for the robust
model; docs/sanity_checks.md reports what the shipped pair gives).

The run directory holds one complete probe output per model
(``robust/``, ``standard/``, ``random/``: metrics.json, per_image.csv,
perturbations.pt, figures/), then ``sanity.json`` (:func:`sanity_report`),
``figures/sanity.png`` (:func:`plot_sanity`) and, last, ``metrics.json``
marking the job complete.

What is explained (``sanity.explain``): ``prediction`` (default) withholds
the labels from the attack, so each model is moved away from its own clean
prediction (a random network gets almost every label wrong and would have
nothing to flip); ``label`` runs the probe exactly as configured.

Cost, in forward passes: one probe per model, i.e. per image
``steps · restarts`` forwards with a backward (the attack) and 2 without
(the clean prediction, the evaluation of the result); the probe's optional
quality metrics are off in rai_probe/configs/sanity.yaml. The randomization and every
sanity metric use **no** forward pass (they read the saved perturbations:
:mod:`rai_probe.probing.sanity_metrics`).

Examples
--------
A setting is checked before anything is loaded:

>>> check_sanity_settings({"sanity": {"models": ["robust", "rnd"]}})
Traceback (most recent call last):
...
rai_probe.jobs.errors.ConfigError: `sanity.models` must list at least two of robust, standard, random, each once; got ['robust', 'rnd']. Fix it with the override `sanity.models=...`.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from .._io import write_json
from ..jobs.config_dir import CONFIG_DIR
from ..jobs.errors import ConfigError, typed_override
from ..jobs.hydra_app import JobInterrupted, hydra_main
from ..jobs.rundir import RunDirectory, RunDirectoryBusy, mark_interrupted
from ..jobs.schema import check_job_settings, setting
from ..data import DATASETS, ImageDataset, load_dataset
from ..models import NormalizedModel, randomized_copy, save_checkpoint
from ..progress import Progress
from .artifacts import FIGURES_DIR, load_perturbations, per_image_from_perturbations, write_metrics
from .figures import (
    FAIL_COLOR,
    SUCCESS_COLOR,
    bare_axes,
    displayable,
    frame_axes,
    gray_images,
    image_grid,
    save_figure,
    show_image,
    show_overlay,
    color_limit,
)
from .job import checked_job, require_attack
from .metrics import median, summarize
from .run import run_probe
from .sanity_metrics import (
    clustered_fraction,
    concentration,
    mask_fraction,
    pixel_magnitude,
    rank_correlation,
    stroke_mask,
    support_iou,
)
from .schema import ModelSettings, ProbeSettings
from .settings import data_from_config, model_from_config

__all__ = [
    "MODEL_ROLES",
    "SANITY_FILE",
    "SANITY_FIGURE",
    "SanityOptions",
    "SanitySettings",
    "check_sanity_settings",
    "probe_settings",
    "run_sanity",
    "sanity_report",
    "plot_sanity",
    "sanity_job",
    "main",
]

log = logging.getLogger("rai_probe.probing.sanity")

#: The models a sanity run can explain, in their default order.
MODEL_ROLES = ("robust", "standard", "random")
SANITY_FILE = "sanity.json"
SANITY_FIGURE = f"{FIGURES_DIR}/sanity.png"
#: The file the randomized copy is saved to, inside ``random/``.
RANDOM_CHECKPOINT = "model.pt"
#: The data group of ``sanity.explain=prediction``: ``data.source``'s images without labels.
UNLABELED_DATA = "sanity_unlabeled"


@dataclass
class SanityOptions:
    """``sanity:`` in rai_probe/configs/sanity.yaml."""

    models: list[str] = field(default_factory=lambda: list(MODEL_ROLES))
    explain: Literal["prediction", "label"] = "prediction"
    random_seed: int = 0
    stroke_threshold: float = setting(0.5, low=0, high=1)
    stroke_dilation: int = setting(1, low=0)
    figure_rows: int = setting(6, low=1)


@dataclass
class SanitySettings(ProbeSettings):
    """rai_probe/configs/sanity.yaml: the probe's settings, the twin's model group and ``sanity:``."""

    twin: ModelSettings = field(default_factory=ModelSettings)
    sanity: SanityOptions = field(default_factory=SanityOptions)


def check_sanity_settings(cfg: Mapping[str, Any], overrides: Sequence[str] = ()) -> SanityOptions:
    """Check a sanity config strictly (every key and type, :func:`~rai_probe.jobs.schema.check_job_settings`).

    Returns the ``sanity:`` options; keys left out keep their defaults.

    Raises
    ------
    ConfigError
        A bad or unknown setting, naming the override to fix; also a mode
        that would give the models different rows to explain
        (``mode.target=prediction``, ``mode.select`` other than ``all``).
    """
    check_job_settings(cfg, SanitySettings, overrides)
    options = SanityOptions(**dict(cfg.get("sanity") or {}))
    models = options.models
    if len(models) < 2 or len(set(models)) != len(models) or not set(models) <= set(MODEL_ROLES):
        raise ConfigError(
            f"`sanity.models` must list at least two of {', '.join(MODEL_ROLES)}, each once; got {list(models)}",
            typed_override("sanity.models", overrides),
        )
    mode = dict(cfg.get("mode") or {})
    if str(mode.get("target")).lower() == "prediction":
        raise ConfigError(
            "mode.target=prediction moves each model toward its own clean prediction, so the models' runs "
            "would attack different rows and could not be compared: use a class index, all or label",
            typed_override("mode.target", overrides),
        )
    if mode.get("select", "all") != "all":
        raise ConfigError(
            f"mode.select={mode['select']} picks images by each model's own clean predictions, so the models "
            "would be explained on different images: use mode.select=all",
            typed_override("mode.select", overrides),
        )
    return options


def _untargeted(cfg: Mapping[str, Any]) -> bool:
    """Whether the probe moves images away from a class (explain, minimal) rather than toward targets."""
    mode = dict(cfg.get("mode") or {})
    return (mode.get("name") in (None, "explain", "minimal") and not mode.get("targeted", False)
            and mode.get("target") is None)


def probe_settings(
    cfg: Mapping[str, Any],
    role: str,
    random_checkpoint: Path | None = None,
    *,
    image_shape: Sequence[int] | None = None,
) -> dict[str, Any]:
    """The probe config (rai_probe/configs/probe.yaml's shape) that explains ``role``: the sanity keys removed, its model in.

    With ``sanity.explain=prediction`` (the default) in an untargeted mode
    (``explain``, ``minimal``) the data group is wrapped as
    :data:`UNLABELED_DATA` (the same images, labels withheld), so the attack
    moves each model away from its own clean prediction; a folder's
    ``size``/``mode`` defaults come from ``image_shape``. A targeted mode
    keeps its data: every model is moved toward the same targets.

    Examples
    --------
    >>> cfg = {"n_images": 4, "model": {"name": "a"}, "twin": {"name": "b"}, "data": {"name": "mnist5k"},
    ...        "sanity": {"explain": "label"}}
    >>> probe_settings(cfg, "standard")
    {'n_images': 4, 'model': {'name': 'b'}, 'data': {'name': 'mnist5k'}}
    >>> probe_settings(cfg, "random", Path("r/model.pt"))["model"]["checkpoint"]
    'r/model.pt'
    >>> probe_settings({**cfg, "sanity": {}}, "robust")["data"]
    {'name': 'sanity_unlabeled', 'source': 'mnist5k'}
    """
    probe = {key: value for key, value in cfg.items() if key not in ("twin", "sanity")}
    if role == "standard":
        probe["model"] = dict(cfg.get("twin") or {})
    elif role == "random":
        name = (cfg.get("model") or {}).get("name") or "model"
        probe["model"] = {"name": f"{name}_randomized", "pretrained": None, "arch": None,
                          "checkpoint": str(random_checkpoint), "trust_checkpoint": False,
                          "num_classes": None, "mean": None, "std": None}
    explain = (cfg.get("sanity") or {}).get("explain", "prediction")
    data = dict(cfg.get("data") or {})
    if explain == "prediction" and _untargeted(cfg) and data.get("name") not in (None, "noise", "gray"):
        source = data.pop("name")
        if source == "folder" and image_shape is not None:  # the defaults the probe gives a folder
            data["size"] = data.get("size") or list(image_shape[1:])
            if data.get("mode", "auto") == "auto":
                data["mode"] = "L" if image_shape[0] == 1 else "RGB"
        probe["data"] = {"name": UNLABELED_DATA, "source": source, **data}
    return probe


def _unlabeled(source: str, **kwargs: Any) -> ImageDataset:
    """The dataset ``source`` with its labels withheld (the loader of :data:`UNLABELED_DATA`)."""
    data = load_dataset(source, **kwargs)
    return ImageDataset(data.images, None, data.class_names, name=data.name, split=data.split, files=data.files)


@contextlib.contextmanager
def _unlabeled_data_registered() -> Iterator[None]:
    """:data:`UNLABELED_DATA` in the dataset registry while the probes run, and only then."""
    present = UNLABELED_DATA in DATASETS
    DATASETS.setdefault(UNLABELED_DATA, _unlabeled)
    try:
        yield
    finally:
        if not present:
            DATASETS.pop(UNLABELED_DATA, None)


# --------------------------------------------------------------------------- #
# the report
# --------------------------------------------------------------------------- #
def _number(value: Any) -> float | None:
    value = float(value)
    return None if np.isnan(value) else value


def _stats(values: Tensor) -> dict[str, Any]:
    """``{"n", "mean", "median"}`` of the known (non-NaN) values; None for no value."""
    values = values.detach().double().reshape(-1)
    known = values[~values.isnan()]
    return {"n": int(known.numel()), "mean": _number(known.mean()) if known.numel() else None,
            "median": median(known)}


def _where(values: Tensor, keep: Tensor) -> list[float | None]:
    """``values`` as a JSON list, ``None`` where ``keep`` is false (or the value is NaN)."""
    return [_number(v) if k else None for v, k in zip(values.tolist(), keep.tolist())]


def _rows_of(saved: Mapping[str, Mapping[str, Any]]) -> Tensor:
    """The shared source images of the runs, checked to be the same rows in every run."""
    names = list(saved)
    first = saved[names[0]]
    for name in names[1:]:
        other = saved[name]
        same = other["images"].shape == first["images"].shape and torch.equal(other["images"], first["images"])
        same = same and torch.equal(other["targets"], first["targets"])
        if not same:
            raise ValueError(
                f"the probes of {names[0]!r} and {name!r} attacked different rows (images or targets differ); "
                "a sanity comparison needs the same rows in every run"
            )
    return first["images"]


def sanity_report(
    saved: Mapping[str, Mapping[str, Any]], options: SanityOptions | None = None, *, labels: Tensor | None = None
) -> dict[str, Any]:
    """Compare the saved perturbations of several models on the same rows (no forward pass).

    Parameters
    ----------
    saved : mapping of str to dict
        Model name -> its loaded ``perturbations.pt``
        (:func:`~rai_probe.probing.artifacts.load_perturbations`), at least two,
        on the same rows.
    options : SanityOptions, optional
        The stroke mask's ``stroke_threshold`` and ``stroke_dilation``.
    labels : Tensor of int, shape-(N,), optional
        The rows' true labels (``-1``: none), when the probes ran without
        them (``sanity.explain=prediction``); default: the saved labels.

    Returns
    -------
    dict
        JSON-ready (``None`` for no value, never NaN):

        * ``"models"``: per model, ``n_images``, ``n_successful``,
          ``clean_accuracy`` and ``n_clean_correct`` (against ``labels``),
          ``success_rate`` (successes among the rows that could succeed:
          explaining labels, the clean-correct ones; explaining predictions,
          every row), ``l0_pixels`` and ``l1`` of the successes (``{"mean",
          "median"}``; for an attack that keeps each image's sparsest success,
          the L1 norm bounds that image's ε* from above), ``concentration``
          of the successes (``{"n", "mean", "median"}``),
          ``chance_concentration`` (the mean stroke-mask fraction over the
          same rows), ``concentration_common`` (over the rows every model
          succeeded on) and ``clustered_fraction`` of the successes
          (:func:`~rai_probe.probing.sanity_metrics.clustered_fraction`);
          with ``mode=minimal``, also ``epsilon_star`` (``{"n", "mean",
          "median"}`` of each image's smallest successful budget ε*, over the
          images where the search found one);
        * ``"pairs"``: per pair ``"<a>_vs_<b>"``, over the rows both
          succeeded on (``n_both``): ``support_iou`` and ``rank_correlation``
          ``{"n", "mean", "median"}``;
        * ``"ranking"``: models by decreasing median concentration;
        * ``"per_image"``: per row, each model's success, L0 and
          concentration, and each pair's IoU and rank correlation (None where
          not both succeeded).

    Examples
    --------
    >>> import torch
    >>> images = torch.zeros(2, 1, 2, 2); images[:, 0, 0, 0] = 1.0
    >>> def run(delta, success):
    ...     return {"images": images, "xadv": images + delta, "labels": torch.tensor([0, 1]),
    ...             "targets": torch.tensor([-1, -1]), "clean_logits": torch.eye(2) * 4,
    ...             "adv_logits": torch.eye(2).flip(1) * 4, "success": torch.tensor(success),
    ...             "first_success_step": torch.tensor([1, 1])}
    >>> on_stroke = torch.zeros(2, 1, 2, 2); on_stroke[:, 0, 0, 0] = -0.5
    >>> off_stroke = torch.zeros(2, 1, 2, 2); off_stroke[:, 0, 1, 1] = 0.5
    >>> report = sanity_report({"a": run(on_stroke, [True, True]), "b": run(off_stroke, [True, False])},
    ...                        SanityOptions(stroke_dilation=0))
    >>> report["models"]["a"]["concentration"], report["models"]["b"]["success_rate"]
    ({'n': 2, 'mean': 1.0, 'median': 1.0}, 0.5)
    >>> report["pairs"]["a_vs_b"]["n_both"], report["pairs"]["a_vs_b"]["support_iou"]["mean"], report["ranking"]
    (1, 0.0, ['a', 'b'])
    """
    options = options or SanityOptions()
    if len(saved) < 2:
        raise ValueError(f"`saved` must hold the perturbations of at least two models; got {list(saved)}")
    images = _rows_of(saved)
    mask = stroke_mask(images, threshold=options.stroke_threshold, dilation=options.stroke_dilation)
    chance = mask_fraction(mask)
    deltas = {name: (run["xadv"] - run["images"]).double() for name, run in saved.items()}
    success = {name: run["success"].to(torch.bool) for name, run in saved.items()}
    common = torch.stack(list(success.values())).all(dim=0)
    labels = saved[next(iter(saved))]["labels"] if labels is None else labels
    labels = labels.to("cpu", torch.int64)
    if tuple(labels.shape) != (images.shape[0],):
        raise ValueError(f"`labels` must have shape ({images.shape[0]},), one per row; got {tuple(labels.shape)}")
    labeled = labels >= 0
    per_image: dict[str, Any] = {"index": list(range(images.shape[0])), "label": labels.tolist()}
    models: dict[str, Any] = {}
    for name, run in saved.items():
        summary = summarize(per_image_from_perturbations(run))
        hits = success[name]
        score = concentration(deltas[name], mask)
        clustered = clustered_fraction(deltas[name])
        correct = labeled & (run["clean_logits"].argmax(dim=1).cpu() == labels)
        models[name] = {
            "n_images": summary["n_images"],
            "n_clean_correct": int(correct.sum()),
            "n_successful": summary["n_successful"],
            "clean_accuracy": int(correct.sum()) / int(labeled.sum()) if bool(labeled.any()) else None,
            "success_rate": summary["attack_success_rate"],
            "l0_pixels": summary["successful"]["l0_pixels"],
            "l1": summary["successful"]["l1"],
            "concentration": _stats(score[hits]),
            "chance_concentration": _stats(chance[hits])["mean"],
            "concentration_common": _stats(score[common]),
            "clustered_fraction": _stats(clustered[hits]),
        }
        minimal = run.get("minimal") or {}
        if "epsilon_min" in minimal:  # mode=minimal: each image's smallest successful budget
            models[name]["epsilon_star"] = _stats(torch.as_tensor(minimal["epsilon_min"]))
        l0 = (deltas[name].abs() > 0).any(dim=1).flatten(1).sum(dim=1)
        per_image[name] = {"clean_pred": run["clean_logits"].argmax(dim=1).tolist(),
                           "adv_pred": run["adv_logits"].argmax(dim=1).tolist(),
                           "success": hits.tolist(), "l0_pixels": l0.tolist(),
                           "concentration": [_number(v) for v in score.tolist()],
                           "clustered_fraction": [_number(v) for v in clustered.tolist()]}
    pairs: dict[str, Any] = {}
    for a, b in itertools.combinations(saved, 2):
        both = success[a] & success[b]
        iou = support_iou(deltas[a], deltas[b])
        rho = rank_correlation(deltas[a], deltas[b])
        key = f"{a}_vs_{b}"
        pairs[key] = {"n_both": int(both.sum()), "support_iou": _stats(iou[both]),
                      "rank_correlation": _stats(rho[both])}
        per_image[key] = {"support_iou": _where(iou, both), "rank_correlation": _where(rho, both)}
    known = [name for name in models if models[name]["concentration"]["median"] is not None]
    ranking = sorted(known, key=lambda name: -models[name]["concentration"]["median"])
    ranking += [name for name in models if name not in known]
    return {
        "explained": "label" if bool((saved[next(iter(saved))]["labels"] >= 0).any()) else "prediction",
        "stroke_mask": {"threshold": options.stroke_threshold, "dilation": options.stroke_dilation,
                        "mean_fraction": _stats(chance)["mean"]},
        "n_common_successes": int(common.sum()),
        "models": models,
        "pairs": pairs,
        "ranking": ranking,
        "per_image": per_image,
    }


# --------------------------------------------------------------------------- #
# the figure
# --------------------------------------------------------------------------- #
def _figure_rows(success: Mapping[str, Tensor], rows: int) -> list[int]:
    """Up to ``rows`` rows, those most models succeeded on first (then by index)."""
    counts = torch.stack([hits.to(torch.int64) for hits in success.values()]).sum(dim=0)
    order = sorted(range(counts.numel()), key=lambda k: (-int(counts[k]), k))
    return order[:rows]


def plot_sanity(
    path: str | Path,
    images: Tensor,
    deltas: Mapping[str, Tensor],
    success: Mapping[str, Tensor],
    *,
    labels: Tensor | None = None,
    predictions: Mapping[str, tuple[Tensor, Tensor]] | None = None,
    rows: int = 6,
) -> Path:
    """The explanations side by side: one row per image; the image, then each model's ``|δ|`` on one colour scale.

    Rows are the images most models succeeded on (up to ``rows``). Each
    heatmap is ``|δ|`` summed over channels over the faded image (negligible
    changes transparent), all panels on one scale shown by the colour bar;
    a panel's title gives the model, ✓/✗ for success, the prediction before
    and after (``predictions``: model -> (clean, adversarial) classes) and
    the L0 (changed pixels); its frame is green (success) or red.

    Examples
    --------
    >>> import tempfile, torch
    >>> images = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    >>> deltas = {"robust": torch.zeros(3, 1, 8, 8), "random": 0.1 * torch.ones(3, 1, 8, 8)}
    >>> success = {"robust": torch.tensor([True, False, True]), "random": torch.tensor([True, True, False])}
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = plot_sanity(Path(tmp) / "s.png", images, deltas, success, rows=2)
    ...     print(path.name, path.read_bytes()[:4] == b"\\x89PNG")
    s.png True
    """
    names = list(deltas)
    chosen = _figure_rows(success, rows)
    shown = images[chosen].detach().to("cpu", torch.float32)
    originals, gray = displayable(shown), gray_images(shown)
    heat = {name: pixel_magnitude(deltas[name][chosen].cpu()).float().numpy() for name in names}
    limit = max(color_limit(values) for values in heat.values())
    figure, axes = image_grid(len(chosen), 1 + len(names), cell=1.5, title_lines=2, heading_lines=2, right=0.9)
    drawn = None
    for row, k in enumerate(chosen):  # drawing: one row per image
        label = "" if labels is None else f"label {int(labels[k])}\n"
        show_image(axes[row, 0], originals[row])
        axes[row, 0].set_title(f"{label}image {k}", fontsize=7)
        for col, name in enumerate(names, start=1):
            ax = axes[row, col]
            drawn = show_overlay(ax, gray[row], heat[name][row], signed=False, limit=limit)
            hit = bool(success[name][k])
            changed = int((heat[name][row] > 0).sum())
            flip = ""
            if predictions is not None and name in predictions:
                before, after = predictions[name]
                flip = f" {int(before[k])}→{int(after[k])},"
            ax.set_title(f"{name}\n{'✓' if hit else '✗'}{flip} L0 {changed}", fontsize=7)
            frame_axes(ax, SUCCESS_COLOR if hit else FAIL_COLOR)
            bare_axes(ax)
    top, bottom = axes[0, -1].get_position(), axes[-1, -1].get_position()
    width = figure.get_figwidth()
    cax = figure.add_axes((top.x1 + 0.1 / width, bottom.y0, 0.1 / width, top.y1 - bottom.y0))
    bar = figure.colorbar(drawn, cax=cax)
    bar.ax.tick_params(labelsize=6)
    bar.set_label("|δ| (sum over channels; one scale for all panels)", fontsize=7)
    figure.suptitle("the same attack on each model (✓ success, green; ✗ failure, red)\n"
                    f"{len(chosen)} of {images.shape[0]} images: those most models succeeded on",
                    fontsize=8, y=1 - 0.05 / figure.get_figheight())
    return save_figure(figure, path)


# --------------------------------------------------------------------------- #
# the job
# --------------------------------------------------------------------------- #
def _save_random_copy(model: NormalizedModel, output_dir: Path, seed: int) -> Path:
    """Randomize a copy of ``model`` and save it as ``random/model.pt``; return the path."""
    path = output_dir / "random" / RANDOM_CHECKPOINT
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(randomized_copy(model, seed=seed).cpu(), path)
    return path


def run_sanity(cfg: Mapping[str, Any], output_dir: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Run the sanity check a rai_probe/configs/sanity.yaml-shaped mapping describes, writing every output.

    Every setting is checked first (the probe's as well, once); then each
    model of ``sanity.models`` is probed into ``output_dir/<name>/``
    (:func:`~rai_probe.probing.run.run_probe`), the report is written to
    ``sanity.json``, the figure to ``figures/sanity.png`` and, last,
    ``metrics.json``. Returns the report.

    Raises
    ------
    ConfigError
        A setting that cannot work, naming the override that fixes it.
    JobInterrupted
        Ctrl-C during a probe: the finished models' outputs stay, the job is
        marked interrupted.
    """
    output_dir = Path(output_dir)
    try:
        run_dir = RunDirectory(output_dir).__enter__()
    except RunDirectoryBusy as error:
        raise ConfigError(str(error), typed_override("hydra.run.dir", overrides)) from None
    try:
        return _run(cfg, output_dir, overrides)
    finally:
        run_dir.release()


def _run(cfg: Mapping[str, Any], output_dir: Path, overrides: Sequence[str]) -> dict[str, Any]:
    started = time.monotonic()
    options = check_sanity_settings(cfg, overrides)
    job = checked_job(probe_settings(cfg, "robust"), overrides)  # the probe's own checks, before any model loads
    model = model_from_config(cfg["model"], job.device, overrides)
    shape = tuple(model.info.input_shape)
    data_cfg = {key: value for key, value in cfg["data"].items() if key not in ("shard", "num_shards")}
    reference = data_from_config(data_cfg, model, n_images=job.n_images, seed=job.seed, overrides=overrides)
    random_path = _save_random_copy(model, output_dir, options.random_seed) if "random" in options.models else None
    del model
    settings = {name: probe_settings(cfg, name, random_path, image_shape=shape) for name in options.models}
    with Progress(len(options.models), "sanity (models)", enabled=bool(cfg.get("progress", True))) as bar, \
            _unlabeled_data_registered():
        for k, name in enumerate(options.models):  # one probe job per model
            log.info("sanity: model %d of %d, %s", k + 1, len(options.models), name)
            try:
                run_probe(settings[name], output_dir / name, overrides)
            except JobInterrupted:
                mark_interrupted(output_dir, f"interrupted while probing {name}; {k} of "
                                 f"{len(options.models)} models finished", models_finished=options.models[:k])
                raise JobInterrupted(k, len(options.models), "models") from None
            bar.update(model=name)
    saved = {name: load_perturbations(output_dir / name) for name in options.models}
    images = saved[options.models[0]]["images"]
    if images.shape != reference.images.shape or not torch.equal(images, reference.images.cpu()):
        raise RuntimeError("the probes attacked other images than the data group gives; the comparison is void")
    labels = reference.labels if reference.labels is not None else torch.full((len(reference),), -1)
    report = {
        "models_run": {name: {"dir": name, "model": settings[name]["model"]} for name in options.models},
        **sanity_report(saved, options, labels=labels.cpu()),
        "cost": {
            "probe_runs": len(options.models),
            "attack": {"optimizer": job.attack.optimizer, "steps": job.attack.steps,
                       "restarts": getattr(job.attack, "restarts", 1)},
            "sanity_metric_forward_passes": 0,
        },
        "references": ["Adebayo, Gilmer, Muelly, Goodfellow, Hardt, Kim: Sanity Checks for Saliency Maps. "
                       "NeurIPS 2018 (arXiv:1810.03292)"],
    }
    write_json(output_dir / SANITY_FILE, report)
    figure = plot_sanity(
        output_dir / SANITY_FIGURE,
        images,
        {name: saved[name]["xadv"] - saved[name]["images"] for name in options.models},
        {name: saved[name]["success"].to(torch.bool) for name in options.models},
        labels=labels,
        predictions={name: (saved[name]["clean_logits"].argmax(dim=1), saved[name]["adv_logits"].argmax(dim=1))
                     for name in options.models},
        rows=options.figure_rows,
    )
    summary = {
        "explained": report["explained"],
        "models": {name: {key: report["models"][name][key] for key in ("clean_accuracy", "success_rate",
                                                                      "l0_pixels", "l1")}
                   | {"concentration_median": report["models"][name]["concentration"]["median"],
                      "clustered_fraction_median": report["models"][name]["clustered_fraction"]["median"]}
                   for name in options.models},
        "pairs": {key: {"n_both": pair["n_both"], "support_iou_mean": pair["support_iou"]["mean"],
                        "rank_correlation_mean": pair["rank_correlation"]["mean"]}
                  for key, pair in report["pairs"].items()},
        "ranking": report["ranking"],
    }
    write_metrics(output_dir, summary, config=dict(cfg), overrides=list(overrides),
                  extra={"report": SANITY_FILE, "figures": [str(figure.relative_to(output_dir))],
                         "sanity": asdict(options), "seconds": round(time.monotonic() - started, 2)})
    log.info("sanity check done in %.1f s: concentration ranking %s; report in %s", time.monotonic() - started,
             report["ranking"], (output_dir / SANITY_FILE).resolve())
    return report


def sanity_job(settings: Mapping[str, Any], output_dir: Path, overrides: Sequence[str]) -> dict[str, Any]:
    """The job of ``scripts/sanity.py``: lists the attacks when none was chosen, else :func:`run_sanity`."""
    require_attack(settings, overrides)
    return run_sanity(settings, output_dir, overrides)


def main(argv: Sequence[str] | None = None) -> int:
    """``rai-probe-sanity [overrides]`` (``python scripts/sanity.py`` in a checkout); returns the exit status."""
    return hydra_main(sanity_job, config_name="sanity", config_dir=CONFIG_DIR, argv=argv)

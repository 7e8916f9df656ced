"""Strength of the sparse L1 attacks against APGD-L1, side by side (not a timed test).

What is measured
----------------
The shipped L2-robust model ``small_cnn_mnist5k_l2`` (``rai_probe.models.load_pretrained()``)
on held-out ``mnist5k`` test digits (``load_dataset("mnist5k", split="test").subset(N)``,
500 by default, 100 with ``--quick``), images in [0, 1], untargeted, one torch
thread, at L1 budgets ``--eps`` (5 and 10) and ``--steps`` (20 and 100). The
attacks, each run once on all images, in one process:

* ``APGD-L1 (autoattack)``: pyautoattack's ``APGDAttack(norm="L1", loss="ce")``,
  and ``APGD-L1 3e-2e-e (autoattack)`` with its ``use_largereps`` schedule
  (when ``pyautoattack`` is installed; else the rows say so and the ratios
  are omitted);
* ``rai-toolbox L1qFW``: ``rai_toolbox.optim.L1qFrankWolfe(q=0.99)`` with
  ``rai_toolbox.perturbations.gradient_ascent(use_best=True)``, the perturbed
  image clamped to [0, 1] (rai-toolbox has no box; when installed);
* ours, from ``rai_probe/configs/attack/*.yaml`` (the probe job's own configs, ``epsilon``
  and ``steps`` overridden): ``l1q``, ``l1q_normed``, ``l1``, ``apgd_l1`` and
  ``apgd_l1`` with ``epsilon_schedule=[3, 2, 1]``;
* ``ours ensemble`` (``--ensemble``): ``rai_probe.perturbations.ensemble.AttackEnsemble``
  over our strongest L1 attacks, when that module exists; and the per-image
  worst case over every attack above.

Per attack: **robust accuracy** (clean-correct and not flipped: the benchmark
re-evaluates the model on the returned images itself), the median number of
changed pixels and the mean L1 norm used over the successful adversarial
examples, the largest ``L1 / epsilon`` over them, how many returned images
leave the ball (``L1 > epsilon · (1 + 1e-4)``) or the [0, 1] box, the wall time
of the attack call, and the differences to APGD-L1 (robust accuracy, points)
and ratio of wall times.

Usage (in a virtual environment with the comparison packages; the package
itself never imports them)::

    python3 -m venv /work/bench-venv
    /work/bench-venv/bin/pip install -c constraints.txt torch==2.13.0 -e . \\
        pyautoattack==0.2.0 rai-toolbox==0.2.1
    /work/bench-venv/bin/python benchmarks/bench_attack_strength.py [--quick] [--ensemble] \\
        [--eps 5 10] [--steps 20 100] [--only apgd_l1 ...] [--json results.json]

The full run takes about 30 minutes on one core; timings are only comparable
within a run (the attacks of one setting run back to back), and only on a
quiet machine: the footer says how much CPU other processes took.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import yaml
from torch import Tensor

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rai_probe.data import load_dataset  # noqa: E402
from rai_probe.jobs.config_dir import CONFIG_DIR  # noqa: E402
from rai_probe.models import load_pretrained  # noqa: E402
from rai_probe.perturbations import Attack  # noqa: E402

AA = "APGD-L1 (autoattack)"
AA_SCHEDULE = "APGD-L1 3e-2e-e (autoattack)"
OURS = ("l1q", "l1q plain FW", "l1q_normed", "l1", "apgd_l1", "apgd_l1 3e-2e-e")
ENSEMBLE_MEMBERS = ("apgd_l1 3e-2e-e", "apgd_l1", "l1q")


@dataclass
class Row:
    attack: str
    epsilon: float
    steps: int
    robust: float | None = None
    median_pixels: float | None = None
    mean_l1: float | None = None
    max_l1_ratio: float | None = None
    ball_violations: int | None = None
    box_violations: int | None = None
    seconds: float | None = None
    note: str = ""
    broken: list[bool] = field(default_factory=list, repr=False)


# --------------------------------------------------------------------------- #
# the attacks
# --------------------------------------------------------------------------- #
def attack_from_yaml(config: str) -> Attack:
    """The attack of ``rai_probe/configs/attack/<config>.yaml``, as the probe job reads it (``Attack.from_dict``)."""
    return Attack.from_dict(yaml.safe_load((CONFIG_DIR / "attack" / f"{config}.yaml").read_text()))


def our_attack(name: str, epsilon: float, steps: int) -> Attack:
    config = "apgd_l1" if name.startswith("apgd_l1") else name.split()[0]
    attack = attack_from_yaml(config).with_(epsilon=epsilon, steps=steps)
    if name == "l1q plain FW":  # the box-aware L1qFrankWolfe (2 / (t + 2) steps), as rai-toolbox's
        attack = attack.with_(optimizer="L1qFrankWolfe")
    if name.startswith("apgd_l1"):  # the config's schedule is [3, 2, 1]: the plain row runs without
        attack = attack.with_(epsilon_schedule=(3.0, 2.0, 1.0) if name.endswith("3e-2e-e") else None)
    return attack


def run_ours(name: str, model, x: Tensor, y: Tensor, epsilon: float, steps: int) -> Tensor:
    attack = our_attack(name, epsilon, steps)
    return attack.run(model, x, y, generator=torch.Generator().manual_seed(0)).xadv


def run_autoattack(model, x: Tensor, y: Tensor, epsilon: float, steps: int, schedule: bool) -> Tensor:
    from pyautoattack.autopgd_base import APGDAttack  # only in the benchmark's environment

    attack = APGDAttack(model, n_iter=steps, norm="L1", eps=epsilon, loss="ce", seed=0,
                        device=x.device, use_largereps=schedule)
    return attack.perturb(x, y)


def run_rai_toolbox(model, x: Tensor, y: Tensor, epsilon: float, steps: int) -> Tensor:
    from rai_toolbox.optim import L1qFrankWolfe
    from rai_toolbox.perturbations import AdditivePerturbation, gradient_ascent

    class Clamped(AdditivePerturbation):  # rai-toolbox has no box: clamp the perturbed image
        def forward(self, data: Tensor) -> Tensor:
            return super().forward(data).clamp(0.0, 1.0)

    xadv, _ = gradient_ascent(model=model, data=x, target=y, optimizer=L1qFrankWolfe, steps=steps,
                              perturbation_model=Clamped, use_best=True, q=0.99, epsilon=epsilon)
    return xadv.detach()


def run_ensemble(model, x: Tensor, y: Tensor, epsilon: float, steps: int) -> Tensor | None:
    try:
        from rai_probe.perturbations.ensemble import AttackEnsemble
    except ImportError:
        return None
    members = {name: our_attack(name, epsilon, steps) for name in ENSEMBLE_MEMBERS}
    return AttackEnsemble(members).run(model, x, y, generator=torch.Generator().manual_seed(0)).xadv


def available(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- #
# measuring
# --------------------------------------------------------------------------- #
def measure(row: Row, model, x: Tensor, y: Tensor, clean: Tensor, run: Callable[[], Tensor | None],
            repeat: int = 1) -> Row:
    seconds = []
    for _ in range(repeat):  # the same seeded run each time: the wall time is the median
        start = time.perf_counter()
        xadv = run()
        seconds.append(time.perf_counter() - start)
    row.seconds = statistics.median(seconds)
    if xadv is None:
        row.note = "not available"
        row.seconds = None
        return row
    xadv = xadv.detach().to(x.dtype)
    with torch.no_grad():
        flipped = model(xadv).argmax(1) != y
    broken = clean & flipped
    delta = (xadv - x).flatten(1)
    l1 = delta.abs().sum(1)
    changed = (delta != 0).sum(1)
    row.robust = float((clean & ~flipped).float().mean())
    row.broken = broken.tolist()
    if bool(broken.any()):
        row.median_pixels = float(changed[broken].float().median())
        row.mean_l1 = float(l1[broken].mean())
        row.max_l1_ratio = float((l1[broken] / row.epsilon).max())
    row.ball_violations = int((l1 > row.epsilon * (1 + 1e-4)).sum())
    row.box_violations = int(((xadv < 0) | (xadv > 1)).flatten(1).any(1).sum())
    return row


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def print_table(rows: list[Row]) -> None:
    header = (f"{'attack':34s} {'eps':>4s} {'steps':>5s} {'robust':>7s} {'med px':>6s} {'mean L1':>7s} "
              f"{'max L1/eps':>10s} {'ball':>4s} {'box':>4s} {'time s':>7s} {'vs AA':>7s} {'vs AA-s':>7s} "
              f"{'t/AA':>5s} {'t/AA-s':>6s}")
    print(header)
    print("-" * len(header))
    for (epsilon, steps) in sorted({(r.epsilon, r.steps) for r in rows}):
        group = [r for r in rows if (r.epsilon, r.steps) == (epsilon, steps)]
        refs = {r.attack: r for r in group if r.attack in (AA, AA_SCHEDULE)}
        for r in group:
            cells = []
            for ref_name in (AA, AA_SCHEDULE):
                ref = refs.get(ref_name)
                ok = ref is not None and ref.robust is not None and r.robust is not None
                cells.append(f"{(r.robust - ref.robust) * 100:+6.1f}p" if ok else "      —")
            for ref_name in (AA, AA_SCHEDULE):
                ref = refs.get(ref_name)
                ok = ref is not None and ref.seconds and r.seconds
                cells.append(f"{r.seconds / ref.seconds:5.2f}" if ok else "    —")
            robust = "—" if r.robust is None else f"{r.robust * 100:6.1f}%"
            print(f"{r.attack:34s} {epsilon:4g} {steps:5d} {robust:>7s} {_fmt(r.median_pixels, '6.0f')} "
                  f"{_fmt(r.mean_l1, '7.2f')} {_fmt(r.max_l1_ratio, '10.5f')} "
                  f"{_fmt(r.ball_violations, '4d')} {_fmt(r.box_violations, '4d')} "
                  f"{_fmt(r.seconds, '7.1f')} {cells[0]:>7s} {cells[1]:>7s} {cells[2]:>5s} {cells[3]:>6s}"
                  + (f"  ({r.note})" if r.note else ""))
        print()


def _busy_cpu_seconds() -> float | None:
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 images instead of 500")
    parser.add_argument("--images", type=int, default=None, help="number of test digits (default 500)")
    parser.add_argument("--eps", type=float, nargs="+", default=[5.0, 10.0])
    parser.add_argument("--steps", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--only", nargs="+", default=None, help="run only these attacks (names as printed)")
    parser.add_argument("--ensemble", action="store_true", help="add 'ours ensemble' (AttackEnsemble)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1, help="run each attack this many times; time: the median")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    images = args.images or (100 if args.quick else 500)
    model = load_pretrained().eval()
    data = load_dataset("mnist5k", split="test").subset(images)
    x, y = data.images, data.labels
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    has_aa, has_rai = available("pyautoattack"), available("rai_toolbox")
    print(f"{images} mnist5k test digits, clean accuracy {clean.float().mean() * 100:.1f} %, "
          f"torch {torch.__version__}, {args.threads} thread(s); pyautoattack: {has_aa}, "
          f"rai-toolbox: {has_rai}")

    attacks: dict[str, Callable[[float, int], Callable[[], Tensor | None]]] = {
        AA: lambda e, s: (lambda: run_autoattack(model, x, y, e, s, False)) if has_aa else (lambda: None),
        AA_SCHEDULE: lambda e, s: (lambda: run_autoattack(model, x, y, e, s, True)) if has_aa else (lambda: None),
        "rai-toolbox L1qFW": lambda e, s: (lambda: run_rai_toolbox(model, x, y, e, s)) if has_rai else (lambda: None),
    }
    for name in OURS:
        attacks[f"ours {name}"] = lambda e, s, name=name: (lambda: run_ours(name, model, x, y, e, s))
    if args.ensemble:
        attacks["ours ensemble"] = lambda e, s: (lambda: run_ensemble(model, x, y, e, s))
    if args.only:
        attacks = {k: v for k, v in attacks.items() if any(o in k for o in args.only)}

    busy_before, own_before, wall_before = _busy_cpu_seconds(), os.times(), time.perf_counter()
    rows: list[Row] = []
    for epsilon in args.eps:
        for steps in args.steps:
            group: list[Row] = []
            for name, make in attacks.items():
                row = measure(Row(name, epsilon, steps), model, x, y, clean, make(epsilon, steps), args.repeat)
                group.append(row)
                print(f"  {name} eps={epsilon:g} steps={steps}: "
                      + (f"robust {row.robust * 100:.1f} %, {row.seconds:.1f} s" if row.robust is not None else row.note),
                      flush=True)
            measured = [r for r in group if r.broken]
            if measured:
                broken = torch.tensor([r.broken for r in measured]).any(0)
                worst = Row("worst case over all of the above", epsilon, steps)
                worst.robust = float((clean & ~broken).float().mean())
                group.append(worst)
            rows.extend(group)
    print()
    print_table(rows)
    busy_after, own_after = _busy_cpu_seconds(), os.times()
    wall = time.perf_counter() - wall_before
    if busy_before is not None and busy_after is not None:
        own = (own_after.user + own_after.system) - (own_before.user + own_before.system)
        print(f"wall time {wall:.0f} s; other processes used {max(0.0, busy_after - busy_before - own):.0f} "
              f"core-s meanwhile")
    if args.json is not None:
        plain = [{k: v for k, v in vars(r).items() if k != "broken"} for r in rows]
        args.json.write_text(json.dumps({"images": images, "rows": plain}, indent=1))


if __name__ == "__main__":
    main()

"""Time per step of ``gradient_ascent`` against a bare forward + backward loop on the same model.

What is measured
----------------
Classifiers with random weights in eval mode:

* ``mnist-cnn``: 2 conv + 2 linear layers on 1x28x28 inputs, batch 256;
* ``resnet18``: ``rai_probe.models.cifar_resnet18`` (3x3 stem, no max-pool,
  BasicBlocks [2, 2, 2, 2] with 64-512 channels, ~11.2 M parameters) on
  3x32x32 inputs, batch 64;
* ``resnet50``: ``rai_probe.models.cifar_resnet50`` (the MadryLab /
  RobustBench CIFAR layout, Bottlenecks [3, 4, 6, 3], ~23.5 M parameters) on
  3x32x32 inputs, batch 50.

Each model runs in one or more **precisions**, the ways the probe job can run
a classifier (``rai_probe.probing.acceleration.accelerated``): ``fp32``,
``bf16`` / ``fp16`` (the model's forward and backward under
``torch.autocast``, logits cast back to float32, the perturbation and the
optimizer in float32: ``precision=bf16``), and ``fp32+compile`` /
``bf16+compile`` (the same, compiled once by ``torch.compile``:
``compile=true``). Within one precision, inputs ``x ~ U[0, 1)`` and random
labels, these variants run ``--steps`` steps each:

* ``bare``: ``delta = zeros_like(x, requires_grad=True)``; every step
  ``delta.grad = None``, ``loss = cross_entropy(model(x + delta),
  reduction="none").sum()``, ``loss.backward()``. No optimizer. The model's
  parameters are frozen (``requires_grad_(False)``), as the solver freezes
  them, so both compute the gradient to the input only. **This is the
  denominator of the ratios of its precision.**
* ``gradient_ascent`` (untargeted, default cross-entropy criterion) with
  ``L1qFrankWolfe(q=0.99, epsilon=10)`` and with
  ``L2ProjectedOptim(epsilon=1, lr=0.1)``, each without and with
  ``data_range=(0, 1)`` (the box handed to the optimizer's ``bounds``);
* ``L2 early_stop check_every=1`` / ``=10``: ``L2ProjectedOptim`` with
  ``early_stop=True``, asking whether every image is done (a host sync) at
  every step or every 10th; ε = 1e-6 away from the model's own predictions,
  so no image succeeds and every step runs. Their difference is the cost of
  the sync (on CPU about nothing; on an accelerator the stall it causes).

Configurations
--------------
``--config default`` (the default): ``mnist-cnn`` and ``resnet18``, fp32,
every variant, 5 steps x 5 repeats. ``--config rai-toolbox``: the setting of
rai-toolbox's published per-step comparison, a CIFAR ResNet-50 at batch 50
with 10-step attacks, in fp32, bf16, fp32+compile and bf16+compile, with the
box-constrained L2 PGD and L1q Frank-Wolfe variants and the two early-stop
variants. ``--models``, ``--precisions``, ``--variants``, ``--steps`` and
``--repeats`` override a configuration's choice.

Timing: the classifier (after autocast and compilation) is wrapped in a
module that records ``time.perf_counter()`` at the start of every forward
call (after ``torch.cuda.synchronize()`` on CUDA). One step is the interval
between two consecutive forward calls, so it holds everything the loop does
per step (forward, loss, backward, and for the solver its bookkeeping,
``optim.step()`` and the box), and excludes the solver's one-off setup and
final evaluation. Each variant runs once untimed (a one-step warm-up, which
also absorbs ``torch.compile``'s compilation), then ``--repeats`` times, the
variants of one model and precision round-robin within each repeat so that
background load hits them alike. The table gives the median and minimum over
all ``steps x repeats`` step times; ``img-steps/s`` is the batch size divided
by the median step; ``ratio`` is median / median of ``bare`` in the same
precision, the target is ``ratio <= --target`` (1.10); ``+ms`` is median
minus that bare median; ``vs fp32`` is the fp32 bare median divided by the
row's median (a speedup over the plain fp32 loop; shown when fp32 is among
the precisions). ``step ms`` is the variant's ``optim.step()`` timed alone on
the same shape (median of 20 calls, random gradient, with
``bounds=(0 - x, 1 - x)`` for the range variants): the work a solver step
adds to the bare loop, apart from its bookkeeping. It does not depend on the
precision (the optimizer always works in float32) and is shown in the first
precision's rows.

Usage::

    python benchmarks/bench_solver.py [--device cpu|cuda] [--steps 5] [--repeats 5]
    python benchmarks/bench_solver.py --config rai-toolbox --device cuda

The default configuration takes about three minutes on 2 idle CPU cores (the
ResNet-18 dominates); ``--config rai-toolbox`` is meant for a GPU (on 2 CPU
cores one ResNet-50 step at batch 50 takes seconds: use ``--repeats 1``).
Timings on a shared machine are only meaningful when nothing else is
running: the header prints the 1-minute load average and the footer how much
CPU time other processes took during the run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import time
from typing import Callable

import torch
from torch import Tensor, nn

from rai_probe.models import cifar_resnet18, cifar_resnet50
from rai_probe.optim import L1qFrankWolfe, L2ProjectedOptim
from rai_probe.perturbations import gradient_ascent
from rai_probe.probing.acceleration import accelerated

BARE = "bare fwd+bwd"


# --------------------------------------------------------------------------- #
# models
# --------------------------------------------------------------------------- #
def mnist_cnn() -> nn.Module:
    """2 conv + 2 linear layers for 1x28x28 inputs (the classic PyTorch MNIST example net)."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 12 * 12, 128), nn.ReLU(), nn.Linear(128, 10),
    )


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], int]] = {
    "mnist-cnn": (mnist_cnn, (1, 28, 28), 256),
    "resnet18": (cifar_resnet18, (3, 32, 32), 64),
    "resnet50": (cifar_resnet50, (3, 32, 32), 50),
}

#: How the classifier runs: the probe job's ``precision`` and ``compile`` settings.
PRECISIONS: dict[str, tuple[str, bool]] = {
    "fp32": ("fp32", False),
    "bf16": ("bf16", False),
    "fp16": ("fp16", False),
    "fp32+compile": ("fp32", True),
    "bf16+compile": ("bf16", True),
}


# --------------------------------------------------------------------------- #
# timing
# --------------------------------------------------------------------------- #
class StepClock(nn.Module):
    """Wraps a model and stamps the time at the start of every forward call."""

    def __init__(self, net: nn.Module, device: torch.device) -> None:
        super().__init__()
        self.net = net
        self.cuda = device.type == "cuda"
        self.stamps: list[float] = []

    def stamp(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())

    def forward(self, x: Tensor) -> Tensor:
        self.stamp()
        return self.net(x)

    def step_times_ms(self) -> list[float]:
        return [(b - a) * 1e3 for a, b in zip(self.stamps, self.stamps[1:])]


def bare_loop(clock: StepClock, x: Tensor, y: Tensor, steps: int) -> None:
    """Forward + backward to the input, nothing else; ``steps`` intervals between stamps."""
    delta = torch.zeros_like(x, requires_grad=True)
    for _ in range(steps):
        delta.grad = None
        loss = nn.functional.cross_entropy(clock(x + delta), y, reduction="none").sum()
        loss.backward()
    clock.stamp()


#: Solver variants: (optimizer class, its keyword arguments, data_range).
VARIANTS: dict[str, tuple[type[torch.optim.Optimizer], dict, tuple[float, float] | None]] = {
    "L1qFrankWolfe": (L1qFrankWolfe, dict(q=0.99, epsilon=10.0), None),
    "L1qFrankWolfe range(0,1)": (L1qFrankWolfe, dict(q=0.99, epsilon=10.0), (0.0, 1.0)),
    "L2ProjectedOptim": (L2ProjectedOptim, dict(epsilon=1.0, lr=0.1), None),
    "L2ProjectedOptim range(0,1)": (L2ProjectedOptim, dict(epsilon=1.0, lr=0.1), (0.0, 1.0)),
}


#: Early-stopping variants (L2ProjectedOptim, range (0, 1)): ``check_every`` of the all-done test.
#: The images are attacked away from the model's own predictions with ε = 1e-6, so none can
#: succeed and every step runs: what is timed is only the cost of the per-step freeze and test.
EARLY_STOP_CHECKS: dict[str, int] = {"L2 early_stop check_every=1": 1, "L2 early_stop check_every=10": 10}


def solver_variants(own_labels: Tensor | None = None) -> dict[str, Callable[[StepClock, Tensor, Tensor, int], object]]:
    def make(optimizer, kwargs, data_range):
        def run(clock: StepClock, x: Tensor, y: Tensor, steps: int) -> object:
            return gradient_ascent(model=clock, data=x, target=y, optimizer=optimizer, steps=steps,
                                   data_range=data_range, **kwargs)

        return run

    def early_stopping(check_every: int):
        def run(clock: StepClock, x: Tensor, y: Tensor, steps: int) -> object:
            return gradient_ascent(model=clock, data=x, target=own_labels, optimizer=L2ProjectedOptim,
                                   epsilon=1e-6, lr=1e-7, steps=steps, data_range=(0.0, 1.0),
                                   early_stop=True, check_every=check_every)

        return run

    variants = {name: make(*spec) for name, spec in VARIANTS.items()}
    if own_labels is not None:
        variants.update({name: early_stopping(k) for name, k in EARLY_STOP_CHECKS.items()})
    return variants


def isolated_step_ms(name: str, x: Tensor, calls: int = 20) -> float:
    """Median time of the variant's ``optim.step()`` alone on ``x``'s shape (random gradient).

    With a data range the optimizer gets ``bounds=(low - x, high - x)``, as the
    solver hands it. This is the part of a solver step that the bare loop does
    not do; the solver's own bookkeeping comes on top.
    """
    optimizer, kwargs, data_range = VARIANTS[name]
    delta = torch.zeros_like(x, requires_grad=True)
    if data_range is not None:
        kwargs = dict(kwargs, bounds=(data_range[0] - x, data_range[1] - x))
    optim = optimizer([delta], **kwargs)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(2)).to(x.device)
    cuda = x.device.type == "cuda"
    times = []
    for call in range(calls + 3):  # 3 warm-up calls
        with torch.no_grad():
            delta.zero_()
        delta.grad = grad.clone()
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        optim.step()
        if cuda:
            torch.cuda.synchronize()
        if call >= 3:
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


#: Every variant a run can time, the bare loop first.
ALL_VARIANTS: list[str] = [BARE, *VARIANTS, *EARLY_STOP_CHECKS]

#: Presets of ``--config``: models, precisions, variants (None: all), steps, repeats.
CONFIGS: dict[str, dict] = {
    "default": dict(models=["mnist-cnn", "resnet18"], precisions=["fp32"], variants=None, steps=5, repeats=5),
    "rai-toolbox": dict(
        models=["resnet50"],
        precisions=["fp32", "bf16", "fp32+compile", "bf16+compile"],
        variants=[BARE, "L2ProjectedOptim range(0,1)", "L1qFrankWolfe range(0,1)", *EARLY_STOP_CHECKS],
        steps=10,
        repeats=5,
    ),
}


def model_batch(name: str, device: torch.device) -> tuple[Tensor, Tensor]:
    """Model ``name``'s batch: inputs ``x ~ U[0, 1)`` and random labels, the same on every call."""
    _, shape, batch = MODELS[name]
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(batch, *shape, generator=gen).to(device)
    return x, torch.randint(0, 10, (batch,), generator=gen).to(device)


def time_model(name: str, precision: str, device: torch.device, steps: int, repeats: int,
               variants: list[str]) -> dict[str, list[float]]:
    """Step times (ms) of each of ``variants`` on model ``name`` run in ``precision``."""
    torch.manual_seed(0)
    net = MODELS[name][0]().to(device).eval().requires_grad_(False)
    x, y = model_batch(name, device)
    with torch.no_grad():
        own_labels = net(x).argmax(1)
    autocast, compile_model = PRECISIONS[precision]
    classifier = accelerated(net, precision=autocast, compile=compile_model, device=device, example=x)
    runs = {BARE: bare_loop, **solver_variants(own_labels)}
    runs = {variant: runs[variant] for variant in variants}
    times: dict[str, list[float]] = {v: [] for v in runs}
    for repeat in range(repeats + 1):  # repeat 0 is the untimed warm-up
        for variant, run in runs.items():
            clock = StepClock(classifier, device)
            run(clock, x, y, steps if repeat else 1)
            if repeat:
                step_times = clock.step_times_ms()
                assert len(step_times) == steps, (variant, len(step_times))
                times[variant] += step_times
    return times


def isolated_steps_ms(name: str, device: torch.device, variants: list[str]) -> dict[str, float]:
    """Each solver variant's ``optim.step()`` alone (ms) on model ``name``'s batch shape."""
    x, _ = model_batch(name, device)
    return {variant: isolated_step_ms(variant, x) for variant in variants if variant in VARIANTS}


# --------------------------------------------------------------------------- #
# environment
# --------------------------------------------------------------------------- #
def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _git_revision() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "rai_probe"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (rev or "unknown") + ("+dirty" if dirty else "")


def _busy_cpu_seconds() -> float | None:
    """Busy CPU seconds of the whole machine so far (Linux ``/proc/stat``), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="default", choices=list(CONFIGS),
                        help="a preset of models, precisions, variants, steps and repeats (see the module docstring)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--steps", type=int, default=None, help="steps per timed run (default: the config's)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per variant (default: the config's)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--models", nargs="+", default=None, choices=list(MODELS))
    parser.add_argument("--precisions", nargs="+", default=None, choices=list(PRECISIONS))
    parser.add_argument("--variants", nargs="+", default=None, choices=ALL_VARIANTS, metavar="VARIANT",
                        help=f"solver variants to time besides the bare loop, of: {ALL_VARIANTS[1:]}")
    parser.add_argument("--target", type=float, default=1.10, help="target ratio solver / bare")
    args = parser.parse_args()
    preset = CONFIGS[args.config]
    for key in ("models", "precisions", "steps", "repeats"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    chosen = args.variants if args.variants is not None else (preset["variants"] or ALL_VARIANTS)
    args.variants = [BARE] + [variant for variant in ALL_VARIANTS[1:] if variant in chosen]
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but torch.cuda.is_available() is False")
    if args.steps < 2 or args.repeats < 1:
        parser.error("--steps must be >= 2 and --repeats >= 1")
    return args


def main() -> None:
    args = parse_arguments()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)

    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    print(f"torch {torch.__version__} | python {platform.python_version()} | device {device} "
          f"({dev_name}) | rai_probe @ {_git_revision()}")
    print(f"config {args.config} | torch threads {torch.get_num_threads()} (os.cpu_count {os.cpu_count()}) | "
          f"precisions {' '.join(args.precisions)} | steps {args.steps} | repeats {args.repeats} (+1 warm-up) | "
          f"load avg (1 min) at start {load1:.2f}")
    if load1 > 0.5:
        print(f"WARNING: load average {load1:.2f}: other processes may be competing for the cores.")
    print(f"ratio = median step / median step of '{BARE}' in the same precision; target <= {args.target:.2f}; "
          "vs fp32 = fp32 bare median / median")
    print()
    header = (f"{'model':<10} {'batch':>5}  {'precision':<13} {'variant':<28} {'median ms':>10} {'min ms':>9} "
              f"{'img-steps/s':>11} {'ratio':>6} {'+ms':>7} {'vs fp32':>7} {'step ms':>8}  target")
    print(header)
    print("-" * len(header))
    started = time.perf_counter()
    busy0, own0 = _busy_cpu_seconds(), _own_cpu_seconds()
    verdicts = []
    for name in args.models:
        batch = MODELS[name][2]
        isolated = isolated_steps_ms(name, device, args.variants)
        fp32_bare = None
        for index, precision in enumerate(args.precisions):
            times = time_model(name, precision, device, args.steps, args.repeats, args.variants)
            bare = statistics.median(times[BARE])
            if precision == "fp32":
                fp32_bare = bare
            for variant, values in times.items():
                median = statistics.median(values)
                ratio = median / bare
                verdict = ""
                if variant != BARE:
                    ok = ratio <= args.target
                    verdicts.append(ok)
                    verdict = "MEETS" if ok else "MISSES"
                speedup = f"{fp32_bare / median:7.2f}" if fp32_bare is not None else " " * 7
                step = f"{isolated[variant]:8.2f}" if variant in isolated and index == 0 else " " * 8
                print(f"{name:<10} {batch:>5}  {precision:<13} {variant:<28} {median:>10.2f} {min(values):>9.2f} "
                      f"{batch / median * 1e3:>11.1f} {ratio:>6.3f} {median - bare:>7.2f} {speedup} {step}  {verdict}",
                      flush=True)
            print()
    wall = time.perf_counter() - started
    print(f"solver variants meeting ratio <= {args.target:.2f}: {sum(verdicts)}/{len(verdicts)}"
          f"  (wall time {wall:.1f} s)")
    busy1, own1 = _busy_cpu_seconds(), _own_cpu_seconds()
    if busy0 is not None and busy1 is not None:
        others = max(0.0, (busy1 - busy0) - (own1 - own0))
        print(f"CPU time used by OTHER processes during the run: {others:.1f} core-s "
              f"({100 * others / (wall * (os.cpu_count() or 1)):.0f}% of the machine); "
              "figures are trustworthy only when this is near 0")


if __name__ == "__main__":
    main()

"""Time per step of ``gradient_ascent`` against a bare forward + backward loop on the same model.

What is measured
----------------
Two classifiers with random weights in eval mode (float32):

* ``mnist-cnn``: 2 conv + 2 linear layers on 1x28x28 inputs, batch 256;
* ``resnet18``: a CIFAR ResNet-18 (3x3 stem, no max-pool, BasicBlocks
  [2, 2, 2, 2] with 64-512 channels, ~11.2 M parameters) on 3x32x32 inputs,
  batch 64.

For each model, inputs ``x ~ U[0, 1)`` and random labels, these variants run
``--steps`` steps each:

* ``bare``: ``delta = zeros_like(x, requires_grad=True)``; every step
  ``delta.grad = None``, ``loss = cross_entropy(model(x + delta),
  reduction="none").sum()``, ``loss.backward()``. No optimizer. The model's
  parameters are frozen (``requires_grad_(False)``), as the solver freezes
  them, so both compute the gradient to the input only. **This is the
  denominator of every ratio.**
* ``gradient_ascent`` (untargeted, default cross-entropy criterion) with
  ``L1qFrankWolfe(q=0.99, epsilon=10)`` and with
  ``L2ProjectedOptim(epsilon=1, lr=0.1)``, each without and with
  ``data_range=(0, 1)`` (the box handed to the optimizer's ``bounds``);
* ``L2 early_stop check_every=1`` / ``=10``: ``L2ProjectedOptim`` with
  ``early_stop=True``, asking whether every image is done (a host sync) at
  every step or every 10th; ε = 1e-6 away from the model's own predictions,
  so no image succeeds and every step runs. Their difference is the cost of
  the sync (on CPU about nothing; on an accelerator the stall it causes).

Timing: the model is wrapped in a module that records ``time.perf_counter()``
at the start of every forward call (after ``torch.cuda.synchronize()`` on
CUDA). One step is the interval between two consecutive forward calls, so it
holds everything the loop does per step (forward, loss, backward, and for
the solver its bookkeeping, ``optim.step()`` and the box), and excludes the
solver's one-off setup and final evaluation. Each variant runs once untimed
(a one-step warm-up), then ``--repeats`` times, the variants of one model round-robin
within each repeat so that background load hits them alike. The table gives
the median and minimum over all ``steps x repeats`` step times; ``ratio`` is
median / median of ``bare``; the target is ``ratio <= --target`` (1.10);
``+ms`` is median minus the bare median. ``step ms`` is the variant's
``optim.step()`` timed alone on the same shape (median of 20 calls, random
gradient, with ``bounds=(0 - x, 1 - x)`` for the range variants): the work a
solver step adds to the bare loop, apart from its bookkeeping. It is much
smaller than the run-to-run noise of a whole step, so it says more about the
real overhead than ``+ms`` does.

Usage::

    python benchmarks/bench_solver.py [--device cpu|cuda] [--steps 5] [--repeats 5]

With the defaults it takes about three minutes on 2 idle CPU cores (the ResNet-18
dominates). Timings on a shared machine are only meaningful when nothing else
is running: the header prints the 1-minute load average and the footer how
much CPU time other processes took during the run.
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

from rai_probe.optim import L1qFrankWolfe, L2ProjectedOptim
from rai_probe.perturbations import gradient_ascent

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


class BasicBlock(nn.Module):
    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.shortcut = nn.Sequential()
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Sequential(
                nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for 3x32x32 inputs (CIFAR variant: 3x3 stem, no max-pool)."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        layers, inputs = [], 64
        for outputs, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            layers += [BasicBlock(inputs, outputs, stride), BasicBlock(outputs, outputs, 1)]
            inputs = outputs
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.layers(self.stem(x)))


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], int]] = {
    "mnist-cnn": (mnist_cnn, (1, 28, 28), 256),
    "resnet18": (ResNet18, (3, 32, 32), 64),
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


def time_model(name: str, device: torch.device, steps: int, repeats: int
               ) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Step times (ms) per variant, and each solver variant's isolated ``optim.step()`` (ms)."""
    make_model, shape, batch = MODELS[name]
    torch.manual_seed(0)
    net = make_model().to(device).eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(batch, *shape, generator=gen).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)
    with torch.no_grad():
        own_labels = net(x).argmax(1)
    variants = {BARE: bare_loop, **solver_variants(own_labels)}
    times: dict[str, list[float]] = {v: [] for v in variants}
    for repeat in range(repeats + 1):  # repeat 0 is the untimed warm-up
        for variant, run in variants.items():
            clock = StepClock(net, device)
            run(clock, x, y, steps if repeat else 1)
            if repeat:
                step_times = clock.step_times_ms()
                assert len(step_times) == steps, (variant, len(step_times))
                times[variant] += step_times
    return times, {variant: isolated_step_ms(variant, x) for variant in VARIANTS}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--steps", type=int, default=5, help="steps per timed run")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per variant")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--target", type=float, default=1.10, help="target ratio solver / bare")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but torch.cuda.is_available() is False")
    if args.steps < 2 or args.repeats < 1:
        parser.error("--steps must be >= 2 and --repeats >= 1")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)

    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    print(f"torch {torch.__version__} | python {platform.python_version()} | device {device} "
          f"({dev_name}) | rai_probe @ {_git_revision()}")
    print(f"torch threads {torch.get_num_threads()} (os.cpu_count {os.cpu_count()}) | float32 | "
          f"steps {args.steps} | repeats {args.repeats} (+1 warm-up) | load avg (1 min) at start {load1:.2f}")
    if load1 > 0.5:
        print(f"WARNING: load average {load1:.2f}: other processes may be competing for the cores.")
    print(f"ratio = median step / median step of '{BARE}'; target <= {args.target:.2f}")
    print()
    header = (f"{'model':<10} {'batch':>5}  {'variant':<28} {'median ms':>10} {'min ms':>9} "
              f"{'ratio':>6} {'+ms':>7} {'step ms':>8}  target")
    print(header)
    print("-" * len(header))
    started = time.perf_counter()
    busy0, own0 = _busy_cpu_seconds(), _own_cpu_seconds()
    verdicts = []
    for name in args.models:
        times, isolated = time_model(name, device, args.steps, args.repeats)
        bare = statistics.median(times[BARE])
        for variant, values in times.items():
            median = statistics.median(values)
            ratio = median / bare
            verdict = ""
            if variant != BARE:
                ok = ratio <= args.target
                verdicts.append(ok)
                verdict = "MEETS" if ok else "MISSES"
            step = f"{isolated[variant]:8.2f}" if variant in isolated else " " * 8
            print(f"{name:<10} {MODELS[name][2]:>5}  {variant:<28} {median:>10.2f} {min(values):>9.2f} "
                  f"{ratio:>6.3f} {median - bare:>7.2f} {step}  {verdict}")
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

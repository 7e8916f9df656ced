"""Cost of one ``LaplacianSmoothing`` step relative to one plain SGD step, per solver path.

What is measured
----------------
For each parameter size ``n`` (``--sizes``, default 1e4, 1e6, 1e7; float32,
one 1-D parameter, ``param_ndim=None`` so the whole tensor is one ring, as
in the paper) and each ``sigma`` (``--sigmas``, default 0.5, 1, 10) the
script times ONE call of

* ``SGD step`` -- ``torch.optim.SGD([p], lr=0.1).step()`` (the default
  foreach implementation). **This is the denominator of every ratio.**
* ``LS fft`` -- ``LaplacianSmoothing([p], sigma=sigma, lr=0.1,
  param_ndim=None).step()`` with the FFT solver forced (one real FFT pair
  with the analytic eigenvalues: the only solver before the direct path was
  added) followed by the same SGD step.
* ``LS direct`` -- the same step with the direct solver forced: circular
  convolution with the ring's Green's function, truncated where its tail
  drops below 2^-7 eps (``K`` taps each side), computed blockwise in
  ``O(n)`` (one matrix product, one carry per block of 16 or 32).
* ``smooth auto`` -- the bare functional call ``laplacian_smooth_(g.view(1,
  n), sigma)`` with the path chosen automatically: the smoothing alone,
  without the optimizer's bookkeeping and the SGD step.

The ``auto`` column marks the path ``LaplacianSmoothing`` picks by itself
for that ring (``rai_probe.optim.smoothing._choose_path``). Paths are forced
through the private switch ``smoothing._FORCE_PATH``.

The gradient is restored with ``copy_`` before every timed call, outside the
timed region. Method as in ``bench_optim_step.py`` (whose timing loop this
script reuses): ``time.perf_counter`` around each call (synchronized on
CUDA), ``--warmup`` untimed calls, then the timed calls, all variants of one
size round-robin within each repeat; ``ratio`` compares medians, ``min ratio``
the minima (less sensitive to other processes). The number of repeats
shrinks with ``n`` (``--repeats`` at ``n <= 1e6``, at least 5).
``ns/(n log2 n)`` stays roughly flat for an ``O(n log n)`` cost, ``ns/n``
for the direct path's ``O(n)``. The target is a ``LaplacianSmoothing``
step below 10 SGD steps at ``n = 1e6``.

A prime length (``--prime``, default 1_000_003) is timed as well: FFT
libraries fall back to slower algorithms (Bluestein) for lengths with large
prime factors, still ``O(n log n)``; it gets 5 repeats. The direct path does
not care about the factorization of ``n``.

Check the machine is otherwise idle (``uptime``); the script reports the CPU
time other processes used during the run.

Usage::

    python benchmarks/bench_smoothing.py [--device cpu|cuda] [--sigmas S ...] [--repeats N] [--threads T]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time

import torch

from bench_optim_step import _busy_cpu_seconds, _cpu_name, _own_cpu_seconds, _time_round_robin
from rai_probe.optim import LaplacianSmoothing
from rai_probe.optim import laplacian_smoothing as smoothing

SGD_NAME = "SGD step"
PATHS = ("fft", "direct")


def _ls_name(sigma: float, path: str) -> str:
    return f"LS {path} sigma={sigma:g}"


def _forced(path: str, step):
    """``step`` run with the smoothing solver forced to ``path``."""

    def run() -> None:
        smoothing._FORCE_PATH = path
        try:
            step()
        finally:
            smoothing._FORCE_PATH = None

    return run


def _cases(n: int, sigmas: list[float], device: torch.device, gen: torch.Generator):
    """``(name, reset, run)`` triples for one size; ``reset`` runs untimed before ``run``."""
    g0 = torch.randn(n, generator=gen).to(device)
    variants = [(SGD_NAME, lambda p: torch.optim.SGD([p], lr=0.1), None)]
    for sigma in sigmas:
        for path in PATHS:
            make = lambda p, sigma=sigma: LaplacianSmoothing(  # noqa: E731
                [p], sigma=sigma, lr=0.1, param_ndim=None
            )
            variants.append((_ls_name(sigma, path), make, path))
    cases = []
    for name, make, path in variants:
        p = torch.zeros(n, device=device, requires_grad=True)
        p.grad = g0.clone()
        optim = make(p)

        def reset(p=p) -> None:
            p.grad.copy_(g0)

        cases.append((name, reset, optim.step if path is None else _forced(path, optim.step)))
    rows = g0.clone().view(1, n)
    for sigma in sigmas:
        cases.append(
            (
                f"smooth auto sigma={sigma:g}",
                lambda: rows.copy_(g0.view(1, n)),
                lambda sigma=sigma: smoothing.laplacian_smooth_(rows, sigma),
            )
        )
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e4, 1e6, 1e7])
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.5, 1.0, 10.0])
    parser.add_argument("--prime", type=int, default=1_000_003, help="extra prime size (0: none)")
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per variant at n <= 1e6")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per variant")
    parser.add_argument("--target", type=float, default=10.0, help="target LS/SGD ratio at n = 1e6")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all cores)"
    )
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but torch.cuda.is_available() is False")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes] + ([args.prime] if args.prime else [])

    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    print(f"torch {torch.__version__} | python {platform.python_version()} | device {device} ({dev_name})")
    print(
        f"torch threads {torch.get_num_threads()} (os.cpu_count {os.cpu_count()}) | float32 | "
        f"param_ndim=None | warmup {args.warmup} | load avg (1 min) at start {load1:.2f}"
    )
    print(
        f"ratio = median / median of '{SGD_NAME}' at the same size; min ratio = the same with "
        "minima (robust to interference from other processes); K = truncation radius of the "
        "direct path; auto = the path LaplacianSmoothing picks"
    )
    print()
    header = (
        f"{'n':>10} {'repeats':>7}  {'variant':<22} {'K':>4} {'auto':>6} {'median ms':>10} "
        f"{'min ms':>9} {'ratio':>7} {'min ratio':>9} {'ns/(n log2 n)':>14} {'ns/n':>7}"
    )
    print(header)
    print("-" * len(header))
    gen = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    busy0, own0 = _busy_cpu_seconds(), _own_cpu_seconds()
    verdicts = []
    for n in sizes:
        repeats = 5 if n == args.prime else max(5, min(args.repeats, round(args.repeats * 1e6 / n)))
        times = _time_round_robin(_cases(n, args.sigmas, device, gen), device, args.warmup, repeats)
        sgd, sgd_min = statistics.median(times[SGD_NAME]), min(times[SGD_NAME])
        for name, samples in times.items():
            med = statistics.median(samples)
            k = auto = ""
            if name != SGD_NAME:
                sigma, path = float(name.split("sigma=")[1]), name.split()[1]
                k = smoothing._truncation_radius(sigma, torch.float32)
                chosen = smoothing._choose_path(1, n, sigma, torch.float32, device)
                auto = chosen if path == "auto" else "<-" if chosen == path else ""
                if auto == "<-" and n == 10**6:
                    verdicts.append((sigma, path, med / sgd))
            print(
                f"{n:>10} {repeats:>7}  {name:<22} {k:>4} {auto:>6} {med:>10.3f} {min(samples):>9.3f} "
                f"{med / sgd:>7.1f} {min(samples) / sgd_min:>9.1f} "
                f"{med * 1e6 / (n * math.log2(n)):>14.3f} {med * 1e6 / n:>7.2f}"
            )
        print()
    for sigma, path, ratio in verdicts:
        status = "MEETS" if ratio < args.target else "MISSES"
        print(
            f"n = 1e6, sigma = {sigma:g} ({path}, chosen automatically): LaplacianSmoothing step = "
            f"{ratio:.1f} SGD steps ({status} target < {args.target:g})"
        )
    wall = time.perf_counter() - started
    print(f"wall time {wall:.1f} s")
    busy1, own1 = _busy_cpu_seconds(), _own_cpu_seconds()
    if busy0 is not None and busy1 is not None:
        others = max(0.0, (busy1 - busy0) - (own1 - own0))
        print(
            f"CPU time used by OTHER processes during the run: {others:.1f} core-s "
            f"({100 * others / (wall * (os.cpu_count() or 1)):.0f}% of the machine); "
            "figures are trustworthy only when this is near 0"
        )


if __name__ == "__main__":
    main()

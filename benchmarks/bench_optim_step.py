"""Speed of one ``optim.step()`` of the sparse rai_probe optimizers, against a bare ``topk``.

What is measured
----------------
For each gradient shape ``(256, 1, 28, 28)``, ``(256, 3, 32, 32)`` and
``(16, 3, 224, 224)`` (float32, ``param_ndim=-1``, so each of the ``N``
leading slices is one row of ``n = C*H*W`` entries) and each sparsity ``q``
(``--q``, default 0.99, plus 0.9), the script times ONE call of
``optim.step()`` with the gradient already set, for

* ``L1qFrankWolfe(q=q, epsilon=1.0)``        (L1q LMO + Frank-Wolfe update),
* ``L1qNormedGradientOptim(q=q, lr=0.1)``     (L1q direction + SGD update),
* ``L2ProjectedOptim(epsilon=1.0, lr=0.1)``   (L2-normed SGD step + L2 projection;
  no top-k at all, shown for scale only).

Before every timed call the parameter and its gradient are reset with
``copy_`` from pristine copies, outside the timed region (the L1q transforms
overwrite the gradient in place, and a second step on an already sparse
gradient would be a different workload). The copy leaves the gradient in
cache, as a just-finished backward pass would; the baselines likewise read
their input once, untimed, before each call.

Baselines, all on the same rows ``g.flatten(1)`` with the same
``k = round((1 - q) * n)`` the optimizers keep:

* ``floor: topk(|g|) unsorted`` -- ``absg.topk(k, dim=1, sorted=False)`` on a
  precomputed ``absg = g.flatten(1).abs()``. **This is the denominator of every
  ratio.** It is the strict floor: the optimizers call exactly this kernel
  (``functional._keep_top_k_`` uses ``sorted=False`` for a fixed ``k``), and
  nothing else they do is free.
* ``topk(|g|) sorted`` -- the same with the default ``sorted=True``. For large
  ``k`` (``q=0.9``) this is much slower than the unsorted call, so using it as
  the denominator would flatter the optimizers.
* ``abs+topk unsorted`` / ``abs+topk sorted`` -- ``g.flatten(1).abs().topk(k,
  dim=1, ...)``, i.e. including the ``abs`` pass and its allocation.

Method: ``time.perf_counter`` around each single call (with
``torch.cuda.synchronize()`` before and after on CUDA), ``--warmup`` untimed
calls, then ``--repeats`` timed calls; all variants of one (shape, q) are
timed round-robin within each repeat (starting from a different variant each
repeat), so a burst of background load hits all of them alike. The table reports the median (and the minimum) over repeats;
``ratio`` is median / median of the floor. The L1q optimizers meet the target
when ``ratio <= --target`` (default 1.5).

With ``--compare-screening`` every optimizer is also timed with the
non-finite gradient screening of :mod:`rai_probe.optim.nonfinite` turned off
(``<name> w/o screening``, the same optimizer with its private
``_nonfinite_suspended`` flag set, as when an outer optimizer screens for it),
in the same round-robin, so the policy's cost is read off side by side in one
process (``screening`` column: median with / median without).

Usage::

    python benchmarks/bench_optim_step.py [--device cpu|cuda] [--repeats N] [--q 0.99]
    python benchmarks/bench_optim_step.py --threads 1 --compare-screening

With the defaults it takes well under two minutes on 2 CPU cores. Timings on a
shared machine are only meaningful when nothing else is running; the header
prints the 1-minute load average and warns when it is high; the footer
reports how much CPU time other processes took during the run.
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

from rai_probe.optim import L1qFrankWolfe, L1qNormedGradientOptim, L2ProjectedOptim
from rai_probe.optim.functional import num_kept

SHAPES = [(256, 1, 28, 28), (256, 3, 32, 32), (16, 3, 224, 224)]
FLOOR = "floor: topk(|g|) unsorted"
L1Q_NAMES = ("L1qFrankWolfe", "L1qNormedGradientOptim")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _machine_cores() -> int:
    """CPU cores this process may run on (the affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _git_revision() -> str:
    """Short commit of the checkout the benchmark runs from (with ``+dirty``), or ``unknown``."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=here, capture_output=True, text=True, timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "rai_probe"],
            cwd=here, capture_output=True, text=True, timeout=10,
        ).stdout.strip()
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
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def _optimizers(q: float) -> dict[str, Callable[[torch.Tensor], torch.optim.Optimizer]]:
    return {
        "L1qFrankWolfe": lambda p: L1qFrankWolfe([p], q=q, epsilon=1.0, param_ndim=-1),
        "L1qNormedGradientOptim": lambda p: L1qNormedGradientOptim(
            [p], q=q, lr=0.1, param_ndim=-1
        ),
        "L2ProjectedOptim": lambda p: L2ProjectedOptim([p], epsilon=1.0, lr=0.1, param_ndim=-1),
    }


UNSCREENED = " w/o screening"


def _cases(
    shape: tuple[int, ...], q: float, device: torch.device, gen: torch.Generator,
    compare_screening: bool = False,
):
    """``(name, reset, run)`` triples for one shape and q; ``reset`` runs untimed before ``run``."""
    g0 = torch.randn(shape, generator=gen).to(device)
    n = g0[0].numel()
    k = num_kept(n, q)
    rows = g0.flatten(1)
    absg = rows.abs()

    # Every reset leaves the case's input freshly touched (in cache), as the
    # optimizers' grad.copy_ does, so no case pays cold misses the others don't.
    def touch_absg() -> None:
        absg.sum()

    def touch_rows() -> None:
        rows.sum()

    cases: list[tuple[str, Callable[[], None], Callable[[], object]]] = [
        (FLOOR, touch_absg, lambda: absg.topk(k, dim=1, sorted=False)),
        ("topk(|g|) sorted", touch_absg, lambda: absg.topk(k, dim=1)),
        ("abs+topk unsorted", touch_rows, lambda: rows.abs().topk(k, dim=1, sorted=False)),
        ("abs+topk sorted", touch_rows, lambda: rows.abs().topk(k, dim=1)),
    ]
    variants = [("", False)] + ([(UNSCREENED, True)] if compare_screening else [])
    for name, make in _optimizers(q).items():
        for suffix, suspended in variants:
            p0 = torch.zeros(shape, device=device)
            p = p0.clone().requires_grad_(True)
            p.grad = g0.clone()
            optim = make(p)
            optim.__dict__["_nonfinite_suspended"] = suspended

            def reset(p=p, p0=p0) -> None:
                with torch.no_grad():
                    p.copy_(p0)
                    p.grad.copy_(g0)

            cases.append((name + suffix, reset, optim.step))
    return k, n, cases


def _time_round_robin(
    cases, device: torch.device, warmup: int, repeats: int
) -> dict[str, list[float]]:
    """Milliseconds per call of every case; the cases take turns within each repeat.

    ``reset`` runs untimed before each call (after a device sync on CUDA).
    """
    cuda = device.type == "cuda"
    times: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    for it in range(warmup + repeats):
        start = it % len(cases)  # rotate the order: no case is always first after a switch
        for name, reset, run in cases[start:] + cases[:start]:
            reset()
            if cuda:
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            run()
            if cuda:
                torch.cuda.synchronize(device)
            t1 = time.perf_counter()
            if it >= warmup:
                times[name].append((t1 - t0) * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=100, help="timed calls per variant")
    parser.add_argument("--warmup", type=int, default=10, help="untimed calls per variant")
    parser.add_argument("--q", type=float, default=0.99, help="main sparsity (0.9 is also run)")
    parser.add_argument("--target", type=float, default=1.5, help="target ratio for the L1q steps")
    parser.add_argument(
        "--threads", type=int, default=_machine_cores(), help="torch threads (default: all cores)"
    )
    parser.add_argument(
        "--compare-screening", action="store_true",
        help="also time every optimizer with the non-finite gradient screening turned off",
    )
    args = parser.parse_args()

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but torch.cuda.is_available() is False")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    qs = [args.q] + ([0.9] if args.q != 0.9 else [])

    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    print(
        f"torch {torch.__version__} | python {platform.python_version()} | "
        f"device {device} ({dev_name}) | rai_probe @ {_git_revision()}"
    )
    print(
        f"torch threads {torch.get_num_threads()} (machine cores {_machine_cores()}) | "
        f"float32 | param_ndim=-1 | warmup {args.warmup} | repeats {args.repeats} | "
        f"load avg (1 min) at start {load1:.2f}"
    )
    if load1 > 0.5:
        print(
            f"WARNING: load average {load1:.2f}: other processes may be competing for the "
            "cores (see the footer); medians would then be inflated and noisy."
        )
    print(
        f"ratio = median / median of '{FLOOR}' "
        "(absg.topk(k, dim=1, sorted=False) on a precomputed absg = |g|)"
    )
    print()

    header = (
        f"{'shape':<18} {'q':>5} {'n':>7} {'k':>6}  {'variant':<40} "
        f"{'median ms':>10} {'min ms':>9} {'ratio':>6}  target"
        + ("  screening" if args.compare_screening else "")
    )
    print(header)
    print("-" * len(header))
    gen = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    busy0, own0 = _busy_cpu_seconds(), _own_cpu_seconds()
    verdicts = []
    for shape in SHAPES:
        for q in qs:
            k, n, cases = _cases(shape, q, device, gen, args.compare_screening)
            times = _time_round_robin(cases, device, args.warmup, args.repeats)
            floor = statistics.median(times[FLOOR])
            for name, _, _ in cases:
                med = statistics.median(times[name])
                ratio = med / floor
                if name in L1Q_NAMES:
                    ok = ratio <= args.target
                    verdict = "MEETS" if ok else "MISSES"
                    verdicts.append((shape, q, name, ratio, ok))
                else:
                    verdict = ""
                screening = ""
                if args.compare_screening and name + UNSCREENED in times:
                    screening = f"  {med / statistics.median(times[name + UNSCREENED]):>9.2f}x"
                print(
                    f"{str(shape):<18} {q:>5.3g} {n:>7} {k:>6}  {name:<40} "
                    f"{med:>10.3f} {min(times[name]):>9.3f} {ratio:>6.2f}  {verdict:<6}{screening}"
                )
            print()
    met = sum(ok for *_, ok in verdicts)
    print(
        f"L1q steps meeting ratio <= {args.target}: {met}/{len(verdicts)}"
        f"  (wall time {time.perf_counter() - started:.1f} s)"
    )
    busy1, own1 = _busy_cpu_seconds(), _own_cpu_seconds()
    if busy0 is not None and busy1 is not None:
        wall = time.perf_counter() - started
        others = max(0.0, (busy1 - busy0) - (own1 - own0))
        print(
            "CPU time used by OTHER processes (or stolen by the hypervisor) during the run: "
            f"{others:.1f} core-s ({100 * others / (wall * (os.cpu_count() or 1)):.0f}% of the "
            "machine); figures are trustworthy only when this is near 0"
        )


if __name__ == "__main__":
    main()

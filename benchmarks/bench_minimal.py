"""The robustness curve from one ``mode=minimal`` run against a fixed-ε sweep at three radii.

On the shipped L2-robust model ``small_cnn_mnist5k_l2`` and held-out
``mnist5k`` test digits, for an attack config of ``rai_probe/configs/attack/``:

* the **sweep** runs the attack at each radius (as ``-m attack.epsilon=a,b,c``
  would: one job per radius, the config's steps, batches of 64) and records
  which clean-correct images it breaks;
* the **minimal run** searches each image's ε* once (the probe job's
  ``mode=minimal`` defaults: bracket ``[radius_1 / 2, 2 radius_3]``,
  tolerance 5 %, the attack's steps spread over the rounds) and reads the
  success rate at the same radii off its curve (ε* <= ε).

It prints both success rates, their largest difference in points, and the
cost of each in optimizer steps: ``optimizer.step()`` calls (per batch, all
rounds) and image-steps (steps times the images stepped), with the ratio
minimal / sweep. Seeds are fixed; one thread::

    python benchmarks/bench_minimal.py                      # l1q, 500 digits, radii 5 10 20
    python benchmarks/bench_minimal.py --attack l2 --radii 1 1.5 2
    python benchmarks/bench_minimal.py --images 128 --steps-per-round 20
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rai_probe.data import load_dataset  # noqa: E402
from rai_probe.jobs.config_dir import CONFIG_DIR  # noqa: E402
from rai_probe.models import load_pretrained  # noqa: E402
from rai_probe.perturbations import Attack  # noqa: E402
from rai_probe.perturbations.minimal import max_rounds, minimal_radius  # noqa: E402

BATCH = 64


def attack_from_yaml(name: str) -> Attack:
    """``rai_probe/configs/attack/<name>.yaml`` as the probe job reads it."""
    settings = yaml.safe_load((CONFIG_DIR / "attack" / f"{name}.yaml").read_text())
    return Attack.from_dict(settings)


def sweep(attack: Attack, model, x, y, clean, radii):
    rates, optimizer_steps, image_steps = {}, 0, 0
    for radius in radii:
        broken = []
        for start in range(0, len(x), BATCH):
            part = slice(start, start + BATCH)
            result = attack.with_(epsilon=radius).run(model, x[part], y[part],
                                                      generator=torch.Generator().manual_seed(start))
            broken.append(result.success)
            optimizer_steps += result.steps_run * attack.restarts
            image_steps += result.steps_run * attack.restarts * x[part].shape[0]
        rates[radius] = float((torch.cat(broken) & clean).sum()) / float(clean.sum())
    return rates, optimizer_steps, image_steps


def minimal(attack: Attack, model, x, y, clean, radii, low, high, tolerance, steps, warm_start):
    stars, optimizer_steps, image_steps = [], 0, 0
    for start in range(0, len(x), BATCH):
        part = slice(start, start + BATCH)
        found = minimal_radius(attack, model, x[part], y[part], epsilon_min=low, epsilon_max=high,
                               tolerance=tolerance, steps=steps, warm_start=warm_start,
                               generator=torch.Generator().manual_seed(start))
        stars.append(found.epsilon)
        optimizer_steps += found.optimizer_steps * attack.restarts
        image_steps += int(found.steps.sum()) * attack.restarts
    star = torch.cat(stars)
    rates = {radius: float(((star <= radius) & clean).sum()) / float(clean.sum()) for radius in radii}
    return rates, optimizer_steps, image_steps, star


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attack", default="l1q", help="a config of rai_probe/configs/attack/ (default l1q)")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--radii", type=float, nargs=3, default=None, help="default: 5 10 20 (L1), 1 1.5 2 (L2)")
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--steps-per-round", type=int, default=None, help="default: the mode's (steps // rounds)")
    parser.add_argument("--no-warm-start", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)

    attack = attack_from_yaml(args.attack)
    radii = args.radii or {"l1": [5.0, 10.0, 20.0], "l2": [1.0, 1.5, 2.0], "linf": [0.1, 0.2, 0.3]}[attack.norm]
    low, high = radii[0] / 2, radii[-1] * 2
    rounds = max_rounds(low, high, args.tolerance)
    steps = args.steps_per_round or max(1, attack.steps // rounds)
    model = load_pretrained().eval()
    data = load_dataset("mnist5k", split="test").subset(args.images)
    x, y = data.images, data.labels
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    print(f"{args.images} mnist5k test digits ({int(clean.sum())} clean-correct), attack {args.attack} "
          f"({attack.optimizer}, {attack.steps} steps), torch {torch.__version__}, 1 thread")
    began = time.perf_counter()
    swept, sweep_steps, sweep_image_steps = sweep(attack, model, x, y, clean, radii)
    sweep_seconds = time.perf_counter() - began
    began = time.perf_counter()
    found, minimal_steps, minimal_image_steps, star = minimal(
        attack, model, x, y, clean, radii, low, high, args.tolerance, steps, not args.no_warm_start)
    minimal_seconds = time.perf_counter() - began
    worst = max(abs(found[r] - swept[r]) for r in radii) * 100
    print(f"minimal search: bracket [{low:g}, {high:g}], tolerance {args.tolerance:g}, at most {rounds} rounds "
          f"of {steps} steps, warm start {not args.no_warm_start}")
    print("| radius | sweep success | minimal success (eps* <= radius) | difference (points) |")
    print("|---|---|---|---|")
    for r in radii:
        print(f"| {r:g} | {swept[r] * 100:.1f} % | {found[r] * 100:.1f} % | {(found[r] - swept[r]) * 100:+.1f} |")
    print(f"largest difference: {worst:.1f} points")
    print(f"optimizer steps: sweep {sweep_steps}, minimal {minimal_steps}, ratio {minimal_steps / sweep_steps:.3f}")
    print(f"image-steps:     sweep {sweep_image_steps}, minimal {minimal_image_steps}, "
          f"ratio {minimal_image_steps / sweep_image_steps:.3f}")
    print(f"seconds: sweep {sweep_seconds:.0f}, minimal {minimal_seconds:.0f}; median eps* "
          f"{float(star[clean].nanmedian()):.3g}")
    if args.json:
        args.json.write_text(json.dumps({
            "attack": args.attack, "images": args.images, "radii": radii, "sweep": swept, "minimal": found,
            "largest_difference_points": worst, "sweep_optimizer_steps": sweep_steps,
            "minimal_optimizer_steps": minimal_steps, "sweep_image_steps": sweep_image_steps,
            "minimal_image_steps": minimal_image_steps, "steps_per_round": steps, "rounds": rounds,
        }, indent=2))


if __name__ == "__main__":
    main()

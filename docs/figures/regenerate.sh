#!/usr/bin/env bash
# Regenerate the pictures of README.md and docs/tutorial.md from the commands they show.
# Run from the repository root in the project's environment: bash docs/figures/regenerate.sh
set -euo pipefail
out=$(mktemp -d)
python scripts/probe.py +attack=l1q hydra.run.dir="$out/explain"
cp "$out/explain/figures/batch_000.png" docs/figures/quickstart.png
cp "$out/explain/figures/batch_001.png" docs/figures/tutorial_explain.png
python scripts/probe.py +attack=l2 mode=probe data=gray n_images=1 attack.epsilon=8 attack.lr=0.2 hydra.run.dir="$out/probe"
cp "$out/probe/figures/class_grid.png" docs/figures/tutorial_probe.png
python scripts/probe.py -m +attack=l1q attack.epsilon=5,10,20 attack.q=0.9,0.99 hydra.sweep.dir="$out/sweep"
python scripts/report.py "$out/sweep"
cp "$out/sweep/report/success_vs_epsilon.png" docs/figures/tutorial_sweep_success.png
cp "$out/sweep/report/gallery.png" docs/figures/tutorial_sweep_gallery.png
python scripts/probe.py +attack=l1q mode=minimal hydra.run.dir="$out/minimal"
cp "$out/minimal/figures/robustness_curve.png" docs/figures/tutorial_minimal_curve.png
cp "$out/minimal/figures/minimal_gallery.png" docs/figures/tutorial_minimal_gallery.png
python scripts/probe.py +attack=l1q mode=contrast mode.source=3 mode.target=8 n_images=32 hydra.run.dir="$out/contrast"
cp "$out/contrast/figures/contrast.png" docs/figures/tutorial_contrast.png
python scripts/probe.py +attack=l2 mode=probe data=noise n_images=8 attack.epsilon=8 attack.lr=0.2 hydra.run.dir="$out/concepts"
cp "$out/concepts/figures/class_concepts.png" docs/figures/tutorial_concepts.png
python scripts/probe.py +attack=l2 attack.epsilon=3 mode=universal n_images=500 hydra.run.dir="$out/universal"
cp "$out/universal/figures/universal.png" docs/figures/tutorial_universal.png
echo "figures regenerated from runs in $out"

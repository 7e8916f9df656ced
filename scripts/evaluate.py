"""Clean and robust accuracy of a model: ``python scripts/evaluate.py [overrides]``.

The checkout's spelling of the installed command ``rai-probe-evaluate``
(:func:`rai_probe.training.run.evaluate_main`).

With no overrides it re-measures the shipped model's recorded accuracies
(docs/model_card.md). Outputs (config, log, metrics.json with measured and
recorded numbers) go to Hydra's run directory under outputs/evaluate/. A bad
setting (including a checkpoint file that holds code, unless
``trust_checkpoint=true``) exits with status 2 and one paragraph naming the
override to fix.
"""

import sys

from rai_probe.training.run import evaluate_main

if __name__ == "__main__":
    sys.exit(evaluate_main())

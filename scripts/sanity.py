"""Model-specificity sanity check: ``python scripts/sanity.py +attack=l1q``.

The checkout's spelling of the installed command ``rai-probe-sanity``
(:func:`rai_probe.probing.sanity.main`).

The same probe (same images, attack and seed) explains the model, its
standard-trained twin and a weight-randomized copy; ``sanity.json`` says how
different their explanations are (support IoU, rank correlation of |δ|) and
how concentrated on the digit's strokes each is, ``figures/sanity.png``
shows them side by side (docs/sanity_checks.md). Config: rai_probe/configs/sanity.yaml
(and the probe's groups attack/, model/, data/, mode/). Examples::

    python scripts/sanity.py +attack=l1q n_images=64
    python scripts/sanity.py +attack=l1q sanity.models=[robust,random]
    python scripts/sanity.py +attack=l2 model@twin=checkpoint twin.checkpoint=outputs/train/<time>/model.pt

Outputs go to outputs/sanity/<time>/: one probe output per model (robust/,
standard/, random/), sanity.json, figures/sanity.png and metrics.json. A bad
setting exits with status 2 and one paragraph naming the override to fix.
"""

import sys

from rai_probe.probing.sanity import main

if __name__ == "__main__":
    sys.exit(main())

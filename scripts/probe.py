"""Attack a robust classifier with a controllably sparse perturbation: ``python scripts/probe.py +attack=l1q``.

The checkout's spelling of the installed command ``rai-probe`` (the same
function, :func:`rai_probe.probing.cli.main`; ``python -m rai_probe`` lists
every command).

Configs: rai_probe/configs/probe.yaml and the groups attack/, model/, data/, mode/.
Examples::

    python scripts/probe.py +attack=l1q                            # explain the shipped model's predictions
    python scripts/probe.py +attack=l1q attack.epsilon=10 attack.q=0.9
    python scripts/probe.py +attack=l2 mode=probe data=noise        # what each class looks like to the model
    python scripts/probe.py -m +attack=l1q attack.epsilon=5,10,20 attack.q=0.9,0.99
    python scripts/report.py outputs/multirun/<time>                # table and plots over the sweep

Outputs (config, log, metrics.json, per_image.csv, perturbations.pt, figures/)
go to Hydra's run directory (outputs/probe/<time>/) or, with -m, one
directory per job under outputs/multirun/<time>/. A bad setting exits with
status 2 and one paragraph naming the override to fix; Ctrl-C saves the
finished images and exits with status 130; a sweep with a failed job exits
non-zero after all its jobs ran.
"""

import sys

from rai_probe.probing.cli import main

if __name__ == "__main__":
    sys.exit(main())

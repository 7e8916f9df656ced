"""``python -m rai_probe``: the commands an install of rai_probe adds, one line each.

Each command is a console entry point of ``pyproject.toml`` (``[project.scripts]``)
and takes Hydra overrides (the report: a sweep directory); ``scripts/*.py`` of a
checkout run the same functions.

Examples
--------
>>> main([])  # doctest: +ELLIPSIS
rai_probe ...: installed commands (each takes --help)
  rai-probe +attack=l1q [overrides]         attack a robust model, explain ...
  rai-probe-report DIR [--out OUT]          table, curves and gallery of a sweep ...
...
0
"""

from __future__ import annotations

import sys
from typing import Sequence

from . import __version__

#: Every installed command: its name, its entry point (``module:function``), how it is typed, what it does.
COMMANDS: tuple[tuple[str, str, str, str], ...] = (
    ("rai-probe", "rai_probe.probing.cli:main", "+attack=l1q [overrides]",
     "attack a robust model, explain its predictions (-m: a sweep)"),
    ("rai-probe-report", "rai_probe.probing.report:main", "DIR [--out OUT]",
     "table, curves and gallery of a sweep (outputs/multirun/<time>)"),
    ("rai-probe-train", "rai_probe.training.run:train_main", "[overrides]",
     "adversarially train a classifier (default: the shipped model)"),
    ("rai-probe-evaluate", "rai_probe.training.run:evaluate_main", "[overrides]",
     "clean and robust accuracy of a model"),
    ("rai-probe-sanity", "rai_probe.probing.sanity:main", "+attack=l1q [overrides]",
     "the probe on a model, its standard twin and a random copy"),
)


def usage() -> str:
    """The list :func:`main` prints: one line per command of :data:`COMMANDS`.

    Examples
    --------
    >>> [line.split()[0] for line in usage().splitlines()[1:-1]]
    ['rai-probe', 'rai-probe-report', 'rai-probe-train', 'rai-probe-evaluate', 'rai-probe-sanity']
    """
    typed = [f"{name} {arguments}" for name, _, arguments, _ in COMMANDS]
    width = max(map(len, typed))
    lines = [f"rai_probe {__version__}: installed commands (each takes --help)"]
    lines += [f"  {call:<{width}}  {what}" for call, (_, _, _, what) in zip(typed, COMMANDS)]
    lines.append("Outputs go to outputs/<job>/<time>/ under the current directory.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Print :func:`usage`; return 0, or 2 (the list on stderr) when given any argument."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv:
        print(f"python -m rai_probe takes no arguments (got {' '.join(argv)}); run one of these:\n{usage()}",
              file=sys.stderr)
        return 2
    print(usage())
    return 0


if __name__ == "__main__":
    sys.exit(main())

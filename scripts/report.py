"""Report over a sweep: one table of all jobs, curves against epsilon and a heatmap gallery.

The checkout's spelling of the installed command ``rai-probe-report``
(:func:`rai_probe.probing.report.main`).

Usage: ``python scripts/report.py DIR [--out OUT]`` where ``DIR`` is a Hydra
multirun directory of the probe CLI (``multirun/<date>/<time>/``). Writes
``report.csv``, ``report.md`` and the pictures into ``OUT`` (default
``DIR/report/``), prints the markdown file's path and a one-line summary of
the jobs' states. Exit code 0 when the report was written, 2 (with one
paragraph) when ``DIR`` is missing, holds no job, or the report cannot be
written.
"""

import sys

from rai_probe.probing.report import main

if __name__ == "__main__":
    sys.exit(main())

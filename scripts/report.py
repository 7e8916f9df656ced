"""Report over a sweep: one table of all jobs, curves against epsilon and a heatmap gallery.

Usage: ``python scripts/report.py DIR [--out OUT]`` where ``DIR`` is a Hydra
multirun directory of the probe CLI (``multirun/<date>/<time>/``). Writes
``report.csv``, ``report.md`` and the pictures into ``OUT`` (default
``DIR/report/``), prints the markdown file's path and a one-line summary of
the jobs' states. Exit code 0 when the report was written, 2 when ``DIR`` is
missing or holds no job.
"""

from __future__ import annotations

import argparse
import sys

from rai_probe.probing.report import collect_jobs, summary_line, write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", metavar="DIR", help="a Hydra multirun directory")
    parser.add_argument("--out", default=None, help="where the report goes (default: DIR/report)")
    args = parser.parse_args(argv)
    try:
        jobs = collect_jobs(args.sweep_dir, skip=args.out)
        written = write_report(args.sweep_dir, args.out, jobs=jobs)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(written["markdown"])
    print(summary_line(jobs))
    return 0


if __name__ == "__main__":
    sys.exit(main())

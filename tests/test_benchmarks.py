"""The benchmarks under ``benchmarks/`` still import against the package (they are run by hand, not by CI).

A benchmark that no longer imports (a module split, a renamed function) would
otherwise only be noticed the next time someone measures. Each script is
loaded with :func:`runpy.run_path` under a name other than ``__main__``, so
its definitions run and its measurement does not (``bench_load_model.py``
measures at import, which takes well under a second).
"""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = sorted((ROOT / "benchmarks").glob("bench_*.py"))

LOADER = """
import os, runpy, sys
for path in sys.argv[1:]:
    sys.path.insert(0, os.path.dirname(path))  # as when the script is run: its folder first

    runpy.run_path(path, run_name="benchmark_import_check")
    print("imported", path)
"""


def test_every_benchmark_imports():
    assert len(BENCHMARKS) >= 6, BENCHMARKS
    done = subprocess.run([sys.executable, "-c", LOADER, *map(str, BENCHMARKS)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("imported") == len(BENCHMARKS), done.stdout


def test_solver_benchmark_presets_choose_the_bare_loop_and_known_variants():
    namespace = _load("bench_solver.py")
    for name, preset in namespace["CONFIGS"].items():
        assert set(preset["models"]) <= set(namespace["MODELS"]), name
        assert set(preset["precisions"]) <= set(namespace["PRECISIONS"]), name
        if preset["variants"] is not None:
            assert preset["variants"][0] == namespace["BARE"], name
            assert set(preset["variants"]) <= set(namespace["ALL_VARIANTS"]), name
    assert namespace["MODELS"]["resnet50"][2] == 50  # the batch of rai-toolbox's comparison
    assert namespace["CONFIGS"]["rai-toolbox"]["steps"] == 10


def _load(script: str) -> dict:
    folder = str(ROOT / "benchmarks")
    sys.path.insert(0, folder)
    try:
        return runpy.run_path(str(ROOT / "benchmarks" / script), run_name="benchmark_import_check")
    finally:
        sys.path.remove(folder)

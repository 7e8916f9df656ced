"""An installed rai_probe: its wheel carries the configs and weights, and its commands run from any directory.

* the wheel of the checkout holds every yaml of the config tree
  (``rai_probe/configs/``, ``hydra/launcher/`` included), the shipped weights
  and data files, and one console entry point per command of
  ``python -m rai_probe``, as ``pyproject.toml`` names them;
* installed (non-editable, ``--no-deps``, with the pinned constraints) into a
  fresh virtual environment whose dependencies come from the test environment,
  ``rai-probe +attack=l1q`` run from a temporary directory leaves a complete
  ``outputs/probe/<time>/`` there, having read the installed configs; the sweep
  ``rai-probe -m +attack=l1q,l1q_normed,l2 attack.steps=5`` leaves three
  complete jobs, ``rai-probe-report`` writes its report and ``python -m
  rai_probe`` lists the commands;
* ``scripts/*.py`` call the same functions as the commands.

Nothing is downloaded: the wheel is built with ``--no-build-isolation`` (it
needs setuptools >= 70.1 in the test environment, the ``test`` extra's pin), and
the fresh environment sees the test environment's packages through a ``.pth``
path, which does not run that environment's own ``.pth`` hooks (the editable
install's finder), so ``import rai_probe`` there finds the installed wheel. A
wheel that cannot be built fails the tests with pip's message, never skips them.
"""

from __future__ import annotations

import ast
import doctest
import importlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

import rai_probe.__main__ as rai_probe_main
from rai_probe.jobs.config_dir import CONFIG_DIR
from rai_probe.jobs.hydra_app import hydra_main
from rai_probe.jobs.rundir import job_status

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
SCRIPTS = PROJECT["project"]["scripts"]
TIMEOUT = 300  # seconds, for any one command


# --------------------------------------------------------------------------- #
# in the checkout: the command list, the scripts, a missing config tree
# --------------------------------------------------------------------------- #
def test_python_m_rai_probe_lists_exactly_the_console_entry_points():
    listed = {name: target for name, target, _, _ in rai_probe_main.COMMANDS}
    assert listed == SCRIPTS
    for target in SCRIPTS.values():  # each entry point is a function of the package
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), target
    lines = rai_probe_main.usage().splitlines()
    assert [line.split()[0] for line in lines[1:-1]] == list(listed)
    # pytest collects no doctests from a __main__.py: run them here
    result = doctest.testmod(rai_probe_main, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 2 and result.failed == 0


def test_python_m_rai_probe_refuses_arguments(capsys):
    assert rai_probe_main.main(["probe"]) == 2
    assert "rai-probe-report" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_each_script_is_a_thin_wrapper_of_its_command(name):
    """scripts/<x>.py imports the function its command runs and only calls it."""
    module, _, function = SCRIPTS[name].partition(":")
    script = ROOT / "scripts" / f"{name.removeprefix('rai-probe-') if name != 'rai-probe' else 'probe'}.py"
    tree = ast.parse(script.read_text(encoding="utf-8"))
    imported = {(node.module, alias.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                for alias in node.names}
    assert (module, function) in imported
    assert sum(isinstance(node, ast.FunctionDef | ast.ClassDef) for node in ast.walk(tree)) == 0


def test_every_config_is_under_the_package_and_no_tree_is_left_at_the_root():
    assert CONFIG_DIR == ROOT / "rai_probe" / "configs" and not (ROOT / "configs").exists()
    for name in ("probe.yaml", "sanity.yaml", "training/train.yaml", "training/evaluate.yaml",
                 "hydra/launcher/parallel.yaml", "attack/l1q.yaml"):
        assert (CONFIG_DIR / name).is_file(), name


def test_a_missing_config_tree_is_one_paragraph(tmp_path, capsys):
    def job(settings, output_dir, overrides):  # never reached
        raise AssertionError("the job ran without its config")

    assert hydra_main(job, config_name="probe", config_dir=tmp_path / "nowhere", argv=[]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{tmp_path / 'nowhere' / 'probe.yaml'} does not exist" in err and "reinstall" in err


# --------------------------------------------------------------------------- #
# the wheel and a fresh environment holding it
# --------------------------------------------------------------------------- #
def _run(args, cwd, env=None, timeout=TIMEOUT):
    return subprocess.run([str(arg) for arg in args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=timeout)


def _explain(what, result):
    return f"{what} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def _sources(dest: Path) -> Path:
    """What the build reads, copied: building in the checkout would leave build/ there, whose stale files
    can leak into later wheels."""
    dest.mkdir()
    names = ["pyproject.toml", PROJECT["project"]["readme"], "setup.py", "setup.cfg", "MANIFEST.in"]
    for name in names:
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(ROOT / "rai_probe", dest / "rai_probe", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel of the checkout, built offline."""
    try:
        version = tuple(int(part) for part in importlib.metadata.version("setuptools").split(".")[:2])
    except importlib.metadata.PackageNotFoundError:
        version = (0, 0)
    if version < (70, 1):
        pytest.fail("building the wheel offline needs setuptools >= 70.1 in the test environment "
                    "(pip install -c constraints.txt -e '.[test]' installs it)")
    work = tmp_path_factory.mktemp("wheel")
    source, dist = _sources(work / "src"), work / "dist"
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                  "-w", dist, source], cwd=work)
    assert built.returncode == 0, _explain("building the wheel (pip wheel --no-build-isolation)", built)
    wheels = sorted(dist.glob("rai_probe-*.whl"))
    assert len(wheels) == 1, f"pip wheel made {wheels}"
    return wheels[0]


def _dependency_dirs() -> list[str]:
    """The site directories that hold the test environment's copies of rai_probe's dependencies."""
    names = [requirement.split(";")[0].split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip()
             for requirement in PROJECT["project"]["dependencies"]]
    found = {str(Path(importlib.metadata.distribution(name).locate_file("")).resolve()) for name in names}
    return sorted(found)


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """A fresh virtual environment with the wheel installed: (its bin/, its site-packages, an environment)."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    made = _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=venv.parent)
    assert made.returncode == 0, _explain("python -m venv", made)
    python = venv / "bin" / "python"
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                        cwd=venv).stdout.strip())
    # path lines only: the test environment's own .pth files (its editable finder) are not run
    (purelib / "_rai_probe_test_dependencies.pth").write_text("\n".join(_dependency_dirs()) + "\n")
    added = _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
                  "-c", ROOT / "constraints.txt", wheel], cwd=venv.parent)
    assert added.returncode == 0, _explain("pip install of the wheel", added)
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", "")])
    env["VIRTUAL_ENV"] = str(venv)
    return venv / "bin", purelib.resolve(), env


def test_the_wheel_holds_every_config_the_weights_and_the_commands(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = sorted(path.relative_to(ROOT).as_posix() for path in CONFIG_DIR.rglob("*.yaml"))
    assert any("/hydra/launcher/" in name for name in configs)
    assert [name for name in configs if name not in names] == []
    for folder in ("rai_probe/models/weights", "rai_probe/data/files"):
        shipped = sorted(path.relative_to(ROOT).as_posix() for path in (ROOT / folder).iterdir() if path.is_file())
        assert shipped and [name for name in shipped if name not in names] == []
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/entry_points.txt")))
    console = dict(line.split(" = ") for line in entry_points.decode().split("[console_scripts]")[1].split("[")[0]
                   .strip().splitlines())
    assert console == SCRIPTS


def test_the_installed_package_is_the_wheel_not_the_checkout(installed, tmp_path):
    bin_dir, purelib, env = installed
    found = _run([bin_dir / "python", "-c", "import json, rai_probe, rai_probe.jobs.config_dir as c; "
                  "print(json.dumps([rai_probe.__file__, str(c.CONFIG_DIR)]))"], cwd=tmp_path, env=env)
    assert found.returncode == 0, _explain("import rai_probe", found)
    package, configs = (Path(path).resolve() for path in json.loads(found.stdout))
    assert package == purelib / "rai_probe" / "__init__.py" and configs == purelib / "rai_probe" / "configs"
    assert (configs / "probe.yaml").is_file()
    listed = _run([bin_dir / "python", "-m", "rai_probe"], cwd=tmp_path, env=env)
    assert listed.returncode == 0, _explain("python -m rai_probe", listed)
    assert [line.split()[0] for line in listed.stdout.splitlines()[1:-1]] == list(SCRIPTS)
    assert all((bin_dir / name).is_file() for name in SCRIPTS)


def _config_source(job_dir: Path) -> Path:
    """The primary config directory Hydra composed the job from (its record in .hydra/hydra.yaml)."""
    record = yaml.safe_load((job_dir / ".hydra" / "hydra.yaml").read_text())["hydra"]["runtime"]
    return Path(next(source["path"] for source in record["config_sources"] if source["provider"] == "main"))


def test_installed_rai_probe_runs_the_main_job_from_any_directory(installed, tmp_path):
    bin_dir, purelib, env = installed
    ran = _run([bin_dir / "rai-probe", "+attack=l1q", "n_images=2", "attack.steps=2", "progress=false"],
               cwd=tmp_path, env=env)
    assert ran.returncode == 0, _explain("rai-probe +attack=l1q", ran)
    jobs = sorted((tmp_path / "outputs" / "probe").iterdir())
    assert len(jobs) == 1
    metrics = json.loads((jobs[0] / "metrics.json").read_text())
    assert metrics["status"] == "complete" and job_status(jobs[0]) == "complete"
    assert metrics["config"]["n_images"] == 2 and metrics["config"]["attack"]["steps"] == 2
    assert len((jobs[0] / "per_image.csv").read_text().strip().splitlines()) == 1 + 2  # header + 2 images
    assert _config_source(jobs[0]).resolve() == purelib / "rai_probe" / "configs"


def test_installed_sweep_and_report(installed, tmp_path):
    """The attack sweep of the issue, with the greedy minimality pass off to keep it short."""
    bin_dir, purelib, env = installed
    swept = _run([bin_dir / "rai-probe", "-m", "+attack=l1q,l1q_normed,l2", "attack.steps=5", "n_images=2",
                  "progress=false", "metrics.minimality=false"], cwd=tmp_path, env=env)
    assert swept.returncode == 0, _explain("rai-probe -m +attack=l1q,l1q_normed,l2 attack.steps=5", swept)
    (sweep,) = (tmp_path / "outputs" / "multirun").iterdir()
    jobs = sorted(path for path in sweep.iterdir() if path.name.isdigit())
    assert [job_status(job) for job in jobs] == ["complete"] * 3
    configs = [json.loads((job / "metrics.json").read_text())["config"] for job in jobs]
    assert [config["attack"]["steps"] for config in configs] == [5, 5, 5]
    choices = [yaml.safe_load((job / ".hydra" / "hydra.yaml").read_text())["hydra"]["runtime"]["choices"]["attack"]
               for job in jobs]
    assert sorted(choices) == ["l1q", "l1q_normed", "l2"]
    assert {_config_source(job).resolve() for job in jobs} == {purelib / "rai_probe" / "configs"}

    reported = _run([bin_dir / "rai-probe-report", sweep], cwd=tmp_path, env=env)
    assert reported.returncode == 0, _explain("rai-probe-report", reported)
    report = sweep / "report" / "report.md"
    assert reported.stdout.splitlines()[0] == str(report) and report.is_file()
    assert "3 jobs: 3 complete" in reported.stdout

"""Where the jobs' Hydra configs live: the config tree shipped inside the package, ``rai_probe/configs/``.

Every job (probe, sanity, train, evaluate) and every test or benchmark that
reads a config finds the tree through :data:`CONFIG_DIR`, so the installed
commands (``rai-probe``, ``rai-probe-train``, ...) and the scripts of a
checkout read the same files, from any working directory. The tree holds
``probe.yaml`` and ``sanity.yaml`` with their groups ``attack/``, ``model/``,
``data/``, ``mode/`` and ``hydra/launcher/``, and ``training/`` with
``train.yaml``, ``evaluate.yaml`` and their group ``eval_attacks/``.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

__all__ = ["CONFIG_DIR", "available"]


def _locate() -> Path:
    """The ``configs`` folder of the imported ``rai_probe`` package, as a filesystem path (Hydra reads files)."""
    return Path(str(resources.files("rai_probe") / "configs"))


#: The config tree of the imported ``rai_probe`` (a checkout's or an installed wheel's).
CONFIG_DIR: Path = _locate()


def available(group: str, config_dir: str | os.PathLike = CONFIG_DIR) -> list[str]:
    """Names of the configs of a config group (e.g. ``"attack"``, ``"training/eval_attacks"``), sorted.

    Parameters
    ----------
    group : str
        A folder of the config tree, relative to ``config_dir``.
    config_dir : path, optional
        The tree (default :data:`CONFIG_DIR`).

    Examples
    --------
    >>> "l1q" in available("attack")
    True
    >>> available("training/eval_attacks")
    ['cifar10', 'mnist']
    >>> (CONFIG_DIR / "probe.yaml").is_file()
    True
    """
    return sorted(path.stem for path in (Path(config_dir) / group).glob("*.yaml"))

"""The package's layers import only downward: optim <- perturbations <- probing/training; models and data
are independent of each other and of the attack layers; the shared bottom (errors, _io) imports nothing
of the package.

Read from the source with ``ast`` (module-level and function-level imports alike), so a lazy import
inside a function cannot hide a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rai_probe"

#: What each layer may import from the package (besides itself).
ALLOWED = {
    "errors": set(),
    "_io": {"errors"},
    "runtime": {"errors"},
    "progress": set(),
    "optim": {"errors"},
    "perturbations": {"errors", "optim", "progress"},
    "models": {"errors", "_io"},
    "data": {"errors", "_io"},
    "jobs": {"errors", "_io"},
    "training": {"errors", "_io", "runtime", "progress", "optim", "perturbations", "models", "data", "jobs"},
    "probing": {"errors", "_io", "runtime", "progress", "optim", "perturbations", "models", "data", "jobs"},
}


def _layer(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0].removesuffix(".py") if relative.parts[0] != "__init__.py" else "__init__"


def _imported_layers(path: Path, source: str | None = None) -> set[str]:
    """The top-level rai_probe modules/packages that ``path`` (or ``source`` placed there) imports."""
    tree = ast.parse(source if source is not None else path.read_text(encoding="utf-8"))
    package_parts = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]  # ('rai_probe', 'optim')
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - node.level + 1]
                module = ".".join(base + ((node.module,) if node.module else ()))
                names = [module] if node.module else [f"{module}.{alias.name}" for alias in node.names]
            else:
                names = [node.module or ""]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "rai_probe" and len(parts) > 1:
                found.add(parts[1])
    return found


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if _layer(p) not in ("__init__", "__main__"))


def _violations(path: Path, source: str | None = None) -> set[str]:
    """The layers that ``path`` (or ``source`` placed there) imports but may not."""
    layer = _layer(path)
    assert layer in ALLOWED, f"{layer}: a new layer needs a place in ALLOWED"
    return _imported_layers(path, source) - {layer} - ALLOWED[layer]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_only_go_down(path):
    violations = _violations(path)
    assert not violations, f"{path.relative_to(PACKAGE)} imports {sorted(violations)}"


def test_the_rules_keep_the_layers_apart():
    """ALLOWED itself says: optim imports nothing above it; perturbations nothing from models, data,
    probing or training; models and data never each other."""
    assert ALLOWED["optim"] <= {"errors"}
    assert ALLOWED["perturbations"].isdisjoint({"models", "data", "probing", "training"})
    assert "data" not in ALLOWED["models"] and "models" not in ALLOWED["data"]


#: Imports written into a module of a layer, and the rules they break: ``(layer, source, reached)``.
FABRICATED_IMPORTS = [
    ("optim", "from ..perturbations import gradient_ascent\n", {"perturbations"}),
    ("optim", "import rai_probe.probing.run\n", {"probing"}),
    ("optim", "def f():\n    from ..training import fit\n", {"training"}),
    ("optim", "from rai_probe.models import load_model\n", {"models"}),
    ("optim", "from .. import data\n", {"data"}),
    ("perturbations", "from ..models.registry import MODELS\n", {"models"}),
    ("perturbations", "from ..data import load_dataset\n", {"data"}),
    ("perturbations", "from rai_probe.probing import probe\n", {"probing"}),
    ("perturbations", "def f():\n    import rai_probe.training\n", {"training"}),
    ("models", "from ..data import make_blob_images\n", {"data"}),
    ("data", "from ..models import registry\n", {"models"}),
    ("data", "def f():\n    from rai_probe.models.small_cnn import SmallCNN\n", {"models"}),
] + [  # and what breaks none: a layer importing itself and the shared bottom
    (layer, "from . import y\nfrom ..errors import SettingError\n", set())
    for layer in ("optim", "perturbations", "models", "data")
]


@pytest.mark.parametrize(("layer", "source", "reached"), FABRICATED_IMPORTS)
def test_the_rules_catch_a_fabricated_violation(layer, source, reached):
    module = PACKAGE / layer / "x.py"  # never written: only its position in the package matters
    assert _violations(module, source) == reached

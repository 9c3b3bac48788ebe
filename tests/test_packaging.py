"""Packaging: every third-party module the package imports is declared, and nothing unused is."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]


def _declared() -> dict[str, set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {"dependencies": project["dependencies"], **project["optional-dependencies"]}

    def name(req: str) -> str:
        return re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower().replace("_", "-")

    return {g: {name(r) for r in reqs} for g, reqs in groups.items()}


EXPORT_MODULES = ("export.py", "bioimageio_package.py")  # may import the [export] extra


def _imports(folder: Path, only: tuple[str, ...] | None = None, skip: tuple[str, ...] = ()) -> set[str]:
    found = set()
    for path in folder.rglob("*.py"):
        if (only is not None and path.name not in only) or path.name in skip:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"napari_unet", "__future__"}


def _distributions(modules: set[str]) -> set[str]:
    dists = packages_distributions()
    out = set()
    for m in modules:
        names = dists.get(m)
        assert names, f"'{m}' is imported but not installed"
        out |= {n.lower().replace("_", "-") for n in names}
    return out


def test_every_import_of_the_package_is_declared():
    declared = _declared()
    runtime = declared["dependencies"] | declared["all"]
    core = _distributions(_imports(ROOT / "napari_unet" / "core", skip=EXPORT_MODULES) | {"tqdm", "platformdirs"})
    assert core <= declared["dependencies"], core - declared["dependencies"]
    export = _distributions(_imports(ROOT / "napari_unet" / "core", only=EXPORT_MODULES))
    assert export <= declared["dependencies"] | declared["export"], (
        export - declared["dependencies"] - declared["export"]
    )
    qt = _distributions(_imports(ROOT / "napari_unet" / "_qt"))
    qt -= {"pyqt5", "pyqt6", "pyside2", "pyside6"}  # qtpy picks the installed binding
    missing = qt - runtime - {"qtpy"}  # qtpy comes with napari[pyqt5]
    assert not missing, f"imported by napari_unet/_qt but not declared: {sorted(missing)}"


def test_no_declared_dependency_goes_unused():
    declared = _declared()
    used = _distributions(_imports(ROOT / "napari_unet"))
    unused = declared["dependencies"] - used - {"imagecodecs"}  # imagecodecs: tifffile's compressions, never imported
    assert not unused, f"declared but never imported: {sorted(unused)}"
    assert "magicgui" not in declared["all"] | declared["testing"]
    assert "monai" not in declared["testing"]  # only benchmarks use it

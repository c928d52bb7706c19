"""The folders are the architecture: generic package names resolve here, imports point one way."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("workers", "models", "evidence", "pipelines")

#: What each package may not import: pipelines -> workers -> models, and pipelines -> evidence.
FORBIDDEN = {
    "workers": {"evidence", "pipelines", "ray", "sqlalchemy", "alembic"},
    "models": {"workers", "evidence", "pipelines", "ray", "sqlalchemy"},
    "evidence": {"workers", "models", "pipelines", "ray"},
}


@pytest.mark.parametrize("package", PACKAGES)
def test_generic_package_names_resolve_to_this_repo(package: str) -> None:
    module = importlib.import_module(package)
    assert module.__file__ is not None
    assert Path(module.__file__).resolve().parent == ROOT / package
    owners = importlib.metadata.packages_distributions().get(package, [])
    assert set(owners) <= {"qarina"}, f"{package} is also provided by {owners}"


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_one_way(package: str) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imported_roots(path) & FORBIDDEN[package])
        for path in (ROOT / package).rglob("*.py")
    }
    assert {file: names for file, names in offenders.items() if names} == {}

"""pyproject.toml declares every package the pipeline imports, pinned as requirements.lock."""

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions

from tests.conftest import ROOT

# Other Keras backends: imported only when KERAS_BACKEND names them (requirements-jax.lock).
OPTIONAL = {"jax", "torch"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    found = {}
    for dep in deps:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(?:==\s*([^;\s]+))?\s*(?:;.*)?", dep)
        assert m, f"pyproject.toml: cannot read dependency {dep!r}"
        found[_norm(m[1])] = m[2]
    return found


def _imported_top_modules() -> set[str]:
    names = set()
    for file in (ROOT / "pipeline").rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"pipeline"} - OPTIONAL


def test_every_imported_package_is_declared_and_pinned_as_in_the_lock():
    declared = _declared()
    dists = packages_distributions()
    lock = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        name, sep, version = line.partition("==")
        if sep:
            lock[_norm(name)] = version.split(";")[0].split()[0]

    imported = _imported_top_modules()
    assert {"numpy", "scipy", "matplotlib", "sklearn", "keras"} <= imported  # the scan works
    for module in sorted(imported):
        providers = {_norm(d) for d in dists[module]}  # mlflow: mlflow and mlflow-skinny
        assert providers & set(declared), f"pipeline imports {module}; pyproject.toml lacks it"
    for dist, version in declared.items():
        assert version is not None, f"pyproject.toml: {dist} is not pinned"
        assert lock.get(dist) == version, (
            f"pyproject.toml pins {dist}=={version}, lock: {lock.get(dist)}"
        )

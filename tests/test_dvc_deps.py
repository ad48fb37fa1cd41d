"""dvc.yaml's code deps are exactly what each stage imports, so they cannot drift.

Each stage's closure is computed from the source (``ast``, nothing imported): it starts
at ``pipeline/__main__.py`` (``python -m pipeline <stage>``) and ``pipeline/<stage>.py``
(which ``pipeline/cli.py`` dispatches to) and follows every ``pipeline`` import, those
inside functions included. Editing a file a stage never imports must not rerun it, and
editing one it does must.
"""

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, dvc_project

PACKAGE = "pipeline"
DVC_YAML = ROOT / "dvc.yaml"
# Where runs are recorded is not what is computed: only register's effect depends on it.
TRACKING_PARAMS_FREE = ("tune", "train", "evaluate")


def _stages() -> dict:
    return yaml.safe_load(DVC_YAML.read_text())["stages"]


def _module_file(name: str) -> Path | None:
    """``pipeline.a.b`` -> its file (module or package ``__init__.py``), None if not ours."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _with_parents(name: str) -> set[Path]:
    """``pipeline.a.b``'s file and the ``__init__.py`` of each package above it."""
    parts = name.split(".")
    found = set()
    for i in range(1, len(parts) + 1):
        path = _module_file(".".join(parts[:i]))
        if path is not None:
            found.add(path)
    return found


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _dynamic_prefix(call: ast.Call) -> str | None:
    """``importlib.import_module(f"pipeline.x.{name}")`` -> ``pipeline.x``."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name != "import_module" or not call.args:
        return None
    arg = call.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    first = arg.values[0] if isinstance(arg, ast.JoinedStr) and arg.values else None
    if isinstance(first, ast.Constant) and str(first.value).startswith(PACKAGE + "."):
        return str(first.value).rstrip(".") + ".*"
    raise AssertionError(f"cannot tell what {ast.unparse(call)} imports; make it an f-string")


def _imports(path: Path) -> set[Path]:
    """The pipeline files ``path`` imports directly (with their packages' ``__init__``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path.parent)
    found: set[Path] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found |= _with_parents(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found |= _with_parents(module)
            for alias in node.names:  # `from pipeline import x`: x may be a submodule
                sub = _module_file(f"{module}.{alias.name}")
                if sub is not None:
                    found.add(sub)
        elif isinstance(node, ast.Call) and (prefix := _dynamic_prefix(node)):
            if prefix == PACKAGE + ".*":
                continue  # cli.py's stage dispatch: each stage's own module is a root
            if prefix.endswith(".*"):  # a plug-in folder: every module in it
                folder = _module_file(prefix[:-2]).parent
                found |= {p for p in folder.glob("*.py")} | _with_parents(prefix[:-2])
            else:
                found |= _with_parents(prefix)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            # A sibling code file used by path, e.g. the MLflow pyfunc model's code file.
            if re.fullmatch(r"\w+\.py", node.value) and (path.parent / node.value).is_file():
                found.add(path.parent / node.value)
    return found


def import_closure(stage: str) -> set[str]:
    """Every pipeline file ``python -m pipeline <stage>`` may import, relative to the root."""
    roots = [ROOT / PACKAGE / "__main__.py", ROOT / PACKAGE / f"{stage}.py"]
    seen: set[Path] = set()
    todo = [*roots, *_with_parents(f"{PACKAGE}.{stage}")]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo.extend(_imports(path) - seen)
    return {p.relative_to(ROOT).as_posix() for p in seen}


def listed_code(stage: dict) -> set[str]:
    """The stage's deps under ``pipeline/``, a folder standing for every file in it."""
    files = set()
    for dep in stage.get("deps", []):
        if dep.rstrip("/") != PACKAGE and not dep.startswith(PACKAGE + "/"):
            continue
        path = ROOT / dep
        if path.is_dir():
            files |= {
                p.relative_to(ROOT).as_posix()
                for p in path.rglob("*.py")
                if "__pycache__" not in p.parts
            }
        else:
            files.add(dep)
    return files


def _stage_module(stage: dict) -> str:
    match = re.fullmatch(r"python -m pipeline (\w+)", stage["cmd"].strip())
    assert match, f"cmd {stage['cmd']!r}: expected `python -m pipeline <stage>`"
    return match.group(1)


@pytest.mark.parametrize("name", list(_stages()))
def test_code_deps_are_exactly_the_import_closure(name):
    stage = _stages()[name]
    closure = import_closure(_stage_module(stage))
    listed = listed_code(stage)
    missing = sorted(closure - listed)
    extra = sorted(listed - closure)
    assert not missing and not extra, (
        f"dvc.yaml stage {name!r}: add to deps {missing} (imported, so editing them must "
        f"rerun the stage); remove {extra} (never imported, so editing them must not)"
    )


def test_every_listed_code_dep_exists():
    for name, stage in _stages().items():
        for dep in stage.get("deps", []):
            if dep.startswith(PACKAGE + "/"):
                assert (ROOT / dep).exists(), f"dvc.yaml stage {name!r}: {dep} does not exist"


def test_the_closure_follows_function_level_relative_and_plugin_imports():
    # Guards the scanner itself: each edge below is written a different way in the code.
    assert "pipeline/cli.py" in import_closure("download")  # __main__ -> cli
    assert "pipeline/data/splits.py" in import_closure("tune")  # inside a function
    assert {"pipeline/families/vgg.py", "pipeline/families/__init__.py"} <= import_closure(
        "train"
    )  # importlib.import_module(f"pipeline.families.{name}")
    assert "pipeline/registry/pyfunc_model.py" in import_closure("register")  # code file
    assert "pipeline/data/fetch.py" not in import_closure("train")


@pytest.mark.parametrize("name", TRACKING_PARAMS_FREE)
def test_where_runs_are_recorded_does_not_make_computing_stages_stale(name):
    params = [p if isinstance(p, str) else next(iter(p)) for p in _stages()[name]["params"]]
    tracking = [p for p in params if p == "mlflow" or p.startswith("mlflow.")]
    assert not tracking, f"dvc.yaml stage {name!r}: {tracking} must not be a param"


def test_the_registry_location_is_a_param_of_register():
    assert "mlflow" in _stages()["register"]["params"]


def _stand_ins(root: Path, stages: dict) -> None:
    """A file (or a folder with one) at every dep and out, for `dvc commit` to record."""
    params = yaml.safe_load((root / "params.yaml").read_text())

    def lookup(match):
        value = params
        for key in match.group(1).split("."):
            value = value[key]
        return str(value)

    paths = set()
    for stage in stages.values():
        for key in ("deps", "outs", "metrics", "plots"):
            for entry in stage.get(key, []):
                name = entry if isinstance(entry, str) else next(iter(entry))
                paths.add(root / re.sub(r"\$\{([\w.]+)\}", lookup, name))
    for path in sorted(paths, key=lambda p: bool(p.suffix)):  # folders before files in them
        if path.exists():
            continue
        if path.suffix:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("stand-in")
        else:
            path.mkdir(parents=True)
            (path / "stand-in").write_text("stand-in")


@pytest.mark.integration
def test_renaming_the_experiment_or_moving_the_store_makes_only_register_stale(tmp_path):
    root = dvc_project(tmp_path / "repo")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def dvc(*args):
        done = subprocess.run(
            ["dvc", *args], cwd=root, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    _stand_ins(root, yaml.safe_load((root / "dvc.yaml").read_text())["stages"])
    dvc("commit", "--force", "--quiet")  # as if every stage had just run
    assert json.loads(dvc("status", "--json")) == {}
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["mlflow"].update(experiment_name="renamed", tracking_uri="sqlite:///elsewhere.db")
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    assert json.loads(dvc("status", "--json")) == {
        "register": [{"changed deps": {"params.yaml": {"mlflow": "modified"}}}]
    }

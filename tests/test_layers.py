"""The arrows between packages go one way: run.py -> the wiring (deit/build/) -> {deit
components, hooks} -> engine. Read from the source, so an import inside a function counts."""
import ast
import os

import pytest

from tests.conftest import ROOT

WIRING = os.path.join("deit", "build") + os.sep
FORBIDDEN = {"engine": {"deit", "hooks", "run"}, "hooks": {"deit", "run"}, "deit": {"engine", "hooks", "run"}}
# the error vocabulary everyone shares (one UserError for run.py to catch); none of the loop
SHARED = {"engine.errors"}


def _imports(path):
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def _sources(package):
    for folder, _, names in os.walk(os.path.join(ROOT, package)):
        for name in sorted(names):
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, name), ROOT)
                if not rel.startswith(WIRING):
                    yield rel


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_package_imports_one_above_it(package):
    wrong = [(rel, name) for rel in _sources(package) for name in _imports(os.path.join(ROOT, rel))
             if name.split(".")[0] in FORBIDDEN[package] and name not in SHARED]
    assert wrong == [], f"imports against the layering: {wrong}"


def test_the_check_sees_an_import_inside_a_function(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from hooks.progress import Progress\n    import engine.dist\n")
    assert list(_imports(str(bad))) == ["hooks.progress", "engine.dist"]


def test_what_deit_may_share_of_the_engine_imports_nothing_of_it():
    """engine/errors.py is shared because it stands alone: the standard library only."""
    for name in SHARED:
        imported = set(_imports(os.path.join(ROOT, *name.split(".")) + ".py"))
        assert imported <= {"difflib"}, (name, imported)

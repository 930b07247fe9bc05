"""A fresh machine passes the README's test command: every import is declared, and CI installs the way the
README says, in a virtual environment of its own."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import REPO

try:
    import tomllib
except ImportError:  # pragma: no cover - Python < 3.11: tomli, declared in [test] for those versions
    import tomli as tomllib

LIBRARY = ["plpp", "trainers", "datasets", "benchmarks", "train.py", "parse_test_res.py"]
OPTIONAL_ERRORS = {"ImportError", "ModuleNotFoundError"}
#: Optional software that is imported only when chosen, with the one-line error that says how to get it.
OPTIONAL_SOFTWARE = {"dassl": "PLPP_ENGINE=dassl without Dassl: 'Install Dassl.pytorch or set PLPP_ENGINE=builtin'"}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> tuple[set[str], set[str]]:
    """Canonical distribution names in ``dependencies`` and in the ``test`` extra of pyproject.toml."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]

    def names(reqs: list[str]) -> set[str]:
        return {_canonical(re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0]) for r in reqs}

    return names(project["dependencies"]), names(project["optional-dependencies"]["test"])


def _is_stdlib(module: str) -> bool:
    if hasattr(sys, "stdlib_module_names"):
        return module in sys.stdlib_module_names
    spec = importlib.util.find_spec(module)  # pragma: no cover - Python 3.9
    origin = getattr(spec, "origin", None) or ""
    return origin in ("built-in", "frozen") or (origin.startswith(sysconfig.get_paths()["stdlib"])
                                                 and "site-packages" not in origin)


def _optional(node: ast.AST, parents: dict) -> bool:
    """True when ``node`` sits in a ``try`` whose handler catches ImportError (an optional import)."""
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.Try):
            for handler in node.handlers:
                caught = handler.type
                names = [caught] if not isinstance(caught, ast.Tuple) else list(caught.elts)
                if any(isinstance(n, ast.Name) and n.id in OPTIONAL_ERRORS for n in names):
                    return True
    return False


def imports(paths: list[Path]) -> dict[str, set[str]]:
    """Top-level module → files that import it unconditionally (``import``, ``from``, ``import_module("x")``)."""
    found: dict[str, set[str]] = {}
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module" and node.args
                  and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                names = [node.args[0].value]
            if names and not _optional(node, parents):
                for name in names:
                    where = path.relative_to(REPO) if path.is_relative_to(REPO) else path
                    found.setdefault(name.split(".")[0], set()).add(str(where))
    return found


def python_files(entries: list[str]) -> list[Path]:
    out = []
    for entry in entries:
        path = REPO / entry
        out.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    return out


def undeclared(files: list[Path], allowed: set[str]) -> list[str]:
    local = {p.stem if p.is_file() else p.name for p in REPO.iterdir()} | {"plpp"}
    providers = importlib.metadata.packages_distributions()
    problems = []
    for module, users in sorted(imports(files).items()):
        if module in local or module in OPTIONAL_SOFTWARE or _is_stdlib(module):
            continue
        dists = {_canonical(d) for d in providers.get(module, [])}
        if not dists:
            problems.append(f"{module} (imported by {sorted(users)[0]}) is not installed by any distribution")
        elif not dists & allowed:
            problems.append(f"{module} (imported by {sorted(users)[0]}) comes from {sorted(dists)}, not declared")
    return problems


def test_every_import_of_the_package_is_a_dependency():
    deps, _ = declared()
    assert undeclared(python_files(LIBRARY), deps) == []


def test_every_import_of_the_tests_is_declared():
    deps, test = declared()
    assert undeclared(python_files(["tests"]), deps | test) == []


def test_the_scan_sees_conditional_and_dynamic_imports(tmp_path):
    """The checker itself: an optional import is allowed, a dynamic or plain one of a foreign module is not."""
    src = tmp_path / "probe.py"
    src.write_text("import importlib\ntry:\n    import dassl\nexcept ImportError:\n    dassl = None\n"
                   "importlib.import_module('yaml')\nimport no_such_module_xyz\n", encoding="utf-8")
    found = imports([src])
    problems = undeclared([src], set())
    assert "dassl" not in found and "yaml" in found
    assert any(p.startswith("yaml ") for p in problems) and any(p.startswith("no_such_module_xyz ") for p in problems)


def test_scipy_missing_is_one_line_saying_what_to_install(monkeypatch):
    from plpp.datasets.splits import DatasetError, import_loadmat

    monkeypatch.setitem(sys.modules, "scipy.io", None)  # what Python does for a module that is not installed
    with pytest.raises(DatasetError, match=r"needs scipy, which is not installed: pip install scipy"):
        import_loadmat("imagelabels.mat")


def _readme_commands() -> dict[str, str]:
    """The README's fresh-machine install and test commands (comments stripped)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"\*\*On a fresh machine\*\*.*?```console\n(.*?)```", text, re.S).group(1)
    lines = [ln.split("#")[0].strip() for ln in block.splitlines()]
    return {"install": next(ln for ln in lines if ln.startswith("pip install")),
            "test": next(ln for ln in lines if "pytest" in ln)}


def test_ci_installs_and_tests_as_the_readme_says_in_a_fresh_venv():
    script = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    lines = [ln.strip() for ln in script.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    readme = _readme_commands()
    assert readme == {"install": 'pip install -e ".[test]"', "test": "python -m pytest -q"}
    venv = next(i for i, ln in enumerate(lines) if re.search(r'-m venv "\$VENV"$', ln))
    activate = lines.index('source "$VENV/bin/activate"')
    install, test = lines.index(readme["install"]), lines.index(readme["test"])
    assert venv < activate < install < lines.index("ruff check .") < test  # all inside the new venv
    assert "--system-site-packages" not in script and "set -euo pipefail" in lines
    assert "PYTHONNOUSERSITE=1" in script and "unset PYTHONPATH" in script
    res = subprocess.run(["bash", "-n", str(REPO / ".ci" / "run")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr

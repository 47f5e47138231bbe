"""The house rules as import-linter contracts (pyproject.toml [tool.importlinter]): the core imports no domain and
no domain library, no domain imports another, the core's layers import only downwards. The contract lists every
core module, so a new one cannot slip past it."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _contracts() -> dict[str, dict]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["id"]: c for c in config["contracts"]}


def test_lint_imports_keeps_every_contract():
    script = REPO / "tools" / "lint_imports.py"
    out = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Contracts: 3 kept, 0 broken." in out.stdout


def test_the_forbidden_contract_covers_every_core_module():
    core = REPO / "core"
    modules = {f"domainfm.{p.stem}" for p in core.glob("*.py") if p.stem != "__init__"}
    modules |= {f"domainfm.{p.parent.name}" for p in core.glob("*/__init__.py")}
    contract = _contracts()["core-names-no-domain"]
    assert set(contract["source_modules"]) == modules
    domains = {f"domainfm.{p.parent.name}" for p in REPO.glob("*/domain.yaml") if p.parent.name != "core"}
    assert domains <= set(contract["forbidden_modules"])
    assert set(_contracts()["domains-independent"]["modules"]) == domains


def test_a_core_module_importing_a_domain_library_breaks_the_contract(tmp_path):
    """The same check on a copy of the tree with one offending module added: it must fail, naming the import."""
    import importlib.util
    import os

    spec = importlib.util.spec_from_file_location("lint_imports", REPO / "tools" / "lint_imports.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    tree = tool.installed_layout(tmp_path / "tree")
    (tree / "domainfm" / "engine" / "sneaky.py").write_text("import openslide\nfrom domainfm.engine import trainer\n")
    (tree / "domainfm" / "methods" / "upward.py").write_text("from domainfm.engine import trainer\n")
    lint = os.path.join(os.path.dirname(sys.executable), "lint-imports")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [lint, "--no-cache", str(REPO / "pyproject.toml")], cwd=tree, env=env, capture_output=True, text=True
    )
    assert out.returncode != 0
    assert "domainfm.engine.sneaky -> openslide" in out.stdout
    assert "domainfm.methods.upward -> domainfm.engine.trainer" in out.stdout
    assert "Contracts: 1 kept, 2 broken." in out.stdout

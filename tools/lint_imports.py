"""Run import-linter (the contracts in pyproject.toml) on domainfm as it is installed: ``core/`` is the package
``domainfm`` and each domain folder its subpackage, but grimp walks one folder per root package, so the .py files
are laid out in that shape in a temporary folder first. ``python tools/lint_imports.py`` (also a pre-commit hook
and a test in ``make test``); exit code and output are lint-imports'."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]


def installed_layout(dest: Path) -> Path:
    """Copy every .py file to ``dest/<package path>`` following pyproject's ``package-dir``."""
    mapping = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for package, folder in mapping.items():
        for src in (REPO / folder).rglob("*.py"):
            target = dest.joinpath(*package.split("."), src.relative_to(REPO / folder))
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    return dest


def main() -> int:
    lint = Path(sys.executable).with_name("lint-imports")
    with tempfile.TemporaryDirectory() as tmp:
        installed_layout(Path(tmp))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([tmp, os.environ.get("PYTHONPATH", "")])}
        cmd = [str(lint) if lint.exists() else "lint-imports", "--no-cache", str(REPO / "pyproject.toml")]
        return subprocess.run(cmd, cwd=tmp, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())

"""Optional-dependency guard for the domain packages: ``require_domain(__file__)`` in a domain's ``__init__``
checks the modules its manifest (``domain.yaml``) lists under ``requires`` and fails in one line naming the extra."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def available(module: str) -> bool:
    """Whether ``module`` can be imported, found without importing it."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require_domain(init_file: str) -> None:
    """Raise ``ImportError('domain <name> needs <modules>: pip install "domainfm[<extra>]"')`` when the extra of
    the domain whose ``__init__.py`` is ``init_file`` is not installed."""
    from domainfm.plugins import read_manifest

    read_manifest(Path(init_file).parent / "domain.yaml").require()

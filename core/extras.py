"""Optional-dependency guard for the domain packages."""

from __future__ import annotations

import importlib.util
import sys


def _available(module: str) -> bool:
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require_extra(extra: str, modules: list[str], package: str | None = None) -> None:
    """Raise a one-line ImportError naming the pip extra when any of ``modules`` is missing."""
    missing = [m for m in modules if not _available(m)]
    if missing:
        raise ImportError(
            f'domainfm.{package or extra.replace("-", "_")} needs {", ".join(missing)}: pip install "domainfm[{extra}]"'
        )

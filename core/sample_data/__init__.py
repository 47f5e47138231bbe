"""Small, redistributable sample files shipped with domainfm (see README.md in this folder)."""

from __future__ import annotations

from pathlib import Path

from domainfm.errors import DataError

HERE = Path(__file__).parent


def sample_path(name: str) -> Path:
    """Path of a bundled sample (a folder or file name in ``domainfm/sample_data``)."""
    path = HERE / name
    if not path.exists():
        available = sorted(p.name for p in HERE.iterdir() if not p.name.startswith(("_", ".")) and p.suffix != ".md")
        raise DataError(f"no bundled sample named {name!r}; available: {', '.join(available)}")
    return path

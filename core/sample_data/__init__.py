"""Small, redistributable sample files shipped with domainfm (see README.md in this folder)."""

from __future__ import annotations

from pathlib import Path

from domainfm.errors import DataError

HERE = Path(__file__).parent


def sample_path(name: str) -> Path:
    """Path of a bundled sample: a folder or file name in ``domainfm/sample_data``, or ``<domain>/<name>`` in that
    domain package's ``sample_data`` folder."""
    folder, rest = HERE, name
    head, sep, tail = name.partition("/")
    if sep:
        from domainfm.plugins import domains

        found = domains()
        if head not in found:
            raise DataError(f"no bundled sample {name!r}: {head!r} is not an installed domain ({', '.join(found)})")
        folder, rest = found[head].folder / "sample_data", tail
    path = folder / rest
    if not path.exists():
        available = sorted(
            p.name for p in folder.iterdir() if not p.name.startswith(("_", ".")) and p.suffix not in (".md", ".py")
        )
        raise DataError(f"no bundled sample named {name!r}; available: {', '.join(available)}")
    return path

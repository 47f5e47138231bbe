"""Plain-text pieces of the end-of-command summaries."""

from __future__ import annotations

from collections.abc import Sequence


def skipped_lines(skipped: Sequence[str], limit: int = 20) -> list[str]:
    """``skipped files  N`` followed by up to ``limit`` names and a pointer to the full list."""
    lines = [f"skipped files  {len(skipped)}"]
    lines += [f"  - {s}" for s in skipped[:limit]]
    if len(skipped) > limit:
        lines.append(f"  ... and {len(skipped) - limit} more (see summary.json)")
    return lines

"""The bundled sample slide (see README.md)."""

from pathlib import Path

SAMPLE_SLIDE = Path(__file__).parent / "CMU-1-Small-Region.svs"

"""Package discovery for the folder-per-domain layout (see pyproject's package-dir)."""

from pathlib import Path

from setuptools import setup

ROOTS = {
    "domainfm": "core",
    "domainfm.pathology": "pathology",
    "domainfm.medical": "medical",
    "domainfm.remote_sensing": "remote_sensing",
    "domainfm.three_d": "three_d",
    "domainfm.face_security": "face_security",
}


def _packages() -> list[str]:
    here = Path(__file__).parent
    found = []
    for name, folder in ROOTS.items():
        for init in sorted((here / folder).rglob("__init__.py")):
            rel = init.parent.relative_to(here / folder)
            found.append(".".join([name, *rel.parts]))
    return found


setup(packages=_packages())

"""Where Hydra finds configs: the core tree plus each domain package's ``configs/`` (found without importing
the domain, so recipes are listed even when a domain's extra is not installed)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

CORE_CONFIGS = Path(__file__).parent / "configs"
DOMAINS = ("pathology", "medical", "remote_sensing", "three_d", "face_security")


def domain_config_dirs() -> list[Path]:
    dirs = []
    for domain in DOMAINS:
        try:
            spec = importlib.util.find_spec(f"domainfm.{domain}")
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            continue
        folder = Path(next(iter(spec.submodule_search_locations))) / "configs"
        if folder.is_dir():
            dirs.append(folder)
    return dirs


def config_dirs() -> list[Path]:
    return [CORE_CONFIGS, *domain_config_dirs()]


def searchpath_override() -> str:
    return "hydra.searchpath=[" + ",".join(f"file://{d}" for d in domain_config_dirs()) + "]"


def list_recipes() -> dict[str, str]:
    """``{"<domain>/<name>": description}`` for every recipe yaml."""
    recipes = {}
    for folder in config_dirs():
        root = folder / "recipe"
        for path in sorted(root.rglob("*.yaml")) if root.is_dir() else []:
            key = path.relative_to(root).with_suffix("").as_posix()
            try:
                text = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError:
                text = {}
            recipes[key] = str(text.get("description", "")).strip()
    return dict(sorted(recipes.items()))

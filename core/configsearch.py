"""Where Hydra finds configs: the core tree plus each domain's config folder, as its manifest declares
(``domainfm.plugins``; found without importing the domain, so recipes are listed even without its extra)."""

from __future__ import annotations

from pathlib import Path

import yaml
from domainfm import plugins
from omegaconf import DictConfig, OmegaConf

CORE_CONFIGS = Path(__file__).parent / "configs"


def searchpath_override(primary: Path = CORE_CONFIGS) -> str:
    """Every config folder but ``primary`` (the folder of the command's own config) on Hydra's search path."""
    return "hydra.searchpath=[" + ",".join(f"file://{d}" for d in plugins.config_dirs() if d != primary) + "]"


def command_overrides(command: str) -> list[str]:
    """What every composition of ``command`` starts with: the search path and the domains' extra keys."""
    primary = plugins.commands()[command].config_dir if command in plugins.commands() else CORE_CONFIGS
    return [searchpath_override(primary), *plugins.extensions(command)]


def recipe_description(path: Path) -> str:
    try:
        text = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        text = {}
    return str(text.get("description", "")).strip() if isinstance(text, dict) else ""


def list_recipes() -> dict[str, str]:
    """``{"<domain>/<name>": description}`` for every recipe yaml."""
    found = {key: path for d in plugins.domains().values() for key, path in d.recipes().items()}
    return {key: recipe_description(found[key]) for key in sorted(found)}


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("sample"):
        from domainfm.sample_data import sample_path

        OmegaConf.register_new_resolver("sample", lambda name: str(sample_path(name)))
    if not OmegaConf.has_resolver("div"):
        OmegaConf.register_new_resolver("div", lambda a, b: int(a) // int(b))
    if not OmegaConf.has_resolver("mul"):
        OmegaConf.register_new_resolver("mul", lambda a, b: a * b)
    if not OmegaConf.has_resolver("len"):
        OmegaConf.register_new_resolver("len", lambda items: len(items))
    if not OmegaConf.has_resolver("repeat"):  # ${repeat:0.0,${len:${preprocess.bands}}} -> [0.0, 0.0, ...]
        OmegaConf.register_new_resolver("repeat", lambda value, n: [value] * int(n))


def compose_config(command: str, overrides: list[str] | None = None) -> DictConfig:
    """The config that ``domainfm <command> <overrides>`` would run, composed in this process (for notebooks,
    scripts and tests): ``pretrain.run(compose_config("pretrain", ["run_dir=runs/x", ...]))``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_resolvers()
    found = plugins.commands().get(command)
    config, folder = (found.config, found.config_dir) if found else (command, CORE_CONFIGS)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(folder), version_base="1.3"):
            return compose(config_name=config, overrides=[*command_overrides(command), *(overrides or [])])
    finally:
        GlobalHydra.instance().clear()

"""``domainfm recipes``: every recipe with its one-line description."""

from __future__ import annotations

from domainfm.configsearch import list_recipes
from omegaconf import DictConfig


def run(cfg: DictConfig) -> None:
    recipes = list_recipes()
    if cfg.get("domain"):
        recipes = {k: v for k, v in recipes.items() if k.split("/", 1)[0] == cfg.domain}
    width = max((len(k) for k in recipes), default=0)
    for key, description in recipes.items():
        print(f"{key:<{width}}  {description}")

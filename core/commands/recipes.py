"""``domainfm recipes [domain=<name>]``: every recipe, grouped by domain, with its one-line description."""

from __future__ import annotations

from domainfm import plugins
from domainfm.configsearch import recipe_description
from omegaconf import DictConfig


def render(domain: str | None = None) -> str:
    lines = []
    for d in plugins.domains().values():
        recipes = d.recipes()
        if not recipes or (domain and d.name != domain):
            continue
        missing = f"  [not installed: {d.install_hint}]" if d.missing else ""
        lines.append(f"{d.name}{missing}")
        width = max(len(k) for k in recipes)
        lines += [f"  {key:<{width}}  {recipe_description(path)}" for key, path in recipes.items()]
        lines.append("")
    return "\n".join(lines).rstrip()


def run(cfg: DictConfig) -> None:
    print(render(cfg.get("domain")))

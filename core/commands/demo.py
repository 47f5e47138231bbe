"""``domainfm demo [domain] [key=value ...]``: a domain's demo on its bundled data (each domain declares its demo
module in its manifest; ``key=value`` pairs reach the demo's ``main`` as keyword strings). ``domainfm demo`` alone
lists them. This module is also the core's demo: MAE pretraining on the bundled H&E tiles."""

from __future__ import annotations

import importlib
import time
from pathlib import Path

from domainfm import plugins
from domainfm.errors import ConfigError


def main(run_dir: str = "runs/demo-core", **overrides: str) -> dict:
    """The core demo: ``pretrain`` with the default recipe (core/mae_vit_tiny on the bundled H&E tiles)."""
    from domainfm.commands import pretrain
    from domainfm.configsearch import compose_config

    start = time.perf_counter()
    pretrain.run(compose_config("pretrain", [f"run_dir={run_dir}", *(f"{k}={v}" for k, v in overrides.items())]))
    run = Path(run_dir).resolve()
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s")
    print(f"  run folder     {run}")
    print(f"  exported model {run / 'export'}  (timm.create_model('local-dir:{run / 'export'}', pretrained=True))")
    print(f"  report         {run / 'report'}")
    return {"run": str(run)}


def list_demos() -> str:
    lines = ["demos (domainfm demo <domain> [key=value ...]):"]
    for d in plugins.domains().values():
        if d.demo:
            missing = f"  [not installed: {d.install_hint}]" if d.missing else ""
            lines.append(f"  {d.name:<16} {d.demo.get('help', '')}{missing}")
    return "\n".join(lines)


def run_demo(args: list[str]) -> object:
    """Run the demo of the domain named first in ``args`` (none: print the list)."""
    if not args or args[0] in ("-h", "--help"):
        print(list_demos())
        return None
    name, rest = args[0], args[1:]
    found = {d.name: d for d in plugins.domains().values() if d.demo}
    if name not in found:
        raise ConfigError(f"no demo named {name!r}; demos: {', '.join(found)}")
    bad = [a for a in rest if "=" not in a]
    if bad:
        raise ConfigError(f"demo arguments are key=value pairs, got {bad[0]!r}")
    domain = found[name]
    domain.require()
    demo = importlib.import_module(domain.demo["module"])
    return demo.main(**dict(a.split("=", 1) for a in rest))

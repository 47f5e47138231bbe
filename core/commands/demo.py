"""``domainfm demo [domain] [key=value ...]``: a domain's demo on its bundled data (each domain declares its demo
module in its manifest; ``key=value`` pairs reach the demo's ``main`` as keyword strings). ``domainfm demo`` alone
lists them. This module is also the core's demo: SimCLR on bundled chest X-rays, then kNN against random init."""

from __future__ import annotations

import importlib
import time
from pathlib import Path

from domainfm import plugins
from domainfm.errors import ConfigError

XRAYS = "pneumoniamnist_xrays"  # 1,088 training + 624 test PNGs of PneumoniaMNIST (sample_data/README.md)
# the core SimCLR recipe for grey 28 px X-rays: one channel, 16 px patches at 64 px, no colour jitter
XRAY_OVERRIDES = [
    "recipe=core/simclr_vit_tiny",
    "preprocess.in_chans=1",
    "preprocess.mean=[0.5]",
    "preprocess.std=[0.25]",
    "backbone.patch_size=16",
    "data.transform.photometric=null",
]


def main(out: str = "runs/demo-core", steps: int | str = 150, **overrides: str) -> dict:
    """``domainfm demo core [out=<folder>] [steps=<n>] [<pretrain key>=<value> ...]``: SimCLR pretraining of a
    ViT-Tiny on the bundled PneumoniaMNIST training X-rays (labels unused), then kNN on the test split next to the
    same ViT at random initialisation, with 95 % bootstrap CIs (about a minute and a half on 2 CPU cores)."""
    from domainfm.commands import evaluate, pretrain
    from domainfm.configsearch import compose_config
    from domainfm.sample_data import sample_path

    start = time.perf_counter()
    out_dir, steps = Path(out).resolve(), int(steps)
    xrays, run = sample_path(XRAYS), out_dir / "simclr"
    args = [
        *XRAY_OVERRIDES,
        f"data.root={xrays / 'train'}",
        f"run_dir={run}",
        f"trainer.max_steps={steps}",
        f"trainer.checkpoint_every={steps}",
        *(f"{k}={v}" for k, v in overrides.items()),
    ]
    print(f"[1/2] SimCLR on {xrays / 'train'} (1,088 chest X-rays, labels unused) for {steps} steps", flush=True)
    print("      the same run by hand: domainfm pretrain " + " ".join(args), flush=True)
    pretrain.run(compose_config("pretrain", args))
    baseline = random_init_export(run, out_dir / "random_init" / "export")

    print("\n[2/2] kNN (k=20) on the 624 test X-rays: the pretrained ViT and the same ViT at random init", flush=True)
    evaluation = out_dir / "evaluate"
    results = evaluate.run(
        compose_config(
            "evaluate",
            [
                f"backbone=[{run},{baseline}]",
                f"data.root={xrays}",
                f"data.csv={xrays / 'labels.csv'}",
                "protocol=[knn]",
                f"run_dir={evaluation}",
            ],
        )
    )
    (pretrained,), (random_init,) = results.values()  # in the order of backbone=[...]
    print("\n" + verdict(pretrained, random_init))
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s")
    print(f"  loss curve     {run / 'report' / 'loss.png'}")
    print(f"  evaluation     {evaluation / 'summary.md'} (embedding maps in {evaluation})")
    print(f"  exported model {run / 'export'}  (timm.create_model('local-dir:{run / 'export'}', pretrained=True))")
    return {"run": str(run), "evaluate": str(evaluation), "results": results}


def random_init_export(run: Path, out: Path) -> Path:
    """The run's architecture and preprocessing at its seed's initialisation, exported (the baseline of a demo);
    the domain keys of the run's own export (bands, normalisation, MPP) and the method's export files are kept."""
    import json

    from domainfm.commands.common import load_run_config
    from domainfm.engine.export import export_backbone
    from domainfm.engine.runtime import seed_everything
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = load_run_config(run / "config.yaml")
    seed_everything(int(cfg.trainer.seed))
    method = instantiate(cfg.method)
    preprocess = OmegaConf.to_container(cfg.preprocess, resolve=True)
    exported = run / "export" / "config.json"
    if exported.is_file():
        preprocess.update(json.loads(exported.read_text()).get("domainfm") or {})
    settings = OmegaConf.to_container(cfg, resolve=True)
    extra = lambda folder: method.export_files(folder, settings)  # e.g. a CLIP run's text tower, untrained too
    return export_backbone(method.backbone, out, preprocess, tag="random-init", extra_files=extra)


def verdict(pretrained: dict, random_init: dict, metric: str = "balanced_accuracy", label: str = "kNN") -> str:
    """One line: does pretraining beat random init on ``metric``, with the 95 % CIs and whether they overlap."""
    (a, (a_lo, a_hi)), (b, (b_lo, b_hi)) = ((r["metrics"][metric], r["ci"][metric]) for r in (pretrained, random_init))
    name = metric.replace("_", " ")
    if a_lo > b_hi:
        how = "pretraining beats random init (95 % CIs disjoint)"
    elif a > b:
        how = "pretraining is ahead of random init, but the 95 % CIs overlap"
    else:
        how = "pretraining does not beat random init at this budget"
    return f"{how}: {label} {name} {a:.3f} [{a_lo:.3f}, {a_hi:.3f}] vs {b:.3f} [{b_lo:.3f}, {b_hi:.3f}]"


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

"""``make demo`` / ``python -m domainfm.demo``: the pathology pipeline on bundled data (slide -> tiles -> UNI-style
pretraining -> probes); without the pathology extra, MAE pretraining on the bundled H&E tiles."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path


def core_demo(run_dir: str = "runs/demo-core") -> None:
    from domainfm.cli import main as cli

    start = time.perf_counter()
    cli(["pretrain", f"run_dir={run_dir}", *sys.argv[1:]])
    run = Path(run_dir).resolve()
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s")
    print(f"  run folder     {run}")
    print(f"  exported model {run / 'export'}  (timm.create_model('local-dir:{run / 'export'}', pretrained=True))")
    print(f"  report         {run / 'report'}")


def main() -> None:
    if importlib.util.find_spec("openslide") is None:
        print('the pathology extra is missing (pip install "domainfm[pathology]"): running the core MAE demo')
        core_demo()
        return
    from domainfm.pathology.demo import main as pathology_demo

    pathology_demo()


if __name__ == "__main__":
    main()

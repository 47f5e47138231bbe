"""``make demo`` / ``python -m domainfm.demo``: pretrain the default recipe on the bundled sample images."""

from __future__ import annotations

import sys
import time
from pathlib import Path


def main(run_dir: str = "runs/demo") -> None:
    from domainfm.cli import main as cli

    start = time.perf_counter()
    cli(["pretrain", f"run_dir={run_dir}", *sys.argv[1:]])
    run = Path(run_dir).resolve()
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s")
    print(f"  run folder     {run}")
    print(f"  exported model {run / 'export'}  (timm.create_model('local-dir:{run / 'export'}', pretrained=True))")
    print(f"  loss curve     {run / 'report' / 'loss.png'}")


if __name__ == "__main__":
    main()

"""Loss curves from ``metrics.jsonl``."""

from __future__ import annotations

from pathlib import Path

from domainfm.common.runlog import read_metrics


def plot_loss_curve(run_dir: str | Path, out: str | Path | None = None) -> Path | None:
    """``report/loss.png``: logged loss (and lr on a second axis) against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_metrics(run_dir) if "loss" in r]
    if not rows:
        return None
    out = Path(out) if out else Path(run_dir) / "report" / "loss.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], color="tab:blue", label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss", color="tab:blue")
    if "lr" in rows[0]:
        ax2 = ax.twinx()
        ax2.plot([r["step"] for r in rows], [r["lr"] for r in rows], color="tab:gray", alpha=0.5, label="lr")
        ax2.set_ylabel("learning rate", color="tab:gray")
    ax.set_title(Path(run_dir).name)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out

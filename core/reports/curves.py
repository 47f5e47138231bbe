"""Loss curves from ``metrics.jsonl``."""

from __future__ import annotations

from pathlib import Path

from domainfm.common.runlog import read_metrics


def plot_loss_curve(run_dir: str | Path, out: str | Path | None = None) -> Path | None:
    """``report/loss.png``: logged loss (and lr on a second axis) against the step; below it, the embeddings'
    effective rank (RankMe) when the run logged it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = read_metrics(run_dir)
    rows = [r for r in metrics if "loss" in r]
    if not rows:
        return None
    ranks = [r for r in metrics if "rankme" in r]
    out = Path(out) if out else Path(run_dir) / "report" / "loss.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    if ranks:
        fig, (ax, ax_rank) = plt.subplots(2, 1, figsize=(6, 5.5), dpi=120, sharex=True, height_ratios=[3, 2])
        ax_rank.plot([r["step"] for r in ranks], [r["rankme"] for r in ranks], "o-", color="tab:green", ms=3)
        ax_rank.set_ylim(0, max(r["rankme_max"] for r in ranks) * 1.05)
        ax_rank.set_ylabel("effective rank\n(RankMe)")
        ax_rank.set_xlabel("step")
    else:
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], color="tab:blue", label="loss")
    if not ranks:
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

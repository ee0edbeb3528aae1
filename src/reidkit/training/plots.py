"""Training-curve picture from the JSONL log rows."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..utils import atomic_path  # noqa: E402


def plot_training_curves(rows: list[dict], path: str | Path) -> None:
    if not rows:
        return
    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 3.6))
    loss_keys = sorted({k for r in rows for k in r if k.startswith("loss_")})
    for key in loss_keys:
        ax_loss.plot(epochs, [r.get(key, float("nan")) for r in rows], label=key[5:])
    ax_loss.plot(epochs, [r["loss"] for r in rows], "k--", label="total")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="training loss")
    ax_loss.legend(fontsize=8)
    val_rows = [r for r in rows if "val" in r]
    if val_rows:
        for metric in ("rank1", "mAP"):
            ax_val.plot([r["epoch"] for r in val_rows], [r["val"][metric] for r in val_rows], "o-", label=metric)
        local_rows = [r for r in val_rows if "val_local" in r]  # AlignedReID: global + local distance
        if local_rows:
            for metric in ("rank1", "mAP"):
                ax_val.plot([r["epoch"] for r in local_rows], [r["val_local"][metric] for r in local_rows], "s--",
                            label=f"{metric} (+local)")
        ax_val.set(xlabel="epoch", ylabel="%", title="validation", ylim=(0, 100))
        ax_val.legend(fontsize=8)
    else:
        ax_val.set_axis_off()
    _save(fig, path)


def plot_metric_per_epoch(series: list[tuple[str, list[int], list[float], str]], path: str | Path, ylabel: str,
                          title: str, target: float | None = None) -> None:
    """One validation metric against the epoch for several runs: (label, epochs, values, group) per line.

    Lines of one group (e.g. the students of one mutual-learning run) share a colour; the group's later lines
    are dashed. `target` draws a dotted horizontal reference line.
    """
    fig, ax = plt.subplots(figsize=(8, 4.5))
    colours: dict[str, str] = {}
    for label, epochs, values, group in series:
        later = group in colours
        (line,) = ax.plot(epochs, values, "s--" if later else "o-", markersize=3, color=colours.get(group),
                          label=label)
        colours.setdefault(group, line.get_color())
    if target is not None:
        ax.axhline(target, color="grey", linestyle=":", label=f"target {target:g}")
    ax.set(xlabel="epoch", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, path)


def _save(fig, path: str | Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)

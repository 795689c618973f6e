"""The loss curve written beside the checkpoints: training loss per step, validation loss per epoch."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def loss_curve(history: Sequence[dict], validation: Sequence[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if history:
        it = np.array([h["iter"] for h in history])
        loss = np.array([h["loss"] for h in history])
        ax.plot(it, loss, lw=0.6, alpha=0.4, color="C0", label="train (per step)")
        k = max(1, len(loss) // 50)
        if k > 1:
            smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
            ax.plot(it[k - 1:], smooth, lw=1.5, color="C0", label=f"train ({k}-step mean)")
        for i in range(1, len(history)):
            if history[i]["phase"] != history[i - 1]["phase"]:
                ax.axvline(history[i]["iter"], color="grey", ls=":", lw=1)
                ax.text(history[i]["iter"], ax.get_ylim()[1], f" {history[i]['phase']}", va="top", fontsize=8)
    if validation:
        ax.plot([v["iter"] for v in validation], [v["loss"] for v in validation], "o-", color="C3",
                label="validation (lead 1)")
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("lat-weighted MSE (normalised)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.13, top=0.95)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)

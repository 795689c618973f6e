#!/usr/bin/env python
"""Calibration report of several ensemble runs: the docs/ensembles.md tables and the spread/error figure.

Reads each run's metrics.json (pooled spread/skill, fair CRPS, rank histograms, the control's RMSE)
and writes, per variable, one markdown table with a row per run and the scores at the chosen leads,
plus a figure of spread and ensemble-mean RMSE against lead (and the corrected spread/skill ratio).

    python tools/ensemble_report.py "gaussian 0.3=runs/a" "stochastic=runs/b" [--md FILE] [--png FILE]

Rank-histogram flatness is the reliability index RI = sum_i |f_i - 1/(M+1)| over the M+1 bins of
relative frequencies f_i: 0 for a flat histogram, 2 M/(M+1) when the truth is always outside the ensemble.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

VARS = ("u", "v", "z")


def reliability_index(counts) -> float:
    f = np.asarray(counts, dtype=np.float64)
    if f.sum() <= 0:
        return float("nan")
    f = f / f.sum()
    return float(np.abs(f - 1.0 / len(f)).sum())


def load(spec: str) -> tuple[str, dict]:
    if "=" not in spec:
        raise SystemExit(f"error: '{spec}' is not LABEL=RUN_DIR")
    label, run = spec.split("=", 1)
    path = Path(run) / "metrics.json"
    if not path.is_file():
        raise SystemExit(f"error: {path} does not exist: run the ensemble into {run} first")
    return label, json.loads(path.read_text())


def rows_for(var: str, runs, days) -> list[str]:
    head = ["run"] + [f"{name} d{d}" for name in ("spread/skill (corr.)", "fair CRPS", "RI", "control RMSE")
                      for d in days]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, doc in runs:
        lead = doc["lead_hours"]
        idx = [lead.index(24 * d) for d in days]
        s = doc["scores"]
        cells = [label]
        cells += [f"{s['ssr_corrected'][var][i]:.2f}" for i in idx]
        cells += [f"{s['crps'][var][i]:.4g}" for i in idx]
        cells += [f"{reliability_index(s['rank_hist'][var][i]):.3f}" for i in idx]
        cells += [f"{doc['control']['rmse'][var][i]:.4g}" if doc.get("control") else "-" for i in idx]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def figure(runs, png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, len(VARS), figsize=(4.2 * len(VARS), 6.5), sharex=True)
    for j, var in enumerate(VARS):
        top, bottom = axes[0, j], axes[1, j]
        for k, (label, doc) in enumerate(runs):
            days = np.asarray(doc["lead_hours"]) / 24.0
            s = doc["scores"]
            color = f"C{k}"
            top.plot(days, s["rmse"][var], color=color, label=f"{label}: RMSE of the mean")
            top.plot(days, s["spread"][var], color=color, ls="--", label=f"{label}: spread")
            ratio = np.asarray(s["ssr_corrected"][var], dtype=float)
            later = days > 0  # at lead 0 the error of the mean is the perturbation's: no ratio to read
            bottom.plot(days[later], ratio[later], color=color, marker="o", ms=3, label=label)
        top.set_title(var)
        bottom.axhline(1.0, color="k", lw=0.8)
        bottom.axhspan(0.8, 1.25, color="0.9", zorder=0)
        bottom.set_xlabel("lead (days)")
        bottom.set_ylim(0, 2)
    axes[0, 0].set_ylabel("RMSE (solid) / spread (dashed)")
    axes[1, 0].set_ylabel("spread/skill (corrected)")
    axes[0, -1].legend(fontsize=6)
    axes[1, -1].legend(fontsize=7)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="LABEL=RUN_DIR (an ensemble output folder with metrics.json)")
    p.add_argument("--days", default="1,3,5,10")
    p.add_argument("--md", type=Path, help="also write the tables here")
    p.add_argument("--png", type=Path, help="spread and error against lead")
    a = p.parse_args(argv)
    days = [int(d) for d in a.days.split(",")]
    runs = [load(s) for s in a.runs]
    out = []
    for var in VARS:
        out += [f"**{var}**", ""] + rows_for(var, runs, days) + [""]
    text = "\n".join(out)
    print(text)
    if a.md:
        a.md.write_text(text)
    if a.png:
        figure(runs, a.png)


if __name__ == "__main__":
    main()

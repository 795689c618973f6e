"""PNG plots of an ensemble run: mean and spread maps, skill versus lead, rank histograms.

``python -m hpc_fcn.plot RUN_DIR [--variable z500] [--lead 5d] [--init 20180101T00] [--out DIR]`` reads the
run's ``forecast_*_{mean,spread}.nc`` files and ``metrics.json`` (format in docs/output_format.md).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import netCDF4  # noqa: E402
import numpy as np  # noqa: E402

from .config import duration_hours  # noqa: E402

DPI = 100
MAP_SIZE = (12.0, 4.0)  # inches: mean and spread side by side
PANEL_SIZE = (4.0, 3.0)  # inches per variable in the skill and rank-histogram grids
MAX_COLS = 4
SKILL = {  # metric -> (axis label, reference line)
    "rmse": ("RMSE", None),
    "acc": ("ACC", None),
    "crps": ("CRPS", None),
    "ssr": ("spread / RMSE of the mean", 1.0),
}
_FILE = re.compile(r"^forecast_(\d{8}T\d{2})_mean\.nc$")


def parse_lead_hours(text: str) -> int:
    """'5d' or '120h' as hours."""
    hours = duration_hours(text)
    if hours is None:
        raise ValueError(f"lead '{text}' is not a duration: use e.g. 5d or 120h")
    return hours


def _lead_label(hours: float) -> str:
    return f"{hours / 24:g} d" if hours % 24 == 0 else f"{hours:g} h"


# -- maps ------------------------------------------------------------------------------------------

def find_forecasts(run_dir: Path, init: str | None = None) -> tuple[Path, Path] | None:
    """The (mean, spread) files of one initial time (the first, or ``init`` as YYYYmmddTHH), or None."""
    means = sorted(p for p in run_dir.rglob("forecast_*_mean.nc") if _FILE.match(p.name))
    if init is not None:
        means = [p for p in means if _FILE.match(p.name).group(1) == init]
        if not means:
            raise ValueError(f"no forecast_{init}_mean.nc under {run_dir}")
    if not means:
        return None
    spread = means[0].with_name(means[0].name.replace("_mean.nc", "_spread.nc"))
    if not spread.exists():
        raise ValueError(f"{means[0].name} has no matching {spread.name}")
    return means[0], spread


def _read_field(path: Path, variable: str | None, lead_hours: int | None):
    """(field, lat, lon, meta) of one variable at one lead of a mean or spread file."""
    with netCDF4.Dataset(path) as ds:
        names = [n for n, v in ds.variables.items() if v.dimensions[-2:] == ("lat", "lon") and n not in ("lat", "lon")]
        variable = variable or names[0]
        if variable not in names:
            raise ValueError(f"variable '{variable}' is not in {path.name}; it has {', '.join(names)}")
        leads = [int(h) for h in ds.variables["lead_time"][:]]
        lead_hours = leads[-1] if lead_hours is None else lead_hours
        if lead_hours not in leads:
            raise ValueError(f"lead {_lead_label(lead_hours)} is not in {path.name}; it has "
                             f"{', '.join(_lead_label(h) for h in leads)}")
        v = ds.variables[variable]
        field = np.ma.filled(v[0, leads.index(lead_hours)].astype(np.float64), np.nan)
        t = ds.variables["time"]
        init = netCDF4.num2date(t[0], t.units, getattr(t, "calendar", "standard"))
        meta = dict(variable=variable, lead=lead_hours, units=v.units,
                    long_name=getattr(v, "long_name", variable), init=init.strftime("%Y-%m-%d %H:%M UTC"))
        return field, ds.variables["lat"][:], ds.variables["lon"][:], meta


def _edges(c: np.ndarray) -> np.ndarray:
    """Cell edges from centres (for pcolormesh)."""
    c = np.asarray(c, dtype=np.float64)
    if c.size == 1:
        return np.array([c[0] - 0.5, c[0] + 0.5])
    mid = (c[1:] + c[:-1]) / 2
    return np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]])


def plot_maps(mean_path: Path, spread_path: Path, out_dir: Path, *, variable: str | None = None,
              lead_hours: int | None = None) -> Path:
    """Ensemble mean and spread of one variable at one lead, side by side, as one PNG."""
    mean, lat, lon, meta = _read_field(mean_path, variable, lead_hours)
    spread, *_ = _read_field(spread_path, meta["variable"], meta["lead"])
    fig, axes = plt.subplots(1, 2, figsize=MAP_SIZE, dpi=DPI)
    fig.subplots_adjust(left=0.06, right=0.97, bottom=0.13, top=0.8, wspace=0.25)
    lon_e, lat_e = _edges(lon), np.clip(_edges(lat), -90, 90)
    for ax, field, what, cmap in ((axes[0], mean, "ensemble mean", "viridis"),
                                  (axes[1], spread, "ensemble spread (std)", "magma")):
        mesh = ax.pcolormesh(lon_e, lat_e, field, cmap=cmap, shading="flat")
        cb = fig.colorbar(mesh, ax=ax, shrink=0.85)
        cb.set_label(meta["units"])
        ax.set_title(f"{meta['variable']} {what}\ninit {meta['init']}, lead {_lead_label(meta['lead'])}")
        ax.set_xlabel("longitude (degrees east)")
        ax.set_ylabel("latitude (degrees north)")
        ax.set_xlim(lon_e.min(), lon_e.max())
        ax.set_ylim(-90, 90)
        ax.set_aspect("equal")
    fig.suptitle(meta["long_name"])
    out = out_dir / f"map_{meta['variable']}_{meta['lead']:03d}h_{mean_path.name.split('_')[1]}.png"
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return out


# -- scores ----------------------------------------------------------------------------------------

def load_metrics(path: Path) -> dict:
    """metrics.json with its required keys checked."""
    with open(path) as f:
        metrics = json.load(f)
    for key in ("variables", "lead_hours", "scores"):
        if key not in metrics:
            raise ValueError(f"{path} has no '{key}' entry")
    return metrics


def _series(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _grid(n: int):
    ncols = min(MAX_COLS, n)
    nrows = math.ceil(n / ncols)
    width, height = PANEL_SIZE[0] * ncols, PANEL_SIZE[1] * nrows + 0.4  # 0.4 in for the title
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), dpi=DPI, squeeze=False)
    # fixed margins in inches (constrained layout costs seconds per figure)
    fig.subplots_adjust(left=0.75 / width, right=1 - 0.15 / width, bottom=0.55 / height, top=1 - 0.75 / height,
                        wspace=0.45, hspace=0.55)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes.flat


def plot_skill(metrics: dict, out_dir: Path) -> list[Path]:
    """One PNG per score in ``SKILL`` present in the metrics: a panel per variable, score against lead in days."""
    days = np.asarray(metrics["lead_hours"], dtype=np.float64) / 24
    scores, written = metrics["scores"], []
    for name, (label, ref) in SKILL.items():
        if name not in scores:
            continue
        variables = [v for v in metrics["variables"] if v in scores[name]]
        fig, axes = _grid(len(variables))
        for ax, var in zip(axes, variables):
            ax.plot(days, _series(scores[name][var]), "o-", label="ensemble mean" if name in ("rmse", "acc") else "ensemble")
            if name == "rmse" and var in scores.get("spread", {}):
                ax.plot(days, _series(scores["spread"][var]), "s--", label="spread")
            if name == "ssr" and var in scores.get("ssr_corrected", {}):
                # 1 for a calibrated ensemble; the plain ratio's is sqrt(M / (M + 1)) (docs/ensembles.md)
                ax.plot(days, _series(scores["ssr_corrected"][var]), "s-", label="corrected")
                m = metrics.get("members")
                if isinstance(m, int) and m > 0:
                    ax.axhline(math.sqrt(m / (m + 1)), color="grey", lw=0.8, ls=":", label="perfect, plain")
            for baseline in ("persistence", "climatology"):
                curve = metrics.get(baseline, {}).get(name, {}).get(var)
                if curve is not None:
                    ax.plot(days, _series(curve), ":", label=baseline)
            if ref is not None:
                ax.axhline(ref, color="grey", lw=0.8)
            ax.set_title(var)
            ax.set_xlabel("lead (days)")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
        fig.suptitle(f"{label} against lead ({metrics.get('members', '?')} members)")
        out = out_dir / f"skill_{name}.png"
        fig.savefig(out, dpi=DPI)
        plt.close(fig)
        written.append(out)
    return written


def plot_rank_histogram(metrics: dict, out_dir: Path, *, lead_hours: int | None = None) -> Path | None:
    """Rank histograms (frequency per rank of the truth) per variable, at one lead or summed over all leads."""
    hist = metrics["scores"].get("rank_hist")
    if not hist:
        return None
    leads = [int(h) for h in metrics["lead_hours"]]
    if lead_hours is not None and lead_hours not in leads:
        raise ValueError(f"lead {_lead_label(lead_hours)} is not in metrics.json; it has "
                         f"{', '.join(_lead_label(h) for h in leads)}")
    variables = [v for v in metrics["variables"] if v in hist]
    fig, axes = _grid(len(variables))
    for ax, var in zip(axes, variables):
        counts = np.asarray(hist[var], dtype=np.float64)
        counts = counts[leads.index(lead_hours)] if lead_hours is not None else counts.sum(axis=0)
        freq = counts / counts.sum() if counts.sum() > 0 else counts
        ax.bar(np.arange(counts.size), freq, width=1.0, edgecolor="white")
        ax.axhline(1 / counts.size, color="grey", lw=0.8, ls="--")
        ax.set_title(var)
        ax.set_xlabel("rank of the truth among the members")
        ax.set_ylabel("frequency")
    where = f"lead {_lead_label(lead_hours)}" if lead_hours is not None else "all leads"
    fig.suptitle(f"rank histograms, {where}")
    out = out_dir / ("rank_hist.png" if lead_hours is None else f"rank_hist_{lead_hours:03d}h.png")
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return out


# -- the command -----------------------------------------------------------------------------------

def plot_run(run_dir: str | Path, *, variable: str | None = None, lead: str | None = None,
             init: str | None = None, out_dir: str | Path | None = None) -> list[Path]:
    """Every plot the run's files allow; returns the PNGs written (into ``out_dir``, default RUN_DIR/plots)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir} is not a directory")
    out = Path(out_dir) if out_dir is not None else run_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    lead_hours = parse_lead_hours(lead) if lead is not None else None
    files = find_forecasts(run_dir, init)
    metrics_path = run_dir / "metrics.json"
    if files is None and not metrics_path.exists():
        raise ValueError(f"nothing to plot in {run_dir}: no forecast_*_mean.nc and no metrics.json")
    written = []
    if files is not None:
        written.append(plot_maps(*files, out, variable=variable, lead_hours=lead_hours))
    if metrics_path.exists():
        metrics = load_metrics(metrics_path)
        written += plot_skill(metrics, out)
        rank = plot_rank_histogram(metrics, out, lead_hours=lead_hours)
        if rank is not None:
            written.append(rank)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpc_fcn.plot", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="the ensemble run's output directory")
    parser.add_argument("--variable", help="variable of the maps (default: the first in the file)")
    parser.add_argument("--lead", help="lead of the maps and rank histogram, e.g. 5d or 120h "
                                       "(default: the last lead; rank histogram summed over leads)")
    parser.add_argument("--init", help="initial time of the maps as YYYYmmddTHH (default: the first)")
    parser.add_argument("--out", help="directory for the PNGs (default: RUN_DIR/plots)")
    args = parser.parse_args(argv)
    try:
        paths = plot_run(args.run_dir, variable=args.variable, lead=args.lead, init=args.init, out_dir=args.out)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""PNG plots of an ensemble run: mean and spread maps, skill versus lead, rank histograms.

``python -m hpc_fcn.plot RUN_DIR [--variable z500] [--lead 5d] [--leads 1d,5d,10d] [--level 500] [--init 20180101T00]
[--out DIR]`` reads the run's ``forecast_*_{mean,spread}`` outputs, netCDF files or zarr stores alike (through xarray;
WeatherBench2's names and levels too), and ``metrics.json`` (format in docs/output_format.md).

Colour maps: a signed field (one whose values take both signs in earnest: u, v, vorticity, anomalies; see
:func:`is_signed`) is drawn with a diverging map centred on zero (``vmin == -vmax``), any other with a sequential
one; the spread with a sequential map from zero. Every axis and colour bar names its units: the channel's
``units`` attribute from the outputs, lead in hours (runs up to 2 days) or days.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .config import duration_hours  # noqa: E402

DPI = 100
MAP_SIZE = (12.0, 4.0)  # inches: mean and spread side by side
PANEL_SIZE = (4.0, 3.0)  # inches per variable in the skill and rank-histogram grids
MAX_COLS = 4
SKILL = {  # metric -> (axis label, units: None = the channel's, reference line)
    "rmse": ("RMSE", None, None),
    "acc": ("ACC", "dimensionless", None),
    "crps": ("fair CRPS", None, None),
    "ssr": ("spread / RMSE of the mean", "ratio", 1.0),
}
SIGNED_FRACTION = 0.05  # a field is signed when its smaller side reaches 5 % of its larger one (is_signed)
SIGNED_CMAP, FIELD_CMAP, SPREAD_CMAP = "RdBu_r", "viridis", "magma"
RANK_LEADS = 3  # rank histograms drawn by default: the first lead after 0, the middle one and the last
_FILE = re.compile(r"^forecast_(\d{8}T\d{2})_mean\.(nc|zarr)$")
_LAT, _LON = ("lat", "latitude"), ("lon", "longitude")  # hpc_fcn's names, then WeatherBench2's
_LEAD, _TIME = ("lead_time", "prediction_timedelta"), ("time",)
_LEVEL = "level"  # WeatherBench2's pressure-level dimension (hPa), output.convention: wb2


def parse_lead_hours(text: str) -> int:
    """'5d' or '120h' as hours."""
    hours = duration_hours(text)
    if hours is None:
        raise ValueError(f"lead '{text}' is not a duration: use e.g. 5d or 120h")
    return hours


def _lead_label(hours: float) -> str:
    return f"{hours / 24:g} d" if hours % 24 == 0 else f"{hours:g} h"


def lead_axis(lead_hours: Sequence[float]) -> tuple[np.ndarray, str]:
    """Leads in the unit that reads best (hours up to 2 days, days beyond) and the axis label naming it."""
    hours = np.asarray(lead_hours, dtype=np.float64)
    if hours.size and hours.max() > 48:
        return hours / 24, "lead (days)"
    return hours, "lead (hours)"


# -- reading a run's outputs -----------------------------------------------------------------------

def find_forecasts(run_dir: Path, init: str | None = None) -> tuple[Path, Path] | None:
    """The (mean, spread) outputs of one initial time (the first, or ``init`` as YYYYmmddTHH), or None.

    netCDF files and zarr stores alike; unfinished outputs (``*.partial``) and the resume state are skipped.
    """
    means = []
    for folder, dirs, files in os.walk(run_dir):
        for name in dirs + files:
            if _FILE.match(name):
                means.append(Path(folder) / name)
        dirs[:] = [d for d in dirs if not d.endswith((".zarr", ".partial")) and d != ".resume"]
    means.sort()
    if init is not None:
        means = [p for p in means if _FILE.match(p.name).group(1) == init]
        if not means:
            raise ValueError(f"no forecast_{init}_mean.nc or .zarr under {run_dir}")
    if not means:
        return None
    spread = means[0].with_name(means[0].name.replace("_mean.", "_spread."))
    if not spread.exists():
        raise ValueError(f"{means[0].name} has no matching {spread.name}")
    return means[0], spread


def open_output(path: Path):
    """A forecast output (netCDF file or zarr store) as an xarray Dataset, times and leads decoded."""
    import xarray as xr
    engine = "zarr" if path.suffix == ".zarr" else "netcdf4"
    try:
        return xr.open_dataset(path, engine=engine, decode_timedelta=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc


def _name(ds, names: Sequence[str], what: str, path: Path) -> str:
    for n in names:
        if n in ds.variables or n in ds.dims:
            return n
    raise ValueError(f"{path.name} has no {what} coordinate (looked for {', '.join(names)})")


def field_variables(ds, path: Path) -> list[str]:
    """The output's gridded variables (those on the latitude and longitude axes), in file order."""
    lat, lon = _name(ds, _LAT, "latitude", path), _name(ds, _LON, "longitude", path)
    return [n for n, v in ds.data_vars.items() if lat in v.dims and lon in v.dims]


def output_units(path: Path) -> dict[str, str]:
    """Each gridded variable's ``units`` attribute in one output."""
    with open_output(path) as ds:
        return {n: str(ds[n].attrs.get("units", "")) for n in field_variables(ds, path)}


def channel_units(units: dict[str, str], channels: Sequence[str]) -> dict[str, str]:
    """``units`` with each channel (metrics.json's names) added where a WeatherBench2 store names it otherwise
    (z500 -> geopotential)."""
    from .io.wb2 import wb2_name
    out = dict(units)
    for c in channels:
        if c not in out and wb2_name(c)[0] in units:
            out[c] = units[wb2_name(c)[0]]
    return out


def _hours(values) -> list[int]:
    values = np.asarray(values)
    if np.issubdtype(values.dtype, np.timedelta64):
        return [int(round(h)) for h in values / np.timedelta64(1, "h")]
    return [int(round(float(h))) for h in values]  # undecoded: hpc_fcn writes leads in hours


def check_variable(variable: str, available: Sequence[str], where: str) -> None:
    """One line naming the variables there are when ``variable`` is not one of them."""
    if variable not in available:
        raise ValueError(f"variable '{variable}' is not in {where}; it has {', '.join(available)}")


def _read_field(path: Path, variable: str | None, lead_hours: int | None, level: float | None = None):
    """(field, lat, lon, meta) of one variable at one lead of a mean or spread output (netCDF or zarr); a variable
    on pressure levels (WeatherBench2's layout) at ``level`` hPa, default its first."""
    with open_output(path) as ds:
        names = field_variables(ds, path)
        if not names:
            raise ValueError(f"{path.name} holds no variable on the latitude and longitude axes")
        variable = variable or names[0]
        check_variable(variable, names, path.name)
        lead_dim = _name(ds, _LEAD, "lead time", path)
        leads = _hours(ds[lead_dim].values)
        lead_hours = leads[-1] if lead_hours is None else lead_hours
        if lead_hours not in leads:
            raise ValueError(f"lead {_lead_label(lead_hours)} is not in {path.name}; it has "
                             f"{', '.join(_lead_label(h) for h in leads)}")
        lat_dim, lon_dim = _name(ds, _LAT, "latitude", path), _name(ds, _LON, "longitude", path)
        v = ds[variable]
        da = v.isel({lead_dim: leads.index(lead_hours)})
        if _LEVEL in da.dims:
            levels = [float(x) for x in np.asarray(ds[_LEVEL].values)]
            level = levels[0] if level is None else float(level)
            if level not in levels:
                raise ValueError(f"level {level:g} hPa is not in {variable} of {path.name}; it has "
                                 f"{', '.join(f'{x:g}' for x in levels)}")
            da = da.isel({_LEVEL: levels.index(level)})
        else:
            level = None
        da = da.isel({d: 0 for d in da.dims if d not in (lat_dim, lon_dim)})  # the one initial time
        field = np.asarray(da.transpose(lat_dim, lon_dim).values, dtype=np.float64)
        time_dim = _name(ds, _TIME, "initial time", path)
        init = np.datetime_as_string(np.asarray(ds[time_dim].values).ravel()[0], unit="m").replace("T", " ")
        long_name = str(v.attrs.get("long_name", variable)) + (f" at {level:g} hPa" if level is not None else "")
        meta = dict(variable=variable, lead=lead_hours, units=str(v.attrs.get("units", "")), level=level,
                    name=variable if level is None else f"{variable}{level:g}", long_name=long_name,
                    init=f"{init} UTC")
        return field, np.asarray(ds[lat_dim].values), np.asarray(ds[lon_dim].values), meta


# -- maps ------------------------------------------------------------------------------------------

def is_signed(field: np.ndarray) -> bool:
    """Whether a field is signed, decided from its values: both signs occur and the smaller side reaches
    ``SIGNED_FRACTION`` of the larger (u, v, vorticity, anomalies). A field essentially of one sign (a height,
    a temperature in K, a few small negatives from rounding) is not."""
    finite = field[np.isfinite(field)]
    if finite.size == 0:
        return False
    lo, hi = float(finite.min()), float(finite.max())
    return lo < 0 < hi and min(-lo, hi) >= SIGNED_FRACTION * max(-lo, hi)


def colour_scale(field: np.ndarray, *, spread: bool = False) -> dict:
    """``cmap``, ``vmin`` and ``vmax`` for a map: diverging and centred on zero (vmin == -vmax) for a signed
    field, sequential over the data otherwise; a spread (never negative) sequential from zero."""
    finite = field[np.isfinite(field)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if spread:
        return dict(cmap=SPREAD_CMAP, vmin=0.0, vmax=hi if hi > 0 else 1.0)
    if is_signed(field):
        a = max(-lo, hi)
        return dict(cmap=SIGNED_CMAP, vmin=-a, vmax=a)
    return dict(cmap=FIELD_CMAP, vmin=lo, vmax=hi if hi > lo else lo + 1.0)


def _edges(c: np.ndarray) -> np.ndarray:
    """Cell edges from centres (for pcolormesh)."""
    c = np.asarray(c, dtype=np.float64)
    if c.size == 1:
        return np.array([c[0] - 0.5, c[0] + 0.5])
    mid = (c[1:] + c[:-1]) / 2
    return np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]])


def draw_maps(mean_path: Path, spread_path: Path, *, variable: str | None = None,
              lead_hours: int | None = None, level: float | None = None):
    """(figure, meta): ensemble mean and spread of one variable at one lead, side by side."""
    mean, lat, lon, meta = _read_field(mean_path, variable, lead_hours, level)
    spread, *_ = _read_field(spread_path, meta["variable"], meta["lead"], meta["level"])
    fig, axes = plt.subplots(1, 2, figsize=MAP_SIZE, dpi=DPI)
    fig.subplots_adjust(left=0.06, right=0.97, bottom=0.13, top=0.8, wspace=0.25)
    lon_e, lat_e = _edges(lon), np.clip(_edges(lat), -90, 90)
    units = meta["units"] or "units not given"
    for ax, field, what, is_spread in ((axes[0], mean, "ensemble mean", False),
                                       (axes[1], spread, "ensemble spread (std)", True)):
        mesh = ax.pcolormesh(lon_e, lat_e, field, shading="flat", **colour_scale(field, spread=is_spread))
        cb = fig.colorbar(mesh, ax=ax, shrink=0.85)
        cb.set_label(f"{meta['name']} ({units})")
        ax.set_title(f"{meta['name']} {what}\ninit {meta['init']}, lead {_lead_label(meta['lead'])}")
        ax.set_xlabel("longitude (degrees east)")
        ax.set_ylabel("latitude (degrees north)")
        ax.set_xlim(lon_e.min(), lon_e.max())
        ax.set_ylim(-90, 90)
        ax.set_aspect("equal")
    fig.suptitle(meta["long_name"])
    return fig, meta


def plot_maps(mean_path: Path, spread_path: Path, out_dir: Path, *, variable: str | None = None,
              lead_hours: int | None = None, level: float | None = None) -> Path:
    """Ensemble mean and spread of one variable at one lead, side by side, as one PNG."""
    fig, meta = draw_maps(mean_path, spread_path, variable=variable, lead_hours=lead_hours, level=level)
    out = out_dir / f"map_{meta['name']}_{meta['lead']:03d}h_{mean_path.name.split('_')[1]}.png"
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


def _units_label(label: str, units: str | None) -> str:
    return f"{label} ({units or 'units not given'})"


def draw_skill(metrics: dict, units: dict[str, str] | None = None) -> dict:
    """{score: figure} for each score in ``SKILL`` present in the metrics: a panel per variable, score against lead.

    ``units`` (variable -> units, from the run's outputs or ``metrics["units"]``) label RMSE and CRPS axes.
    The spread/skill ratio starts at the first lead after 0: at lead 0 the error of an unperturbed analysis is
    zero and the ratio meaningless.
    """
    units = {**metrics.get("units", {}), **(units or {})}
    hours = np.asarray(metrics["lead_hours"], dtype=np.float64)
    x_all, x_label = lead_axis(hours)
    scores, figures = metrics["scores"], {}
    for name, (label, fixed_units, ref) in SKILL.items():
        if name not in scores:
            continue
        keep = hours > 0 if name == "ssr" else np.ones(hours.size, bool)
        x = x_all[keep]
        variables = [v for v in metrics["variables"] if v in scores[name]]
        fig, axes = _grid(len(variables))
        for ax, var in zip(axes, variables):
            ax.plot(x, _series(scores[name][var])[keep], "o-",
                    label="ensemble mean" if name in ("rmse", "acc") else "ensemble")
            if name == "rmse" and var in scores.get("spread", {}):
                ax.plot(x, _series(scores["spread"][var])[keep], "s--", label="spread")
            if name == "ssr" and var in scores.get("ssr_corrected", {}):
                # 1 for a calibrated ensemble; the plain ratio's is sqrt(M / (M + 1)) (docs/ensembles.md)
                ax.plot(x, _series(scores["ssr_corrected"][var])[keep], "s-", label="corrected")
                m = metrics.get("members")
                if isinstance(m, int) and m > 0:
                    ax.axhline(math.sqrt(m / (m + 1)), color="grey", lw=0.8, ls=":", label="perfect, plain")
            for baseline in ("persistence", "climatology"):
                curve = metrics.get(baseline, {}).get(name, {}).get(var)
                if curve is not None:
                    ax.plot(x, _series(curve)[keep], ":", label=baseline)
            if ref is not None:
                ax.axhline(ref, color="grey", lw=0.8)
            ax.set_title(var)
            ax.set_xlabel(x_label)
            ax.set_ylabel(_units_label(label, fixed_units or units.get(var)))
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
        fig.suptitle(f"{label} against lead ({metrics.get('members', '?')} members)")
        figures[name] = fig
    return figures


def plot_skill(metrics: dict, out_dir: Path, units: dict[str, str] | None = None) -> list[Path]:
    """The figures of :func:`draw_skill` as ``skill_<score>.png``."""
    written = []
    for name, fig in draw_skill(metrics, units).items():
        out = out_dir / f"skill_{name}.png"
        fig.savefig(out, dpi=DPI)
        plt.close(fig)
        written.append(out)
    return written


def rank_leads(lead_hours: Sequence[int], n: int = RANK_LEADS) -> list[int]:
    """The leads of the default rank histograms: ``n`` spread over the leads after 0, the first and last included."""
    after = [int(h) for h in lead_hours if h > 0]
    if len(after) <= n:
        return after
    return sorted({after[round(i * (len(after) - 1) / (n - 1))] for i in range(n)})


def check_leads(leads: Sequence[int], available: Sequence[int], where: str) -> None:
    """One line naming the leads there are when one of ``leads`` (hours) is not among them."""
    for h in leads:
        if h not in available:
            raise ValueError(f"lead {_lead_label(h)} is not in {where}; it has "
                             f"{', '.join(_lead_label(x) for x in available)}")


def plot_rank_histograms(metrics: dict, out_dir: Path, *, leads: Sequence[int] | None = None) -> list[Path]:
    """Rank histograms (frequency of each rank of the truth among the members) per variable, one PNG per lead:
    ``leads`` in hours, default :func:`rank_leads`. Leads are never summed: calibration changes with lead."""
    hist = metrics["scores"].get("rank_hist")
    if not hist:
        return []
    all_leads = [int(h) for h in metrics["lead_hours"]]
    check_leads(leads or (), all_leads, "metrics.json")
    variables = [v for v in metrics["variables"] if v in hist]
    written = []
    for lead in (leads if leads else rank_leads(all_leads)):
        fig, axes = _grid(len(variables))
        for ax, var in zip(axes, variables):
            counts = np.asarray(hist[var], dtype=np.float64)[all_leads.index(lead)]
            freq = counts / counts.sum() if counts.sum() > 0 else counts
            ax.bar(np.arange(counts.size), freq, width=1.0, edgecolor="white")
            ax.axhline(1 / counts.size, color="grey", lw=0.8, ls="--")
            ax.set_title(var)
            ax.set_xlabel("rank of the truth (0 = below all)")
            ax.set_ylabel("frequency (fraction)")
        fig.suptitle(f"rank histograms, lead {_lead_label(lead)} ({metrics.get('members', '?')} members; "
                     "flat = calibrated)")
        out = out_dir / f"rank_hist_{lead:03d}h.png"
        fig.savefig(out, dpi=DPI)
        plt.close(fig)
        written.append(out)
    return written


# -- the command -----------------------------------------------------------------------------------

def parse_leads(text: str) -> list[int]:
    """'1d,5d,240h' as hours."""
    return [parse_lead_hours(t.strip()) for t in text.split(",") if t.strip()]


def plot_run(run_dir: str | Path, *, variable: str | None = None, lead: str | None = None,
             init: str | None = None, out_dir: str | Path | None = None,
             leads: str | Sequence[str] | None = None, level: float | None = None) -> list[Path]:
    """Every plot the run's outputs allow; returns the PNGs written (into ``out_dir``, default RUN_DIR/plots).

    ``lead`` picks the maps' lead (default the last); ``leads`` the rank histograms' (default ``lead`` if
    given, else :func:`rank_leads`).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir} is not a directory")
    lead_hours = parse_lead_hours(lead) if lead is not None else None
    if isinstance(leads, str):
        hist_leads = parse_leads(leads)
    elif leads:
        hist_leads = [parse_lead_hours(t) for t in leads]
    else:
        hist_leads = [lead_hours] if lead_hours is not None else None
    files = find_forecasts(run_dir, init)
    metrics_path = run_dir / "metrics.json"
    if files is None and not metrics_path.exists():
        raise ValueError(f"nothing to plot in {run_dir}: no forecast_*_mean.nc or .zarr and no metrics.json")
    units = output_units(files[0]) if files is not None else {}
    metrics = load_metrics(metrics_path) if metrics_path.exists() else None
    if variable is not None:  # checked before anything is drawn
        if files is not None:
            check_variable(variable, list(units), files[0].name)
        else:
            check_variable(variable, metrics["variables"], str(metrics_path))
    if metrics is not None and hist_leads:
        check_leads(hist_leads, [int(h) for h in metrics["lead_hours"]], "metrics.json")
    out = Path(out_dir) if out_dir is not None else run_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if files is not None:
        written.append(plot_maps(*files, out, variable=variable, lead_hours=lead_hours, level=level))
    if metrics is not None:
        written += plot_skill(metrics, out, channel_units(units, metrics["variables"]))
        written += plot_rank_histograms(metrics, out, leads=hist_leads)
    written += plot_probability_products(run_dir, metrics, out, init=init, variable=variable, lead_hours=lead_hours)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpc_fcn.plot", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="the ensemble run's output directory (netCDF or zarr outputs)")
    parser.add_argument("--variable", help="variable of the maps (default: the first in the outputs)")
    parser.add_argument("--lead", help="lead of the maps, e.g. 5d or 120h (default: the last lead); also of the "
                                       "rank histogram when --leads is not given")
    parser.add_argument("--leads", help="leads of the rank histograms, one PNG each, e.g. 1d,5d,10d "
                                        f"(default: {RANK_LEADS} leads from the first after 0 to the last)")
    parser.add_argument("--level", type=float, help="pressure level (hPa) of the maps for a variable on levels "
                                                     "(output.convention: wb2; default: its first level)")
    parser.add_argument("--init", help="initial time of the maps as YYYYmmddTHH (default: the first)")
    parser.add_argument("--out", help="directory for the PNGs (default: RUN_DIR/plots)")
    args = parser.parse_args(argv)
    try:
        paths = plot_run(args.run_dir, variable=args.variable, lead=args.lead, init=args.init, out_dir=args.out,
                         leads=args.leads, level=args.level)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    return 0


# -- probability products: threshold probabilities, quantiles, Brier scores and reliability ------------------

def find_products(run_dir: Path, init: str | None = None) -> dict[str, Path]:
    """{"probability": path, "quantile": path} of one initial time (the first, or ``init``), those that exist."""
    out: dict[str, Path] = {}
    for product in ("probability", "quantile"):
        found = sorted(p for p in run_dir.glob(f"forecast_*_{product}.*") if p.suffix in (".nc", ".zarr")
                       and (init is None or p.name.split("_")[1] == init))
        if found:
            out[product] = found[0]
    return out


def _lead_slice(ds, path: Path, lead_hours: int | None):
    """(data set at the lead ``lead_hours`` (default the last) and the first time, the lead in hours)."""
    lead = _name(ds, _LEAD, "lead", path)
    hours = _hours(ds[lead].values)
    if lead_hours is None:
        lead_hours = hours[-1]
    check_leads([lead_hours], hours, path.name)
    sel = ds.isel({lead: hours.index(lead_hours)})
    return (sel.isel(time=0) if "time" in sel.dims else sel), lead_hours


def _map_panels(panels: list[tuple[str, np.ndarray]], lat, lon, label: str, title: str, *, probability: bool):
    """A grid of maps, one per (title, field), sharing one colour scale."""
    fig, axes = _grid(len(panels))
    lon_e, lat_e = _edges(lon), np.clip(_edges(lat), -90, 90)
    stacked = np.stack([f for _, f in panels])
    scale = dict(cmap="Blues", vmin=0.0, vmax=1.0) if probability else colour_scale(stacked)
    for ax, (name, field) in zip(axes, panels):
        mesh = ax.pcolormesh(lon_e, lat_e, field, shading="flat", **scale)
        ax.set_title(name, fontsize=9)
        ax.set_xlim(lon_e.min(), lon_e.max())
        ax.set_ylim(-90, 90)
        ax.set_xlabel("longitude (degrees east)", fontsize=8)
        ax.set_ylabel("latitude (degrees north)", fontsize=8)
        fig.colorbar(mesh, ax=ax, shrink=0.85).set_label(label, fontsize=8)
    fig.suptitle(title)
    return fig


def draw_probability_maps(path: Path, *, lead_hours: int | None = None):
    """(figure, lead hours): every threshold probability of one output at one lead, one map each."""
    with open_output(path) as ds:
        lat, lon = ds[_name(ds, _LAT, "latitude", path)].values, ds[_name(ds, _LON, "longitude", path)].values
        sel, lead_hours = _lead_slice(ds, path, lead_hours)
        panels = []
        for name in field_variables(ds, path):
            v = sel[name]
            dim = v.dims[0]
            units = ds[dim].attrs.get("units", "")
            rel = ">" if ds[dim].attrs.get("spp__relative_to_threshold") == "greater_than" else "<"
            channel = name.removeprefix("probability_of_").rsplit("_", 2)[0]
            for i, t in enumerate(ds[dim].values):
                panels.append((f"P({channel} {rel} {t:g} {units})", np.asarray(v.isel({dim: i}).values)))
    fig = _map_panels(panels, lat, lon, "probability", f"threshold probabilities, {path.name.split('_')[1]}, "
                      f"lead {_lead_label(lead_hours)}", probability=True)
    return fig, lead_hours


def draw_quantile_maps(path: Path, *, variable: str | None = None, lead_hours: int | None = None):
    """(figure, variable, lead hours): the ensemble quantiles of one variable at one lead, one map per level."""
    with open_output(path) as ds:
        names = field_variables(ds, path)
        variable = variable or names[0]
        check_variable(variable, names, path.name)
        lat, lon = ds[_name(ds, _LAT, "latitude", path)].values, ds[_name(ds, _LON, "longitude", path)].values
        sel, lead_hours = _lead_slice(ds, path, lead_hours)
        v = sel[variable]
        levels = ds["quantile"].values
        panels = [(f"{variable} quantile {q:g}", np.asarray(v.isel(quantile=i).values)) for i, q in enumerate(levels)]
        units = ds[variable].attrs.get("units", "")
    fig = _map_panels(panels, lat, lon, _units_label(variable, units),
                      f"ensemble quantiles of {variable}, {path.name.split('_')[1]}, lead {_lead_label(lead_hours)}",
                      probability=False)
    return fig, variable, lead_hours


def draw_reliability(metrics: dict, *, lead_hours: int | None = None):
    """(figure, lead hours): the reliability diagram of every threshold event at one lead (default the last):
    observed frequency against forecast probability, the diagonal, and the share of the area in each bin."""
    prob = metrics["probabilistic"]
    hours = [int(h) for h in metrics["lead_hours"]]
    lead_hours = hours[-1] if lead_hours is None else lead_hours
    check_leads([lead_hours], hours, "metrics.json")
    li = hours.index(lead_hours)
    rel = prob["reliability"]
    p = np.asarray(rel["forecast_probability"])
    events = prob["events"]
    fig, axes = _grid(len(events))
    for ax, e in zip(axes, events):
        freq = _series(rel["observed_frequency"][e][li])
        weight = _series(rel["weight"][e][li])
        share = weight / np.nansum(weight) if np.nansum(weight) > 0 else np.zeros_like(weight)
        ax.bar(p, share, width=0.8 / max(len(p) - 1, 1), color="0.85", label="share of area")
        ax.plot([0, 1], [0, 1], color="0.5", lw=0.8, ls="--")
        ax.plot(p, freq, marker="o", color="C0", label="observed frequency")
        ax.set_xlim(-0.05, 1.05)
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(f"{e}, lead {_lead_label(lead_hours)}", fontsize=9)
        ax.set_xlabel("forecast probability", fontsize=8)
        ax.set_ylabel("observed frequency", fontsize=8)
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"reliability of the {metrics.get('members', '')}-member ensemble's threshold probabilities")
    return fig, lead_hours


def draw_probabilistic_skill(metrics: dict):
    """Brier score of every event against lead (first panel) and the pinball loss of every quantile level
    against lead (one panel per variable)."""
    prob = metrics["probabilistic"]
    x, xlabel = lead_axis(metrics["lead_hours"])
    pinball = prob.get("pinball", {})
    fig, axes = _grid(1 + len(pinball))
    ax = axes[0]
    for e, values in prob["brier"].items():
        ax.plot(x, _series(values), marker="o", ms=3, label=e)
    ax.set_title("Brier score", fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel("Brier score (1)", fontsize=8)
    if prob["brier"]:
        ax.legend(fontsize=7)
    for ax, (var, by_q) in zip(axes[1:], pinball.items()):
        for q, values in by_q.items():
            ax.plot(x, _series(values), marker="o", ms=3, label=f"q {q}")
        ax.set_title(f"{var} pinball loss", fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel("pinball loss", fontsize=8)
        ax.legend(fontsize=7)
    fig.suptitle("scores of the probability products")
    return fig


def plot_probability_products(run_dir: Path, metrics: dict | None, out_dir: Path, *, init: str | None = None,
                              variable: str | None = None, lead_hours: int | None = None) -> list[Path]:
    """The PNGs of the probability products a run has: probability and quantile maps, the reliability diagram
    and the Brier / pinball scores against lead (none when the run did not ask for products)."""
    written = []
    files = find_products(run_dir, init)
    figures = []
    if "probability" in files:
        fig, lead = draw_probability_maps(files["probability"], lead_hours=lead_hours)
        figures.append((fig, f"probability_{lead:03d}h_{files['probability'].name.split('_')[1]}.png"))
    if "quantile" in files:
        fig, var, lead = draw_quantile_maps(files["quantile"], variable=variable, lead_hours=lead_hours)
        figures.append((fig, f"quantiles_{var}_{lead:03d}h_{files['quantile'].name.split('_')[1]}.png"))
    if metrics is not None and metrics.get("probabilistic"):
        if metrics["probabilistic"]["events"]:
            fig, lead = draw_reliability(metrics, lead_hours=lead_hours)
            figures.append((fig, f"reliability_{lead:03d}h.png"))
        figures.append((draw_probabilistic_skill(metrics), "probabilistic_skill.png"))
    for fig, name in figures:
        fig.savefig(out_dir / name, dpi=DPI)
        plt.close(fig)
        written.append(out_dir / name)
    return written


if __name__ == "__main__":
    sys.exit(main())

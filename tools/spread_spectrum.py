#!/usr/bin/env python
"""At which scales an ensemble's spread lives: spread against error, and member against truth variance, per
band of zonal wavenumber.

A pooled spread/skill ratio of 1 can hide spread at scales the truth does not have and too little where
the errors are. Per zonal wavenumber k (area-weighted power of each row's Fourier transform), this prints
- spread / error: the members' variance about their mean against the squared error of the mean
  (sqrt of pooled ratios, fair with the (M + 1) / M correction of metrics.json's ssr_corrected);
- activity: the members' power against the truth's (anomalies from the zonal mean: k >= 1), where 1 is a
  member as energetic at those scales as the atmosphere it forecasts, < 1 a smoothed one.
It reads a run written with ``output.members: true``:

    mpirun -n 8 python -m hpc_fcn.ensemble config/ens100.yaml ensemble.members=24 initial_conditions.count=2 \\
        output.members=true output.dir=runs/spectrum
    python tools/spread_spectrum.py runs/spectrum [--days 1 5 10] [--png docs/figures/spread_spectrum.png]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hpc_fcn import metrics  # noqa: E402

VARS = ("u", "v", "z")
BANDS = ((0, 1), (1, 3), (3, 6), (6, 12), (12, 20), (20, None))  # [first, last + 1) zonal wavenumbers


def zonal_power(x: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Area-weighted (metrics.lat_weights) power per zonal wavenumber of (..., lat, lon) fields: summed over
    k it is the weighted mean square the scores use (Parseval)."""
    w = metrics.lat_weights(lat, "area")
    w = w / w.sum()
    n = x.shape[-1]
    f = np.fft.rfft(x, axis=-1) / n
    p = np.abs(f) ** 2
    p[..., 1: (n + 1) // 2] *= 2.0  # the negative wavenumbers' share (not for k = 0 and Nyquist)
    return np.einsum("...lk,l->...k", p, w)


def scale_scores(members: np.ndarray, truth: np.ndarray, lat: np.ndarray) -> dict[str, np.ndarray]:
    """Per zonal wavenumber of (n_forecasts, M, lat, lon) members and (n_forecasts, lat, lon) truths,
    summed over forecasts: ``spread`` (fair member variance about the mean), ``error`` (squared error
    of the mean), ``members`` and ``truth`` (power of the fields' anomalies, k = 0 left out)."""
    m = members.shape[1]
    mean = members.mean(axis=1)
    spread = zonal_power(members - mean[:, None], lat).sum(axis=(0, 1)) / (m - 1) * (m + 1) / m
    error = zonal_power(mean - truth, lat).sum(axis=0)
    act_m = zonal_power(members, lat).mean(axis=1).sum(axis=0)
    act_t = zonal_power(truth, lat).sum(axis=0)
    act_m[0] = act_t[0] = np.nan
    return {"spread": spread, "error": error, "members": act_m, "truth": act_t}


def band_ratios(scores: dict[str, np.ndarray]) -> list[tuple[str, float, float, float]]:
    """(band label, spread/error, activity, the band's share of the spread) for each of ``BANDS``."""
    total = scores["spread"].sum()
    out = []
    for a, b in BANDS:
        b = len(scores["spread"]) if b is None else min(b, len(scores["spread"]))
        if a >= b:
            continue
        sp, er = scores["spread"][a:b].sum(), scores["error"][a:b].sum()
        act = np.nansum(scores["members"][a:b]) / np.nansum(scores["truth"][a:b]) if a else float("nan")
        label = f"{a}" if b == a + 1 else f"{a}-{b - 1}"
        out.append((label, float(np.sqrt(sp / er)) if er > 0 else float("inf"), float(act), float(sp / total)))
    return out


def run_split(run: Path, variables) -> tuple[dict, object, list[int]]:
    """An ensemble run folder's resolved config, its initial-condition split (the truths) and the indices of
    ``variables`` among the split's channels."""
    import yaml
    from hpc_fcn.data.builtin import ensure_builtin
    from hpc_fcn.data.era5 import open_split
    from hpc_fcn.schema import DataConfig

    cfg = yaml.safe_load((run / "config.resolved.yaml").read_text())
    root = cfg["data"]["root"]
    root = str(ensure_builtin()) if root == "builtin" else root
    ds = open_split(DataConfig(root=root), cfg["initial_conditions"]["split"])
    missing = [v for v in variables if v not in ds.channels]
    if missing:
        raise SystemExit(f"error: --vars {', '.join(missing)} not in the data's channels ({', '.join(ds.channels)})")
    return cfg, ds, [ds.channels.index(v) for v in variables]


def lead_and_truth(nc, name: str, day: int, ds, chans: list[int]) -> tuple[int, np.ndarray]:
    """The index of lead ``day`` (days) in the forecast file ``nc`` (one initial time) and the split's truth
    (len(chans), lat, lon) at its valid time, on the file's rows."""
    leads = list(np.asarray(nc.lead_time.values))
    if 24 * day not in leads:
        raise SystemExit(f"error: {name} has no lead of {day} days (leads {leads} h)")
    valid = np.datetime64(nc.time.values[0], "h") + np.timedelta64(24 * day, "h")
    at = np.nonzero(np.asarray(ds.times, "datetime64[h]") == valid)[0]
    if not len(at):
        raise SystemExit(f"error: {valid} is not in the split of the run's initial conditions")
    return leads.index(24 * day), ds.read(int(at[0]))[chans][:, : nc.sizes["lat"]]


def read_run(run: Path, days, variables):
    """Members, truths and latitudes of every ``forecast_*_members.nc`` in ``run`` at the leads ``days``."""
    import xarray as xr

    files = sorted(run.glob("forecast_*_members.nc"))
    if not files:
        raise SystemExit(f"error: {run} has no forecast_*_members.nc: run the ensemble with output.members=true")
    _, ds, chans = run_split(run, variables)
    out = {d: ([], []) for d in days}
    for f in files:
        nc = xr.open_dataset(f)
        for d in days:
            i, truth = lead_and_truth(nc, f.name, d, ds, chans)
            out[d][0].append(np.stack([nc[v].values[:, 0, i] for v in variables], axis=1))  # (M, C, lat, lon)
            out[d][1].append(truth)
        lat = nc.lat.values
    return {d: (np.stack(a), np.stack(b)) for d, (a, b) in out.items()}, lat


def figure(spectra, lat_days, png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    days = sorted(lat_days)
    fig, axes = plt.subplots(len(spectra), len(days), figsize=(3.6 * len(days), 2.8 * len(spectra)), squeeze=False)
    for r, (var, per_day) in enumerate(spectra.items()):
        for c, d in enumerate(days):
            s = per_day[d]
            k = np.arange(len(s["truth"]))
            ax = axes[r, c]
            ax.semilogy(k[1:], s["truth"][1:], "k-", label="truth")
            ax.semilogy(k[1:], s["members"][1:], "C1-", label="members")
            ax.semilogy(k, s["error"], "C0--", label="error of the mean")
            ax.semilogy(k, s["spread"], "C3--", label="spread")
            ax.set_title(f"{var}, day {d}", fontsize=9)
            ax.set_xlabel("zonal wavenumber", fontsize=8)
            if r == 0 and c == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    print(f"figure: {png}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="an ensemble output folder written with output.members=true")
    p.add_argument("--days", type=int, nargs="+", default=[1, 5, 10])
    p.add_argument("--vars", nargs="+", default=list(VARS))
    p.add_argument("--png", type=Path, default=None, help="also plot the spectra")
    args = p.parse_args(argv)
    data, lat = read_run(args.run, args.days, args.vars)
    spectra = {v: {} for v in args.vars}
    print(f"Spread by zonal wavenumber: {args.run} ({len(next(iter(data.values()))[0])} forecasts)\n")
    print("| variable | day | k | spread/error | activity (members/truth) | share of the spread |")
    print("|---|---|---|---|---|---|")
    for d in args.days:
        members, truth = data[d]
        for c, v in enumerate(args.vars):
            s = scale_scores(members[:, :, c], truth[:, c], lat)
            spectra[v][d] = s
            for label, ratio, act, share in band_ratios(s):
                print(f"| {v} | {d} | {label} | {ratio:.2f} | {act:.2f} | {share:.2f} |")
    if args.png:
        figure(spectra, args.days, args.png)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""How much an ensemble's pooled spread/skill moves with the sample of initial times it is scored on.

The built-in test split scores 4 initial times. A ratio measured on 12 validation initial times lands
somewhere else on another 4: this is the margin a tuned ensemble needs inside the target band. From a run's
``forecast_<init>_{mean,spread}.nc`` files and the split's truths it rebuilds, per initial time, the sums
metrics.json pools (area-weighted member variance, ddof 1, and squared error of the ensemble mean), checks
that all of them together give metrics.json's ``ssr_corrected``, and then scores every subset of
``--subset`` initial times. Printed per variable and lead: the run's ratio, the subsets' 5th-95th
percentiles and the standard deviation of log(ratio) over the subsets, times sqrt(n / (n - k)) (subsets of
k of the n vary less than k initial times drawn afresh; for a mean the product is exactly the usual
estimate, the sample standard deviation over sqrt(k)), and at the end the log margin (``--sigmas`` times the
largest of those deviations) and the band that leaves it inside ``--band``:

    mpirun -n 8 python -m hpc_fcn.ensemble config/ens100.yaml initial_conditions.split=test \\
        initial_conditions.count=12 ensemble.members=16 output.dir=runs/valid12
    python tools/ssr_sampling.py runs/valid12 [--subset 4] [--days 1 3 5 10] [--band 0.8 1.25]
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

from hpc_fcn import metrics  # noqa: E402
from spread_spectrum import lead_and_truth, run_split  # noqa: E402


def per_forecast_sums(run: Path, days, variables) -> tuple[np.ndarray, np.ndarray, int]:
    """(n_init, len(days), len(variables)) weighted member variance and squared error of the mean, and M."""
    import xarray as xr

    files = sorted(run.glob("forecast_*_mean.nc"))
    if not files:
        raise SystemExit(f"error: {run} has no forecast_*_mean.nc: give the output.dir of an ensemble run")
    cfg, ds, chans = run_split(run, variables)
    mode = cfg.get("scoring", {}).get("lat_weights", "area")
    var = np.zeros((len(files), len(days), len(variables)))
    mse = np.zeros_like(var)
    for n, f in enumerate(files):
        spread_file = f.with_name(f.name.replace("_mean.nc", "_spread.nc"))
        with xr.open_dataset(f) as mean, xr.open_dataset(spread_file) as spread:
            w = metrics.lat_weights(ds.lat, mode)[: mean.sizes["lat"]]
            for j, d in enumerate(days):
                i, truth = lead_and_truth(mean, f.name, d, ds, chans)
                for k, v in enumerate(variables):
                    var[n, j, k] = (spread[v].values[0, i] ** 2 * w[:, None]).sum()
                    mse[n, j, k] = ((mean[v].values[0, i] - truth[k]) ** 2 * w[:, None]).sum()
    return var, mse, int(cfg["ensemble"]["members"])


def corrected(var: np.ndarray, mse: np.ndarray, members: int) -> np.ndarray:
    """metrics.pooled_spread_skill's ssr_corrected of the forecasts on axis 0."""
    return metrics.pooled_spread_skill(var, mse, members)["ssr_corrected"]


def sampling_std(stats: np.ndarray, n: int, k: int) -> np.ndarray:
    """The standard deviation of a statistic of k initial times drawn afresh, from its values ``stats`` (axis 0)
    on every k-subset of the n a run has."""
    return stats.std(axis=0) * math.sqrt(n / (n - k))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--subset", type=int, default=4, help="initial times per subset (the test split's 4)")
    ap.add_argument("--days", type=int, nargs="+", default=[1, 3, 5, 10])
    ap.add_argument("--vars", nargs="+", default=["u", "v", "z"])
    ap.add_argument("--band", type=float, nargs=2, default=[0.8, 1.25])
    ap.add_argument("--sigmas", type=float, default=1.0)
    a = ap.parse_args(argv)
    if not (a.run / "metrics.json").is_file():
        raise SystemExit(f"error: {a.run} has no metrics.json: give the output.dir of a finished ensemble run")
    var, mse, M = per_forecast_sums(a.run, a.days, a.vars)
    n = var.shape[0]
    if not 1 <= a.subset < n:
        raise SystemExit(f"error: --subset must be between 1 and {n - 1} (the run has {n} initial times)")
    full = corrected(var, mse, M)
    scores = json.loads((a.run / "metrics.json").read_text())  # the run's own pooled ratios, to check against
    leads = scores["lead_hours"]
    check = max(abs(full[j, k] - scores["scores"]["ssr_corrected"][v][leads.index(24 * d)])
                for j, d in enumerate(a.days) for k, v in enumerate(a.vars))
    subsets = list(itertools.combinations(range(n), a.subset))
    sub = np.stack([corrected(var[list(s)], mse[list(s)], M) for s in subsets])  # (S, days, vars)
    logsd = sampling_std(np.log(sub), n, a.subset)
    print(f"{a.run}: {n} initial times, {M} members; largest difference from metrics.json's ssr_corrected "
          f"{check:.1e}")
    print(f"corrected spread/skill of all {n}, and of the {len(subsets)} subsets of {a.subset}: "
          "5-95 % range, std of log (of k drawn afresh)")
    for k, v in enumerate(a.vars):
        for j, d in enumerate(a.days):
            lo, hi = np.percentile(sub[:, j, k], [5, 95])
            print(f"  {v} day {d:>2}: {full[j, k]:.3f}   {lo:.3f} - {hi:.3f}   {logsd[j, k]:.3f}")
    margin = a.sigmas * float(logsd.max())
    lo, hi = a.band[0] * math.exp(margin), a.band[1] * math.exp(-margin)
    print(f"margin {a.sigmas:g} x {logsd.max():.3f} = {margin:.3f} in log: band [{lo:.3f}, {hi:.3f}] inside "
          f"[{a.band[0]:g}, {a.band[1]:g}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())

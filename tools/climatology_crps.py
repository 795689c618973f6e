#!/usr/bin/env python
"""Fair CRPS of a climatological ensemble at an ensemble run's verification times: the reference skill.

A calibrated ensemble relaxes to the climate distribution as its skill is lost, so at long leads its
fair CRPS should approach (and never exceed by much) that of an ensemble drawn from the climate itself.
The climatological ensemble of a verification time t is every training-split state at the same hour of
day within --window-days days of t's day of year, one a day, in every training year; the score is the
area-weighted fair CRPS (hpc_fcn.metrics.crps_fair), averaged over the initial times, in the run's units.

    python tools/climatology_crps.py [--data builtin] [--split out_of_sample] [--start 2005-01-01T00]
                                     [--every 120] [--count 4] [--days 1 3 5 10] [--window-days 10]

Defaults are config/ens100.yaml's initial times (4, 5 days apart from the first of the out_of_sample split).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hpc_fcn import metrics  # noqa: E402
from hpc_fcn.data.builtin import ensure_builtin  # noqa: E402
from hpc_fcn.data.era5 import open_split  # noqa: E402
from hpc_fcn.schema import DataConfig  # noqa: E402

VARS = ("u", "v", "z")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="builtin", help="dataset root (default: the built-in dataset)")
    p.add_argument("--split", default="out_of_sample", help="the split (folder) the ensemble is verified on")
    p.add_argument("--start", default=None, help="first initial time (default: the split's first)")
    p.add_argument("--every", type=int, default=120, help="hours between initial times")
    p.add_argument("--count", type=int, default=4, help="initial times")
    p.add_argument("--days", type=int, nargs="+", default=[1, 3, 5, 10], help="leads in days")
    p.add_argument("--window-days", type=int, default=10, help="half width of the day-of-year window")
    return p.parse_args(argv)


def climate_indices(train_times: np.ndarray, t: np.datetime64, window_days: int) -> list[int]:
    """Training states at t's hour of day within ``window_days`` days of t's date in their own year or the
    years next to it (so the window wraps at new year; leap days shift nothing)."""
    day = t.astype("datetime64[D]")
    offset = day - t.astype("datetime64[Y]").astype("datetime64[D]")
    hour = t - day
    tdays = train_times.astype("datetime64[D]")
    years = train_times.astype("datetime64[Y]")
    gap = np.min([np.abs((tdays - ((years + k).astype("datetime64[D]") + offset)).astype(int)) for k in (-1, 0, 1)],
                 axis=0)
    same_hour = (train_times - tdays) == hour
    return [int(i) for i in np.nonzero((gap <= window_days) & same_hour)[0]]


def main(argv=None) -> None:
    args = parse_args(argv)
    root = Path(ensure_builtin()) if args.data == "builtin" else Path(args.data)
    cfg = DataConfig(root=str(root))
    ds, train = open_split(cfg, args.split), open_split(cfg, "train")
    times, train_times = np.asarray(ds.times, "datetime64[h]"), np.asarray(train.times, "datetime64[h]")
    start = times[0] if args.start is None else np.datetime64(args.start, "h")
    w = metrics.lat_weights(ds.lat, "area")
    chans = [ds.channels.index(v) for v in VARS if v in ds.channels]
    table = {d: np.zeros(len(chans)) for d in args.days}
    members = {}
    for k in range(args.count):
        init = start + np.timedelta64(k * args.every, "h")
        for d in args.days:
            t = init + np.timedelta64(24 * d, "h")
            at = np.nonzero(times == t)[0]
            if not len(at):
                raise SystemExit(f"error: {t} is not in the {args.split} split: fewer or earlier initial times")
            idx = climate_indices(train_times, t, args.window_days)
            ens = np.stack([train.read(i) for i in idx])[:, chans]
            truth = ds.read(int(at[0]))[chans]
            table[d] += [float(metrics.weighted_mean(metrics.crps_fair(ens[:, c], truth[c]), w)) for c in range(len(chans))]
            members[d] = len(idx)
    names = [ds.channels[c] for c in chans]
    print(f"Fair CRPS of the climatological ensemble ({args.split}, {args.count} initial times from {start}, "
          f"{args.every} h apart; training states within {args.window_days} days of the day of year):\n")
    print("| lead | members | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for d in args.days:
        print(f"| day {d} | {members[d]} | " + " | ".join(f"{x / args.count:#.4g}" for x in table[d]) + " |")


if __name__ == "__main__":
    main()

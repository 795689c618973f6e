#!/usr/bin/env python
"""How far calibrating the spread alone could take an ensemble's fair CRPS: the oracle spread-scaling bound.

The fair CRPS rewards two things: an ensemble mean close to the truth and a spread that matches its
error. This separates them. For each variable and lead it rescales every member's deviation from the
ensemble mean by a factor a (x_m -> mean + a (x_m - mean): the mean is kept) and prints the fair CRPS
at a = 1 (the run as it is) and at the best a, chosen on the same forecasts it is scored on. The best
factor is therefore optimistic: no calibration of the spread, by initial perturbations, model noise or
post-processing, that keeps the mean can score better than it on these forecasts. A CRPS target that the
bound misses needs a better ensemble mean. With ``--reference`` (a run's folder) both are also given as
a change against that run's metrics.json fair CRPS.

One part of the mean's error it also measures: the drift of the zonal mean, the error of the ensemble
mean averaged along each latitude row and over the forecasts (a lead-dependent drift of the jets, common
to the forecasts), as its rms over the globe and the fair CRPS of the members with it subtracted (also
an oracle, fitted on the forecasts it scores).

    mpirun -n 8 python -m hpc_fcn.ensemble config/ens100.yaml ensemble.members=32 output.members=true \\
        output.dir=runs/members
    python tools/spread_bound.py runs/members --reference runs/report/A_gauss03
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

from hpc_fcn import metrics  # noqa: E402
from spread_spectrum import VARS, read_run  # noqa: E402

SCALES = np.round(np.arange(0.5, 2.001, 0.05), 2)


def scaled_crps(members: np.ndarray, truth: np.ndarray, lat: np.ndarray, scales=SCALES) -> np.ndarray:
    """Area-weighted fair CRPS, averaged over forecasts, of the members with their deviations from the mean
    scaled by each of ``scales``. members (F, M, lat, lon), truth (F, lat, lon) -> (len(scales),)."""
    w = metrics.lat_weights(lat, "area")
    mean = members.mean(axis=1, keepdims=True)
    dev = members - mean
    return np.array([mean_crps(mean + a * dev, truth, w) for a in scales])


def mean_crps(members: np.ndarray, truth: np.ndarray, w: np.ndarray) -> float:
    """Fair CRPS, weighted by ``w`` over the globe, averaged over the forecasts (shapes as :func:`scaled_crps`)."""
    return float(np.mean([metrics.weighted_mean(metrics.crps_fair(x, y), w) for x, y in zip(members, truth)]))


def zonal_drift(members: np.ndarray, truth: np.ndarray, lat: np.ndarray) -> tuple[float, float]:
    """The ensemble mean's zonal-mean error averaged over the forecasts (a profile over latitude): its
    area-weighted rms and the fair CRPS of the members with it subtracted. Shapes as :func:`scaled_crps`."""
    w = metrics.lat_weights(lat, "area")
    drift = (members.mean(axis=1) - truth).mean(axis=(0, -1))  # (lat,)
    rms = float(np.sqrt(np.sum(w * drift ** 2) / np.sum(w)))
    return rms, mean_crps(members - drift[None, None, :, None], truth, w)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="an ensemble output folder written with output.members=true")
    p.add_argument("--days", type=int, nargs="+", default=[1, 3, 5, 10])
    p.add_argument("--vars", nargs="+", default=list(VARS))
    p.add_argument("--reference", type=Path, default=None, help="a run folder whose metrics.json CRPS to compare to")
    args = p.parse_args(argv)
    ref = None
    if args.reference is not None:
        path = args.reference / "metrics.json"
        if not path.is_file():
            raise SystemExit(f"error: {path} does not exist: give --reference an ensemble run's output folder")
        ref = json.loads(path.read_text())
    data, lat = read_run(args.run, args.days, args.vars)
    one = list(SCALES).index(1.0)
    n = len(next(iter(data.values()))[0])
    print(f"Fair CRPS with the members' deviations from their mean scaled by a: {args.run} ({n} forecasts)\n")
    vs = " (vs reference)" if ref else ""
    print(f"| variable | day | CRPS as run{vs} | best a | CRPS at best a{vs} | zonal drift (rms) | "
          f"CRPS without it{vs} |")
    print("|---|---|---|---|---|---|---|")
    for v_i, v in enumerate(args.vars):
        for d in args.days:
            members, truth = data[d]
            crps = scaled_crps(members[:, :, v_i], truth[:, v_i], lat)
            best = int(np.argmin(crps))
            drift, undrifted = zonal_drift(members[:, :, v_i], truth[:, v_i], lat)
            cells = [f"{crps[one]:.4g}", f"{SCALES[best]:.2f}", f"{crps[best]:.4g}", f"{drift:.3g}", f"{undrifted:.4g}"]
            if ref is not None:
                lead = ref["lead_hours"].index(24 * d)
                r = ref["scores"]["crps"][v][lead]
                for i, value in ((0, crps[one]), (2, crps[best]), (4, undrifted)):
                    cells[i] += f" ({value / r * 100 - 100:+.1f} %)"
            print(f"| {v} | {d} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Per-year summary of a synthetic dataset: the table of docs/builtin_dataset.md ("Measured").

For each year: kinetic energy, the median and maximum over samples of the peak wind speed, and the
persistence ACC of z anomalies (against the dataset's time means) at 24 h, 48 h and 5 days; then the
global means and standard deviations of stats/. Latitude weights are cos(lat) over the stored rows;
the same definitions are checked by tests/test_synth.py::test_default_dataset_behaves_like_weather.

    python tools/dataset_summary.py [ROOT]        # default: the built-in dataset
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hpc_fcn.data.builtin import ensure_builtin  # noqa: E402
from hpc_fcn.data.era5 import SPLITS  # noqa: E402
from hpc_fcn.metrics import lat_weights  # noqa: E402
from hpc_fcn.schema import DataConfig  # noqa: E402


def row_weights(nlat: int) -> np.ndarray:
    """cos(lat) of the stored rows (pole to pole), normalised to mean 1, as a (nlat, 1) column."""
    return lat_weights(np.linspace(90, -90, nlat), "fourcastnet")[:, None]


def kinetic_energy(x: np.ndarray, w: np.ndarray) -> float:
    """Mean of (u^2 + v^2) / 2 over samples and the weighted globe; x is (T, C, lat, lon) with u, v first."""
    return float((0.5 * (x[:, 0] ** 2 + x[:, 1] ** 2) * w).mean())


def peak_wind(x: np.ndarray) -> np.ndarray:
    """Each sample's largest wind speed, (T,)."""
    return np.sqrt(x[:, 0] ** 2 + x[:, 1] ** 2).max(axis=(-2, -1))


def persistence_acc(anom: np.ndarray, lag: int, w: np.ndarray) -> float:
    """Mean over start samples of the uncentred ACC between anomalies (T, lat, lon) ``lag`` samples apart
    (NaN for a year shorter than the lag)."""
    if lag >= len(anom):
        return float("nan")
    a, b = anom[lag:], anom[:-lag]
    num = (a * b * w).sum(axis=(-2, -1))
    den = np.sqrt((a ** 2 * w).sum(axis=(-2, -1)) * (b ** 2 * w).sum(axis=(-2, -1)))
    return float((num / den).mean())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", nargs="?", default=None, help="dataset root (default: the built-in dataset)")
    args = p.parse_args(argv)
    root = Path(args.root) if args.root else ensure_builtin()
    meta = json.loads((root / "metadata.json").read_text())
    w = row_weights(meta["nlat"])
    z = meta["channels"].index("z")
    clim = np.load(root / "stats" / "time_means.npy")[0, z].astype(np.float64)
    lags = (4, 8, 20)  # 24 h, 48 h, 5 days of 6-hourly samples
    print("| year | split | KE (J/kg) | peak wind, median / max (m/s) | z persistence ACC 24 h / 48 h / 5 d |")
    print("|---|---|---|---|---|")
    for key in SPLITS:  # each split's year files, in its folder (DataConfig.split_dir)
        folder = root / DataConfig().split_dir(key)
        for year in sorted(int(p.stem) for p in folder.glob("*.h5") if p.stem.isdigit() and len(p.stem) == 4):
            with h5py.File(folder / f"{year}.h5", "r") as f:
                x = f["fields"][:].astype(np.float64)
            peak = peak_wind(x)
            accs = " / ".join(f"{persistence_acc(x[:, z] - clim, lag, w):.3f}" for lag in lags)
            print(f"| {year} | {key} | {kinetic_energy(x, w):.1f} | {np.median(peak):.1f} / {peak.max():.1f} | {accs} |")
    for name in ("global_means", "global_stds"):
        values = np.load(root / "stats" / f"{name}.npy").ravel()
        print(f"{name} ({', '.join(meta['channels'])}): " + ", ".join(f"{v:.4g}" for v in values))


if __name__ == "__main__":
    main()

"""Write a tiny dataset in the published FourCastNet layout, with fields known in closed form.

``write_layout(tmp_path)`` gives ROOT/<split>/YYYY.h5 (dataset ``fields``, float32, (T, C, rows, cols),
rows north->south including both poles), ROOT/stats/*.npy and, optionally, ROOT/metadata.json.
``Layout.fields(year)`` recomputes a year's array so tests can compare reads against the truth.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import h5py
import numpy as np

ERA5_ORDER = ("u10", "v10", "t2m", "sp", "msl", "t850", "u1000", "v1000", "z1000", "u850", "v850", "z850",
              "u500", "v500", "z500", "t500", "z50", "r500", "r850", "tcwv", "unused20")

DEFAULT_SPLITS = {"train": (2000, 2001), "test": (2002,), "out_of_sample": (2003,)}


@dataclass
class Layout:
    """What ``write_layout`` wrote: enough to regenerate every value and find every file."""
    root: Path
    splits: dict[str, tuple[int, ...]]
    channels: list[str]
    steps: int
    rows: int
    cols: int
    dt_hours: int
    stats_dir: str
    chunks: tuple[int, int, int, int] | None
    extra: dict = field(default_factory=dict)

    def path(self, split: str, year: int) -> Path:
        return self.root / split / f"{year}.h5"

    def fields(self, year: int) -> np.ndarray:
        """The (T, C, rows, cols) float32 array stored for ``year`` (whatever its split)."""
        return smooth_fields(year, self.steps, len(self.channels), self.rows, self.cols)

    def model_lat(self) -> np.ndarray:
        return 90.0 - 180.0 * np.arange(self.rows - 1) / (self.rows - 1)

    def model_lon(self) -> np.ndarray:
        return 360.0 * np.arange(self.cols) / self.cols


def smooth_fields(year: int, steps: int, nchan: int, rows: int, cols: int) -> np.ndarray:
    """Smooth, distinct per (year, step, channel) fields: a zonal wave on a channel offset and a tilt.

    Every row and column differ (a linear ramp in both), so a misplaced window cannot go unnoticed.
    """
    t = (year - 2000) * steps + np.arange(steps, dtype=np.float64)[:, None, None, None]
    c = np.arange(nchan, dtype=np.float64)[None, :, None, None]
    phi = np.deg2rad(90.0 - 180.0 * np.arange(rows) / (rows - 1))[None, None, :, None]
    lam = np.deg2rad(360.0 * np.arange(cols) / cols)[None, None, None, :]
    base = 10.0 * (c + 1.0) + 0.5 * t
    wave = (1.0 + c) * np.cos(phi) * np.sin((1 + c % 3) * lam + 0.3 * t)
    ramp = 0.01 * np.arange(rows)[None, None, :, None] + 0.001 * np.arange(cols)[None, None, None, :]
    return (base + wave + ramp).astype(np.float32)


def write_layout(root: str | Path, *, splits: Mapping[str, Sequence[int]] | None = None, steps: int = 4,
                 channels: int | Sequence[str] = 3, rows: int = 9, cols: int = 16, dt_hours: int = 6,
                 metadata: bool | dict = True, stats: bool = True, stats_dir: str = "stats",
                 chunks: tuple[int, int, int, int] | None = None) -> Layout:
    """Write the dataset under ``root`` and return its description.

    ``channels``: a count (the first names of the ERA5 order) or explicit names. ``metadata``: True writes
    metadata.json with names, units, lat/lon; a dict is merged over that; False writes none (the reader
    then falls back to the ERA5 order). ``stats`` computes global means/stds and time means from the
    first split. ``chunks``: HDF5 chunk shape of ``fields`` (None = contiguous).
    """
    root = Path(root)
    splits = {k: tuple(v) for k, v in (splits or DEFAULT_SPLITS).items()}
    names = list(ERA5_ORDER[:channels]) if isinstance(channels, int) else list(channels)
    lay = Layout(root, splits, names, steps, rows, cols, dt_hours, stats_dir, chunks)
    for split, years in splits.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        for year in years:
            with h5py.File(lay.path(split, year), "w") as f:
                f.create_dataset("fields", data=lay.fields(year), chunks=chunks)
    if stats:
        first = np.concatenate([lay.fields(y) for y in next(iter(splits.values()))]).astype(np.float64)
        (root / stats_dir).mkdir(parents=True, exist_ok=True)
        np.save(root / stats_dir / "global_means.npy", first.mean(axis=(0, 2, 3), keepdims=True).astype(np.float32))
        np.save(root / stats_dir / "global_stds.npy", first.std(axis=(0, 2, 3), keepdims=True).astype(np.float32))
        np.save(root / stats_dir / "time_means.npy", first.mean(axis=0, keepdims=True).astype(np.float32))
    if metadata is not False:
        meta = {
            "channels": names,
            "units": {n: f"unit_{n}" for n in names},
            "standard_names": {n: f"standard_{n}" for n in names},
            "long_names": {n: f"long name of {n}" for n in names},
            "dt_hours": dt_hours,
            "lat": (90.0 - 180.0 * np.arange(rows) / (rows - 1)).tolist(),
            "lon": (360.0 * np.arange(cols) / cols).tolist(),
        }
        if isinstance(metadata, dict):
            meta.update(metadata)
        lay.extra["metadata"] = meta
        (root / "metadata.json").write_text(json.dumps(meta))
    return lay

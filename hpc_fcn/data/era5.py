"""Reader for data in the FourCastNet ERA5 layout: one HDF5 file per year plus normalisation stats.

ROOT/<split>/YYYY.h5 holds ``fields`` (T, C, rows, cols) float32, 6-hourly from YYYY-01-01T00, rows
north->south including both poles; the model grid drops the last (south-pole) row. ROOT/<stats_dir> holds
global_means.npy, global_stds.npy (1, C, 1, 1) and time_means.npy (1, C, rows, cols), the climatology.
ROOT/metadata.json (optional) names the channels and gives units, coordinates and the time step.
A converted ensemble of analyses (e.g. ERA5's EDA) also has ``members`` (T, M, C, rows, cols) in each year
file, its member numbers in the attribute ``member_numbers``; ``fields`` is then its first member.
Every read is a hyperslab: a rank reads only its own rows and columns of the selected channels.
"""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np

from ..runtime import UserError, first_line

ERA5_CHANNELS = ("u10", "v10", "t2m", "sp", "msl", "t850", "u1000", "v1000", "z1000", "u850", "v850", "z850",
                 "u500", "v500", "z500", "t500", "z50", "r500", "r850", "tcwv", "unused20")

# (units, CF standard name, long name) of the published channels, used when metadata.json is absent.
_WIND_U = ("m s-1", "eastward_wind")
_WIND_V = ("m s-1", "northward_wind")
_TEMP = ("K", "air_temperature")
_GEOP = ("m2 s-2", "geopotential")
_RH = ("%", "relative_humidity")
ERA5_ATTRS: dict[str, tuple[str, str, str]] = {
    "u10": (*_WIND_U, "10 metre eastward wind"),
    "v10": (*_WIND_V, "10 metre northward wind"),
    "t2m": (*_TEMP, "2 metre temperature"),
    "sp": ("Pa", "surface_air_pressure", "surface pressure"),
    "msl": ("Pa", "air_pressure_at_mean_sea_level", "mean sea level pressure"),
    "t850": (*_TEMP, "temperature at 850 hPa"),
    "u1000": (*_WIND_U, "eastward wind at 1000 hPa"),
    "v1000": (*_WIND_V, "northward wind at 1000 hPa"),
    "z1000": (*_GEOP, "geopotential at 1000 hPa"),
    "u850": (*_WIND_U, "eastward wind at 850 hPa"),
    "v850": (*_WIND_V, "northward wind at 850 hPa"),
    "z850": (*_GEOP, "geopotential at 850 hPa"),
    "u500": (*_WIND_U, "eastward wind at 500 hPa"),
    "v500": (*_WIND_V, "northward wind at 500 hPa"),
    "z500": (*_GEOP, "geopotential at 500 hPa"),
    "t500": (*_TEMP, "temperature at 500 hPa"),
    "z50": (*_GEOP, "geopotential at 50 hPa"),
    "r500": (*_RH, "relative humidity at 500 hPa"),
    "r850": (*_RH, "relative humidity at 850 hPa"),
    "tcwv": ("kg m-2", "atmosphere_mass_content_of_water_vapor", "total column water vapour"),
    "unused20": ("1", "", "unused channel"),  # "" = no CF standard name
}

# The splits of a dataset, named as the folders of FourCastNet's layout: train (1979-2015), test (2016-2017, the
# years training validates on) and out_of_sample (2018-, held out). A split is read from ROOT/<split>/.
SPLITS = ("train", "test", "out_of_sample")
RENAMED_SPLITS = {"valid": "test"}  # the names of releases before the splits were named by their folders
STATS_FILES = ("global_means.npy", "global_stds.npy", "time_means.npy")



def layout_times(years, counts, dt_hours: int) -> np.ndarray:
    """The layout's times: sample i of YYYY.h5 is YYYY-01-01T00 + i * dt_hours (``counts[k]`` samples of
    ``years[k]``), as datetime64[h]."""
    step = np.timedelta64(dt_hours, "h")
    parts = [np.datetime64(f"{y:04d}-01-01T00", "h") + step * np.arange(n) for y, n in zip(years, counts)]
    return np.concatenate(parts) if parts else np.array([], dtype="datetime64[h]")

class DataError(UserError):
    """Data on disk that is missing, malformed or inconsistent, or a request it cannot satisfy."""


def split_problem(split: str) -> str | None:
    """Why ``split`` is not a split name (one line saying the name to use), or None when it is one."""
    if split in SPLITS:
        return None
    if split in RENAMED_SPLITS:
        new = RENAMED_SPLITS[split]
        return (f"split '{split}' is now called '{new}', the folder it is read from ({new}/, the validation years); "
                f"splits are named by their folders: {', '.join(SPLITS)}")
    return f"unknown split {split!r}: use one of {', '.join(SPLITS)} (the folders under the data root)"


def open_split(data_cfg, split: str, root: str | Path | None = None) -> "FCNDataset":
    """Open ``split`` ('train' | 'test' | 'out_of_sample') of the dataset described by a ``DataConfig``.

    ``root`` overrides ``data_cfg.root``; it must be a directory ('builtin' is resolved by the caller).
    """
    problem = split_problem(split)
    if problem:
        raise DataError(problem)
    root = data_cfg.root if root is None else root
    return FCNDataset(root, data_cfg.split_dir(split), channels=data_cfg.channels, stats_dir=data_cfg.stats_dir)


def _as_hour(time: Any) -> np.datetime64:
    """A datetime, numpy datetime64 or ISO string as datetime64[h]; error if it is not on a whole hour."""
    if isinstance(time, _dt.datetime) and time.tzinfo is not None:
        time = time.astimezone(_dt.timezone.utc).replace(tzinfo=None)
    try:
        t = np.datetime64(time)
    except (ValueError, TypeError) as exc:
        raise DataError(f"cannot read {time!r} as a time: give a datetime or an ISO string like 2018-01-01T06") from exc
    h = t.astype("datetime64[h]")
    if h != t:
        raise DataError(f"time {time!r} is not on a whole hour: samples lie on whole hours")
    return h


def _check_slice(s: slice | None, n: int, what: str) -> slice:
    """A slice with resolved bounds and a positive step, non-empty, within ``n``."""
    if s is None:
        return slice(0, n, 1)
    if not isinstance(s, slice):
        raise DataError(f"{what} must be a slice, got {type(s).__name__}")
    start, stop, step = s.indices(n)
    if step <= 0 or stop <= start:
        raise DataError(f"{what} {s} selects nothing of {n} (need increasing, non-empty bounds)")
    return slice(start, stop, step)


class FCNDataset:
    """One split of a FourCastNet-layout dataset, read lazily by sample index and spatial window.

    Read-only and without shared state, so any number of MPI ranks may read the same files at once.
    """

    def __init__(self, root: str | Path, split_dir: str, channels: Sequence[str] | None = None,
                 stats_dir: str | None = "stats"):
        """``stats_dir=None``: no statistics (raw reads only; normalise and climatology are unavailable)."""
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DataError(f"data root {str(root)!r} is not a directory: set data.root to the dataset folder")
        self.split_path = self.root / split_dir
        if not self.split_path.is_dir():
            raise DataError(f"split directory {self.split_path} does not exist (data root {self.root})")
        self.files = sorted((p for p in self.split_path.glob("*.h5") if p.stem.isdigit() and len(p.stem) == 4),
                            key=lambda p: int(p.stem))
        if not self.files:
            raise DataError(f"no year files (YYYY.h5) in {self.split_path}")
        self.years = [int(p.stem) for p in self.files]
        self._handles: list[h5py.File | None] = [None] * len(self.files)

        counts, shape = [], None
        for i, path in enumerate(self.files):
            ds = self._fields(i)
            if ds.ndim != 4:
                raise DataError(f"{path}: 'fields' has shape {ds.shape}; expected 4 dims (time, channel, lat, lon)")
            if shape is None:
                shape = ds.shape[1:]
                first = path
            elif ds.shape[1:] != shape:
                raise DataError(f"{path}: 'fields' has shape {ds.shape[1:]} per step but {first} has {shape}")
            counts.append(ds.shape[0])
        nchan, self.rows, self.cols = shape
        if self.rows < 2:
            raise DataError(f"{first}: only {self.rows} latitude row(s); need the poles plus at least one row")

        meta = self._metadata(nchan)
        all_names: list[str] = meta["channels"]
        self.available_channels = list(all_names)
        self.dt_hours = int(meta.get("dt_hours", 6))
        self._select(all_names, channels)
        sel = self.channels
        self.units = {n: meta["units"].get(n, "") for n in sel}
        self.standard_names = {n: meta["standard_names"].get(n, "") for n in sel}
        self.long_names = {n: meta["long_names"].get(n, n) for n in sel}
        self.nlat, self.nlon = self.rows - 1, self.cols
        self.lat = np.asarray(meta["lat"], dtype=np.float64)[: self.nlat]
        self.lon = np.asarray(meta["lon"], dtype=np.float64)

        self.times = layout_times(self.years, counts, self.dt_hours)
        if np.any(np.diff(self.times) <= np.timedelta64(0, "h")):
            raise DataError(f"year files in {self.split_path} overlap in time: too many steps per year for "
                            f"dt_hours={self.dt_hours}")
        self._file_of = np.repeat(np.arange(len(counts)), counts)
        self._local = np.concatenate([np.arange(n) for n in counts])
        self.member_numbers = self._members(shape)
        self.stats_path = None
        if stats_dir is not None:
            self._load_stats(stats_dir, nchan)

    # -- construction helpers -------------------------------------------------------------------------
    def _open_h5(self, path: Path) -> h5py.File:
        """Open one year file read-only (file locking off so many ranks can share it)."""
        return h5py.File(path, "r", locking=False)

    def _fields(self, i: int) -> h5py.Dataset:
        if self._handles[i] is None:
            try:
                self._handles[i] = self._open_h5(self.files[i])
            except OSError as exc:
                raise DataError(f"{self.files[i]}: not a readable HDF5 file ({exc})") from exc
        f = self._handles[i]
        if "fields" not in f:
            raise DataError(f"{self.files[i]}: no dataset 'fields' (has {', '.join(f.keys()) or 'nothing'})")
        return f["fields"]

    def _members(self, shape: tuple) -> list[int] | None:
        """The member numbers of the analysis ensemble in every year file, or None when there is none."""
        found = []
        for i, path in enumerate(self.files):
            f = self._handles[i]
            if "members" not in f:
                found.append(None)
                continue
            ds = f["members"]
            if ds.ndim != 5 or ds.shape[0] != f["fields"].shape[0] or ds.shape[2:] != shape:
                raise DataError(f"{path}: 'members' has shape {ds.shape}; expected (time, member) + {shape} with "
                                f"the {f['fields'].shape[0]} times of 'fields'")
            numbers = json.loads(ds.attrs.get("member_numbers", "null") or "null") or list(range(ds.shape[1]))
            if len(numbers) != ds.shape[1]:
                raise DataError(f"{path}: 'members' holds {ds.shape[1]} members but names {len(numbers)}")
            found.append(list(numbers))
        if any(m != found[0] for m in found):
            which = "; ".join(f"{p.name}: {m if m is not None else 'none'}" for p, m in zip(self.files, found))
            raise DataError(f"year files in {self.split_path} differ in their ensemble members: {which}")
        return found[0]

    def _metadata(self, nchan: int) -> dict:
        """metadata.json merged over the ERA5 defaults; checked against the file shapes."""
        names = [ERA5_CHANNELS[k] if k < len(ERA5_CHANNELS) else f"unused{k}" for k in range(nchan)]
        meta: dict[str, Any] = {
            "channels": names,
            "units": {n: ERA5_ATTRS.get(n, ("1", "", n))[0] for n in names},
            "standard_names": {n: ERA5_ATTRS.get(n, ("1", "", n))[1] for n in names},
            "long_names": {n: ERA5_ATTRS.get(n, ("1", "", n))[2] for n in names},
            "dt_hours": 6,
            "lat": (90.0 - 180.0 * np.arange(self.rows) / (self.rows - 1)).tolist(),
            "lon": (360.0 * np.arange(self.cols) / self.cols).tolist(),
        }
        path = self.root / "metadata.json"
        if path.is_file():
            try:
                given = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise DataError(f"{path}: not valid JSON ({exc})") from exc
            if not isinstance(given, dict):
                raise DataError(f"{path}: expected a JSON object, got {type(given).__name__}")
            for key, value in given.items():
                if isinstance(value, dict) and isinstance(meta.get(key), dict):
                    meta[key] = {**meta[key], **value}
                elif value is not None:
                    meta[key] = value
            for key, n in (("channels", nchan), ("lat", self.rows), ("lon", self.cols)):
                if len(meta[key]) != n:
                    raise DataError(f"{path}: '{key}' has {len(meta[key])} entries but the data have {n}")
            for key in ("units", "standard_names", "long_names"):
                if not isinstance(meta[key], dict):
                    raise DataError(f"{path}: '{key}' must map channel names to strings")
        if len(set(meta["channels"])) != nchan:
            raise DataError(f"{path}: channel names are not unique: {meta['channels']}")
        if int(meta["dt_hours"]) <= 0:
            raise DataError(f"{path}: dt_hours must be positive, got {meta['dt_hours']}")
        return meta

    def _select(self, all_names: list[str], channels: Sequence[str] | None) -> None:
        if channels is None:
            channels = list(all_names)
        if isinstance(channels, str):
            raise DataError(f"channels must be a list of names, got the string {channels!r}")
        missing = [c for c in channels if c not in all_names]
        if missing:
            raise DataError(f"channel(s) {', '.join(map(str, missing))} not in the dataset; available: "
                            f"{', '.join(all_names)}")
        if len(set(channels)) != len(channels) or not channels:
            raise DataError(f"channels must be a non-empty list without repeats, got {list(channels)}")
        self.channels = list(channels)
        self.channel_index = [all_names.index(c) for c in channels]
        order = np.argsort(self.channel_index, kind="stable")
        self._sorted = [self.channel_index[k] for k in order]
        self._unsort = np.argsort(order)  # file order -> requested order
        lo, hi = self._sorted[0], self._sorted[-1]
        # h5py reads a contiguous channel range fastest as a slice; otherwise an increasing list
        self._chan_sel: slice | list[int] = slice(lo, hi + 1) if hi - lo + 1 == len(self._sorted) else self._sorted

    def _load_stats(self, stats_dir: str, nchan: int) -> None:
        self.stats_path = self.root / stats_dir
        for name in STATS_FILES:
            if not (self.stats_path / name).is_file():
                raise DataError(f"statistics file {self.stats_path / name} is missing "
                                f"(needed: {', '.join(STATS_FILES)})")
        stats = {}
        for name in STATS_FILES[:2]:
            arr = _load_array(self.stats_path / name)
            if arr.shape != (1, nchan, 1, 1):
                raise DataError(f"{self.stats_path / name}: shape {arr.shape}, expected (1, {nchan}, 1, 1) "
                                f"to match {self.files[0]}")
            stats[name] = arr.reshape(nchan)[self.channel_index].astype(np.float32)
        self.means, self.stds = stats["global_means.npy"], stats["global_stds.npy"]
        if not np.all(np.isfinite(self.stds) & (self.stds > 0)):
            raise DataError(f"{self.stats_path / 'global_stds.npy'}: standard deviations must be finite and "
                            f"positive, got {dict(zip(self.channels, self.stds.tolist()))}")
        clim = self._time_means()
        if clim.shape != (1, nchan, self.rows, self.cols):
            raise DataError(f"{self.stats_path / 'time_means.npy'}: shape {clim.shape}, expected "
                            f"(1, {nchan}, {self.rows}, {self.cols}) to match {self.files[0]}")

    def _time_means(self) -> np.ndarray:
        """time_means.npy mapped, not read: a rank copies only its window, and the mapping (whose touched pages
        count in the process's resident set) goes when the caller drops it."""
        return _load_array(self.stats_path / "time_means.npy", mmap_mode="r")

    # -- queries ----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.times)

    def __repr__(self) -> str:
        return (f"FCNDataset({self.split_path}, years {self.years[0]}-{self.years[-1]}, {len(self)} samples, "
                f"channels {self.channels}, model grid {self.nlat}x{self.nlon})")

    def find(self, time: Any) -> int | None:
        """The sample index of ``time`` (datetime, datetime64 or ISO string), None when the split has none."""
        t = _as_hour(time)
        i = int(np.searchsorted(self.times, t))
        return i if i < len(self.times) and self.times[i] == t else None

    def index_of(self, time: Any) -> int:
        """The sample index of ``time``; an error naming the split's range when it has none."""
        i = self.find(time)
        if i is None:
            raise DataError(f"time {_as_hour(time)} is not in {self.split_path} (samples every {self.dt_hours} h "
                            f"from {self.times[0]} to {self.times[-1]})")
        return i

    def _check_index(self, index: int, steps: int = 1) -> int:
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise DataError(f"sample index must be an integer, got {index!r} (use index_of for times)")
        if steps < 1:
            raise DataError(f"steps must be >= 1, got {steps}")
        if index < 0 or index + steps > len(self):
            raise DataError(f"samples {index}..{index + steps - 1} out of range: {self.split_path} has {len(self)}")
        return int(index)

    # -- reads ------------------------------------------------------------------------------------------
    def read(self, index: int, rows: slice | None = None, cols: slice | None = None,
             normalise: bool = False) -> np.ndarray:
        """Sample ``index`` as (C, r, c) float32: the selected channels, model-grid ``rows`` and ``cols``."""
        return self.read_sequence(index, 1, rows, cols, normalise)[0]

    def read_sequence(self, index: int, steps: int, rows: slice | None = None, cols: slice | None = None,
                      normalise: bool = False) -> np.ndarray:
        """Samples index..index+steps-1 as (steps, C, r, c) float32; they must be consecutive in time."""
        index = self._check_index(index, steps)
        rows = _check_slice(rows, self.nlat, "rows")
        cols = _check_slice(cols, self.nlon, "cols")
        if steps > 1 and np.any(np.diff(self.times[index:index + steps]) != np.timedelta64(self.dt_hours, "h")):
            raise DataError(f"samples {self.times[index]} + {steps} steps are not consecutive in {self.split_path} "
                            f"(the year files leave a gap)")
        parts = []
        i = index
        while i < index + steps:
            f = int(self._file_of[i])
            n = min(index + steps - i, int(np.sum(self._file_of[i:index + steps] == f)))
            t0 = int(self._local[i])
            block = self._fields(f)[t0:t0 + n, self._chan_sel, rows, cols]
            block = np.asarray(block, dtype=np.float32)[:, self._unsort]
            self._check_finite(block, i, f)
            parts.append(block)
            i += n
        out = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return self.normalise(out) if normalise else out

    def read_members(self, index: int, rows: slice | None = None, cols: slice | None = None) -> np.ndarray:
        """The analysis ensemble at sample ``index`` as (members, C, r, c) float32, physical units."""
        if self.member_numbers is None:
            raise DataError(f"{self.split_path}: no analysis ensemble ('members') in the year files; convert an "
                            "ensemble of analyses (e.g. ERA5 EDA GRIB) with python -m hpc_fcn.data.convert")
        index = self._check_index(index)
        rows = _check_slice(rows, self.nlat, "rows")
        cols = _check_slice(cols, self.nlon, "cols")
        f = int(self._file_of[index])
        block = self._handles[f]["members"][int(self._local[index]), :, self._chan_sel, rows, cols]
        block = np.asarray(block, dtype=np.float32)[:, self._unsort]
        bad = ~np.isfinite(block)
        if bad.any():
            m, c = np.argwhere(bad)[0][:2]
            raise DataError(f"{self.files[f]}: non-finite value (NaN/Inf) in member {self.member_numbers[m]} at time "
                            f"{self.times[index]} in channel {self.channels[c]}")
        return block

    def _check_finite(self, block: np.ndarray, first: int, f: int) -> None:
        bad = ~np.isfinite(block)
        if bad.any():
            t, c = np.argwhere(bad)[0][:2]
            raise DataError(f"{self.files[f]}: non-finite value (NaN/Inf) at time {self.times[first + t]} "
                            f"in channel {self.channels[c]}")

    def climatology(self, rows: slice | None = None, cols: slice | None = None) -> np.ndarray:
        """The time-mean field (C, r, c) float32 on the model grid window, for ACC anomalies."""
        if self.stats_path is None:
            raise DataError(f"{self.split_path} was opened without statistics; the climatology needs them")
        rows = _check_slice(rows, self.nlat, "rows")
        cols = _check_slice(cols, self.nlon, "cols")
        return np.asarray(self._time_means()[0, self.channel_index, rows, cols], dtype=np.float32)

    # -- normalisation --------------------------------------------------------------------------------
    def _stat(self, x, values: np.ndarray):
        if self.stats_path is None:
            raise DataError(f"{self.split_path} was opened without statistics; normalisation needs them")
        if x.ndim < 3 or x.shape[-3] != len(self.channels):
            raise DataError(f"expected the {len(self.channels)} channels on axis -3, got shape {tuple(x.shape)}")
        v = values.reshape(-1, 1, 1)
        if isinstance(x, np.ndarray):
            return v.astype(x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32)
        import torch
        return torch.as_tensor(v, dtype=x.dtype if x.is_floating_point() else torch.float32, device=x.device)

    def normalise(self, x):
        """(x - mean) / std per channel; numpy array or torch tensor with channels on axis -3."""
        return (x - self._stat(x, self.means)) / self._stat(x, self.stds)

    def denormalise(self, x):
        """x * std + mean per channel: the inverse of :meth:`normalise`."""
        return x * self._stat(x, self.stds) + self._stat(x, self.means)

    # -- lifetime ---------------------------------------------------------------------------------------
    def close(self) -> None:
        for i, h in enumerate(self._handles):
            if h is not None:
                h.close()
                self._handles[i] = None

    def __enter__(self) -> "FCNDataset":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown may have torn h5py down already
            pass


def _load_array(path: Path, mmap_mode: str | None = None) -> np.ndarray:
    """A statistics file: a numeric .npy array (object arrays, i.e. pickles, are refused, never run)."""
    try:
        arr = np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - truncated, garbage or pickled: one line each
        raise DataError(f"{path} is not a numeric .npy array ({type(exc).__name__}: {first_line(exc, 120)}); "
                        "write it again with the converter") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu":
        raise DataError(f"{path} is not a numeric .npy array; write it again with the converter")
    return arr


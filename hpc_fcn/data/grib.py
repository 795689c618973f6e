"""ERA5 GRIB files (as the CDS and MARS deliver them, GRIB 1 or 2) as converter sources, read with ecCodes.

Fields are mapped to channels by ECMWF parameter id (the same in GRIB 1 and 2, whatever the shortName
spelling) and pressure level (``isobaricInhPa``, or ``isobaricInPa`` in GRIB 2); single-level parameters
(2 m temperature, 10 m winds, ...) are taken on whatever level type they come (``surface`` in GRIB 1,
``heightAboveGround`` in GRIB 2). The ensemble ``number`` key gives the members (ERA5's EDA: 0-9). A file is
scanned once, headers only; a field is then decoded from its byte range when its year is converted.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .inventory import CHANNEL_SOURCES, PRESSURE_VARS, ConversionError, Inventory, orient_grid

# ECMWF paramId -> the converter's short name (see CHANNEL_SOURCES)
GRIB_PARAMS: dict[int, str] = {165: "u10", 166: "v10", 167: "t2m", 134: "sp", 151: "msl", 137: "tcwv",
                               131: "u", 132: "v", 130: "t", 129: "z", 157: "r"}
PARAM_ID = {short: pid for pid, short in GRIB_PARAMS.items()}
PRESSURE_LEVEL_TYPES = {"isobaricInhPa": 1.0, "isobaricInPa": 0.01}  # level unit -> hPa
GRIB_MAGIC = b"GRIB"
INSTALL_HINT = "GRIB input needs ecCodes: pip install 'hpc_fcn[grib]' (see README, 'GRIB input')"


def grib_name(short: str) -> str:
    """ERA5 field ``short`` as GRIB names it: 'paramId 129 (z)'."""
    return f"paramId {PARAM_ID[short]} ({short})"


def describe(channel: str) -> str:
    """A channel with the GRIB field it is made of: 'z500 (paramId 129 (z) at 500 hPa)'."""
    short, level = CHANNEL_SOURCES[channel]
    return f"{channel} ({grib_name(short)}{f' at {level} hPa' if level is not None else ''})"


def eccodes():
    try:
        import eccodes as ec
    except (ImportError, RuntimeError) as exc:  # RuntimeError: the Python package without its library
        raise ConversionError(f"{INSTALL_HINT} ({exc})") from None
    return ec


def is_grib(path: str) -> bool:
    """True when the file starts with a GRIB message (whatever its extension)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == GRIB_MAGIC
    except OSError:
        return False


@dataclass(frozen=True)
class _Layout:
    """How a message's values map onto the oriented (north->south, lon from 0) grid."""
    ni: int
    nj: int
    j_consecutive: bool
    flip_lon: bool
    flip_lat: bool
    lon_roll: int

    def orient(self, values: np.ndarray) -> np.ndarray:
        out = values.reshape(self.ni, self.nj).T if self.j_consecutive else values.reshape(self.nj, self.ni)
        if self.flip_lon:
            out = out[:, ::-1]
        if self.flip_lat:
            out = out[::-1]
        if self.lon_roll:
            out = np.roll(out, self.lon_roll, axis=-1)
        return out


@dataclass
class GribSource:
    """One channel in one GRIB file: the byte range of each (time, member) message."""
    path: str
    channel: str
    times: np.ndarray  # datetime64[h], increasing
    members: tuple[int, ...]
    offsets: np.ndarray  # (T, M) int64
    lengths: np.ndarray  # (T, M) int64
    layout: _Layout

    def read(self, tidx: np.ndarray) -> np.ndarray:
        """(len(tidx), members, rows, cols) float32, decoded by ecCodes."""
        ec = eccodes()
        out = np.empty((len(tidx), len(self.members), self.layout.nj, self.layout.ni), dtype=np.float32)
        with open(self.path, "rb") as f:
            for a, t in enumerate(tidx):
                for m in range(len(self.members)):
                    f.seek(int(self.offsets[t, m]))
                    h = ec.codes_new_from_message(f.read(int(self.lengths[t, m])))
                    try:
                        if ec.codes_get(h, "bitmapPresent") and ec.codes_get(h, "numberOfMissing") > 0:
                            raise ConversionError(f"{self.path}: {describe(self.channel)} member {self.members[m]} "
                                                  f"has missing values at {self.times[t]}")
                        values = ec.codes_get_values(h)
                    finally:
                        ec.codes_release(h)
                    out[a, m] = self.layout.orient(values)
        if not np.all(np.isfinite(out)):
            raise ConversionError(f"{self.path}: {describe(self.channel)} has NaN/Inf values")
        return out


@dataclass
class _Found:
    """Messages of one channel in one file, keyed by (time, member)."""
    where: dict = field(default_factory=dict)  # (datetime64[h], member) -> (offset, length)
    layout: _Layout | None = None


def _get(ec, h, key: str, default=None):
    return ec.codes_get(h, key) if ec.codes_is_defined(h, key) else default


def _valid_time(ec, h, path: str, n: int) -> np.datetime64:
    date, hhmm = int(ec.codes_get(h, "validityDate")), int(ec.codes_get(h, "validityTime"))
    if hhmm % 100:
        raise ConversionError(f"{path}: message {n} is valid at {date} {hhmm:04d}, not on a whole hour")
    return np.datetime64(f"{date // 10000:04d}-{date // 100 % 100:02d}-{date % 100:02d}T{hhmm // 100:02d}", "h")


def _layout(ec, h, path: str, inv: Inventory, grids: dict) -> _Layout:
    """The message's grid, checked against the inventory's (once per distinct grid description)."""
    keys = ("gridType", "Ni", "Nj", "latitudeOfFirstGridPointInDegrees", "latitudeOfLastGridPointInDegrees",
            "longitudeOfFirstGridPointInDegrees", "longitudeOfLastGridPointInDegrees", "iScansNegatively",
            "jPointsAreConsecutive")
    sig = tuple(_get(ec, h, k) for k in keys)
    if sig in grids:
        return grids[sig]
    grid_type, ni, nj, lat1, lat2, lon1, lon2, i_neg, j_cons = sig
    if grid_type != "regular_ll":
        raise ConversionError(f"{path}: grid type {grid_type}; request a regular latitude-longitude grid "
                              "(CDS 'grid': [0.25, 0.25], MARS grid=0.25/0.25)")
    lat = np.linspace(float(lat1), float(lat2), int(nj))
    span = (float(lon1) - float(lon2)) if i_neg else (float(lon2) - float(lon1))
    lon = float(lon1) + (-1.0 if i_neg else 1.0) * np.arange(int(ni)) * (np.mod(span, 360.0) / max(int(ni) - 1, 1))
    if i_neg:
        lon = lon[::-1]
    lat, lon, flip, roll = orient_grid(path, lat, lon)
    inv.check_grid(path, lat, lon)
    grids[sig] = _Layout(int(ni), int(nj), bool(j_cons), bool(i_neg), flip, roll)
    return grids[sig]


def _pid_name(ec, h) -> str:
    return f"{_get(ec, h, 'shortName', '?')} (paramId {_get(ec, h, 'paramId', '?')}, {_get(ec, h, 'name', '?')})"


def add_grib_file(inv: Inventory, path: str, *, skip_unknown: bool = False) -> bool:
    """Scan one GRIB file and add its channels to ``inv``; False when it holds no field of a wanted channel.

    A parameter that no channel is made of is an error (it usually means a wrong request) unless
    ``skip_unknown``; known parameters at levels no channel uses are skipped.
    """
    ec = eccodes()
    found: dict[str, _Found] = {}
    grids: dict = {}
    n = 0
    with open(path, "rb") as f:
        while True:
            try:
                h = ec.codes_grib_new_from_file(f, headers_only=True)
            except ec.GribInternalError as exc:
                raise ConversionError(f"{path}: message {n + 1} is not valid GRIB ({exc})") from None
            if h is None:
                break
            n += 1
            try:
                _add_message(ec, h, path, n, inv, found, grids, skip_unknown)
            finally:
                ec.codes_release(h)
    if n == 0:
        raise ConversionError(f"{path}: no GRIB messages")
    inv.namers["GRIB"] = grib_name
    for channel, fnd in found.items():
        inv.add(channel, _source(path, channel, fnd), path)
    return bool(found)


def _add_message(ec, h, path: str, n: int, inv: Inventory, found: dict, grids: dict, skip_unknown: bool) -> None:
    pid = int(_get(ec, h, "paramId", 0))
    short = GRIB_PARAMS.get(pid)
    if short is None:
        if skip_unknown:
            return
        known = ", ".join(f"{p} {s}" for p, s in GRIB_PARAMS.items())
        raise ConversionError(f"{path}: message {n} holds {_pid_name(ec, h)}, which is no input of a channel "
                              f"(paramIds read: {known}); drop it from the request or pass --skip-unknown")
    level_type = str(_get(ec, h, "typeOfLevel", ""))
    if short in PRESSURE_VARS:
        if level_type not in PRESSURE_LEVEL_TYPES:
            return  # e.g. surface geopotential (the orography) in a single-level file
        level: int | None = int(round(float(ec.codes_get(h, "level")) * PRESSURE_LEVEL_TYPES[level_type]))
    elif level_type in PRESSURE_LEVEL_TYPES:
        return
    else:
        level = None
    inv.note(short, level)
    channels = inv.wants(short, level)
    if not channels:
        return
    key = (_valid_time(ec, h, path, n), int(_get(ec, h, "number", 0) or 0))
    where = (int(ec.codes_get(h, "offset")), int(ec.codes_get(h, "totalLength")))
    layout = _layout(ec, h, path, inv, grids)
    for channel in channels:
        fnd = found.setdefault(channel, _Found())
        if key in fnd.where:
            raise ConversionError(f"{path}: {describe(channel)} at {key[0]} member {key[1]} appears twice (messages "
                                  f"at bytes {fnd.where[key][0]} and {where[0]}); remove the duplicate")
        fnd.where[key] = where
        fnd.layout = layout


def _source(path: str, channel: str, fnd: _Found) -> GribSource:
    times = np.array(sorted({t for t, _ in fnd.where}), dtype="datetime64[h]")
    members = tuple(sorted({m for _, m in fnd.where}))
    offsets = np.full((len(times), len(members)), -1, dtype=np.int64)
    lengths = np.zeros_like(offsets)
    for (t, m), (off, length) in fnd.where.items():
        i, j = int(np.searchsorted(times, t)), members.index(m)
        offsets[i, j], lengths[i, j] = off, length
    if (offsets < 0).any():
        i, j = np.argwhere(offsets < 0)[0]
        lacking = int((offsets < 0).sum())
        raise ConversionError(f"{path}: {describe(channel)} at {times[i]} lacks ensemble member {members[j]} "
                              f"({lacking} (time, member) field(s) missing; the file holds members "
                              f"{members[0]}..{members[-1]})")
    return GribSource(path, channel, times, members, offsets, lengths, fnd.layout)

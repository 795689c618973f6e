"""Synthetic ERA5 input files as the Copernicus Climate Data Store (CDS) delivers them, for the converter.

The 20 FourCastNet channels' ERA5 fields (see :data:`~hpc_fcn.data.inventory.CHANNEL_SOURCES`), 6-hourly,
on a regular grid from 90 to -90 N and from 0 E (721 x 1440 = ERA5's 0.25 degrees), one file per day
and request, in the layout of ``--formats``:

* ``mixed`` (default): single-level fields in GRIB 1 (what the CDS and MARS deliver for ERA5: 16-bit simple
  packing, ECMWF paramIds), ``sfc/era5_sfc_YYYYMMDD.grib``; pressure-level fields in netCDF of the new CDS
  convention (``valid_time`` in seconds since 1970, ``pressure_level`` in hPa, float32, units as the CDS
  writes them, e.g. ``m**2 s**-2``), one request per variable with the levels its channels need,
  ``pl/era5_pl_VAR_YYYYMMDD.nc``;
* ``netcdf``: both kinds in netCDF (single-level fields in one file per day, ``sfc/era5_sfc_YYYYMMDD.nc``);
* ``grib``: both kinds in GRIB 1 (pressure-level fields in one file per day, ``pl/era5_pl_YYYYMMDD.grib``).

Fields are smooth, with a latitude structure and magnitudes of the real atmosphere (z500 ~ 5.5e4 m2 s-2,
t2m 240-305 K, msl ~ 1.013e5 Pa, ...) plus a few low zonal waves travelling at their own speeds; the same
``--seed`` gives the same values. :meth:`CDSSynth.field` is the truth the converter's output must equal (up to
float32 rounding in netCDF and the packing step in GRIB). Memory stays at a few fields whatever the period.

    python -m hpc_fcn.data.cds_synth --output /tmp/cds --start 2018-01-01 --days 14 [--grid 721x1440]
        [--seed 0] [--formats mixed|netcdf|grib]
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..runtime import UserError
from .inventory import CHANNEL_SOURCES

log = logging.getLogger("hpc_fcn.data.cds_synth")

DT_HOURS = 6
FORMATS = ("mixed", "netcdf", "grib")
GRIB_EDITION = 1  # ERA5's analyses come from MARS (and the CDS) in GRIB 1
GRIB_BITS = 16  # bits per packed value, as MARS writes ERA5
EPOCH = np.datetime64("1970-01-01T00", "s")

# ERA5 short name -> (units as the CDS writes them in netCDF, ECMWF paramId, long name, CF standard name)
CDS_FIELDS: dict[str, tuple[str, int, str, str]] = {
    "u10": ("m s**-1", 165, "10 metre U wind component", "unknown"),
    "v10": ("m s**-1", 166, "10 metre V wind component", "unknown"),
    "t2m": ("K", 167, "2 metre temperature", "unknown"),
    "sp": ("Pa", 134, "Surface pressure", "surface_air_pressure"),
    "msl": ("Pa", 151, "Mean sea level pressure", "air_pressure_at_mean_sea_level"),
    "tcwv": ("kg m**-2", 137, "Total column vertically-integrated water vapour",
             "lwe_thickness_of_atmosphere_mass_content_of_water_vapor"),
    "u": ("m s**-1", 131, "U component of wind", "eastward_wind"),
    "v": ("m s**-1", 132, "V component of wind", "northward_wind"),
    "t": ("K", 130, "Temperature", "air_temperature"),
    "z": ("m**2 s**-2", 129, "Geopotential", "geopotential"),
    "r": ("%", 157, "Relative humidity", "relative_humidity"),
}
SINGLE = tuple(s for s in CDS_FIELDS if (s, None) in CHANNEL_SOURCES.values())
PRESSURE = tuple(s for s in CDS_FIELDS if s not in SINGLE)
# the levels each pressure-level variable is requested on: those its channels use, top of the list = surface
LEVELS: dict[str, tuple[int, ...]] = {
    s: tuple(sorted({lv for short, lv in CHANNEL_SOURCES.values() if short == s}, reverse=True)) for s in PRESSURE}

# channel -> (mean at the equator, mean at the poles, zonal-wave amplitude, kind); the mean follows cos^2(lat)
# between them; "jet": plus a westerly jet at +-45 deg of JET m s-1; "rh", "water": bounded transforms
PROFILES: dict[str, tuple[float, float, float, str]] = {
    "u10": (-4.0, 0.0, 5.0, "jet"), "v10": (0.0, 0.0, 4.0, "merid"), "t2m": (300.0, 245.0, 6.0, "plain"),
    "sp": (98500.0, 98000.0, 3000.0, "plain"), "msl": (101200.0, 101300.0, 1500.0, "plain"),
    "tcwv": (50.0, 3.0, 0.5, "water"),
    "u1000": (-4.0, 0.0, 5.0, "jet"), "u850": (-3.0, 0.0, 8.0, "jet"), "u500": (-2.0, 0.0, 12.0, "jet"),
    "v1000": (0.0, 0.0, 4.0, "merid"), "v850": (0.0, 0.0, 6.0, "merid"), "v500": (0.0, 0.0, 10.0, "merid"),
    "t850": (293.0, 250.0, 5.0, "plain"), "t500": (267.0, 235.0, 4.0, "plain"),
    "z1000": (1000.0, 900.0, 1200.0, "plain"), "z850": (14800.0, 13200.0, 1000.0, "plain"),
    "z500": (57800.0, 50500.0, 1500.0, "plain"), "z50": (203500.0, 193000.0, 2500.0, "plain"),
    "r500": (45.0, 60.0, 2.0, "rh"), "r850": (70.0, 80.0, 2.0, "rh"),
}
JET = {"u10": 6.0, "u1000": 6.0, "u850": 12.0, "u500": 22.0}
N_WAVES = 4


def parse_grid(text: str) -> tuple[int, int]:
    """'721x1440' -> (721, 1440); rows from 90 to -90, columns from 0 E (at least 3 x 4)."""
    try:
        rows, cols = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--grid {text!r}: use ROWSxCOLS, e.g. 721x1440 (0.25 deg) or 19x36 (10 deg)") from None
    if rows < 3 or cols < 4:
        raise UserError(f"--grid {text!r}: needs at least 3 rows (90 to -90) and 4 columns")
    return rows, cols


def grid_coords(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Latitudes 90 .. -90 and longitudes 0 .. 360 - 360/cols, in degrees (float64)."""
    return np.linspace(90.0, -90.0, rows), np.arange(cols) * (360.0 / cols)


@dataclass
class _Waves:
    """Zonal waves of one channel: wavenumbers, latitude profiles (rows, K), speeds (rad/h) and phases."""
    m: np.ndarray
    lat_amp: np.ndarray
    omega: np.ndarray
    phase: np.ndarray


class CDSSynth:
    """Deterministic synthetic ERA5 fields (float64, in CDS units) for a seed and grid."""

    def __init__(self, rows: int, cols: int, seed: int = 0):
        self.rows, self.cols, self.seed = rows, cols, seed
        self.lat, self.lon = grid_coords(rows, cols)
        phi, lam = np.deg2rad(self.lat), np.deg2rad(self.lon)
        self._cos2 = np.cos(phi) ** 2
        self._jet = np.sin(2.0 * phi) ** 2  # peaks at +-45 deg
        self._cosm = np.cos(np.outer(np.arange(1, 7), lam))  # (6, cols): wavenumbers 1..6
        self._sinm = np.sin(np.outer(np.arange(1, 7), lam))
        self._waves = {c: self._make_waves(k, phi) for k, c in enumerate(PROFILES)}

    def _make_waves(self, k: int, phi: np.ndarray) -> _Waves:
        rng = np.random.default_rng([self.seed, k])
        m = rng.integers(1, 7, N_WAVES)
        centre = rng.uniform(-60.0, 60.0, N_WAVES)
        width = rng.uniform(15.0, 35.0, N_WAVES)
        weight = rng.dirichlet(np.ones(N_WAVES))  # sum 1: |waves| <= 1
        # cos^m(lat) keeps each wave single-valued at the poles; the Gaussian places it in latitude
        lat_amp = (np.abs(np.cos(phi))[:, None] ** m[None] * np.exp(-0.5 * ((np.rad2deg(phi)[:, None] - centre)
                                                                           / width) ** 2) * weight)
        omega = rng.uniform(-2.0, 2.0, N_WAVES) * 2.0 * np.pi / (24.0 * m)  # up to 2 wavelengths a day
        return _Waves(m, lat_amp, omega, rng.uniform(0.0, 2.0 * np.pi, N_WAVES))

    def waves(self, channel: str, hours: float) -> np.ndarray:
        """(rows, cols) sum of the channel's travelling waves at ``hours`` since 1970, within [-1, 1]."""
        w = self._waves[channel]
        theta = w.phase + w.omega * hours
        # cos(m lon + theta) = cos(m lon) cos(theta) - sin(m lon) sin(theta): one (rows, 2K) @ (2K, cols) product
        amp = np.concatenate([w.lat_amp * np.cos(theta), -w.lat_amp * np.sin(theta)], axis=1)
        return amp @ np.concatenate([self._cosm[w.m - 1], self._sinm[w.m - 1]])

    def field(self, channel: str, when: np.datetime64) -> np.ndarray:
        """(rows, cols) float64 value of ``channel`` at ``when``, in the units the CDS gives it."""
        equator, pole, amp, kind = PROFILES[channel]
        hours = float((np.datetime64(when, "s") - EPOCH) / np.timedelta64(1, "h"))
        w = self.waves(channel, hours)  # updated in place below: one full-size array per field
        mean = (pole + (equator - pole) * self._cos2)[:, None]
        w *= amp
        if kind == "jet":
            w += mean + JET[channel] * self._jet[:, None]
        elif kind == "rh":  # within 0.9 x the distance of the mean to 0 or 100 %
            np.tanh(w, out=w)
            w *= 0.9 * np.minimum(mean, 100.0 - mean)
            w += mean
        elif kind == "water":  # positive, up to 1.5 x the mean
            w += 1.0
            w *= mean
        elif kind != "merid":
            w += mean
        return w


def day_times(day: np.datetime64) -> np.ndarray:
    """The 6-hourly times (datetime64[h]) of one day."""
    return np.datetime64(day, "h") + np.arange(0, 24, DT_HOURS) * np.timedelta64(1, "h")


def channel_of(short: str, level: int | None) -> str:
    return next(c for c, src in CHANNEL_SOURCES.items() if src == (short, level))


# ---------------------------------------------------------------------------------------------------
# netCDF (new CDS convention)
# ---------------------------------------------------------------------------------------------------
def write_netcdf(path: Path, synth: CDSSynth, shorts: Sequence[str], times: np.ndarray, levels: Sequence[int] | None):
    """One CDS netCDF file: ``shorts`` at ``times`` (single level, or on ``levels`` hPa), one field at a time."""
    import netCDF4
    tmp = path.with_name(path.name + ".tmp")
    with netCDF4.Dataset(tmp, "w", format="NETCDF4") as nc:
        nc.GRIB_centre, nc.Conventions = "ecmf", "CF-1.7"
        nc.institution = "European Centre for Medium-Range Weather Forecasts"
        nc.history = "synthetic ERA5 (hpc_fcn.data.cds_synth), in the layout of the Copernicus Climate Data Store"
        nc.createDimension("valid_time", len(times))
        t = nc.createVariable("valid_time", "i8", ("valid_time",))
        t.units, t.calendar, t.standard_name = "seconds since 1970-01-01", "proleptic_gregorian", "time"
        t[:] = (times.astype("datetime64[s]") - EPOCH).astype(np.int64)
        dims: tuple[str, ...] = ("valid_time",)
        if levels is not None:
            nc.createDimension("pressure_level", len(levels))
            lv = nc.createVariable("pressure_level", "f8", ("pressure_level",))
            lv.units, lv.standard_name, lv.positive = "hPa", "air_pressure", "down"
            lv[:] = np.asarray(levels, dtype=np.float64)
            dims += ("pressure_level",)
        for name, values, attrs in (("latitude", synth.lat, ("degrees_north", "latitude")),
                                    ("longitude", synth.lon, ("degrees_east", "longitude"))):
            nc.createDimension(name, len(values))
            v = nc.createVariable(name, "f8", (name,))
            v.units, v.standard_name = attrs
            v[:] = values
        nc.createVariable("number", "i8", ()).assignValue(0)
        expver = nc.createVariable("expver", str, ("valid_time",))
        for i in range(len(times)):
            expver[i] = "0001"
        for short in shorts:
            units, pid, long_name, std = CDS_FIELDS[short]
            var = nc.createVariable(short, "f4", dims + ("latitude", "longitude"), fill_value=np.float32(np.nan))
            var.units, var.long_name, var.standard_name, var.GRIB_paramId = units, long_name, std, pid
            for i, when in enumerate(times):
                if levels is None:
                    var[i] = synth.field(channel_of(short, None), when).astype(np.float32)
                else:
                    for j, level in enumerate(levels):
                        var[i, j] = synth.field(channel_of(short, level), when).astype(np.float32)
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------------
# GRIB 1 (as MARS and the CDS deliver ERA5)
# ---------------------------------------------------------------------------------------------------
def _grib_template(ec, synth: CDSSynth, short: str, level: int | None):
    """A GRIB handle with the grid, parameter, level and packing of one field; cloned for each time."""
    h = ec.codes_grib_new_from_samples(f"regular_ll_{'sfc' if level is None else 'pl'}_grib{GRIB_EDITION}")
    rows, cols = synth.rows, synth.cols
    for key, value in (("Ni", cols), ("Nj", rows), ("iScansNegatively", 0), ("jScansPositively", 0),
                       ("jPointsAreConsecutive", 0)):
        ec.codes_set_long(h, key, value)
    for key, value in (("latitudeOfFirstGridPointInDegrees", 90.0), ("latitudeOfLastGridPointInDegrees", -90.0),
                       ("longitudeOfFirstGridPointInDegrees", 0.0),
                       ("longitudeOfLastGridPointInDegrees", float(synth.lon[-1])),
                       ("iDirectionIncrementInDegrees", 360.0 / cols),
                       ("jDirectionIncrementInDegrees", 180.0 / (rows - 1))):
        ec.codes_set_double(h, key, value)
    ec.codes_set(h, "paramId", CDS_FIELDS[short][1])
    if level is None:
        ec.codes_set(h, "typeOfLevel", "surface")
        ec.codes_set_long(h, "level", 0)
    else:
        ec.codes_set(h, "typeOfLevel", "isobaricInhPa")
        ec.codes_set_long(h, "level", level)
    ec.codes_set_long(h, "bitsPerValue", GRIB_BITS)
    return h


def write_grib(path: Path, synth: CDSSynth, fields: Sequence[tuple[str, int | None]], times: np.ndarray) -> None:
    """One GRIB file: a message per (time, field), time by time as MARS orders them, one message in memory."""
    import eccodes as ec
    templates = [_grib_template(ec, synth, short, level) for short, level in fields]
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as out:
            for when in times:
                stamp = str(np.datetime64(when, "h"))  # YYYY-MM-DDTHH
                date, hhmm = int(stamp[:10].replace("-", "")), int(stamp[11:13]) * 100
                for (short, level), tpl in zip(fields, templates):
                    h = ec.codes_clone(tpl)
                    try:
                        ec.codes_set_long(h, "dataDate", date)
                        ec.codes_set_long(h, "dataTime", hhmm)
                        ec.codes_set_values(h, synth.field(channel_of(short, level), when).ravel())
                        out.write(ec.codes_get_message(h))
                    finally:
                        ec.codes_release(h)
    finally:
        for tpl in templates:
            ec.codes_release(tpl)
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------------
def day_files(out: Path, day: np.datetime64, formats: str) -> list[Path]:
    """The files ``formats`` writes for ``day`` (in the order :func:`write_day` writes them)."""
    ymd = str(day).replace("-", "")
    sfc = out / "sfc" / f"era5_sfc_{ymd}.{'nc' if formats == 'netcdf' else 'grib'}"
    if formats == "grib":
        return [sfc, out / "pl" / f"era5_pl_{ymd}.grib"]
    return [sfc] + [out / "pl" / f"era5_pl_{s}_{ymd}.nc" for s in PRESSURE]


def write_day(out: Path, synth: CDSSynth, day: np.datetime64, formats: str) -> list[Path]:
    """Write one day's files in the layout of ``formats``; returns them."""
    times = day_times(day)
    files = day_files(out, day, formats)
    for f in files:
        f.parent.mkdir(parents=True, exist_ok=True)
    if formats == "netcdf":
        write_netcdf(files[0], synth, SINGLE, times, None)
    else:
        write_grib(files[0], synth, [(s, None) for s in SINGLE], times)
    if formats == "grib":
        write_grib(files[1], synth, [(s, lv) for s in PRESSURE for lv in LEVELS[s]], times)
    else:
        for short, path in zip(PRESSURE, files[1:]):
            write_netcdf(path, synth, (short,), times, LEVELS[short])
    return files


def estimate_bytes(rows: int, cols: int, days: int, formats: str) -> int:
    """Disk the files take: 4 bytes a value in netCDF, GRIB_BITS / 8 in GRIB (headers neglected)."""
    per_step = {"single": len(SINGLE), "pressure": sum(len(v) for v in LEVELS.values())}
    grib = GRIB_BITS // 8
    bytes_sl = 4 if formats == "netcdf" else grib
    bytes_pl = grib if formats == "grib" else 4
    return days * (24 // DT_HOURS) * rows * cols * (per_step["single"] * bytes_sl + per_step["pressure"] * bytes_pl)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hpc_fcn.data.cds_synth",
                                description="Write synthetic ERA5 input files in the layout of the Copernicus "
                                            "Climate Data Store (GRIB and netCDF), for hpc_fcn.data.convert.")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for sfc/ and pl/ (created)")
    p.add_argument("--start", default="2018-01-01", help="first day, YYYY-MM-DD (default 2018-01-01)")
    p.add_argument("--days", type=int, default=14, help="number of days, 6-hourly (default 14)")
    p.add_argument("--grid", default="721x1440",
                   help="ROWSxCOLS, latitudes 90..-90, longitudes from 0 (default 721x1440)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fields (default 0)")
    p.add_argument("--formats", default="mixed", choices=FORMATS,
                   help="mixed: single level in GRIB, pressure levels in netCDF (default); netcdf; grib")
    return p


def run(args: argparse.Namespace) -> list[Path]:
    """Write the files ``args`` ask for, day by day; returns them."""
    rows, cols = parse_grid(args.grid)
    try:
        start = np.datetime64(args.start, "D")
    except ValueError:
        raise UserError(f"--start {args.start!r}: give a date as YYYY-MM-DD") from None
    if args.days < 1:
        raise UserError(f"--days {args.days}: give at least 1")
    if args.seed < 0:
        raise UserError(f"--seed {args.seed}: give a number >= 0")
    out = Path(args.output).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"--output {out}: exists and is not a folder; name a folder")
    out.mkdir(parents=True, exist_ok=True)
    need, free = estimate_bytes(rows, cols, args.days, args.formats), shutil.disk_usage(out).free
    if need > free:
        raise UserError(f"--output {out}: the files need {need / 1e9:.1f} GB but only {free / 1e9:.1f} GB are free; "
                        "free space or write fewer --days")
    synth = CDSSynth(rows, cols, args.seed)
    log.info("writing %d day(s) from %s, %d x %d, formats %s, seed %d: %.2f GB into %s", args.days, start, rows, cols,
             args.formats, args.seed, need / 1e9, out)
    from tqdm import tqdm
    files: list[Path] = []
    t0 = time.perf_counter()
    for d in tqdm(range(args.days), unit="day", desc="cds_synth", disable=not sys.stderr.isatty()):
        files += write_day(out, synth, start + np.timedelta64(d, "D"), args.formats)
    log.info("%d files in %.1f s", len(files), time.perf_counter() - t0)
    return files


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""hpc_fcn.data.convert (tools/era5_to_fcn.py): CDS-style netCDF (new and old conventions) -> FourCastNet
layout, checked value by value.

``write_cds(tmp)`` writes a small ERA5-like set: year 2000 in the new CDS conventions (``valid_time`` in
seconds, ``pressure_level``, float32, pressure variables split over two files), year 2001 in the old ones
(``time`` in hours since 1900, ``level``, packed int16 with scale_factor/add_offset, one file per day, the
second day with an ``expver`` axis), hourly, on a 17 x 32 grid from 90 to -90.
"""
from __future__ import annotations

import json
from pathlib import Path

import netCDF4
import numpy as np
import pytest

from hpc_fcn.data.era5 import ERA5_CHANNELS, FCNDataset
from hpc_fcn.data import convert as converter
from tool_module import load_tool

ROWS, COLS = 17, 32
LAT = np.linspace(90.0, -90.0, ROWS)
LON = np.arange(COLS) * 360.0 / COLS
SINGLE = ("u10", "v10", "t2m", "sp", "msl", "tcwv")
PRESSURE = ("u", "v", "t", "z", "r")
LEVELS = (1000, 850, 500, 50)
EPOCH = np.datetime64("1970-01-01T00", "h")
OLD_EPOCH = np.datetime64("1900-01-01T00", "h")
SCALE = {"sp": 2.0, "msl": 2.0, "z": 4.0}  # packing step per variable (others 0.01)
OFFSET = {"sp": 90000.0, "msl": 100000.0, "z": 40000.0}


def truth(var: str, level: int | None, hours: np.ndarray) -> np.ndarray:
    """(T, ROWS, COLS) float64: distinct per variable, level, hour, row and column."""
    k = (SINGLE + PRESSURE).index(var) + 1
    lv = 0 if level is None else LEVELS.index(level) + 1
    base = OFFSET.get(var, 0.0) + 10.0 * k + 3.0 * lv
    h = (hours - EPOCH).astype(np.float64)[:, None, None]
    phi, lam = np.deg2rad(LAT)[None, :, None], np.deg2rad(LON)[None, None, :]
    return base + 0.01 * (h % 1000) + (k + lv) * np.cos(phi) * np.sin(lam + 0.1 * h) + 0.05 * np.arange(ROWS)[:, None]


def pack(values: np.ndarray, var: str) -> tuple[np.ndarray, float, float]:
    scale, offset = SCALE.get(var, 0.01), OFFSET.get(var, 0.0)
    return np.round((values - offset) / scale).astype(np.int16), scale, offset


def unpacked(var: str, level: int | None, hours: np.ndarray) -> np.ndarray:
    q, scale, offset = pack(truth(var, level, hours), var)
    return q.astype(np.float64) * scale + offset


def _grid(nc, lat_name="latitude", lon_name="longitude"):
    nc.createDimension(lat_name, ROWS)
    nc.createDimension(lon_name, COLS)
    nc.createVariable(lat_name, "f8", (lat_name,))[:] = LAT
    nc.createVariable(lon_name, "f8", (lon_name,))[:] = LON


def write_new(path: Path, variables, hours: np.ndarray, levels=None) -> None:
    """New CDS: valid_time (int64 seconds since 1970), pressure_level (hPa), float32."""
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("valid_time", len(hours))
        t = nc.createVariable("valid_time", "i8", ("valid_time",))
        t.units, t.calendar = "seconds since 1970-01-01", "proleptic_gregorian"
        t[:] = (hours - EPOCH).astype("timedelta64[s]").astype(np.int64)
        dims = ("valid_time",)
        if levels is not None:
            nc.createDimension("pressure_level", len(levels))
            lv = nc.createVariable("pressure_level", "f8", ("pressure_level",))
            lv.units = "hPa"
            lv[:] = levels
            dims += ("pressure_level",)
        _grid(nc)
        for var in variables:
            v = nc.createVariable(var, "f4", dims + ("latitude", "longitude"))
            if levels is None:
                v[:] = truth(var, None, hours)
            else:
                v[:] = np.stack([truth(var, lev, hours) for lev in levels], axis=1)


def write_old(path: Path, variables, hours: np.ndarray, levels=None, expver_split: int | None = None,
              time: tuple[str, str] | None = None) -> None:
    """Old CDS: time (int32 hours since 1900), level (int32 hPa), packed int16; optional expver axis.

    ``time``: (units, calendar) of float64 times instead, written by cftime (the same instants).
    """
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("time", len(hours))
        if time is None:
            t = nc.createVariable("time", "i4", ("time",))
            t.units, t.calendar = "hours since 1900-01-01 00:00:00.0", "gregorian"
            t[:] = (hours - OLD_EPOCH).astype(np.int64)
        else:
            import cftime
            t = nc.createVariable("time", "f8", ("time",))
            t.units, t.calendar = time
            dates = [cftime.datetime(*map(int, str(h).replace("T", "-").split("-")), calendar="proleptic_gregorian")
                     for h in hours]
            if time[1] in ("standard", "julian"):
                dates = [d.change_calendar(time[1]) for d in dates]
            else:
                dates = [cftime.datetime(d.year, d.month, d.day, d.hour, calendar=time[1]) for d in dates]
            t[:] = cftime.date2num(dates, *time)
        dims = ("time",)
        if expver_split is not None:
            nc.createDimension("expver", 2)
            nc.createVariable("expver", "i4", ("expver",))[:] = [1, 5]
            dims += ("expver",)
        if levels is not None:
            nc.createDimension("level", len(levels))
            lv = nc.createVariable("level", "i4", ("level",))
            lv.units = "millibars"
            lv[:] = levels
            dims += ("level",)
        _grid(nc)
        for var in variables:
            if levels is None:
                values = truth(var, None, hours)
            else:
                values = np.stack([truth(var, lev, hours) for lev in levels], axis=1)
            q, scale, offset = pack(values, var)
            v = nc.createVariable(var, "i2", dims + ("latitude", "longitude"), fill_value=np.int16(-32767))
            v.scale_factor, v.add_offset = scale, offset
            v.set_auto_maskandscale(False)
            if expver_split is None:
                v[:] = q
            else:  # ERA5 (expver 1) up to expver_split, ERA5T (expver 5) after; the other one is missing
                both = np.stack([q, q], axis=1)
                both[:expver_split, 1] = -32767
                both[expver_split:, 0] = -32767
                v[:] = both


def hourly(start: str, hours: int) -> np.ndarray:
    return np.datetime64(start, "h") + np.arange(hours) * np.timedelta64(1, "h")


def write_cds(root: Path, *, days_2000: int = 2, levels_new=LEVELS, include_2001: bool = True,
              old_time: tuple[str, str] | None = None) -> Path:
    src = root / "cds"
    src.mkdir(parents=True, exist_ok=True)
    h0 = hourly("2000-01-01T00", 24 * days_2000)
    write_new(src / "era5_single_2000.nc", SINGLE, h0)
    write_new(src / "era5_pl_uv_2000.nc", ("u", "v"), h0, levels=list(levels_new))
    write_new(src / "era5_pl_tzr_2000.nc", ("t", "z", "r"), h0, levels=list(levels_new)[::-1])
    if include_2001:
        for day, split in ((1, None), (2, 5)):
            h = hourly(f"2001-01-0{day}T00", 24)
            write_old(src / f"sl_2001010{day}.nc", SINGLE, h, expver_split=split, time=old_time)
            write_old(src / f"pl_2001010{day}.nc", PRESSURE, h, levels=[50, 500, 850, 1000], expver_split=split,
                      time=old_time)
    return src


def expected_year(year: int, steps: int) -> np.ndarray:
    """(steps, 21, ROWS, COLS) the converter must write, from the closed form (packed for 2001)."""
    tool = converter
    hours = np.datetime64(f"{year}-01-01T00", "h") + np.arange(steps) * np.timedelta64(6, "h")
    out = np.zeros((steps, len(ERA5_CHANNELS), ROWS, COLS))
    for c, name in enumerate(ERA5_CHANNELS):
        if name in tool.CHANNEL_SOURCES:
            var, level = tool.CHANNEL_SOURCES[name]
            out[:, c] = (unpacked if year == 2001 else truth)(var, level, hours)
    return out.astype(np.float32)


def convert(*argv: str) -> int:
    return converter.main([str(a) for a in argv])


@pytest.fixture
def cds(tmp_path):
    return write_cds(tmp_path)


def test_round_trip_into_the_reader(cds, tmp_path):
    out = tmp_path / "era5"
    assert convert("--input", cds, "--output", out, "--years", "2000-2001", "--split", "train", "--grid", "17x32",
                   "--allow-partial", "--stats-from", "train") == 0
    with FCNDataset(out, "train") as ds:
        assert ds.channels == list(ERA5_CHANNELS) and ds.years == [2000, 2001]
        assert len(ds) == 8 + 8 and (ds.rows, ds.cols) == (ROWS, COLS)
        assert ds.times[1] - ds.times[0] == np.timedelta64(6, "h") and str(ds.times[8]) == "2001-01-01T00"
        # copied from the input's float64 coordinates: equal; default rtol 1e-7
        np.testing.assert_allclose(ds.lat, LAT[:-1]) and np.testing.assert_allclose(ds.lon, LON)
        assert ds.units["z500"] == "m2 s-2"
    fields = {}
    for year in (2000, 2001):
        import h5py
        with h5py.File(out / "train" / f"{year}.h5", "r") as f:
            fields[year] = f["fields"][...]
        assert fields[year].dtype == np.float32 and fields[year].shape == (8, 21, ROWS, COLS)
        # float32 of the same float64 values (unpacked in float64): equal; rtol 1e-6 (~16 ulp) would allow float32
        # unpacking; no atol (was 1e-3): every value is >= 9 in size but the unused channel, which is exactly 0
        np.testing.assert_allclose(fields[year], expected_year(year, 8), rtol=1e-6)
        assert not fields[year][:, 20].any()  # the unused channel is zero
        assert (out / "train" / f"{year}.h5.done").is_file()
    # channel order: t850 is 't' at 850 hPa, z50 is 'z' at 50 hPa (their values differ by variable and level)
    np.testing.assert_allclose(fields[2000][:, ERA5_CHANNELS.index("t850")],  # float32 of float64 values, as above
                               truth("t", 850, hourly("2000-01-01T00", 48)[::6]).astype(np.float32), rtol=1e-6)
    # statistics: a direct NumPy computation over every train step, float64
    allf = np.concatenate([fields[2000], fields[2001]]).astype(np.float64)
    means, stds = np.load(out / "stats" / "global_means.npy"), np.load(out / "stats" / "global_stds.npy")
    assert means.shape == stds.shape == (1, 21, 1, 1) and means.dtype == np.float32
    # float64 sums in another order (Chan merge vs NumPy, ~1e-15) stored as float32: 2^-24 ~ 6e-8 relative
    np.testing.assert_allclose(means[0, :20, 0, 0], allf[:, :20].mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(stds[0, :20, 0, 0], allf[:, :20].std(axis=(0, 2, 3)), rtol=1e-6)  # as means (was 1e-5)
    assert means[0, 20, 0, 0] == 0.0 and stds[0, 20, 0, 0] == 1.0
    tm = np.load(out / "stats" / "time_means.npy")
    assert tm.shape == (1, 21, ROWS, COLS)
    np.testing.assert_allclose(tm[0], allf.mean(axis=0), rtol=1e-6)  # float64 sums, float32 storage: as means
    assert json.loads((out / "stats" / "stats.json").read_text())["years"] == [2000, 2001]


def test_resume_skips_done_years_and_rewrites_partial_ones(cds, tmp_path):
    out = tmp_path / "era5"
    args = ["--input", cds, "--output", out, "--years", "2000-2001", "--grid", "any", "--allow-partial"]
    assert convert(*args) == 0
    done_2000 = (out / "train" / "2000.h5").stat().st_mtime_ns
    # 2001 interrupted: marker gone, file torn, a stale partial beside it
    (out / "train" / "2001.h5.done").unlink()
    (out / "train" / "2001.h5").write_bytes(b"torn")
    (out / "train" / "2001.h5.partial").write_bytes(b"stale")
    assert convert(*args) == 0
    assert (out / "train" / "2000.h5").stat().st_mtime_ns == done_2000
    assert not (out / "train" / "2001.h5.partial").exists()
    with _reader(out) as ds:
        # float32 of the same float64 values, as in the round trip
        np.testing.assert_allclose(ds.read(8, normalise=False)[ERA5_CHANNELS.index("z500")],
                                   expected_year(2001, 1)[0, ERA5_CHANNELS.index("z500"), :-1], rtol=1e-6)


def _reader(out: Path) -> FCNDataset:
    """The train split, once statistics exist (computed here from the converted files)."""
    assert convert("--output", out, "--stats-from", "train") == 0
    return FCNDataset(out, "train")


def test_max_steps_and_hourly_subsampling(cds, tmp_path):
    out = tmp_path / "era5"
    assert convert("--input", cds, "--output", out, "--years", "2000", "--grid", "any", "--max-steps", "3",
                   "--split", "test") == 0
    import h5py
    with h5py.File(out / "test" / "2000.h5", "r") as f:
        got = f["fields"][...]
    assert got.shape[0] == 3
    # float32 storage of the float64 truth: 2^-24 ~ 6e-8 relative
    np.testing.assert_allclose(got[2, 0], truth("u10", None, np.array([np.datetime64("2000-01-01T12", "h")]))[0],
                               rtol=1e-6)


@pytest.mark.parametrize("case, message", [
    ("grid", "pass --grid any"),
    ("level", "z50 (variable z at 50 hPa: levels found 500, 850, 1000)"),
    ("times", "year 2000: no input has channel u10 at 2000-01-03T00"),
    ("years", "--years 'abc'"),
    ("nothing", "no netCDF or GRIB files match"),
    ("garbage_grib", "broken.grib: not a GRIB file"),
])
def test_clear_errors(tmp_path, capsys, case, message):
    src = write_cds(tmp_path, levels_new=(1000, 850, 500) if case == "level" else LEVELS, include_2001=False)
    args = ["--input", src, "--output", tmp_path / "out", "--years", "2000"]
    if case != "grid":
        args += ["--grid", "17x32"]
    if case == "years":
        args[5] = "abc"
    if case == "nothing":
        args[1] = tmp_path / "empty*.nc"
    if case == "garbage_grib":  # an unfinished download: named by the type its name promises, not as netCDF
        (Path(src) / "broken.grib").write_bytes(b"<html>quota exceeded</html>")
    assert convert(*args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # no folder left behind


def test_missing_variable_is_named(tmp_path, capsys):
    src = write_cds(tmp_path, include_2001=False)
    (src / "era5_pl_tzr_2000.nc").unlink()
    assert convert("--input", src, "--output", tmp_path / "out", "--years", "2000", "--grid", "any") == 2
    err = capsys.readouterr().err
    assert "t850 (variable t at 850 hPa: not in any input file)" in err and "z50" in err and "r850" in err


def test_stats_refuse_unfinished_years(cds, tmp_path, capsys):
    out = tmp_path / "era5"
    assert convert("--input", cds, "--output", out, "--years", "2000", "--grid", "any", "--allow-partial") == 0
    (out / "train" / "2000.h5.done").unlink()
    assert convert("--output", out, "--stats-from", "train") == 2
    assert "2000.h5 not finished" in capsys.readouterr().err


def test_tools_entry_point_is_the_library(cds, tmp_path):
    """tools/era5_to_fcn.py (the documented command) runs hpc_fcn.data.convert."""
    tool = load_tool("era5_to_fcn")
    assert tool.main is converter.main and tool.CHANNEL_SOURCES is converter.CHANNEL_SOURCES
    out = tmp_path / "era5"
    assert tool.main([str(a) for a in ("--input", cds, "--output", out, "--years", "2000", "--grid", "any",
                                      "--max-steps", "2")]) == 0
    assert (out / "train" / "2000.h5.done").is_file()


# --- units (cf-units) and times (cftime) of netCDF from other sources ---------------------------------------------
def _restate(path: Path, var: str, units: str, to_file, standard_name: str | None = None,
             level: int | None = None) -> np.ndarray:
    """Rewrite ``var`` of ``path`` in ``units`` (values ``to_file(v)``); returns the float32 values written (at
    pressure ``level``)."""
    with netCDF4.Dataset(path, "r+") as nc:
        v = nc.variables[var]
        v[:] = to_file(np.asarray(v[:], dtype=np.float64))
        v.units = units
        if standard_name:
            v.standard_name = standard_name
        if level is None:
            return np.asarray(v[:])
        return np.asarray(v[:, list(nc.variables["pressure_level"][:]).index(level)])


def _year_field(out: Path, channel: str, split: str = "train", year: int = 2000) -> np.ndarray:
    import h5py
    with h5py.File(out / split / f"{year}.h5", "r") as f:
        return f["fields"][:, ERA5_CHANNELS.index(channel)]


@pytest.mark.parametrize("var, channel, file, units, standard_name, to_file, back", [
    ("z", "z500", "era5_pl_tzr_2000.nc", "m", "geopotential_height", lambda x: x / 9.80665, lambda h: 9.80665 * h),
    ("z", "z500", "era5_pl_tzr_2000.nc", "dam", None, lambda x: x / 98.0665, lambda h: 98.0665 * h),
    ("sp", "sp", "era5_single_2000.nc", "hPa", None, lambda x: x / 100.0, lambda h: 100.0 * h),
    ("t2m", "t2m", "era5_single_2000.nc", "degC", None, lambda x: x - 273.15, lambda c: c + 273.15),
])
def test_units_are_converted_with_a_log_line(tmp_path, caplog, var, channel, file, units, standard_name, to_file,
                                             back):
    """Geopotential height (a length) becomes geopotential (g = 9.80665 m s-2); hPa -> Pa, degC -> K."""
    src = write_cds(tmp_path, include_2001=False)
    level = converter.CHANNEL_SOURCES[channel][1]
    stored = _restate(src / file, var, units, to_file, standard_name, level)
    out = tmp_path / "era5"
    with caplog.at_level("INFO", logger="hpc_fcn.data.convert"):
        assert convert("--input", src, "--output", out, "--years", "2000", "--grid", "any", "--max-steps", "4") == 0
    got = _year_field(out, channel)
    h = stored[::6][:4].astype(np.float64)
    # the conversion in float64 of the stored float32 values, then one float32 rounding: 2^-24 relative
    np.testing.assert_allclose(got, back(h), rtol=2.0 ** -23)
    # and the original field within two float32 roundings: the file's (2^-24 of the value in the file's units,
    # times the conversion's scale back(h) - back(0)) and the output's (2^-24 of the result); float64 terms 1e-16
    bound = 2.0 ** -24 * (np.abs(back(h) - back(0 * h)) + np.abs(got)) * (1 + 1e-9)
    assert np.all(np.abs(got - truth(var, level, hourly("2000-01-01T00", 24)[::6][:4])) <= bound)
    notes = [r.getMessage() for r in caplog.records if f"variable {var}" in r.getMessage()]
    assert len(notes) == 1 and f"in {units}: converted to" in notes[0] and file in notes[0], notes
    if var == "z":
        assert "geopotential height" in notes[0] and "9.80665" in notes[0]


@pytest.mark.parametrize("var, file, units, standard_name, message", [
    ("t2m", "era5_single_2000.nc", "m s-1", None, "variable t2m has units 'm s-1' but its channels need K"),
    ("z", "era5_pl_tzr_2000.nc", "gpm", None, "variable z has units 'gpm', which UDUNITS cannot read"),
    ("z", "era5_pl_tzr_2000.nc", "", "geopotential_height", "variable z is geopotential height (standard_name) "
                                                           "without units"),
])
def test_unconvertible_units_are_refused_leaving_no_folder(tmp_path, capsys, var, file, units, standard_name,
                                                           message):
    src = write_cds(tmp_path, include_2001=False)
    _restate(src / file, var, units, lambda x: x, standard_name)
    out = tmp_path / "new" / "era5"
    assert convert("--input", src, "--output", out, "--years", "2000", "--grid", "any") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {src / file}: {message}") and "ncatted" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "new").exists()  # the run created the folders, and removed them again


def test_failure_keeps_existing_folders_and_files(tmp_path, capsys):
    """A failed run removes only the empty folders it made; what was there before stays as it was."""
    src = write_cds(tmp_path, include_2001=False)
    out = tmp_path / "era5"
    (out / "test").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    # the input ends on Jan 2: year 2000 is incomplete, found while converting (after the scan made train/)
    assert convert("--input", src, "--output", out, "--years", "2000", "--grid", "any") == 2
    assert "no input has channel u10 at 2000-01-03T00" in capsys.readouterr().err
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["notes.txt", "test"]


@pytest.mark.parametrize("units, calendar", [
    ("hours since 1-1-1 00:00:0.0", "standard"),  # the epoch of NCEP's older files: a Julian date before 1582
    ("days since 1850-01-01", "proleptic_gregorian"),  # fractional days
    ("hours since 2000-12-19", "julian"),  # the same instants, counted in another real-world calendar
])
def test_times_in_any_cf_calendar_and_epoch(tmp_path, units, calendar):
    """CF times are decoded with cftime: the year equals the one written with the CDS's epoch (round trip)."""
    src = write_cds(tmp_path, days_2000=1, old_time=(units, calendar))
    with netCDF4.Dataset(src / "sl_20010101.nc") as nc:
        assert nc.variables["time"].units == units
    out = tmp_path / "era5"
    assert convert("--input", src, "--output", out, "--years", "2001", "--grid", "any", "--allow-partial") == 0
    import h5py
    with h5py.File(out / "train" / "2001.h5", "r") as f:
        np.testing.assert_allclose(f["fields"][...], expected_year(2001, 8), rtol=1e-6)  # as the round trip


def test_undecodable_times_are_one_line_naming_the_file(tmp_path, capsys):
    src = write_cds(tmp_path, days_2000=1, old_time=("days since 2001-01-01", "360_day"))
    with netCDF4.Dataset(src / "sl_20010102.nc", "r+") as nc:
        nc.variables["time"].units = "fortnights after the flood"
    assert convert("--input", src, "--output", tmp_path / "out", "--years", "2001", "--grid", "any") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {src / 'sl_20010102.nc'}: time variable time (units 'fortnights after the flood'")
    assert len(err.splitlines()) == 1 and not (tmp_path / "out").exists()

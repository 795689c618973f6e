"""hpc_fcn.data.cds_synth: synthetic CDS-style ERA5 input (GRIB 1 and new-CDS netCDF) that the converter reads back.

One day (4 six-hourly times) on a 10-degree grid (19 x 36) in each layout; the converter's output must equal
:meth:`CDSSynth.field` (the truth): exactly as float32 from netCDF, within half the packing step from GRIB.
"""
from __future__ import annotations

import eccodes as ec
import h5py
import netCDF4
import numpy as np
import pytest

from hpc_fcn.data import cds_synth, convert as converter
from hpc_fcn.data.cds_synth import FORMATS, CDSSynth, day_times
from hpc_fcn.data.era5 import ERA5_CHANNELS
from hpc_fcn.data.inventory import CHANNEL_SOURCES, UNUSED

ROWS, COLS = 19, 36
DAY = np.datetime64("2018-01-01", "D")
TIMES = day_times(DAY)

# Plausible ranges of ERA5 (beyond its recorded extremes), per channel, in the units of the converter's output
PLAUSIBLE = {
    "u10": (-40, 40), "v10": (-40, 40), "t2m": (190, 335), "sp": (45000, 110000), "msl": (90000, 110000),
    "t850": (200, 320), "t500": (200, 290), "u1000": (-50, 50), "v1000": (-50, 50), "u850": (-70, 80),
    "v850": (-70, 70), "u500": (-80, 100), "v500": (-80, 80), "z1000": (-6000, 6000), "z850": (9000, 17000),
    "z500": (45000, 60000), "z50": (185000, 215000), "r500": (0, 100), "r850": (0, 100), "tcwv": (0, 90),
}


def synthesize(out, *extra) -> int:
    return cds_synth.main(["--output", str(out), "--start", str(DAY), "--days", "1", "--grid", f"{ROWS}x{COLS}",
                           *map(str, extra)])


def grib_half_steps(folder) -> dict[tuple[str, np.datetime64], float]:
    """(channel, time) -> half the packing step of its GRIB message: 2^E 10^-D / 2 (simple packing)."""
    out = {}
    params = {pid: short for short, (_, pid, _, _) in cds_synth.CDS_FIELDS.items()}
    for path in sorted(folder.rglob("*.grib")):
        with open(path, "rb") as f:
            while (h := ec.codes_grib_new_from_file(f)) is not None:
                try:
                    short = params[ec.codes_get(h, "paramId")]
                    level = None if ec.codes_get(h, "typeOfLevel") == "surface" else ec.codes_get(h, "level")
                    channel = next(c for c, src in CHANNEL_SOURCES.items() if src == (short, level))
                    date, hhmm = str(ec.codes_get(h, "validityDate")), ec.codes_get(h, "validityTime")
                    when = np.datetime64(f"{date[:4]}-{date[4:6]}-{date[6:]}T{hhmm // 100:02d}", "h")
                    assert ec.codes_get(h, "bitsPerValue") == cds_synth.GRIB_BITS  # 16: steps ~ range / 65535
                    step = 2.0 ** ec.codes_get(h, "binaryScaleFactor") * 10.0 ** -ec.codes_get(h, "decimalScaleFactor")
                    out[(channel, when)] = step / 2
                finally:
                    ec.codes_release(h)
    return out


@pytest.fixture(scope="module", params=FORMATS)
def converted(request, tmp_path_factory):
    """(format, input folder, converted fields (T, C, ROWS, COLS))."""
    tmp = tmp_path_factory.mktemp(f"cds_{request.param}")
    assert synthesize(tmp / "cds", "--formats", request.param, "--seed", 3) == 0
    assert converter.main(["--input", str(tmp / "cds"), "--output", str(tmp / "era5"), "--years", "2018",
                           "--split", "out_of_sample", "--grid", f"{ROWS}x{COLS}", "--allow-partial"]) == 0
    with h5py.File(tmp / "era5" / "out_of_sample" / "2018.h5", "r") as f:
        return request.param, tmp / "cds", f["fields"][...]


def test_converted_fields_equal_the_synthesized_ones(converted):
    fmt, folder, fields = converted
    assert fields.shape == (len(TIMES), len(ERA5_CHANNELS), ROWS, COLS)
    truth = CDSSynth(ROWS, COLS, seed=3)
    half = grib_half_steps(folder)
    in_grib = {c for c, _ in half}
    assert in_grib == {"mixed": {c for c, (_, lv) in CHANNEL_SOURCES.items() if lv is None},
                       "grib": set(CHANNEL_SOURCES), "netcdf": set()}[fmt]
    for c, channel in enumerate(ERA5_CHANNELS):
        for t, when in enumerate(TIMES):
            got = fields[t, c]
            if channel == UNUSED:
                assert not got.any()
                continue
            want = truth.field(channel, when)
            # single-valued at the poles: the waves vanish there as cos(90 deg) ~ 6e-17 (float64 round-off)
            assert np.ptp(want[[0, -1]], axis=1).max() <= 1e-12 * np.abs(want).max(), f"{channel} at the poles"
            if channel in in_grib:
                # GRIB simple packing: within half its step 2^E 10^-D, plus the float32 rounding of the output
                # (2^-24 relative); the step is as large as 16 bits leave it (e.g. 0.125 Pa for sp)
                tol = half[(channel, when)] + np.abs(want) * 2.0 ** -24
                assert np.all(np.abs(got - want) <= tol), f"{channel} {when}"
            else:  # float32 in the netCDF file, no unit conversion: the converter copies it exactly
                np.testing.assert_array_equal(got, want.astype(np.float32), err_msg=f"{channel} {when}")


def test_magnitudes_are_plausible_and_fields_vary(converted):
    _, _, fields = converted
    for c, channel in enumerate(ERA5_CHANNELS[:20]):
        x = fields[:, c]
        lo, hi = PLAUSIBLE[channel]
        assert lo <= x.min() and x.max() <= hi, f"{channel}: {x.min()} .. {x.max()} outside {lo} .. {hi}"
        assert np.ptp(x[0, ROWS // 2]) > 0, f"{channel}: no zonal structure"
        assert np.abs(x[1] - x[0]).max() > 0, f"{channel}: does not change in time"
    t2m, z500 = fields[0, ERA5_CHANNELS.index("t2m")], fields[0, ERA5_CHANNELS.index("z500")]
    for x in (t2m, z500):  # warmer and higher in the tropics than at the poles
        assert x[ROWS // 2].mean() > x[0].mean() + 10 and x[ROWS // 2].mean() > x[-1].mean() + 10


def test_units_are_those_of_the_cds(tmp_path):
    assert synthesize(tmp_path, "--formats", "netcdf") == 0
    with netCDF4.Dataset(next(tmp_path.rglob("era5_pl_z_*.nc"))) as nc:
        assert nc["z"].units == "m**2 s**-2" and nc["z"].dimensions == ("valid_time", "pressure_level", "latitude",
                                                                         "longitude")
        assert list(nc["pressure_level"][:]) == [1000, 850, 500, 50]
    with netCDF4.Dataset(next(tmp_path.rglob("era5_sfc_*.nc"))) as nc:
        assert {v: nc[v].units for v in ("sp", "tcwv", "u10")} == {"sp": "Pa", "tcwv": "kg m**-2", "u10": "m s**-1"}


def test_same_seed_same_fields_other_seed_others(tmp_path):
    for seed, name in ((5, "a"), (5, "b"), (6, "c")):
        assert synthesize(tmp_path / name, "--seed", seed) == 0
    grib = {n: (tmp_path / n / "sfc" / "era5_sfc_20180101.grib").read_bytes() for n in "abc"}
    assert grib["a"] == grib["b"] != grib["c"]  # GRIB 1 has no time stamp: the same bytes
    nc = {}
    for n in "abc":
        with netCDF4.Dataset(tmp_path / n / "pl" / "era5_pl_t_20180101.nc") as f:
            nc[n] = f["t"][...]
    np.testing.assert_array_equal(nc["a"], nc["b"])
    assert np.abs(nc["a"] - nc["c"]).max() > 0.1


@pytest.mark.parametrize("args, message", [
    (["--grid", "19by36"], "--grid '19by36': use ROWSxCOLS"),
    (["--grid", "2x36"], "needs at least 3 rows"),
    (["--days", "0"], "--days 0: give at least 1"),
    (["--start", "2018-13-01"], "--start '2018-13-01': give a date as YYYY-MM-DD"),
])
def test_bad_arguments_give_one_line(tmp_path, capsys, args, message):
    assert cds_synth.main(["--output", str(tmp_path / "x"), "--grid", "19x36", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err

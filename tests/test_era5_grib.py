"""GRIB input to the converter, on real ERA5 from ECMWF (tests/data/era5-levels-members.grib, see its README).

The sample holds z and t at 500 and 850 hPa, the 10 members of ERA5's ensemble of data assimilations, at
2017-01-01T00, 12, 2017-01-02T00, 12 on a 3-degree grid (61 x 120). The converter's output, read by our
ERA5 reader, must equal what ecCodes decodes message by message (exactly, as float32).
"""
from __future__ import annotations

import json
from pathlib import Path

import eccodes as ec
import h5py
import numpy as np
import pytest
from era5_sample import CHANNELS, MEMBERS, SAMPLE, TIMES, convert_sample, ecc_fields, sample_args

from hpc_fcn.data import convert as converter
from hpc_fcn.data.era5 import FCNDataset


def convert(*argv) -> int:
    return converter.main([str(a) for a in argv])


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    return convert_sample(tmp_path_factory.mktemp("grib") / "era5")


def test_real_era5_members_equal_eccodes(converted):
    ref = ecc_fields(SAMPLE)
    assert len(ref) == 2 * 2 * 10 * 4
    with FCNDataset(converted, "test") as ds:
        assert ds.channels == list(CHANNELS) and ds.dt_hours == 12
        np.testing.assert_array_equal(ds.times, TIMES)
        assert ds.member_numbers == MEMBERS and (ds.nlat, ds.nlon) == (60, 120)
        # whole multiples of 3 degrees, exact in float64 on both sides: equal; default rtol 1e-7
        np.testing.assert_allclose(ds.lat, np.arange(90.0, -88.5, -3.0)) and np.testing.assert_allclose(
            ds.lon, np.arange(0.0, 360.0, 3.0))
        for i, t in enumerate(TIMES):
            members = ds.read_members(i)  # (10, 4, 60, 120): the model grid drops the south-pole row
            for c, name in enumerate(CHANNELS):
                for m in MEMBERS:
                    np.testing.assert_array_equal(members[m, c], ref[(name, t, m)][:60].astype(np.float32),
                                                  err_msg=f"{name} {t} member {m}")
            np.testing.assert_array_equal(ds.read(i), members[0])  # fields: the lowest-numbered member
    with h5py.File(converted / "test" / "2017.h5", "r") as f:  # the stored grid keeps both poles
        assert f["members"].shape == (4, 10, 4, 61, 120)
        np.testing.assert_array_equal(f["members"][3, 9, 3], ref[("t850", TIMES[3], 9)].astype(np.float32))
    meta = json.loads((converted / "metadata.json").read_text())
    assert meta["members"] == MEMBERS and meta["dt_hours"] == 12 and meta["units"]["z500"] == "m2 s-2"


def test_statistics_equal_numpy(converted):
    with h5py.File(converted / "test" / "2017.h5", "r") as f:
        x = f["fields"][...].astype(np.float64)  # (4, 4, 61, 120)
    stats = converted / "stats"
    # float64 sums in another order (Chan merge vs NumPy, ~1e-15) stored as float32: 2^-24 ~ 6e-8 relative; the
    # stds share that bound (was rtol=1e-5)
    np.testing.assert_allclose(np.load(stats / "global_means.npy")[0, :, 0, 0], x.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(np.load(stats / "global_stds.npy")[0, :, 0, 0], x.std(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(np.load(stats / "time_means.npy")[0], x.mean(axis=0), rtol=1e-6)


def rewrite(src: Path, dst: Path, edit) -> None:
    """Each message of ``src`` through ``edit(handle)`` (ecCodes re-encodes it) into ``dst``."""
    with open(src, "rb") as f, open(dst, "wb") as out:
        while (h := ec.codes_grib_new_from_file(f)) is not None:
            try:
                for g in edit(h) or ():
                    out.write(ec.codes_get_message(g))
                    ec.codes_release(g)
            finally:
                ec.codes_release(h)


def test_new_cds_grib2_pascal_levels_and_single_level(tmp_path):
    """GRIB 2 (the new CDS), a level in Pa, and a single-level field (2 m temperature) split over files."""
    def grib2(h):
        if ec.codes_get(h, "number") > 2:
            return []
        g = ec.codes_clone(h)
        ec.codes_set(g, "edition", 2)
        if ec.codes_get(g, "level") == 500:
            ec.codes_set(g, "typeOfLevel", "isobaricInPa")
            ec.codes_set(g, "level", 50000)
        return [g]

    def two_metre(h):  # z500 re-labelled 2 m temperature: a single-level parameter on its GRIB 2 level
        if ec.codes_get(h, "number") > 2 or ec.codes_get(h, "shortName") != "z" or ec.codes_get(h, "level") != 500:
            return []
        g = ec.codes_clone(h)
        ec.codes_set(g, "edition", 2)
        ec.codes_set(g, "paramId", 167)
        assert ec.codes_get(g, "typeOfLevel") == "heightAboveGround"
        return [g]

    src = tmp_path / "cds"
    src.mkdir()
    rewrite(SAMPLE, src / "pl.grib2", grib2)
    rewrite(SAMPLE, src / "sfc.grib", two_metre)
    out = tmp_path / "era5"
    assert convert(*sample_args(src, out, ("t2m", "z500", "t850"))) == 0
    ref = ecc_fields(SAMPLE)
    with FCNDataset(out, "test", stats_dir=None) as ds:
        assert ds.member_numbers == [0, 1, 2]
        got = ds.read_members(2)
    for c, name in enumerate(("z500", "z500", "t850")):
        for m in range(3):
            np.testing.assert_array_equal(got[m, c], ref[(name, TIMES[2], m)][:60].astype(np.float32))


@pytest.mark.parametrize("case, message", [
    ("unknown", "holds q (paramId 133, Specific humidity), which is no input of a channel"),
    ("level", "input lacks channel(s): z1000 (paramId 129 (z) at 1000 hPa: levels found 500, 850)"),
    ("channel", "--channels 'z500,q700': give distinct names among"),
    ("members", "lacks ensemble member 9"),
])
def test_clear_errors(tmp_path, capsys, case, message):
    src, channels = SAMPLE, CHANNELS
    if case == "unknown":
        src = tmp_path / "with_q.grib"

        def add_q(h):
            out = [ec.codes_clone(h)]
            if ec.codes_get(h, "number") == 0 and ec.codes_get(h, "shortName") == "t":
                q = ec.codes_clone(h)
                ec.codes_set(q, "paramId", 133)
                out.append(q)
            return out
        rewrite(SAMPLE, src, add_q)
    elif case == "members":
        src = tmp_path / "short.grib"
        rewrite(SAMPLE, src, lambda h: [] if ec.codes_get(h, "number") == 9 and ec.codes_get(h, "dataTime") == 1200
                and ec.codes_get(h, "shortName") == "t" else [ec.codes_clone(h)])
    channels = {"level": ("z500", "z1000"), "channel": ("z500", "q700")}.get(case, channels)
    assert convert(*sample_args(src, tmp_path / "out", channels)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()  # no folder left behind
    if case == "unknown":  # asked for, the unknown parameter is skipped
        assert convert(*sample_args(src, tmp_path / "out", channels, "--skip-unknown")) == 0


def test_scanning_mode_and_longitude_origin_do_not_change_the_output(converted, tmp_path):
    """South-to-north rows and longitudes from -180 (re-encoded by ecCodes) give the same year file."""
    def reorient(h):
        g = ec.codes_clone(h)
        values = ec.codes_get_values(h).reshape(61, 120)[::-1]  # south to north
        values = np.roll(values, 60, axis=1)  # from -180
        ec.codes_set(g, "jScansPositively", 1)
        ec.codes_set(g, "latitudeOfFirstGridPointInDegrees", -90.0)
        ec.codes_set(g, "latitudeOfLastGridPointInDegrees", 90.0)
        ec.codes_set(g, "longitudeOfFirstGridPointInDegrees", -180.0)
        ec.codes_set(g, "longitudeOfLastGridPointInDegrees", 177.0)
        ec.codes_set_values(g, values.ravel())
        return [g]

    src = tmp_path / "reoriented.grib"
    rewrite(SAMPLE, src, reorient)
    out = tmp_path / "era5"
    assert convert(*sample_args(src, out)) == 0
    with h5py.File(out / "test" / "2017.h5", "r") as f, h5py.File(converted / "test" / "2017.h5", "r") as g:
        np.testing.assert_array_equal(f["members"][...], g["members"][...])
    assert json.loads((out / "metadata.json").read_text())["lat"][0] == 90.0

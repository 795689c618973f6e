"""The FourCastNet-layout reader: shapes, selection, time indexing, hyperslab reads, errors."""
from __future__ import annotations

import datetime as dt
import io
import json

import h5py
import numpy as np
import pytest
import torch

from helpers_layout import ERA5_ORDER, write_layout
from hpc_fcn.data.era5 import DataError, FCNDataset, open_split
from hpc_fcn.runtime import UserError
from hpc_fcn.schema import DataConfig


@pytest.fixture
def lay(tmp_path):
    return write_layout(tmp_path, channels=4, rows=9, cols=16, steps=4)


def test_shapes_grid_and_metadata(lay):
    with FCNDataset(lay.root, "train") as ds:
        assert len(ds) == 8 and ds.years == [2000, 2001]
        assert (ds.nlat, ds.nlon) == (8, 16)
        assert ds.channels == ["u10", "v10", "t2m", "sp"] and ds.channel_index == [0, 1, 2, 3]
        x = ds.read(0)
        assert x.shape == (4, 8, 16) and x.dtype == np.float32
        # the same float64 formula, through metadata.json (repr round-trips exactly): equal; default rtol 1e-7
        np.testing.assert_allclose(ds.lat, lay.model_lat())
        assert ds.lat[0] == 90.0 and ds.lat[-1] > -90.0
        np.testing.assert_allclose(ds.lon, lay.model_lon())  # as lat
        assert ds.units["t2m"] == "unit_t2m" and ds.long_names["sp"] == "long name of sp"
        assert ds.dt_hours == 6
        assert ds.read_sequence(1, 3).shape == (3, 4, 8, 16)
        assert ds.climatology().shape == (4, 8, 16)  # time means on the model grid (pole row dropped)


def test_south_pole_row_dropped(lay):
    full = lay.fields(2000)
    with FCNDataset(lay.root, "train") as ds:
        np.testing.assert_array_equal(ds.read(2), full[2, :, :-1])
        clim = np.load(lay.root / "stats" / "time_means.npy")[0, :, :-1]
        np.testing.assert_array_equal(ds.climatology(), clim)  # the stored float32 values, unchanged
        with pytest.raises(DataError, match="selects nothing"):
            ds.read(0, rows=slice(8, 9))  # row 8 is the pole: not on the model grid


def test_channel_selection_in_any_order(lay):
    full = lay.fields(2001)
    with FCNDataset(lay.root, "train", channels=["sp", "u10", "t2m"]) as ds:
        assert ds.channel_index == [3, 0, 2]
        np.testing.assert_array_equal(ds.read(5), full[1][[3, 0, 2], :-1])
        np.testing.assert_array_equal(ds.read_sequence(4, 2), full[0:2][:, [3, 0, 2], :-1])
        assert list(ds.units) == ["sp", "u10", "t2m"]
        means = np.load(lay.root / "stats" / "global_means.npy").reshape(-1)
        np.testing.assert_array_equal(ds.means, means[[3, 0, 2]])
        clim = np.load(lay.root / "stats" / "time_means.npy")[0]
        np.testing.assert_array_equal(ds.climatology(rows=slice(2, 5)), clim[[3, 0, 2], 2:5])  # stored values
    with FCNDataset(lay.root, "train", channels=["v10", "t2m"]) as ds:  # contiguous: slice path
        np.testing.assert_array_equal(ds.read(5), full[1][1:3, :-1])


def test_times_across_year_files(lay):
    with FCNDataset(lay.root, "train") as ds:
        assert ds.times.dtype == np.dtype("datetime64[h]")
        assert ds.times[0] == np.datetime64("2000-01-01T00") and ds.times[4] == np.datetime64("2001-01-01T00")
        assert ds.index_of("2001-01-01T06") == 5
        assert ds.index_of(dt.datetime(2000, 1, 1, 18)) == 3
        assert ds.index_of(dt.datetime(2000, 1, 1, 19, tzinfo=dt.timezone(dt.timedelta(hours=1)))) == 3
        assert ds.index_of(np.datetime64("2001-01-01T18:00")) == 7
        # a sequence crossing the year boundary is not consecutive here (2000 has only 4 steps)
        with pytest.raises(DataError, match="not consecutive"):
            ds.read_sequence(2, 3)
        with pytest.raises(DataError, match="not in"):
            ds.index_of("2000-01-02T00")
        with pytest.raises(DataError, match="whole hour"):
            ds.index_of("2000-01-01T06:30")
        with pytest.raises(DataError, match="as a time"):
            ds.index_of("yesterday")
        with pytest.raises(DataError, match="out of range"):
            ds.read(8)


def test_sequence_across_years_when_continuous(tmp_path):
    lay = write_layout(tmp_path, splits={"train": (2001, 2002, 2004)}, steps=1460, channels=1, rows=3, cols=4)
    with FCNDataset(lay.root, "train") as ds:
        i = ds.index_of("2001-12-31T12")
        seq = ds.read_sequence(i, 4)
        np.testing.assert_array_equal(seq[:2], lay.fields(2001)[-2:, :, :-1])
        np.testing.assert_array_equal(seq[2:], lay.fields(2002)[:2, :, :-1])
        with pytest.raises(DataError, match="gap"):  # 2003 is missing
            ds.read_sequence(ds.index_of("2002-12-31T18"), 2)


def test_window_equals_full_read(lay):
    with FCNDataset(lay.root, "train", channels=["t2m", "u10"]) as ds:
        full = ds.read(6)
        win = ds.read(6, rows=slice(3, 7), cols=slice(5, 13))
        np.testing.assert_array_equal(win, full[:, 3:7, 5:13])
        np.testing.assert_array_equal(ds.read(6, rows=slice(-2, None)), full[:, -2:])


class _RecordingFile(io.FileIO):
    """A file whose reads are logged as (offset, length), so tests can see which bytes HDF5 touched."""

    def __init__(self, path):
        super().__init__(path, "r")
        self.reads: list[tuple[int, int]] = []

    def readinto(self, b):
        pos = self.tell()
        n = super().readinto(b)
        self.reads.append((pos, n or 0))
        return n


class _RecordingDataset(FCNDataset):
    def _open_h5(self, path):
        self.recorders = getattr(self, "recorders", {})
        self.recorders[path] = rec = _RecordingFile(path)
        return h5py.File(rec, "r")


def _touched_chunks(path, reads):
    """Chunk offsets (t, c, row, col) whose stored bytes overlap any recorded read."""
    with h5py.File(path, "r") as f:
        dsid = f["fields"].id
        infos = [dsid.get_chunk_info(k) for k in range(dsid.get_num_chunks())]
    return {tuple(int(v) for v in i.chunk_offset) for i in infos
            if any(o < i.byte_offset + i.size and i.byte_offset < o + n for o, n in reads)}


def test_window_read_touches_only_its_chunks(tmp_path):
    lay = write_layout(tmp_path, splits={"train": (2000, 2001)}, channels=3, rows=33, cols=16, steps=4,
                       chunks=(1, 1, 4, 16))
    with _RecordingDataset(lay.root, "train", channels=["t2m", "u10"]) as ds:
        path = lay.path("train", 2001)
        for rec in ds.recorders.values():
            rec.reads.clear()
        win = ds.read(5, rows=slice(9, 15), cols=slice(3, 10))
        np.testing.assert_array_equal(win, lay.fields(2001)[1][[2, 0], 9:15, 3:10])
        assert not ds.recorders[lay.path("train", 2000)].reads  # the other year was not read at all
        touched = _touched_chunks(path, ds.recorders[path].reads)
        # time 1, channels 0 and 2 (not 1), the row blocks holding rows 9..14 (starting at 8 and 12)
        assert touched == {(1, c, r, 0) for c in (0, 2) for r in (8, 12)}
        # the same check fails for a full read: it touches every row block of those channels
        ds.recorders[path].reads.clear()
        ds.read(6)
        assert len(_touched_chunks(path, ds.recorders[path].reads)) == 2 * 8


def test_normalisation_round_trip(lay):
    with FCNDataset(lay.root, "train", channels=["t2m", "v10"]) as ds:
        x = ds.read(3)
        z = ds.read(3, normalise=True)
        # float32 (x - mean) / std: 2 roundings of 2^-24 relative to z (bitwise here: the same order)
        np.testing.assert_allclose(z, (x - ds.means[:, None, None]) / ds.stds[:, None, None], rtol=1e-6)
        # float32 round trip: ~4 roundings of 2^-24 relative to |x| <= 35, so <= ~1e-5 absolute
        np.testing.assert_allclose(ds.denormalise(z), x, rtol=1e-6, atol=1e-5)
        # over the training data the normalised channels have mean ~0 and std ~1, not exactly: the stats cover
        # the stored grid with the south-pole row the reader drops (measured mean -0.003, std 1.03)
        allz = np.stack([ds.read(i, normalise=True) for i in range(len(ds))]).astype(np.float64)
        assert abs(allz.mean()) < 0.05 and abs(allz.std() - 1) < 0.1
        t = torch.from_numpy(np.stack([x, x]))
        tz = ds.normalise(t)
        assert isinstance(tz, torch.Tensor) and tz.dtype == torch.float32
        torch.testing.assert_close(ds.denormalise(tz), t, rtol=1e-6, atol=1e-5)  # float32 round trip, as above
        with pytest.raises(DataError, match="axis -3"):
            ds.normalise(np.zeros((3, 8, 16)))


def test_defaults_without_metadata(tmp_path):
    lay = write_layout(tmp_path, channels=21, rows=5, cols=8, metadata=False)
    with FCNDataset(lay.root, "train") as ds:
        assert ds.channels == list(ERA5_ORDER) and ds.channels[-1] == "unused20"
        assert ds.units["t2m"] == "K" and ds.standard_names["u10"] == "eastward_wind"
        assert ds.units["z500"] == "m2 s-2" and ds.standard_names["msl"] == "air_pressure_at_mean_sea_level"
        np.testing.assert_allclose(ds.lat, [90, 45, 0, -45])  # 90 - 180 i / 4: exact in float64
        np.testing.assert_allclose(ds.lon, np.arange(8) * 45.0)  # 360 i / 8: exact


def test_open_split(lay):
    cfg = DataConfig(root=str(lay.root), channels=["v10"])
    with open_split(cfg, "test") as ds:
        assert ds.years == [2002] and ds.channels == ["v10"]
    with open_split(cfg, "out_of_sample") as ds:
        assert ds.years == [2003]
        np.testing.assert_array_equal(ds.read(1), lay.fields(2003)[1, 1:2, :-1])
    with pytest.raises(DataError, match="unknown split"):
        open_split(cfg, "validation")
    with pytest.raises(DataError, match="^split 'valid' is now called 'test', the folder it is read from"):
        open_split(cfg, "valid")  # the name of earlier releases
    with pytest.raises(DataError, match="not a directory"):
        open_split(DataConfig(), "train")  # root 'builtin' is the caller's business
    with open_split(DataConfig(root="/nonexistent"), "train", root=lay.root) as ds:
        assert ds.years == [2000, 2001]


# -- errors ----------------------------------------------------------------------------------------
def test_error_missing_root_split_and_years(tmp_path, lay):
    assert issubclass(DataError, UserError)
    with pytest.raises(DataError, match="not a directory"):
        FCNDataset(tmp_path / "nope", "train")
    with pytest.raises(DataError, match="split directory .*missing_split"):
        FCNDataset(lay.root, "missing_split")
    (lay.root / "empty").mkdir()
    with pytest.raises(DataError, match="no year files"):
        FCNDataset(lay.root, "empty")


def test_error_file_without_fields(lay):
    with h5py.File(lay.path("train", 2001), "w") as f:
        f.create_dataset("data", data=np.zeros(3))
    with pytest.raises(DataError, match=r"2001\.h5: no dataset 'fields' \(has data\)"):
        FCNDataset(lay.root, "train")


def test_error_wrong_rank_and_shape_mismatch(lay):
    with h5py.File(lay.path("train", 2001), "w") as f:
        f.create_dataset("fields", data=np.zeros((4, 9, 16), np.float32))
    with pytest.raises(DataError, match=r"2001\.h5: 'fields' has shape \(4, 9, 16\); expected 4 dims"):
        FCNDataset(lay.root, "train")
    with h5py.File(lay.path("train", 2001), "w") as f:
        f.create_dataset("fields", data=np.zeros((4, 4, 9, 15), np.float32))
    with pytest.raises(DataError, match=r"2001\.h5: .*\(4, 9, 15\) per step but .*2000\.h5 has \(4, 9, 16\)"):
        FCNDataset(lay.root, "train")


def test_error_stats(lay):
    stats = lay.root / "stats"
    np.save(stats / "global_means.npy", np.zeros((1, 3, 1, 1), np.float32))
    with pytest.raises(DataError, match=r"global_means\.npy: shape \(1, 3, 1, 1\), expected \(1, 4, 1, 1\)"):
        FCNDataset(lay.root, "train")
    np.save(stats / "global_means.npy", np.zeros((1, 4, 1, 1), np.float32))
    np.save(stats / "time_means.npy", np.zeros((1, 4, 8, 16), np.float32))
    with pytest.raises(DataError, match=r"time_means\.npy: shape \(1, 4, 8, 16\), expected \(1, 4, 9, 16\)"):
        FCNDataset(lay.root, "train")
    np.save(stats / "global_stds.npy", np.zeros((1, 4, 1, 1), np.float32))
    with pytest.raises(DataError, match="finite and positive"):
        FCNDataset(lay.root, "train")
    (stats / "global_stds.npy").unlink()
    with pytest.raises(DataError, match=r"global_stds\.npy is missing"):
        FCNDataset(lay.root, "train")


def test_error_unknown_channel_lists_available(lay):
    with pytest.raises(DataError, match="channel.* z500 not in the dataset; available: u10, v10, t2m, sp"):
        FCNDataset(lay.root, "train", channels=["t2m", "z500"])
    with pytest.raises(DataError, match="without repeats"):
        FCNDataset(lay.root, "train", channels=["t2m", "t2m"])


def test_error_non_finite_in_window_only(lay):
    with h5py.File(lay.path("train", 2001), "r+") as f:
        f["fields"][2, 1, 6, 10] = np.nan
    with FCNDataset(lay.root, "train", channels=["t2m", "v10"]) as ds:
        ds.read(6, rows=slice(0, 5))  # the NaN lies outside this window
        with pytest.raises(DataError, match=r"2001\.h5: non-finite .* time 2001-01-01T12 in channel v10"):
            ds.read(6)
        with pytest.raises(DataError, match="2001-01-01T12"):
            ds.read_sequence(5, 3, cols=slice(8, 12))


def test_error_metadata_mismatch(tmp_path):
    lay = write_layout(tmp_path, metadata={"lat": [0.0, 1.0]})
    with pytest.raises(DataError, match="metadata.json: 'lat' has 2 entries but the data have 9"):
        FCNDataset(lay.root, "train")
    (lay.root / "metadata.json").write_text(json.dumps({"channels": ["a", "b"]}))
    with pytest.raises(DataError, match="'channels' has 2 entries but the data have 3"):
        FCNDataset(lay.root, "train")

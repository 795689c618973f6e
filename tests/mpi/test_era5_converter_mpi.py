"""hpc_fcn.data.convert (tools/era5_to_fcn.py) under MPI: years shared over the ranks, statistics reduced
over time chunks, the same files and statistics as a direct NumPy computation, and a failure on one rank ends
all of them."""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_era5_converter import expected_year, write_cds  # noqa: E402
from hpc_fcn.data import convert as tool  # noqa: E402

pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.odd_ranks]


@pytest.fixture
def shared():
    comm = MPI.COMM_WORLD
    path = tempfile.mkdtemp(prefix="hpc_fcn_era5_") if comm.rank == 0 else None
    path = Path(comm.bcast(path, root=0))
    if comm.rank == 0:
        write_cds(path)
    comm.Barrier()
    yield path
    comm.Barrier()
    if comm.rank == 0:
        shutil.rmtree(path, ignore_errors=True)


def test_parallel_conversion_and_statistics(shared):
    out = shared / "era5"
    rc = tool.main(["--input", str(shared / "cds"), "--output", str(out), "--years", "2000-2001", "--grid", "17x32",
                    "--allow-partial", "--stats-from", "train", "--chunk-steps", "3"])
    assert rc == 0
    fields = []
    for year in (2000, 2001):
        with h5py.File(out / "train" / f"{year}.h5", "r") as f:
            fields.append(f["fields"][...])
        # float32 storage of fields up to ~1e5 (geopotential): 2^-24 relative, atol for the near-zero winds
        np.testing.assert_allclose(fields[-1], expected_year(year, 8), rtol=1e-6, atol=1e-3)
    allf = np.concatenate(fields).astype(np.float64)
    means = np.load(out / "stats" / "global_means.npy")[0, :, 0, 0]
    stds = np.load(out / "stats" / "global_stds.npy")[0, :, 0, 0]
    # statistics accumulated in float64 and stored as float32: 2^-24 relative storage rounding
    np.testing.assert_allclose(means[:20], allf[:, :20].mean(axis=(0, 2, 3)), rtol=1e-6)
    # a std from float64 sums of squares: cancellation ~ (mean/std)^2 * 2^-52, then float32 storage
    np.testing.assert_allclose(stds[:20], allf[:, :20].std(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(np.load(out / "stats" / "time_means.npy")[0], allf.mean(axis=0), rtol=1e-6)  # as means


def test_an_error_on_one_rank_reaches_every_rank(shared, capsys):
    comm = MPI.COMM_WORLD
    if comm.rank == 0:  # 2000 with three days, enough for 10 steps
        write_cds(shared / "more", days_2000=3, include_2001=False)
    comm.Barrier()
    # 2001 has no data for 2001-01-03 and later: rank 1 converting it fails, the others must not hang
    rc = tool.main(["--input", str(shared / "more"), "--input", str(shared / "cds" / "*2001*.nc"),
                    "--output", str(shared / "bad"), "--years", "2000-2001", "--grid", "any", "--max-steps", "10"])
    assert rc == 2
    if comm.rank == 0:
        assert "year 2001: no input has channel u10 at 2001-01-03T00" in capsys.readouterr().err
        assert (shared / "bad" / "train" / "2000.h5.done").is_file()  # the healthy rank finished its year


def test_grib_ensemble_conversion_equals_serial(shared):
    """The real ERA5 EDA sample (GRIB, 10 members) converted on every rank: the serial files and statistics."""
    from era5_sample import CHANNELS, SAMPLE, convert_sample, sample_args
    comm = MPI.COMM_WORLD
    if comm.rank == 0:
        convert_sample(shared / "grib_serial")
    comm.Barrier()
    out = shared / "grib_mpi"
    assert tool.main(sample_args(SAMPLE, out, CHANNELS, "--stats-from", "test", "--chunk-steps", "1")) == 0
    if comm.rank == 0:
        for name in ("fields", "members"):
            with h5py.File(out / "test" / "2017.h5", "r") as f, h5py.File(shared / "grib_serial" / "test" / "2017.h5",
                                                                         "r") as g:
                np.testing.assert_array_equal(f[name][...], g[name][...], err_msg=name)
        for name in ("global_means.npy", "global_stds.npy", "time_means.npy"):
            np.testing.assert_allclose(np.load(out / "stats" / name), np.load(shared / "grib_serial" / "stats" / name),
                                       rtol=1e-6, err_msg=name)  # float64 sums in another order, float32 storage


def test_collectives_go_through_the_communicator(shared):
    """Every collective of a conversion with statistics is one of the Communicator's, so the tracer sees it."""
    from hpc_fcn.parallel.comm import MPICommunicator
    from hpc_fcn.tracing import Tracer
    tracer = Tracer(rank=MPI.COMM_WORLD.rank, scorep=False, cuda=False)
    comm = MPICommunicator(MPI.COMM_WORLD, "convert", lambda: tracer)
    args = tool.build_parser().parse_args(["--input", str(shared / "cds"), "--output", str(shared / "traced"),
                                           "--years", "2000-2001", "--grid", "any", "--allow-partial",
                                           "--stats-from", "train"])
    tool.run(args, comm)
    names = {name for name, category, *_ in tracer.events if category == "comm"}
    assert names == {"comm/bcast@convert", "convert/allgather@convert", "stats_read/allgather@convert",
                     "stats/gather@convert", "stats/reduce_sum@convert", "stats/allgather@convert"}, names


def test_a_read_failing_on_one_rank_during_statistics_reaches_every_rank(shared, capsys, monkeypatch):
    """The statistics are reduced only once every rank has read its chunks: a failure on one rank ends all of them
    with its message, none is left waiting in the reduction."""
    comm = MPI.COMM_WORLD
    out = shared / "era5"
    assert tool.main(["--input", str(shared / "cds"), "--output", str(out), "--years", "2000-2001", "--grid", "any",
                      "--allow-partial"]) == 0
    moments_of = tool.Moments.of

    def failing(x):
        if comm.rank == comm.size - 1:
            raise RuntimeError("disk gone")
        return moments_of(x)
    monkeypatch.setattr(tool.Moments, "of", staticmethod(failing))
    assert tool.main(["--output", str(out), "--stats-from", "train", "--chunk-steps", "1"]) == 2
    if comm.rank == 0:
        assert f"error: rank {comm.size - 1}: RuntimeError: disk gone" in capsys.readouterr().err

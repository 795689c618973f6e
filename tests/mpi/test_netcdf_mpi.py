"""Windows spread over 4 ranks, gathered to one writer rank, give the same file as a serial write."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import netCDF4
import numpy as np
import pytest
from mpi4py import MPI

from hpc_fcn.io import ForecastWriter, forecast_path
from hpc_fcn.parallel.windows import gather_window_to_root
from hpc_fcn.parallel.comm import MPICommunicator

pytestmark = pytest.mark.mpi(min_size=4)

VARS = ["z500", "t850"]
META = dict(variables=VARS, units={"z500": "m2 s-2", "t850": "K"},
            standard_names={"z500": "geopotential", "t850": "air_temperature"},
            long_names={"z500": "geopotential at 500 hPa", "t850": "temperature at 850 hPa"})
NLAT, NLON, M = 9, 11, 3
LAT, LON = np.linspace(90, -90, NLAT), np.linspace(0, 360, NLON, endpoint=False)
INIT, LEADS = np.datetime64("2018-06-01T00"), [6, 12, 18]
ROWS = [slice(0, 5), slice(5, 9)]  # uneven
COLS = [slice(0, 3), slice(3, 11)]


def shared_dir(comm) -> Path:
    path = tempfile.mkdtemp(prefix="hpc_fcn_nc_") if comm.rank == 0 else None
    return Path(comm.bcast(path, root=0))


def values(product):
    rng = np.random.default_rng(7)  # same on every rank
    shape = (len(LEADS), M, len(VARS), NLAT, NLON) if product == "members" else (len(LEADS), len(VARS), NLAT, NLON)
    return rng.standard_normal(shape).astype(np.float32)


def writer(outdir, product):
    return ForecastWriter(forecast_path(outdir, INIT, product), lat=LAT, lon=LON, init_time=INIT,
                          lead_hours=LEADS, product=product, n_members=M, attrs={"seed": 1}, **META)


def read(path):
    with netCDF4.Dataset(path) as ds:
        return {v: ds.variables[v][:].filled(np.nan) for v in ds.variables}


def serial_file(comm, outdir, product, src):
    if comm.rank == 0:
        with writer(outdir / "serial", product) as w:
            for lead in range(len(LEADS)):
                w.write(lead, src[lead], members=slice(0, M) if product == "members" else None)
    comm.Barrier()
    return forecast_path(outdir / "serial", INIT, product)


def test_mean_windows_on_a_2x2_grid():
    comm = MPI.COMM_WORLD.Split(0 if MPI.COMM_WORLD.rank < 4 else MPI.UNDEFINED, MPI.COMM_WORLD.rank)
    if comm == MPI.COMM_NULL:
        return
    outdir, src = shared_dir(comm), values("mean")
    rows, cols = ROWS[comm.rank // 2], COLS[comm.rank % 2]
    w = writer(outdir / "par", "mean") if comm.rank == 0 else None
    for lead in (2, 0, 1):
        full = gather_window_to_root(MPICommunicator(comm, "io"), src[lead][:, rows, cols], (len(VARS), NLAT, NLON), rows=rows, cols=cols)
        if comm.rank == 0:
            np.testing.assert_array_equal(full, src[lead])
            w.write(lead, full)
        else:
            assert full is None
    if comm.rank == 0:
        w.close()
    comm.Barrier()
    ref = serial_file(comm, outdir, "mean", src)
    if comm.rank == 0:
        got, want = read(forecast_path(outdir / "par", INIT, "mean")), read(ref)
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
        shutil.rmtree(outdir)
    comm.Free()


def test_members_split_over_ranks_with_replicas_and_per_member_gather():
    """ranks 0,1 own members [0:2] (rows split), ranks 2,3 own member [2:3] (rows split);
    the whole block is gathered once, then member by member to bound the writer's memory."""
    comm = MPI.COMM_WORLD.Split(0 if MPI.COMM_WORLD.rank < 4 else MPI.UNDEFINED, MPI.COMM_WORLD.rank)
    if comm == MPI.COMM_NULL:
        return
    outdir, src = shared_dir(comm), values("members")
    mine = slice(0, 2) if comm.rank < 2 else slice(2, 3)
    rows = ROWS[comm.rank % 2]
    shape = (M, len(VARS), NLAT, NLON)
    w = writer(outdir / "par", "members") if comm.rank == 0 else None
    for lead in range(len(LEADS)):
        if lead == 0:  # whole ensemble in one gather
            full = gather_window_to_root(MPICommunicator(comm, "io"), src[lead][mine, :, rows], shape, rows=rows, members=mine)
            if comm.rank == 0:
                w.write(lead, full, members=slice(0, M))
            continue
        for m in range(M):  # one member at a time; ranks without it send nothing
            have = mine.start <= m < mine.stop
            block = src[lead][m:m + 1, :, rows] if have else None
            one = gather_window_to_root(MPICommunicator(comm, "io"), block, (1,) + shape[1:], rows=rows)
            if comm.rank == 0:
                w.write(lead, one, members=slice(m, m + 1))
    if comm.rank == 0:
        assert w.complete
        w.close()
    comm.Barrier()
    ref = serial_file(comm, outdir, "members", src)
    if comm.rank == 0:
        got, want = read(forecast_path(outdir / "par", INIT, "members")), read(ref)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
        shutil.rmtree(outdir)
    comm.Free()


def test_bad_tiling_raises_on_every_rank():
    comm = MPI.COMM_WORLD.Split(0 if MPI.COMM_WORLD.rank < 4 else MPI.UNDEFINED, MPI.COMM_WORLD.rank)
    if comm == MPI.COMM_NULL:
        return
    rows = slice(0, 5)  # every rank claims the same rows: overlap
    with pytest.raises(ValueError, match="overlap"):
        gather_window_to_root(MPICommunicator(comm, "io"), np.zeros((1, 5, NLON), np.float32), (1, NLAT, NLON), rows=rows)
    rows = ROWS[comm.rank // 2]
    data = np.zeros((1, rows.stop - rows.start, NLON), np.float32) if comm.rank in (0, 2) else None
    gather_window_to_root(MPICommunicator(comm, "io"), data, (1, NLAT, NLON), rows=rows)  # ranks 1, 3 are replicas: fine
    data = np.zeros((1, rows.stop - rows.start, NLON), np.float32) if comm.rank == 0 else None
    with pytest.raises(ValueError, match="cover"):
        gather_window_to_root(MPICommunicator(comm, "io"), data, (1, NLAT, NLON), rows=rows)
    comm.Free()

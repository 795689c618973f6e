"""ProcessGrid: coordinates, axis groups, layout validation, local windows, both backends."""
import pytest
import torch

from hpc_fcn.config import ConfigError
from hpc_fcn.parallel import ProcessGrid
from hpc_fcn.parallel.testing import sub_comm
from hpc_fcn.schema import ParallelConfig
from hpc_fcn.tracing import Tracer

BACKENDS = ["mpi", "torch"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_axes_are_row_major_with_matmul_fastest(backend):
    with sub_comm(4) as comm:
        if comm is None:
            return
        cfg = ParallelConfig(ensemble=2, h=1, w=1, matmul=2, backend=backend)
        for grid in (ProcessGrid(comm, h=2, w=2, backend=backend), ProcessGrid.from_config(cfg, comm)):
            with grid:
                r = comm.rank
                s = grid.shape
                assert grid.rank == r
                assert r == ((grid.coords["ensemble"] * s["h"] + grid.coords["h"]) * s["w"]
                             + grid.coords["w"]) * s["matmul"] + grid.coords["matmul"]
                for name in ("ensemble", "h", "w", "matmul"):
                    ax = grid.axis(name)
                    assert ax.size == s[name] and ax.rank == grid.coords[name]
                    assert ax.comm.Get_size() == s[name]
                    # the members of an axis group differ only in that axis' coordinate
                    coords = ax.comm.allgather(grid.coords)
                    for c in coords:
                        assert all(c[o] == grid.coords[o] for o in c if o != name)
                    got = ax.all_reduce(torch.tensor([float(r)]))
                    assert got.item() == sum(ax.comm.allgather(r))
                assert grid.model.size == s["h"] * s["w"] * s["matmul"]
                assert grid.spatial.size == s["h"] * s["w"]
                assert grid.spatial.rank == grid.coords["h"] * s["w"] + grid.coords["w"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_repeated_grids_and_sub_communicators(backend):
    # many grids in one process, on different sub-communicators, each torn down and rebuilt
    for n in (1, 2, 3, 2):
        with sub_comm(n) as comm:
            if comm is None:
                continue
            with ProcessGrid(comm, w=n, backend=backend) as grid:
                t = grid.w.all_gather(torch.tensor([[grid.rank]] * (grid.rank + 1)), 0, list(range(1, n + 1)))
                assert t.flatten().tolist() == [r for r in range(n) for _ in range(r + 1)]


def test_layout_errors_are_clear():
    with sub_comm(4) as comm:
        if comm is None:
            return
        with pytest.raises(ConfigError, match="= 8 but the job has 4 MPI ranks"):
            ProcessGrid(comm, ensemble=2, h=2, w=2)
        with pytest.raises(ConfigError, match="does not divide the 4 MPI ranks"):
            ProcessGrid(comm, h=3)
        with ProcessGrid(comm, h=4) as grid:
            with pytest.raises(ConfigError, match="parallel.h.*exceed the 3 token rows"):
                grid.validate_model((6, 12), 2, 16, 4, 32)
        with ProcessGrid(comm, matmul=4) as grid:
            with pytest.raises(ConfigError, match="does not divide num_blocks=2"):
                grid.validate_model((8, 16), 2, 16, 2, 32)
            with pytest.raises(ConfigError, match="MLP hidden width 30"):
                grid.validate_model((8, 16), 2, 16, 4, 30)
            grid.validate_model((8, 16), 2, 16, 4, 32)


@pytest.mark.parametrize("shape", [dict(h=2, w=2), dict(ensemble=2, w=2), dict(h=4)])
def test_local_windows_tile_the_field_with_whole_patches(shape):
    with sub_comm(4) as comm:
        if comm is None:
            return
        with ProcessGrid(comm, **shape, tracer=Tracer(rank=comm.rank)) as grid:
            img, p = (18, 36), (2, 3)
            rows, cols = grid.local_window(img, p)
            assert rows.start % 2 == 0 and rows.stop % 2 == 0 and cols.start % 3 == 0 and cols.stop % 3 == 0
            cover = torch.zeros(img, dtype=torch.int64)
            cover[rows, cols] = 1
            total = grid.model.all_reduce(cover)
            assert torch.all(total == 1), "every pixel belongs to exactly one rank of a model group"
            assert grid.tracer.summary(), "the collective was recorded"

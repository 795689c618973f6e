"""Forecaster on a DistributedAFNONet: every option gives the serial Forecaster's result, any layout.

int8 quantises the column-parallel fc1 and the row-parallel fc2 of DistMlp; under a matmul split each
rank quantises its own shard of rows/columns, and activations are quantised per token on the gathered
(fc1) or local (fc2) width, so the result differs from the serial int8 one by quantisation noise only.
"""
import sys
from pathlib import Path

import pytest
import torch
from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from int8_support import needs_exact_int8  # noqa: E402

from hpc_fcn.accel import AccelError
from hpc_fcn.forecaster import Forecaster
from hpc_fcn.model import AFNONet
from hpc_fcn.parallel import ProcessGrid
from hpc_fcn.parallel.model import DistributedAFNONet, gather_field, scatter_field
from hpc_fcn.schema import InferenceConfig

SMALL = dict(img_size=(16, 32), patch_size=2, in_chans=3, out_chans=3, embed_dim=32, depth=2, num_blocks=4)
LAYOUTS = [dict(h=2), dict(matmul=2), dict(h=2, w=2)]
STEPS = 2


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def serial_reference(x):
    torch.manual_seed(0)
    net = AFNONet(**SMALL).eval()
    with torch.no_grad():
        ref = x
        for _ in range(STEPS):
            ref = net(ref)
    return net, ref


@pytest.mark.mpi(min_size=4)
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda d: "x".join(f"{k}{v}" for k, v in d.items()))
@pytest.mark.parametrize("opts,tol", [(dict(), 1e-5), (dict(precision="bf16"), 3e-2),
                                      pytest.param(dict(quantize="int8"), 2e-2, marks=needs_exact_int8)])
def test_distributed_forecaster_matches_serial(layout, opts, tol):
    comm = MPI.COMM_WORLD
    if comm.size % (layout.get("h", 1) * layout.get("w", 1) * layout.get("matmul", 1)):
        pytest.skip("layout does not divide the ranks")
    torch.manual_seed(1)
    x = torch.randn(2, SMALL["in_chans"], *SMALL["img_size"])
    net, ref = serial_reference(x)
    with ProcessGrid(comm, **layout) as grid:
        model = DistributedAFNONet.from_serial(net, None, grid).eval()
        fc = Forecaster(model, InferenceConfig(device="cpu", members_per_pass=1, **opts), grid=grid)
        xl = scatter_field(grid, x, SMALL["img_size"], SMALL["patch_size"])
        y = gather_field(grid, fc.rollout(xl, STEPS), SMALL["img_size"], SMALL["patch_size"])
        if opts.get("quantize") == "int8":
            assert len(fc.quantized) == 2 * SMALL["depth"]
        assert rel(y, ref) < tol, rel(y, ref)


@pytest.mark.mpi(min_size=2)
def test_cuda_graphs_refused_with_mpi_backend():
    with ProcessGrid(MPI.COMM_WORLD, h=2, ensemble=MPI.COMM_WORLD.size // 2) as grid:
        torch.manual_seed(0)
        model = DistributedAFNONet.from_serial(AFNONet(**SMALL), None, grid)
        with pytest.raises(AccelError, match="CUDA GPU|MPI collectives"):
            Forecaster(model, InferenceConfig(cuda_graphs=True), grid=grid)


@pytest.mark.mpi(min_size=2)
@pytest.mark.skipif(torch.cuda.device_count() < MPI.COMM_WORLD.size,
                    reason=f"NCCL graph capture needs one GPU per rank: {torch.cuda.device_count()} visible "
                           f"for {MPI.COMM_WORLD.size} ranks")
def test_cuda_graphs_capture_nccl_collectives():
    comm = MPI.COMM_WORLD
    device = torch.device("cuda", comm.rank)  # one node: the rank is the local rank
    torch.cuda.set_device(device)
    torch.manual_seed(1)
    x = torch.randn(2, SMALL["in_chans"], *SMALL["img_size"])
    net, ref = serial_reference(x)
    with ProcessGrid(comm, h=2, ensemble=comm.size // 2, backend="torch", device=device) as grid:
        model = DistributedAFNONet.from_serial(net, None, grid).to(device).eval()
        fc = Forecaster(model, InferenceConfig(device="cuda", cuda_graphs=True, members_per_pass=2), grid=grid)
        xl = scatter_field(grid, x, SMALL["img_size"], SMALL["patch_size"]).to(device)
        y = gather_field(grid, fc.rollout(xl, STEPS), SMALL["img_size"], SMALL["patch_size"]).cpu()
        assert rel(y, ref) < 1e-4  # TF32-free float32 on GPU over STEPS steps: ~1e-6 a step, compounding

"""analysis_ensemble perturbations from real ERA5 EDA members: the same ensemble on 1 and 4 ranks.

A small untrained AFNO (patch 4 on the 60 x 120 model grid of the 3-degree sample) runs 11 members (a
control and 10 perturbed by the 10 EDA members) for 24 h; every layout's members must equal the serial run's:
exactly at lead 0 (each rank reads its own window of the analyses), to round-off after the model steps.
"""
import sys
from pathlib import Path

import netCDF4
import numpy as np
import pytest
from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from era5_sample import CHANNELS, convert_sample, ecc_fields  # noqa: E402

from hpc_fcn.config import from_dict  # noqa: E402
from hpc_fcn.ensemble.app import EnsembleRun  # noqa: E402
from hpc_fcn.ensemble.config import EnsembleConfig  # noqa: E402
from hpc_fcn.parallel.testing import shared_tempdir  # noqa: E402

pytestmark = pytest.mark.skipif(MPI.COMM_WORLD.size != 4, reason="layouts are laid out for 4 ranks")
INIT = np.datetime64("2017-01-01T12", "h")
SCALE = 0.8


@pytest.fixture(scope="module")
def shared_tmp():
    return shared_tempdir("hpc_fcn_eda_", lambda p: convert_sample(p / "era5"))


def run(comm, tmp, name, overrides):
    if comm == MPI.COMM_NULL:
        return None
    base = {"model": {"img_size": [60, 120], "patch_size": 4, "embed_dim": 16, "depth": 1, "num_blocks": 4,
                      "seed": 5},
            "data": {"root": str(tmp / "era5")},
            "initial_conditions": {"split": "test", "times": [str(INIT)]},
            "ensemble": {"members": 11, "control": True, "seed": 1},
            "perturbation": {"method": "analysis_ensemble", "analysis_scale": SCALE},
            "forecast": {"lead_time": "24h", "output_every": 1},
            "output": {"dir": str(tmp / name), "members": True}, "progress": False}
    return EnsembleRun(from_dict(EnsembleConfig, base, overrides), comm).run()


def members_of(outdir) -> np.ndarray:
    """(lead, member, channel, lat, lon) of the one initial time."""
    with netCDF4.Dataset(Path(outdir) / "forecast_20170101T12_members.nc") as ds:
        x = np.stack([np.asarray(ds[v][:]) for v in CHANNELS])  # (channel, member, time, lead, lat, lon)
    return x[:, :, 0].transpose(2, 1, 0, 3, 4)


def test_eda_members_identical_across_layouts(shared_tmp):
    world = MPI.COMM_WORLD
    solo = world.Split(0 if world.rank == 0 else MPI.UNDEFINED, world.rank)
    layouts = {"serial": (solo, []), "ens4": (world, ["parallel.ensemble=4"]),
               "h2e2": (world, ["parallel.h=2", "inference.members_per_pass=1"]),
               "h2w2": (world, ["parallel.h=2", "parallel.w=2", "parallel.ensemble=1"])}
    for name, (comm, ov) in layouts.items():
        run(comm, shared_tmp, name, ov)
    if solo != MPI.COMM_NULL:
        solo.Free()
    world.Barrier()
    if world.rank != 0:
        return
    ref = members_of(shared_tmp / "serial")
    assert ref.shape == (3, 11, 4, 60, 120)
    # lead 0: the control is EDA member 0 and member k adds (k <= 10) SCALE x (EDA member k-1 - EDA mean)
    eda = ecc_fields()
    x = np.stack([np.stack([eda[(c, INIT, m)][:60] for c in CHANNELS]) for m in range(10)]).astype(np.float32)
    x = x.astype(np.float64)
    d = SCALE * (x - x.mean(axis=0))
    for k in range(11):
        want = x[0] + (d[k - 1] if k else 0.0)
        for c, name in enumerate(CHANNELS):  # float32 round-off of normalising and back: ~1e-7 of the value
            np.testing.assert_allclose(ref[0, k, c], want[c], rtol=0, atol=4e-7 * np.abs(x[:, c]).max(),
                                       err_msg=f"member {k} {name}")
    assert np.all(ref[1:].std(axis=1) > 0)  # the members stay distinct after the model steps
    for name in layouts.keys() - {"serial"}:
        got = members_of(shared_tmp / name)
        np.testing.assert_array_equal(got[0], ref[0], err_msg=f"{name}: lead 0")
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max(), err_msg=name)

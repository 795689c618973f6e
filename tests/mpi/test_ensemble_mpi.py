"""Ensemble runs on 4 ranks: member k and the scores do not depend on the layout or the batch size."""
import json
import sys
from pathlib import Path

import netCDF4
import numpy as np
import pytest
from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ensemble_setup import tiny_config, tiny_dataset  # noqa: E402

from hpc_fcn.ensemble.app import EnsembleRun  # noqa: E402
from hpc_fcn.parallel.testing import shared_tempdir  # noqa: E402

pytestmark = pytest.mark.skipif(MPI.COMM_WORLD.size != 4, reason="layouts are laid out for 4 ranks")


@pytest.fixture(scope="module")
def shared_tmp():
    return shared_tempdir("hpc_fcn_ens_", lambda p: tiny_dataset(p / "data"))


def run(comm, tmp, name, overrides):
    if comm == MPI.COMM_NULL:
        return None
    cfg = tiny_config(tmp / "data", tmp / name, overrides)
    return EnsembleRun(cfg, comm).run()


def members_of(outdir):
    out = {}
    for f in sorted(Path(outdir).glob("forecast_*_members.nc")):
        with netCDF4.Dataset(f) as ds:
            out[f.name] = np.stack([np.asarray(ds[v][:]) for v in ("u", "v", "z")])
    return out


@pytest.mark.parametrize("method", ["gaussian", "spherical", "bred", "stochastic"])
def test_member_identical_across_layouts_and_batches(shared_tmp, method):
    """``stochastic``: the stochastic model (token noise keyed by member and step, correlated in space and
    time) with gaussian initial noise."""
    world = MPI.COMM_WORLD
    solo = world.Split(0 if world.rank == 0 else MPI.UNDEFINED, world.rank)
    extra = [f"perturbation.method={method}", "initial_conditions.start=2002-01-03T00"]
    if method == "stochastic":
        extra = ["perturbation.method=gaussian", "perturbation.amplitude=0.05", "model.stochastic=true",
                 "model.noise_dim=6", "model.noise_length_km=3000", "model.noise_memory_hours=24",
                 "initial_conditions.start=2002-01-03T00"]
    layouts = {"serial": (solo, []), "ens4": (world, ["parallel.ensemble=4"]),
               "h2e2": (world, ["parallel.h=2", "inference.members_per_pass=1"]),
               "w2m2": (world, ["parallel.w=2", "parallel.matmul=2", "parallel.ensemble=1"]),
               "h2e2_gloo": (world, ["parallel.h=2", "parallel.backend=torch"])}
    if method == "stochastic":  # 1 rank, ens4, h2 x ens2 and w2 x matmul2
        layouts = {k: layouts[k] for k in ("serial", "ens4", "h2e2", "w2m2")}
        extra.append("initial_conditions.count=1")
        run(solo, shared_tmp, "stochastic_off", extra + ["model.stochastic=false"])
    elif method != "gaussian":  # the noise path is layout-independent by construction; check two layouts
        layouts = {k: layouts[k] for k in ("serial", "h2e2")}
        extra.append("initial_conditions.count=1")
    docs = {}
    for name, (comm, ov) in layouts.items():
        docs[name] = run(comm, shared_tmp, f"{method}_{name}", extra + ov)
    if solo != MPI.COMM_NULL:
        solo.Free()
    world.Barrier()
    if world.rank == 0:
        ref = members_of(shared_tmp / f"{method}_serial")
        assert len(ref) == (2 if method == "gaussian" else 1)
        if method == "stochastic":  # the model noise acts: the members differ from the deterministic model's
            off = members_of(shared_tmp / "stochastic_off")
            assert all(np.abs(ref[f] - off[f]).max() > 1e-3 * np.abs(off[f]).max() for f in ref)
        for name in layouts.keys() - {"serial"}:  # each layout against the serial run
            got = members_of(shared_tmp / f"{method}_{name}")
            assert got.keys() == ref.keys()
            for f in ref:
                np.testing.assert_allclose(got[f], ref[f], rtol=1e-5, atol=1e-5 * np.abs(ref[f]).max(),
                                           err_msg=f"{name} {f}")
            doc = json.loads((shared_tmp / f"{method}_{name}" / "metrics.json").read_text())
            serial = json.loads((shared_tmp / f"{method}_serial" / "metrics.json").read_text())
            for score in ("rmse", "acc", "crps", "spread"):
                for var in ("u", "v", "z"):
                    a = np.array(doc["scores"][score][var], dtype=float)
                    b = np.array(serial["scores"][score][var], dtype=float)
                    # scores of members equal to 1e-5 (above), squared/differenced and averaged: 1e-4
                    np.testing.assert_allclose(a, b, rtol=1e-4, equal_nan=True, err_msg=f"{name} {score} {var}")
            for var in ("u", "v", "z"):
                # lead 0: the control equals the truth, so its ties are broken at random on each rank;
                # later, round-off may move the truth across a member at a rare point
                a = np.array(doc["scores"]["rank_hist"][var])[1:]
                b = np.array(serial["scores"]["rank_hist"][var])[1:]
                assert (a.sum(axis=-1) == b.sum(axis=-1)).all()
                assert np.abs(a - b).sum() <= 0.002 * b.sum()

"""Probability products on 4 ranks: threshold probabilities and quantiles equal NumPy on the members file, and
the Brier scores, reliability tables and pinball losses equal a plain NumPy implementation, on several layouts
(uneven member groups and row blocks included) and in both output formats."""
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

PRODUCTS = ["products.probabilities={u: {above: [20.0, 30.0]}, z: {below: [40.0, 60.0]}}",
            "products.quantiles=[0.1, 0.5, 0.9]", "initial_conditions.start=2002-01-03T00"]
EVENTS = [("u", ">", 20.0), ("u", ">", 30.0), ("z", "<", 40.0), ("z", "<", 60.0)]
LEVELS = [0.1, 0.5, 0.9]
# layout name -> (ranks, overrides): member groups 2/1/1/1 (ens4), 2/2/1 with row blocks 11/11/10 (e3), row
# windows split over 2 groups (h2e2), and matmul replicas that score and write nothing (w2m2)
LAYOUTS = {"ens4": (4, ["parallel.ensemble=4", "output.format=netcdf"]),
           "e3": (3, ["parallel.ensemble=3", "output.format=zarr"]),
           "h2e2": (4, ["parallel.h=2", "parallel.ensemble=2", "output.format=zarr"]),
           "w2m2": (4, ["parallel.w=2", "parallel.matmul=2", "parallel.ensemble=1", "output.format=netcdf"])}


@pytest.fixture(scope="module")
def runs():
    """Every layout's run (shared folder), run once for the module."""
    world = MPI.COMM_WORLD
    tmp = shared_tempdir("hpc_fcn_prob_", lambda p: tiny_dataset(p / "data"))
    for name, (n, overrides) in LAYOUTS.items():
        comm = world if n == world.size else world.Split(0 if world.rank < n else MPI.UNDEFINED, world.rank)
        if comm != MPI.COMM_NULL:
            EnsembleRun(tiny_config(tmp / "data", tmp / name, PRODUCTS + overrides), comm).run()
            if comm is not world:
                comm.Free()
        world.Barrier()
    return tmp


def read(path: Path, variables):
    """{variable: array} of one product of one initial time, in either format."""
    if path.suffix == ".nc":
        with netCDF4.Dataset(path) as ds:
            ds.set_auto_mask(False)
            return {v: np.asarray(ds[v][:]) for v in variables}
    import zarr
    g = zarr.open_group(path, mode="r")
    return {v: np.asarray(g[v][...]) for v in variables}


def product_path(outdir: Path, stamp: str, product: str) -> Path:
    return next(p for p in outdir.glob(f"forecast_{stamp}_{product}.*") if p.suffix in (".nc", ".zarr"))


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_products_equal_numpy_on_the_members_file(runs, layout):
    if MPI.COMM_WORLD.rank != 0:
        return
    out = runs / layout
    stamps = sorted(p.name.split("_")[1] for p in out.glob("forecast_*_members.*"))
    assert len(stamps) == 2
    for stamp in stamps:
        m = read(product_path(out, stamp, "members"), "uvz")  # (M, time, lead, lat, lon) each
        prob = read(product_path(out, stamp, "probability"),
                    ["probability_of_u_above_threshold", "probability_of_z_below_threshold"])
        quant = read(product_path(out, stamp, "quantile"), "uvz")
        M = m["u"].shape[0]
        for i, th in enumerate([20.0, 30.0]):  # k / M in float32 on both sides: exactly equal
            want = ((m["u"] > np.float32(th)).sum(axis=0) / M).astype(np.float32)
            np.testing.assert_array_equal(prob["probability_of_u_above_threshold"][i], want, err_msg=f"{layout} u>{th}")
        for i, th in enumerate([40.0, 60.0]):
            want = ((m["z"] < np.float32(th)).sum(axis=0) / M).astype(np.float32)
            np.testing.assert_array_equal(prob["probability_of_z_below_threshold"][i], want, err_msg=f"{layout} z<{th}")
        for v in "uvz":
            want = np.quantile(m[v], LEVELS, axis=0)  # float64 from the float32 members
            # the product is that value rounded to float32: within half a float32 ulp of it
            np.testing.assert_allclose(quant[v], want, rtol=2.0 ** -24, atol=0, err_msg=f"{layout} {v}")
            np.testing.assert_array_equal(quant[v], want.astype(np.float32), err_msg=f"{layout} {v}")


def test_members_identical_across_layouts_with_products(runs):
    """The members do not depend on the layout, as without products (the products are checked against each
    layout's own members file above: members equal to float32 rounding can fall on either side of a threshold)."""
    if MPI.COMM_WORLD.rank != 0:
        return
    ref = runs / "ens4"
    for layout in LAYOUTS:
        for p in sorted(ref.glob("forecast_*_members.nc")):
            stamp = p.name.split("_")[1]
            a, b = read(p, "uvz"), read(product_path(runs / layout, stamp, "members"), "uvz")
            for v in "uvz":  # float32 steps on other ranks' reductions (the MPI member tests' bound)
                np.testing.assert_allclose(b[v], a[v], rtol=1e-5, atol=1e-5 * np.abs(a[v]).max(), err_msg=layout)


def truth_and_weights(tmp: Path, stamp: str, lead_hours: list[int]):
    """The truth at each lead of the initial time ``stamp`` (lead, C, lat, lon) and the area latitude weights."""
    from hpc_fcn.config import from_dict
    from hpc_fcn.data.era5 import open_split
    from hpc_fcn.schema import DataConfig
    ds = open_split(from_dict(DataConfig, {"root": str(tmp / "data")}), "out_of_sample")
    t0 = np.datetime64(f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}T{stamp[9:11]}", "h")
    truth = np.stack([ds.read(int(np.nonzero(ds.times == t0 + np.timedelta64(h, "h"))[0][0])) for h in lead_hours])
    lat = np.deg2rad(np.asarray(ds.lat, np.float64))  # cell-area weights: sin of the band edges, mean 1
    d = np.diff(lat)
    edges = np.clip(np.concatenate([[lat[0] - d[0] / 2], (lat[1:] + lat[:-1]) / 2, [lat[-1] + d[-1] / 2]]),
                    -np.pi / 2, np.pi / 2)
    w = np.abs(np.diff(np.sin(edges)))
    return truth, w / w.mean(), list(ds.channels)


@pytest.mark.parametrize("layout", ["ens4", "e3"])
def test_brier_reliability_and_pinball_equal_numpy(runs, layout):
    """metrics.json's probabilistic scores against a plain NumPy implementation from the members file + truth."""
    if MPI.COMM_WORLD.rank != 0:
        return
    out = runs / layout
    doc = json.loads((out / "metrics.json").read_text())["probabilistic"]
    lead_hours = json.loads((out / "metrics.json").read_text())["lead_hours"]
    brier, pinball, counts = [], [], []
    for p in sorted(out.glob("forecast_*_members.*")):
        stamp = p.name.split("_")[1]
        m = read(p, "uvz")
        truth, w, channels = truth_and_weights(runs, stamp, lead_hours)
        wm = w[:, None] / (w.sum() * truth.shape[-1])  # weighted mean = sum(wm * x)
        b, pin, cnt = [], [], []
        for li in range(len(lead_hours)):
            x = {v: m[v][:, 0, li].astype(np.float64) for v in "uvz"}
            o = {v: truth[li, channels.index(v)].astype(np.float64) for v in "uvz"}
            row, crow = [], []
            for v, rel, th in EVENTS:
                p_ = ((x[v] > th) if rel == ">" else (x[v] < th)).mean(axis=0)
                ev = (o[v] > th) if rel == ">" else (o[v] < th)
                row.append((wm * (p_ - ev) ** 2).sum())
                crow.append(np.bincount(np.rint(p_ * len(x[v])).astype(int).ravel(), minlength=len(x[v]) + 1))
            b.append(row)
            cnt.append(crow)
            qs = {v: np.quantile(m[v][:, 0, li], LEVELS, axis=0).astype(np.float32) for v in "uvz"}
            pin.append([[(wm * (o[v] - qs[v][j]) * (q - (o[v] < qs[v][j]))).sum() for v in "uvz"]
                        for j, q in enumerate(LEVELS)])
        brier.append(b)
        pinball.append(pin)
        counts.append(cnt)
    brier, pinball = np.mean(brier, axis=0), np.mean(pinball, axis=0)  # averaged over initial times
    counts = np.sum(counts, axis=0)
    names = [f"{v}{rel}{th:g}" for v, rel, th in EVENTS]
    assert doc["events"] == names
    # float64 sums over 2048 points in another order: relative error ~ 2048 x 2**-52, far below 1e-9
    for i, e in enumerate(names):
        np.testing.assert_allclose(doc["brier"][e], brier[:, i], rtol=1e-9, atol=1e-15, err_msg=e)
        assert doc["reliability"]["count"][e] == counts[:, i].tolist(), e
    for j, q in enumerate(LEVELS):
        for c, v in enumerate("uvz"):
            np.testing.assert_allclose(doc["pinball"][v][f"{q:g}"], pinball[:, j, c], rtol=1e-9, atol=1e-12)
    assert ((brier > 0) & (brier < 1)).any()  # some events are neither certain nor impossible
    assert (counts[1:, 0] > 0).sum(axis=-1).max() > 2  # u>20 forecasts spread over several probabilities

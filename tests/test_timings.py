"""Timings that add up: each rank's wall time split into compute, communication, IO and other."""
import json
import threading

import pytest

from ensemble_setup import run_cli, tiny_config, tiny_dataset

from hpc_fcn.config import dump_yaml
from hpc_fcn.ensemble.report import PARTS, timing_table
from hpc_fcn.tracing import Tracer


class Clock:
    """A clock the test sets by hand: every duration below is exact in binary (multiples of 1/4 s)."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_partition_counts_each_second_once_under_the_innermost_region():
    c = Clock()
    t = Tracer(enabled=True, clock=c)
    c.t = 1.0
    with t.region("forecast.step"):  # 1 .. 5: compute with a collective 2 .. 3 nested in it
        c.t = 2.0
        with t.comm("fft/all_to_all@w", 8):
            c.t = 3.0
        c.t = 5.0
    c.t = 5.5  # 5 .. 5.5 outside every region
    with t.region("io.read", "io"):
        c.t = 6.25
    with t.comm("settle/allgather@world", 8):  # a collective outside any compute region
        c.t = 7.0
    parts = t.partition(0.5, 7.5)
    # exact: every bound is a multiple of 1/4, so the sums are exact in binary
    assert parts == {"compute": 3.0, "comm": 1.75, "io": 0.75, "other": 1.5}
    assert t.partition(2.5, 4.0) == {"compute": 1.0, "comm": 0.5, "io": 0.0, "other": 0.0}  # clipped to the window


def test_partition_leaves_out_other_threads_regions():
    c = Clock()
    t = Tracer(enabled=True, clock=c)
    c.t = 1.0

    def writer():  # a writer thread's region, overlapping the main thread's compute
        with t.region("io.write", "io"):
            c.t = 3.0

    with t.region("forecast.step"):
        th = threading.Thread(target=writer)
        th.start()
        th.join()
        c.t = 4.0
    assert t.partition(0.0, 4.0) == {"compute": 3.0, "comm": 0.0, "io": 0.0, "other": 1.0}
    assert t.summary()["io.write"]["seconds"] == 2.0  # still traced and summarised


def test_partially_overlapping_regions_still_partition_the_wall():
    c = Clock()
    t = Tracer(enabled=True, clock=c)
    # a CUDA-timed region keeps its host start and device duration, so it may end after its parent
    t.events += [["step", "compute", 1.0, 2.0, 0, t._thread], ["a2a", "comm", 2.5, 1.5, 0, t._thread]]
    assert t.partition(0.0, 5.0) == {"compute": 1.5, "comm": 1.5, "io": 0.0, "other": 2.0}


def test_timing_table_says_the_parts_add_up():
    ranks = [dict(compute=1.0, comm=0.5, io=0.25, other=0.25, wall=2.0, group=0),
             dict(compute=2.0, comm=0.5, io=0.25, other=0.25, wall=3.0, group=0)]
    text = timing_table(ranks, 10)
    assert "compute + communication + IO + other = wall" in text
    assert "| 0 | 2 | 1.50 | 0.50 | 0.25 | 0.25 | 2.50 |" in text  # means over the group's ranks


@pytest.fixture(scope="module")
def zarr_run(tmp_path_factory):
    """A real run on 2 ranks splitting the grid (collectives inside every step), written as zarr."""
    tmp = tmp_path_factory.mktemp("timings")
    cfg = tiny_config(tiny_dataset(tmp / "data"), tmp / "out", ["output.members=false", "output.format=zarr",
                                                                 "initial_conditions.count=1"])
    path = tmp / "tiny.yaml"
    path.write_text(dump_yaml(cfg))
    proc = run_cli(2, path, "parallel.h=2", "parallel.ensemble=1", timeout=200)
    assert proc.returncode == 0, proc.stderr
    return tmp / "out", proc


def test_each_ranks_parts_are_nonnegative_and_add_up_to_its_wall(zarr_run):
    out, proc = zarr_run
    ranks = json.loads((out / "timings.json").read_text())["ranks"]
    assert len(ranks) == 2
    for r in ranks:
        parts = [r[k] for k, _ in PARTS]
        assert min(parts) >= 0.0, r
        # the parts are differences of the same perf_counter doubles that bound the wall, summed: off by a few
        # ulps of the clock (~1e-10 s at 1e6 s of uptime) per region boundary, far below 1e-6 s for < 1000 regions
        assert sum(parts) == pytest.approx(r["wall"], abs=1e-6), r
        assert r["comm"] > 0.0 and r["compute"] > 0.0  # the h split exchanges inside every step
    assert "compute + communication + IO + other = wall" in proc.stdout


def test_a_zarr_run_names_zarr_not_netcdf(zarr_run):
    _, proc = zarr_run
    space = [ln for ln in proc.stderr.splitlines() if "per output step" in ln]
    assert len(space) == 1 and "of zarr" in space[0], proc.stderr
    assert "netcdf" not in proc.stderr.lower() and "netcdf" not in proc.stdout.lower()


def test_outermost_mapped_region_of_the_own_thread_opens_the_phase():
    from hpc_fcn.memwatch import PhaseMeter
    from hpc_fcn.ensemble.report import phase_of
    c = Clock()
    meter = PhaseMeter(clock=c)
    t = Tracer(enabled=True, clock=c)
    t.watch_phases(meter, phase_of)
    with t.region("forecast.step"):  # 0 .. 2, with a mapped region nested in it: one phase, not two
        with t.region("forecaster.pass"):
            c.t = 1.0
        with t.comm("fft/all_to_all@w", 8):
            c.t = 2.0
    with t.comm("score_members/alltoallv@ensemble", 8):  # a collective by its tag: 2 .. 2.5
        c.t = 2.5
    with t.region("unmapped"):
        c.t = 3.0

    def writer():  # another thread's IO opens no phase of this rank's
        with t.region("io.write", "io"):
            c.t = 4.0
    th = threading.Thread(target=writer)
    th.start()
    th.join()
    assert meter.seconds == {"step": 2.0, "scoring": 0.5}
    assert set(meter.peak) == {"step", "scoring"} and min(meter.peak.values()) > 0


def test_each_rank_reports_its_phases(zarr_run):
    out, proc = zarr_run
    ranks = json.loads((out / "timings.json").read_text())["ranks"]
    for r in ranks:
        ph = r["phases"]
        assert {"startup", "checkpoint", "read", "perturb", "step", "output", "scoring", "report"} <= set(ph["seconds"])
        # the phases inside the rollout are on this rank's thread and do not overlap: no more than its wall
        inside = sum(ph["seconds"][k] for k in ("read", "perturb", "step", "output", "scoring"))
        assert 0.0 < inside <= r["wall"] + 1e-6
        assert ph["seconds"]["step"] > 0.0 and ph["seconds"]["startup"] > 0.0
        assert all(p > 10 * 2**20 for p in ph["peak_bytes"].values())  # a Python process with torch: > 10 MiB
    assert "Phases per rank" in proc.stdout

"""MPI test harness: one verdict per test agreed by all ranks, quiet non-zero ranks, no hangs.

Run as ``mpirun -n 4 python -m pytest tests/mpi --with-mpi``. After each test every rank waits (up
to HPC_FCN_TEST_SYNC_TIMEOUT seconds) for the others; then all ranks share their failures, so a
test that fails on any rank fails on all of them and rank 0 reports every rank's message. A rank
that never arrives (stuck in a collective) makes the waiting ranks abort the job instead of hanging.
"""
from __future__ import annotations

import os
import sys
import time

import pytest
from mpi4py import MPI

SYNC_TIMEOUT = float(os.environ.get("HPC_FCN_TEST_SYNC_TIMEOUT", "300"))


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    comm = MPI.COMM_WORLD
    if comm.rank != 0:  # rank 0 reports for everyone (failures of other ranks are folded into its report)
        reporter = config.pluginmanager.getplugin("terminalreporter")
        if reporter is not None:
            config.pluginmanager.unregister(reporter)
    import torch
    torch.set_num_threads(int(os.environ.get("HPC_FCN_TEST_THREADS", "1")))  # ranks share the cores


def _wait_all(comm, what: str) -> None:
    req = comm.Ibarrier()
    deadline = time.monotonic() + SYNC_TIMEOUT
    while not req.Test():
        if time.monotonic() > deadline:
            print(f"[rank {comm.rank}] {what}: other ranks did not arrive within {SYNC_TIMEOUT:.0f} s; aborting",
                  file=sys.stderr, flush=True)
            comm.Abort(3)
        time.sleep(0.001)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    outcome = yield
    comm = MPI.COMM_WORLD
    if comm.size == 1:
        return
    excinfo = outcome.excinfo
    local = None
    if excinfo is not None and not isinstance(excinfo[1], pytest.skip.Exception):
        local = f"{excinfo[0].__name__}: {excinfo[1]}"[:4000]
    _wait_all(comm, item.nodeid)
    verdicts = comm.allgather(local)
    failed = [(r, m) for r, m in enumerate(verdicts) if m]
    if not failed:
        return
    text = "\n".join(f"rank {r}: {m}" for r, m in failed)
    if local is None:
        outcome.force_exception(AssertionError(f"failed on other ranks:\n{text}"))
    else:
        item.add_report_section("call", "all ranks", text)

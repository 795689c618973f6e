"""Helpers for MPI tests of decomposed code: run a layout on the first ``n`` ranks of a communicator."""
from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import torch


@contextlib.contextmanager
def sub_comm(n: int, comm=None) -> Iterator[object | None]:
    """Yield a communicator of the first ``n`` ranks of ``comm`` (None on the other ranks); collective."""
    from mpi4py import MPI
    comm = comm if comm is not None else MPI.COMM_WORLD
    if n > comm.Get_size():
        raise ValueError(f"layout needs {n} ranks, the job has {comm.Get_size()}")
    sub = comm.Split(0 if comm.Get_rank() < n else MPI.UNDEFINED, comm.Get_rank())
    try:
        yield None if sub == MPI.COMM_NULL else sub
    finally:
        if sub != MPI.COMM_NULL:
            sub.Free()


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """max |got - ref| / max |ref| (norm-wise relative error; 0 when both are zero)."""
    scale = ref.abs().max().item()
    diff = (got - ref).abs().max().item()
    return diff / scale if scale > 0 else diff


def shared_tempdir(prefix: str, populate: Callable[[Path], object] | None = None, comm=None) -> Path:
    """A temporary directory made (and filled by ``populate``) on rank 0, the same path on every rank."""
    from mpi4py import MPI
    comm = comm if comm is not None else MPI.COMM_WORLD
    path = tempfile.mkdtemp(prefix=prefix) if comm.Get_rank() == 0 else None
    path = Path(comm.bcast(path, root=0))
    error = None
    if comm.Get_rank() == 0 and populate is not None:
        try:
            populate(path)
        except Exception as exc:  # noqa: BLE001 - raised on every rank below, so none waits forever
            error = f"{type(exc).__name__}: {exc}"
    error = comm.bcast(error, root=0)
    if error is not None:
        raise RuntimeError(f"filling the shared directory {path} on rank 0 failed: {error}")
    return path

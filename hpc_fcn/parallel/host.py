"""Collectives of host data over one mpi4py communicator: NumPy arrays and picklable objects, traced.

:class:`HostComm` is the rank set of one communicator (its name, size, rank and tracer) and the
collectives that move host data; :class:`hpc_fcn.parallel.comm.Communicator` adds tensor collectives on
top, as torch-harmonics keeps plain collectives apart from their autograd wrappers.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from typing import Callable, Sequence

import numpy as np

from ..tracing import NULL_TRACER, Tracer
from .split import offsets


class HostComm:
    """Host-data collectives over ``comm`` (an mpi4py communicator), recorded under ``name`` in the tracer.

    Size-1 communicators never communicate: every collective returns its input (or a copy shaped
    like the result), so one code path serves serial and parallel runs.

    With more ranks than cores (the launcher says so: HPC_FCN_YIELD=1, which tools/mpirun.sh sets), every
    collective first waits for all ranks in a non-blocking barrier polled with short sleeps, so ranks that
    arrive early leave the cores to the ranks still computing instead of spinning in MPI.
    """

    def __init__(self, comm, name: str, tracer_of: Callable[[], Tracer] | None = None):
        self.comm = comm
        self.name = name
        self.size = comm.Get_size()
        self.rank = comm.Get_rank()
        self._tracer_of = tracer_of or (lambda: NULL_TRACER)
        self.yielding = oversubscribed()

    @property
    def tracer(self) -> Tracer:
        return self._tracer_of()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}: rank {self.rank} of {self.size})"

    def __deepcopy__(self, memo) -> "HostComm":
        return self  # a handle on ranks, not data: a copied model talks over the same communicator

    @contextlib.contextmanager
    def _trace(self, op: str, tag: str | None, nbytes: int):
        """Time the collective ``op`` (every collective runs inside this, on every rank of the communicator);
        when yielding, wait asleep for the other ranks first."""
        with self.tracer.comm(f"{tag or 'comm'}/{op}@{self.name}", nbytes):
            if self.yielding:
                self._wait_for_ranks()
            yield

    def _wait_for_ranks(self) -> None:
        """Return once every rank has reached this point, sleeping between polls (50 us doubling to 1 ms,
        so a short wait costs little latency and a long one almost no CPU)."""
        req = self.comm.Ibarrier()
        delay = 50e-6
        while not req.Test():
            time.sleep(delay)
            delay = min(2 * delay, 1e-3)

    def all_reduce(self, x, tag: str | None = None, op: str = "sum"):
        """A NumPy array or Python number reduced with ``op`` (sum, max, min) over the ranks."""
        return self._all_reduce_host(x, op, tag)

    def _all_reduce_host(self, x, op: str, tag: str | None):
        if self.size == 1:
            return x
        from mpi4py import MPI
        mpi_op = _mpi_op(op)
        if isinstance(x, np.ndarray):
            out = np.ascontiguousarray(x).copy()
            with self._trace(f"all_reduce_{op}", tag, 2 * out.nbytes * (self.size - 1) // self.size):
                self.comm.Allreduce(MPI.IN_PLACE, out, op=mpi_op)
            return out
        with self._trace(f"all_reduce_{op}", tag, 8):
            return self.comm.allreduce(x, op=mpi_op)

    def reduce(self, x: np.ndarray, root: int = 0, op: str = "sum", tag: str | None = None) -> np.ndarray | None:
        """A NumPy array reduced with ``op`` (sum, max, min) over the ranks, on ``root`` (None elsewhere): the
        rank-order sum of MPI_Reduce, and no copy of the result on the other ranks."""
        x = np.ascontiguousarray(x)
        if self.size == 1:
            return x
        mpi_op = _mpi_op(op)
        out = np.empty_like(x) if self.rank == root else None
        with self._trace(f"reduce_{op}", tag, x.nbytes if self.rank != root else 0):
            self.comm.Reduce(x, out, op=mpi_op, root=root)
        return out

    def gatherv_to_root(self, array: np.ndarray, root: int = 0, tag: str | None = None) -> list[np.ndarray] | None:
        """Every rank's array (any shape, one dtype for all) in rank order on ``root``; None elsewhere."""
        array = np.ascontiguousarray(array)
        if self.size == 1:
            return [array]
        from mpi4py.util.dtlib import from_numpy_dtype
        shapes = self.gather((array.shape, array.dtype.str), root=root, tag=tag)
        if self.rank != root:
            with self._trace("gatherv", tag, array.nbytes):
                self.comm.Gatherv(array.reshape(-1), None, root=root)
            return None
        dtypes = {d for _, d in shapes}
        if len(dtypes) != 1:
            raise ValueError(f"gatherv_to_root on {self.name}: ranks send different dtypes {sorted(dtypes)}")
        counts = [math.prod(s) for s, _ in shapes]
        flat = np.empty(sum(counts), dtype=array.dtype)
        with self._trace("gatherv", tag, 0):
            self.comm.Gatherv(array.reshape(-1), [flat, counts, offsets(counts), from_numpy_dtype(array.dtype)],
                              root=root)
        return [flat[o:o + c].reshape(s) for o, c, (s, _) in zip(offsets(counts), counts, shapes)]

    def alltoallv(self, send: np.ndarray, send_counts: Sequence[int], recv_counts: Sequence[int],
                  tag: str | None = None) -> np.ndarray:
        """Send ``send_counts[r]`` consecutive elements of the flat ``send`` to rank r; returns what
        arrives, ``recv_counts[r]`` elements from rank r, concatenated in rank order."""
        send = np.ascontiguousarray(send).reshape(-1)
        if self.size == 1:
            return send.copy()
        from mpi4py.util.dtlib import from_numpy_dtype
        recv = np.empty(sum(recv_counts), dtype=send.dtype)
        kind = from_numpy_dtype(send.dtype)
        sent = (sum(send_counts) - send_counts[self.rank]) * send.itemsize
        with self._trace("alltoallv", tag, sent):
            self.comm.Alltoallv([send, list(send_counts), offsets(send_counts), kind],
                                [recv, list(recv_counts), offsets(recv_counts), kind])
        return recv

    def bcast(self, obj, root: int = 0, tag: str | None = None):
        """``root``'s picklable object on every rank."""
        if self.size == 1:
            return obj
        with self._trace("bcast", tag, _pickled_size(obj) * (self.size - 1) if self.rank == root else 0):
            return self.comm.bcast(obj, root=root)

    def gather(self, obj, root: int = 0, tag: str | None = None) -> list | None:
        """Every rank's picklable object in rank order on ``root``; None elsewhere."""
        if self.size == 1:
            return [obj]
        with self._trace("gather", tag, _pickled_size(obj) if self.rank != root else 0):
            return self.comm.gather(obj, root=root)

    def allgather(self, obj, tag: str | None = None) -> list:
        """Every rank's picklable object in rank order, on every rank."""
        if self.size == 1:
            return [obj]
        with self._trace("allgather", tag, _pickled_size(obj) * (self.size - 1)):
            return self.comm.allgather(obj)

    def barrier(self, tag: str | None = None) -> None:
        if self.size > 1:
            with self._trace("barrier", tag, 0):
                self.comm.Barrier()

    def split(self, color: int | None, key: int = 0, name: str | None = None):
        """Sub-communicator of the ranks with the same ``color`` (None: this rank joins none and gets
        None); same backend for host data, same tracer. Free it with :meth:`free`."""
        from mpi4py import MPI

        from .comm import MPICommunicator
        sub = self.comm.Split(MPI.UNDEFINED if color is None else color, key)
        if sub == MPI.COMM_NULL:
            return None
        out = MPICommunicator(sub, name or f"{self.name}/{color}", self._tracer_of)
        out._owned = True
        return out

    def free(self) -> None:
        """Release this communicator and, for one made by :meth:`split`, its mpi4py communicator."""
        self.close()
        if getattr(self, "_owned", False):
            self.comm.Free()
            self._owned = False

    def close(self) -> None:
        """Release backend resources (the mpi4py communicator is freed by the grid)."""


def oversubscribed() -> bool:
    """Whether the launcher says this machine runs more ranks than it has cores (HPC_FCN_YIELD=1)."""
    return os.environ.get("HPC_FCN_YIELD", "0").strip() == "1"


def _mpi_op(op: str):
    """mpi4py's reduction for ``op`` (sum, max, min)."""
    from mpi4py import MPI
    return {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}[op]


def _pickled_size(obj) -> int:
    import pickle
    return len(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))

"""The torch.distributed backend of :class:`~hpc_fcn.parallel.comm.Communicator`: NCCL on GPUs, gloo on CPU,
bootstrapped over mpi4py."""
from __future__ import annotations

import datetime
import socket

import torch

from ..accel.device import cuda_device
from .comm import Communicator
from .split import offsets


def _bootstrap_address(comm) -> tuple[str, bool]:
    """The host other ranks reach rank 0 at: loopback when the whole communicator shares one node."""
    from mpi4py import MPI
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    one_node = comm.allreduce(node.Get_size(), op=MPI.MIN) == comm.Get_size()
    node.Free()
    if one_node:
        return "127.0.0.1", True
    host = socket.gethostname()
    try:
        return socket.gethostbyname(host), False
    except OSError:
        return host, False


class TorchCommunicator(Communicator):
    """torch.distributed process group of this communicator's ranks (NCCL on GPUs, gloo on CPU).

    Bootstrapped over mpi4py: rank 0 opens a TCPStore on a free port and broadcasts its address.
    The process group is constructed directly on that store rather than through
    ``init_process_group``/``new_group``, so any sub-communicator, any number of grids in one
    process and any launcher (MPICH, Open MPI, srun) work without global state or env variables.
    ``device`` is this rank's own device (``cuda:N`` for NCCL); ``timeout_s`` bounds every collective
    of the group and its set-up, so a missing rank fails the job instead of hanging it. The group is
    warmed by one small all-reduce here, so NCCL's lazy communicator set-up (and its memory) happens
    when the grid is built, not inside the first timed step.
    """

    backend_name = "torch"

    def __init__(self, comm, name: str, tracer_of=None, device: str | torch.device = "cpu",
                 timeout_s: float = 600.0):
        super().__init__(comm, name, tracer_of)
        self.pg = None
        self._store = None
        self.device = cuda_device(device)
        self.timeout_s = timeout_s
        if self.size == 1:
            return
        import torch.distributed as dist
        timeout = datetime.timedelta(seconds=timeout_s)
        host, local = _bootstrap_address(comm)
        if self.rank == 0:
            self._store = dist.TCPStore(host if not local else "127.0.0.1", 0, self.size, True,
                                        timeout=timeout, wait_for_workers=False)
            addr = (host, self._store.port)
        else:
            addr = None
        addr = comm.bcast(addr, root=0)
        if self.rank != 0:
            self._store = dist.TCPStore(addr[0], addr[1], self.size, False, timeout=timeout)
        if self.device.type == "cuda":
            opts = dist.ProcessGroupNCCL.Options()
            opts._timeout = timeout
            self.pg = dist.ProcessGroupNCCL(self._store, self.rank, self.size, opts)
        else:
            opts = dist.ProcessGroupGloo._Options()
            opts._timeout = timeout
            opts._devices = [dist.ProcessGroupGloo.create_device(hostname="127.0.0.1" if local else host)]
            self.pg = dist.ProcessGroupGloo(self._store, self.rank, self.size, opts)
        self._allreduce_(torch.zeros(1, device=self.device))  # warm-up: connect now, not in the first step

    def close(self) -> None:
        pg, self.pg = self.pg, None
        if pg is not None and hasattr(pg, "shutdown"):
            try:
                pg.shutdown()
            except Exception:  # noqa: BLE001 - best effort: the group may already be gone
                pass
        self._store = None

    def _on(self, t: torch.Tensor) -> torch.Tensor:
        return t if t.device == self.device else t.to(self.device)

    def _allreduce_(self, buf):
        t = self._on(buf)
        self.pg.allreduce([t]).wait()
        if t is not buf:
            buf.copy_(t)

    def _allgatherv(self, send, counts):
        m = max(counts)
        src = self._on(send)
        if src.numel() < m:
            src = torch.cat([src, src.new_zeros(m - src.numel())])
        outs = [torch.empty(m, dtype=torch.uint8, device=self.device) for _ in counts]
        self.pg.allgather([outs], [src]).wait()
        return torch.cat([o[:c] for o, c in zip(outs, counts)]).to(send.device)

    def _reduce_scatter(self, buf, counts):
        # the process group's reduce-scatter (what dist.reduce_scatter_tensor runs) wants equal pieces:
        # pad each to the largest
        t, m = self._on(buf), max(counts)
        padded = t.new_zeros(self.size * m)
        for r, (o, c) in enumerate(zip(offsets(counts), counts)):
            padded[r * m:r * m + c] = t[o:o + c]
        out = t.new_empty(m)
        self.pg._reduce_scatter_base(out, padded).wait()
        return out[:counts[self.rank]].to(buf.device)

    def _reduce_scatter_sent(self, counts: list[int], itemsize: int) -> int:
        return (self.size - 1) * max(counts) * itemsize  # padded pieces

    def _alltoallv(self, send, send_counts, recv_counts):
        out = torch.empty(sum(recv_counts), dtype=torch.uint8, device=self.device)
        self.pg.alltoall_base(out, self._on(send), recv_counts, send_counts).wait()
        return out.to(send.device)

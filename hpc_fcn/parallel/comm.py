"""Collectives over one communicator, with two interchangeable backends: mpi4py and torch.distributed.

A :class:`Communicator` wraps one mpi4py communicator (one axis of the process grid). Its public
collectives take and return torch tensors of any dtype (complex included: data moves as bytes) and
allow uneven shards. Subclasses implement four raw operations on flat contiguous buffers. Every
collective is timed and its volume recorded through the grid's tracer; ``nbytes`` is what this rank
sends to other ranks in the direct algorithm (all-reduce counted as reduce-scatter + all-gather),
see docs/parallel.md.
"""
from __future__ import annotations

import datetime
import math
import socket
from typing import Callable, Sequence

import numpy as np
import torch

from ..tracing import NULL_TRACER, Tracer
from .split import offsets, split_sizes

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def _from_bytes(b: torch.Tensor, dtype: torch.dtype, shape: Sequence[int]) -> torch.Tensor:
    return b.view(dtype).reshape(tuple(shape))


def _nbytes(shape: Sequence[int], dtype: torch.dtype) -> int:
    return math.prod(shape) * torch.empty((), dtype=dtype).element_size()


class Communicator:
    """Collectives over ``comm`` (an mpi4py communicator) recorded under ``name`` in the tracer.

    Size-1 communicators never communicate: every collective returns its input (or a copy shaped
    like the result), so one code path serves serial and parallel runs.
    """

    backend_name = "base"

    def __init__(self, comm, name: str, tracer_of: Callable[[], Tracer] | None = None):
        self.comm = comm
        self.name = name
        self.size = comm.Get_size()
        self.rank = comm.Get_rank()
        self._tracer_of = tracer_of or (lambda: NULL_TRACER)

    @property
    def tracer(self) -> Tracer:
        return self._tracer_of()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}: rank {self.rank} of {self.size})"

    def __deepcopy__(self, memo) -> "Communicator":
        return self  # a handle on ranks, not data: a copied model talks over the same communicator

    def _trace(self, op: str, tag: str | None, nbytes: int):
        return self.tracer.comm(f"{tag or 'comm'}/{op}@{self.name}", nbytes)

    # ---- public collectives -------------------------------------------------------------------
    def all_reduce(self, x, tag: str | None = None, op: str = "sum"):
        """Sum over ranks of a tensor (fp16/bf16 accumulated in fp32 and cast back), or reduce a NumPy
        array or Python number with ``op`` (sum, max, min) over mpi4py; returns the same kind."""
        if not isinstance(x, torch.Tensor):
            return self._all_reduce_host(x, op, tag)
        if op != "sum":
            raise ValueError(f"all_reduce of a tensor sums; {op!r} is for host values")
        if self.size == 1:
            return x
        acc = x.float() if x.dtype in _LOW_PRECISION else x
        buf = acc.contiguous().clone() if acc is x else acc.contiguous()
        if buf.is_complex():
            buf = torch.view_as_real(buf)
        n = buf.numel() * buf.element_size()
        with self._trace("all_reduce", tag, 2 * n * (self.size - 1) // self.size):
            self._allreduce_(buf.reshape(-1))
        if x.is_complex():
            buf = torch.view_as_complex(buf)
        return buf.to(x.dtype).reshape(x.shape)

    def all_reduce_grads(self, params: Sequence[torch.nn.Parameter], scale: float = 1.0, tag: str = "grad") -> None:
        """Sum the gradients of ``params`` over the ranks, times ``scale``, in one flat bucket (one message
        instead of one per parameter); a missing gradient counts as zeros."""
        if self.size == 1 or not params:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = self.all_reduce(torch.cat([p.grad.detach().reshape(-1) for p in params]), tag=tag)
        if scale != 1.0:
            flat = flat * scale
        offset = 0
        for p in params:
            p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
            offset += p.numel()

    def all_gather(self, x: torch.Tensor, dim: int, sizes: Sequence[int] | None = None,
                   tag: str | None = None) -> torch.Tensor:
        """Concatenate every rank's ``x`` along ``dim``; ``sizes[r]`` is rank r's length there."""
        dim = dim % x.dim()
        sizes = list(sizes) if sizes is not None else [x.shape[dim]] * self.size
        self._check_sizes(sizes, x.shape[dim], "all_gather")
        if self.size == 1:
            return x
        front = x.movedim(dim, 0)
        rest = tuple(front.shape[1:])
        row = _nbytes(rest, x.dtype)
        counts = [s * row for s in sizes]
        with self._trace("all_gather", tag, counts[self.rank] * (self.size - 1)):
            out = self._allgatherv(_as_bytes(front), counts)
        full = _from_bytes(out, x.dtype, (sum(sizes),) + rest)
        return full.movedim(0, dim).contiguous()

    def reduce_scatter(self, x: torch.Tensor, dim: int, sizes: Sequence[int] | None = None,
                       tag: str | None = None) -> torch.Tensor:
        """Sum over ranks, then keep this rank's piece of ``dim`` (``sizes`` as in all_gather)."""
        dim = dim % x.dim()
        n = x.shape[dim]
        sizes = list(sizes) if sizes is not None else split_sizes(n, self.size, f"dimension {dim}")
        if sum(sizes) != n or len(sizes) != self.size:
            raise ValueError(f"reduce_scatter on {self.name}: sizes {sizes} do not split a dimension of {n}")
        if self.size == 1:
            return x
        acc = x.float() if x.dtype in _LOW_PRECISION else x
        front = acc.movedim(dim, 0).contiguous()
        if front.is_complex():
            front = torch.view_as_real(front)
        rest = tuple(front.shape[1:])
        row = math.prod(rest)
        counts = [s * row for s in sizes]
        with self._trace("reduce_scatter", tag, self._reduce_scatter_sent(counts, front.element_size())):
            out = self._reduce_scatter(front.reshape(-1), counts)
        out = out.reshape((sizes[self.rank],) + rest)
        if x.is_complex():
            out = torch.view_as_complex(out)
        return out.to(x.dtype).movedim(0, dim).contiguous()

    def all_to_all(self, x: torch.Tensor, scatter_dim: int, gather_dim: int, scatter_sizes: Sequence[int],
                   gather_sizes: Sequence[int], tag: str | None = None) -> torch.Tensor:
        """Send piece r of ``scatter_dim`` to rank r; concatenate what arrives along ``gather_dim``.

        ``scatter_sizes`` splits this rank's ``scatter_dim``; ``gather_sizes[r]`` is rank r's length
        of ``gather_dim`` (this rank's own entry must equal ``x.shape[gather_dim]``).
        """
        sd, gd = scatter_dim % x.dim(), gather_dim % x.dim()
        if sd == gd:
            raise ValueError("all_to_all needs two different dimensions")
        scatter_sizes, gather_sizes = list(scatter_sizes), list(gather_sizes)
        if sum(scatter_sizes) != x.shape[sd] or len(scatter_sizes) != self.size:
            raise ValueError(f"all_to_all on {self.name}: scatter sizes {scatter_sizes} do not split "
                             f"dimension {sd} of size {x.shape[sd]} over {self.size} ranks")
        self._check_sizes(gather_sizes, x.shape[gd], "all_to_all")
        if self.size == 1:
            return x
        offs = offsets(scatter_sizes)
        send = torch.cat([_as_bytes(x.narrow(sd, o, s)) for o, s in zip(offs, scatter_sizes)])
        shape = list(x.shape)
        shape[sd] = scatter_sizes[self.rank]
        recv_shapes = []
        for g in gather_sizes:
            shape[gd] = g
            recv_shapes.append(tuple(shape))
        item = x.element_size()
        send_counts = [send.numel() // max(x.shape[sd], 1) * s for s in scatter_sizes]
        recv_counts = [math.prod(s) * item for s in recv_shapes]
        with self._trace("all_to_all", tag, sum(send_counts) - send_counts[self.rank]):
            out = self._alltoallv(send, send_counts, recv_counts)
        pieces = [_from_bytes(p, x.dtype, s) for p, s in zip(torch.split(out, recv_counts), recv_shapes)]
        return torch.cat(pieces, dim=gd)

    # ---- host data: NumPy arrays and picklable objects, always over mpi4py -----------------------
    def _all_reduce_host(self, x, op: str, tag: str | None):
        if self.size == 1:
            return x
        from mpi4py import MPI
        mpi_op = {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}[op]
        if isinstance(x, np.ndarray):
            out = np.ascontiguousarray(x).copy()
            with self._trace(f"all_reduce_{op}", tag, 2 * out.nbytes * (self.size - 1) // self.size):
                self.comm.Allreduce(MPI.IN_PLACE, out, op=mpi_op)
            return out
        with self._trace(f"all_reduce_{op}", tag, 8):
            return self.comm.allreduce(x, op=mpi_op)

    def gatherv_to_root(self, array: np.ndarray, root: int = 0, tag: str | None = None) -> list[np.ndarray] | None:
        """Every rank's array (any shape, one dtype for all) in rank order on ``root``; None elsewhere."""
        array = np.ascontiguousarray(array)
        if self.size == 1:
            return [array]
        from mpi4py.util.dtlib import from_numpy_dtype
        shapes = self.comm.gather((array.shape, array.dtype.str), root=root)
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

    def split(self, color: int | None, key: int = 0, name: str | None = None) -> "Communicator | None":
        """Sub-communicator of the ranks with the same ``color`` (None: this rank joins none and gets
        None); same backend for host data, same tracer. Free it with :meth:`free`."""
        from mpi4py import MPI
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

    # ---- helpers and the raw operations a backend provides ------------------------------------
    def _check_sizes(self, sizes: Sequence[int], own: int, op: str) -> None:
        if len(sizes) != self.size:
            raise ValueError(f"{op} on {self.name}: {len(sizes)} sizes for {self.size} ranks")
        if sizes[self.rank] != own:
            raise ValueError(f"{op} on {self.name}: rank {self.rank} holds {own} but sizes say {sizes[self.rank]}")

    def _allreduce_(self, buf: torch.Tensor) -> None:
        raise NotImplementedError

    def _allgatherv(self, send: torch.Tensor, counts: list[int]) -> torch.Tensor:
        raise NotImplementedError

    def _reduce_scatter(self, buf: torch.Tensor, counts: list[int]) -> torch.Tensor:
        raise NotImplementedError

    def _reduce_scatter_sent(self, counts: list[int], itemsize: int) -> int:
        """Bytes this rank sends in one reduce-scatter of pieces ``counts`` (direct algorithm)."""
        return (sum(counts) - counts[self.rank]) * itemsize

    def _alltoallv(self, send: torch.Tensor, send_counts: list[int], recv_counts: list[int]) -> torch.Tensor:
        raise NotImplementedError


def _pickled_size(obj) -> int:
    import pickle
    return len(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def mpi_cuda_aware() -> bool:
    """Whether the MPI library says it can read and write CUDA device memory."""
    from mpi4py import MPI
    query = getattr(MPI, "Query_cuda_support", None)
    try:
        return bool(query()) if query else False
    except Exception:  # noqa: BLE001 - an MPI without the extension simply is not CUDA-aware
        return False


class MPICommunicator(Communicator):
    """mpi4py buffer collectives; device tensors go directly when MPI is CUDA-aware, else via host."""

    backend_name = "mpi"

    def __init__(self, comm, name: str, tracer_of=None):
        super().__init__(comm, name, tracer_of)
        self._cuda_aware = mpi_cuda_aware()

    def _host(self, t: torch.Tensor):
        """(buffer mpi4py can use, tensor to copy results back into or None)."""
        if t.device.type == "cpu":
            return t.numpy(), None
        if self._cuda_aware:
            torch.cuda.current_stream(t.device).synchronize()
            return t, None
        h = t.cpu()
        return h.numpy(), h

    def _allreduce_(self, buf):
        from mpi4py import MPI
        arr, staged = self._host(buf)
        self.comm.Allreduce(MPI.IN_PLACE, arr, op=MPI.SUM)
        if staged is not None:
            buf.copy_(staged)

    def _allgatherv(self, send, counts):
        from mpi4py import MPI
        out = torch.empty(sum(counts), dtype=torch.uint8, device=send.device)
        s, _ = self._host(send)
        r, staged = self._host(out)
        self.comm.Allgatherv([s, MPI.BYTE], [r, counts, offsets(counts), MPI.BYTE])
        return out.copy_(staged) if staged is not None else out

    def _reduce_scatter(self, buf, counts):
        from mpi4py import MPI
        out = torch.empty(counts[self.rank], dtype=buf.dtype, device=buf.device)
        s, _ = self._host(buf)
        r, staged = self._host(out)
        self.comm.Reduce_scatter(s, r, counts, op=MPI.SUM)
        return out.copy_(staged) if staged is not None else out

    def _alltoallv(self, send, send_counts, recv_counts):
        from mpi4py import MPI
        out = torch.empty(sum(recv_counts), dtype=torch.uint8, device=send.device)
        s, _ = self._host(send)
        r, staged = self._host(out)
        self.comm.Alltoallv([s, send_counts, offsets(send_counts), MPI.BYTE],
                            [r, recv_counts, offsets(recv_counts), MPI.BYTE])
        return out.copy_(staged) if staged is not None else out


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


def cuda_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device; a CUDA device must carry its index (one GPU per rank, named)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        raise ValueError("a CUDA device must be indexed, e.g. torch.device('cuda:0') for local rank 0 "
                         "(call torch.cuda.set_device(local_rank) and pass that device), not bare 'cuda'")
    return device


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


BACKENDS = {"mpi": MPICommunicator, "torch": TorchCommunicator}


def make_communicator(backend: str, comm, name: str, tracer_of=None, device: str | torch.device = "cpu",
                      timeout_s: float = 600.0) -> Communicator:
    if backend not in BACKENDS:
        raise ValueError(f"unknown communication backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if backend == "torch":
        return TorchCommunicator(comm, name, tracer_of, device=device, timeout_s=timeout_s)
    return MPICommunicator(comm, name, tracer_of)

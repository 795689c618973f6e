"""Collectives over one communicator, with two interchangeable backends: mpi4py and torch.distributed.

A :class:`Communicator` wraps one mpi4py communicator (one axis of the process grid). It has the host-data
collectives of :class:`~hpc_fcn.parallel.host.HostComm`; its tensor collectives take and return torch tensors of any dtype (complex included: data moves as bytes) and
allow uneven shards. Subclasses implement four raw operations on flat contiguous buffers. Every
collective is timed and its volume recorded through the grid's tracer; ``nbytes`` is what this rank
sends to other ranks in the direct algorithm (all-reduce counted as reduce-scatter + all-gather),
see docs/parallel.md.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .host import HostComm
from .split import offsets, split_sizes

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def _from_bytes(b: torch.Tensor, dtype: torch.dtype, shape: Sequence[int]) -> torch.Tensor:
    return b.view(dtype).reshape(tuple(shape))


def _nbytes(shape: Sequence[int], dtype: torch.dtype) -> int:
    return math.prod(shape) * torch.empty((), dtype=dtype).element_size()


class Communicator(HostComm):
    """Tensor and host-data collectives over ``comm`` (an mpi4py communicator) recorded under ``name``.

    Size-1 communicators never communicate: every collective returns its input (or a copy shaped
    like the result), so one code path serves serial and parallel runs.
    """

    backend_name = "base"

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


BACKENDS = ("mpi", "torch")


def make_communicator(backend: str, comm, name: str, tracer_of=None, device: str | torch.device = "cpu",
                      timeout_s: float = 600.0) -> Communicator:
    """The Communicator of ``backend`` (mpi: mpi4py buffers; torch: a torch.distributed process group)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown communication backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if backend == "torch":
        from .torch_comm import TorchCommunicator
        return TorchCommunicator(comm, name, tracer_of, device=device, timeout_s=timeout_s)
    return MPICommunicator(comm, name, tracer_of)

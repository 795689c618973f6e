"""CUDA graphs: capture one forward pass per input shape into static buffers and replay it.

Warm-up runs on a side stream (as capture requires: lazy initialisation, cuBLAS/cuFFT plans and
NCCL communicators must exist before capture), the allocator's cache is emptied (the graph's private
pool cannot reuse the warm-up's cached blocks), then one capture; ``__call__`` copies the input
into the static buffer, replays, and returns a clone of the static output. Collectives captured
this way must be NCCL (torch backend); MPI calls run on the host and cannot be captured.
"""
from __future__ import annotations

from typing import Callable

import torch

from .device import AccelError

WARMUP_ITERS = 3


def check_cuda_graphs(device: torch.device, grid=None) -> None:
    """Refuse CUDA graphs on CPU, and with MPI collectives (they cannot be captured)."""
    if device.type != "cuda":
        raise AccelError("inference.cuda_graphs=true needs a CUDA GPU (this run is on the CPU); set cuda_graphs: false")
    shape = getattr(grid, "shape", {}) if grid is not None else {}
    model_ranks = shape.get("h", 1) * shape.get("w", 1) * shape.get("matmul", 1)
    if model_ranks > 1 and getattr(grid, "backend", "mpi") != "torch":
        raise AccelError("inference.cuda_graphs=true with parallel.backend=mpi: MPI collectives cannot be captured "
                         "in a CUDA graph; use parallel.backend: torch (NCCL) or cuda_graphs: false")


class GraphedStep:
    """A CUDA-graph replay of ``fn`` (one graph per input shapes and dtypes, captured on first use).

    ``fn`` takes one or more tensors (a stochastic model's step also takes its noise); each is copied
    into its static buffer before the replay.
    """

    def __init__(self, fn: Callable[..., torch.Tensor], context: Callable[[], object] | None = None):
        self.fn = fn
        self.context = context  # e.g. the autocast context, entered during warm-up and capture
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, tuple[torch.Tensor, ...], torch.Tensor]] = {}
        self.pool = None  # one memory pool shared by every captured shape

    def _run(self, xs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        if self.context is None:
            return self.fn(*xs)
        with self.context():
            return self.fn(*xs)

    def _capture(self, xs: tuple[torch.Tensor, ...]):
        if not all(x.is_cuda for x in xs):
            raise AccelError("CUDA graph replay needs its inputs on the GPU")
        device = xs[0].device
        static_in = tuple(x.clone() for x in xs)
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_ITERS):
                self._run(static_in)
        torch.cuda.current_stream(device).wait_stream(side)
        # The warm-up's activations sit in the allocator's cache; the graph's private pool cannot reuse them.
        # Hand them back so that capture finds the memory the pass size was computed for.
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        graph = torch.cuda.CUDAGraph()
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        with torch.cuda.graph(graph, pool=self.pool):
            static_out = self._run(static_in)
        return graph, static_in, static_out

    def __call__(self, *xs: torch.Tensor) -> torch.Tensor:
        key = tuple((tuple(x.shape), x.dtype, x.device) for x in xs)
        entry = self.graphs.get(key)
        if entry is None:
            entry = self.graphs[key] = self._capture(xs)
        graph, static_in, static_out = entry
        for buf, x in zip(static_in, xs):
            buf.copy_(x)
        graph.replay()
        return static_out.clone()

"""The process grid ``ensemble x h x w x matmul`` (row-major, matmul fastest) and its communicators.

One :class:`ProcessGrid` is built from a communicator with ``Split`` and passed explicitly. Each
axis is a :class:`~hpc_fcn.parallel.comm.Communicator` with ``.size``, ``.rank``, ``.comm`` (mpi4py)
and the collectives of the chosen backend. Two derived groups serve the model: ``model`` (h x w x
matmul of one ensemble group) and ``spatial`` (h x w of one ensemble group and matmul index; its
rank is ``h.rank * w.size + w.rank``).
"""
from __future__ import annotations

from typing import Literal

import torch

from ..tracing import Tracer
from ..model.config import pair, token_grid
from ..accel.device import cuda_device
from .comm import Communicator, make_communicator
from .layout import AXES, check_layout, check_model_layout
from .split import shard_range, split_sizes


class ProcessGrid:
    """Ranks of ``comm`` arranged as ensemble x h x w x matmul, one communicator per axis."""

    def __init__(self, comm=None, *, ensemble: int | Literal["auto"] = "auto", h: int = 1, w: int = 1,
                 matmul: int = 1, backend: Literal["mpi", "torch"] = "mpi", tracer: Tracer | None = None,
                 device=None, timeout_s: float = 600.0):
        """``device``: this rank's device (``torch.device("cuda:N")``, never bare "cuda"); None = the
        current CUDA device for the torch backend when a GPU is visible, else the CPU. ``timeout_s``
        bounds the torch backend's set-up and each of its collectives (a lost rank fails, never hangs)."""
        from mpi4py import MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.backend = backend
        world = self.comm.Get_size()
        ens = check_layout(world, ensemble, h, w, matmul)
        self.shape = {"ensemble": ens, "h": h, "w": w, "matmul": matmul}
        self.rank = self.comm.Get_rank()
        r = self.rank
        model = h * w * matmul
        self.coords = {"ensemble": r // model, "h": (r // (w * matmul)) % h, "w": (r // matmul) % w,
                       "matmul": r % matmul}
        self._tracer = tracer if tracer is not None else Tracer(enabled=False, rank=r)
        if device is None:
            device = (torch.device("cuda", torch.cuda.current_device())
                      if backend == "torch" and torch.cuda.is_available() else torch.device("cpu"))
        self.device = cuda_device(device)
        c = self.coords
        stride = {"ensemble": model, "h": w * matmul, "w": matmul, "matmul": 1}
        self._mpi_comms = []
        groups: dict[str, tuple[int, int]] = {}
        for axis in AXES:  # color: the rank with this axis' coordinate zeroed; key: the coordinate
            groups[axis] = (r - c[axis] * stride[axis], c[axis])
        groups["model"] = (c["ensemble"], r % model)
        groups["spatial"] = (c["ensemble"] * matmul + c["matmul"], c["h"] * w + c["w"])
        self._axes: dict[str, Communicator] = {}
        for name, (color, key) in groups.items():
            sub = self.comm.Split(color, key)
            self._mpi_comms.append(sub)
            self._axes[name] = make_communicator(backend, sub, name, lambda: self._tracer, device=self.device,
                                                 timeout_s=timeout_s)
        self.world = make_communicator("mpi", self.comm, "world", lambda: self._tracer)

    @classmethod
    def from_config(cls, cfg, comm=None, tracer: Tracer | None = None, device=None,
                    timeout_s: float = 600.0) -> "ProcessGrid":
        """Build from a :class:`hpc_fcn.schema.ParallelConfig`."""
        return cls(comm, ensemble=cfg.ensemble, h=cfg.h, w=cfg.w, matmul=cfg.matmul, backend=cfg.backend,
                   tracer=tracer, device=device, timeout_s=timeout_s)

    # ---- axes ---------------------------------------------------------------------------------
    @property
    def ensemble(self) -> Communicator:
        return self._axes["ensemble"]

    @property
    def h(self) -> Communicator:
        return self._axes["h"]

    @property
    def w(self) -> Communicator:
        return self._axes["w"]

    @property
    def matmul(self) -> Communicator:
        return self._axes["matmul"]

    @property
    def model(self) -> Communicator:
        """h x w x matmul of this rank's ensemble group."""
        return self._axes["model"]

    @property
    def spatial(self) -> Communicator:
        """h x w of this rank's ensemble group and matmul index (rank = h.rank * w.size + w.rank)."""
        return self._axes["spatial"]

    def axis(self, name: str) -> Communicator:
        return self._axes[name]

    @property
    def tracer(self) -> Tracer:
        return self._tracer

    @tracer.setter
    def tracer(self, t: Tracer) -> None:
        self._tracer = t

    @property
    def size(self) -> int:
        return self.comm.Get_size()

    def __repr__(self) -> str:
        s = " x ".join(f"{a}={self.shape[a]}" for a in AXES)
        return f"ProcessGrid({s}, backend={self.backend}, rank {self.rank} at {self.coords})"

    # ---- model geometry -----------------------------------------------------------------------
    def validate_model(self, img_size, patch_size, embed_dim: int, num_blocks: int, mlp_hidden: int) -> None:
        """Raise ConfigError when the model cannot be split over this grid."""
        check_model_layout(self.shape["h"], self.shape["w"], self.shape["matmul"], img_size, patch_size,
                           embed_dim, num_blocks, mlp_hidden)

    def token_window(self, img_size, patch_size) -> tuple[slice, slice]:
        """Token rows and columns this rank holds (balanced split over h and w)."""
        H, W = token_grid(img_size, patch_size)
        r0, r1 = shard_range(H, self.shape["h"], self.coords["h"], "token grid's rows")
        c0, c1 = shard_range(W, self.shape["w"], self.coords["w"], "token grid's columns")
        return slice(r0, r1), slice(c0, c1)

    def local_window(self, img_size, patch_size) -> tuple[slice, slice]:
        """Pixel rows and columns of the model grid this rank holds (whole patches)."""
        (p1, p2) = pair(patch_size)
        rows, cols = self.token_window(img_size, patch_size)
        return slice(rows.start * p1, rows.stop * p1), slice(cols.start * p2, cols.stop * p2)

    def window_sizes(self, img_size, patch_size) -> tuple[list[int], list[int]]:
        """Pixel rows of the model grid held by each rank of h, and columns by each rank of w."""
        H, W = token_grid(img_size, patch_size)
        p1, p2 = pair(patch_size)
        return ([n * p1 for n in split_sizes(H, self.shape["h"], "token grid's rows")],
                [n * p2 for n in split_sizes(W, self.shape["w"], "token grid's columns")])

    # ---- lifetime -----------------------------------------------------------------------------
    def close(self) -> None:
        """Release process groups and communicators (call on every rank of the grid)."""
        for ax in self._axes.values():
            ax.close()
        self._axes = {}
        for c in self._mpi_comms:
            c.Free()
        self._mpi_comms = []

    def __enter__(self) -> "ProcessGrid":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

"""What training needs from the process grid: the data-parallel and model-parallel groups and the window.

``data`` links ranks that hold the same model shard and see different samples (the grid's ensemble
axis); ``model`` links the ranks that share one copy of the model (h x w x matmul). ``rows``/``cols``
are this rank's window of the model grid in pixels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..parallel.grid import ProcessGrid


@dataclass
class Topology:
    grid: ProcessGrid
    rows: slice
    cols: slice

    @property
    def world(self):
        """The Communicator of every rank."""
        return self.grid.world

    @property
    def rank(self) -> int:
        return self.grid.rank

    @property
    def data(self) -> Any:
        """Communicator (hpc_fcn.parallel.comm) of the data-parallel axis."""
        return self.grid.ensemble

    @property
    def model(self) -> Any:
        """Communicator of the ranks sharing one model copy (h x w x matmul)."""
        return self.grid.model

    @property
    def data_rank(self) -> int:
        return self.grid.ensemble.rank

    @property
    def data_size(self) -> int:
        return self.grid.ensemble.size

    @property
    def loss_copies(self) -> int:
        """Ranks that compute the same partial loss: the matmul axis replicates the output window."""
        return self.grid.matmul.size

    @property
    def model_parallel(self) -> bool:
        return self.grid.model.size > 1

    def allreduce_sum(self, value: float) -> float:
        """The global sum of per-rank partial values (loss sums), each window counted once."""
        return self.world.all_reduce(float(value), tag="loss") / self.loss_copies

    def layout(self) -> str:
        s = self.grid.shape
        return f"ensemble={s['ensemble']} x h={s['h']} x w={s['w']} x matmul={s['matmul']}"


def build_topology(comm, parallel_cfg, model_cfg, device: str | None = None) -> Topology:
    """The process grid of ``parallel_cfg`` on ``comm``, checked against the model's shape."""
    grid = ProcessGrid(comm, ensemble=parallel_cfg.ensemble, h=parallel_cfg.h, w=parallel_cfg.w,
                       matmul=parallel_cfg.matmul, backend=parallel_cfg.backend, device=device)
    grid.validate_model(model_cfg.img_size, model_cfg.patch_size, model_cfg.embed_dim, model_cfg.num_blocks,
                        int(model_cfg.embed_dim * model_cfg.mlp_ratio))
    rows, cols = grid.local_window(model_cfg.img_size, model_cfg.patch_size)
    return Topology(grid, rows, cols)

"""A process-grid layout ``ensemble x h x w x matmul`` and the constraints the grid enforces on it."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Layout:
    ensemble: int = 1
    h: int = 1
    w: int = 1
    matmul: int = 1

    @property
    def ranks(self) -> int:
        return self.ensemble * self.h * self.w * self.matmul

    @property
    def model_ranks(self) -> int:
        return self.h * self.w * self.matmul

    def as_dict(self) -> dict:
        return {"ensemble": self.ensemble, "h": self.h, "w": self.w, "matmul": self.matmul}

    @classmethod
    def of(cls, value) -> "Layout":
        """From a Layout, a dict (ensemble=, h=, w=, matmul=) or an 'e,h,w,m' string."""
        if isinstance(value, Layout):
            return value
        if value is None:
            return cls()
        if isinstance(value, str):
            parts = [int(p) for p in value.split(",")]
            if len(parts) != 4:
                raise ValueError(f"layout '{value}' must be four integers e,h,w,m")
            return cls(*parts)
        unknown = set(value) - {"ensemble", "h", "w", "matmul"}
        if unknown:
            raise ValueError(f"unknown layout key '{sorted(unknown)[0]}' (use ensemble, h, w, matmul)")
        return cls(int(value.get("ensemble", 1)), int(value.get("h", 1)), int(value.get("w", 1)),
                   int(value.get("matmul", 1)))


def layout_problem(lay: Layout, net, members: int | None = None) -> str | None:
    """Why ``lay`` cannot run ``net`` (the checks of hpc_fcn.parallel.grid.check_model_layout), or None."""
    if min(lay.ensemble, lay.h, lay.w, lay.matmul) < 1:
        return "every axis needs at least one rank"
    if lay.h > net.H:
        return f"h={lay.h} exceeds the {net.H} token rows"
    if lay.w > net.W:
        return f"w={lay.w} exceeds the {net.W} token columns"
    if lay.w > 1 and net.H // lay.h < lay.w:
        return f"w={lay.w} exceeds the {net.H // lay.h} token rows per h-shard"
    if lay.h * lay.w > net.Wf:
        return f"h x w = {lay.h * lay.w} exceeds the {net.Wf} rfft columns"
    if net.nb % lay.matmul:
        return f"matmul={lay.matmul} does not divide num_blocks={net.nb}"
    if net.F % lay.matmul:
        return f"matmul={lay.matmul} does not divide the MLP hidden width {net.F}"
    if members is not None and lay.ensemble > members:
        return f"ensemble={lay.ensemble} exceeds the {members} members"
    return None

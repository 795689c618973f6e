"""The process-grid layout ``ensemble x h x w x matmul`` and every rule that limits it (one place).

Used by the grid (which raises :class:`~hpc_fcn.config.ConfigError` naming the config key), by the
performance model and the job generator (which skip layouts that cannot run, see
:func:`layout_problem`). The model's shapes come from :class:`hpc_fcn.model.config.ModelShape`.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config import ConfigError
from ..model.config import ModelShape, block_size
from .split import split_sizes

AXES = ("ensemble", "h", "w", "matmul")


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
        unknown = set(value) - set(AXES)
        if unknown:
            raise ValueError(f"unknown layout key '{sorted(unknown)[0]}' (use ensemble, h, w, matmul)")
        return cls(int(value.get("ensemble", 1)), int(value.get("h", 1)), int(value.get("w", 1)),
                   int(value.get("matmul", 1)))


def check_layout(world_size: int, ensemble: int | str, h: int, w: int, matmul: int) -> int:
    """Validate the axis sizes against the number of ranks; returns the ensemble size."""
    for name, v in (("h", h), ("w", w), ("matmul", matmul)):
        if not isinstance(v, int) or v < 1:
            raise ConfigError(f"config key 'parallel.{name}': must be an integer >= 1, got {v!r}")
    model = h * w * matmul
    if ensemble == "auto":
        if world_size % model:
            raise ConfigError(f"config key 'parallel': h x w x matmul = {h} x {w} x {matmul} = {model} "
                              f"does not divide the {world_size} MPI ranks")
        return world_size // model
    if not isinstance(ensemble, int) or ensemble < 1:
        raise ConfigError(f"config key 'parallel.ensemble': must be an integer >= 1 or 'auto', got {ensemble!r}")
    if ensemble * model != world_size:
        raise ConfigError(f"config key 'parallel': ensemble x h x w x matmul = {ensemble} x {h} x {w} x {matmul} "
                          f"= {ensemble * model} but the job has {world_size} MPI ranks")
    return ensemble


def model_layout_problem(h: int, w: int, matmul: int, shape: ModelShape) -> tuple[str, str] | None:
    """(config key, why) when the model of ``shape`` cannot be split over h x w x matmul, else None."""
    H, W = shape.tokens
    if h > H:
        return "parallel.h", (f"{h} ranks exceed the {H} token rows (img_size {shape.img[0]} / patch "
                              f"{shape.patch[0]}); use at most {H}")
    if w > W:
        return "parallel.w", (f"{w} ranks exceed the {W} token columns (img_size {shape.img[1]} / patch "
                              f"{shape.patch[1]}); use at most {W}")
    if w > 1 and min(split_sizes(H, h)) < w:
        rows = min(split_sizes(H, h))
        return "parallel.w", (f"the distributed FFT splits each rank's {rows} token rows over the {w} w-ranks; "
                              f"use w <= {rows}")
    if h * w > shape.Wf:
        return "parallel", (f"h x w = {h * w} exceeds the {shape.Wf} rfft columns over which the spectral "
                            f"modes are split; use h x w <= {shape.Wf}")
    if shape.num_blocks % matmul:
        return "parallel.matmul", (f"{matmul} does not divide num_blocks={shape.num_blocks} "
                                   f"(AFNO blocks are sharded whole over matmul)")
    if shape.mlp_hidden % matmul:
        return "parallel.matmul", f"{matmul} does not divide the MLP hidden width {shape.mlp_hidden}"
    return None


def check_model_layout(h: int, w: int, matmul: int, img_size, patch_size, embed_dim: int,
                       num_blocks: int, mlp_hidden: int) -> None:
    """Raise ConfigError when the model cannot be split over h x w x matmul (see docs/parallel.md)."""
    try:
        block_size(embed_dim, num_blocks)
    except ValueError as exc:
        raise ConfigError(f"config key 'model.num_blocks': {exc}") from None
    try:
        shape = ModelShape.of(dict(img_size=img_size, patch_size=patch_size, embed_dim=embed_dim,
                                   num_blocks=num_blocks))
    except ValueError as exc:
        raise ConfigError(f"config key 'model.img_size': {exc}") from None
    problem = model_layout_problem(h, w, matmul, shape if mlp_hidden == shape.mlp_hidden else
                                   ModelShape(**{**shape.__dict__, "mlp_hidden": mlp_hidden}))
    if problem:
        raise ConfigError(f"config key '{problem[0]}': {problem[1]}")


def layout_problem(lay: Layout, shape: ModelShape, members: int | None = None) -> str | None:
    """Why ``lay`` cannot run the model of ``shape`` (with ``members`` members), or None."""
    if min(lay.ensemble, lay.h, lay.w, lay.matmul) < 1:
        return "every axis needs at least one rank"
    problem = model_layout_problem(lay.h, lay.w, lay.matmul, shape)
    if problem:
        return f"{problem[0].split('.')[-1]}: {problem[1]}"
    if members is not None and lay.ensemble > members:
        return f"ensemble={lay.ensemble} exceeds the {members} members"
    return None

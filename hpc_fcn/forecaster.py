"""The one object the ensemble application steps the model with: options of ``InferenceConfig`` applied.

``Forecaster(model, cfg)`` takes a serial ``AFNONet`` or a ``DistributedAFNONet`` already on its device
and runs 6-hour steps of a batch of members in normalised units (the local window under a spatial
decomposition), ``members_per_pass`` at a time, returning fp32. The caller's model is never modified:
quantisation and compilation work on a copy (weights shared where nothing changes them).
"""
from __future__ import annotations

import contextlib
import copy
import time
from typing import Callable

import torch
import torch.nn as nn

from .accel import (AccelError, FusedAFNONet, GraphedStep, auto_members_per_pass, autocast, check_compile,
                    check_cuda_graphs, check_precision, check_quantize, compile_dense_submodules, compile_fused,
                    describe_device, pass_size, quantize_model)
from .accel.precision import precision_note
from .model.afnonet import AFNONet
from .tracing import NULL_TRACER, Tracer


def _model_device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


class Forecaster:
    """Steps a batch of members one model step at a time with the configured speed options."""

    def __init__(self, model: nn.Module, inference_cfg, *, grid=None, tracer: Tracer | None = None, slots=None):
        cfg = inference_cfg
        self.cfg = cfg
        self.grid = grid if grid is not None else getattr(model, "grid", None)
        self.tracer = tracer or (getattr(self.grid, "tracer", None) if self.grid is not None else None) or NULL_TRACER
        self.device = _model_device(model)
        if self.tracer.enabled:
            self.tracer.bind_device(self.device)  # GPU regions are timed with CUDA events, not host clocks
        if cfg.device != "auto" and cfg.device != self.device.type:
            raise AccelError(f"inference.device={cfg.device} but the model is on {self.device}: move it there first "
                             f"(hpc_fcn.setup.rank_device gives the device)")
        self.autocast_dtype = check_precision(cfg.precision, self.device)
        check_quantize(cfg.quantize, self.device)
        if cfg.compile:
            check_compile(self.device)
        if cfg.cuda_graphs:
            check_cuda_graphs(self.device, self.grid)
        self.in_chans = int(getattr(model, "in_chans"))
        self.noise_dim = int(getattr(model, "noise_dim", 0))  # > 0: a stochastic model (step takes noise)
        net = model
        if cfg.quantize != "none" or (cfg.compile and not isinstance(model, AFNONet)):
            memo = {id(self.grid): self.grid} if self.grid is not None else {}
            net = copy.deepcopy(model, memo)
        net.eval()
        self.quantized = quantize_model(net, cfg.quantize)
        self.serial = isinstance(net, AFNONet)
        self.compiled: list[str] = []
        if self.serial:
            self.runner: nn.Module = FusedAFNONet(net)
            if cfg.compile:
                compile_fused(self.runner)
                self.compiled = ["embed", "spectral GEMMs", "block tails", "head"]
        else:
            self.runner = net
            if cfg.compile:
                self.compiled = compile_dense_submodules(net)
        self.runner.eval()
        if slots is not None and not self.serial:  # a split model's pass waits on other ranks: it could deadlock
            raise ValueError("compute slots need an unsplit model (parallel.h = w = matmul = 1)")
        self.slots = slots  # hpc_fcn.parallel.slots.ComputeSlots held around each pass (None: none)
        # The most members one pass may carry (0: from free memory on the first step), and the size the
        # last step's passes had: its members spread equally over the fewest passes within the limit.
        self.max_members_per_pass = cfg.members_per_pass
        self.members_per_pass = 0
        self._graphed = GraphedStep(self._forward, None) if cfg.cuda_graphs else None
        self.first_pass_seconds: float | None = None  # includes compilation and graph capture

    # ---- construction helpers ----------------------------------------------------------------
    def resolve_members_per_pass(self, x: torch.Tensor) -> int:
        """Pass size for the members ``x``: never more than there are, balanced over the fewest passes."""
        if not self.max_members_per_pass:
            self.max_members_per_pass = auto_members_per_pass(
                self.runner if not self.serial else self.runner.net, self.device, self.cfg.precision,
                cuda_graphs=self._graphed is not None)
        self.members_per_pass = pass_size(x.shape[0], self.max_members_per_pass)
        return self.members_per_pass

    # ---- stepping -----------------------------------------------------------------------------
    def slot(self):
        """A context that holds a compute slot (re-entrant; a no-op without slots): for compute that waits on no
        other rank, as each pass holds one."""
        return self.slots.hold() if self.slots is not None else contextlib.nullcontext()

    def _forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        with autocast(self.device, self.cfg.precision):
            return (self.runner(x) if noise is None else self.runner(x, noise)).float()

    def _pass(self, x: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        if self._graphed is None:
            return self._forward(x, noise)
        n, mpp = x.shape[0], self.members_per_pass
        xs = (x,) if noise is None else (x, noise)
        if n < mpp:  # pad the last pass (fewer members short than there are passes) to the captured size
            xs = tuple(torch.cat([t, t.new_zeros(mpp - n, *t.shape[1:])]) for t in xs)
        return self._graphed(*xs)[:n]

    def step(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """One 6-hour step of members ``x`` (B, C, rows, cols), normalised units; returns fp32 on this device.

        ``noise``: a stochastic model's token noise of these members (B, h, w, noise_dim; see
        :class:`hpc_fcn.ensemble.model_noise.ModelNoise`), None for the deterministic path.
        """
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected members as (B, {self.in_chans}, rows, cols), got {tuple(x.shape)}")
        x = x.to(self.device, torch.float32, non_blocking=True).contiguous()
        if noise is not None:
            if noise.shape[0] != x.shape[0]:
                raise ValueError(f"model noise for {noise.shape[0]} members given with {x.shape[0]} members")
            noise = noise.to(self.device, torch.float32, non_blocking=True).contiguous()
        mpp = self.resolve_members_per_pass(x)
        outs = []
        with torch.no_grad():  # not inference_mode: callers may update the returned state in place
            for s in range(0, x.shape[0], mpp):
                first = self.first_pass_seconds is None
                t0 = time.perf_counter()
                with self.slot(), self.tracer.region("forecaster.pass"):
                    outs.append(self._pass(x[s:s + mpp], None if noise is None else noise[s:s + mpp]))
                if first:
                    if self.device.type == "cuda":
                        torch.cuda.synchronize(self.device)
                    self.first_pass_seconds = time.perf_counter() - t0
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def rollout(self, x: torch.Tensor, steps: int,
                callback: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
        """``steps`` autoregressive steps; ``callback(k, state)`` after step k (1-based); returns the last state."""
        for k in range(1, steps + 1):
            x = self.step(x)
            if callback is not None:
                callback(k, x)
        return x

    def describe(self) -> str:
        c = self.cfg
        kind = (f"AFNONet, fused inference path (spectral {self.runner.spectral})" if self.serial
                else type(self.runner).__name__)
        if self.members_per_pass:
            mpp = f"{self.members_per_pass} (at most {self.max_members_per_pass}"
            mpp += ", from memory)" if c.members_per_pass == 0 else ")"
        else:
            mpp = ("at most " + str(c.members_per_pass) if c.members_per_pass
                   else "auto") + " (resolved on the first step)"
        return "; ".join([
            f"device {describe_device(self.device)}",
            f"model {kind}",
            f"precision {c.precision}{precision_note(c.precision, self.device)}",
            f"quantize {c.quantize}" + (f" ({len(self.quantized)} linears)" if self.quantized else ""),
            f"compile {'on: ' + str(len(self.compiled)) + ' regions' if self.compiled else 'off'}",
            f"cuda graphs {'on' if self._graphed is not None else 'off'}",
            f"members per pass {mpp}",
        ])

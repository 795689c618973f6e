"""The training loop: phases of epochs of optimizer steps, validation and checkpoints after each epoch.

One step: read this rank's window of its share of the global batch, roll the model forward
``rollout_steps`` times (backpropagating through all of them), reduce gradients inside the model group
(the distributed model's job) and sum them over the data-parallel ranks, clip by the global norm,
then an AdamW step with the phase's warm-up + cosine learning rate.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import to_dict
from ..ensemble.model_noise import ModelNoise
from ..ensemble.plan import as_hours
from ..model.config import token_grid
from ..parallel.split import offsets
from .crps import EnsembleCRPS
from . import state as ckpt_io
from .config import CRPS_TERMS, PhaseConfig, TrainConfig
from .data import WindowReader
from .grads import any_nonfinite, clip_gradients, global_grad_norm, poison
from .loss import WeightedMAE, WeightedMSE, channel_weights, latitude_weights
from .sampler import EpochSampler, usable_starts
from .schedule import PhaseSchedule
from .topology import Topology
from .validate import Validator, format_scores

log = logging.getLogger("hpc_fcn.train")

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def trainable(named: list, prefixes: list[str] | None) -> list:
    """The (name, parameter) pairs to train: all, or those whose names start with one of ``prefixes`` (the
    others are frozen: no gradient, no optimizer state)."""
    if prefixes is None:
        return list(named)
    keep = [(k, p) for k, p in named if any(k.startswith(pre) for pre in prefixes)]
    if not keep:
        from ..config import ConfigError
        raise ConfigError(f"config key 'optim.train_only': no parameter name starts with {', '.join(prefixes)}; "
                          f"names look like {', '.join(k for k, _ in named[:4])}")
    chosen = {id(p) for _, p in keep}
    for _, p in named:
        p.requires_grad_(id(p) in chosen)
    return keep


def param_groups(named: list, lr_scale: dict[str, float]) -> list[dict]:
    """Optimizer groups: parameters whose names start with a key of ``lr_scale`` learn at that multiple of the
    phase's lr (the first matching key wins), the rest at 1x."""
    groups: dict[float, list] = {}
    used = set()
    for name, p in named:
        key = next((pre for pre in lr_scale if name.startswith(pre)), None)
        used.add(key)
        groups.setdefault(1.0 if key is None else float(lr_scale[key]), []).append(p)
    unused = [k for k in lr_scale if k not in used]
    if unused:
        from ..config import ConfigError
        raise ConfigError(f"config key 'optim.lr_scale.{unused[0]}': no trained parameter's name starts with it; "
                          f"names look like {', '.join(k for k, _ in named[:4])}")
    return [{"params": ps, "lr_scale": scale} for scale, ps in groups.items()]


@dataclass
class Position:
    """The next optimizer step to run: phase index, epoch within the phase, step within the epoch."""
    phase: int = 0
    epoch: int = 0
    step: int = 0


class Trainer:
    def __init__(self, cfg: TrainConfig, topo: Topology, shards, train_ds, valid_ds, out_dir: Path,
                 device: torch.device):
        self.cfg, self.topo, self.shards, self.device = cfg, topo, shards, torch.device(device)
        self.out_dir = Path(out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.module = shards.module
        self.named = trainable(shards.named_parameters(), cfg.optim.train_only)
        self.params = [p for _, p in self.named]
        self.copies = shards.copies()
        o = cfg.optim
        self.phases = list(cfg.phases.items())  # (name, PhaseConfig) in order
        self.optimizer = torch.optim.AdamW(param_groups(self.named, o.lr_scale), lr=self.phases[0][1].lr,
                                           betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
        self.train_ds = train_ds
        self.reader = WindowReader(train_ds, topo.rows, topo.cols, self.device)
        self.loss_fn = WeightedMSE(latitude_weights(train_ds.lat, cfg.loss.lat_weights),
                                   channel_weights(train_ds.channels, cfg.loss.channel_weights),
                                   topo.rows, topo.cols, train_ds.nlon).to(self.device)
        self.crps = None
        if cfg.loss.kind == "crps":  # the ensemble axis holds members of the same samples
            mc = cfg.model
            col_sizes = topo.grid.window_sizes(mc.img_size, mc.patch_size)[1]  # the row-wise terms gather rows
            self.crps = EnsembleCRPS(latitude_weights(train_ds.lat, cfg.loss.lat_weights),
                                     channel_weights(train_ds.channels, cfg.loss.channel_weights),
                                     topo.rows, topo.cols, train_ds.nlon, topo.data, cfg.loss.members,
                                     topo.grid.w, col_sizes).to(self.device)
            first = offsets(self.crps.sizes)[topo.data_rank]
            self.my_members = range(first, first + self.crps.local_members)
            self.token_window = topo.grid.token_window(mc.img_size, mc.patch_size)
            self.token_grid = token_grid(mc.img_size, mc.patch_size)
            self._noise_gen: ModelNoise | None = None
            # the noise-free rollout's absolute error (loss.control_weight) is this rank's job on the last
            # ensemble rank, which holds the fewest members when they do not split evenly
            self.control_loss = None
            if cfg.loss.control_weight and topo.data_rank == topo.data_size - 1:
                self.control_loss = WeightedMAE(latitude_weights(train_ds.lat, cfg.loss.lat_weights),
                                                channel_weights(train_ds.channels, cfg.loss.channel_weights),
                                                topo.rows, topo.cols, train_ds.nlon).to(self.device)
        self.validator = None
        if cfg.validation.enabled and valid_ds is not None:
            self.validator = Validator(WindowReader(valid_ds, topo.rows, topo.cols, self.device), topo,
                                       cfg.validation.leads, cfg.validation.samples, cfg.validation.lat_weights)
        amp = cfg.precision != "fp32" and self.device.type == "cuda"
        self.amp_dtype = AMP_DTYPES[cfg.precision] if amp else None
        self.scaler = torch.amp.GradScaler("cuda") if amp and cfg.precision == "fp16" else None
        if cfg.precision != "fp32" and not amp:
            log.warning("precision %s needs a GPU; training in fp32 on %s", cfg.precision, self.device)
        self.pos = Position()
        self.iters = 0
        self.epochs_done = 0
        self.history: list[dict] = []  # one entry per optimizer step
        self.val_history: list[dict] = []  # one entry per epoch

    # -- pieces -------------------------------------------------------------------------------------
    def sampler(self, index: int) -> EpochSampler:
        ph = self.phases[index][1]
        starts = usable_starts(self.train_ds.times, ph.rollout_steps)
        if self.crps is not None:  # every ensemble rank trains its members on the whole batch
            return EpochSampler(starts, ph.batch_size, ph.samples_per_epoch, self.cfg.seed, index)
        return EpochSampler(starts, ph.batch_size, ph.samples_per_epoch, self.cfg.seed, index,
                            self.topo.data_rank, self.topo.data_size)

    def schedule(self, index: int, sampler: EpochSampler) -> PhaseSchedule:
        ph = self.phases[index][1]
        return PhaseSchedule(sampler.steps_per_epoch * ph.epochs, ph.lr, ph.min_lr, ph.warmup_steps)

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """One model step on this rank's window (``noise``: a stochastic model's token noise)."""
        with self.autocast():
            return self.module(x) if noise is None else self.module(x, noise)

    def member_noise(self, local: list[int], step: int) -> torch.Tensor:
        """Token noise (m_local * B, h, w, noise_dim), member-major, keyed by (seed, phase, epoch; sample time,
        member, step) like the ensemble app's, so that any layout draws the same noise for member k."""
        pos = self.pos
        seed = int(np.random.SeedSequence([self.cfg.seed, pos.phase, pos.epoch]).generate_state(1)[0])
        gen = self._noise_gen
        if gen is None or gen.seed != seed:  # one generator per epoch: it carries a correlated process's state
            gen = self._noise_gen = ModelNoise.for_model(self.module, self.token_grid, *self.token_window,
                                                         self.train_ds.dt_hours, seed=seed)
        hours = [as_hours(self.train_ds.times[i]) for i in local]
        per_time = torch.stack([gen.sample(h, self.my_members, step, self.device) for h in hours], dim=1)
        return per_time.reshape(-1, *per_time.shape[2:])  # (members, samples) -> member-major

    def crps_rollout_loss(self, seq: torch.Tensor, local: list[int], batch_size: int,
                          spectral_weight: float = 0.0, zonal_weight: float = 0.0) -> torch.Tensor:
        """This rank's members' share of the batch's fair CRPS (plus ``spectral_weight`` x its spectral term and
        ``zonal_weight`` x its zonal-mean term), mean over steps and samples (plus, on the rank that holds it,
        loss.control_weight x the noise-free rollout's weighted absolute error)."""
        steps, B = seq.shape[1] - 1, seq.shape[0]
        m = self.crps.local_members
        state = seq[:, 0].unsqueeze(0).expand(m, *seq[:, 0].shape).reshape(m * B, *seq.shape[2:])
        total = seq.new_zeros(())
        for k in range(1, steps + 1):
            state = self.forward(state, self.member_noise(local, k))
            members = state.reshape(m, B, *state.shape[1:])
            total = total + self.crps(members, seq[:, k])
            if spectral_weight:
                total = total + spectral_weight * self.crps.spectral(members, seq[:, k])
            if zonal_weight:
                total = total + zonal_weight * self.crps.zonal(members, seq[:, k])
        if self.control_loss is not None:
            control = seq[:, 0]
            for k in range(1, steps + 1):
                control = self.forward(control)
                total = total + self.cfg.loss.control_weight * self.control_loss(control, seq[:, k])
        return total / (batch_size * steps)

    def rollout_loss(self, seq: torch.Tensor, batch_size: int) -> torch.Tensor:
        """This rank's share of the batch loss: mean over steps and samples, rolled out autoregressively."""
        steps = seq.shape[1] - 1
        state, total = seq[:, 0], seq.new_zeros(())
        for k in range(1, steps + 1):
            state = self.forward(state)
            total = total + self.loss_fn(state, seq[:, k])
        return total / (batch_size * steps)

    def train_step(self, local: list[int], phase: PhaseConfig) -> dict:
        """One optimizer step on this rank's share ``local`` of a global batch; returns loss and norm."""
        seq = self.reader.sequences(local, phase.rollout_steps)
        self.optimizer.zero_grad(set_to_none=True)
        if self.crps is not None:
            weights = {t: getattr(self.cfg.loss, t) if getattr(phase, t) is None else getattr(phase, t)
                       for t in CRPS_TERMS}
            loss = self.crps_rollout_loss(seq, local, phase.batch_size, **weights)
        else:
            loss = self.rollout_loss(seq, phase.batch_size)
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        self.shards.reduce_gradients()  # model group, then the sum over data-parallel ranks
        if self.scaler is not None:
            if any_nonfinite(self.params, self.topo.world):
                poison(self.params)  # every rank skips this step and lowers the scale together
            self.scaler.unscale_(self.optimizer)
        norm = global_grad_norm(self.named, self.copies, self.topo.model)
        clip_gradients(self.params, norm, self.cfg.optim.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif math.isfinite(norm):
            self.optimizer.step()
        else:
            log.warning("step %d: non-finite gradient norm, step skipped", self.iters)
        return {"loss": self.topo.allreduce_sum(float(loss.detach())), "grad_norm": norm}

    # -- the loop -----------------------------------------------------------------------------------
    def run(self, max_steps: int | None = None) -> dict:
        """Train to the end of the last phase (or until ``max_steps`` optimizer steps in all, for tests)."""
        from tqdm import tqdm
        cfg, topo = self.cfg, self.topo
        show = cfg.progress and topo.rank == 0
        while self.pos.phase < len(self.phases):
            pi = self.pos.phase
            name, phase = self.phases[pi]
            sampler = self.sampler(pi)
            sched = self.schedule(pi, sampler)
            log.info("phase %s: %d epoch(s) of %d steps, batch %d, %d-step rollout, lr %.2e", name,
                     phase.epochs, sampler.steps_per_epoch, phase.batch_size, phase.rollout_steps, phase.lr)
            while self.pos.phase == pi and self.pos.epoch < phase.epochs:
                epoch = self.pos.epoch
                bar = tqdm(total=sampler.steps_per_epoch, initial=self.pos.step, disable=not show,
                           desc=f"{name} {epoch + 1}/{phase.epochs}", dynamic_ncols=True, leave=False)
                t0 = time.perf_counter()
                for step, local in sampler.local_batches(epoch, self.pos.step):
                    if max_steps is not None and self.iters >= max_steps:
                        bar.close()
                        return self.result()
                    lr = sched.apply(self.optimizer, epoch * sampler.steps_per_epoch + step)
                    out = self.train_step([int(i) for i in local], phase)
                    self.iters += 1
                    self.pos.step = step + 1
                    self.history.append({"iter": self.iters, "phase": name, "epoch": self.epochs_done,
                                         "loss": out["loss"], "grad_norm": out["grad_norm"], "lr": lr})
                    bar.set_postfix(loss=f"{out['loss']:.4f}", lr=f"{lr:.2e}")
                    bar.update(1)
                    if cfg.output.log_every and self.iters % cfg.output.log_every == 0:
                        recent = [h["loss"] for h in self.history[-cfg.output.log_every:]]
                        log.info("step %d (%s epoch %d, %d/%d): loss %.5f (mean of last %d %.5f), grad norm %.3g, "
                                 "lr %.2e", self.iters, name, epoch + 1, step + 1, sampler.steps_per_epoch,
                                 out["loss"], len(recent), sum(recent) / len(recent), out["grad_norm"], lr)
                    every = cfg.output.checkpoint_every
                    if every and self.iters % every == 0 and self.pos.step < sampler.steps_per_epoch:
                        self.save()
                bar.close()
                seconds = time.perf_counter() - t0
                losses = [h["loss"] for h in self.history[-sampler.steps_per_epoch:]]
                log.info("phase %s epoch %d/%d: mean loss %.5f (%d steps, %.1f s)", name, epoch + 1,
                         phase.epochs, sum(losses) / max(len(losses), 1), len(losses), seconds)
                self.epochs_done += 1
                self.validate(name)
                last = epoch + 1 == phase.epochs
                self.pos = Position(pi + 1, 0, 0) if last else Position(pi, epoch + 1, 0)
                self.save(also=self.ckpt_dir / f"{name}.ckpt" if last else None)
            if self.pos.phase == pi:
                self.pos = Position(pi + 1, 0, 0)
        if cfg.output.asset:
            self.write_asset(Path(cfg.output.asset))
        return self.result()

    def result(self) -> dict:
        return {"iters": self.iters, "history": self.history, "validation": self.val_history}

    def validate(self, phase_name: str) -> dict | None:
        if self.validator is None:
            return None
        self.module.eval()
        scores = self.validator.run(self.forward)
        self.module.train()
        scores.update(iter=self.iters, epoch=self.epochs_done, phase=phase_name)
        self.val_history.append(scores)
        log.info("after epoch %d:\n%s", self.epochs_done, format_scores(scores))
        return scores

    # -- checkpoints --------------------------------------------------------------------------------
    def train_state(self) -> dict:
        return {"phase": self.pos.phase, "epoch": self.pos.epoch, "step": self.pos.step, "iters": self.iters,
                "epochs_done": self.epochs_done, "seed": self.cfg.seed, "history": self.history,
                "validation": self.val_history, "torch_rng": torch.get_rng_state(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "layout": self.topo.layout()}

    def save(self, also: Path | None = None) -> None:
        """Gather weights and optimizer state (collective) and write ``last.ckpt`` on rank 0."""
        weights = self.shards.full_state_dict()
        optim = ckpt_io.gather_optimizer(self.optimizer, self.shards)
        if self.topo.rank == 0:
            path = self.ckpt_dir / "last.ckpt"
            ckpt_io.write(path, weights, self.shards.model_config, optimizer=optim, train_state=self.train_state(),
                          epoch=self.epochs_done, iters=self.iters, config=to_dict(self.cfg))
            if also is not None:  # the same bytes: copy rather than serialise twice (tmp + rename: never torn)
                tmp = also.with_name(also.name + ".tmp")
                shutil.copyfile(path, tmp)
                os.replace(tmp, also)
            (self.out_dir / "history.json").write_text(json.dumps(
                {"train": self.history, "validation": self.val_history}, indent=1))
            if self.cfg.output.plot and self.pos.step == 0:  # epoch ends only: plotting takes seconds
                from .plot import loss_curve
                loss_curve(self.history, self.val_history, self.out_dir / "loss.png")
        self.topo.world.barrier()

    def resume(self, path: Path) -> None:
        """Continue the run saved in ``path`` (any layout) from its next step."""
        ckpt = ckpt_io.read(path)
        self.shards.load_full_state_dict(ckpt["model_state_plain"])
        ckpt_io.load_optimizer(self.optimizer, ckpt["optimizer_state_dict"], self.shards)
        ts = ckpt["train_state"]
        if ts.get("seed") != self.cfg.seed:
            log.warning("resuming with seed %s but the checkpoint used %s: the data order changes",
                        self.cfg.seed, ts.get("seed"))
        self.pos = Position(int(ts["phase"]), int(ts["epoch"]), int(ts["step"]))
        self.iters, self.epochs_done = int(ts["iters"]), int(ts["epochs_done"])
        self.history, self.val_history = list(ts["history"]), list(ts["validation"])
        torch.set_rng_state(ts["torch_rng"])
        if self.scaler is not None and ts.get("scaler"):
            self.scaler.load_state_dict(ts["scaler"])
        log.info("resumed from %s (saved with %s): phase %d, epoch %d, step %d, %d steps done", path,
                 ts.get("layout"), self.pos.phase, self.pos.epoch, self.pos.step, self.iters)

    def write_asset(self, path: Path) -> None:
        """The final weights alone (published layout, no optimizer state) plus the config beside them."""
        weights = self.shards.full_state_dict()
        if self.topo.rank == 0:
            last = self.val_history[-1] if self.val_history else None
            ckpt_io.write_weights(path, weights, self.shards.model_config, epoch=self.epochs_done, iters=self.iters,
                                  extra={"validation": last} if last else None)
            from ..config import dump_yaml
            path.with_suffix(".yaml").write_text(dump_yaml(self.cfg))
            log.info("wrote the weights to %s (%.1f MB)", path, path.stat().st_size / 1e6)
        self.topo.world.barrier()

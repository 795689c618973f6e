"""The training application's config: every key of config/train_builtin.yaml and its validation."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..config import fail
from ..schema import DataConfig, ModelConfig, ParallelConfig, check_split

# the CRPS loss's extra terms: a loss key with the weight, which a phase's key of the same name overrides
CRPS_TERMS = ("spectral_weight", "zonal_weight")


@dataclass
class PhaseConfig:
    """One stage of the recipe: e.g. 1-step pre-training, then 2-step autoregressive fine-tuning."""
    epochs: int = 1  # passes over samples_per_epoch samples
    rollout_steps: int = 1  # autoregressive steps per sample, backpropagated through all of them
    lr: float = 5e-4  # peak learning rate (after warm-up)
    min_lr: float = 0.0  # the cosine decays to this at the end of the phase
    warmup_steps: int = 0  # optimizer steps of linear warm-up from 0 to lr
    batch_size: int = 8  # global batch: samples per optimizer step over all data-parallel ranks
    samples_per_epoch: int | None = None  # null = every usable sample of the training split
    spectral_weight: float | None = None  # crps: this phase's loss.spectral_weight (null = the loss's)
    zonal_weight: float | None = None  # crps: this phase's loss.zonal_weight (null = the loss's)

    def validate(self, prefix: str) -> None:
        for name in CRPS_TERMS:
            w = getattr(self, name)
            if w is not None and w < 0:
                fail(f"{prefix}.{name}", f"must be >= 0 (or null for loss.{name}), got {w}")
        for name in ("epochs", "rollout_steps", "batch_size"):
            if getattr(self, name) < 1:
                fail(f"{prefix}.{name}", f"must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            fail(f"{prefix}.lr", f"must be positive, got {self.lr}")
        if not 0 <= self.min_lr <= self.lr:
            fail(f"{prefix}.min_lr", f"must be in [0, lr={self.lr}], got {self.min_lr}")
        if self.warmup_steps < 0:
            fail(f"{prefix}.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        if self.samples_per_epoch is not None and self.samples_per_epoch < self.batch_size:
            fail(f"{prefix}.samples_per_epoch", f"must be >= batch_size={self.batch_size} or null, "
                 f"got {self.samples_per_epoch}")


@dataclass
class OptimConfig:
    """AdamW and gradient clipping (by the global norm over every shard)."""
    weight_decay: float = 0.0  # AdamW weight decay
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW betas
    eps: float = 1e-8  # AdamW epsilon
    grad_clip: float = 1.0  # maximum global gradient norm; 0 = no clipping
    train_only: list[str] | None = None  # train only parameters whose names start with one of these (null = all)
    lr_scale: dict[str, float] = field(default_factory=dict)  # name prefix -> multiple of the phase's lr (e.g. a new head)

    def validate(self, prefix: str) -> None:
        if self.weight_decay < 0:
            fail(f"{prefix}.weight_decay", f"must be >= 0, got {self.weight_decay}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            fail(f"{prefix}.betas", f"both must be in [0, 1), got {list(self.betas)}")
        if self.eps <= 0:
            fail(f"{prefix}.eps", f"must be positive, got {self.eps}")
        if self.grad_clip < 0:
            fail(f"{prefix}.grad_clip", f"must be >= 0 (0 = off), got {self.grad_clip}")
        for name, scale in self.lr_scale.items():
            if not scale > 0:
                fail(f"{prefix}.lr_scale.{name}", f"must be positive, got {scale}")


@dataclass
class LossConfig:
    """Latitude-weighted MSE, or fair CRPS of an ensemble of a stochastic model's members, in normalised units."""
    kind: Literal["mse", "crps"] = "mse"  # mse: deterministic model; crps: fair CRPS of a stochastic model's members
    members: int = 8  # crps: members per sample, split over the ensemble axis (which then holds members, not data)
    lat_weights: Literal["area", "fourcastnet", "none"] = "area"  # area: cos(latitude); fourcastnet: the paper's
    channel_weights: dict[str, float] = field(default_factory=dict)  # by name; missing channels weigh 1
    # crps: add this weight x the absolute error of the noise-free rollout (the control member: the CRPS of a
    # one-member ensemble, same weights), so that training the whole network keeps the control forecast good
    control_weight: float = 0.0
    # crps: add this weight x the fair CRPS of the members' zonal Fourier coefficients (hpc_fcn.train.crps), which
    # scores the spread scale by scale: the point-wise CRPS cannot tell spread at one wavenumber from another
    spectral_weight: float = 0.0
    # crps: add this weight x the fair CRPS of each row's zonal mean (hpc_fcn.train.crps), counted per row like a
    # point: the point-wise CRPS hardly sees a drift of the zonal-mean flow, which is error at every point later
    zonal_weight: float = 0.0

    def validate(self, prefix: str) -> None:
        for name in CRPS_TERMS:
            if getattr(self, name) < 0:
                fail(f"{prefix}.{name}", f"must be >= 0, got {getattr(self, name)}")
            if getattr(self, name) and self.kind != "crps":
                fail(f"{prefix}.{name}", "scores the members of a crps ensemble: set loss.kind: crps or remove the key")
        for name, w in self.channel_weights.items():
            if w < 0:
                fail(f"{prefix}.channel_weights.{name}", f"must be >= 0, got {w}")
        if self.control_weight < 0:
            fail(f"{prefix}.control_weight", f"must be >= 0, got {self.control_weight}")
        if self.control_weight and self.kind != "crps":
            fail(f"{prefix}.control_weight", "anchors the noise-free member of a crps ensemble: set loss.kind: crps "
                 "or remove the key")
        if self.members < 2:
            fail(f"{prefix}.members", f"the fair CRPS needs at least 2 members, got {self.members}")


@dataclass
class ValidationConfig:
    """Scores on the validation split after every epoch: RMSE and ACC per variable at several leads."""
    enabled: bool = True  # score the validation split after every epoch
    split: str = "test"  # the data split scored: test (FourCastNet's validation years, 2016-2017) or another
    leads: list[int] = field(default_factory=lambda: [1, 4, 12])  # in model steps
    samples: int = 8  # initial times, evenly spaced over the split
    lat_weights: Literal["area", "fourcastnet"] = "area"  # area: cos(latitude); fourcastnet: the paper's

    def validate(self, prefix: str) -> None:
        check_split(self.split, f"{prefix}.split")
        if not self.leads or any(k < 1 for k in self.leads):
            fail(f"{prefix}.leads", f"must be a non-empty list of positive step counts, got {self.leads}")
        if self.samples < 1:
            fail(f"{prefix}.samples", f"must be >= 1, got {self.samples}")


@dataclass
class TrainOutputConfig:
    """Where checkpoints, the log and the loss plot go, and how often."""
    dir: str = "runs/train"  # output folder (checkpoints/, train.log, loss.png)
    checkpoint_every: int = 0  # also checkpoint every this many optimizer steps (0 = only at epoch ends)
    asset: str | None = None  # at the end, also write the weights alone (no optimizer state) here
    plot: bool = True  # write loss.png beside the checkpoints after every epoch
    log_every: int = 50  # log the loss every this many optimizer steps (0 = epoch summaries only)

    def validate(self, prefix: str) -> None:
        for name in ("checkpoint_every", "log_every"):
            if getattr(self, name) < 0:
                fail(f"{prefix}.{name}", f"must be >= 0, got {getattr(self, name)}")


def _default_phases() -> dict[str, PhaseConfig]:
    return {"pretrain": PhaseConfig(rollout_steps=1), "finetune": PhaseConfig(rollout_steps=2, lr=1e-4)}


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    phases: dict[str, PhaseConfig] = field(default_factory=_default_phases)  # training phases in order, by name
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    output: TrainOutputConfig = field(default_factory=TrainOutputConfig)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto = a GPU when torch sees one, else cpu
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast dtype on GPU (fp16 adds a GradScaler)
    seed: int = 0  # data order and weight initialisation
    resume: bool = False  # continue from output.dir/checkpoints/last.ckpt when it exists
    progress: bool = True  # progress bar on rank 0
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"  # rank 0's (other ranks: WARNING and up)

    def validate(self, prefix: str) -> None:
        if not self.phases:
            fail("phases", "needs at least one phase (e.g. pretrain with rollout_steps 1)")
        if self.model.checkpoint == "builtin":
            fail("model.checkpoint", "training starts from a file or from random weights (null), not 'builtin'")
        if self.loss.kind == "crps" and not self.model.stochastic:
            fail("loss.kind", "crps trains the members of a stochastic model: set model.stochastic: true")
        if self.model.noise_scale != 1.0:
            fail("model.noise_scale", "scales a trained model's noise in the ensemble app; training learns the "
                 "amplitude: remove the key")
        for name, ph in self.phases.items():
            for term in CRPS_TERMS:
                if getattr(ph, term) and self.loss.kind != "crps":
                    fail(f"phases.{name}.{term}", "scores the members of a crps ensemble: set loss.kind: crps "
                         "or remove the key")

"""The ensemble application's config: every key of config/ens100.yaml and its validation."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..config import duration_hours, fail
from ..schema import DataConfig, InferenceConfig, ModelConfig, ParallelConfig

def parse_lead(value: str | int, dt_hours: int, key: str) -> int:
    """A lead time ('10d', '240h' or a step count) as a number of model steps."""
    if isinstance(value, int):
        steps = value
    else:
        hours = duration_hours(value)
        if hours is None:
            fail(key, f"'{value}' is not a lead time: use e.g. 10d, 240h or a number of steps")
        if hours % dt_hours:
            fail(key, f"{value} is not a multiple of the {dt_hours} h model step")
        steps = hours // dt_hours
    if steps < 1:
        fail(key, f"must be at least one step, got {value!r}")
    return steps


@dataclass
class InitialConditions:
    """Initial times: an explicit list, or a range (start, end, every), taken from one data split."""
    split: Literal["train", "valid", "test"] = "test"
    times: list[str] | None = None
    start: str | None = None
    end: str | None = None
    every: str = "24h"
    count: int | None = 1  # at most this many initial times of the range (null = all); a list is taken whole

    def validate(self, prefix: str) -> None:
        if self.times is not None and (self.start is not None or self.end is not None):
            fail(f"{prefix}.times", "give either a list of times or a range (start/end/every), not both")
        if self.count is not None and self.count < 1:
            fail(f"{prefix}.count", f"must be >= 1 or null, got {self.count}")
        if duration_hours(self.every) is None:
            fail(f"{prefix}.every", f"'{self.every}' is not a duration: use e.g. 24h or 5d")


@dataclass
class MembersConfig:
    members: int = 100
    control: bool = False  # member 0 runs unperturbed (counted in `members`)
    seed: int = 1234

    def validate(self, prefix: str) -> None:
        if self.members < 1:
            fail(f"{prefix}.members", f"must be >= 1, got {self.members}")


@dataclass
class PerturbationConfig:
    """Initial-condition perturbations; amplitudes are in normalised units (fractions of each channel's std)."""
    method: Literal["none", "gaussian", "spherical", "bred", "analysis_ensemble"] = "gaussian"
    amplitude: float = 0.3
    channel_amplitude: dict[str, float] = field(default_factory=dict)  # per-channel overrides
    length_scale_km: float = 500.0  # spherical: correlation length of the noise
    bred_cycles: int = 3  # bred: integrate / rescale cycles
    bred_steps: int = 2  # bred: model steps per cycle
    analysis_scale: float = 1.0  # analysis_ensemble: factor on the member-minus-mean perturbations
    analysis_root: str | None = None  # analysis_ensemble: dataset holding the members (null = data.root)

    def validate(self, prefix: str) -> None:
        if self.amplitude < 0:
            fail(f"{prefix}.amplitude", f"must be >= 0, got {self.amplitude}")
        if self.length_scale_km <= 0:
            fail(f"{prefix}.length_scale_km", f"must be positive, got {self.length_scale_km}")
        if self.analysis_scale < 0:
            fail(f"{prefix}.analysis_scale", f"must be >= 0, got {self.analysis_scale}")
        if self.bred_cycles < 1 or self.bred_steps < 1:
            fail(f"{prefix}.bred_cycles", "bred_cycles and bred_steps must be >= 1")


@dataclass
class ForecastConfig:
    lead_time: str | int = "10d"  # '10d', '240h' or a number of 6-hourly steps
    output_every: int = 4  # write (and score) every this many steps
    snapshot_every: int = 4  # with resume=true: a resume snapshot every this many output steps

    def validate(self, prefix: str) -> None:
        if self.output_every < 1:
            fail(f"{prefix}.output_every", f"must be >= 1, got {self.output_every}")
        if self.snapshot_every < 1:
            fail(f"{prefix}.snapshot_every", f"must be >= 1 (output steps), got {self.snapshot_every}")


@dataclass
class OutputConfig:
    dir: str = "runs/ensemble"
    variables: list[str] | None = None  # null = every model channel
    members: bool = False  # also write every member (mean and spread are always written)
    format: Literal["netcdf", "zarr"] = "netcdf"  # zarr: every rank writes its own window (large runs)
    keep_resume_state: bool = False  # keep .resume/ (the last snapshot) after a successful run


@dataclass
class ScoringConfig:
    enabled: bool = True  # scores against the truth when the data has it
    lat_weights: Literal["area", "fourcastnet"] = "area"
    table_leads: list[str] = field(default_factory=lambda: ["1d", "3d", "5d", "10d"])

    def validate(self, prefix: str) -> None:
        for i, lead in enumerate(self.table_leads):  # here, not after the run when the table is written
            parse_lead(lead, 1, f"{prefix}.table_leads[{i}]")


@dataclass
class EnsembleConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    initial_conditions: InitialConditions = field(default_factory=InitialConditions)
    ensemble: MembersConfig = field(default_factory=MembersConfig)
    perturbation: PerturbationConfig = field(default_factory=PerturbationConfig)
    forecast: ForecastConfig = field(default_factory=ForecastConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    resume: bool = False  # take snapshots, and continue from the last one if the output dir has one
    progress: bool = True
    trace: bool = False  # write per-rank Chrome traces and a region summary into output.dir
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

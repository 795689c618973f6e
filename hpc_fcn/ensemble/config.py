"""The ensemble application's config: every key of config/ens100.yaml and its validation."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np

from ..config import duration_hours, fail
from ..io.backend import FORMATS
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
        if not duration_hours(self.every):
            fail(f"{prefix}.every", f"'{self.every}' is not a positive duration: use e.g. 24h or 5d")
        for i, t in enumerate(self.times or []):
            check_time(t, f"{prefix}.times[{i}]")
        for name in ("start", "end"):
            if getattr(self, name) is not None:
                check_time(getattr(self, name), f"{prefix}.{name}")
        if self.start is not None and self.end is not None and \
                np.datetime64(self.start, "h") > np.datetime64(self.end, "h"):
            fail(f"{prefix}.end", f"{self.end} is before start {self.start}")


def check_time(text, key: str) -> None:
    """Fail naming ``key`` unless ``text`` is a date and time (ISO 8601, e.g. 2018-01-01T00)."""
    try:
        np.datetime64(str(text), "h")
    except ValueError:
        fail(key, f"'{text}' is not a date and time: use ISO 8601, e.g. 2018-01-01T00")


SEED_LIMIT = 2 ** 64  # the counter-based generator's key takes 64 bits of the seed (ensemble/perturb.member_key)


@dataclass
class MembersConfig:
    members: int = 100
    control: bool = False  # member 0 runs unperturbed (counted in `members`)
    seed: int = 1234

    def validate(self, prefix: str) -> None:
        if self.members < 1:
            fail(f"{prefix}.members", f"must be >= 1, got {self.members}")
        if not 0 <= self.seed < SEED_LIMIT:
            fail(f"{prefix}.seed", f"must be in 0 .. 2**64 - 1 (the generator's 64-bit key), got {self.seed}")


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
        for name in ("bred_cycles", "bred_steps"):
            if getattr(self, name) < 1:
                fail(f"{prefix}.{name}", f"must be >= 1, got {getattr(self, name)}")
        for channel, a in self.channel_amplitude.items():
            if a < 0:
                fail(f"{prefix}.channel_amplitude.{channel}", f"must be >= 0, got {a}")


@dataclass
class ForecastConfig:
    NOT_RESULTS: ClassVar[dict[str, str]] = {"snapshot_every": "how often resume state is saved"}
    lead_time: str | int = "10d"  # '10d', '240h' or a number of 6-hourly steps
    output_every: int = 4  # write (and score) every this many steps
    snapshot_every: int = 4  # with resume=true: a resume snapshot every this many output steps

    def validate(self, prefix: str) -> None:
        parse_lead(self.lead_time, 1, f"{prefix}.lead_time")  # a duration or a step count (the step is checked later)
        if self.output_every < 1:
            fail(f"{prefix}.output_every", f"must be >= 1, got {self.output_every}")
        if self.snapshot_every < 1:
            fail(f"{prefix}.snapshot_every", f"must be >= 1 (output steps), got {self.snapshot_every}")


OutputFormat = Literal[tuple(FORMATS)]  # the output backends (hpc_fcn.io.backend)


@dataclass
class OutputConfig:
    NOT_RESULTS: ClassVar[dict[str, str]] = {
        "dir": "where the outputs go",
        "format": "both formats hold equal values (tests/mpi/test_zarr_mpi.py); a resume checks it among its facts",
        "keep_resume_state": "whether .resume/ stays after the run"}
    dir: str = "runs/ensemble"
    variables: list[str] | None = None  # null = every model channel
    members: bool = False  # also write every member (mean and spread are always written)
    format: OutputFormat = "netcdf"  # zarr: every rank writes its own window (large runs)
    keep_resume_state: bool = False  # keep .resume/ (the last snapshot) after a successful run


@dataclass
class ScoringConfig:
    NOT_RESULTS: ClassVar[dict[str, str]] = {"table_leads": "the leads metrics.md shows (metrics.json has all)"}
    enabled: bool = True  # scores against the truth when the data has it
    lat_weights: Literal["area", "fourcastnet"] = "area"
    table_leads: list[str] = field(default_factory=lambda: ["1d", "3d", "5d", "10d"])

    def validate(self, prefix: str) -> None:
        for i, lead in enumerate(self.table_leads):  # here, not after the run when the table is written
            parse_lead(lead, 1, f"{prefix}.table_leads[{i}]")


@dataclass
class EnsembleConfig:
    NOT_RESULTS: ClassVar[dict[str, str]] = {
        "resume": "whether to resume (the identity is what a resume checks)", "progress": "the progress bar",
        "trace": "timing traces", "log_level": "what the log shows"}
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

"""The ensemble application's config: every key of config/ens100.yaml and its validation."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np

from ..config import duration_hours, fail
from ..io.backend import FORMATS
from ..schema import DataConfig, InferenceConfig, ModelConfig, ParallelConfig, check_split

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
    # data split, read from the folder of its name under data.root: train, test (validation years) or out_of_sample
    split: str = "out_of_sample"
    times: list[str] | None = None  # initial times, ISO 8601 (e.g. [2018-01-01T00, 2018-01-06T00])
    start: str | None = None  # first initial time of the range (null = the split's first)
    end: str | None = None  # last initial time of the range (null = the split's last)
    every: str = "24h"  # spacing of the range, e.g. 24h or 5d
    count: int | None = 1  # at most this many initial times of the range (null = all); a list is taken whole

    def validate(self, prefix: str) -> None:
        check_split(self.split, f"{prefix}.split")
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
    """How many members, the control member, and the seed that keys every member's randomness."""
    members: int = 100  # ensemble size (with control: true, member 0 is the control)
    control: bool = False  # member 0 runs unperturbed (counted in `members`)
    seed: int = 1234  # key of the perturbations and model noise: same seed, same members on any layout
    lagged: int = 1  # lagged ensemble: `members` from each of this many latest initial times (1 = no lag)
    lag: str | None = None  # lagged: time between those initial times, e.g. 12h (null = the data's time step)

    @property
    def total(self) -> int:
        """Members of the whole ensemble: ``members`` from each of the ``lagged`` initial times."""
        return self.members * self.lagged

    def validate(self, prefix: str) -> None:
        if self.members < 1:
            fail(f"{prefix}.members", f"must be >= 1, got {self.members}")
        if self.lagged < 1:
            fail(f"{prefix}.lagged", f"must be >= 1 (1 = no lagged initial times), got {self.lagged}")
        if self.lag is not None and not duration_hours(self.lag):
            fail(f"{prefix}.lag", f"'{self.lag}' is not a positive duration: use e.g. 6h or 1d")
        if not 0 <= self.seed < SEED_LIMIT:
            fail(f"{prefix}.seed", f"must be in 0 .. 2**64 - 1 (the generator's 64-bit key), got {self.seed}")


@dataclass
class PerturbationConfig:
    """Initial-condition perturbations; amplitudes are in normalised units (fractions of each channel's std)."""
    # how members' initial states differ (spherical: noise correlated over length_scale_km)
    method: Literal["none", "gaussian", "spherical", "bred", "analysis_ensemble"] = "gaussian"
    amplitude: float = 0.3  # perturbation standard deviation, in units of each channel's std
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
    """How far each forecast runs and which steps are written and scored."""
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
    """What is written where: mean and spread always, members optionally, as netCDF or zarr."""
    NOT_RESULTS: ClassVar[dict[str, str]] = {
        "dir": "where the outputs go",
        "format": "both formats hold equal values (tests/mpi/test_zarr_mpi.py); a resume checks it among its facts",
        "keep_resume_state": "whether .resume/ stays after the run",
        "institution": "an attribute naming who made the outputs",
        "convention": "names and layout only: the values equal the default convention's (tests/test_wb2_output.py)"}
    dir: str = "runs/ensemble"  # output folder (forecasts, metrics, timings, config.resolved.yaml)
    variables: list[str] | None = None  # null = every model channel
    members: bool = False  # also write every member (mean and spread are always written)
    format: OutputFormat = "netcdf"  # zarr: every rank writes its own window (large runs)
    keep_resume_state: bool = False  # keep .resume/ (the last snapshot) after a successful run
    institution: str | None = None  # CF's global attribute institution: where the outputs are made (null: omitted)
    # cf: CF-1.10 in Earth2Studio's layout; wb2: zarr that WeatherBench2's evaluation reads (docs/output_format.md)
    convention: Literal["cf", "wb2"] = "cf"

    def validate(self, prefix: str) -> None:
        if self.convention == "wb2" and self.format != "zarr":
            fail(f"{prefix}.convention", f"wb2 is a zarr layout, not {self.format}: add {prefix}.format=zarr")


@dataclass
class ScoringConfig:
    """Scores against the truth of the data (metrics.json, metrics.md)."""
    NOT_RESULTS: ClassVar[dict[str, str]] = {"table_leads": "the leads metrics.md shows (metrics.json has all)"}
    enabled: bool = True  # scores against the truth when the data has it
    lat_weights: Literal["area", "fourcastnet"] = "area"  # area: cos(latitude); fourcastnet: the paper's weights
    table_leads: list[str] = field(default_factory=lambda: ["1d", "3d", "5d", "10d"])  # leads shown in metrics.md

    def validate(self, prefix: str) -> None:
        for i, lead in enumerate(self.table_leads):  # here, not after the run when the table is written
            parse_lead(lead, 1, f"{prefix}.table_leads[{i}]")


@dataclass
class ProductsConfig:
    """Probability products computed online from all members: threshold probabilities and quantiles."""
    # CHANNEL: {above: [t, ...], below: [t, ...]} in the channel's units: fraction of members with x > t / x < t
    probabilities: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    quantiles: list[float] = field(default_factory=list)  # levels in (0, 1) of each written channel, e.g. [0.1, 0.9]

    def validate(self, prefix: str) -> None:
        for channel, sides in self.probabilities.items():
            key = f"{prefix}.probabilities.{channel}"
            if not sides:
                fail(key, "give at least one threshold: {above: [...]} and/or {below: [...]}")
            for side, t in sides.items():
                if side not in ("above", "below"):
                    fail(f"{key}.{side}", "unknown key: use above (x > t) or below (x < t)")
                if not t:
                    fail(f"{key}.{side}", "is empty: give at least one threshold")
                if any(b <= a for a, b in zip(t, t[1:])):
                    fail(f"{key}.{side}", f"must be strictly increasing (sorted, no repeats), got {t}")
        q = self.quantiles
        for i, v in enumerate(q):
            if not 0 < v < 1:
                fail(f"{prefix}.quantiles[{i}]", f"must be in (0, 1) (exclusive), got {v}")
        if any(b <= a for a, b in zip(q, q[1:])):
            fail(f"{prefix}.quantiles", f"must be strictly increasing (sorted, no repeats), got {q}")

    @property
    def enabled(self) -> bool:
        return bool(self.probabilities or self.quantiles)

    def check_channels(self, channels: list[str], prefix: str = "products") -> None:
        """Fail naming the key unless every channel of ``probabilities`` is one of the model's ``channels``."""
        for name in self.probabilities:
            if name not in channels:
                fail(f"{prefix}.probabilities.{name}", f"'{name}' is not a model channel: use one of "
                     f"{', '.join(channels)}")


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
    products: ProductsConfig = field(default_factory=ProductsConfig)  # probabilities and quantiles (off when empty)
    resume: bool = False  # take snapshots, and continue from the last one if the output dir has one
    progress: bool = True  # progress bar on rank 0
    trace: bool = False  # write per-rank Chrome traces and a region summary into output.dir
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"  # rank 0's (other ranks: WARNING and up)

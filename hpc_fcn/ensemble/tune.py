"""Tuned initial perturbations: amplitudes (and length scale, bred cycles) that minimise fair CRPS on a split.

``mpirun -n N python -m hpc_fcn.ensemble.tune CONFIG [key=value ...]`` reads an ensemble config plus a
``tune:`` section, runs the ensemble app's own pieces (resolve, model, Perturber, the rollout's stepping
loop and member split, the scoring's fair CRPS) for each candidate perturbation on the ``tune.split``
initial times, and writes a config fragment (``perturbation:``) that an ensemble config includes.

Objective: the mean over ``tune.leads`` and ``tune.channels`` of fair CRPS divided by the CRPS of the
starting perturbation at that lead and channel (1 at the start), plus, with ``tune.calibration_weight``, that
weight times the mean squared distance of log spread/skill (corrected) outside ``tune.spread_skill_band``: the
fair CRPS alone may prefer an ensemble narrower than its error when added spread points the wrong way, and
centres set perturbation amplitudes so that the spread matches the error. Every candidate uses the same member
noise (common random numbers: keyed by seed, time and member, never by amplitude), so differences
between candidates are not sampling noise. Search: bred cycles over a list, a stochastic model's
``model.noise_scale`` (only when asked for: it is the model's uncertainty, not a perturbation), a global
amplitude scale (golden-section on its logarithm), the spherical length scale, then per-channel amplitude
refinements (``tune.sweeps`` passes, each after the first re-tuning the noise scale first).
"""
from __future__ import annotations

import datetime
import logging
import math
import shlex
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

from ..config import ConfigError, fail, read_config_data, from_dict
from ..runtime import root_decides
from ..schema import check_split
from .config import EnsembleConfig, InitialConditions, PerturbationConfig, parse_lead
from .perturb import channel_amplitudes, missing_bred_history
from .search import golden_section, golden_section_points

log = logging.getLogger("hpc_fcn")

Parameter = Literal["amplitude", "channel_amplitude", "length_scale_km", "bred_cycles", "noise_scale"]
PARAMETERS = {"gaussian": ["amplitude", "channel_amplitude"],
              "spherical": ["amplitude", "length_scale_km", "channel_amplitude"],
              "bred": ["bred_cycles", "amplitude", "channel_amplitude"]}


@dataclass
class TuneConfig:
    """The ``tune:`` section: where the objective is measured and what is searched."""
    split: str = "test"  # the data split the objective is measured on (train, test or out_of_sample)
    members: int = 16  # members of each trial forecast
    start: str | None = None  # first initial time (null = the split's first with history enough for bred)
    every: str = "120h"  # spacing of the initial times
    count: int = 4  # initial times
    leads: list[str | int] = field(default_factory=lambda: ["1d", "3d", "5d"])  # leads scored by the objective
    channels: list[str] = field(default_factory=lambda: ["u", "v", "z"])  # whose CRPS forms the objective
    parameters: list[Parameter] | None = None  # null = all the method has (see PARAMETERS)
    tune_channels: list[str] | None = None  # channels whose amplitude is refined (null = every model channel)
    amplitude_bounds: tuple[float, float] = (0.01, 1.0)  # search interval of perturbation.amplitude
    iterations: int = 6  # golden-section steps of the global amplitude and the length scale
    channel_iterations: int = 3  # golden-section steps of each channel's refinement
    channel_factor: float = 3.0  # a channel's refinement searches [a / factor, a * factor] (within the bounds)
    sweeps: int = 1  # passes over the channels (each after the first re-tunes noise_scale first)
    length_scale_bounds_km: tuple[float, float] = (100.0, 3000.0)  # search interval of perturbation.length_scale_km
    noise_scale_bounds: tuple[float, float] = (0.5, 2.0)  # model.noise_scale (parameters: [noise_scale, ...])
    bred_cycles: list[int] = field(default_factory=lambda: [1, 2, 3, 4])  # candidates
    calibration_weight: float = 0.0  # weight of the spread/skill term (0: fair CRPS alone)
    spread_skill_band: tuple[float, float] = (0.8, 1.25)  # corrected spread/skill the term leaves alone
    output: str | None = None  # the fragment; null = config/tuned/<method>.yaml

    def validate(self, prefix: str) -> None:
        check_split(self.split, f"{prefix}.split")
        if self.members < 2:
            fail(f"{prefix}.members", f"fair CRPS needs at least 2 members, got {self.members}")
        if self.count < 1:
            fail(f"{prefix}.count", f"must be >= 1, got {self.count}")
        parse_lead(self.every, 1, f"{prefix}.every")
        if not self.leads:
            fail(f"{prefix}.leads", "give at least one lead, e.g. [1d, 3d, 5d]")
        for i, lead in enumerate(self.leads):
            parse_lead(lead, 1, f"{prefix}.leads[{i}]")
        if not self.channels:
            fail(f"{prefix}.channels", "give at least one channel, e.g. [u, v, z]")
        lo, hi = self.amplitude_bounds
        if not 0 < lo < hi:
            fail(f"{prefix}.amplitude_bounds", f"need 0 < low < high, got [{lo}, {hi}]")
        lo, hi = self.length_scale_bounds_km
        if not 0 < lo < hi:
            fail(f"{prefix}.length_scale_bounds_km", f"need 0 < low < high, got [{lo}, {hi}]")
        for name in ("iterations", "channel_iterations", "sweeps"):
            if getattr(self, name) < 0:
                fail(f"{prefix}.{name}", f"must be >= 0, got {getattr(self, name)}")
        lo, hi = self.noise_scale_bounds
        if not 0 < lo < hi:
            fail(f"{prefix}.noise_scale_bounds", f"need 0 < low < high, got [{lo}, {hi}]")
        lo, hi = self.spread_skill_band
        if not 0 < lo <= hi:
            fail(f"{prefix}.spread_skill_band", f"need 0 < low <= high, got [{lo}, {hi}]")
        if self.calibration_weight < 0:
            fail(f"{prefix}.calibration_weight", f"must be >= 0, got {self.calibration_weight}")
        if self.channel_factor <= 1:
            fail(f"{prefix}.channel_factor", f"must be > 1, got {self.channel_factor}")
        if not self.bred_cycles or min(self.bred_cycles) < 1:
            fail(f"{prefix}.bred_cycles", f"give candidate cycle counts >= 1, got {self.bred_cycles}")


@dataclass
class TuneAppConfig(EnsembleConfig):
    """An ensemble config (the model, data, layout and perturbation to start from) plus the ``tune:`` section."""
    tune: TuneConfig = field(default_factory=TuneConfig)


@dataclass
class TuneResult:
    """What the search found (the same on every rank)."""
    start: PerturbationConfig
    best: PerturbationConfig
    noise_scale: float | None  # the tuned model.noise_scale (None: not tuned)
    objective_start: float  # 1 plus the start's spread/skill term
    objective_best: float
    crps_start: np.ndarray  # (leads, objective channels)
    crps_best: np.ndarray
    ssr_start: np.ndarray  # corrected spread/skill, (leads, objective channels)
    ssr_best: np.ndarray
    evaluations: int
    init_times: list[str]
    wall_s: float
    output: Path | None = None


def parameters_of(cfg: TuneAppConfig) -> list[str]:
    """The parameters to tune, checked against the perturbation method."""
    method = cfg.perturbation.method
    if method not in PARAMETERS:
        fail("perturbation.method", f"tune searches gaussian, spherical or bred perturbations, not {method!r}")
    params = list(cfg.tune.parameters) if cfg.tune.parameters is not None else PARAMETERS[method]
    for i, p in enumerate(params):
        if p == "noise_scale":
            if not cfg.model.stochastic:
                fail(f"tune.parameters[{i}]",
                     "noise_scale scales a stochastic model's noise; set model.stochastic=true")
            continue
        if p not in PARAMETERS[method]:
            fail(f"tune.parameters[{i}]", f"{p} is not a parameter of perturbation.method={method} "
                                          f"(it has {', '.join(PARAMETERS[method])})")
    if not params:
        fail("tune.parameters", "nothing to tune")
    return params


def tuning_config(cfg: TuneAppConfig) -> TuneAppConfig:
    """The ensemble config the candidates run with: the tune split, members and initial-time range, scores on."""
    t = cfg.tune
    ic = InitialConditions(split=t.split, start=t.start, every=t.every, count=None)
    return replace(cfg, initial_conditions=ic, ensemble=replace(cfg.ensemble, members=t.members),
                   scoring=replace(cfg.scoring, enabled=True), resume=False)


def calibration_penalty(ssr: np.ndarray, band: tuple[float, float]) -> float:
    """Mean over leads and channels of the squared distance of log(ssr) outside log(band) (0 inside)."""
    lo, hi = band
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ssr = np.log(np.asarray(ssr, dtype=float))
        out = np.maximum(np.maximum(math.log(lo) - log_ssr, log_ssr - math.log(hi)), 0.0)
    value = float(np.mean(out ** 2))
    return math.inf if value != value else value


def sig(x: float, digits: int = 4) -> float:
    """``x`` rounded to ``digits`` significant digits (what the fragment writes is what was evaluated)."""
    return float(f"{x:.{digits - 1}e}")


class Objective:
    """Fair CRPS and spread/skill of candidate perturbations on the tuning initial times and leads.

    Collective; evaluations are cached by the candidate's values."""

    def __init__(self, cfg: TuneAppConfig, comm, suggest=None):
        from ..tracing import Tracer
        from .app import make_forecaster
        from .plan import RunPlan
        from .resolve import resolve
        from .scoring import Scoring
        self.tracer = Tracer(enabled=False, rank=comm.rank)
        try:
            run = resolve(tuning_config(cfg), comm, self.tracer, suggest)
        except ConfigError as exc:  # the initial times come from tune.split/start/every
            raise ConfigError(str(exc).replace("config key 'initial_conditions.", "config key 'tune.")) from None
        t, ds = cfg.tune, run.ds
        self.params = parameters_of(cfg)
        for key, names in (("tune.channels", t.channels), ("tune.tune_channels", t.tune_channels or [])):
            bad = [c for c in names if c not in run.channels]
            if bad:
                fail(key, f"{', '.join(bad)} not among the model channels {', '.join(run.channels)}")
        steps = [parse_lead(lead, ds.dt_hours, f"tune.leads[{i}]") for i, lead in enumerate(t.leads)]
        if len(set(steps)) != len(steps) or steps != sorted(steps):
            fail("tune.leads", f"give distinct leads in increasing order, got {t.leads}")
        pc = cfg.perturbation
        cycles = max(t.bred_cycles) if "bred_cycles" in self.params else pc.bred_cycles
        history = cycles * pc.bred_steps if pc.method == "bred" else 0
        inits = [i for i in run.plan.init_indices
                 if i + steps[-1] < len(ds.times)
                 and ds.times[i + steps[-1]] == ds.times[i] + np.timedelta64(steps[-1] * ds.dt_hours, "h")
                 and not (history and missing_bred_history(run.analyses, [ds.times[i]], cycles, pc.bred_steps,
                                                            ds.dt_hours))]
        if not inits:
            fail("tune.start", f"no initial time of the '{t.split}' split has {history} earlier and "
                               f"{steps[-1]} later steps (leads {t.leads})")
        self.run = replace(run, plan=RunPlan(steps[-1], steps, inits[:t.count], ds.dt_hours))
        self.forecaster = make_forecaster(self.run, self.tracer)
        self.model_noise = False  # the stochastic model's ModelNoise (or None), made with the first rollout
        self.scoring = Scoring(self.run)
        self.channel_index = [run.channels.index(c) for c in t.channels]
        self.cache: dict[tuple, np.ndarray] = {}
        self.bar = None
        self.evaluations = 0

    def close(self) -> None:
        """Free the scoring communicator and the process grid (collective)."""
        self.scoring.close()
        self.run.grid.close()

    @property
    def init_times(self) -> list[str]:
        return [str(np.datetime64(self.run.ds.times[i], "h")) for i in self.run.plan.init_indices]

    @property
    def member_steps(self) -> int:
        """Member-steps of one evaluation."""
        plan = self.run.plan
        return self.run.members * plan.lead_steps * len(plan.init_indices)

    def crps(self, pc: PerturbationConfig, noise_scale: float | None = None) -> np.ndarray:
        """(leads, objective channels) fair CRPS of the ensemble perturbed by ``pc`` (inf if it blew up)."""
        return self.scores(pc, noise_scale)[0]

    def scores(self, pc: PerturbationConfig, noise_scale: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(fair CRPS, corrected spread/skill), each (leads, objective channels), of the members perturbed by ``pc``
        with a stochastic model's noise scaled by ``noise_scale`` (None: ``model.noise_scale``)."""
        noise_scale = self.run.cfg.model.noise_scale if noise_scale is None else noise_scale
        key = (pc.method, tuple(channel_amplitudes(pc, self.run.channels).tolist()),
               pc.length_scale_km if pc.method == "spherical" else None,
               (pc.bred_cycles, pc.bred_steps) if pc.method == "bred" else None, noise_scale)
        if key in self.cache:
            if self.bar is not None:
                self.bar.update(self.member_steps)
            return self.cache[key]
        from .app import make_model_noise, make_perturber
        from .rollout import FiniteFlags, NonFiniteForecast, Rollout
        from .plan import as_hours, time_tag
        run = replace(self.run, cfg=replace(self.run.cfg, perturbation=pc))
        if self.model_noise is False:  # built once: the stochastic model's noise does not depend on pc
            self.model_noise = make_model_noise(run)
        if self.model_noise is not None:
            self.model_noise.scale = float(noise_scale)
        rollout = Rollout(run, self.forecaster, make_perturber(run), products=None, scoring=self.scoring,
                          model_noise=self.model_noise)
        ds, plan = run.ds, run.plan
        self.scoring.reset()
        try:
            for init_index in plan.init_indices:
                x0 = ds.read(init_index, run.rows, run.cols)
                state = rollout.initial_state(init_index, x0)
                finite = FiniteFlags(run.grid.world, run.my_members, run.channels, plan.dt_hours,
                                     time_tag(ds.times[init_index]))
                for s, state in rollout.states(state, 0, self.bar, finite, as_hours(ds.times[init_index])):
                    finite.check()
                    host = ds.denormalise(state).float().cpu().numpy()
                    self.scoring.add(plan.output_steps.index(s), s, init_index, host, x0)
            scores = self.scoring.reduce()["ensemble"]
            out = (scores["crps"][:, self.channel_index], scores["ssr_corrected"][:, self.channel_index])
        except NonFiniteForecast as exc:  # raised alike on every rank
            log.info("candidate blew up (%s): objective inf", exc)
            inf = np.full((len(plan.output_steps), len(self.channel_index)), np.inf)
            out = (inf, inf)
        self.evaluations += 1
        self.cache[key] = out
        return out


class Search:
    """The tuning search over one :class:`Objective`, from the config's perturbation."""

    def __init__(self, cfg: TuneAppConfig, objective: Objective):
        self.t, self.obj = cfg.tune, objective
        self.channels = objective.run.channels
        self.start = cfg.perturbation
        self.amps = channel_amplitudes(self.start, self.channels).double().numpy()
        self.length, self.cycles = self.start.length_scale_km, self.start.bred_cycles
        self.noise_scale = cfg.model.noise_scale
        self.reference: np.ndarray | None = None
        self.best = math.inf
        self.value_start = math.nan

    def planned(self) -> int:
        """Evaluations the search makes at most (cache hits included)."""
        t, p, n = self.t, self.obj.params, 1
        n += len(t.bred_cycles) if "bred_cycles" in p else 0
        noise = 1 + golden_section_points(t.iterations) if "noise_scale" in p else 0
        n += noise
        n += 1 + golden_section_points(t.iterations) if "amplitude" in p else 0
        n += 1 + golden_section_points(t.iterations) if "length_scale_km" in p else 0
        if "channel_amplitude" in p:
            n += t.sweeps * len(t.tune_channels or self.channels) * (1 + golden_section_points(t.channel_iterations))
            n += (t.sweeps - 1) * noise
        return n

    def candidate(self, amps=None, length=None, cycles=None) -> PerturbationConfig:
        amps = self.amps if amps is None else amps
        values = {c: sig(a) for c, a in zip(self.channels, amps)}
        return replace(self.start, amplitude=values[self.channels[0]] if len(set(values.values())) == 1
                       else sig(float(np.exp(np.log(amps).mean()))), channel_amplitude=values,
                       length_scale_km=sig(self.length if length is None else length),
                       bred_cycles=self.cycles if cycles is None else cycles)

    def objective(self, pc: PerturbationConfig, what: str, noise_scale: float | None = None) -> float:
        noise_scale = self.noise_scale if noise_scale is None else noise_scale
        crps, ssr = self.obj.scores(pc, noise_scale)
        value = float(np.mean(crps / self.reference))
        penalty = calibration_penalty(ssr, self.t.spread_skill_band) if self.t.calibration_weight else 0.0
        value = value + self.t.calibration_weight * penalty
        value = math.inf if value != value else value
        self.best = min(self.best, value)
        noise = f", noise_scale {noise_scale:.4g}" if "noise_scale" in self.obj.params else ""
        log.info("tune %s: %s%s -> objective %.4f%s (best %.4f)", what, describe(pc, self.channels), noise, value,
                 f" (spread/skill term {penalty:.4f})" if self.t.calibration_weight else "", self.best)
        return value

    def run(self) -> tuple[PerturbationConfig, float]:
        t, params = self.t, self.obj.params
        self.reference = self.obj.crps(self.start)
        if not np.all(np.isfinite(self.reference)) or np.any(self.reference <= 0):
            raise ConfigError("config key 'perturbation': the starting perturbation gives no finite, positive CRPS "
                              "to normalise by; start from a smaller amplitude")
        self.value_start = self.objective(self.start, "start")
        if "bred_cycles" in params:
            scores = [(self.objective(self.candidate(cycles=c), f"bred_cycles={c}"), i)
                      for i, c in enumerate(t.bred_cycles)]
            self.cycles = t.bred_cycles[min(scores)[1]]
        if "noise_scale" in params:
            self.tune_noise_scale()
        if "amplitude" in params:
            lo, hi = (math.log(b) for b in t.amplitude_bounds)
            s, _ = golden_section(lambda s: self.objective(self.candidate(amps=self.amps * math.exp(s)), "scale"),
                                  lo - math.log(self.amps.min()), hi - math.log(self.amps.max()), t.iterations,
                                  start=0.0)
            self.amps = np.array([sig(a) for a in self.amps * math.exp(s)])
        if "length_scale_km" in params:
            lo, hi = (math.log(b) for b in t.length_scale_bounds_km)
            x, _ = golden_section(lambda x: self.objective(self.candidate(length=math.exp(x)), "length scale"),
                                  lo, hi, t.iterations, start=math.log(self.length))
            self.length = sig(math.exp(x))
        if "channel_amplitude" in params:
            for sweep in range(t.sweeps):
                if sweep and "noise_scale" in params:  # coordinate descent: the best noise moves with the amplitudes
                    self.tune_noise_scale()
                for name in t.tune_channels or self.channels:
                    self.refine(self.channels.index(name))
        best = self.candidate()
        return best, self.objective(best, "tuned")

    def tune_noise_scale(self) -> None:
        """Golden-section on the log noise scale within ``tune.noise_scale_bounds``, from its current value."""
        lo, hi = (math.log(b) for b in self.t.noise_scale_bounds)
        x, _ = golden_section(lambda x: self.objective(self.candidate(), "noise scale", sig(math.exp(x))),
                              lo, hi, self.t.iterations, start=math.log(self.noise_scale))
        self.noise_scale = sig(math.exp(x))

    def refine(self, c: int) -> None:
        """Golden-section on channel ``c``'s log amplitude within ``channel_factor`` of its value."""
        t = self.t
        here, width = math.log(self.amps[c]), math.log(t.channel_factor)
        lo = max(math.log(t.amplitude_bounds[0]), here - width)
        hi = min(math.log(t.amplitude_bounds[1]), here + width)
        if not lo < hi:
            return

        def f(x: float) -> float:
            amps = self.amps.copy()
            amps[c] = math.exp(x)
            return self.objective(self.candidate(amps=amps), f"channel {self.channels[c]}")

        x, _ = golden_section(f, lo, hi, t.channel_iterations, start=here)
        self.amps[c] = sig(math.exp(x))


def describe(pc: PerturbationConfig, channels: list[str]) -> str:
    """A short line of a candidate's tuned values."""
    amps = channel_amplitudes(pc, channels).tolist()
    text = " ".join(f"{c} {a:.4g}" for c, a in zip(channels, amps))
    if pc.method == "spherical":
        text += f", length_scale_km {pc.length_scale_km:.4g}"
    if pc.method == "bred":
        text += f", bred_cycles {pc.bred_cycles}"
    return text


def fragment_text(result: TuneResult, cfg: TuneAppConfig, channels: list[str], command: str) -> str:
    """The YAML fragment: a comment header (command, date, objective before and after), ``perturbation:`` and,
    when it was tuned, ``model: {noise_scale: ...}``."""
    import yaml
    t, pc = cfg.tune, result.best
    section = {"method": pc.method, "amplitude": pc.amplitude, "channel_amplitude": dict(pc.channel_amplitude)}
    if pc.method == "spherical":
        section["length_scale_km"] = pc.length_scale_km
    if pc.method == "bred":
        section.update(bred_cycles=pc.bred_cycles, bred_steps=pc.bred_steps)
    start = describe(result.start, channels)
    if result.noise_scale is not None:
        start += f", noise_scale {cfg.model.noise_scale:.4g}"
    head = [
        f"Tuned initial perturbations ({pc.method}), written by hpc_fcn.ensemble.tune on "
        f"{datetime.datetime.now().astimezone().isoformat(timespec='seconds')}.",
        f"command: {command}",
        f"objective: mean over leads {', '.join(map(str, t.leads))} and channels {', '.join(t.channels)} of fair "
        f"CRPS / the start's fair CRPS" + (";" if not t.calibration_weight else
                                          f", plus {t.calibration_weight:g} x the mean squared distance of log "
                                          f"spread/skill (corrected) outside [{t.spread_skill_band[0]:g}, "
                                          f"{t.spread_skill_band[1]:g}];"),
        f"  split {t.split}, {t.members} members (control: {str(cfg.ensemble.control).lower()}), "
        f"initial times {', '.join(result.init_times)}, seed {cfg.ensemble.seed}",
        f"start ({start}): {result.objective_start:.4f}  ->  tuned: {result.objective_best:.4f}",
        f"{result.evaluations} forecasts of the ensemble, {result.wall_s:.0f} s",
        "fair CRPS (physical units)   start -> tuned:",
    ]
    for li, lead in enumerate(t.leads):
        head.append(f"  {lead!s:>4}  " + "  ".join(f"{c} {result.crps_start[li, k]:.4g} -> {result.crps_best[li, k]:.4g}"
                                             for k, c in enumerate(t.channels)))
    head.append("spread/skill (corrected)   start -> tuned:")
    for li, lead in enumerate(t.leads):
        head.append(f"  {lead!s:>4}  " + "  ".join(f"{c} {result.ssr_start[li, k]:.2f} -> "
                                                   f"{result.ssr_best[li, k]:.2f}" for k, c in enumerate(t.channels)))
    head.append("Use it from an ensemble config with `include: [<path to this file>]` (relative to that config);")
    head.append("the including file's own keys win over these (perturbation: and model.noise_scale), so leave them "
                "out there.")
    data = {"perturbation": section}
    if result.noise_scale is not None:
        data = {"model": {"noise_scale": result.noise_scale}, **data}
    body = yaml.safe_dump(data, sort_keys=False)
    return "".join(f"# {line}\n" for line in head) + body


def write_fragment(path: Path, text: str) -> Path:
    """Write the fragment (rank 0), then read it back through the config loader as a check."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    from_dict(EnsembleConfig, read_config_data(path))
    return path


def tune(cfg: TuneAppConfig, comm, command: str = "", suggest=None) -> TuneResult:
    """Search the perturbation of ``cfg`` on the ranks of ``comm`` and write the fragment (collective)."""
    t0 = time.perf_counter()
    objective = Objective(cfg, comm, suggest)
    search = Search(cfg, objective)
    log.info("tune %s perturbations (%s) on %d initial times of the '%s' split (%s), %d members, leads %s, "
             "objective channels %s: at most %d forecasts of %d member-steps", cfg.perturbation.method,
             ", ".join(objective.params), len(objective.init_times), cfg.tune.split, ", ".join(objective.init_times),
             cfg.tune.members, ", ".join(map(str, cfg.tune.leads)), ", ".join(cfg.tune.channels), search.planned(),
             objective.member_steps)
    if comm.rank == 0 and cfg.progress:
        from tqdm import tqdm
        objective.bar = tqdm(total=search.planned() * objective.member_steps, unit="member-step", desc="tune",
                             dynamic_ncols=True, smoothing=0.1, mininterval=1.0)
    try:
        if objective.bar is not None:
            from tqdm.contrib.logging import logging_redirect_tqdm
            with logging_redirect_tqdm(loggers=[log]):
                best, value = search.run()
        else:
            best, value = search.run()
        crps_best, ssr_best = objective.scores(best, search.noise_scale)  # cached
    finally:
        if objective.bar is not None:
            objective.bar.close()
    tuned_noise = search.noise_scale if "noise_scale" in objective.params else None
    result = TuneResult(start=cfg.perturbation, best=best, noise_scale=tuned_noise,
                        objective_start=search.value_start, objective_best=value,
                        crps_start=search.reference, crps_best=crps_best,
                        ssr_start=objective.scores(cfg.perturbation)[1], ssr_best=ssr_best,
                        evaluations=objective.evaluations, init_times=objective.init_times,
                        wall_s=time.perf_counter() - t0)
    out = Path(cfg.tune.output or f"config/tuned/{cfg.perturbation.method}.yaml").expanduser()
    text = fragment_text(result, cfg, objective.run.channels, command)
    result.output = root_decides(comm, lambda: write_fragment(out, text))
    log.info("tuned %s: objective %.4f -> %.4f (%s%s) in %d forecasts, %.0f s; wrote %s", best.method,
             result.objective_start, value, describe(best, objective.run.channels),
             "" if tuned_noise is None else f", noise_scale {tuned_noise:.4g}", result.evaluations,
             result.wall_s, result.output)
    objective.close()
    return result


def main(argv) -> int:
    from ..cli import parse_command, start
    args = parse_command("python -m hpc_fcn.ensemble.tune",
                         "Tune the initial perturbations of an ensemble config by fair CRPS.",
                         "config/ens100.yaml", "tune.members=16", argv, schema=TuneAppConfig)
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    cfg, _ = start(TuneAppConfig, args, comm, paths_of=tuning_config)
    import perfmodel
    launcher = f"mpirun -n {comm.size} " if comm.size > 1 else ""
    command = launcher + "python -m hpc_fcn.ensemble.tune " + shlex.join([args.config, *args.overrides])
    tune(cfg, comm, command=command, suggest=perfmodel.suggest)
    return 0


if __name__ == "__main__":
    from ..runtime import main_guard
    sys.exit(main_guard(main))

"""The ensemble run: perturbed initial conditions rolled out, written, and scored across ranks.

Every rank holds the state of its ensemble group's members on its spatial window. At each output
step the ensemble mean and spread are reduced over the ensemble axis and written by rank 0; the
members are exchanged so that each rank scores all members on a block of its window.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..accel.power import PowerSampler, joules_per_member_step
from ..config import ConfigError, save_resolved
from ..runtime import UserError
from ..tracing import Tracer
from .config import EnsembleConfig
from .exchange import members_for_rows
from .perturb import Perturber, breed
from .plan import RunPlan, as_hours, make_plan, member_split, time_tag
from .resume import ResumeStore

log = logging.getLogger("hpc_fcn")
BUILTIN_CHECKPOINT = Path(__file__).resolve().parents[1] / "assets" / "builtin_model.ckpt"


def resolve_data_root(cfg: EnsembleConfig, comm) -> Path:
    if cfg.data.root == "builtin":
        from ..data.builtin import ensure_builtin
        return Path(ensure_builtin(comm))
    root = Path(cfg.data.root).expanduser()
    if not root.is_dir():
        raise ConfigError(f"config key 'data.root': {root} is not a directory; point it at the FourCastNet-layout data")
    return root


def build_serial_model(cfg: EnsembleConfig, n_chans: int, grid_shape: tuple[int, int]):
    """The serial AFNONet: the checkpoint's (``builtin`` = the committed model) or seeded random weights.

    Returns the model and the model config actually used (the checkpoint wins over the config).
    """
    from ..model import AFNONet, load_checkpoint
    ck = cfg.model.checkpoint
    if ck is None:
        torch.manual_seed(cfg.model.seed)
        model = AFNONet(**cfg.model.kwargs(n_chans, n_chans))
        mcfg = cfg.model
    else:
        path = BUILTIN_CHECKPOINT if ck == "builtin" else Path(ck).expanduser()
        if ck == "builtin" and not path.is_file():
            raise ConfigError("config key 'model.checkpoint': the built-in model is not installed "
                              f"({path} is missing); train it with python -m hpc_fcn.train config/train_builtin.yaml")
        if not path.is_file():
            raise ConfigError(f"config key 'model.checkpoint': {path} does not exist")
        model = load_checkpoint(path)
        mc = model.config()
        mcfg = replace(cfg.model, img_size=tuple(mc["img_size"]), patch_size=int(mc["patch_size"][0]),
                       embed_dim=mc["embed_dim"], depth=mc["depth"], mlp_ratio=float(mc["mlp_ratio"]),
                       num_blocks=mc["num_blocks"], sparsity_threshold=mc["sparsity_threshold"],
                       hard_thresholding_fraction=mc["hard_thresholding_fraction"])
        if model.in_chans != n_chans or model.out_chans != n_chans:
            raise ConfigError(f"config key 'data.channels': the checkpoint has {model.in_chans} input and "
                              f"{model.out_chans} output channels but {n_chans} channels are selected")
    if tuple(mcfg.img_size) != tuple(grid_shape):
        raise ConfigError(f"config key 'model.img_size': the model grid {tuple(mcfg.img_size)} does not match the "
                          f"data's model grid {tuple(grid_shape)}")
    return model.eval(), mcfg


def choose_layout(cfg: EnsembleConfig, world: int, n_chans: int):
    """The parallel section to use: as configured, or the performance model's pick for ``layout: auto``."""
    par = cfg.parallel
    if par.layout == "auto":
        import perfmodel
        kwargs = cfg.model.kwargs(n_chans, n_chans)
        hw = par.hardware if par.hardware != "auto" else ("h100" if torch.cuda.is_available() else "this_machine")
        layout, pred = perfmodel.suggest(kwargs, ranks=world, hardware=perfmodel.load_hardware(hw),
                                         members=cfg.ensemble.members,
                                         members_per_pass=max(1, cfg.inference.members_per_pass))
        par = replace(par, ensemble=layout["ensemble"], h=layout["h"], w=layout["w"], matmul=layout["matmul"],
                      layout="manual")
        log.info("layout chosen by the performance model: %s (predicted %.3g s per step)", layout,
                 pred.step_time_s)
    return par


TOP_LEVEL_COMPUTE = ("forecast.step", "perturbation", "ensemble_stats", "scoring")


def rank_timings(tracer: Tracer) -> dict[str, float]:
    """Seconds in compute (excluding the collectives nested in it), communication and IO."""
    summ = tracer.summary()
    comm = sum(v["seconds"] for v in summ.values() if v["category"] == "comm")
    io = sum(summ[k]["seconds"] for k in ("io.read", "io.write") if k in summ)
    compute = sum(summ[k]["seconds"] for k in TOP_LEVEL_COMPUTE if k in summ) - comm
    return {"compute": compute, "comm": comm, "io": io}


class EnsembleRun:
    """One configured ensemble run on the ranks of ``comm``."""

    def __init__(self, cfg: EnsembleConfig, comm):
        from ..data.era5 import open_split
        from ..parallel.grid import ProcessGrid
        self.comm = comm
        self.tracer = Tracer(enabled=True, rank=comm.rank)
        root = resolve_data_root(cfg, comm)
        self.ds = open_split(cfg.data, cfg.initial_conditions.split, root=root)
        ds = self.ds
        self.channels = list(ds.channels)
        C = len(self.channels)
        self.out_vars = list(cfg.output.variables or self.channels)
        bad = [v for v in self.out_vars if v not in self.channels]
        if bad:
            raise ConfigError(f"config key 'output.variables': {', '.join(bad)} not among the model channels "
                              f"{', '.join(self.channels)}")
        self.out_idx = [self.channels.index(v) for v in self.out_vars]
        self.plan: RunPlan = make_plan(cfg, ds.times, ds.dt_hours)
        serial, mcfg = build_serial_model(cfg, C, (ds.nlat, ds.nlon))
        cfg = replace(cfg, model=mcfg)
        par = choose_layout(cfg, comm.size, C)
        cfg = replace(cfg, parallel=par)
        self.cfg = cfg
        from ..forecaster import Forecaster
        from ..runtime import local_rank
        self.device = Forecaster.select_device(cfg.inference, local_rank(comm))
        self.grid = ProcessGrid.from_config(par, comm, tracer=self.tracer, device=self.device.type)
        g = self.grid
        g.validate_model(mcfg.img_size, mcfg.patch_size, mcfg.embed_dim, mcfg.num_blocks,
                         int(mcfg.embed_dim * mcfg.mlp_ratio))
        self.M = cfg.ensemble.members
        E = g.shape["ensemble"]
        self.my_members = member_split(self.M, E, g.coords["ensemble"])
        self.group_counts = [len(member_split(self.M, E, e)) for e in range(E)]
        self.rows, self.cols = g.local_window(mcfg.img_size, mcfg.patch_size)
        if g.model.size > 1:
            from ..parallel.model import DistributedAFNONet
            net = DistributedAFNONet.from_serial(serial, None, g).eval()
        else:
            net = serial
        net = net.to(self.device)
        if cfg.trace:
            from ..instrument import instrument
            self._hooks = instrument(net, self.tracer)
        self.forecaster = Forecaster(net, cfg.inference, grid=g, tracer=self.tracer)
        self.perturber = Perturber(cfg.perturbation, channels=self.channels, nlat=ds.nlat, nlon=ds.nlon,
                                   rows=self.rows, cols=self.cols, seed=cfg.ensemble.seed, control=cfg.ensemble.control)
        self.outdir = Path(cfg.output.dir)
        # ranks that own a distinct window (matmul replicas hold copies)
        self.scorer = g.coords["matmul"] == 0

    # ---- helpers ------------------------------------------------------------------------------
    def step(self, x: torch.Tensor) -> torch.Tensor:
        return self.forecaster.step(x)

    def check_finite(self, x: torch.Tensor, step: int, init_tag: str) -> None:
        if bool(torch.isfinite(x).all()):
            return
        bad = (~torch.isfinite(x)).nonzero()[0].tolist()
        member = self.my_members[bad[0]]
        raise RuntimeError(f"the forecast became non-finite (NaN/Inf): initial time {init_tag}, member {member}, "
                           f"step {step} (lead {step * self.plan.dt_hours} h), variable {self.channels[bad[1]]}")

    def initial_state(self, init_index: int, x0_phys: np.ndarray) -> torch.Tensor:
        """(m_local, C, r, c) perturbed members of this rank's group, normalised units."""
        cfg, ds = self.cfg, self.ds
        init_hours = as_hours(ds.times[init_index])
        x0 = ds.normalise(torch.from_numpy(x0_phys).to(self.device))
        with self.tracer.region("perturbation", "compute"):
            if cfg.perturbation.method != "bred":
                return self.perturber.perturb(x0, init_hours, self.my_members)  # noise moves to x0's device
            return self.bred_state(x0, init_index, init_hours)

    def bred_state(self, x0: torch.Tensor, init_index: int, init_hours: int) -> torch.Tensor:
        pc = self.cfg.perturbation
        back = pc.bred_cycles * pc.bred_steps
        if init_index < back:
            raise UserError(f"bred vectors need {back} earlier analyses ({pc.bred_cycles} cycles x {pc.bred_steps} "
                            f"steps) before {self.ds.times[init_index]}; choose a later initial time")
        amp = self.perturber.amp
        seeds = torch.stack([self.perturber.initial_noise(init_hours, m, self.device) for m in self.my_members])
        ctrl = [self.perturber.is_control(m) for m in self.my_members]

        def analysis(c: int) -> torch.Tensor:
            idx = init_index - back + c * pc.bred_steps
            return torch.from_numpy(self.ds.read(idx, self.rows, self.cols, normalise=True)).to(self.device)

        def global_rms(d: torch.Tensor) -> torch.Tensor:
            local = d.double().pow(2).sum(dim=(-2, -1))
            if self.grid.spatial.size > 1:
                local = self.grid.spatial.all_reduce(local, tag="bred_norm")
            return (local / (self.ds.nlat * self.ds.nlon)).sqrt().float()[..., None, None]

        if not len(self.my_members):
            return x0.new_zeros((0,) + tuple(x0.shape))
        delta = breed(analysis, seeds, self.step, pc.bred_cycles, pc.bred_steps, amp, global_rms)
        keep = torch.tensor([0.0 if c else 1.0 for c in ctrl], device=self.device).view(-1, 1, 1, 1)
        return x0.unsqueeze(0) + delta * keep

    # ---- the run ------------------------------------------------------------------------------
    def run(self) -> dict:
        from mpi4py import MPI
        from ..metrics import ScoreAccumulator, lat_weights
        cfg, ds, g, plan = self.cfg, self.ds, self.grid, self.plan
        comm = self.comm
        if comm.rank == 0:
            self.outdir.mkdir(parents=True, exist_ok=True)
            save_resolved(cfg, self.outdir)
        comm.Barrier()
        self.ens_comm = g.ensemble.comm
        self.score_comm = comm.Split(0 if self.scorer else MPI.UNDEFINED, comm.rank)
        self.member_comm = self.score_comm  # matmul replicas send nothing to the writer either
        full_w = lat_weights(ds.lat, cfg.scoring.lat_weights)
        self.row_w = full_w[self.rows]
        with self.tracer.region("io.read", "io"):
            self.clim = ds.climatology(self.rows, self.cols).astype(np.float32)
        L = len(plan.output_steps)
        ctl = 0 if (cfg.ensemble.control or cfg.perturbation.method == "none") else None
        self.acc = {"ensemble": ScoreAccumulator(self.channels, L, self.M, control_member=ctl,
                                                 rng=np.random.default_rng(cfg.ensemble.seed)),
                    "persistence": ScoreAccumulator(self.channels, L, 1),
                    "climatology": ScoreAccumulator(self.channels, L, 1)}
        store = ResumeStore(self.outdir, comm, dict(g.shape, members=self.M, inits=len(plan.init_indices),
                                                     steps=plan.lead_steps))
        start_init, payload = 0, None
        if cfg.resume:
            loaded = store.load()
            if loaded is not None:
                marker, payload = loaded
                start_init = int(marker["init_pos"])
                self.acc = payload["accs"]
                log.info("resuming at initial time %d of %d, step %s", start_init + 1, len(plan.init_indices),
                         marker.get("step"))
        elif comm.rank == 0 and store.marker.exists():
            store.marker.unlink()
        bar = self._progress_bar(start_init, payload)
        power = PowerSampler(self.device).start()
        t_start = time.perf_counter()
        for k in range(start_init, len(plan.init_indices)):
            resume_payload = payload if (payload is not None and payload.get("step", -1) >= 0 and k == start_init) else None
            self.run_initial_time(k, store, bar, resume_payload)
            store.save({"init_pos": k + 1, "step": -1}, {"accs": self.acc})
        if bar is not None:
            bar.close()
        wall = time.perf_counter() - t_start
        self.energy = dict(power.stop().as_dict(),  # GPU joules (None without NVML) of the member-steps run here
                           member_steps=self.M * plan.lead_steps * (len(plan.init_indices) - start_init))
        scores = self.finish(wall)
        if self.score_comm != MPI.COMM_NULL:
            self.score_comm.Free()
        self.grid.close()  # releases the axis communicators and any torch.distributed groups
        return scores

    def _progress_bar(self, start_init: int, payload):
        if self.comm.rank != 0 or not self.cfg.progress:
            return None
        from tqdm import tqdm
        total = len(self.plan.init_indices) * self.plan.lead_steps * self.M
        done = start_init * self.plan.lead_steps * self.M
        if payload is not None and payload.get("step", -1) >= 0:
            done += payload["step"] * self.M
        return tqdm(total=total, initial=done, unit="member-step", desc="ensemble", dynamic_ncols=True,
                    smoothing=0.1, mininterval=1.0)

    def writers(self, init_time, resume_at: int | None) -> dict:
        """The output files of one initial time (only world rank 0 writes)."""
        from ..io.netcdf import ForecastWriter, forecast_path
        if self.comm.rank != 0:
            return {}
        cfg, ds = self.cfg, self.ds
        products = ["mean", "spread"] + (["members"] if cfg.output.members else [])
        from ..config import dump_yaml
        attrs = {"title": f"hpc_fcn ensemble forecast ({cfg.ensemble.members} members)",
                 "config": dump_yaml(cfg), "ensemble_seed": cfg.ensemble.seed,
                 "perturbation_method": cfg.perturbation.method,
                 "perturbation_amplitude": cfg.perturbation.amplitude,
                 "perturbation_units": "normalised (fraction of each channel's global standard deviation)",
                 "model_checkpoint": str(cfg.model.checkpoint), "layout": str(self.grid.shape)}
        out = {}
        for p in products:
            path = forecast_path(self.outdir, init_time, p)
            if resume_at is not None:
                out[p] = ForecastWriter.open_existing(path, resume_at=resume_at)
            else:
                out[p] = ForecastWriter(
                    path, variables=self.out_vars, units={v: ds.units[v] for v in self.out_vars},
                    standard_names={v: ds.standard_names.get(v) for v in self.out_vars},
                    long_names={v: ds.long_names[v] for v in self.out_vars}, lat=ds.lat, lon=ds.lon,
                    init_time=init_time, lead_hours=self.plan.lead_hours, product=p,
                    n_members=self.M, attrs=attrs)
        return out

    def run_initial_time(self, k: int, store: ResumeStore, bar, payload) -> None:
        plan, ds = self.plan, self.ds
        init_index = plan.init_indices[k]
        init_time = ds.times[init_index]
        tag = time_tag(init_time)
        with self.tracer.region("io.read", "io"):
            self.x0 = ds.read(init_index, self.rows, self.cols)
        if payload is not None:
            state, first = payload["state"].to(self.device), payload["step"] + 1
            lead_done = plan.output_steps.index(payload["step"]) + 1
        else:
            state, first, lead_done = self.initial_state(init_index, self.x0), 0, None
        files = self.writers(init_time, lead_done)
        try:
            for s in range(first, plan.lead_steps + 1):
                if s > 0:
                    with self.tracer.region("forecast.step", "compute"):
                        state = self.step(state)
                    if bar is not None:
                        bar.update(self.M)
                self.check_finite(state, s, tag)
                if s in plan.output_steps:
                    self.output(plan.output_steps.index(s), s, init_index, state, files)
                    if s < plan.lead_steps:
                        store.save({"init_pos": k, "step": s}, {"state": state.cpu(), "step": s, "accs": self.acc})
        finally:
            for f in files.values():
                f.close()

    def output(self, li: int, step: int, init_index: int, state: torch.Tensor, files: dict) -> None:
        """Write mean/spread (and members) of lead ``li`` and add it to the scores."""
        from mpi4py import MPI
        from ..io.netcdf import gather_window_to_root
        g, tr, M = self.grid, self.tracer, self.M
        phys = self.ds.denormalise(state).cpu().numpy()
        with tr.region("ensemble_stats", "compute"):
            s1 = phys.astype(np.float64).sum(axis=0)
            with tr.comm("allreduce.ens_mean", s1.nbytes):
                self.ens_comm.Allreduce(MPI.IN_PLACE, s1, op=MPI.SUM)
            mean = s1 / M
            s2 = ((phys - mean) ** 2).sum(axis=0)
            with tr.comm("allreduce.ens_var", s2.nbytes):
                self.ens_comm.Allreduce(MPI.IN_PLACE, s2, op=MPI.SUM)
            spread = np.sqrt(s2 / (M - 1)) if M > 1 else np.zeros_like(s2)
        oi = self.out_idx
        full2 = (len(oi), self.ds.nlat, self.ds.nlon)
        with tr.region("io.write", "io"):
            if g.coords["ensemble"] == 0 and self.scorer:
                for name, field in (("mean", mean), ("spread", spread)):
                    full = gather_window_to_root(g.spatial.comm, field[oi].astype(np.float32), full2,
                                                 rows=self.rows, cols=self.cols)
                    if full is not None:
                        files[name].write(li, full)
            if self.cfg.output.members and self.scorer:
                mine = self.my_members
                for m in range(M):  # one member at a time bounds the writer's memory to one field
                    own = phys[m - mine.start, oi][None] if m in mine else None
                    full = gather_window_to_root(self.member_comm, own, (1,) + full2, rows=self.rows, cols=self.cols)
                    if full is not None:
                        files["members"].write(li, full, members=slice(m, m + 1))
            for f in files.values():
                f.flush()
        if not (self.cfg.scoring.enabled and self.scorer):
            return
        valid = self.valid_index(init_index, step)
        if valid is None:
            return
        with tr.region("io.read", "io"):
            truth = self.ds.read(valid, self.rows, self.cols)
        with tr.region("scoring", "compute"):
            with tr.comm("alltoall.score_members", phys.nbytes if self.ens_comm.size > 1 else 0):
                members, blk = members_for_rows(self.ens_comm, phys, self.group_counts)
            o, cl, w = truth[:, blk], self.clim[:, blk], self.row_w[blk]
            self.acc["ensemble"].add(li, members, o, cl, w)
            self.acc["persistence"].add(li, self.x0[None, :, blk], o, cl, w)
            self.acc["climatology"].add(li, cl[None], o, cl, w)

    def valid_index(self, init_index: int, step: int) -> int | None:
        """Index of the truth at the valid time, or None when the split does not have it."""
        t = self.ds.times[init_index] + np.timedelta64(step * self.plan.dt_hours, "h")
        hit = np.nonzero(self.ds.times == t)[0]
        return int(hit[0]) if len(hit) else None

    # ---- the end ------------------------------------------------------------------------------
    def finish(self, wall: float) -> dict:
        from mpi4py import MPI
        from .report import format_table, metrics_document, timing_table
        scores = None
        if self.score_comm != MPI.COMM_NULL:
            scores = {k: a.reduce(self.score_comm) for k, a in self.acc.items()}
        scores = self.comm.bcast(scores, root=0)
        doc = metrics_document(scores, self.channels, self.plan.lead_hours, self.M,
                               [self.ds.times[i] for i in self.plan.init_indices], self.cfg.scoring.lat_weights)
        timings = self.comm.gather(dict(rank_timings(self.tracer), wall=wall, group=self.grid.coords["ensemble"],
                                        energy=getattr(self, "energy", None) or {}), root=0)
        if self.comm.rank == 0:
            (self.outdir / "metrics.json").write_text(json.dumps(doc, indent=1))
            summ = self.tracer.summary()
            energy = joules_per_member_step([t["energy"] for t in timings], timings[0]["energy"].get("member_steps", 0))
            (self.outdir / "timings.json").write_text(json.dumps({"ranks": timings, "rank0_regions": summ,
                                                                  "energy": energy}, indent=1))
            table = format_table(doc, self.cfg.scoring.table_leads)
            (self.outdir / "metrics.md").write_text(table + "\n")
            print(table, flush=True)
            print(timing_table(timings, self.M * self.plan.lead_steps * len(self.plan.init_indices)), flush=True)
            log.info("outputs in %s", self.outdir)
        if self.cfg.trace:
            from ..tracing import write_traces
            c = self.cfg
            write_traces(self.tracer, self.outdir / "traces", self.comm,
                         meta=dict(model_kwargs=c.model.kwargs(len(self.channels), len(self.channels)),
                                   layout=dict(self.grid.shape), members_per_pass=self.forecaster.members_per_pass,
                                   precision=c.inference.precision, members=self.M,
                                   steps=self.plan.lead_steps * len(self.plan.init_indices)))
        return doc

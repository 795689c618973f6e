"""Everything an ensemble run decides before its first step, decided once: config, checkpoint, layout, placement.

``resolve(cfg, comm)`` opens the initial-condition split, plans the initial times and leads, loads the
serial model (the checkpoint's architecture wins over the config's), picks the parallel layout, this
rank's device and process grid, and this rank's members and window. The rollout, the products and
the scoring read these facts from the :class:`ResolvedRun` instead of deciding them again.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..config import ConfigError
from ..data.analyses import Analyses
from ..data.era5 import FCNDataset, layout_times, open_split
from ..model.afnonet import AFNONet
from ..parallel.grid import ProcessGrid
from ..parallel.layout import check_layout
from ..setup import data_root, process_grid, rank_device, serial_model
from ..tracing import Tracer
from .config import EnsembleConfig
from .plan import Lagging, RunPlan, make_lagging, make_plan, member_split

log = logging.getLogger("hpc_fcn")


def choose_layout(cfg: EnsembleConfig, world: int, n_chans: int, suggest=None):
    """The parallel section to use: as configured, or for ``layout: auto`` the pick of ``suggest`` (the
    performance model's ``perfmodel.suggest``, passed in by the command line above this package)."""
    par = cfg.parallel
    if par.layout == "auto":
        if suggest is None:
            raise ConfigError("config key 'parallel.layout': auto needs the performance model; run through "
                              "python -m hpc_fcn.ensemble, or set the layout by hand")
        kwargs = cfg.model.kwargs(n_chans, n_chans)
        hw = par.hardware if par.hardware != "auto" else ("h100" if torch.cuda.is_available() else "this_machine")
        layout, pred = suggest(kwargs, ranks=world, hardware=hw, members=cfg.ensemble.total,
                               members_per_pass=cfg.inference.members_per_pass,  # 0: the forecaster's own rule
                               cuda_graphs=cfg.inference.cuda_graphs)
        par = replace(par, ensemble=layout["ensemble"], h=layout["h"], w=layout["w"], matmul=layout["matmul"],
                      layout="manual")
        log.info("layout chosen by the performance model: %s (predicted %.3g s per step)", layout,
                 pred.step_time_s)
    return par


@dataclass
class ResolvedRun:
    """The facts of one ensemble run on one rank."""
    cfg: EnsembleConfig  # model and parallel sections as run: the checkpoint's architecture, the chosen layout
    tracer: Tracer
    data_root: Path  # the data root
    ds: FCNDataset  # the initial-condition split
    analyses: Analyses  # analyses by time over every split of the data root (the bred vectors' history)
    plan: RunPlan
    channels: list[str]  # the model's channels
    out_vars: list[str]  # the channels written
    out_idx: list[int]  # their indices in ``channels``
    serial: AFNONet | None  # the serial model (CPU); None once a distributed model was sharded from it (the app)
    device: torch.device
    grid: ProcessGrid  # every communicator of the run: ``grid.world`` and one per axis
    rows: slice  # this rank's window of the model grid
    cols: slice
    my_members: range  # this rank's ensemble group's members
    group_counts: list[int]  # members of each ensemble group
    lag: Lagging  # the lag groups of a lagged ensemble (one group: a plain ensemble)

    @property
    def members(self) -> int:
        """Members of the whole ensemble (every lag group's)."""
        return self.cfg.ensemble.total

    @property
    def scorer(self) -> bool:
        """Whether this rank owns a distinct window (matmul replicas hold copies and score nothing)."""
        return self.grid.coords["matmul"] == 0


def members_fit(members: int, need: int, free: int, ranks_per_node: int, where: str) -> str | None:
    """Why ``ensemble.members`` cannot run when the ranks of one node need ``need`` bytes each (from the memory
    model of :mod:`hpc_fcn.model.facts`) and the node has ``free``; None when they fit."""
    from ..io.outdir import human
    if need * ranks_per_node <= free:
        return None
    return (f"config key 'ensemble.members': {members} members need about {human(need)} per rank {where}, "
            f"{human(need * ranks_per_node)} for the {ranks_per_node} rank(s) of a node, but {human(free)} is free; "
            "use fewer members, or more ranks (and nodes) on the ensemble axis")


def _agree(world, why: str | None) -> None:
    """Raise on every rank the first rank's reason (memory differs from node to node); collective."""
    first = next((w for w in world.allgather(why, tag="members_fit") if w), None)
    if first:
        raise ConfigError(first)


def _members_before_data(cfg: EnsembleConfig, ranks: int, node_ranks: int) -> str | None:
    """Before the built-in dataset is generated: the members' states alone, split over every rank at best."""
    from ..accel.memory import free_bytes
    from ..data.builtin import is_complete
    from ..data.synth import CHANNELS, builtin_options, builtin_root
    from ..model.facts import HELD_IMAGES
    if cfg.data.root != "builtin" or is_complete(builtin_root()):
        return None
    o = builtin_options()
    need = HELD_IMAGES * -(-cfg.ensemble.total // ranks) * o.nlat * o.nlon * len(CHANNELS) * 4
    return members_fit(cfg.ensemble.total, need, free_bytes(torch.device("cpu")), node_ranks,
                       "for their states alone")


def _members_on_layout(cfg: EnsembleConfig, grid: ProcessGrid, device: torch.device, n_chans: int,
                       node_ranks: int) -> str | None:
    """The members this rank holds between passes and one pass's live set, against this node's free memory."""
    from ..accel.memory import free_bytes
    from ..model.config import ModelShape
    from ..model.facts import held_bytes, member_bytes
    from ..parallel.layout import Layout
    s = grid.shape
    lay = Layout(s["ensemble"], s["h"], s["w"], s["matmul"])
    shape = ModelShape.of(cfg.model.kwargs(n_chans, n_chans))
    M = cfg.ensemble.total
    need = held_bytes(shape, lay, -(-M // s["ensemble"]), M, s["ensemble"]) + \
        member_bytes(shape, lay, cfg.inference.precision).total
    free = free_bytes(device) + (free_bytes(torch.device("cpu")) if device.type == "cuda" else 0)
    where = f"on ensemble={s['ensemble']} x h={s['h']} x w={s['w']} x matmul={s['matmul']}"
    return members_fit(M, need, free, node_ranks, where)


def _builtin_times(cfg: EnsembleConfig) -> tuple[np.ndarray, int] | None:
    """(times, step in hours) of the initial-condition split of the built-in dataset, known without generating
    it (the generator writes ``steps_per_year`` 6-hourly samples from January 1 of each year); None for other data."""
    from ..data.synth import SIX_HOURS, _split_dir, builtin_options
    if cfg.data.root != "builtin":
        return None
    opts, dt = builtin_options(), int(SIX_HOURS // 3600)
    folder = cfg.data.split_dir(cfg.initial_conditions.split)
    years = [y for y in opts.years if _split_dir(opts, y) == folder]
    return layout_times(years, [opts.steps_per_year] * len(years), dt), dt


def check_before_data(cfg: EnsembleConfig, world: int) -> None:
    """The checks that need no data, made before any is generated or read (alike on every rank, so a bad
    config fails at once with one line): the layout against the ``world`` ranks, the members against the
    ensemble groups, and for the built-in dataset (whose times and step are known) the lead time, the
    initial times and the lagged ensemble's."""
    par = cfg.parallel
    if par.layout == "manual":
        member_split(cfg.ensemble.total, check_layout(world, par.ensemble, par.h, par.w, par.matmul), 0)
    known = _builtin_times(cfg)
    if known is not None:
        times, dt = known
        make_lagging(cfg, times, dt, make_plan(cfg, times, dt).init_indices)


def resolve(cfg: EnsembleConfig, comm, tracer: Tracer, suggest=None) -> ResolvedRun:
    """Resolve ``cfg`` on the ranks of ``comm`` (collective)."""
    from ..parallel.comm import MPICommunicator
    from ..runtime import local_size
    check_before_data(cfg, comm.size)
    node_ranks = local_size(comm)
    _agree(MPICommunicator(comm, "setup"), _members_before_data(cfg, comm.size, node_ranks))
    root = data_root(cfg.data, comm)
    ds = open_split(cfg.data, cfg.initial_conditions.split, root=root)
    analyses = Analyses(cfg.data, cfg.initial_conditions.split, root, ds)
    channels = list(ds.channels)
    C = len(channels)
    out_vars = list(cfg.output.variables or channels)
    bad = [v for v in out_vars if v not in channels]
    if bad:
        raise ConfigError(f"config key 'output.variables': {', '.join(bad)} not among the model channels "
                          f"{', '.join(channels)}")
    plan = make_plan(cfg, ds.times, ds.dt_hours)
    lag = make_lagging(cfg, ds.times, ds.dt_hours, plan.init_indices)
    with tracer.region("checkpoint.load", "io"):
        serial, mcfg = serial_model(cfg.model, C, (ds.nlat, ds.nlon))
    cfg = replace(cfg, model=mcfg)
    cfg = replace(cfg, parallel=choose_layout(cfg, comm.size, C, suggest))
    device = rank_device(cfg.inference.device, comm)
    grid = process_grid(cfg.parallel, comm, device, tracer)
    grid.validate_model(mcfg.img_size, mcfg.patch_size, mcfg.embed_dim, mcfg.num_blocks,
                        int(mcfg.embed_dim * mcfg.mlp_ratio))
    _agree(grid.world, _members_on_layout(cfg, grid, device, C, node_ranks))
    M, E = cfg.ensemble.total, grid.shape["ensemble"]
    rows, cols = grid.local_window(mcfg.img_size, mcfg.patch_size)
    return ResolvedRun(cfg=cfg, tracer=tracer, data_root=root, ds=ds, analyses=analyses, plan=plan,
                       channels=channels, out_vars=out_vars, out_idx=[channels.index(v) for v in out_vars],
                       serial=serial, device=device, grid=grid, rows=rows, cols=cols,
                       my_members=member_split(M, E, grid.coords["ensemble"]),
                       group_counts=[len(member_split(M, E, e)) for e in range(E)], lag=lag)

"""Everything an ensemble run decides before its first step, decided once: config, checkpoint, layout, placement.

``resolve(cfg, comm)`` opens the initial-condition split, plans the initial times and leads, loads the
serial model (the checkpoint's architecture wins over the config's), picks the parallel layout, this
rank's device and process grid, and this rank's members and window. The rollout, the products and
the scoring read these facts from the :class:`ResolvedRun` instead of deciding them again.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch

from ..config import ConfigError
from ..setup import data_root, process_grid, rank_device, serial_model
from ..tracing import Tracer
from .config import EnsembleConfig
from .plan import RunPlan, make_plan, member_split

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
        layout, pred = suggest(kwargs, ranks=world, hardware=hw, members=cfg.ensemble.members,
                               members_per_pass=max(1, cfg.inference.members_per_pass))
        par = replace(par, ensemble=layout["ensemble"], h=layout["h"], w=layout["w"], matmul=layout["matmul"],
                      layout="manual")
        log.info("layout chosen by the performance model: %s (predicted %.3g s per step)", layout,
                 pred.step_time_s)
    return par


@dataclass
class ResolvedRun:
    """The facts of one ensemble run on one rank."""
    cfg: EnsembleConfig  # model and parallel sections as run: the checkpoint's architecture, the chosen layout
    comm: object  # the run's MPI communicator
    tracer: Tracer
    data_root: object  # Path of the data
    ds: object  # the initial-condition split (hpc_fcn.data.era5 reader)
    analyses: object  # analyses by time over every split of the data root (hpc_fcn.data.analyses: bred history)
    plan: RunPlan
    channels: list[str]  # the model's channels
    out_vars: list[str]  # the channels written
    out_idx: list[int]  # their indices in ``channels``
    serial: torch.nn.Module  # the serial model (CPU)
    device: torch.device
    grid: object  # the ProcessGrid
    rows: slice  # this rank's window of the model grid
    cols: slice
    my_members: range  # this rank's ensemble group's members
    group_counts: list[int]  # members of each ensemble group

    @property
    def members(self) -> int:
        return self.cfg.ensemble.members

    @property
    def scorer(self) -> bool:
        """Whether this rank owns a distinct window (matmul replicas hold copies and score nothing)."""
        return self.grid.coords["matmul"] == 0


def resolve(cfg: EnsembleConfig, comm, tracer: Tracer, suggest=None) -> ResolvedRun:
    """Resolve ``cfg`` on the ranks of ``comm`` (collective)."""
    from ..data.analyses import Analyses
    from ..data.era5 import open_split
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
    serial, mcfg = serial_model(cfg.model, C, (ds.nlat, ds.nlon))
    cfg = replace(cfg, model=mcfg)
    cfg = replace(cfg, parallel=choose_layout(cfg, comm.size, C, suggest))
    device = rank_device(cfg.inference.device, comm)
    grid = process_grid(cfg.parallel, comm, device, tracer)
    grid.validate_model(mcfg.img_size, mcfg.patch_size, mcfg.embed_dim, mcfg.num_blocks,
                        int(mcfg.embed_dim * mcfg.mlp_ratio))
    M, E = cfg.ensemble.members, grid.shape["ensemble"]
    rows, cols = grid.local_window(mcfg.img_size, mcfg.patch_size)
    return ResolvedRun(cfg=cfg, comm=comm, tracer=tracer, data_root=root, ds=ds, analyses=analyses, plan=plan,
                       channels=channels, out_vars=out_vars, out_idx=[channels.index(v) for v in out_vars],
                       serial=serial, device=device, grid=grid, rows=rows, cols=cols,
                       my_members=member_split(M, E, grid.coords["ensemble"]),
                       group_counts=[len(member_split(M, E, e)) for e in range(E)])

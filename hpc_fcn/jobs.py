"""Batch job scripts (Slurm, PBS) for the ensemble and training apps: GPU nodes (one rank per GPU) or CPU
nodes (``--gpus-per-node 0``: ranks of ``--threads-per-rank`` cores each).

``python -m hpc_fcn.jobs CONFIG --scheduler slurm --nodes 2 --gpus-per-node 4 --hardware a100`` asks the
performance model (``perfmodel.suggest``) for the fastest ``ensemble x h x w x matmul`` layout of the
ranks that fits in memory, writes a script that passes it as ``parallel.*`` overrides, and prints the
predicted time to solution and memory per rank. Slurm scripts survive preemption and time limits: they
ask for SIGTERM before the limit, run with ``resume=true`` and requeue themselves until the run is
complete. ``render`` is the one place scripts are written, so the examples in jobs/
(``--write-examples``) and generated scripts share one structure.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

from .config import ConfigError, load_config, read_config_data

APPS = {"ensemble": "hpc_fcn.ensemble", "train": "hpc_fcn.train"}
STOP_BEFORE_S = 180  # Slurm signals the script this long before its time limit: a step and a snapshot fit
_TIME = re.compile(r"^(\d+):([0-5]\d):([0-5]\d)$")


class JobError(ValueError):
    """A request the generator cannot turn into a job script (one line)."""


@dataclass
class Job:
    """Everything a job script says: where it runs, what it runs, and with which layout."""
    scheduler: Literal["slurm", "pbs"]
    nodes: int
    gpus_per_node: int  # 0: CPU nodes
    app: Literal["ensemble", "train"]
    config: str
    time: str = "01:00:00"
    account: str | None = None
    partition: str | None = None  # PBS: the queue
    launcher: Literal["srun", "mpirun"] = "srun"
    cpus_per_gpu: int = 8  # GPU nodes: cores per rank
    cpus_per_node: int = 0  # CPU nodes: the cores of a node
    threads_per_rank: int = 1  # CPU nodes: cores (torch threads) per rank
    stop_before_s: int = STOP_BEFORE_S  # Slurm: SIGTERM this long before the time limit
    name: str | None = None
    layout: dict | None = None  # None: the example scripts, where the user edits LAYOUT
    overrides: list[str] = field(default_factory=list)  # passed after the layout and device settings
    header: list[str] = field(default_factory=list)  # comment lines at the top (how it was made, predictions)

    @property
    def cpu(self) -> bool:
        return self.gpus_per_node == 0

    @property
    def ranks_per_node(self) -> int:
        return self.cpus_per_node // self.threads_per_rank if self.cpu else self.gpus_per_node

    @property
    def threads(self) -> int:
        """Cores (torch threads) of one rank."""
        return self.threads_per_rank if self.cpu else self.cpus_per_gpu

    @property
    def ranks(self) -> int:
        return self.nodes * self.ranks_per_node

    def validate(self) -> None:
        if self.scheduler not in ("slurm", "pbs"):
            raise JobError(f"--scheduler must be slurm or pbs, got {self.scheduler!r}")
        if self.nodes < 1 or self.gpus_per_node < 0 or self.cpus_per_gpu < 1:
            raise JobError("--nodes and --cpus-per-gpu must be >= 1 and --gpus-per-node >= 0 (0: CPU nodes)")
        if self.cpu and not 1 <= self.threads_per_rank <= self.cpus_per_node:
            raise JobError(f"--threads-per-rank {self.threads_per_rank} must be between 1 and --cpus-per-node "
                           f"{self.cpus_per_node} (CPU nodes: ranks per node = cores / threads per rank)")
        if not _TIME.match(self.time):
            raise JobError(f"--time {self.time!r} is not HH:MM:SS (e.g. 02:30:00)")
        if self.launcher not in ("srun", "mpirun"):
            raise JobError(f"--launcher must be srun or mpirun, got {self.launcher!r}")
        if self.scheduler == "pbs" and self.launcher == "srun":
            raise JobError("srun exists only under Slurm: use --launcher mpirun with --scheduler pbs")
        if self.app not in APPS:
            raise JobError(f"unknown app {self.app!r}: use {' or '.join(APPS)}")
        if self.layout is not None and math.prod(self.layout[k] for k in ("ensemble", "h", "w", "matmul")) != self.ranks:
            raise JobError(f"layout {self.layout} does not multiply to {self.ranks} ranks")


# ---------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------
def device_overrides(job: Job) -> list[str]:
    """GPU nodes: the GPU with NCCL collectives; CPU nodes: the CPU with MPI and the rank's threads."""
    key = "inference.device" if job.app == "ensemble" else "device"
    if job.cpu:
        return [f"{key}=cpu", "parallel.backend=mpi", f"parallel.threads={job.threads}"]
    return [f"{key}=cuda", "parallel.backend=torch"]


def layout_overrides(layout: dict) -> list[str]:
    return [f"parallel.{k}={layout[k]}" for k in ("ensemble", "h", "w", "matmul")] + ["parallel.layout=manual"]


def _slurm_header(job: Job, name: str) -> list[str]:
    lines = [f"#SBATCH --job-name={name}", f"#SBATCH --nodes={job.nodes}"]
    if job.cpu:
        lines += [f"#SBATCH --ntasks-per-node={job.ranks_per_node}   # MPI ranks per node: cores / threads per rank",
                  f"#SBATCH --cpus-per-task={job.threads}      # cores (torch threads) per rank"]
    else:
        lines += [f"#SBATCH --ntasks-per-node={job.gpus_per_node}   # one MPI rank per GPU",
                  f"#SBATCH --gpus-per-node={job.gpus_per_node}     # some sites want --gres=gpu:{job.gpus_per_node} "
                  "instead",
                  f"#SBATCH --cpus-per-task={job.cpus_per_gpu}      # CPU cores per rank (data loading, MPI progress)"]
    lines += [f"#SBATCH --time={job.time}",
              "#SBATCH --output=%x-%j.out",
              "#SBATCH --open-mode=append         # a requeued job adds to the same log",
              f"#SBATCH --signal=B:TERM@{job.stop_before_s}      # SIGTERM to this script before the time limit",
              "#SBATCH --requeue                  # a stopped or preempted job is requeued and resumes"]
    if job.account:
        lines.append(f"#SBATCH --account={job.account}")
    if job.partition:
        lines.append(f"#SBATCH --partition={job.partition}")
    return lines


def _pbs_header(job: Job, name: str) -> list[str]:
    ncpus = job.threads * job.ranks_per_node
    gpus = "" if job.cpu else f":ngpus={job.gpus_per_node}"
    lines = [f"#PBS -N {name}",
             f"#PBS -l select={job.nodes}:ncpus={ncpus}{gpus}:mpiprocs={job.ranks_per_node}",
             f"#PBS -l walltime={job.time}",
             "#PBS -j oe"]
    if job.account:
        lines.append(f"#PBS -A {job.account}")
    if job.partition:
        lines.append(f"#PBS -q {job.partition}")
    if job.app == "train":
        lines.append("#PBS -r y")
    return lines


_ENVIRONMENT = """\
# ---- software: adapt to your site ------------------------------------------------------------------
# module load @MODULES@     # or: module load PrgEnv-gnu cray-mpich
# source /path/to/venv/bin/activate                           # pip install -e . inside it (see docs/cluster.md)
PYTHON=${PYTHON:-python}

# ---- threads ----------------------------------------------------------------------------------------
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-@CPUS@}   # = CPU cores per rank
"""

_NCCL = """# ---- NCCL -------------------------------------------------------------------------------------------
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}               # INFO prints the rings/trees and the network NCCL picked
# export NCCL_SOCKET_IFNAME=ib0       # interface for NCCL's bootstrap and socket transport (ib0, hsn0, eth0, ...)
# export NCCL_IB_HCA=mlx5             # InfiniBand adapters NCCL may use
# export NCCL_IB_DISABLE=1            # no InfiniBand: NCCL falls back to TCP sockets (slow between nodes)
# export NCCL_NET_GDR_LEVEL=PHB       # GPUDirect RDMA when the NIC and GPU share a PCIe host bridge
# export NCCL_CROSS_NIC=1             # allow rings to use different NICs on different nodes
# export FI_PROVIDER=cxi              # Slingshot (HPE Cray) systems with the aws-ofi-nccl plugin
"""

_MPIRUN_FLAGS = """\
# mpirun flags for RANKS_PER_NODE ranks per node; the MPI library decides the spelling
mpi_flags() {
  if mpirun --version 2>&1 | grep -qi "open mpi"; then
    echo "--map-by ppr:${RANKS_PER_NODE}:node:PE=${OMP_NUM_THREADS} --bind-to core"
  else  # MPICH, Cray PALS, Intel MPI, MVAPICH
    echo "-ppn ${RANKS_PER_NODE}"
  fi
}
"""

# ranks = the tasks the scheduler granted (nodes x GPUs per node); @N@ when run outside a job
# Slurm: the run goes to the background so that this script receives SIGTERM (before the time limit, or on
# preemption) while it runs; it hands the signal to the run, which stops with its last snapshot
# (resume=true), and requeues the job, which continues from that snapshot. A run that ends by itself,
# complete or failed, is not requeued.
_PREEMPTION = """# ---- preemption and time limits ----------------------------------------------------------------------
STOPPED=0
# shellcheck disable=SC2317  # run by the trap
stop() {
  STOPPED=1
  echo "$(date +%FT%T) SIGTERM: stopping the run"
  @STOP@
}
trap stop TERM
@LAUNCH@ &
RUN=$!
rc=0
wait "$RUN" || rc=$?
while kill -0 "$RUN" 2>/dev/null; do rc=0; wait "$RUN" || rc=$?; done  # the signal interrupted the wait
if [ "$STOPPED" = 1 ] && [ "$rc" != 0 ]; then
  echo "$(date +%FT%T) stopped before the end (status $rc): requeueing job $SLURM_JOB_ID, which resumes the run"
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
fi
exit "$rc"
"""

# How the trap hands SIGTERM to the ranks: srun would kill its step at once (SIGKILL), so the step's tasks are
# signalled through Slurm; mpirun forwards the signal to its ranks itself.
_STOP = {
    "srun": 'for step in $(squeue -h -s -j "$SLURM_JOB_ID" -o %i | grep -v -e batch -e extern); do\n'
            '    scancel -s TERM "$step" || true\n  done',
    "mpirun": 'kill -TERM "$RUN" 2>/dev/null || true',
}

_NRANKS = {
    "slurm": "NRANKS=${SLURM_NTASKS:-@N@}   # nodes x ranks per node",
    "pbs": 'NRANKS=$( [ -n "${PBS_NODEFILE:-}" ] && wc -l < "$PBS_NODEFILE" || echo @N@ )   # one line per mpiproc',
}


def render(job: Job) -> str:
    """The job script text for ``job`` (bash; passes ``bash -n`` and shellcheck)."""
    job.validate()
    name = job.name or f"fcn-{job.app}"
    head = _slurm_header(job, name) if job.scheduler == "slurm" else _pbs_header(job, name)
    workdir = "SLURM_SUBMIT_DIR" if job.scheduler == "slurm" else "PBS_O_WORKDIR"
    out = ["#!/bin/bash"]
    out += ["# " + line if line else "#" for line in job.header]
    out += head
    modules = "openmpi/4.1 python/3.11" if job.cpu else "cuda/12.4 nccl/2.21 openmpi/4.1 python/3.11"
    out += ["set -euo pipefail", "", _ENVIRONMENT.replace("@CPUS@", str(job.threads)).replace("@MODULES@", modules)]
    if not job.cpu:
        out += [_NCCL]
    out += ["# ---- what runs ---------------------------------------------------------------------------------------",
            f'cd "${{{workdir}:-.}}"',
            "HPC_FCN_HOME=${HPC_FCN_HOME:-$PWD}   # the checkout (submit from it), for jobs/bind_local_gpu.sh",
            f"export RANKS_PER_NODE={job.ranks_per_node}"]
    if not job.cpu:
        out += [f"export GPUS_PER_NODE={job.gpus_per_node}"]
    out += [_NRANKS[job.scheduler].replace("@N@", str(job.ranks))]
    resume = ["resume=true"] if job.scheduler == "slurm" else []  # a requeued job continues the run
    if job.layout is None:
        out += [f"CONFIG=${{CONFIG:-{shlex.quote(job.config)}}}",
                "# The process grid ensemble x h x w x matmul must multiply to NRANKS. ensemble=auto takes every rank",
                "# left after h x w x matmul (pure ensemble/data parallelism); for a layout tuned by the performance model",
                f"# generate the script: python -m hpc_fcn.jobs CONFIG --scheduler {job.scheduler} --nodes N --gpus-per-node G",
                "read -r -a LAYOUT <<< \"${LAYOUT:-parallel.ensemble=auto parallel.h=1 parallel.w=1 parallel.matmul=1}\"",
                "read -r -a EXTRA <<< \"${EXTRA:-}\"   # more key=value overrides, e.g. EXTRA='ensemble.members=50'",
                "ARGS=(\"${LAYOUT[@]}\"", *[f"  {shlex.quote(o)}" for o in device_overrides(job) + resume],
                "  ${EXTRA[@]+\"${EXTRA[@]}\"})"]
    else:
        out += [f"CONFIG={shlex.quote(job.config)}",
                "ARGS=(",
                "  " + " ".join(layout_overrides(job.layout)) + "   # chosen by the performance model",
                "  " + " ".join(device_overrides(job) + resume)]
        out += [f"  {shlex.quote(o)}" for o in job.overrides]
        out += [")"]
    cmd = f'"$PYTHON" -m {APPS[job.app]} "$CONFIG" "${{ARGS[@]}}"'
    out.append("")
    if job.launcher == "srun":
        gpu = "" if job.cpu else " --gpus-per-task=1 --gpu-bind=closest"
        launch = ["# srun gives each task " + ("its cores" if job.cpu else "one GPU (the closest to its cores)") +
                  " and pins it to them;",
                  "# a rank that dies ends the step (the others would wait in MPI_Init or a collective until the",
                  "# time limit, and the job would requeue itself)",
                  f'srun --ntasks="$NRANKS" --ntasks-per-node="$RANKS_PER_NODE"{gpu} --kill-on-bad-exit=1 \\',
                  f"  --cpus-per-task={job.threads} --cpu-bind=cores \\", f"  {cmd}"]
    else:
        out += [_MPIRUN_FLAGS, "read -r -a MPI_FLAGS <<< \"$(mpi_flags)\""]
        launch = ['mpirun -n "$NRANKS" "${MPI_FLAGS[@]}" \\']
        if not job.cpu:
            launch.insert(0, "# bind_local_gpu.sh sets CUDA_VISIBLE_DEVICES from the MPI local rank: one GPU per rank")
            launch += ['  "$HPC_FCN_HOME/jobs/bind_local_gpu.sh" \\']
        launch += [f"  {cmd}"]
    if job.scheduler == "slurm":
        out += [_PREEMPTION.replace("@LAUNCH@", "\n".join(launch)).replace("@STOP@", _STOP[job.launcher])]
    else:
        out += launch
    return "\n".join(out).rstrip("\n") + "\n"


# ---------------------------------------------------------------------------------------------------
# Choosing the layout with the performance model
# ---------------------------------------------------------------------------------------------------
@dataclass
class Choice:
    """The layout the performance model picked and what it predicts for it."""
    layout: dict
    prediction: object  # perfmodel.Prediction
    summary: list[str]  # human-readable lines (also put into the script header)
    time_to_solution_s: float
    memory_bytes: float


def detect_app(config: str | Path) -> str:
    """'train' for a training config (it has phases/optim), else 'ensemble'."""
    data = read_config_data(config)
    return "train" if ("phases" in data or "optim" in data) else "ensemble"


def _load_app_config(app: str, config: str, overrides: Sequence[str]):
    if app == "ensemble":
        from .ensemble.config import EnsembleConfig
        return load_config(EnsembleConfig, config, overrides)
    from .train.config import TrainConfig
    return load_config(TrainConfig, config, overrides)


def data_facts(cfg, split: str) -> tuple[int, int] | None:
    """(channels, model step in hours) of the ``split`` the run reads, as the app learns them from the data
    (:class:`hpc_fcn.data.era5.FCNDataset`); None when the data is not at hand where the script is made."""
    from .data.era5 import DataError, FCNDataset
    root = cfg.data.root
    if root == "builtin":  # making the script never generates data: the built-in one's facts are known
        from .data.builtin import builtin_root, is_complete
        root = builtin_root()
        if not is_complete(root):
            from .data.synth import CHANNELS, SIX_HOURS
            channels = [c for c in CHANNELS if not cfg.data.channels or c in cfg.data.channels]
            return len(channels), int(SIX_HOURS // 3600)
    try:
        with FCNDataset(root, cfg.data.split_dir(split), cfg.data.channels, stats_dir=None) as ds:
            return len(ds.channels), ds.dt_hours
    except (DataError, OSError):
        return None


def step_hours(facts: tuple[int, int] | None) -> int:
    """The model step: the data's ``dt_hours``, else the one the converter writes and the reader assumes."""
    from .data.convert import DT_HOURS
    return facts[1] if facts else DT_HOURS


def model_channels(cfg, facts: tuple[int, int] | None, given: int | None = None) -> int:
    """The model's channels: ``given`` (--channels), else data.channels, else the data's, else 20 on the 0.25 deg
    grid of the published model; the performance model needs them for the size of the network."""
    if given:
        return given
    if cfg.data.channels:
        return len(cfg.data.channels)
    if facts:
        return facts[0]
    ckpt = checkpoint_channels(cfg.model)
    if ckpt:
        return ckpt
    if tuple(cfg.model.img_size) == (720, 1440):
        return 20
    raise ConfigError("config key 'data.channels': list the model's channels so the performance model knows "
                      "the network size (null means 'whatever the data holds', and neither the data nor the "
                      "checkpoint is at hand here)")


def checkpoint_channels(model_cfg) -> int | None:
    """The input channels of the config's checkpoint, when it names one that is readable here."""
    from .model.checkpoint import checkpoint_config
    from .setup import checkpoint_path
    if not model_cfg.checkpoint:
        return None
    try:
        return int(checkpoint_config(checkpoint_path(model_cfg.checkpoint, model_cfg.stochastic))["in_chans"])
    except (ConfigError, KeyError, ValueError):  # CheckpointError is a ValueError
        return None


def ensemble_case(cfg, channels: int | None = None) -> tuple[dict, dict]:
    """(AFNONet keywords, keywords of ``perfmodel.predict``/``suggest``) of an ensemble config: members, lead steps
    at the data's step, and the inference section (``members_per_pass: 0`` stays 0: the run's own rule)."""
    from .ensemble.config import parse_lead
    facts = data_facts(cfg, cfg.initial_conditions.split)
    C = model_channels(cfg, facts, channels)
    inf = cfg.inference
    steps = parse_lead(cfg.forecast.lead_time, step_hours(facts), "forecast.lead_time")
    return cfg.model.kwargs(C, C), dict(members=cfg.ensemble.total, members_per_pass=inf.members_per_pass,
                                        precision=inf.precision, lead_steps=steps, cuda_graphs=inf.cuda_graphs)


def load_ensemble_case(config: str, overrides: Sequence[str], channels: int | None = None):
    """(AFNONet keywords, predict keywords, parallel section) of an ensemble YAML with overrides: what
    ``python -m perfmodel predict|suggest`` reads (perfmodel itself never imports the apps)."""
    from .ensemble.config import EnsembleConfig
    cfg = load_config(EnsembleConfig, config, overrides)
    kwargs, run = ensemble_case(cfg, channels)
    return kwargs, run, cfg.parallel


def _import_perfmodel():
    try:
        import perfmodel
    except ImportError as exc:
        raise JobError(f"the performance model (package 'perfmodel') cannot be imported ({exc}); it chooses the "
                       "layout: install this checkout (pip install -e .) or pass --layout E,H,W,M") from exc
    return perfmodel


def _hardware(perfmodel, name: str, job: Job):
    """The hardware file ``name`` for the nodes of ``job``: a GPU file for GPU nodes, a CPU file for CPU nodes."""
    try:
        hw = perfmodel.load_hardware(name)
    except ValueError as exc:
        raise JobError(f"--hardware: {exc}") from exc
    kind = getattr(hw, "kind", "gpu")
    if (kind == "cpu") != job.cpu:
        want = "a CPU file such as this_machine" if job.cpu else "a GPU file such as h100"
        raise JobError(f"--hardware {name} describes a {kind} node but the job runs on "
                       f"{'CPU' if job.cpu else 'GPU'} nodes: pass {want}")
    if dataclasses.is_dataclass(hw):  # the node's fast link (shared memory, NVLink) spans its ranks
        extra = dict(cores=job.cpus_per_node, threads=job.threads) if job.cpu else {}
        hw = dataclasses.replace(hw, devices_per_node=job.ranks_per_node, **extra)
    return hw


def _memory_line(pred, hw, job: Job) -> str:
    if job.cpu:
        return f"memory per rank: {_gb(pred.memory_bytes)} ({job.ranks_per_node} ranks share {_gb(hw.mem_capacity_bytes)})"
    return f"memory per GPU: {_gb(pred.memory_bytes)} of {_gb(hw.mem_capacity_bytes)}"


def _gb(x: float) -> str:
    return f"{x / 1e9:.1f} GB"


def _seconds(s: float) -> str:
    if s < 120:
        return f"{s:.3g} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def choose_ensemble(cfg, job: Job, hardware: str) -> Choice:
    pm = _import_perfmodel()
    hw, ranks = _hardware(pm, hardware, job), job.ranks
    kwargs, run = ensemble_case(cfg)
    try:
        lay, pred = pm.suggest(kwargs, ranks=ranks, hardware=hw, **run)
    except ValueError as exc:
        raise JobError(f"the performance model finds no layout of {ranks} ranks: {exc}") from exc
    members, steps = run["members"], run["lead_steps"]
    auto = "" if run["members_per_pass"] else " (members_per_pass 0: the run takes as many as its free memory holds)"
    ic = cfg.initial_conditions
    n_init = len(ic.times) if ic.times else ic.count
    tts = pred.time_to_solution_s
    lines = [f"layout (perfmodel.suggest, {hw.name}, {ranks} ranks): ensemble={lay['ensemble']} h={lay['h']} "
             f"w={lay['w']} matmul={lay['matmul']}, {pred.members_per_pass} member(s) per pass{auto}",
             f"predicted: {pred.step_time_s * 1e3:.3g} ms per forward pass, {_seconds(tts)} time to solution per "
             f"initial time ({members} members x {steps} steps, {cfg.inference.precision}), compute only",
             _memory_line(pred, hw, job)]
    if n_init and n_init > 1:
        lines[1] += f"; {_seconds(tts * n_init)} for {n_init} initial times"
        tts *= n_init
    return Choice(lay, pred, lines, tts, pred.memory_bytes)


def choose_train(cfg, job: Job, hardware: str) -> Choice:
    pm = _import_perfmodel()
    hw, ranks = _hardware(pm, hardware, job), job.ranks
    C = model_channels(cfg, data_facts(cfg, "train"))
    kwargs = cfg.model.kwargs(C, C)
    phase_name, phase = max(cfg.phases.items(), key=lambda kv: kv[1].rollout_steps)  # the most demanding phase
    try:
        lay, pred = pm.suggest(kwargs, ranks=ranks, hardware=hw, members=phase.batch_size,
                               members_per_pass=phase.batch_size, precision=cfg.precision,
                               lead_steps=phase.rollout_steps, training=True)
    except ValueError as exc:
        raise JobError(f"the performance model finds no layout of {ranks} ranks: {exc}") from exc
    per_step = pred.time_to_solution_s
    lines = [f"layout (perfmodel.suggest, {hw.name}, {ranks} ranks): ensemble(data)={lay['ensemble']} h={lay['h']} "
             f"w={lay['w']} matmul={lay['matmul']}",
             f"predicted: {_seconds(per_step)} per optimizer step (phase {phase_name}: global batch "
             f"{phase.batch_size}, {phase.rollout_steps} rollout step(s), {cfg.precision}), compute only",
             _memory_line(pred, hw, job)]
    total = 0.0
    for ph in cfg.phases.values():
        if ph.samples_per_epoch is None:
            total = 0.0
            break
        p = pm.predict(kwargs, layout=lay, hardware=hw, members=ph.batch_size, members_per_pass=ph.batch_size,
                       precision=cfg.precision, lead_steps=ph.rollout_steps, training=True)
        total += ph.epochs * math.ceil(ph.samples_per_epoch / ph.batch_size) * p.time_to_solution_s
    if total:
        lines[1] += f"; {_seconds(total)} for every phase"
    else:
        lines.append("(whole-run time: set phases.*.samples_per_epoch; ERA5 1979-2015 has 54,020 samples)")
    return Choice(lay, pred, lines, total or per_step, pred.memory_bytes)


def parse_layout(text: str, ranks: int, model=None) -> dict:
    """``E,H,W,M`` as a layout dict, checked against the ranks and (``model``: a ModelConfig) the model
    with the grid's own rules (hpc_fcn.parallel.layout)."""
    from .parallel.layout import Layout, layout_problem
    try:
        lay = Layout.of(text)
    except ValueError:
        raise JobError(f"--layout {text!r}: give four integers E,H,W,M (ensemble, h, w, matmul)") from None
    if min(lay.as_dict().values()) < 1 or lay.ranks != ranks:
        raise JobError(f"--layout {text}: the four factors must be >= 1 and multiply to {ranks} ranks")
    problem = layout_problem(lay, model.shape()) if model is not None else None
    if problem:
        raise JobError(f"--layout {text}: {problem}")
    return lay.as_dict()


def suggested_time(seconds: float) -> str:
    """Wall time to ask for: 1.5x the prediction plus 15 minutes for start-up and IO, rounded up to 5 min."""
    minutes = 5 * math.ceil((1.5 * seconds / 60 + 15) / 5)
    return f"{minutes // 60:02d}:{minutes % 60:02d}:00"


# ---------------------------------------------------------------------------------------------------
# Example scripts and command line
# ---------------------------------------------------------------------------------------------------
EXAMPLES = {
    "slurm/ensemble.sbatch": dict(scheduler="slurm", app="ensemble", launcher="srun", config="config/era5_production.yaml"),
    "slurm/ensemble_mpirun.sbatch": dict(scheduler="slurm", app="ensemble", launcher="mpirun",
                                         config="config/era5_production.yaml"),
    "slurm/train.sbatch": dict(scheduler="slurm", app="train", launcher="srun", config="config/train_era5.yaml",
                               time="12:00:00"),
    "pbs/ensemble.pbs": dict(scheduler="pbs", app="ensemble", launcher="mpirun", config="config/era5_production.yaml"),
    "pbs/train.pbs": dict(scheduler="pbs", app="train", launcher="mpirun", config="config/train_era5.yaml",
                          time="12:00:00"),
}


def example(path: str) -> str:
    """The example script jobs/<path> (2 nodes x 4 GPUs, layout edited through LAYOUT)."""
    spec = EXAMPLES[path]
    submit = "sbatch" if spec["scheduler"] == "slurm" else "qsub"
    env = "CONFIG=... LAYOUT='parallel.ensemble=... ...'" + (" sbatch --export=ALL" if submit == "sbatch" else
                                                              " qsub -V")
    header = [f"Example: {spec['app']} on 2 nodes x 4 GPUs under {spec['scheduler'].upper()} "
              f"({spec['launcher']}). Submit: {submit} jobs/{path}",
              f"Change nodes/GPUs in the header (and GPUS_PER_NODE below); override settings: {env} jobs/{path}",
              "Generated by `python -m hpc_fcn.jobs --write-examples jobs`; edit freely in a copy."]
    return render(Job(nodes=2, gpus_per_node=4, layout=None, header=header, **spec))


def write_examples(directory: str | Path) -> list[Path]:
    written = []
    for rel in EXAMPLES:
        path = Path(directory) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(example(rel))
        path.chmod(0o755)
        written.append(path)
    return written


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hpc_fcn.jobs",
                                description="Write a Slurm/PBS job script with the layout the performance model "
                                            "picks for nodes x GPUs, and print its predictions.")
    p.add_argument("config", nargs="?", help="the run's YAML config (ensemble or training)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, passed on to the run")
    p.add_argument("--scheduler", choices=("slurm", "pbs"))
    p.add_argument("--nodes", type=int)
    p.add_argument("--gpus-per-node", type=int, help="GPUs per node, one rank each; 0: CPU nodes")
    p.add_argument("--time", help="wall time HH:MM:SS (default: from the prediction)")
    p.add_argument("--account")
    p.add_argument("--partition", help="Slurm partition or PBS queue")
    p.add_argument("--launcher", choices=("srun", "mpirun"), help="default srun under Slurm, mpirun under PBS")
    p.add_argument("--hardware", help="perfmodel hardware: a100, h100 (default on GPU nodes), h200, this_machine "
                                       "(default on CPU nodes) or a YAML file")
    p.add_argument("--cpus-per-gpu", type=int, default=8, help="GPU nodes: CPU cores per rank (default 8)")
    p.add_argument("--cpus-per-node", type=int, help="CPU nodes: cores of a node (default: this machine's)")
    p.add_argument("--threads-per-rank", type=int, default=1,
                   help="CPU nodes: cores (torch threads) per rank; ranks per node = cores / threads (default 1)")
    p.add_argument("--stop-before", type=int, default=STOP_BEFORE_S, metavar="SECONDS",
                   help=f"Slurm: SIGTERM this long before the time limit, so the run stops with a snapshot and the "
                        f"job requeues (default {STOP_BEFORE_S})")
    p.add_argument("--app", choices=tuple(APPS), help="default: detected from the config")
    p.add_argument("--name", help="job name")
    p.add_argument("--layout", metavar="E,H,W,M", help="use this layout instead of asking the performance model")
    p.add_argument("--out", help="script file ('-' = stdout; default <config>_<scheduler>_<N>x<G>.sh)")
    p.add_argument("--write-examples", metavar="DIR", help="(re)write the example scripts into DIR and exit")
    return p


def make_job(args: argparse.Namespace, argv: Sequence[str] = ()) -> tuple[Job, list[str]]:
    """The Job for the command line, and the lines to print (layout, predictions)."""
    for opt in ("config", "scheduler", "nodes", "gpus_per_node"):
        if getattr(args, opt) in (None, ""):
            raise JobError(f"missing {'CONFIG' if opt == 'config' else '--' + opt.replace('_', '-')}")
    app = args.app or detect_app(args.config)
    cfg = _load_app_config(app, args.config, args.overrides)
    cpu = args.gpus_per_node == 0
    launcher = args.launcher or ("srun" if args.scheduler == "slurm" else "mpirun")
    nodes = Job(scheduler=args.scheduler, nodes=args.nodes, gpus_per_node=args.gpus_per_node, app=app,
                config=args.config, launcher=launcher, cpus_per_gpu=args.cpus_per_gpu,
                cpus_per_node=args.cpus_per_node or 0, threads_per_rank=args.threads_per_rank,
                stop_before_s=args.stop_before)
    found = []
    if cpu and not args.cpus_per_node:
        nodes.cpus_per_node = os.cpu_count() or 1
        found.append(f"CPU nodes of {nodes.cpus_per_node} cores (this machine's; --cpus-per-node to change): "
                     f"{nodes.ranks_per_node} rank(s) of {nodes.threads} thread(s) per node")
    nodes.validate()
    ranks = nodes.ranks
    if args.layout:
        choice = None
        layout = parse_layout(args.layout, ranks, cfg.model)
        lines = [f"layout (given with --layout, {ranks} ranks): " + " ".join(f"{k}={v}" for k, v in layout.items())]
    else:
        choose = choose_ensemble if app == "ensemble" else choose_train
        choice = choose(cfg, nodes, args.hardware or ("this_machine" if cpu else "h100"))
        layout, lines = choice.layout, list(choice.summary)
    lines = found + lines
    overrides = list(args.overrides)
    time_ = args.time or (suggested_time(choice.time_to_solution_s) if choice else "01:00:00")
    if choice and not args.time:
        lines.append(f"wall time requested: {time_} (1.5 x prediction + 15 min; --time to change)")
    elif choice and _to_seconds(time_) < choice.time_to_solution_s:
        lines.append(f"warning: --time {time_} is shorter than the predicted {_seconds(choice.time_to_solution_s)}")
    header = ["Generated by: python -m hpc_fcn.jobs " + " ".join(shlex.quote(str(a)) for a in argv)] + lines
    job = dataclasses.replace(nodes, time=time_, account=args.account, partition=args.partition, name=args.name,
                              layout=layout, overrides=overrides, header=header)
    job.validate()
    return job, lines


def _to_seconds(hms: str) -> int:
    h, m, s = (int(v) for v in hms.split(":"))
    return 3600 * h + 60 * m + s


def _path_warning(cfg_path: str, app: str, overrides: Sequence[str]) -> str | None:
    """The first missing path of the config, as a warning (the job may run where the paths exist)."""
    from .paths import check_paths
    try:
        check_paths(_load_app_config(app, cfg_path, overrides))
    except ConfigError as exc:
        return f"warning: {exc}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    args = build_parser().parse_intermixed_args(argv)
    try:
        if args.write_examples:
            for path in write_examples(args.write_examples):
                print(f"wrote {path}")
            return 0
        job, lines = make_job(args, argv)
        text = render(job)
    except (JobError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    per_node = f"{job.ranks_per_node}cpu" if job.cpu else str(job.gpus_per_node)
    out = args.out or f"{Path(args.config).stem}_{job.scheduler}_{job.nodes}x{per_node}.sh"
    info = sys.stderr if out == "-" else sys.stdout
    for line in lines:
        print(line, file=info)
    warning = _path_warning(args.config, job.app, args.overrides)
    if warning:
        print(warning, file=sys.stderr)
    if out == "-":
        sys.stdout.write(text)
    else:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
        Path(out).chmod(0o755)
        print(f"wrote {out} (submit: {'sbatch' if job.scheduler == 'slurm' else 'qsub'} {out})", file=info)
    return 0


__all__ = ["Job", "JobError", "Choice", "render", "choose_ensemble", "choose_train", "ensemble_case",
           "load_ensemble_case", "make_job", "detect_app", "example", "write_examples", "suggested_time", "main"]

if __name__ == "__main__":
    sys.exit(main())

"""A tiny dataset and config for ensemble tests (three channels, a 32 x 64 model grid, patch 4), and the
command line that runs it."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers_layout import write_layout

from hpc_fcn.config import from_dict
from hpc_fcn.ensemble.config import EnsembleConfig


def tiny_dataset(root: Path) -> Path:
    write_layout(root, splits={"train": [2000], "test": [2001], "out_of_sample": [2002]}, steps=40,
                 channels=["u", "v", "z"], rows=33, cols=64)
    return root


def tiny_config(data_root, outdir, overrides=()) -> EnsembleConfig:
    base = {"model": {"img_size": [32, 64], "patch_size": 4, "embed_dim": 16, "depth": 1, "num_blocks": 4, "seed": 3},
            "data": {"root": str(data_root)},
            "initial_conditions": {"split": "out_of_sample", "every": "24h", "count": 2},
            "ensemble": {"members": 5, "control": True, "seed": 11},
            "forecast": {"lead_time": "2d", "output_every": 2},
            "output": {"dir": str(outdir), "members": True},
            "progress": False}
    return from_dict(EnsembleConfig, base, list(overrides))


ROOT = Path(__file__).resolve().parents[1]
CLI_ENV = dict(os.environ, OMP_NUM_THREADS="1", HPC_FCN_ERROR_GRACE="3")


def command(n, config, *overrides):
    """The ensemble command line on ``n`` ranks (through tools/mpirun.sh when n > 1)."""
    prog = [sys.executable, "-m", "hpc_fcn.ensemble", str(config), *overrides]
    return [str(ROOT / "tools" / "mpirun.sh"), "-n", str(n), *prog] if n > 1 else prog


def run_cli(n, config, *overrides, timeout=240):
    return subprocess.run(command(n, config, *overrides), capture_output=True, text=True, timeout=timeout,
                          env=CLI_ENV, cwd=ROOT)


def wait_for(pred, proc, limit=200):
    """Poll ``pred`` while ``proc`` runs (``proc.poll()``); True once it holds, False if the process ends first."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None:
        if pred():
            return True
        time.sleep(0.01)
    return False


def snapshot_reached(outdir, init_pos, step):
    """A predicate: the resume marker of ``outdir`` says a snapshot at (init_pos, step) or later is complete."""
    def pred():
        try:
            m = json.loads((Path(outdir) / ".resume" / "progress.json").read_text())
        except (OSError, ValueError):
            return False
        return m.get("init_pos", 0) >= init_pos and m.get("step", -1) >= step
    return pred


def kill_after_snapshot(cmd, outdir, init_pos, step):
    """Start ``cmd``, SIGKILL its process group once the snapshot marker of ``outdir`` reaches (init_pos, step)."""
    proc = subprocess.Popen(cmd, env=CLI_ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    assert wait_for(snapshot_reached(outdir, init_pos, step), proc), "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def error_lines(proc):
    return [ln for ln in proc.stderr.splitlines() if ln.startswith("error")]


def tiny_tune_data(data_root, fragment, overrides=()) -> dict:
    """The tiny ensemble with a ``tune:`` section: 4 members, 1 initial time of the test split, 2 leads, 2 steps."""
    return {"model": {"img_size": [32, 64], "patch_size": 4, "embed_dim": 16, "depth": 1, "num_blocks": 4, "seed": 3},
            "data": {"root": str(data_root)},
            "ensemble": {"members": 5, "control": False, "seed": 11},
            "perturbation": {"method": "gaussian", "amplitude": 0.01},
            "progress": False,
            "tune": {"members": 4, "count": 1, "leads": ["6h", "12h"], "iterations": 2, "channel_iterations": 1,
                     "output": str(fragment)}}


def tiny_tune_config(data_root, fragment, overrides=()):
    from hpc_fcn.ensemble.tune import TuneAppConfig
    return from_dict(TuneAppConfig, tiny_tune_data(data_root, fragment), list(overrides))

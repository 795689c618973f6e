"""A real one-node Slurm (tests/slurm_cluster.py): batch jobs, `srun` with PMI2 and the venv's `mpirun`,
and a job that is preempted (TERM to its batch shell), requeues itself and finishes on its second start.

Needs the Debian packages slurmctld, slurmd, slurm-client and munge, and root; tools/slurm_ci.sh installs
them (.ci/run calls it). Elsewhere the module skips with one line saying so.
"""
import os
import re
import sys
import time
from pathlib import Path

import pytest

from ensemble_setup import snapshot_reached
from slurm_cluster import SlurmCluster, skip_message

if skip_message():
    pytest.skip(skip_message(), allow_module_level=True)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
# Rank 0 prints one line per rank, gathered over MPI (the ranks' own prints would interleave); a rank that
# did not get the job's PMI would start as a singleton and report size 1.
RANKS = ('from mpi4py import MPI; import os; c = MPI.COMM_WORLD; '
         'r = c.gather((c.rank, c.size, "PMI_FD" in os.environ)); '
         'c.rank == 0 and print("".join(f"rank {i} size {n} pmi_fd {p}\\n" for i, n, p in r), flush=True)')


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with SlurmCluster(tmp_path_factory.mktemp("slurm"), cpus=max(4, os.cpu_count() or 1)) as c:
        yield c


def _ranks(text):
    return sorted((int(r), int(s)) for r, s in re.findall(r"^rank (\d+) size (\d+) ", text, re.M))


def test_batch_srun_pmi2(cluster):
    job = cluster.submit(f"#!/bin/bash\n#SBATCH -n 2 -t 5\nsrun -n 2 {PY} -c '{RANKS}'\n")
    info = cluster.wait(job, timeout=120)
    out = cluster.output(job)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", out
    assert _ranks(out) == [(0, 2), (1, 2)], out
    assert out.count("pmi_fd True") == 2, out    # srun's mpi/pmi2 served both ranks


def test_batch_mpirun(cluster):
    mpirun = ROOT / "tools" / "mpirun.sh"
    job = cluster.submit(f"#!/bin/bash\n#SBATCH -n 2 -t 5\n{mpirun} -n 2 {PY} -c '{RANKS}'\n")
    info = cluster.wait(job, timeout=120)
    out = cluster.output(job)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", out
    assert _ranks(out) == [(0, 2), (1, 2)], out


REQUEUE = """#!/bin/bash
#SBATCH --requeue
#SBATCH --open-mode=append
n=${SLURM_RESTART_COUNT:-0}
echo "start $n $(date +%s.%N)"
if [ "$n" -ge 1 ]; then echo finished; exit 0; fi
on_term() {
  echo "TERM $(date +%s.%N)"
  kill "$child" 2>/dev/null
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
}
trap on_term TERM
sleep 300 &
child=$!
echo waiting
wait "$child"
echo "sleep ended without TERM to the shell"
exit 1
"""


def test_preempted_job_requeues_and_finishes(cluster):
    job = cluster.submit(REQUEUE)
    cluster.wait(job, timeout=60, states={"RUNNING"})
    deadline = time.monotonic() + 60
    while "waiting" not in cluster.output(job):     # the trap is set: preempt it now
        assert time.monotonic() < deadline, cluster.output(job)
        time.sleep(0.2)
    cluster.signal_batch(job, "TERM")
    info = cluster.wait(job, timeout=120 + 2 * cluster.cred_expire)
    out = cluster.output(job)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", (info, out)
    starts = re.findall(r"^start (\d+) ", out, re.M)
    assert starts == ["0", "1"] and "TERM" in out and out.rstrip().endswith("finished"), out
    term = float(re.search(r"^TERM (\S+)", out, re.M).group(1))
    again = float(re.search(r"^start 1 (\S+)", out, re.M).group(1))
    print(f"requeued job started again {again - term:.1f} s after TERM (cred_expire={cluster.cred_expire})")


# ---- the ensemble through generated job scripts -----------------------------------------------------------
@pytest.fixture(scope="module")
def ensemble(tmp_path_factory):
    """A tiny ensemble config (2 initial times, snapshots every output step) and its data."""
    from ensemble_setup import tiny_config, tiny_dataset
    from hpc_fcn.config import dump_yaml
    tmp = tmp_path_factory.mktemp("slurm_ensemble")
    over = ["initial_conditions.count=2", "forecast.lead_time=10d", "ensemble.members=8", "output.members=true",
            "forecast.snapshot_every=1"]
    cfg = tmp / "tiny.yaml"
    cfg.write_text(dump_yaml(tiny_config(tiny_dataset(tmp / "data"), tmp / "unused", over)))
    return tmp, cfg


def _submit(cluster, tmp, cfg, launcher: str, outdir: Path) -> int:
    """Generate a CPU-node Slurm script (1 node of 2 cores: 2 ranks of 1 thread) writing to ``outdir``, submit it."""
    from hpc_fcn import jobs
    script = tmp / f"{outdir.name}.sh"
    assert jobs.main([str(cfg), f"output.dir={outdir}", "--scheduler", "slurm", "--nodes", "1", "--gpus-per-node", "0",
                      "--cpus-per-node", "2", "--launcher", launcher, "--time", "00:10:00", "--out", str(script)]) == 0
    env = dict(cluster.env, PYTHON=PY, PATH=f"{Path(PY).parent}:{os.environ['PATH']}", OMP_NUM_THREADS="1")
    return cluster.submit(script, env=env, cwd=tmp)


def _outputs(outdir: Path) -> dict:
    import netCDF4
    import numpy as np
    files = {}
    for f in sorted(outdir.glob("forecast_*.nc")):
        with netCDF4.Dataset(f) as ds:
            files[f.name] = {v: np.asarray(ds[v][:]) for v in ("u", "v", "z")}
    return files


def _same_run(a: Path, b: Path) -> None:
    import json
    import numpy as np
    fa, fb = _outputs(a), _outputs(b)
    assert fa.keys() == fb.keys() and len(fa) == 6
    for name in fa:
        for v in fa[name]:  # the same layout and kernels: bitwise
            np.testing.assert_array_equal(fb[name][v], fa[name][v], err_msg=f"{name} {v}")
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert ma["scores"] == mb["scores"]


@pytest.fixture(scope="module")
def uninterrupted(cluster, ensemble):
    tmp, cfg = ensemble
    outdir = tmp / "full"
    job = _submit(cluster, tmp, cfg, "mpirun", outdir)
    info = cluster.wait(job, timeout=300)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "0", cluster.output(job)
    return outdir


def test_generated_cpu_script_runs_to_completion_under_mpirun(uninterrupted):
    assert (uninterrupted / "metrics.json").is_file() and len(_outputs(uninterrupted)) == 6


def test_generated_cpu_script_runs_under_srun(cluster, ensemble, uninterrupted):
    tmp, cfg = ensemble
    job = _submit(cluster, tmp, cfg, "srun", tmp / "srun")
    info = cluster.wait(job, timeout=300)
    assert info["JobState"] == "COMPLETED", cluster.output(job)
    _same_run(uninterrupted, tmp / "srun")


def test_preempted_job_requeues_itself_and_finishes_like_the_uninterrupted_one(cluster, ensemble, uninterrupted):
    """TERM to the batch script (what --signal=B:TERM sends before the time limit, and a preemption): the run
    stops, the job requeues itself and resumes from the last snapshot, and the outputs equal the full run's."""
    tmp, cfg = ensemble
    outdir = tmp / "preempted"
    job = _submit(cluster, tmp, cfg, "mpirun", outdir)
    reached = snapshot_reached(outdir, 0, 4)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not reached():
        assert cluster.state(job) in ("PENDING", "RUNNING", "CONFIGURING"), cluster.output(job)
        time.sleep(0.05)
    assert cluster.state(job) == "RUNNING" and not (outdir / "metrics.json").exists(), "finished before the signal"
    cluster.signal_batch(job, "TERM")
    info = cluster.wait(job, timeout=300)
    log = cluster.output(job)
    assert info["JobState"] == "COMPLETED" and int(info["Restarts"]) >= 1, log
    assert "requeueing job" in log, log
    _same_run(uninterrupted, outdir)

"""The dataset generator's command line: it waits for the dataset lock, and SIGTERM leaves no work folder."""
import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ensemble_setup import wait_for

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--nlat", "17", "--nlon", "32", "--train-years", "2000", "--test-years", "2001",
         "--out-of-sample-years", "2002",
         "--steps-per-year", "400", "--spinup-days", "1", "--threads", "1", "--quiet"]


def _start(*args, env=None):
    return subprocess.Popen([sys.executable, "-m", "hpc_fcn.data.synth", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})))


def test_sigterm_removes_the_work_folder(tmp_path):
    out = tmp_path / "ds"
    proc = _start(str(out), *SMALL)
    assert wait_for(lambda: list(tmp_path.glob(".ds.tmp-*/train/*.h5")), proc), proc.communicate()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM
    assert not list(tmp_path.iterdir()), sorted(p.name for p in tmp_path.iterdir())


def test_a_dead_generators_work_folder_is_removed_by_the_next(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".ds.tmp-{int(dead.stdout)}"
    (stale / "train").mkdir(parents=True)
    quick = SMALL[:SMALL.index("--steps-per-year")] + ["--steps-per-year", "8", "--spinup-days", "0.5",
                                                       "--threads", "1", "--quiet"]
    proc = _start(str(tmp_path / "ds"), *quick)
    assert proc.wait(timeout=120) == 0, proc.communicate()
    assert not stale.exists() and (tmp_path / "ds" / "metadata.json").is_file()


def test_builtin_waits_for_the_dataset_lock(tmp_path):
    root, log = tmp_path / "builtin", tmp_path / "stderr.txt"
    with open(tmp_path / ".builtin.lock", "w") as lock, open(log, "w") as err:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = subprocess.Popen([sys.executable, "-m", "hpc_fcn.data.synth", "--builtin", "--quiet"], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=err,
                                env=dict(os.environ, OMP_NUM_THREADS="1", HPC_FCN_DATA=str(root)))
        assert wait_for(lambda: "waiting for another process" in log.read_text(), proc), log.read_text()
        time.sleep(0.5)
        assert proc.poll() is None and not list(tmp_path.glob(".builtin.tmp-*"))  # waiting, not writing
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert not root.exists() and not list(tmp_path.glob(".builtin.tmp-*"))

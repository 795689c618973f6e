"""One output folder, one run: the lock, resume that checks what it resumes, a full disk named, start-up checks."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import torch
import yaml
from mpi4py import MPI

from ensemble_setup import (CLI_ENV as ENV, ROOT, command, error_lines, run_cli, snapshot_reached, tiny_config,
                            tiny_dataset, wait_for)

from hpc_fcn.config import ConfigError, dump_yaml, from_dict, load_config
from hpc_fcn.ensemble.config import EnsembleConfig
from hpc_fcn.ensemble.snapshot import SnapshotStore
from hpc_fcn.io.background import BackgroundWriter
from hpc_fcn.io.outdir import LOCK_NAME, OutputError, OutputLock, _proc_stat, _start_time
from hpc_fcn.parallel.comm import make_communicator


def outputs(outdir):
    """{file name: {variable: values}} of a run's finished outputs (zarr stores under the netCDF file's name)."""
    import zarr
    files = {}
    for f in sorted(Path(outdir).glob("forecast_*.nc")):
        with netCDF4.Dataset(f) as ds:
            files[f.name] = {v: np.asarray(ds[v][:]) for v in ("u", "v", "z")}
    for f in sorted(Path(outdir).glob("forecast_*.zarr")):
        g = zarr.open_group(str(f), mode="r")
        files[f.name.replace(".zarr", ".nc")] = {v: np.asarray(g[v][...]) for v in ("u", "v", "z")}
    return files


def assert_same_outputs(a, b, n):
    fa, fb = outputs(a), outputs(b)
    assert fa.keys() == fb.keys() and len(fa) == n
    for name in fa:
        for v in fa[name]:
            np.testing.assert_array_equal(fb[name][v], fa[name][v], err_msg=f"{name} {v}")
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert ma["scores"] == mb["scores"] and ma["persistence"] == mb["persistence"]


def descendants(pid):
    """Every process below ``pid`` (from /proc), children first."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def signal_all(pids, sig):
    """Send ``sig`` to each of ``pids``; one that has exited since it was listed (a launcher's short-lived
    helper) is skipped: the caller checks that the run itself is still there."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("outfolder")
    data = tiny_dataset(tmp / "data")
    over = ["initial_conditions.count=3", "forecast.lead_time=3d", "ensemble.members=4", "output.members=true"]
    path = tmp / "tiny.yaml"
    path.write_text(dump_yaml(tiny_config(data, tmp / "out", over)))
    full = tmp / "full"
    proc = run_cli(2, path, f"output.dir={full}")
    assert proc.returncode == 0, proc.stderr
    return tmp, path, full


# ---- the lock ------------------------------------------------------------------------------------

def test_second_run_into_a_folder_is_refused_and_the_first_completes(setup, tmp_path):
    _, cfg, _ = setup
    out = tmp_path / "shared"
    longer = [f"output.dir={out}", "ensemble.members=40"]
    first = subprocess.Popen(command(2, cfg, *longer), env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: (out / LOCK_NAME).exists(), first), "the first run never took the lock"
    held = [first.pid] + descendants(first.pid)  # mpirun, its proxies and the ranks (other process groups)
    signal_all(held, signal.SIGSTOP)  # held mid-run, however fast this machine is, while the second run starts
    try:
        second = run_cli(2, cfg, *longer)
        assert first.poll() is None, "the first run ended before the second started: no overlap was tested"
        assert (out / LOCK_NAME).exists(), "the first run released the lock before it was held"
    finally:
        signal_all(held, signal.SIGCONT)
    assert second.returncode == 2, second.stderr
    lines = error_lines(second)
    assert len(lines) == 1 and "is in use by another run, pid " in lines[0], lines
    assert first.wait(timeout=400) == 0, first.stderr.read()
    assert not (out / LOCK_NAME).exists()  # released on exit
    files = sorted(out.glob("forecast_*.nc"))
    assert len(files) == 9 and not list(out.glob("*.partial"))
    ids = set()
    for f in files:  # every file complete, readable, and of one run
        with netCDF4.Dataset(f) as ds:
            assert int(ds.getncattr("leads_complete")) == len(ds.dimensions["lead_time"])
            assert np.isfinite(np.asarray(ds["u"][:])).all()
            ids.add(ds.getncattr("run_id"))
    assert len(ids) == 1 and json.loads((out / "metrics.json").read_text())["members"] == 40


def test_stale_lock_of_a_dead_run_is_replaced(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder = tmp_path / "out"
    folder.mkdir()
    import socket
    (folder / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "started": "1",
                                                "time": 0, "command": "killed run"}))
    lock = OutputLock.acquire(folder)
    assert json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (folder / LOCK_NAME).exists()


def test_lock_of_a_killed_run_not_yet_reaped_is_replaced(tmp_path):
    """A SIGKILLed launcher leaves its ranks as zombies until they are reaped: not a run that holds the folder."""
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while _proc_stat(zombie.pid)[0] != "Z":
        assert time.monotonic() < deadline, "the child did not exit"
        time.sleep(0.01)
    folder = tmp_path / "out"
    folder.mkdir()
    import socket
    (folder / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": zombie.pid,
                                                "started": _start_time(zombie.pid), "time": 0, "command": "killed"}))
    lock = OutputLock.acquire(folder)  # not waited for: the child is still a zombie here
    assert json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    zombie.wait()


def test_live_lock_names_its_owner(tmp_path):
    folder = tmp_path / "out"
    held = OutputLock.acquire(folder)
    other = dict(held.owner, pid=os.getppid(), started=_start_time(os.getppid()), command="the other run")
    (folder / LOCK_NAME).write_text(json.dumps(other))  # a live process of this host holds it
    with pytest.raises(OutputError, match=rf"in use by another run, pid {os.getppid()} .*the other run"):
        OutputLock.acquire(folder)
    held.release()  # no longer ours: left alone
    assert json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getppid()


# ---- resume checks what it resumes ---------------------------------------------------------------

@pytest.fixture(scope="module")
def kept(setup):
    """A finished run whose resume state was kept, from a checkpoint file."""
    tmp, cfg, _ = setup
    from hpc_fcn.model import AFNONet, save_checkpoint
    base = load_config(EnsembleConfig, cfg)
    torch.manual_seed(5)
    ckpt = tmp / "tiny.ckpt"
    save_checkpoint(ckpt, AFNONet(**base.model.kwargs(3, 3)))
    out = tmp / "kept"
    proc = run_cli(2, cfg, f"output.dir={out}", f"model.checkpoint={ckpt}", "output.keep_resume_state=true",
                   "resume=true", "initial_conditions.count=1", "forecast.lead_time=1d")  # snapshots need resume
    assert proc.returncode == 0, proc.stderr
    assert (out / ".resume" / "progress.json").is_file()
    return cfg, out, ckpt


@pytest.mark.parametrize("change, field", [
    (["model.checkpoint=null"], "model.checkpoint"),
    (["ensemble.seed=12"], "ensemble.seed"),
    (["perturbation.amplitude=1e-3"], "perturbation.amplitude"),
])
def test_resume_of_another_run_is_refused(kept, change, field):
    cfg, out, ckpt = kept
    resolved = (out / "config.resolved.yaml").read_text()
    proc = run_cli(2, cfg, f"output.dir={out}", f"model.checkpoint={ckpt}", "resume=true",
                   "initial_conditions.count=1", "forecast.lead_time=1d", *change)
    assert proc.returncode == 2, proc.stderr
    lines = error_lines(proc)
    assert len(lines) == 1 and "cannot resume" in lines[0] and field in lines[0], proc.stderr
    assert (out / "config.resolved.yaml").read_text() == resolved  # nothing rewritten


def test_resume_after_the_last_initial_time_says_so_and_identity_is_in_every_file(kept):
    cfg, out, ckpt = kept
    before = json.loads((out / "metrics.json").read_text())
    proc = run_cli(2, cfg, f"output.dir={out}", f"model.checkpoint={ckpt}", "resume=true",
                   "initial_conditions.count=1", "forecast.lead_time=1d")
    assert proc.returncode == 0, proc.stderr
    assert "resuming after the last initial time" in proc.stderr and "of 1, step" not in proc.stderr
    assert json.loads((out / "metrics.json").read_text())["scores"] == before["scores"]
    assert not (out / ".resume").exists()  # removed after success
    ids = set()
    for f in out.glob("forecast_*.nc"):
        with netCDF4.Dataset(f) as ds:
            ident = json.loads(ds.getncattr("run_identity"))
            ids.add(ds.getncattr("run_id"))
        assert ident["ensemble.seed"] == 11 and len(ident["model.checkpoint_sha256"]) == 64
    assert len(ids) == 1


# ---- a full disk ---------------------------------------------------------------------------------

@pytest.fixture
def tmpfs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], capture_output=True)
    if ok.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({ok.stderr.decode().strip()}); "
                    "test_snapshot_on_a_full_disk_keeps_the_previous_one simulates ENOSPC instead")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)])


@pytest.mark.parametrize("fmt", ["netcdf", "zarr"])
def test_full_disk_is_named_and_the_last_snapshot_resumes_identically(setup, tmpfs, fmt):
    """The error names the file or store and the free space; zarr stores hold the netCDF files' values."""
    _, cfg, full = setup
    out = tmpfs / "run"
    fmt_arg = f"output.format={fmt}"
    proc = subprocess.Popen(command(2, cfg, f"output.dir={out}", "resume=true", "forecast.snapshot_every=1", fmt_arg),
                            env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert wait_for(snapshot_reached(out, 1, 2), proc), "the run finished before the disk could be filled"
    filler = tmpfs / "filler"
    for _ in range(50):  # leave less than the writers' margin; the run keeps writing, so a size read from statvfs
        st = os.statvfs(tmpfs)  # may be gone when fallocate runs (ENOSPC, nothing allocated): read it again
        size = st.f_bavail * st.f_frsize - (256 << 10)
        if size <= 0 or subprocess.run(["fallocate", "-l", str(size), str(filler)]).returncode == 0:
            break
    else:
        pytest.fail("could not fill the disk beside the running writers in 50 tries")
    t0 = time.monotonic()
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode != 0 and time.monotonic() - t0 < 60
    lines = [ln for ln in err.splitlines() if ln.startswith("error")]
    assert lines and "No space left on device" in lines[0] and str(out) in lines[0], err
    assert "free" in lines[0] and len(lines) == 1, err
    if fmt == "zarr":  # the stores being written keep their partial name; one under its final name is complete
        import zarr
        assert list(out.glob("forecast_*.zarr.partial")), sorted(p.name for p in out.iterdir())
        for f in out.glob("forecast_*.zarr"):
            g = zarr.open_group(str(f), mode="r")
            assert g.attrs["leads_complete"] == g["lead_time"].shape[0], f
    assert not (out / "metrics.json").exists()
    filler.unlink()
    resumed = run_cli(2, cfg, f"output.dir={out}", "resume=true", "forecast.snapshot_every=1", fmt_arg)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_outputs(full, out, 9)


def test_snapshot_on_a_full_disk_keeps_the_previous_one(tmp_path, monkeypatch):
    """The write fails on the writer thread: ``save`` returns, ``complete`` names the file, the marker stays."""
    world = make_communicator("mpi", MPI.COMM_SELF, "world")
    box = dict(members=range(0, 2), rows=slice(0, 3), cols=slice(0, 4))
    with BackgroundWriter() as writer:
        store = SnapshotStore(tmp_path, world, {"members": 2}, identity={"k": 1}, writer=writer)
        store.save({"init_pos": 0, "step": 2}, torch.ones(2, 1, 3, 4), **box, scores={"s": 1})
        store.complete()

        def full(obj, f, *a, **k):
            Path(f).write_bytes(b"torn")
            raise RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos 64 vs 0")
        monkeypatch.setattr(torch, "save", full)
        monkeypatch.setattr("hpc_fcn.io.outdir.free_bytes", lambda p: 0 if "resume" in str(p) else 10 ** 12)
        monkeypatch.setattr("hpc_fcn.ensemble.snapshot.check_space", lambda *a: None)  # the write itself fails
        store.save({"init_pos": 0, "step": 4}, torch.zeros(2, 1, 3, 4), **box, scores={"s": 2})  # queued
        with pytest.raises(OutputError, match=r"cannot write .*m0-2_r0-3_c0-4.pt: No space left on device"):
            store.complete()
        assert not store.in_flight
    assert not writer.alive
    marker = store.check()
    assert marker["step"] == 2
    monkeypatch.undo()
    state, scores = SnapshotStore(tmp_path, world, {"members": 2}).load(marker, **box, channels=1)
    assert torch.equal(state, torch.ones(2, 1, 3, 4)) and scores == {"s": 1}
    assert not list((tmp_path / ".resume").rglob("*.tmp"))


def test_async_snapshot_equals_the_synchronous_one(tmp_path):
    """Files written on the writer thread hold what a snapshot written in the calling thread holds, even when
    the caller changes the state in place right after ``save``; one slot is kept once the marker names it."""
    world = make_communicator("mpi", MPI.COMM_SELF, "world")
    box = dict(members=range(3, 5), rows=slice(2, 5), cols=slice(0, 4))
    state = torch.randn(2, 3, 3, 4)
    scores = {"acc": np.arange(6.0)}
    with BackgroundWriter() as writer:
        store = SnapshotStore(tmp_path / "async", world, {"members": 5}, writer=writer)
        for step in (2, 4):
            expected = state.clone()
            store.save({"init_pos": 1, "step": step}, state, **box, scores=scores)
            state.add_(1.0)  # the next steps run while the snapshot is written
        store.complete()
    sync = SnapshotStore(tmp_path / "sync", world, {"members": 5})
    sync.save({"init_pos": 1, "step": 4}, expected, **box, scores=scores)
    sync.complete()
    a, b = sync.read_marker(), store.read_marker()
    assert a["step"] == b["step"] == 4
    sa, ca = sync.load(a, **box, channels=3)
    sb, cb = store.load(b, **box, channels=3)
    assert torch.equal(sa, sb) and torch.equal(sb, expected) and np.array_equal(ca["acc"], cb["acc"])
    assert sorted(p.name for p in (tmp_path / "async" / ".resume").iterdir()) == ["progress.json", "slot2"]


# ---- start-up checks -----------------------------------------------------------------------------

def test_yaml_errors_name_file_line_and_column(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  embed_dim: 16\n  depth: [1, 2\nensemble:\n  members: 3\n")
    proc = run_cli(1, bad)
    assert proc.returncode == 2
    lines = error_lines(proc)
    assert len(lines) == 1 and f"{bad}, line 4, column 9" in lines[0], proc.stderr


def test_yaml_numbers_and_non_finite_values():
    assert from_dict(EnsembleConfig, {}, ["perturbation.amplitude=1e-3"]).perturbation.amplitude == 1e-3
    assert from_dict(EnsembleConfig, yaml.safe_load("perturbation: {length_scale_km: 2.5e2}")
                     ).perturbation.length_scale_km == 250.0
    for bad in (".nan", ".inf", "-.inf"):
        with pytest.raises(ConfigError, match="perturbation.amplitude.*finite"):
            from_dict(EnsembleConfig, {}, [f"perturbation.amplitude={bad}"])


@pytest.mark.parametrize("n, overrides, expected", [
    (2, ["perturbation.amplitude=.nan"], "error: config key 'perturbation.amplitude': must be a finite number"),
    (2, ["output.dir=/proc/hpc_fcn_out"], "error: output.dir /proc/hpc_fcn_out cannot be written"),
    (1, ["output.dir=/dev/null/out"], "error: output.dir /dev/null/out cannot be written"),
    (2, ["model.checkpoint=builtin", "model.embed_dim=64"], "error: config key 'model."),
])
def test_start_up_checks_give_one_line(setup, n, overrides, expected):
    _, cfg, _ = setup
    proc = run_cli(n, cfg, *overrides, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = error_lines(proc)
    assert len(lines) == 1 and lines[0].startswith(expected), proc.stderr


def test_checkpoint_overrides_are_refused_naming_the_checkpoint_value(kept):
    cfg, out, ckpt = kept
    proc = run_cli(1, cfg, f"output.dir={out.parent / 'embed'}", f"model.checkpoint={ckpt}", "model.embed_dim=32")
    assert proc.returncode == 2
    lines = error_lines(proc)
    assert len(lines) == 1 and lines[0].startswith("error: config key 'model.embed_dim': 32 but the checkpoint") \
        and "has 16" in lines[0], proc.stderr


def test_no_space_for_the_first_output_step_is_found_at_start(setup, tmp_path):
    _, cfg, _ = setup
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        proc = run_cli(2, cfg, f"output.dir={mnt / 'out'}")
    finally:
        subprocess.run(["umount", "-l", str(mnt)])
    assert proc.returncode == 2
    lines = error_lines(proc)
    assert len(lines) == 1 and "No space left on device for the first output step" in lines[0], proc.stderr

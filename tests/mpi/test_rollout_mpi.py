"""The rollout on 1, 2 and 4 ranks: a NaN names member, step and variable on every rank; snapshots only with resume;
a write failing on the writer thread of one rank stops every rank with its message; the thread is always joined."""
import errno
import json
import sys
import threading
from pathlib import Path

import pytest
import torch
from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ensemble_setup import tiny_config, tiny_dataset  # noqa: E402

from hpc_fcn.ensemble import rollout, snapshot  # noqa: E402
from hpc_fcn.ensemble.app import EnsembleRun  # noqa: E402
from hpc_fcn.ensemble.snapshot import SnapshotStore  # noqa: E402
from hpc_fcn.io.outdir import OutputError  # noqa: E402
from hpc_fcn.io.zarr import ZarrForecastStore  # noqa: E402
from hpc_fcn.parallel.testing import shared_tempdir, sub_comm  # noqa: E402
from hpc_fcn.runtime import main_guard  # noqa: E402

pytestmark = pytest.mark.skipif(MPI.COMM_WORLD.size != 4, reason="sub-communicators of 1, 2 and 4 ranks")
LAYOUTS = {1: [], 2: ["parallel.ensemble=2"], 4: ["parallel.h=2", "parallel.ensemble=2"]}


@pytest.fixture(scope="module")
def shared_tmp():
    return shared_tempdir("hpc_fcn_rollout_", lambda p: tiny_dataset(p / "data"))


@pytest.mark.parametrize("n", [1, 2, 4])
def test_nan_names_member_step_and_variable_on_every_rank(shared_tmp, monkeypatch, n):
    plain = rollout.Rollout.step
    calls = {}

    def poisoned(self, x, noise=None):
        y = plain(self, x, noise)
        calls[id(self)] = calls.get(id(self), 0) + 1
        if calls[id(self)] == 3 and 2 in self.run.my_members:
            y[2 - self.run.my_members.start, 1] = float("nan")  # member 2, variable v, step 3
        return y

    monkeypatch.setattr(rollout.Rollout, "step", poisoned)
    with sub_comm(n) as comm:
        if comm is not None:
            cfg = tiny_config(shared_tmp / "data", shared_tmp / f"nan{n}", ["initial_conditions.count=1"] + LAYOUTS[n])
            with pytest.raises(rollout.NonFiniteForecast) as err:
                EnsembleRun(cfg, comm).run()
            assert "initial time 2002010" in str(err.value)
            assert "member 2, step 3 (lead 18 h), variable v" in str(err.value), str(err.value)


@pytest.mark.parametrize("n", [1, 2, 4])
def test_snapshots_only_with_resume_at_snapshot_every(shared_tmp, monkeypatch, n):
    saved = []
    plain = SnapshotStore.save

    def spy(self, progress, *args, **kwargs):
        saved.append(progress.get("step"))
        return plain(self, progress, *args, **kwargs)

    monkeypatch.setattr(SnapshotStore, "save", spy)
    with sub_comm(n) as comm:
        if comm is None:
            return
        common = ["initial_conditions.count=1", "forecast.snapshot_every=2"] + LAYOUTS[n]
        EnsembleRun(tiny_config(shared_tmp / "data", shared_tmp / f"plain{n}", common), comm).run()
        assert saved == [] and not (shared_tmp / f"plain{n}" / ".resume").exists()
        EnsembleRun(tiny_config(shared_tmp / "data", shared_tmp / f"snap{n}",
                                common + ["resume=true", "output.keep_resume_state=true"]), comm).run()
        assert saved == [2, 6, -1]  # output steps 0, 2, 4, 6, 8: after the 2nd and the 4th, and at the end
        marker = json.loads((shared_tmp / f"snap{n}" / ".resume" / "progress.json").read_text())
        assert marker["init_pos"] == 1 and marker["step"] == -1  # the last snapshot completed before the run ended
        assert not _writer_threads()


def _writer_threads():
    return [t for t in threading.enumerate() if t.name == "hpc_fcn-writer"]


def _fail_on_last_rank(monkeypatch, comm, what):
    """ENOSPC on the writer thread of ``comm``'s last rank: its second member snapshot file, or a zarr write."""
    if comm.rank != comm.size - 1:
        return
    if what == "snapshot":
        plain, calls = snapshot._atomic_save, []

        def save(obj, path):
            if path.name.startswith("m"):
                calls.append(path)
                if len(calls) == 2:
                    raise OutputError(errno.ENOSPC, f"cannot write {path}: No space left on device (0 B free)")
            return plain(obj, path)
        monkeypatch.setattr(snapshot, "_atomic_save", save)
    else:
        plain_write = ZarrForecastStore.write

        def write(self, lead_index, *args, **kwargs):
            if lead_index == 2 and threading.current_thread().name == "hpc_fcn-writer":
                raise OSError(errno.ENOSPC, "No space left on device")
            return plain_write(self, lead_index, *args, **kwargs)
        monkeypatch.setattr(ZarrForecastStore, "write", write)


@pytest.mark.parametrize("what", ["snapshot", "zarr"])
@pytest.mark.parametrize("n", [2, 4])
def test_a_write_failing_on_one_rank_stops_every_rank_with_its_message(shared_tmp, monkeypatch, capsys, n, what):
    """On 4 ranks through main_guard: one error line (rank 0's), a non-zero status on every rank, no hang; the
    marker still names the last snapshot that every rank finished."""
    with sub_comm(n) as comm:
        if comm is None:
            return
        _fail_on_last_rank(monkeypatch, comm, what)
        out = shared_tmp / f"fail_{what}{n}"
        over = ["initial_conditions.count=1", "forecast.snapshot_every=1", "resume=true"] + LAYOUTS[n]
        cfg = tiny_config(shared_tmp / "data", out, over + (["output.format=zarr"] if what == "zarr" else []))
        if n == 4:
            capsys.readouterr()
            code = main_guard(lambda argv: EnsembleRun(cfg, comm).run(), [])
            err = capsys.readouterr().err
            lines = [ln for ln in err.splitlines() if ln.startswith("error")]
            codes = comm.allgather(code)
            all_lines = comm.allgather(lines)
            assert all(c != 0 for c in codes), codes
            assert len(sum(all_lines, [])) == 1 and all_lines[0] and "No space left on device" in all_lines[0][0], err
        else:
            with pytest.raises(OutputError, match="No space left on device") as exc:
                EnsembleRun(cfg, comm).run()
            assert len(set(comm.allgather(str(exc.value)))) == 1
        assert not _writer_threads()
        marker = json.loads((out / ".resume" / "progress.json").read_text())
        # snapshots after output steps 0, 2, 4, 6: the second one fails, or lead 2 (step 4) fails before or after
        # the snapshot of step 2 completes
        assert marker["step"] in ((0,) if what == "snapshot" else (0, 2)), marker

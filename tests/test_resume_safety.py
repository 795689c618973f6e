"""Nothing the app reads from an output folder, a data root or a checkpoint runs as code; damaged resume state is
one line naming the file and an action that works; a resume that would change a result is refused."""
import json
import os
import shutil
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import torch

from ensemble_setup import command, error_lines, kill_after_snapshot, run_cli, tiny_config, tiny_dataset

from hpc_fcn.config import dump_yaml

N = 2  # ranks: members and windows are split, so the snapshot has several files


class Payload:
    """A pickle that runs a shell command when it is loaded: what an attacker would plant."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny run's config, its uninterrupted outputs and a copy of it killed after its second snapshot."""
    tmp = tmp_path_factory.mktemp("resume_safety")
    data = tiny_dataset(tmp / "data")
    over = ["initial_conditions.count=2", "forecast.lead_time=3d", "ensemble.members=4", "output.members=true",
            "forecast.snapshot_every=1", "scoring.enabled=true"]
    cfg = tmp / "run.yaml"
    cfg.write_text(dump_yaml(tiny_config(data, tmp / "full", over)))
    assert run_cli(N, cfg).returncode == 0
    killed = tmp / "killed"
    kill_after_snapshot(command(N, cfg, f"output.dir={killed}", "resume=true"), killed, 0, 4)
    return tmp, cfg, killed


@pytest.fixture
def damaged(setup, tmp_path):
    """A fresh copy of the killed run's folder, its snapshot slot and the marker a payload would create."""
    _, cfg, killed = setup
    out = tmp_path / "run"
    shutil.copytree(killed, out)
    slot = out / ".resume" / f"slot{json.loads((out / '.resume' / 'progress.json').read_text())['slot']}"
    return cfg, out, slot, tmp_path / "PWNED"


def _outputs(outdir):
    files = {}
    for f in sorted(Path(outdir).glob("forecast_*.nc")):
        with netCDF4.Dataset(f) as ds:
            files[f.name] = {v: np.asarray(ds[v][:]) for v in ("u", "v", "z")}
    return files


def _refused(proc, name: str) -> str:
    """The one error line of a refused run, which names ``name``."""
    lines = error_lines(proc)
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr[-3000:]
    assert name in lines[0], lines[0]
    return lines[0]


def _follow_the_advice_and_resume(setup, cfg, out):
    """The action every damaged-state message gives: delete .resume and run again with resume=true."""
    line = "delete " + str(out / ".resume")
    shutil.rmtree(out / ".resume")
    proc = run_cli(N, cfg, f"output.dir={out}", "resume=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    full = _outputs(setup[0] / "full")
    got = _outputs(out)
    assert got.keys() == full.keys() and len(full) == 6
    for name in full:
        for v in full[name]:
            np.testing.assert_array_equal(got[name][v], full[name][v], err_msg=f"{name} {v}")
    return line


def _plant_in_scores(slot: Path, marker: Path) -> Path:
    """scores.npz with one entry replaced by a pickled object array."""
    path = slot / "scores.npz"
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["ensemble.rows0"] = np.array([Payload(marker)], dtype=object)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def _plant_in_box(slot: Path, marker: Path) -> Path:
    path = sorted(slot.glob("m*.pt"))[0]
    torch.save(Payload(marker), path)
    return path


def _truncate_box(slot: Path, marker: Path) -> Path:
    path = sorted(slot.glob("m*.pt"))[-1]
    path.write_bytes(path.read_bytes()[:100])
    return path


def _garble_marker(slot: Path, marker: Path) -> Path:
    path = slot.parent / "progress.json"
    path.write_text("{\"slot\": ")
    return path


def _remove_box(slot: Path, marker: Path) -> Path:
    path = sorted(slot.glob("m*.pt"))[0]
    path.unlink()
    return slot


def _truncate_partial(slot: Path, marker: Path) -> Path:
    path = sorted(slot.parent.parent.glob("forecast_*.nc.partial"))[0]
    path.write_bytes(path.read_bytes()[:2000])
    return path


@pytest.mark.parametrize("damage", [_plant_in_scores, _plant_in_box, _truncate_box, _garble_marker, _remove_box,
                                    _truncate_partial])
def test_damaged_or_planted_resume_state_is_refused_in_one_line_and_the_advice_works(setup, damaged, damage):
    cfg, out, slot, marker = damaged
    path = damage(slot, marker)
    proc = run_cli(N, cfg, f"output.dir={out}", "resume=true")
    line = _refused(proc, str(path))
    assert not marker.exists(), "the planted pickle ran"
    assert _follow_the_advice_and_resume(setup, cfg, out) in line


def test_a_planted_checkpoint_is_refused_without_running(setup, tmp_path):
    _, cfg, _ = setup
    ckpt, marker = tmp_path / "evil.ckpt", tmp_path / "PWNED"
    torch.save({"model_state": Payload(marker)}, ckpt)
    proc = run_cli(1, cfg, f"output.dir={tmp_path / 'out'}", f"model.checkpoint={ckpt}")
    _refused(proc, str(ckpt))
    assert not marker.exists()


def test_planted_statistics_are_refused_without_running(setup, tmp_path):
    tmp, cfg, _ = setup
    data, marker = tmp_path / "data", tmp_path / "PWNED"
    shutil.copytree(tmp / "data", data)
    stats = data / "stats" / "global_means.npy"
    np.save(stats, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    proc = run_cli(1, cfg, f"output.dir={tmp_path / 'out'}", f"data.root={data}")
    _refused(proc, str(stats))
    assert not marker.exists()


def test_resume_with_a_result_changing_setting_is_refused(setup, tmp_path):
    """model.noise_scale was missing from the hand-written identity; the schema-derived one has it."""
    _, cfg, killed = setup
    out = tmp_path / "run"
    shutil.copytree(killed, out)
    proc = run_cli(N, cfg, f"output.dir={out}", "resume=true", "model.noise_scale=2.0",
                   "perturbation.analysis_scale=0.5")
    line = _refused(proc, "model.noise_scale 1.0 -> 2.0")
    assert "perturbation.analysis_scale 1.0 -> 0.5" in line

"""The built-in shallow-water dataset: layout, statistics, determinism, and that it behaves like weather."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time

import h5py
import numpy as np
import pytest
import torch

from hpc_fcn.data import builtin
from hpc_fcn.data.synth import (CHANNELS, FastTransforms, ForcedShallowWater, SynthError, SynthOptions,
                                builtin_options, generate, main)
from tool_module import load_tool

TINY = SynthOptions(seed=7, nlat=17, nlon=32, train_years=(2000, 2001), test_years=(2002,),
                    out_of_sample_years=(2003,), steps_per_year=10, spinup_days=2.0, threads=1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("synth") / "ds", TINY, progress=False)


def _read(root, split, year):
    with h5py.File(root / split / f"{year}.h5", "r") as f:
        return f["fields"][...]


def test_layout_shapes_and_metadata(tiny):
    files = sorted(str(p.relative_to(tiny)) for p in tiny.rglob("*") if p.is_file())
    assert files == ["metadata.json", "out_of_sample/2003.h5", "stats/global_means.npy", "stats/global_stds.npy",
                     "stats/time_means.npy", "test/2002.h5", "train/2000.h5", "train/2001.h5"]
    with h5py.File(tiny / "train/2000.h5", "r") as f:
        ds = f["fields"]
        assert list(f.keys()) == ["fields"]
        assert ds.shape == (10, len(CHANNELS), 17, 32) and ds.dtype == np.float32
        assert ds.chunks == (1, 1, 17, 32)
        assert np.isfinite(ds[...]).all()
    meta = json.loads((tiny / "metadata.json").read_text())
    assert meta["channels"] == ["u", "v", "z", "vo", "d"]
    assert meta["units"] == {"u": "m s-1", "v": "m s-1", "z": "m2 s-2", "vo": "s-1", "d": "s-1"}
    assert meta["standard_names"]["z"] == "geopotential"
    assert meta["lat"][0] == 90.0 and meta["lat"][-1] == -90.0 and len(meta["lat"]) == 17
    assert meta["lon"][0] == 0.0 and meta["lon"][1] == 11.25 and len(meta["lon"]) == 32  # 360 / 32: exact in binary
    assert meta["years"] == {"train": [2000, 2001], "test": [2002], "out_of_sample": [2003]}
    assert meta["dt_hours"] == 6 and meta["generator"]["seed"] == 7


def test_stats_match_numpy_over_training_years(tiny):
    train = np.concatenate([_read(tiny, "train", y) for y in (2000, 2001)]).astype(np.float64)
    means = np.load(tiny / "stats/global_means.npy")
    stds = np.load(tiny / "stats/global_stds.npy")
    clim = np.load(tiny / "stats/time_means.npy")
    assert means.shape == stds.shape == (1, 5, 1, 1) and clim.shape == (1, 5, 17, 32)
    assert means.dtype == stds.dtype == clim.dtype == np.float32
    # float64 statistics of the same float32 fields, stored as float32: one rounding, <= 2^-24 = 6e-8 relative,
    # plus float64 round-off (<~1e-10 even for the small means of vo, d); was rtol 1e-5 / 1e-4, atol 1e-12 / 1e-11
    np.testing.assert_allclose(means.ravel(), train.mean(axis=(0, 2, 3)), rtol=1e-7, atol=0)
    np.testing.assert_allclose(stds.ravel(), train.std(axis=(0, 2, 3)), rtol=1e-7, atol=0)
    np.testing.assert_allclose(clim[0], train.mean(axis=0), rtol=1e-7, atol=0)
    # the validation year must not leak into the statistics (it moves some mean by far more than 1e-6; storage: 6e-8)
    both = np.concatenate([train, _read(tiny, "test", 2002)])
    assert not np.allclose(means.ravel(), both.mean(axis=(0, 2, 3)), rtol=1e-6, atol=0)


def test_same_seed_gives_identical_files_and_other_seed_differs(tiny, tmp_path):
    again = generate(tmp_path / "again", TINY, progress=False)
    other = generate(tmp_path / "other", dataclasses.replace(TINY, seed=8, train_years=(2000,),
                                                             steps_per_year=3), progress=False)
    for p in tiny.rglob("*"):
        if p.is_file():
            a = hashlib.sha256(p.read_bytes()).hexdigest()
            assert a == hashlib.sha256((again / p.relative_to(tiny)).read_bytes()).hexdigest(), p
    assert not np.array_equal(_read(tiny, "train", 2000)[:3], _read(other, "train", 2000))


def test_winds_are_consistent_with_vorticity_and_poles_are_single_valued(tiny):
    x = _read(tiny, "train", 2001)
    # at each pole a scalar field has one value for all longitudes: the m > 0 terms vanish there (sin = 0), so the
    # values differ by one fp32 rounding at most, an ulp <= 2^-23 of max|x| (exact here); 1e-6 is 8 ulp (was 1e-4)
    for c in (2, 3, 4):
        assert np.ptp(x[:, c, 0], axis=-1).max() <= 1e-6 * np.abs(x[:, c]).max()
        assert np.ptp(x[:, c, -1], axis=-1).max() <= 1e-6 * np.abs(x[:, c]).max()
    # relative vorticity of the stored winds (centred differences on the sphere) matches 'vo'
    a = 6.37122e6
    lat = np.deg2rad(np.linspace(90, -90, 17))[1:-1, None]
    dlon = 2 * np.pi / 32
    dlat = np.pi / 16
    u, v, vo = x[:, 0].astype(np.float64), x[:, 1].astype(np.float64), x[:, 3]
    dv_dlon = (np.roll(v, -1, -1) - np.roll(v, 1, -1))[:, 1:-1] / (2 * dlon)
    ucos = u * np.cos(np.deg2rad(np.linspace(90, -90, 17)))[:, None]
    ducos_dlat = (ucos[:, :-2] - ucos[:, 2:]) / (2 * dlat)      # rows run north to south
    fd = (dv_dlon - ducos_dlat) / (a * np.cos(lat))
    band = slice(3, -3)
    corr = np.corrcoef(fd[:, band].ravel(), vo[:, 1:-1][:, band].ravel())[0, 1]
    assert corr > 0.9


def test_fast_transforms_match_torch_harmonics():
    model = ForcedShallowWater(dataclasses.replace(TINY, nlat=33, nlon=64), dtype=torch.float64)
    s, tf = model.fine, model.tf
    assert isinstance(tf, FastTransforms)
    g = torch.randn(2, 2, s.nlat, s.nlon, dtype=torch.float64)
    c = torch.tril(torch.randn(2, 2, model.lmax, model.lmax, dtype=torch.complex128))
    c[..., 0] = c[..., 0].real.to(c.dtype)
    for mine, ref, x in ((tf.sht, s.sht, g), (tf.isht, s.isht, c), (tf.vsht, s.vsht, g), (tf.ivsht, s.ivsht, c)):
        # float64 Legendre sums over lmax = 27 degrees and 80-point FFTs, in other orders and kernels:
        # ~(27 + log2 80) * eps64 ~ 8e-15 of the largest value (was 1e-10)
        torch.testing.assert_close(mine(x), ref(x), rtol=1e-12, atol=1e-12 * ref(x).abs().max().item())


def test_bad_options_are_rejected(tmp_path, capsys):
    with pytest.raises(SynthError, match="nlon"):
        generate(tmp_path / "x", dataclasses.replace(TINY, nlon=48), progress=False)
    with pytest.raises(SynthError, match="distinct"):
        generate(tmp_path / "x", dataclasses.replace(TINY, out_of_sample_years=(2000,)), progress=False)
    assert not (tmp_path / "x").exists()
    assert main([str(tmp_path / "y"), "--nlat", "16", "--quiet"]) == 2
    assert "nlat" in capsys.readouterr().err


def test_existing_output_is_not_overwritten(tiny):
    with pytest.raises(SynthError, match="not empty"):
        generate(tiny, TINY, progress=False)


def test_builtin_root_and_ensure_builtin_reuse(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv(builtin.ENV_VAR, str(tiny))
    assert builtin.builtin_root() == tiny
    messages = []
    assert builtin.ensure_builtin(log=messages.append) == tiny and messages == []  # complete: nothing to do
    broken = tmp_path / "broken"
    (broken / "train").mkdir(parents=True)
    monkeypatch.setenv(builtin.ENV_VAR, str(broken))
    with pytest.raises(RuntimeError, match="no complete dataset"):
        builtin.ensure_builtin(log=messages.append)
    monkeypatch.delenv(builtin.ENV_VAR)
    assert builtin.builtin_root().name.startswith("builtin-sw-v")


def test_a_second_process_waits_for_the_first_generator_instead_of_generating_again(tiny, tmp_path, monkeypatch):
    import fcntl
    import shutil
    import threading
    root = tmp_path / "cache" / "builtin"
    monkeypatch.setenv(builtin.ENV_VAR, str(root))
    calls, messages = [], []
    monkeypatch.setattr(builtin, "generate", lambda *a, **k: calls.append(a))
    root.parent.mkdir(parents=True)
    with open(root.parent / f".{root.name}.lock", "w") as held:  # "another process" generating now
        fcntl.flock(held, fcntl.LOCK_EX)
        waiter = threading.Thread(target=lambda: builtin.ensure_builtin(log=messages.append))
        waiter.start()
        for _ in range(100):
            if messages:
                break
            time.sleep(0.05)
        assert waiter.is_alive() and "waiting for another process" in messages[0]
        shutil.copytree(tiny, root)  # the other process finishes
    waiter.join(timeout=10)
    assert not waiter.is_alive() and calls == []  # found complete after the wait: not generated twice


def test_dataset_summary_table_has_a_row_per_year_with_its_scores(tiny, capsys):
    summary = load_tool("dataset_summary")
    summary.main([str(tiny)])
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| 20")]
    assert [(r[0], r[1]) for r in rows] == [("| 2000", "train"), ("| 2001", "train"), ("| 2002", "test"),
                                            ("| 2003", "out_of_sample")]
    x = _read(tiny, "out_of_sample", 2003).astype(np.float64)
    w = summary.row_weights(TINY.nlat)
    assert rows[-1][2] == f"{summary.kinetic_energy(x, w):.1f}"
    a = x[:, 2] - np.load(tiny / "stats/time_means.npy")[0, 2]
    acc = summary.persistence_acc(a, 4, w)
    num = sum(float((a[t + 4] * a[t] * w).sum()) / np.sqrt(float((a[t + 4] ** 2 * w).sum() * (a[t] ** 2 * w).sum()))
              for t in range(len(a) - 4))
    # the mean over start samples, one by one; float64 sums of 544-point products regrouped: ~n * eps64 ~ 1e-13
    assert acc == pytest.approx(num / (len(a) - 4), rel=1e-12)
    assert rows[-1][4].split(" / ")[0] == f"{acc:.3f}"


@pytest.mark.slow
def test_default_dataset_behaves_like_weather():
    summary = load_tool("dataset_summary")  # the definitions of docs/builtin_dataset.md's table
    root = builtin.ensure_builtin()
    meta = json.loads((root / "metadata.json").read_text())
    opts = builtin_options()  # not metadata.json's "years": a cache written before the splits' renaming has others
    first, last = opts.train_years[0], opts.out_of_sample_years[-1]
    x0, x1 = _read(root, "train", first), _read(root, "out_of_sample", last)
    w = summary.row_weights(meta["nlat"])
    ke = summary.kinetic_energy

    assert abs(ke(x1, w) / ke(x0, w) - 1) < 0.25                # statistically steady
    peak = summary.peak_wind(x1)
    assert 20 < np.median(peak) and peak.max() < 150              # jets of tens of m/s
    clim = np.load(root / "stats/time_means.npy")[0, meta["channels"].index("z")]
    acc = summary.persistence_acc(x1[:, 2] - clim, 4, w)
    assert 0.2 < acc < 0.95                                       # predictable, but not trivially


def test_perfect_model_forecasts_beat_persistence_at_short_leads():
    """tools/synth_predictability.py: re-running the equations from the truncated state, without the unknowable
    stirring, tracks the truth better than persistence at one day, and is near-perfect there."""
    tool = load_tool("synth_predictability")
    opts = dataclasses.replace(TINY, nlat=33, nlon=64)
    r = tool.predictability(opts, members=2, spinup_days=5.0, record_days=13.0, every_days=1.0)
    assert r["initial_times"] == 3 and r["perfect"].shape == r["persistence"].shape == (len(tool.DAYS), 3)
    day1 = tool.DAYS.index(1)
    assert np.all(r["perfect"][day1] > r["persistence"][day1] + 0.02), r
    assert np.all(r["perfect"][day1] > 0.9), r

"""Serial tests of the trainer: schedule, loss weighting, sampling, learning, checkpoints, config errors.

The tiny setups here (``tiny_data``, ``tiny_config``) are also used by tests/mpi/test_train_mpi.py.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers_layout import write_layout  # noqa: E402
from tool_module import load_tool  # noqa: E402

from hpc_fcn.config import ConfigError, from_dict, load_config  # noqa: E402
from hpc_fcn.model import load_checkpoint  # noqa: E402
from hpc_fcn.train.config import TrainConfig  # noqa: E402
from hpc_fcn.train.loss import WeightedMSE, channel_weights, latitude_weights  # noqa: E402
from hpc_fcn.train.sampler import EpochSampler, usable_starts  # noqa: E402
from hpc_fcn.train.schedule import warmup_cosine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SPLITS = {"train": (2000, 2001), "test": (2002,), "out_of_sample": (2003,)}


# -- shared tiny setup --------------------------------------------------------------------------------
def tiny_data(root: Path, steps: int = 16):
    """4 channels on a 17 x 32 stored grid (model grid 16 x 32), two training years."""
    return write_layout(root, splits=SPLITS, steps=steps, channels=4, rows=17, cols=32)


def tiny_config(data_root: Path, out_dir: Path, overrides=(), **sections) -> TrainConfig:
    """A 2-block model with 4 x 8 tokens, 1-step then 2-step phases, validation off unless asked."""
    base = {
        "model": {"img_size": [16, 32], "patch_size": 4, "embed_dim": 16, "depth": 2, "num_blocks": 4,
                  "mlp_ratio": 2.0, "seed": 3},
        "data": {"root": str(data_root)},
        "phases": {"pretrain": {"epochs": 1, "batch_size": 4, "lr": 2e-3, "warmup_steps": 1},
                   "finetune": {"epochs": 1, "rollout_steps": 2, "batch_size": 4, "lr": 5e-4}},
        "validation": {"enabled": False, "leads": [1, 2], "samples": 2},
        "output": {"dir": str(out_dir), "plot": False},
        "progress": False,
    }
    for key, value in sections.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) and key in base else value
    return from_dict(TrainConfig, base, list(overrides))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_data")
    tiny_data(root)
    return root


def trainer_for(cfg, out_dir=None):
    from hpc_fcn.train.app import build_trainer
    return build_trainer(cfg, MPI.COMM_SELF, out_dir)


# -- schedule -----------------------------------------------------------------------------------------
def test_schedule_warmup_then_cosine():
    total, lr, lo, warm = 11, 1.0, 0.1, 3
    vals = [warmup_cosine(s, total, lr, lo, warm) for s in range(total)]
    # float64 schedule arithmetic (~1e-16 relative): approx's default rel 1e-6 is ample
    assert vals[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])  # linear rise, reaches the peak at `warm`
    assert vals[-1] == pytest.approx(lo)
    assert vals[3 + 7 // 2 + 0] == pytest.approx(lo + 0.5 * (lr - lo) * (1 + math.cos(math.pi * 3 / 7)))
    assert all(a > b for a, b in zip(vals[3:], vals[4:]))  # strictly decreasing after warm-up
    assert warmup_cosine(0, 1, 0.5) == 0.5
    with pytest.raises(ValueError):
        warmup_cosine(5, 5, 1.0)


# -- loss ---------------------------------------------------------------------------------------------
def test_loss_weights_rows_and_channels_and_splits_over_windows():
    lat = 90.0 - 180.0 * np.arange(8) / 8  # model rows of a 9-row grid
    lw = latitude_weights(lat, "area")
    assert lw.mean() == pytest.approx(1.0) and lw[0] < lw[3]  # polar rows weigh less; float64 mean: ~1e-16
    cw = channel_weights(["a", "b"], {"b": 3.0})
    assert cw.tolist() == pytest.approx([0.5, 1.5])  # (1, 3) over their mean 2: exact
    with pytest.raises(ValueError, match="unknown channel"):
        channel_weights(["a"], {"zz": 1.0})
    full = WeightedMSE(lw, cw, slice(0, 8), slice(0, 6), 6)
    pred, target = torch.zeros(1, 2, 8, 6), torch.zeros(1, 2, 8, 6)
    pred[0, 1, 2, 4] = 2.0  # one error of 2 in channel b, row 2
    assert float(full(pred, target)) == pytest.approx(cw[1] * lw[2] * 4.0 / (2 * 8 * 6))  # float32 weights: ~4 x 2^-24
    pred, target = torch.randn(3, 2, 8, 6), torch.zeros(3, 2, 8, 6)
    parts = sum(float(WeightedMSE(lw, cw, r, c, 6)(pred[..., r, c], target[..., r, c]))
                for r in (slice(0, 3), slice(3, 8)) for c in (slice(0, 4), slice(4, 6)))
    # float32 sums of <= 288 positive terms, grouped differently: cascade sums, ~log2(288) x 2^-24 ~ 5e-7
    assert parts == pytest.approx(float(full(pred, target)), rel=1e-6)
    uniform = WeightedMSE(np.ones(8), np.ones(2), slice(0, 8), slice(0, 6), 6)
    assert float(uniform(pred, target)) == pytest.approx(float((pred ** 2).mean()) * 3, rel=1e-6)  # as above


# -- sampling -----------------------------------------------------------------------------------------
def test_sampler_is_deterministic_and_shards_disjointly():
    times = np.datetime64("2000-01-01T00", "h") + np.timedelta64(6, "h") * np.arange(40)
    times = np.concatenate([times[:20], times[25:]])  # a gap: starts that would cross it are unusable
    starts = usable_starts(times, 2)
    assert 18 not in starts and 19 not in starts and 17 in starts and len(starts) == 31
    serial = EpochSampler(starts, 6, None, seed=5, phase=1)
    again = EpochSampler(starts, 6, None, seed=5, phase=1)
    assert np.array_equal(serial.order(2), again.order(2)) and not np.array_equal(serial.order(2), serial.order(3))
    for n in (2, 4):
        shards = [EpochSampler(starts, 6, None, seed=5, phase=1, data_rank=r, data_size=n) for r in range(n)]
        for step, batch in serial.local_batches(2):
            got = np.concatenate([dict(s.local_batches(2))[step] for s in shards])
            assert np.array_equal(got, batch)
    with pytest.raises(ValueError, match="smaller than"):
        EpochSampler(starts, 2, None, 0, 0, 0, 4)


# -- config -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, message", [
    ("phases.pretrain.epochs=0", "phases.pretrain.epochs"),
    ("phases.finetune.min_lr=1.0", "phases.finetune.min_lr"),
    ("phases.pretrain.batchsize=3", "did you mean 'batch_size'"),
    ("optim.grad_clip=-1", "optim.grad_clip"),
    ("validation.leads=[0]", "validation.leads"),
    ("precision=fp8", "precision"),
    ("model.checkpoint=builtin", "model.checkpoint"),
    ("phases={}", "phases"),
])
def test_config_errors_name_the_key(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        tiny_config(tmp_path, tmp_path, [override])


def test_cli_checks_paths_first_and_expands_home(tmp_path, data_root, monkeypatch):
    """A missing data folder is one error naming data.root before any work; '~' in data.root is the home folder."""
    from hpc_fcn.train.__main__ import main
    cfg = tmp_path / "train.yaml"
    cfg.write_text(f"data: {{root: {tmp_path / 'nowhere'}}}\nphases: {{pretrain: {{epochs: 1}}}}\n"
                   f"output: {{dir: {tmp_path / 'out'}}}\n")
    with pytest.raises(ConfigError, match=r"'data\.root': .*nowhere is not a directory"):
        main([str(cfg)])
    assert not (tmp_path / "out").exists()
    monkeypatch.setenv("HOME", str(data_root.parent))
    from hpc_fcn.setup import data_root as resolve
    c = tiny_config(Path("~") / data_root.name, tmp_path)
    assert resolve(c.data, None) == data_root
    assert trainer_for(c, tmp_path / "run") is not None


def test_builtin_config_is_valid():
    cfg = load_config(TrainConfig, REPO / "config" / "train_builtin.yaml")
    assert list(cfg.phases)[:2] == ["pretrain", "finetune"]  # FourCastNet's recipe first
    steps = [p.rollout_steps for p in cfg.phases.values()]
    assert steps[:2] == [1, 2] and steps == sorted(steps)


# -- learning and checkpoints ------------------------------------------------------------------------
def _fixed_batch_loss(trainer, starts=(0, 5, 9, 13)):
    seq = trainer.reader.sequences(list(starts), 1)
    with torch.no_grad():
        return float(trainer.rollout_loss(seq, len(starts)))


def test_a_few_steps_reduce_the_loss(data_root, tmp_path):
    cfg = tiny_config(data_root, tmp_path, ["phases.pretrain.epochs=3", "phases.finetune.epochs=1"])
    trainer = trainer_for(cfg)
    before = _fixed_batch_loss(trainer)
    result = trainer.run(max_steps=18)
    assert result["iters"] == 18
    after = _fixed_batch_loss(trainer)
    assert after < 0.5 * before, (before, after)
    assert all(np.isfinite(h["grad_norm"]) for h in result["history"])


def test_checkpoint_layout_and_resume_continue_the_same_run(data_root, tmp_path):
    overrides = ["phases.pretrain.epochs=2", "validation.enabled=true"]
    full = trainer_for(tiny_config(data_root, tmp_path / "full", overrides + ["output.plot=true"])).run()
    losses = [h["loss"] for h in full["history"]]
    assert len(losses) == 3 * 7 and len(full["validation"]) == 3  # 30 and 28 usable starts, batch 4

    out = tmp_path / "split"
    first = trainer_for(tiny_config(data_root, out, overrides))
    first.run(max_steps=10)  # stops inside pretrain's second epoch
    first.save()
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["model_state"] and all(k.startswith("module.") for k in ckpt["model_state"])
    assert ckpt["iters"] == 10 and ckpt["epoch"] == 1
    assert ckpt["optimizer_state_dict"]["format"].startswith("hpc_fcn.adamw-by-name")
    assert set(ckpt["optimizer_state_dict"]["state"]) <= {k[len("module."):] for k in ckpt["model_state"]}
    assert ckpt["train_state"]["step"] == 3 and ckpt["train_state"]["phase"] == 0
    assert isinstance(load_checkpoint(out / "checkpoints" / "last.ckpt"), torch.nn.Module)
    for name in ("config.resolved.yaml", "history.json"):
        assert (out / name).is_file(), name
    assert (tmp_path / "full" / "loss.png").stat().st_size > 1000

    resumed = trainer_for(tiny_config(data_root, out, overrides + ["resume=true"])).run()
    got = [h["loss"] for h in resumed["history"]]
    assert got[:10] == losses[:10]  # the first run's history, as recorded
    # the same float32 arithmetic and kernels from an exact checkpoint (weights, AdamW moments, sampler): bitwise
    np.testing.assert_array_equal(got[10:], losses[10:])  # was rtol=1e-5, which no error source needs
    np.testing.assert_array_equal(resumed["validation"][-1]["loss"], full["validation"][-1]["loss"])
    assert (out / "checkpoints" / "pretrain.ckpt").is_file() and (out / "checkpoints" / "finetune.ckpt").is_file()


def test_asset_holds_weights_only_and_its_config(data_root, tmp_path):
    asset = tmp_path / "asset" / "m.ckpt"
    cfg = tiny_config(data_root, tmp_path / "run", ["phases.pretrain.samples_per_epoch=4",
                                                    "phases.finetune.samples_per_epoch=4", f"output.asset={asset}"])
    trainer_for(cfg).run()
    ckpt = torch.load(asset, weights_only=True)
    assert ckpt["optimizer_state_dict"] == {} and "train_state" not in ckpt
    model = load_checkpoint(asset)
    assert model.img_size == (16, 32) and model.in_chans == 4
    assert load_config(TrainConfig, asset.with_suffix(".yaml")).model.embed_dim == 16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="mixed precision training needs a GPU")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_steps_on_gpu(data_root, tmp_path, precision):
    cfg = tiny_config(data_root, tmp_path, [f"precision={precision}", "device=cuda"])
    trainer = trainer_for(cfg)
    assert (trainer.scaler is not None) == (precision == "fp16")
    before = _fixed_batch_loss(trainer)
    trainer.run(max_steps=12)
    assert _fixed_batch_loss(trainer) < before


# -- the committed built-in model ---------------------------------------------------------------------
@pytest.mark.slow
def test_builtin_checkpoint_skill_on_the_test_period():
    """The committed model beats persistence in RMSE and ACC at days 1-10 and climatology's RMSE at days 1 and 3
    (u, v, z). Measured on these initial times: RMSE 0.44-0.71 of persistence's, 0.77-0.82 of climatology's at
    day 3; ACC 0.12-0.55 above persistence's."""
    tool = load_tool("evaluate_builtin")
    model = load_checkpoint(REPO / "hpc_fcn" / "assets" / "builtin_model.ckpt").eval()
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    from hpc_fcn.data.builtin import ensure_builtin
    from hpc_fcn.data.era5 import open_split
    from hpc_fcn.schema import DataConfig
    ds = open_split(DataConfig(root=str(ensure_builtin())), "out_of_sample")  # generated on first use
    leads = {1: 4, 3: 12, 5: 20, 10: 40}  # day: 6-hourly steps
    scores = tool.deterministic_scores(model, ds, usable_starts(ds.times, 40)[::32], leads)  # every 8 days
    m, p, c = scores["model"], scores["persistence"], scores["climatology"]
    main = [ds.channels.index(n) for n in ("u", "v", "z")]
    for day in leads:
        assert (m["rmse"][day][main] < 0.9 * p["rmse"][day][main]).all(), (day, m["rmse"][day], p["rmse"][day])
        assert (m["acc"][day][main] > p["acc"][day][main] + 0.05).all(), (day, m["acc"][day], p["acc"][day])
        if day <= 3:
            assert (m["rmse"][day][main] < 0.95 * c["rmse"][day][main]).all(), (day, m["rmse"][day], c["rmse"][day])


# -- CRPS training of the whole network: learning-rate groups and the control anchor ------------------
CRPS_TINY = ["model.stochastic=true", "model.noise_dim=4", "loss.kind=crps", "loss.members=3",
             "phases={crps: {epochs: 1, rollout_steps: 2, batch_size: 2, lr: 1.0e-3}}"]


def test_lr_scale_makes_groups_that_the_schedule_scales(data_root, tmp_path):
    trainer = trainer_for(tiny_config(data_root, tmp_path, CRPS_TINY + ["optim.lr_scale={noise_proj: 10.0}"]))
    groups = {g["lr_scale"]: g["params"] for g in trainer.optimizer.param_groups}
    assert sorted(groups) == [1.0, 10.0]
    assert [p.shape for p in groups[10.0]] == [trainer.module.noise_proj.weight.shape]
    assert sum(len(ps) for ps in groups.values()) == len(list(trainer.module.parameters()))
    trainer.run(max_steps=1)
    lrs = {g["lr_scale"]: g["lr"] for g in trainer.optimizer.param_groups}
    # float64: one product by 10 (~1e-16), and the same value recorded twice (exact)
    assert lrs[10.0] == pytest.approx(10 * lrs[1.0]) and lrs[1.0] == pytest.approx(trainer.history[0]["lr"])
    with pytest.raises(ConfigError, match="optim.lr_scale.nothing"):
        trainer_for(tiny_config(data_root, tmp_path / "bad", CRPS_TINY + ["optim.lr_scale={nothing: 2.0}"]))
    with pytest.raises(ConfigError, match="optim.lr_scale.noise_proj"):
        tiny_config(data_root, tmp_path, CRPS_TINY + ["optim.lr_scale={noise_proj: 0}"])


def test_control_weight_adds_the_noise_free_rollouts_mse(data_root, tmp_path):
    """loss(weight) - loss(0) is weight x the weighted absolute error of the noise-free rollout."""
    weights = "loss.channel_weights={u10: 2.0, v10: 0.5}"
    plain = trainer_for(tiny_config(data_root, tmp_path / "a", CRPS_TINY + [weights]))
    anchored = trainer_for(tiny_config(data_root, tmp_path / "b", CRPS_TINY + [weights, "loss.control_weight=0.7"]))
    anchored.module.load_state_dict(plain.module.state_dict())
    seq = plain.reader.sequences([0, 5], 2)
    with torch.no_grad():
        a = plain.crps_rollout_loss(seq, [0, 5], 2)
        b = anchored.crps_rollout_loss(seq, [0, 5], 2)
        ds = plain.train_ds
        lat_w = latitude_weights(ds.lat, "area")[:, None]
        chan_w = torch.tensor(channel_weights(ds.channels, {"u10": 2.0, "v10": 0.5}))[:, None, None]
        x, want = seq[:, 0], 0.0
        for k in (1, 2):
            x = plain.module(x)
            err = (x - seq[:, k]).abs().double() * chan_w * torch.tensor(lat_w)
            want += float(err.sum()) / (len(ds.channels) * len(ds.lat) * ds.nlon)
    # float32 losses: b's rounding 2^-24 x |b| / |b - a| (~1e-7) plus the float32 sum of 4096 added terms (~1e-6)
    assert float(b - a) == pytest.approx(0.7 * want / (2 * 2), rel=1e-5)
    with pytest.raises(ConfigError, match="loss.control_weight"):
        tiny_config(data_root, tmp_path, ["loss.control_weight=1.0"])  # an MSE model has no control member


@pytest.mark.parametrize("term", ["spectral", "zonal"])
def test_crps_term_weight_adds_the_members_term(data_root, tmp_path, term):
    """loss(w) - loss(0) is w x the spectral (zonal-mean) CRPS of the same members; a phase's weight overrides
    the loss's; both keys belong to crps training."""
    key = f"{term}_weight"
    trainer = trainer_for(tiny_config(data_root, tmp_path / "a", CRPS_TINY))
    seq = trainer.reader.sequences([0, 5], 2)
    with torch.no_grad():
        a = trainer.crps_rollout_loss(seq, [0, 5], 2)
        b = trainer.crps_rollout_loss(seq, [0, 5], 2, **{key: 0.7})
        m, want = trainer.crps.local_members, 0.0
        state = seq[:, 0].repeat(m, 1, 1, 1)
        for k in (1, 2):
            state = trainer.module(state, trainer.member_noise([0, 5], k))
            want += float(getattr(trainer.crps, term)(state.reshape(m, 2, *state.shape[1:]), seq[:, k]))
    assert want > 0
    # float32 losses: b's rounding 2^-24 x |b| / |b - a| (~4e-7) plus the float32 FFT/sums of the added term (~1e-6)
    assert float(b - a) == pytest.approx(0.7 * want / (2 * 2), rel=1e-5)
    by_loss = trainer_for(tiny_config(data_root, tmp_path / "b", CRPS_TINY + [f"loss.{key}=0.7"]))
    by_phase = trainer_for(tiny_config(data_root, tmp_path / "c", CRPS_TINY + [f"phases.crps.{key}=0.7"]))
    by_loss.run(max_steps=1)
    by_phase.run(max_steps=1)
    trainer.run(max_steps=1)
    # the same float32 arithmetic and kernels (only the config key differs): bitwise (was rel=1e-6)
    assert by_phase.history[0]["loss"] == by_loss.history[0]["loss"]
    assert by_phase.history[0]["loss"] > trainer.history[0]["loss"]
    with pytest.raises(ConfigError, match=f"loss.{key}"):
        tiny_config(data_root, tmp_path, [f"loss.{key}=1.0"])  # an MSE model has no members
    with pytest.raises(ConfigError, match=f"phases.finetune.{key}"):
        tiny_config(data_root, tmp_path, [f"phases.finetune.{key}=1.0"])
    with pytest.raises(ConfigError, match=f"phases.crps.{key}"):
        tiny_config(data_root, tmp_path, CRPS_TINY + [f"phases.crps.{key}=-1"])

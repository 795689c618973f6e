"""The stochastic model: token noise keyed by (seed, time, member, step), its checkpoints and its switch."""
from __future__ import annotations

import pytest
import torch

from hpc_fcn.accel import FusedAFNONet
from hpc_fcn.config import ConfigError
from hpc_fcn.ensemble.model_noise import ModelNoise
from hpc_fcn.model import AFNONet, load_checkpoint
from hpc_fcn.model.checkpoint import save_checkpoint
from hpc_fcn.model.config import ModelConfig
from hpc_fcn.setup import BUILTIN_CHECKPOINT, BUILTIN_STOCHASTIC, checkpoint_path, serial_model, with_new_noise

KW = dict(img_size=(16, 32), patch_size=4, in_chans=3, out_chans=3, embed_dim=16, depth=2, num_blocks=4)


def stochastic_net(noise_dim=6, seed=0):
    torch.manual_seed(seed)
    return AFNONet(**KW, noise_dim=noise_dim).eval()


def test_noise_free_path_is_the_deterministic_model():
    """Without noise the stochastic model is its backbone: the control member is the deterministic forecast."""
    net = stochastic_net()
    plain = AFNONet(**KW).eval()
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("noise_proj")})
    x = torch.randn(2, 3, 16, 32)
    with torch.no_grad():
        assert torch.equal(net(x), plain(x))
        z = torch.randn(2, 4, 8, 6)
        assert (net(x, z) - plain(x)).abs().max() > 1e-3  # unit noise moves O(1) outputs by ~0.1; round-off ~1e-7


def test_fused_inference_path_takes_the_noise():
    net = stochastic_net()
    x, z = torch.randn(3, 3, 16, 32), torch.randn(3, 4, 8, 6)
    with torch.no_grad():
        # same arithmetic in another order: fp32 round-off only (outputs are O(1); 1e-5 is ~100 ulp)
        torch.testing.assert_close(FusedAFNONet(net)(x, z), net(x, z), rtol=1e-5, atol=1e-5)


def test_noise_for_a_deterministic_model_or_of_the_wrong_shape_is_an_error():
    x = torch.randn(1, 3, 16, 32)
    with pytest.raises(ValueError, match="deterministic"):
        AFNONet(**KW)(x, torch.randn(1, 4, 8, 6))
    with pytest.raises(ValueError, match="noise_dim 6"):
        stochastic_net()(x, torch.randn(1, 4, 8, 5))


def test_checkpoint_round_trip_keeps_the_noise_dim(tmp_path):
    net = stochastic_net(noise_dim=5)
    save_checkpoint(tmp_path / "s.ckpt", net)
    back = load_checkpoint(tmp_path / "s.ckpt")
    assert back.noise_dim == 5 and back.config()["noise_dim"] == 5
    assert "noise_dim" not in AFNONet(**KW).config()  # the published config is unchanged
    assert torch.equal(back.noise_proj.weight, net.noise_proj.weight)


@pytest.mark.parametrize("dim", [6, 5])  # even: the paired fast path; odd: one counter per value
def test_model_noise_is_keyed_by_member_and_step_and_windows_slice_the_global_field(dim):
    full = ModelNoise(dim, (8, 12), slice(0, 8), slice(0, 12), seed=7, control=0)
    a = full.sample(1000, [0, 1, 2], step=3)
    assert a.shape == (3, 8, 12, dim)
    assert torch.equal(a[0], torch.zeros(8, 12, dim))  # the control runs the noise-free path
    # Monte Carlo, n = 2 * 8 * 12 * dim >= 960: 3 standard errors of the mean (1 / sqrt(n)), 4.4 of the std
    # (1 / sqrt(2 n)); counter-based draws: the same bits on every kernel
    assert abs(float(a[1:].std()) - 1.0) < 0.1 and abs(float(a[1:].mean())) < 0.1
    assert not torch.equal(a[1], a[2])
    assert not torch.equal(a[1], full.sample(1000, [1], step=4)[0])  # new noise every step
    assert not torch.equal(a[1], full.sample(1006, [1], step=3)[0])  # and every initial time
    window = ModelNoise(dim, (8, 12), slice(3, 7), slice(5, 12), seed=7, control=0)
    assert torch.equal(window.sample(1000, [2], step=3)[0], a[2, 3:7, 5:12])
    assert torch.equal(full.sample(1000, [2, 1], step=3)[0], a[2])  # independent of the member batch
    assert torch.equal(full.member(1000, 2, step=3), a[2])  # the batched draw equals the one-member draw


@pytest.mark.parametrize("length, memory", [(0.0, 0.8), (3000.0, 0.0), (3000.0, 0.8)])
def test_correlated_model_noise_is_layout_independent_and_resumable(length, memory):
    """Noise correlated in space (a field on the sphere) and/or time (AR(1)): a window is the slice of the
    global field, a member does not depend on the batch, and a fresh generator that starts at step 5 (a
    resumed run) gives the same bits as one that drew steps 1..5 in turn."""
    grid = (8, 16)
    full = ModelNoise(4, grid, slice(0, 8), slice(0, 16), seed=3, control=0, length_scale_km=length, memory=memory)
    steps = [full.sample(100, [0, 1, 2, 3], k) for k in range(1, 6)]
    assert torch.equal(steps[-1][0], torch.zeros(8, 16, 4))
    window = ModelNoise(4, grid, slice(2, 7), slice(3, 16), seed=3, control=0, length_scale_km=length, memory=memory)
    for k in range(1, 6):
        assert torch.equal(window.sample(100, [2], k)[0], steps[k - 1][2, 2:7, 3:16])
    fresh = ModelNoise(4, grid, slice(0, 8), slice(0, 16), seed=3, control=0, length_scale_km=length, memory=memory)
    assert torch.equal(fresh.sample(100, [3, 1], 5), steps[-1][[3, 1]])
    assert torch.equal(full.sample(100, [0, 1, 2, 3], 5), steps[-1])  # asked again: the same step
    assert torch.equal(full.sample(100, [0, 1, 2, 3], 1), steps[0])  # a new rollout starts over


def test_correlated_model_noise_has_unit_variance_and_the_asked_correlations():
    """Over many members: unit variance at every step; lag-1 correlation = memory; with a length scale,
    neighbouring tokens are correlated (white noise: not)."""
    grid, members = (16, 32), list(range(64))
    ar = ModelNoise(8, grid, slice(0, 16), slice(0, 32), seed=1, memory=0.75)
    a1, a2, a6 = ar.sample(0, members, 1), ar.sample(0, members, 2), None
    for k in range(3, 7):
        a6 = ar.sample(0, members, k)
    # Monte Carlo over n = 64 * 16 * 32 * 8 = 262144 counter-based draws (the same on every kernel): the variance
    # has standard error sqrt(2 / n) = 0.0028 (0.03: 11 se), a correlation (1 - rho^2) / sqrt(n) <= 0.002 (0.02: 10+)
    for a in (a1, a2, a6):
        assert abs(float(a.var()) - 1.0) < 0.03
    lag1 = float((a1 * a2).mean() / (a1.std() * a2.std()))
    assert abs(lag1 - 0.75) < 0.02
    assert abs(float((a1 * a6).mean())) < 0.02 + 0.75 ** 5
    for length, low, high in ((0.0, -0.02, 0.02), (2500.0, 0.5, 0.95)):
        sp = ModelNoise(8, grid, slice(0, 16), slice(0, 32), seed=1, length_scale_km=length)
        f = sp.sample(0, members, 1)
        assert abs(float(f.var()) - 1.0) < 0.03  # as above (a field on the sphere: unit rms by construction)
        # white: 5 standard errors of a correlation of 63488 pairs; correlated: the expected range, not an error bound
        eq = f[:, 6:10]  # near the equator, where a token is widest
        neighbour = float((eq[:, :, 1:] * eq[:, :, :-1]).mean() / eq.var())
        assert low < neighbour < high, (length, neighbour)
    with pytest.raises(ValueError, match="memory"):
        ModelNoise(8, grid, slice(0, 16), slice(0, 32), seed=1, memory=1.0)


def test_the_noise_process_travels_with_the_checkpoint(tmp_path):
    net = AFNONet(**KW, noise_dim=4, noise_length_km=1500.0, noise_memory_hours=24.0)
    save_checkpoint(tmp_path / "c.ckpt", net, model_config=net.config())
    back = load_checkpoint(tmp_path / "c.ckpt")
    assert (back.noise_length_km, back.noise_memory_hours) == (1500.0, 24.0)
    cfg = ModelConfig(img_size=(16, 32), patch_size=4, embed_dim=16, depth=2, num_blocks=4,
                      checkpoint=str(tmp_path / "c.ckpt"), stochastic=True)
    _, mcfg = serial_model(cfg, 3, (16, 32))
    assert (mcfg.noise_length_km, mcfg.noise_memory_hours) == (1500.0, 24.0)  # the checkpoint's process wins
    from hpc_fcn.config import from_dict
    from hpc_fcn.ensemble.config import EnsembleConfig
    given = from_dict(EnsembleConfig, {"model": {"img_size": [16, 32], "patch_size": 4, "embed_dim": 16, "depth": 2,
                                                 "num_blocks": 4, "checkpoint": str(tmp_path / "c.ckpt"),
                                                 "stochastic": True, "noise_length_km": 500.0}}, []).model
    with pytest.raises(ConfigError, match="model.noise_length_km.*1500"):  # not silently replaced
        serial_model(given, 3, (16, 32))
    assert "noise_length_km" not in AFNONet(**KW, noise_dim=4).config()  # white noise: configs as before
    assert ModelNoise.memory_per_step(24.0, 6) == pytest.approx(0.7788, abs=1e-4)  # exp(-1/4), 4 decimals: 8e-7 off
    with pytest.raises(ConfigError, match="model.noise_memory_hours"):
        ModelConfig(noise_memory_hours=-1.0).validate("model")


def test_stochastic_switch_resolves_the_builtin_checkpoint_and_refuses_a_deterministic_one(tmp_path):
    assert checkpoint_path("builtin") == BUILTIN_CHECKPOINT
    if BUILTIN_STOCHASTIC.is_file():
        assert checkpoint_path("builtin", stochastic=True) == BUILTIN_STOCHASTIC
    plain = AFNONet(**KW)
    save_checkpoint(tmp_path / "plain.ckpt", plain)
    cfg = ModelConfig(img_size=(16, 32), patch_size=4, embed_dim=16, depth=2, num_blocks=4,
                      checkpoint=str(tmp_path / "plain.ckpt"), stochastic=True)
    with pytest.raises(ConfigError, match="model.stochastic"):
        serial_model(cfg, 3, (16, 32))
    net, mcfg = serial_model(cfg, 3, (16, 32), add_noise=True)  # training adds a new noise projection
    assert net.noise_dim == cfg.noise_dim and mcfg.stochastic
    assert torch.equal(net.patch_embed.proj.weight, plain.patch_embed.proj.weight)


def test_with_new_noise_is_seeded():
    plain = AFNONet(**KW)
    a, b = with_new_noise(plain, 4, seed=1), with_new_noise(plain, 4, seed=1)
    assert torch.equal(a.noise_proj.weight, b.noise_proj.weight)
    assert not torch.equal(a.noise_proj.weight, with_new_noise(plain, 4, seed=2).noise_proj.weight)


def test_crps_training_needs_the_stochastic_switch(tmp_path):
    from hpc_fcn.config import from_dict
    from hpc_fcn.train.config import TrainConfig
    with pytest.raises(ConfigError, match="loss.kind"):
        from_dict(TrainConfig, {"loss": {"kind": "crps"}}, [])
    with pytest.raises(ConfigError, match="loss.members"):
        from_dict(TrainConfig, {"model": {"stochastic": True}, "loss": {"kind": "crps", "members": 1}}, [])


def test_train_only_freezes_the_rest_and_names_a_prefix_that_matches_nothing():
    from hpc_fcn.train.trainer import trainable
    net = stochastic_net()
    keep = trainable(list(net.named_parameters()), ["noise_proj"])
    assert [k for k, _ in keep] == ["noise_proj.weight"]
    assert not net.patch_embed.proj.weight.requires_grad and net.noise_proj.weight.requires_grad
    with pytest.raises(ConfigError, match="optim.train_only"):
        trainable(list(net.named_parameters()), ["nothing"])


@pytest.mark.parametrize("blocks", [2, 3])
def test_noise_before_later_blocks_in_the_serial_and_fused_paths(blocks, tmp_path):
    """noise_blocks > 1: each of the first blocks adds its own projection of the token noise; the fused path
    equals the serial one, the noise-free path stays the deterministic model, and a checkpoint keeps the count."""
    torch.manual_seed(0)
    kw = dict(KW, depth=3)
    net = AFNONet(**kw, noise_dim=4, noise_blocks=blocks).eval()
    assert net.config()["noise_blocks"] == blocks and len(net.block_noise_proj) == blocks - 1
    x = torch.randn(2, KW["in_chans"], *KW["img_size"])
    noise = torch.randn(2, net.h, net.w, 4)
    with torch.no_grad():
        for p in net.block_noise_proj.parameters():
            p.mul_(50.0)  # make the later projections matter
        y = net(x, noise)
        fused = FusedAFNONet(net)(x, noise)
        # fp32 in another order, round-off grown by the x50 projections (inner values ~50x): ~50 * a few 2^-24
        assert torch.allclose(fused, y, atol=1e-5, rtol=1e-4)
        net.block_noise_proj[-1].weight.zero_()
        z = net(x, noise)
    assert not torch.allclose(z, y, atol=1e-4)  # the last noisy block's projection is used
    plain = AFNONet(**kw).eval()
    plain.load_state_dict(net.state_dict(), strict=False)
    with torch.no_grad():
        assert torch.equal(net(x), plain(x))  # no noise: the deterministic network
    save_checkpoint(tmp_path / "m.ckpt", net)
    back = load_checkpoint(tmp_path / "m.ckpt")
    assert back.noise_blocks == blocks and torch.equal(back(x, noise), net(x, noise))
    with pytest.raises(ValueError, match="noise_blocks"):
        AFNONet(**kw, noise_dim=4, noise_blocks=4)


@pytest.mark.parametrize("length,memory", [(0.0, 0.0), (2000.0, 0.6)])
def test_noise_scale_multiplies_the_process_in_the_ensemble_app_only(length, memory):
    """model.noise_scale multiplies what the generator returns (the AR(1) state itself keeps unit variance, so
    the scaled draws are exactly scale x the unscaled ones); it is a knob of the ensemble app's config, not of
    a network, and training refuses it."""
    grid = (8, 16)
    one = ModelNoise(4, grid, slice(0, 8), slice(0, 16), seed=3, control=0, length_scale_km=length, memory=memory)
    big = ModelNoise(4, grid, slice(0, 8), slice(0, 16), seed=3, control=0, length_scale_km=length, memory=memory,
                     scale=1.5)
    for k in (1, 2, 3):
        assert torch.equal(big.sample(100, [0, 1, 2], k), 1.5 * one.sample(100, [0, 1, 2], k))
    cfg = ModelConfig(stochastic=True, noise_dim=4, noise_length_km=length, noise_scale=1.5)
    assert ModelNoise.for_model(cfg, grid, slice(0, 8), slice(0, 16), 6.0, seed=3).scale == 1.5
    assert ModelNoise.for_model(stochastic_net(4), grid, slice(0, 8), slice(0, 16), 6.0, seed=3).scale == 1.0
    with pytest.raises(ConfigError, match="model.noise_scale"):
        ModelConfig(noise_scale=0.0).validate("model")
    from hpc_fcn.config import from_dict
    from hpc_fcn.train.config import TrainConfig
    with pytest.raises(ConfigError, match="model.noise_scale"):
        from_dict(TrainConfig, {"model": {"stochastic": True, "noise_scale": 1.2}, "loss": {"kind": "crps"}}, [])

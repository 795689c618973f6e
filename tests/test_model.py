"""The published AFNONet: keys and shapes of the production checkpoint, checkpoints, and the quirks."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hpc_fcn.model import (AFNO2D, AFNONet, Block, CheckpointError, PrecipNet, count_parameters, load_checkpoint,
                           mode_window, save_checkpoint, unpatchify)


def _published_shapes():
    s = {"pos_embed": (1, 16200, 768), "patch_embed.proj.weight": (768, 20, 8, 8), "patch_embed.proj.bias": (768,),
         "norm.weight": (768,), "norm.bias": (768,), "head.weight": (1280, 768)}
    for n in range(12):
        p = f"blocks.{n}."
        s.update({p + "norm1.weight": (768,), p + "norm1.bias": (768,), p + "filter.w1": (2, 8, 96, 96),
                  p + "filter.b1": (2, 8, 96), p + "filter.w2": (2, 8, 96, 96), p + "filter.b2": (2, 8, 96),
                  p + "norm2.weight": (768,), p + "norm2.bias": (768,), p + "mlp.fc1.weight": (3072, 768),
                  p + "mlp.fc1.bias": (3072,), p + "mlp.fc2.weight": (768, 3072), p + "mlp.fc2.bias": (768,)})
    return s


def test_production_model_has_the_published_keys_and_shapes():
    with torch.device("meta"):
        model = AFNONet()
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(state) == 150
    assert state == _published_shapes()
    assert count_parameters(model) == 74_691_840


def small(**kw):
    torch.manual_seed(0)
    args = dict(img_size=(24, 48), patch_size=4, in_chans=3, out_chans=3, embed_dim=16, depth=2, num_blocks=4)
    args.update(kw)
    return AFNONet(**args)


def test_published_checkpoint_layout_round_trips(tmp_path):
    model = small()
    # exactly what FourCastNet's trainer saves: a DDP model's state dict, so every key has 'module.'
    published = {"iters": 7, "epoch": 2, "model_state": {"module." + k: v for k, v in model.state_dict().items()},
                 "optimizer_state_dict": {}}
    torch.save(published, tmp_path / "backbone.ckpt")
    loaded = load_checkpoint(tmp_path / "backbone.ckpt", small(depth=2))
    x = torch.randn(2, 3, 24, 48)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)  # same weights, input, kernels: bitwise
    # built from the checkpoint alone: the config is inferred from the shapes and our model_config
    save_checkpoint(tmp_path / "ours.ckpt", model, epoch=3, iters=9)
    ck = torch.load(tmp_path / "ours.ckpt", weights_only=True)
    assert all(k.startswith("module.") for k in ck["model_state"]) and ck["epoch"] == 3
    again = load_checkpoint(tmp_path / "ours.ckpt")
    torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)  # as above
    # a plain state dict works too
    plain = load_checkpoint(model.state_dict(), small())
    torch.testing.assert_close(plain(x), model(x), rtol=0, atol=0)  # as above


def test_checkpoint_mismatch_is_one_clear_error():
    state = small().state_dict()
    state.pop("head.weight")
    state["extra.weight"] = torch.zeros(1)
    state["blocks.0.mlp.fc1.weight"] = torch.zeros(5, 5)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(state, small())
    msg = str(exc.value)
    assert "missing keys: head.weight" in msg and "unexpected keys: extra.weight" in msg
    assert "blocks.0.mlp.fc1.weight: checkpoint (5, 5) vs model (64, 16)" in msg
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint("/nonexistent/backbone.ckpt")


def test_mode_window_reproduces_the_published_cutoff():
    # production: 90 token rows -> total 46, kept 46: all 90 rows, and columns [0, 46) of the 91
    assert mode_window(90, 1.0) == (slice(0, 90), slice(0, 46))
    # h = 9, fraction 0.5: total 5, kept 2 -> rows [3, 7), columns [0, 2)
    assert mode_window(9, 0.5) == (slice(3, 7), slice(0, 2))
    assert mode_window(8, 1.0) == (slice(0, 8), slice(0, 5))


def _reference_filter(x, w1, b1, w2, b2, lam, frac):
    """Loop-by-loop NumPy version of the published AFNO filter (float64)."""
    B, H, W, C = x.shape
    nb, bs = w1.shape[1], w1.shape[2]
    spec = np.fft.rfft2(x, axes=(1, 2), norm="ortho").reshape(B, H, W // 2 + 1, nb, bs)
    total = H // 2 + 1
    kept = int(total * frac)
    out = np.zeros_like(spec)
    W1, W2 = w1[0] + 1j * w1[1], w2[0] + 1j * w2[1]
    for i in range(max(total - kept, 0), min(total + kept, H)):
        for j in range(kept):
            for k in range(nb):
                z = spec[:, i, j, k]                              # (B, bs)
                h = z @ W1[k] + (b1[0, k] + 1j * b1[1, k])
                h = np.maximum(h.real, 0) + 1j * np.maximum(h.imag, 0)
                o = h @ W2[k] + (b2[0, k] + 1j * b2[1, k])
                shrink = lambda v: np.sign(v) * np.maximum(np.abs(v) - lam, 0)  # noqa: E731
                out[:, i, j, k] = shrink(o.real) + 1j * shrink(o.imag)
    y = np.fft.irfft2(out.reshape(B, H, W // 2 + 1, C), s=(H, W), axes=(1, 2), norm="ortho")
    return y + x


@pytest.mark.parametrize("frac", [1.0, 0.5])
def test_filter_equals_a_hand_written_reference(frac):
    torch.manual_seed(1)
    f = AFNO2D(8, num_blocks=2, sparsity_threshold=0.01, hard_thresholding_fraction=frac).double()
    with torch.no_grad():
        for p in (f.w1, f.w2, f.b1, f.b2):
            p.mul_(20)  # large enough that some outputs exceed the softshrink threshold and some do not
    x = torch.randn(2, 6, 10, 8, dtype=torch.float64)
    ref = _reference_filter(x.numpy(), *(p.detach().numpy() for p in (f.w1, f.b1, f.w2, f.b2)), 0.01, frac)
    got = f(x).detach().numpy()
    # float64 FFTs and GEMMs vs loops: a few eps64 (2.2e-16) of max|ref| ~ 8 (measured 3e-15 absolute)
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)


def test_softshrink_zeroes_small_modes():
    f = AFNO2D(4, num_blocks=1, sparsity_threshold=10.0).double()  # every mode is shrunk to zero
    x = torch.randn(1, 4, 6, 4, dtype=torch.float64)
    torch.testing.assert_close(f(x), x, rtol=0, atol=0)  # only the skip remains: irfft2(0) + x is exactly x


def test_block_double_skip():
    torch.manual_seed(2)
    blk = Block(8, mlp_ratio=2.0, num_blocks=2).double()
    with torch.no_grad():
        for p in (blk.filter.w1, blk.filter.b1, blk.filter.w2, blk.filter.b2, blk.mlp.fc2.weight, blk.mlp.fc2.bias):
            p.zero_()
        blk.norm1.weight.copy_(torch.linspace(0.5, 2.0, 8))
        blk.norm1.bias.copy_(torch.linspace(-1, 1, 8))
    x = torch.randn(2, 3, 4, 8, dtype=torch.float64)
    # AFNO(n) = 0 and MLP = 0 leave the double skip: x + norm1(x)
    mu = x.mean(-1, keepdim=True)
    var = x.var(-1, unbiased=False, keepdim=True)
    n = (x - mu) / torch.sqrt(var + 1e-6) * blk.norm1.weight + blk.norm1.bias
    # float64 LayerNorm in another order: a few eps64 of O(1) values (measured 2e-15); was the default 1e-7
    torch.testing.assert_close(blk(x), x + n, rtol=1e-12, atol=1e-12)


def test_head_unpatchify_order():
    b, h, w, p1, p2, c = 2, 3, 4, 2, 3, 5
    x = torch.randn(b, h, w, p1 * p2 * c)
    out = unpatchify(x, (p1, p2), c)
    for i in range(h):
        for j in range(w):
            for a in range(p1):
                for d in range(p2):
                    # b h w (p1 p2 c) -> b c (h p1) (w p2): a permutation, so exact
                    torch.testing.assert_close(out[:, :, i * p1 + a, j * p2 + d],
                                               x[:, i, j, (a * p2 + d) * c:(a * p2 + d + 1) * c], rtol=0, atol=0)


def test_final_norm_is_unused_and_filter_runs_in_fp32():
    model = small()
    x = torch.randn(1, 3, 24, 48)
    y = model(x)
    with torch.no_grad():
        model.norm.weight.mul_(3.0)
        model.norm.bias.add_(1.0)
    torch.testing.assert_close(model(x), y, rtol=0, atol=0)  # norm unused: the same arithmetic, bitwise
    f = model.blocks[0].filter
    xb = torch.randn(1, 6, 12, 16).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = f(xb)
    ref = f(xb.float())  # the same fp32 filter, no bf16 rounding
    assert got.dtype == torch.bfloat16
    # two bf16 roundings (2^-8 relative each): the filter's fp32 output, then its sum with the skip; the 1 % covers
    # fp32 roundings. Was rtol=atol=1e-2: the rtol fails where the sum cancels (1.1 % seen), the atol had no bound
    filtered = ref - xb.float()
    assert ((got.float() - ref).abs() <= 2 ** -8 * (filtered.abs() + ref.abs()) * 1.01).all()


def test_precipnet_layout_and_padding():
    torch.manual_seed(3)
    net = PrecipNet(img_size=(24, 48), patch_size=4, in_chans=3, embed_dim=16, depth=1, num_blocks=4)
    keys = net.state_dict().keys()
    assert {"conv.weight", "conv.bias"} <= set(keys) and all(k.startswith(("backbone.", "conv.")) for k in keys)
    x = torch.randn(2, 3, 24, 48)
    y = net(x)
    assert y.shape == (2, 1, 24, 48) and (y >= 0).all()
    # periodic in longitude, zero beyond the poles
    bb = net.backbone(x)
    ref = F.relu(F.conv2d(F.pad(F.pad(bb, (1, 1, 0, 0), mode="circular"), (0, 0, 1, 1)), net.conv.weight, net.conv.bias))
    # the model's own ops (pad, conv2d, relu): bitwise here; default fp32 tolerance (rtol 1.3e-6) for a conv
    # algorithm summing its 9 terms in another order
    torch.testing.assert_close(y, ref)
    loaded = load_checkpoint({"model_state": {"module." + k: v for k, v in net.state_dict().items()}},
                             PrecipNet(img_size=(24, 48), patch_size=4, in_chans=3, embed_dim=16, depth=1, num_blocks=4))
    torch.testing.assert_close(loaded(x), y, rtol=0, atol=0)  # same weights, input, kernels: bitwise


def test_bad_grid_is_a_clear_error():
    with pytest.raises(ValueError, match="not a multiple of the patch"):
        AFNONet(img_size=(25, 48), patch_size=4)
    with pytest.raises(ValueError, match="num_blocks 4 does not divide embed_dim 30"):
        AFNONet(img_size=(24, 48), patch_size=4, embed_dim=30, num_blocks=4)


def test_model_keys_are_the_constructor_keywords():
    import inspect
    from hpc_fcn.model.config import MODEL_KEYS
    assert MODEL_KEYS == tuple(inspect.signature(AFNONet).parameters)

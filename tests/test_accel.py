"""The building blocks of the inference speed-ups: exact fused path, int8/fp8 linears, option checks."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from hpc_fcn.accel import (AccelError, FusedAFNONet, GraphedStep, Int8Linear, auto_members_per_pass, check_compile,
                           check_cuda_graphs, check_precision, check_quantize, cpu_native_fp16, member_bytes,
                           members_that_fit, pass_size, quantize_model, supports_fp8)
from int8_support import needs_exact_int8

from hpc_fcn.accel.fastpath import interleaved_bias, interleaved_weight, spectral_mlp
from hpc_fcn.model import AFNONet, spectral_block_mlp

GPU = torch.cuda.is_available()
CPU = torch.device("cpu")


def small_net(**kw) -> AFNONet:
    torch.manual_seed(0)
    args = dict(img_size=(32, 64), patch_size=4, in_chans=5, out_chans=5, embed_dim=64, depth=2)
    args.update(kw)
    return AFNONet(**args).eval()


@pytest.mark.parametrize("dense", [True, False])
def test_interleaved_spectral_mlp_equals_complex_block_mlp(dense):
    # the real GEMM on (re, im) pairs is the published 4-einsum complex MLP; fp32 round-off only
    torch.manual_seed(1)
    nb, bs, n = 3, 4, 7
    w1, w2 = 0.3 * torch.randn(2, nb, bs, bs), 0.3 * torch.randn(2, nb, bs, bs)
    b1, b2 = 0.1 * torch.randn(2, nb, bs), 0.1 * torch.randn(2, nb, bs)
    xr, xi = torch.randn(n, nb, bs), torch.randn(n, nb, bs)
    ref_r, ref_i = spectral_block_mlp(xr, xi, w1, b1, w2, b2, 0.01)
    m1, m2, c1, c2 = interleaved_weight(w1), interleaved_weight(w2), interleaved_bias(b1), interleaved_bias(b2)
    if dense:
        m1, m2, c1, c2 = torch.block_diag(*m1), torch.block_diag(*m2), c1.reshape(-1), c2.reshape(-1)
    z = torch.stack([xr, xi], -1).reshape(n, nb, 2 * bs)  # interleaved (re, im)
    out = spectral_mlp(z, m1, c1, m2, c2, 0.01).reshape(n, nb, bs, 2)
    # fp32: two layers of 8-term dot products of O(1) values, ~20 roundings of 2^-24 (~1e-6); measured 5e-7
    torch.testing.assert_close(out[..., 0], ref_r, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[..., 1], ref_i, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spectral", ["dense", "blocked"])
@pytest.mark.parametrize("frac", [1.0, 0.5])
def test_fused_path_matches_published_forward(spectral, frac):
    # same arithmetic in another order: fp32 round-off only (outputs are O(1); 1e-5 is ~100 ulp)
    net = small_net(hard_thresholding_fraction=frac)
    x = torch.randn(3, 5, 32, 64)
    with torch.no_grad():
        torch.testing.assert_close(FusedAFNONet(net, spectral)(x), net(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("precision", [torch.float32, torch.bfloat16])
def test_fused_in_place_sums_equal_the_autograd_path_bitwise(precision):
    # without autograd the block sums and GELU run in place, with it out of place: the same additions in the same
    # order (a + b is b + a exactly), so the outputs are equal to the bit, in fp32 and under bf16 autocast
    net = small_net()
    fused = FusedAFNONet(net)
    x = torch.randn(2, 5, 32, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision is torch.bfloat16):
        with torch.no_grad():
            in_place = fused(x)
        with torch.enable_grad():
            out_of_place = fused(x)
    assert out_of_place.requires_grad and not in_place.requires_grad
    assert in_place.dtype == out_of_place.dtype
    assert torch.equal(in_place, out_of_place.detach())


@needs_exact_int8
def test_int8_linear_close_to_fp32():
    # per-token and per-channel 127-level rounding: about 0.4 % relative error per operand, errors of the
    # K products average out; 2 % of the output RMS leaves a wide margin
    torch.manual_seed(2)
    lin = nn.Linear(64, 96)
    x = torch.randn(4, 50, 64)
    with torch.no_grad():
        ref, y = lin(x), Int8Linear(lin)(x)
    assert y.shape == ref.shape and y.dtype == torch.float32
    assert ((y - ref).norm() / ref.norm()).item() < 2e-2  # 127-level rounding, see above (measured 0.7 %)


def test_int8_is_refused_where_the_product_is_not_exact(monkeypatch):
    """A CPU without VNNI/AMX (oneDNN pairs int8 products in saturating int16) computes wrong int8 GEMMs: the
    self-check sees it and quantize=int8 is refused in one line, by the option check and by the layer itself."""
    import hpc_fcn.accel.quantize as q

    def saturating_int_mm(a, b):  # a u8 x s8 pmaddubsw kernel: a shifted to u8, pair sums clamped to int16
        p = (a.long() + 128).unsqueeze(2) * b.long().unsqueeze(0)  # (m, k, n)
        pairs = (p[:, 0::2] + p[:, 1::2]).clamp(-32768, 32767)
        return (pairs.sum(dim=1) - 128 * b.long().sum(dim=0)).to(torch.int32)
    monkeypatch.setattr(torch, "_int_mm", saturating_int_mm)
    q.int8_gemm_is_exact.cache_clear()
    try:
        assert not q.int8_gemm_is_exact("cpu")
        with pytest.raises(AccelError, match="int8 matrix product is not exact") as err:
            check_quantize("int8", torch.device("cpu"))
        assert "\n" not in str(err.value)
        with pytest.raises(AccelError, match="not exact"):
            Int8Linear(nn.Linear(8, 4))(torch.randn(3, 8))
    finally:
        q.int8_gemm_is_exact.cache_clear()


def test_quantize_model_replaces_every_mlp_linear_only():
    net = small_net(depth=3)
    names = quantize_model(net, "int8")
    assert names == [f"blocks.{i}.mlp.fc{j}" for i in range(3) for j in (1, 2)]
    assert type(net.head) is nn.Linear  # the output projection stays exact unless asked
    assert quantize_model(small_net(), "none") == []


def test_option_checks_on_cpu():
    assert check_precision("bf16", CPU) == torch.bfloat16
    with pytest.raises(AccelError, match="tf32 is a GPU tensor-core mode"):
        check_precision("tf32", CPU)
    if not cpu_native_fp16():
        with pytest.raises(AccelError, match="fp16 on this CPU"):
            check_precision("fp16", CPU)
    with pytest.raises(AccelError, match="fp8"):
        check_quantize("fp8", CPU)
    with pytest.raises(AccelError, match="CUDA GPU"):
        check_cuda_graphs(CPU)
    check_compile(CPU)  # gcc is on the test machines


def test_cuda_graphs_refused_with_mpi_collectives():
    class FakeGrid:  # only the two attributes the check reads
        shape = {"ensemble": 1, "h": 2, "w": 1, "matmul": 1}
        backend = "mpi"
    with pytest.raises(AccelError, match="MPI collectives cannot be captured"):
        check_cuda_graphs(torch.device("cuda", 0), FakeGrid())


def test_auto_members_per_pass_is_bounded():
    net = small_net()
    n = auto_members_per_pass(net, CPU)
    assert 1 <= n <= 8192 // (8 * 16)  # the CPU token budget: 8192 tokens, 128 per member


GiB = 1 << 30


@pytest.mark.parametrize("budget_gib", [0.5, 1, 3, 7.5, 13, 64, 97.3, 1000])
def test_pass_sizes_never_exceed_the_members_and_are_balanced(budget_gib):
    per = GiB  # one member's bytes
    fit = members_that_fit(int(budget_gib * GiB), per)
    assert fit == max(1, min(int(budget_gib), 256))
    for n in range(1, 201):
        s = pass_size(n, fit)
        passes = -(-n // s)
        assert 1 <= s <= min(n, fit)
        assert passes == -(-n // min(n, fit))  # the fewest passes the memory allows
        assert s * passes - n < passes  # padding the last pass wastes less than one member per pass
        assert s == -(-n // -(-n // fit))


def test_pass_size_examples_from_the_issue():
    assert pass_size(13, 90) == 13  # 100 members on 8 GPUs: 13 per rank run as 13, not 90 (or 93)
    assert pass_size(100, 90) == 50  # two passes of 50, not 90 + 10 padded to 90
    assert pass_size(200, 90) == 67
    assert pass_size(1, 1) == 1
    with pytest.raises(ValueError, match="at least one member"):
        pass_size(0, 4)


def test_production_model_fits_about_ninety_members_on_an_h200():
    # member_bytes only reads shapes: the 720 x 1440, embed 768, depth 12 network on the meta device
    with torch.device("meta"):
        net = AFNONet(img_size=(720, 1440), patch_size=8, in_chans=20, out_chans=20, embed_dim=768, depth=12)
    budget = int(0.7 * 139 * GiB)  # GPU_MEMORY_FRACTION of an idle H200's free memory
    eager = members_that_fit(budget, member_bytes(net, "bf16"))
    graphed = members_that_fit(budget, member_bytes(net, "bf16", cuda_graphs=True))
    assert 60 <= graphed < eager <= 120  # static graph buffers cost memory
    assert pass_size(13, graphed) == 13


@pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")
def test_tf32_context_switches_tensor_core_rounding_and_restores_it():
    from hpc_fcn.accel import autocast
    dev = torch.device("cuda", torch.cuda.current_device())
    assert check_precision("tf32", dev) == torch.float32
    mm, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = (mm.allow_tf32, cudnn.allow_tf32)
    a = torch.randn(2048, 2048, device=dev, dtype=torch.float64)
    exact = a @ a
    a32 = a.float()
    with autocast(dev, "fp32"):
        assert not mm.allow_tf32 and not cudnn.allow_tf32
        err32 = ((a32 @ a32).double() - exact).norm() / exact.norm()
    with autocast(dev, "tf32"):
        assert mm.allow_tf32 and cudnn.allow_tf32
        errtf = ((a32 @ a32).double() - exact).norm() / exact.norm()
    assert (mm.allow_tf32, cudnn.allow_tf32) == saved
    assert err32 < 1e-5 < errtf < 1e-2  # TF32 keeps 10 mantissa bits: about 1e-4 relative on this product


@pytest.mark.skipif(not GPU, reason="CUDA graphs need a CUDA GPU")
def test_graphed_step_replays_eager_result():
    dev = torch.device("cuda", 0)
    net = small_net().to(dev)
    fused = FusedAFNONet(net)
    step = GraphedStep(fused)
    x = torch.randn(4, 5, 32, 64, device=dev)
    with torch.inference_mode():
        ref = fused(x)
        y1, y2 = step(x), step(x * 0.5)
        # the captured kernels replayed: fp32 round-off at most, as for the fused path (~100 ulp of O(1) outputs)
        torch.testing.assert_close(y1, ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(y2, fused(x * 0.5), rtol=1e-5, atol=1e-5)
    assert len(step.graphs) == 1


@pytest.mark.skipif(not GPU or not supports_fp8(torch.device("cuda", 0)), reason="fp8 needs an H100/H200-class GPU")
def test_fp8_linear_close_to_fp32():
    # e4m3 has 3 mantissa bits: ~3 % relative error per operand, per-tensor scales; 8 % of the output RMS
    from hpc_fcn.accel import Fp8Linear
    torch.manual_seed(3)
    lin = nn.Linear(128, 256).cuda()
    x = torch.randn(64, 128, device="cuda")
    with torch.no_grad():
        ref, y = lin(x), Fp8Linear(lin)(x)
    assert ((y.float() - ref).norm() / ref.norm()).item() < 8e-2  # e4m3 rounding, see above
    net = copy.deepcopy(small_net()).cuda()
    assert len(quantize_model(net, "fp8")) == 4

"""Forecaster options against the fp32 published forward on a short rollout of a small model."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from int8_support import needs_exact_int8

from hpc_fcn.accel import AccelError, cpu_native_fp16
from hpc_fcn.forecaster import Forecaster
from hpc_fcn.model import AFNONet, load_checkpoint
from hpc_fcn.schema import InferenceConfig

GPU = torch.cuda.is_available()
BUILTIN = Path(__file__).resolve().parents[1] / "hpc_fcn" / "assets" / "builtin_model.ckpt"
STEPS = 4


def model() -> AFNONet:
    """The built-in trained model when it exists (its real weights), else a seeded random one of a small size."""
    if BUILTIN.is_file():
        return load_checkpoint(BUILTIN).eval()
    torch.manual_seed(0)
    return AFNONet(img_size=(32, 64), patch_size=4, in_chans=5, out_chans=5, embed_dim=64, depth=2).eval()


@pytest.fixture(scope="module")
def case():
    net = model()
    torch.manual_seed(1)
    x = torch.randn(3, net.in_chans, *net.img_size)
    ref = [x]
    with torch.no_grad():
        for _ in range(STEPS):
            ref.append(net(ref[-1]))
    return net, x, ref[1:]


def rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def run(net, x, **kw):
    fc = Forecaster(net, InferenceConfig(device="cpu", **kw))
    states = []
    fc.rollout(x, STEPS, callback=lambda k, s: states.append(s))
    return fc, states


def test_fp32_fused_path_equals_published_forward(case):
    net, x, ref = case
    fc, states = run(net, x)
    for s, r in zip(states, ref):
        assert s.dtype == torch.float32
        torch.testing.assert_close(s, r, rtol=1e-4, atol=1e-4)  # fp32 round-off grown over 4 steps (seen 1.6e-5)
    assert "fp32" in fc.describe()


def test_tf32_is_refused_on_the_cpu(case):
    with pytest.raises(AccelError, match="tf32"):
        Forecaster(case[0], InferenceConfig(device="cpu", precision="tf32"))


def test_automatic_passes_are_balanced_and_never_larger_than_the_members(case, monkeypatch):
    import hpc_fcn.accel.memory as memory
    import hpc_fcn.model.facts as facts
    net = case[0]
    per = memory.member_bytes(net)
    monkeypatch.setattr(memory, "available_bytes", lambda device: 5 * per)  # 5 members fit
    monkeypatch.setattr(facts, "CPU_TOKENS_PER_PASS", 10 ** 9)
    fc = Forecaster(net, InferenceConfig(device="cpu", members_per_pass=0))
    sizes = []
    forward = fc._pass
    monkeypatch.setattr(fc, "_pass", lambda x, noise=None: sizes.append(x.shape[0]) or forward(x, noise))
    x = torch.randn(13, net.in_chans, *net.img_size)
    y = fc.step(x)
    assert fc.max_members_per_pass == 5 and fc.members_per_pass == 5
    assert sizes == [5, 5, 3]  # ceil(13 / ceil(13 / 5)) = 5: three passes, none above the memory limit
    sizes.clear()
    y3 = fc.step(x[:3])
    assert sizes == [3] and fc.members_per_pass == 3  # a step of 3 members runs one pass of 3
    torch.testing.assert_close(y3, y[:3], rtol=1e-5, atol=1e-5)  # one step, another batch: fp32 round-off
    sizes.clear()
    fc.step(torch.randn(6, net.in_chans, *net.img_size))
    assert sizes == [3, 3]  # balanced: 6 within a limit of 5 runs as 3 + 3, not 5 + 1
    assert "3 (at most 5, from memory)" in fc.describe()


def test_members_per_pass_does_not_change_results(case):
    net, x, ref = case
    _, one = run(net, x, members_per_pass=1)
    _, two = run(net, x, members_per_pass=2)
    # batches of 1 and 2 take other GEMM blockings: fp32 round-off grown over 4 steps, the bound of the fp32 test
    # above (was 1e-5: ATen's default kernels used 74 % of it, 1.05e-5 on values ~14)
    torch.testing.assert_close(one[-1], two[-1], rtol=1e-4, atol=1e-4)


# Tolerances, relative RMS error of the whole state after 4 steps. bf16 rounds GEMM inputs to 8
# significant bits (0.4 % per value); residual stream, norms and FFTs stay fp32, so the error per
# step is well below 1 % and grows slowly: 3 %. int8: 127 levels per token/channel (0.4 % per
# operand) on the MLP only: 2 %.
@pytest.mark.parametrize("kw,tol", [(dict(precision="bf16"), 3e-2),
                                    pytest.param(dict(quantize="int8"), 2e-2, marks=needs_exact_int8),
                                    pytest.param(dict(precision="bf16", quantize="int8"), 4e-2, marks=needs_exact_int8)])
def test_reduced_precision_within_tolerance(case, kw, tol):
    net, x, ref = case
    _, states = run(net, x, **kw)
    errs = [rel_rms(s, r) for s, r in zip(states, ref)]
    assert errs[-1] < tol, errs
    assert errs[0] > 0  # the option really changed the arithmetic


@pytest.mark.skipif(not cpu_native_fp16(), reason="fp16 on this CPU is refused (emulated, ~20x slower than fp32)")
def test_fp16_on_cpu_within_tolerance(case):
    net, x, ref = case
    _, states = run(net, x, precision="fp16")
    assert rel_rms(states[-1], ref[-1]) < 2e-2  # 11 significant bits: 8x finer than bf16


@needs_exact_int8
def test_caller_model_is_not_modified(case):
    net, x, _ = case
    before = {k: v.clone() for k, v in net.state_dict().items()}
    run(net, x[:1], quantize="int8")
    assert type(net.blocks[0].mlp.fc1) is torch.nn.Linear
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_gpu_only_options_are_refused_on_cpu(case):
    net = case[0]
    for kw, msg in ((dict(cuda_graphs=True), "CUDA GPU"), (dict(quantize="fp8"), "fp8"),
                    (dict(device="cuda"), "model is on cpu")):
        with pytest.raises(AccelError, match=msg):
            Forecaster(net, InferenceConfig(**kw))
    if not cpu_native_fp16():
        with pytest.raises(AccelError, match="fp16"):
            Forecaster(net, InferenceConfig(precision="fp16"))


def test_input_shape_checked(case):
    net = case[0]
    with pytest.raises(ValueError, match="expected members"):
        Forecaster(net, InferenceConfig(device="cpu")).step(torch.zeros(1, net.in_chans + 1, *net.img_size))


@pytest.mark.slow
def test_compile_matches_eager(case, tmp_path, monkeypatch):
    # inductor reorders and fuses fp32 arithmetic: round-off only (compile time is measured, not asserted)
    # A cache of our own: inductor's shared one keeps kernels built under another ATEN_CPU_CAPABILITY (torch 2.13
    # then fails to compile, or runs them and returns NaN)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    net, x, ref = case
    fc, states = run(net, x, compile=True)
    assert fc.first_pass_seconds is not None
    torch.testing.assert_close(states[-1], ref[-1], rtol=1e-4, atol=1e-4)  # fp32 round-off over 4 steps, as above


@pytest.fixture
def no_tf32():
    """fp32 comparisons at tight tolerances: TF32 off for everything outside the forecaster's own passes too."""
    mm, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = (mm.allow_tf32, cudnn.allow_tf32)
    mm.allow_tf32 = cudnn.allow_tf32 = False
    yield
    mm.allow_tf32, cudnn.allow_tf32 = saved


# fp32 (graphs too): round-off over 4 steps, as on the CPU; bf16 as on the CPU; fp16 keeps 11 significant bits.
# tf32 rounds GEMM and conv inputs (filter GEMMs too) to 10 mantissa bits: about 1e-3 relative per step.
@pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("kw,tol", [(dict(), 1e-4), (dict(cuda_graphs=True), 1e-4), (dict(precision="bf16"), 3e-2),
                                    (dict(precision="fp16"), 1e-2), (dict(precision="bf16", cuda_graphs=True), 3e-2),
                                    (dict(precision="tf32"), 1e-2), (dict(precision="tf32", cuda_graphs=True), 1e-2)])
def test_gpu_options_within_tolerance(case, kw, tol, no_tf32):
    net, x, ref = case
    gnet = model().cuda()
    fc = Forecaster(gnet, InferenceConfig(device="cuda", members_per_pass=2, **kw))
    y = fc.rollout(x.cuda(), STEPS).cpu()
    assert rel_rms(y, ref[-1]) < tol


@pytest.mark.skipif(not GPU or torch.cuda.get_device_capability() < (8, 9), reason="fp8 needs an H100/H200-class GPU")
def test_fp8_within_tolerance(case):
    net, x, ref = case
    fc = Forecaster(model().cuda(), InferenceConfig(device="cuda", quantize="fp8", precision="bf16"))
    assert rel_rms(fc.rollout(x.cuda(), STEPS).cpu(), ref[-1]) < 1e-1  # e4m3: 3 mantissa bits

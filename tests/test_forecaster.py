"""Forecaster options against the fp32 published forward on a short rollout of a small model."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

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
        torch.testing.assert_close(s, r, rtol=1e-4, atol=1e-4)  # fp32 round-off grown over 4 steps
    assert "fp32" in fc.describe()


def test_members_per_pass_does_not_change_results(case):
    net, x, ref = case
    _, one = run(net, x, members_per_pass=1)
    _, two = run(net, x, members_per_pass=2)
    torch.testing.assert_close(one[-1], two[-1], rtol=1e-5, atol=1e-5)


# Tolerances, relative RMS error of the whole state after 4 steps. bf16 rounds GEMM inputs to 8
# significant bits (0.4 % per value); residual stream, norms and FFTs stay fp32, so the error per
# step is well below 1 % and grows slowly: 3 %. int8: 127 levels per token/channel (0.4 % per
# operand) on the MLP only: 2 %.
@pytest.mark.parametrize("kw,tol", [(dict(precision="bf16"), 3e-2), (dict(quantize="int8"), 2e-2),
                                    (dict(precision="bf16", quantize="int8"), 4e-2)])
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
def test_compile_matches_eager(case):
    # inductor reorders and fuses fp32 arithmetic: round-off only (compile time is measured, not asserted)
    net, x, ref = case
    fc, states = run(net, x, compile=True)
    assert fc.first_pass_seconds is not None
    torch.testing.assert_close(states[-1], ref[-1], rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("kw,tol", [(dict(), 1e-4), (dict(cuda_graphs=True), 1e-4), (dict(precision="bf16"), 3e-2),
                                    (dict(precision="fp16"), 1e-2), (dict(precision="bf16", cuda_graphs=True), 3e-2)])
def test_gpu_options_within_tolerance(case, kw, tol):
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

"""GPU energy through NVML: a no-op reading without a GPU, each board counted once over ranks, real on a GPU."""
import pytest
import torch

from hpc_fcn.accel.power import PowerSampler, joules_per_member_step


def test_cpu_run_reports_no_energy_and_why():
    with PowerSampler("cpu") as p:
        pass
    r = p.reading
    assert not p.available and r.joules is None and r.gpu is None
    assert "no GPU" in r.source and r.seconds >= 0


def test_each_gpu_counted_once_per_member_step():
    ranks = [dict(gpu="GPU-a", joules=100.0), dict(gpu="GPU-a", joules=101.0),  # two ranks on one board
             dict(gpu="GPU-b", joules=50.0)]
    e = joules_per_member_step(ranks, member_steps=30)
    assert e["gpus"] == 2 and e["joules"] == pytest.approx(151.0)  # integer sums: exact in float64 (approx's 1e-6)
    assert e["joules_per_member_step"] == pytest.approx(151.0 / 30)  # the same division: exact
    none = joules_per_member_step([dict(gpu=None, joules=None, source="no GPU (cpu run)")] * 2, 30)
    assert none["joules"] is None and none["joules_per_member_step"] is None and none["note"] == "no GPU (cpu run)"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_energy_of_a_busy_second():
    dev = torch.device("cuda", torch.cuda.current_device())
    sampler = PowerSampler(dev, interval_s=0.02)
    if not sampler.available:
        pytest.skip(sampler.reason)
    a = torch.randn(8192, 8192, device=dev)
    with sampler:
        t = torch.cuda.Event(enable_timing=True)
        t.record()
        while True:
            for _ in range(10):
                a @ a
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            e.synchronize()
            if t.elapsed_time(e) > 1000:
                break
    r = sampler.reading
    assert r.seconds >= 1.0 and r.samples >= 10
    assert 30 < r.mean_watts < 1500 and r.peak_watts >= 30  # a busy datacentre GPU board
    assert r.joules == pytest.approx(r.mean_watts * r.seconds)  # (joules / s) * s: two float64 roundings, ~2e-16

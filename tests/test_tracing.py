"""Tracer regions, Chrome export, summaries, model instrumentation and the optional Score-P bridge."""
import json
import sys

import pytest
import torch

from hpc_fcn.instrument import instrument, region_modules
from hpc_fcn.model.afnonet import AFNONet
from hpc_fcn.tracing import NULL_TRACER, Tracer, combine_summaries, region_kind, write_traces

SMALL = dict(img_size=(16, 32), patch_size=4, in_chans=3, out_chans=3, embed_dim=32, depth=2, num_blocks=4)


def test_regions_and_comm_are_counted():
    t = Tracer(enabled=True, rank=3)
    for _ in range(3):
        with t.region("filter"):
            pass
    with t.comm("fft/all_to_all@w", 1024):
        pass
    t.record("io.read", 0.5, "io", 10)
    s = t.summary()
    assert s["filter"]["count"] == 3 and s["filter"]["category"] == "compute"
    assert s["fft/all_to_all@w"]["bytes"] == 1024 and s["fft/all_to_all@w"]["category"] == "comm"
    # a recorded duration, stored and summed as given: exact; approx's default rel 1e-6 is ample
    assert s["io.read"]["seconds"] == pytest.approx(0.5)
    assert t.category_seconds()["io"] == pytest.approx(0.5)


def test_disabled_tracer_records_nothing_and_adds_no_hooks():
    t = Tracer(enabled=False)
    with t.region("x"), t.comm("y", 10):
        pass
    t.record("z", 1.0)
    assert t.begin("w") is None
    assert t.events == [] and t.summary() == {}
    model = AFNONet(**SMALL)
    handle = instrument(model, t)
    assert len(handle) == 0
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert NULL_TRACER.region("a") is NULL_TRACER.comm("b", 1)  # the shared no-op context


def test_instrumented_model_times_every_named_region_and_removes_cleanly():
    torch.manual_seed(0)
    model = AFNONet(**SMALL)
    x = torch.randn(2, 3, 16, 32)
    ref = model(x)
    t = Tracer(enabled=True)
    with instrument(model, t) as handle:
        assert handle.names == [n for n, _ in region_modules(model)]
        out = model(x)
        model(x)
    torch.testing.assert_close(out, ref)  # hooks do not change results
    s = t.summary()
    expected = {"patch_embed", "head"} | {f"blocks.{i}.{p}" for i in range(2) for p in ("norm1", "filter", "norm2", "mlp")}
    assert set(s) == expected
    assert all(v["count"] == 2 and v["seconds"] > 0 for v in s.values())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    # regions nest in forward order: patch_embed starts before the first block's norm1
    starts = {e[0]: e[2] for e in t.events[: len(expected)]}
    assert starts["patch_embed"] < starts["blocks.0.norm1"] < starts["blocks.0.filter"] < starts["head"]


def test_write_traces_gives_valid_chrome_json_and_summaries(tmp_path):
    t = Tracer(enabled=True, rank=0)
    with t.region("step"):
        with t.comm("mlp/all_gather@matmul", 64):
            pass
    summary = write_traces(t, tmp_path, comm=None, meta={"passes": 1})
    trace = json.loads((tmp_path / "trace.rank0.json").read_text())
    xs = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert {e["name"] for e in xs} == {"step", "mlp/all_gather@matmul"}
    assert all(e["dur"] >= 0 and e["pid"] == 0 for e in xs)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert on_disk["regions"]["mlp/all_gather@matmul"]["bytes"] == 64
    assert on_disk["meta"] == {"passes": 1}
    assert (tmp_path / "summary.csv").read_text().splitlines()[0].startswith("region,kind,category")


def test_combined_summary_takes_busiest_rank():
    a = {"blocks.0.mlp": {"count": 1, "seconds": 1.0, "bytes": 0, "category": "compute"}}
    b = {"blocks.0.mlp": {"count": 1, "seconds": 3.0, "bytes": 0, "category": "compute"}}
    s = combine_summaries([a, b])
    r = s["regions"]["blocks.0.mlp"]
    assert r["seconds_max"] == 3.0 and r["seconds_mean"] == 2.0 and r["kind"] == "mlp" and s["ranks"] == 2
    assert region_kind("fft/all_to_all@spatial") == "fft"


def test_scorep_absent_is_fine_and_present_is_used(monkeypatch):
    monkeypatch.setitem(sys.modules, "scorep", None)
    monkeypatch.setitem(sys.modules, "scorep.user", None)
    t = Tracer(enabled=True)
    assert not t.scorep_active
    with t.region("a"):
        pass

    calls = []

    class FakeUser:  # stands in for scorep.user: records the region calls the tracer makes
        @staticmethod
        def region_begin(name):
            calls.append(("begin", name))

        @staticmethod
        def region_end(name):
            calls.append(("end", name))

    import types
    pkg = types.ModuleType("scorep")
    pkg.user = FakeUser
    monkeypatch.setitem(sys.modules, "scorep", pkg)
    monkeypatch.setitem(sys.modules, "scorep.user", FakeUser)
    t = Tracer(enabled=True)
    assert t.scorep_active
    with t.region("filter"):
        pass
    assert calls == [("begin", "filter"), ("end", "filter")]
    assert not Tracer(enabled=True, scorep=False).scorep_active


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_regions_use_events():
    model = AFNONet(**SMALL).cuda()
    t = Tracer(enabled=True)
    with instrument(model, t):
        model(torch.randn(1, 3, 16, 32, device="cuda"))
    assert t._pending  # timed by CUDA events, resolved lazily
    s = t.summary()
    assert not t._pending and all(v["seconds"] > 0 for v in s.values())


def test_regions_opened_during_graph_capture_are_skipped(monkeypatch):
    import hpc_fcn.tracing as tracing
    t = Tracer(enabled=True)
    monkeypatch.setattr(tracing, "_capturing", lambda: True)
    with t.region("forecaster.pass"), t.comm("x", 8):
        pass
    assert t.begin("blocks.0.mlp") is None
    assert t.events == [] and t.skipped_in_capture == 3
    monkeypatch.setattr(tracing, "_capturing", lambda: False)
    with t.region("forecaster.pass"):
        pass
    assert list(t.summary()) == ["forecaster.pass"]


def test_cpu_bound_tracer_uses_the_host_clock():
    t = Tracer(enabled=True)
    t.bind_device(torch.device("cpu"))
    with t.region("a"), t.comm("b", 4):
        pass
    assert not t._pending and all(v["seconds"] >= 0 for v in t.summary().values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_bound_cuda_tracer_times_gpu_work_not_launches_and_survives_capture():
    t = Tracer(enabled=True)
    t.bind_device(torch.device("cuda", torch.cuda.current_device()))
    a = torch.randn(4096, 4096, device="cuda")
    torch.cuda.synchronize()
    with t.region("gemm"):
        for _ in range(20):
            a @ a  # about 2.7 TFLOP: launches take microseconds, the GPU takes milliseconds
    with t.region("io.write", "io"):
        pass
    assert len(t._pending) == 1  # the io region used the host clock
    s = t.summary()
    assert s["gemm"]["seconds"] > 20 * 2 * 4096 ** 3 / 2e15  # slower than 2 PFLOP/s: GPU time, not launch time
    model = AFNONet(**SMALL).cuda().eval()
    x = torch.randn(1, 3, 16, 32, device="cuda")
    with instrument(model, t), torch.no_grad():
        from hpc_fcn.accel import GraphedStep
        step = GraphedStep(model)
        # one fp32 pass replayed vs eager: round-off only where cuBLAS/cuFFT pick other algorithms (~1e-6 of O(1))
        torch.testing.assert_close(step(x), model(x), rtol=1e-4, atol=1e-4)
    assert t.skipped_in_capture >= 10  # every hooked module of the captured pass, skipped

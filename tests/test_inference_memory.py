"""Inference memory per code path: the model facts' live set against the profiler's peak, and the CLI's code path."""
import json

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import perfmodel as pm
from hpc_fcn.accel import FusedAFNONet
from hpc_fcn.jobs import load_ensemble_case
from hpc_fcn.model.afnonet import AFNONet
from hpc_fcn.model.config import ModelShape
from hpc_fcn.model.facts import default_code_path, member_bytes, spectral_copy_bytes
from hpc_fcn.parallel.layout import Layout
from perfmodel.cli import main as cli_main

CASES = [  # block size 8 (the fused forward's dense spectral GEMM), 16 with half the modes (blocked, rows cut)
    dict(img_size=(32, 64), patch_size=4, in_chans=4, out_chans=4, embed_dim=64, depth=2, num_blocks=8),
    dict(img_size=(32, 64), patch_size=4, in_chans=3, out_chans=3, embed_dim=64, depth=1, num_blocks=4,
         hard_thresholding_fraction=0.5),
]


def profiled_peak(run, x, tmp_path) -> int:
    """The most tensor bytes allocated at once during one no-grad forward (the profiler's ``Total Allocated``)."""
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run(x)
    trace = tmp_path / "mem.json"
    prof.export_chrome_trace(str(trace))
    return max(ev["args"]["Total Allocated"] for ev in json.loads(trace.read_text())["traceEvents"]
               if ev.get("name") == "[memory]")


def path_peak(kw: dict, path: str, tmp_path) -> tuple[AFNONet, torch.nn.Module, int]:
    """A seeded network of ``kw``, the forward ``path`` runs (eager or fused), and its profiled peak for one member."""
    torch.manual_seed(0)
    net = AFNONet(**kw).eval()
    run = FusedAFNONet(net) if path == "fused" else net
    return net, run, profiled_peak(run, torch.randn(1, kw["in_chans"], *kw["img_size"]), tmp_path)


@pytest.mark.parametrize("kw", CASES)
@pytest.mark.parametrize("path", ["eager", "fused"])
def test_member_bytes_is_the_profilers_peak(kw, path, tmp_path):
    net, run, peak = path_peak(kw, path, tmp_path)
    # the live set is a sum of tensor sizes from the same shapes and the CPU allocator reports exact sizes: equal
    assert member_bytes(ModelShape.of(kw), None, "fp32", path).activations == peak
    mem = pm.predict(kw, hardware="this_machine", code_path=path).memory
    assert mem.code_path == path and mem.activations == peak
    # the fused forward's interleaved spectral weights: its buffers, byte for byte
    extra = sum(b.numel() * b.element_size() for b in run.buffers()) if path == "fused" else 0
    assert spectral_copy_bytes(ModelShape.of(kw), path) == extra
    assert mem.weights == sum(p.numel() * 4 for p in net.parameters()) + extra


BASE = CASES[0]
PHASES = [  # each makes another phase of the forward the peak (CASES: the MLP)
    dict(BASE, mlp_ratio=1.0),  # the inverse FFT, all rows kept
    dict(BASE, mlp_ratio=1.0, num_blocks=4, hard_thresholding_fraction=0.5),  # the inverse FFT, rows cut
    dict(BASE, out_chans=40, mlp_ratio=1.0),  # the head
]
EMBED_PHASE = dict(BASE, in_chans=40, mlp_ratio=0.5)  # the fused GEMM embedding (eager: oneDNN's reorders, not counted)


@pytest.mark.parametrize("path,kw", [(p, kw) for p in ("eager", "fused") for kw in PHASES] + [("fused", EMBED_PHASE)])
def test_member_bytes_is_the_profilers_peak_in_every_phase(path, kw, tmp_path):
    _, _, peak = path_peak(kw, path, tmp_path)
    # sums of tensor sizes, exact sizes from the CPU allocator: equal
    assert member_bytes(ModelShape.of(kw), None, "fp32", path).activations == peak


def test_default_code_path_is_what_the_app_runs():
    kw = CASES[0]
    assert default_code_path(None) == default_code_path(Layout()) == "fused"  # hpc_fcn.forecaster: FusedAFNONet
    assert default_code_path(Layout(1, 2, 1, 1)) == "distributed"
    assert pm.predict(kw, hardware="h100").code_path == "fused"
    assert pm.predict(kw, layout=dict(h=2), hardware="h100").code_path == "distributed"
    with pytest.raises(ValueError, match="use code path distributed"):
        pm.predict(kw, layout=dict(h=2), hardware="h100", code_path="fused")
    with pytest.raises(ValueError, match="code path must be one of"):
        member_bytes(ModelShape.of(kw), None, "fp32", "compiled")


def test_cli_names_the_code_path(tmp_path, capsys):
    cfg = tmp_path / "ens.yaml"
    cfg.write_text("model: {img_size: [32, 64], patch_size: 4, embed_dim: 64, depth: 2, num_blocks: 8}\n"
                   "ensemble: {members: 2}\nforecast: {lead_time: 6h}\n")
    got = {}
    for path in ("eager", "fused", None):
        argv = ["predict", str(cfg), "--hardware", "this_machine", "--channels", "4", "--layout", "1,1,1,1", "--json"]
        assert cli_main(argv + (["--code-path", path] if path else []), load_case=load_ensemble_case) == 0
        got[path] = json.loads(capsys.readouterr().out)
    assert got[None]["code_path"] == got["fused"]["code_path"] == "fused" and got["eager"]["code_path"] == "eager"
    # the fused forward sums and applies GELU in place: a smaller live set than the published forward's
    assert got["fused"]["memory"]["activations"] < got["eager"]["memory"]["activations"]
    assert cli_main(["predict", str(cfg), "--channels", "4", "--layout", "1,1,1,1", "--code-path", "eager"],
                    load_case=load_ensemble_case) == 0
    out = capsys.readouterr().out
    assert "code path eager (the published AFNONet.forward)" in out and "inference (eager code path)" in out

"""Every benchmark under bench/ runs its real command line at a tiny size, so the README's tables can always be
regenerated: exit status 0 and the table (header, rows, numeric ratios) it prints. Smoke tests, not timings.

The drivers that launch ranks themselves (output, dist_fft, dist_model, pipeline, perfmodel_validation) are run
as the README documents them, ``python bench/X.py``: they start their workers through tools/mpirun.sh.
"""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from int8_support import EXACT_INT8

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
GPU = torch.cuda.is_available()
NUM = r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?"


def bench(script: str, *argv, timeout: float = 120) -> str:
    """Run ``python bench/<script> argv`` from the checkout; return its stdout, failing on a non-zero exit."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    # not a rank of an outer mpirun (when the suite itself runs under one): the bench starts its own
    env = {k: v for k, v in env.items() if not k.startswith(("PMI_", "PMIX_", "MPI_LOCALNRANKS", "HYDRA_"))}
    cmd = [sys.executable, str(BENCH / script), *map(str, argv)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def md_rows(out: str, header: str) -> list[list[str]]:
    """The cells of the markdown table whose header line starts with ``header`` (separator line skipped)."""
    lines = out.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(header))
    assert set(lines[start + 1].replace("|", "")) == {"-"}, lines[start + 1]
    rows = []
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip().strip("|").split("|")])
    return rows


def number(cell: str) -> float:
    """A printed number (bold, 'x' and '%' suffixes allowed); fails on anything else."""
    m = re.fullmatch(rf"\**({NUM})\**x?%?", cell.strip())
    assert m, f"not a number: {cell!r}"
    v = float(m.group(1))
    assert math.isfinite(v)
    return v


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """A synthetic dataset of 16 x 32 points, 6-hourly, 12 samples per year (two days of the out_of_sample year)."""
    from hpc_fcn.data.synth import SynthOptions, generate
    opts = SynthOptions(seed=3, nlat=17, nlon=32, train_years=(2000,), test_years=(2001,),
                        out_of_sample_years=(2002,), steps_per_year=12, spinup_days=0.5, threads=1)
    return generate(tmp_path_factory.mktemp("bench_ds") / "ds", opts, progress=False)


def test_output_netcdf_vs_zarr(tmp_path):
    """bench/output.py through the app's writers (the netCDF path gathers through a Communicator): the README's
    zarr-vs-netCDF table, one netCDF and one zarr row per rank count, with a ratio on the zarr row."""
    out = bench("output.py", "--ranks", 2, "--members", 4, "--channels", 2, "--grid", 16, 32, "--steps", 2,
                "--dir", tmp_path)
    assert "4 members x 2 channels x 16 x 32 float32" in out
    rows = md_rows(out, "| ranks | format | s per output step | MB/s | zarr / netCDF |")
    assert [(r[0], r[1]) for r in rows] == [("2", "netcdf"), ("2", "zarr")]
    for r in rows:
        assert number(r[2]) >= 0 and number(r[3]) >= 0
        if r[1] == "zarr":
            assert r[4].endswith("x") and number(r[4]) > 0
        else:
            assert r[4] == ""
    assert not list(tmp_path.iterdir())  # the bench deletes its files


def scaling_rows(out: str, header: str) -> list[list[str]]:
    """The rows of harness.print_scaling's aligned table (columns split on two or more spaces)."""
    lines = out.splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.split() == header.split())
    return [re.split(r"\s{2,}", ln.strip()) for ln in lines[i + 1:] if ln.strip()]


def test_dist_fft(tmp_path):
    out = bench("dist_fft.py", "--tokens", 8, 16, "--channels", 4, "--reps", 1, "--max-ranks", 2)
    assert "rfft2+irfft2 of 1 x 8 x 16 x 4 fp32, backend mpi" in out
    rows = scaling_rows(out, "ranks   layout  ms/call  speed-up vs 1  comm %  MB sent/rank")
    assert [(r[0], r[1]) for r in rows] == [("1", "h1 x w1"), ("2", "h2 x w1"), ("2", "h1 x w2")]
    assert rows[0][3] == "1.00" and number(rows[0][4]) == 0  # the baseline, which never communicates
    for r in rows[1:]:
        # the 2-rank layouts communicate; their speed-up is printed to 2 decimals, which a loaded machine can
        # round to 0.00 at this tiny size, so only its presence is checked
        assert number(r[2]) > 0 and number(r[3]) >= 0 and number(r[4]) > 0


def test_dist_model(tmp_path):
    out = bench("dist_model.py", "--img", 32, 64, "--embed", 32, "--depth", 1, "--reps", 1, "--max-ranks", 2)
    assert "DistributedAFNONet forward: batch 1, 32 x 64, patch 8, embed 32, depth 1, fp32, backend mpi" in out
    rows = scaling_rows(out, "ranks   layout  ms/step  speed-up vs 1  comm %  MB sent/rank")
    assert [(r[0], r[1]) for r in rows] == [("1", "serial"), ("2", "h2"), ("2", "w2"), ("2", "matmul2")]
    assert rows[0][3] == "1.00" and number(rows[0][4]) == 0
    for r in rows[1:]:
        assert number(r[2]) > 0 and number(r[3]) > 0 and number(r[4]) > 0  # distributed layouts communicate


def inference_rows(out: str) -> dict[str, list[str]]:
    rows = md_rows(out, "| variant | members/pass | member-steps/s | x eager fp32 |")
    return {r[0]: r for r in rows}


def test_inference_cpu():
    """The built-in model's variants on the CPU (torch.compile left out: its compilation takes minutes here)."""
    int8 = ["int8"] if EXACT_INT8 else []  # refused where the int8 product is not exact
    out = bench("inference.py", "--variants", "eager", "eager_batched", "fused_batched", *int8, "--members", 2,
                "--reps", 1, "--threads", 1, "--device", "cpu")
    rows = inference_rows(out)
    assert list(rows) == ["eager", "eager_batched", "fused_batched"] + int8
    assert rows["eager"][1] == "1" and rows["fused_batched"][1] == "2"
    assert rows["eager"][3] == "1.00" and number(rows["eager"][7]) == 0  # the baseline of every ratio
    for r in rows.values():
        assert number(r[2]) > 0 and number(r[3]) > 0
    assert number(rows["fused_batched"][7]) < 1e-4  # the fused path computes the same function
    if int8:
        assert number(rows["int8"][7]) < 0.1


@pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")
def test_inference_gpu():
    out = bench("inference.py", "--variants", "eager", "tf32", "cuda_graphs", "bf16_graphs", "--members", 2,
                "--reps", 1, "--device", "cuda", "--energy-seconds", 0)
    rows = inference_rows(out)
    assert list(rows) == ["eager", "tf32", "cuda_graphs", "bf16_graphs"]
    for r in rows.values():
        assert number(r[2]) > 0 and number(r[3]) > 0
    assert number(rows["cuda_graphs"][7]) < 1e-4


def skill_rows(out: str) -> dict[tuple[str, str], list[float]]:
    rows = md_rows(out, "| variant | lead | RMSE u |")
    return {(r[0], r[1]): [number(c) for c in r[2:]] for r in rows}


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not GPU, reason="needs a CUDA GPU"))])
def test_precision_skill(tiny_dataset, device):
    """On a small synthetic dataset (the built-in checkpoint does not fit its grid: random weights, said so)."""
    variants = ["fp32", "bf16"] + (["int8"] if EXACT_INT8 or device == "cuda" else []) + ["tf32-emulated"] + \
        (["tf32"] if device == "cuda" else [])
    out = bench("precision_skill.py", "--data", tiny_dataset, "--inits", 2, "--days", 1, 2, "--device", device,
                "--variants", *variants)
    assert "RANDOM weights" in out and f"device {device}" in out
    rows = skill_rows(out)
    names = [v if v == "fp32" else f"{v} - fp32" for v in variants]
    assert list(rows) == [(n, f"day {d}") for n in names for d in (1, 2)]
    for d in (1, 2):
        fp32 = rows[("fp32", f"day {d}")]
        assert len(fp32) == 10 and all(v > 0 for v in fp32[:5])  # RMSE of u v z vo d, then ACC
        for n in names[1:]:
            # each variant's difference from fp32, well below the fp32 RMSE itself
            assert all(abs(dv) < 0.5 * v for dv, v in zip(rows[(n, f"day {d}")][:5], fp32[:5]))


def test_pipeline(tmp_path):
    out = bench("pipeline.py", "--ranks", 2, "--members", 2, "--grid", 16, 32, "--channels", 2, "--lead-steps", 2,
                "--steps", 4, "--output-every", 2, "--snapshot-every", 1, "--model-ms", 1, "--dir", tmp_path)
    assert out.startswith("2 ranks, 2 members, 2 x 16 x 32")
    rows = md_rows(out, "| variant | nan_flags |")
    assert [r[0] for r in rows] == ["sync, no resume", "async, no resume", "sync, snapshots", "async, snapshots"]
    for r in rows:
        assert all(number(c) >= 0 for c in r[1:])
        # blocked = every main-thread column + other
        assert number(r[-2]) == pytest.approx(sum(number(c) for c in r[1:-2]), abs=0.06)
    m = re.search(rf"async / sync blocked time: ({NUM}) without resume, ({NUM}) with snapshots", out)
    assert m and float(m.group(1)) > 0 and float(m.group(2)) > 0
    est = md_rows(out, "| run | previous synchronous path |")
    assert [r[0] for r in est] == ["no resume", "resume, snapshots"]
    for r in est:
        assert all(re.fullmatch(rf"\**{NUM} \({NUM}%\)\**", c) for c in r[1:]), r
    assert not list(tmp_path.iterdir())


def test_perfmodel_validation(tmp_path):
    """Two configurations (1 rank and h=2), one pass: predicted vs measured step, memory, charts into tmp."""
    labels = ["S b1 1r", "M b2 h2"]
    out = bench("perfmodel_validation.py", "--configs", *labels, "--passes", 1, "--out", tmp_path / "runs",
                "--plots", tmp_path / "img", timeout=180)
    for label in labels:
        assert re.search(rf"^{label}: {NUM} s$", out, re.M)
        # one row per configuration in both comparisons: ranks, predicted ms, measured ms, error %
        rows = re.findall(rf"^{label}\s+(\d+)\s+({NUM})\s+({NUM})\s+({NUM})$", out, re.M)
        assert len(rows) == 2 and all(float(p) > 0 and float(m) > 0 for _, p, m, _ in rows)
        assert re.search(rf"^{label}\s+{NUM}\s+{NUM}\s+{NUM}$", out, re.M)  # memory: predicted, measured, error
    assert len(re.findall(rf"^step MAPE: {NUM} %$", out, re.M)) == 2
    assert re.search(rf"^memory: mean \|error\| {NUM} %, max {NUM} %$", out, re.M)
    plots = re.findall(r"^wrote (.+)$", out, re.M)
    assert plots and all(Path(p).parent == tmp_path / "img" and Path(p).stat().st_size > 0 for p in plots)
    assert (tmp_path / "runs" / "comparison.json").is_file()


def test_products():
    """Probability products beside mean + spread: one row per part, positive times and ratios to the first row."""
    out = bench("products.py", "--smoke")
    rows = md_rows(out, "| part | s per output step |")
    assert [r[0].split(" (")[0] for r in rows] == ["mean + spread", "probabilities", "quantiles",
                                                   "probabilities + quantiles", "ensemble scores", "product scores"]
    assert number(rows[0][2]) == 1.0 and number(rows[0][4]) == 1.0
    assert all(number(c) >= 0 for r in rows for c in r[1:])


def test_oversubscription(tmp_path):
    """bench/oversubscription.py on the tiny ensemble config: the baseline and the oversubscribed run that yields,
    each through tools/mpirun.sh, with the app's own member-steps/s and the ratio between them."""
    from ensemble_setup import tiny_config, tiny_dataset
    from hpc_fcn.config import dump_yaml
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(dump_yaml(tiny_config(tiny_dataset(tmp_path / "data"), tmp_path / "unused")))
    out = bench("oversubscription.py", "--config", cfg, "--ranks", 2, 3, "--members", 6, "--lead", "1d", "--repeats", 1,
                "--variants", "few-spin", "many-yield")
    rows = md_rows(out, "| ranks | waiting ranks | member-steps/s |")
    assert [(r[0], r[1]) for r in rows] == [("2", "spin"), ("3", "yield")]
    assert rows[0][4] == "1.00x"
    for r in rows:
        assert number(r[2]) > 0 and number(r[3]) == number(r[2]) and number(r[4]) > 0 and number(r[5]) > 0
    m = re.search(rf"^3 ranks / 2 ranks: ({NUM})x yielding", out, re.M)
    assert m and float(m.group(1)) == pytest.approx(number(rows[1][4]), abs=0.01)  # both printed to 2 decimals


def test_scaling():
    """bench/scaling.py --smoke: every variant on 2 ranks (tiny model, one round), interleaved in one mpirun; the
    ratios against the published forward and against one rank, and every variant computes the same step."""
    out = bench("scaling.py", "--smoke")
    rows = {r[0]: r for r in md_rows(out, "| variant | ranks x threads | members/pass |")}
    assert list(rows) == ["published", "default-2t", "default-1t", "h2", "ens2", "w2"]
    assert [rows[v][1] for v in rows] == ["1 x 2", "1 x 2", "1 x 1", "2 x 1", "2 x 1", "2 x 1"]
    assert rows["published"][6] == "1.00x" and rows["default-1t"][7] == "1.00x" and rows["default-2t"][8] == "1.00x"
    for r in rows.values():
        assert number(r[3]) > 0 and number(r[5]) > 0 and all(number(c) > 0 for c in r[6:9])
        # the distributed and fused steps reorder fp32 sums only: well below 1e-5 of the output's largest value
        assert number(r[9]) < 1e-5
    for what in ("default vs published one at a time, 2 threads", "h2 vs 1 rank x 1 thread",
                 "ens2 vs 1 rank x 2 threads"):
        assert re.search(rf"^{what}: {NUM}x$", out, re.M)


def test_inference_memory():
    """bench/inference_memory.py --smoke: one row per code path, each case in its own process, the measured tensor
    peak beside the predicted live set (equal at any size: the profiler counts the bytes member_bytes sums)."""
    out = bench("inference_memory.py", "--smoke", "--threads", 1, timeout=300)  # 3 processes importing torch
    rows = md_rows(out, "| path | patch | tokens |")
    assert [(r[0], r[1], r[2]) for r in rows] == [("eager", "4", "128"), ("fused", "4", "128")]
    for r in rows:
        assert all(number(c) > 0 for c in (r[3], r[4], r[6], r[8]))
        assert number(r[3]) == number(r[4]) and number(r[5]) == 0  # exact, as tests/test_inference_memory.py checks
        assert math.isfinite(number(r[9]))

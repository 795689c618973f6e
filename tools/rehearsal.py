"""Production dress rehearsal: the whole path at 0.25 degrees (721 x 1440, 20 channels, the released backbone's
layout) on this machine, end to end, with one table at the end. Run it through ``bash tools/rehearsal.sh``.

Stages (docs/rehearsal.md says what each checks and why):
  inputs      CDS-style netCDF and GRIB downloads, pressure and single levels, --days of 6-hourly data
  convert     python -m hpc_fcn.data.convert under mpirun (statistics included), 1 week and 2 weeks side by side:
              the peak resident memory per rank must not grow with the period
  checkpoint  a seeded random checkpoint in the released backbone.ckpt layout
  runs        config/era5_production.yaml with CPU overrides on 4 ranks (h2 x w2, netCDF) and 2 ranks (ensemble 2,
              zarr); a run killed after its first snapshot on ensemble 2 and resumed on h2 x w2 equals the
              uninterrupted h2 x w2 run; per phase time and peak memory of every rank beside `perfmodel predict`
  memory      peak inference memory of one member, published eager forward and our fused path, patch 8 and 4,
              beside perfmodel's prediction for each code path (bench/inference_memory.py)
  open        every output opened with xarray, the plots drawn at full size
  speed       the default CPU choice against the published forward one member at a time, and 2 ranks against 1
              (bench/scaling.py)

Exit status 0 when every check passes, 1 when one fails (the table says which); the performance model's
accuracy goals (step time within 25 %, memory within 15 %) are reported as "missed (goal)" and fail the
exit status only with --strict.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
MPIRUN = str(ROOT / "tools" / "mpirun.sh")
CONFIG = str(ROOT / "config" / "era5_production.yaml")
STAGES = ("inputs", "convert", "checkpoint", "runs", "memory", "open", "speed")
START = "2018-01-01"
INIT = "2018-01-03T00"  # the runs' initial time: its 12 h of truth are in the first week
GRID = (721, 1440)  # the inputs (ERA5 rows pole to pole)
MODEL_GRID = (720, 1440)  # the outputs: the model grid drops the south-pole row
GIB = 2 ** 30
STEP_TOLERANCE = 0.25  # the goals: step time within 25 % of perfmodel, memory within 15 %
MEMORY_TOLERANCE = 0.15
LAYOUT_RTOL = 1e-5  # max |a - b| / max |b| of one h2 x w2 step against the serial one (tools/check_production_step.py)


@dataclass
class Row:
    stage: str
    check: str
    measured: str
    goal: str
    ok: bool | None  # None: recorded, no goal
    hard: bool = True  # False: a goal of the performance model's accuracy, reported (exit status only with --strict)


@dataclass
class Rehearsal:
    work: Path
    days: int
    members: int
    patches: tuple = (8, 4)
    rows: list[Row] = field(default_factory=list)
    t0: float = field(default_factory=time.perf_counter)

    # ---- helpers -------------------------------------------------------------------------------------------
    def say(self, msg: str) -> None:
        print(f"[rehearsal {time.perf_counter() - self.t0:7.1f} s] {msg}", flush=True)

    def row(self, stage: str, check: str, measured: str, goal: str = "", ok: bool | None = None,
            hard: bool = True) -> None:
        self.rows.append(Row(stage, check, measured, goal, ok, hard))
        self.say(f"{stage}: {check}: {measured}" + (f" (goal {goal}: {'ok' if ok else 'MISSED'})" if goal else ""))

    def run(self, cmd: list[str], log: str, timeout: float = 1200, env: dict | None = None) -> float:
        """Run ``cmd`` with its output in WORK/logs/LOG; raise with the log's tail when it fails. Returns seconds."""
        path = self.work / "logs" / log
        path.parent.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        with open(path, "w") as f:
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, timeout=timeout,
                                  env=dict(os.environ, **(env or {})))
        if proc.returncode:
            tail = path.read_text().splitlines()[-15:]
            raise RuntimeError(f"{' '.join(cmd[:6])} ... exited {proc.returncode}; {path}:\n" + "\n".join(tail))
        return time.perf_counter() - t

    def mpi(self, n: int, module_args: list[str], memjson: str | None = None) -> list[str]:
        watch = ["-m", "hpc_fcn.memwatch", "--json", memjson] if memjson else []
        return [MPIRUN, "-n", str(n), PY, *watch, "-m", *module_args]

    # ---- stages --------------------------------------------------------------------------------------------
    def inputs(self) -> None:
        out = self.work / "cds"
        sec = self.run([PY, "-m", "hpc_fcn.data.cds_synth", "--output", str(out), "--start", START,
                        "--days", str(self.days), "--grid", f"{GRID[0]}x{GRID[1]}"], "inputs.log")
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        kinds = sorted({p.suffix for p in out.rglob("*") if p.is_file()})
        self.row("inputs", f"CDS-style files, {self.days} days 6-hourly, {GRID[0]} x {GRID[1]}",
                 f"{len(list(out.rglob('*.*')))} files ({', '.join(kinds)}), {size / 1e9:.1f} GB in {sec:.0f} s")

    def convert(self) -> None:
        peaks = {}
        for days in (7, self.days):
            root = self.work / ("era5" if days == self.days else f"era5_{days}d")
            shutil.rmtree(root, ignore_errors=True)
            mem = self.work / "mem" / f"convert_{days}d_{{rank}}.json"
            args = ["hpc_fcn.data.convert", "--input", str(self.work / "cds"), "--output", str(root), "--years", "2018",
                    "--split", "out_of_sample", "--stats-from", "out_of_sample", "--allow-partial",
                    "--max-steps", str(days * 4)]
            sec = self.run(self.mpi(2, args, str(mem)), f"convert_{days}d.log")
            ranks = [json.loads((self.work / "mem" / f"convert_{days}d_{r}.json").read_text()) for r in range(2)]
            peaks[days] = [r["peak_rss_bytes"] for r in ranks]
            self.row("convert", f"{days} days on 2 ranks (statistics included)",
                     f"{sec:.0f} s, peak RSS per rank " + " / ".join(f"{p / GIB:.2f}" for p in peaks[days]) + " GiB")
        short, long_ = max(peaks[7]), max(peaks[self.days])
        growth = long_ / short - 1
        self.row("convert", f"peak RSS, {self.days} days vs 7 days", f"{growth:+.1%}", "no growth (within 5 %)",
                 growth <= 0.05)
        if self.days > 7:
            shutil.rmtree(self.work / "era5_7d", ignore_errors=True)

    def checkpoint(self) -> None:
        import torch
        from hpc_fcn.model import AFNONet
        from hpc_fcn.model.checkpoint import save_checkpoint
        torch.manual_seed(2018)
        net = AFNONet(img_size=(720, 1440), patch_size=8, in_chans=20, out_chans=20, embed_dim=768, depth=12)
        path = self.work / "backbone.ckpt"
        save_checkpoint(path, net.state_dict())  # a plain state dict: the released layout, no model_config
        ck = torch.load(path, map_location="cpu", weights_only=True)
        n = sum(v.numel() for v in ck["model_state"].values())
        self.row("checkpoint", "released backbone.ckpt layout (module.-prefixed model_state, seeded random weights)",
                 f"{n:,} parameters, {path.stat().st_size / 1e6:.0f} MB, keys {sorted(ck)}")

    # ---- the ensemble runs ---------------------------------------------------------------------------------
    def overrides(self, outdir: Path, layout: dict, fmt: str, extra: tuple = ()) -> list[str]:
        return [f"model.checkpoint={self.work / 'backbone.ckpt'}", f"data.root={self.work / 'era5'}",
                "inference.device=cpu", "inference.precision=fp32", "inference.cuda_graphs=false",
                "parallel.backend=mpi", f"parallel.h={layout['h']}", f"parallel.w={layout['w']}",
                f"initial_conditions.start={INIT}", "initial_conditions.count=1", f"ensemble.members={self.members}",
                "forecast.lead_time=12h", "forecast.output_every=1", "output.members=true", f"output.format={fmt}",
                f"output.dir={outdir}", "scoring.table_leads=[6h,12h]", "progress=false", "resume=true", *extra]

    def ensemble(self, name: str, ranks: int, layout: dict, fmt: str, extra: tuple = ()) -> dict:
        outdir = self.work / "runs" / name
        sec = self.run(self.mpi(ranks, ["hpc_fcn.ensemble", CONFIG, *self.overrides(outdir, layout, fmt, extra)]),
                       f"run_{name}.log")
        timings = json.loads((outdir / "timings.json").read_text())
        return dict(name=name, ranks=ranks, layout=layout, fmt=fmt, seconds=sec, outdir=outdir, timings=timings)

    def killed_and_resumed(self, first: tuple, second: tuple) -> Path:
        """A run on layout ``first`` (ranks, layout) SIGKILLed once its first snapshot is complete, then resumed
        on ``second``; returns its folder."""
        outdir = self.work / "runs" / "resumed"
        shutil.rmtree(outdir, ignore_errors=True)
        extra = ("forecast.snapshot_every=1",)
        cmd = self.mpi(first[0], ["hpc_fcn.ensemble", CONFIG, *self.overrides(outdir, first[1], "netcdf", extra)])
        log = open(self.work / "logs" / "run_killed.log", "w")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        marker = outdir / ".resume" / "progress.json"
        deadline = time.monotonic() + 1200
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if json.loads(marker.read_text()).get("step", -1) >= 1:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        if proc.poll() is not None:
            raise RuntimeError(f"the run to kill ended (exit {proc.returncode}) before its first snapshot")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        log.close()
        self.say(f"killed the {first[0]}-rank run after its first snapshot (step 1)")
        self.run(self.mpi(second[0], ["hpc_fcn.ensemble", CONFIG,
                                      *self.overrides(outdir, second[1], "netcdf", extra)]), "run_resumed.log")
        return outdir

    def runs(self) -> None:
        h2w2, e2 = dict(h=2, w=2), dict(h=1, w=1)
        done = [self.ensemble("h2w2_netcdf", 4, h2w2, "netcdf"), self.ensemble("e2_zarr", 2, e2, "zarr")]
        for r in done:
            self.row("runs", f"{r['ranks']} ranks {'h2 x w2' if r['layout']['h'] > 1 else 'ensemble 2'}, "
                     f"{self.members} members x 2 steps, {r['fmt']}", f"{r['seconds']:.0f} s, members written")
        resumed = self.killed_and_resumed((2, e2), (4, h2w2))
        err = max_rel_difference(resumed, done[0]["outdir"])
        between = max_rel_difference(done[1]["outdir"], done[0]["outdir"])
        self.row("runs", "killed on ensemble 2 after its first snapshot, resumed on h2 x w2, vs uninterrupted h2 x w2",
                 f"max rel. difference {err:.1e} (the two layouts uninterrupted: {between:.1e})",
                 f"<= {LAYOUT_RTOL:g}", err <= LAYOUT_RTOL)
        for r in done:
            self.phases(r)

    def phases(self, r: dict) -> None:
        """Per phase seconds and peak memory of every rank, beside perfmodel's step time and memory."""
        from perfmodel.predict import predict
        per_rank = r["timings"]["ranks"]
        lay = dict(ensemble=r["ranks"] // (r["layout"]["h"] * r["layout"]["w"]), matmul=1, **r["layout"])
        pred = predict(dict(img_size=(720, 1440), patch_size=8, in_chans=20, out_chans=20, embed_dim=768, depth=12),
                       layout=lay, hardware=str(ROOT / "perfmodel" / "hardware" / "this_machine.yaml"),
                       members=self.members, members_per_pass=0, precision="fp32", lead_steps=2)
        label = f"{r['ranks']} ranks {'h2 x w2' if r['layout']['h'] > 1 else 'ensemble 2'}"
        for rank, t in enumerate(per_rank):
            ph = t["phases"]
            cells = ", ".join(f"{k} {ph['seconds'][k]:.1f} s {ph['peak_bytes'][k] / GIB:.2f} GiB"
                              for k in ("startup", "checkpoint", "read", "perturb", "step", "output", "scoring")
                              if k in ph["seconds"])
            self.row("phases", f"{label}, rank {rank}", cells)
        steps = 2
        measured_step = max(t["phases"]["seconds"].get("step", 0.0) for t in per_rank) / steps
        predicted_step = pred.step_time_s * pred.passes
        e = predicted_step / measured_step - 1  # the prediction's error, as bench/inference_memory.py states it
        self.row("phases", f"{label}: step time (slowest rank)", f"{measured_step:.1f} s, perfmodel {predicted_step:.1f} s "
                 f"(error {e:+.0%})", f"within {STEP_TOLERANCE:.0%}", abs(e) <= STEP_TOLERANCE, hard=False)
        measured_mem = max(max(t["phases"]["peak_bytes"].values()) for t in per_rank)
        predicted_mem = pred.memory_bytes
        e = predicted_mem / measured_mem - 1
        self.row("phases", f"{label}: peak memory per rank (largest)", f"{measured_mem / GIB:.2f} GiB, perfmodel "
                 f"{predicted_mem / GIB:.2f} GiB (error {e:+.0%})", f"within {MEMORY_TOLERANCE:.0%}",
                 abs(e) <= MEMORY_TOLERANCE, hard=False)

    # ---- memory, outputs, speed ----------------------------------------------------------------------------
    def memory(self) -> None:
        out = self.work / "inference_memory.json"
        sec = self.run([PY, str(ROOT / "bench" / "inference_memory.py"), "--patches", *map(str, self.patches),
                        "--no-tensor-peak", "--json", str(out)], "inference_memory.log", timeout=3000)
        for case in json.loads(out.read_text())["cases"]:
            e = case["error"]
            self.row("memory", f"one member, {case['path']} path, patch {case['patch']} ({case['tokens']} tokens)",
                     f"{case['measured_bytes'] / GIB:.2f} GiB, perfmodel ({case['path']}) "
                     f"{case['predicted_bytes'] / GIB:.2f} GiB (error {e:+.0%})", f"within {MEMORY_TOLERANCE:.0%}",
                     abs(e) <= MEMORY_TOLERANCE, hard=False)
        self.say(f"memory stage took {sec:.0f} s")

    def open(self) -> None:
        import xarray as xr
        opened, t = 0, time.perf_counter()
        for path in sorted((self.work / "runs").glob("*/forecast_*")):
            ds = xr.open_zarr(path) if path.suffix == ".zarr" else xr.open_dataset(path)
            with ds:
                for name, var in ds.data_vars.items():
                    if var.ndim >= 2:
                        values = var.isel({d: -1 for d in var.dims[:-2]}).values
                        if values.shape[-2:] != MODEL_GRID or not (values == values).all():
                            raise RuntimeError(f"{path}: {name} has shape {values.shape} or NaNs")
            opened += 1
        self.row("open", "every output opened with xarray, last lead of each variable read (720 x 1440, finite)",
                 f"{opened} files/stores in {time.perf_counter() - t:.0f} s")
        for name in ("h2w2_netcdf", "e2_zarr"):
            run_dir = self.work / "runs" / name
            sec = self.run([PY, "-m", "hpc_fcn.plot", str(run_dir)], f"plot_{name}.log")
            pngs = sorted((run_dir / "plots").glob("*.png"))
            self.row("open", f"plots of {name} at {MODEL_GRID[0]} x {MODEL_GRID[1]}", f"{len(pngs)} PNGs in {sec:.0f} s")

    def speed(self) -> None:
        out = self.work / "scaling.json"
        # 3 rounds: one round's noise on a shared machine is up to 20 % (the default's margin over the published
        # forward was about 1.1x, and two rounds measured 0.98x and 1.11x, before the fused path's channels-last sums)
        sec = self.run([PY, str(ROOT / "bench" / "scaling.py"), "--repeats", "3", "--json", str(out)], "scaling.log")
        rate = {r["variant"]: r["member_steps_per_s"] for r in json.loads(out.read_text())}
        checks = [("default CPU choice (pass size included) vs the published forward one member at a time, 2 threads",
                   rate["default-2t"] / rate["published"], 1.0),
                  ("2 ranks h2 vs 1 rank, 1 thread per rank", rate["h2"] / rate["default-1t"], 1.6),
                  ("2 ranks ensemble 2 vs 1 rank, 1 thread per rank", rate["ens2"] / rate["default-1t"], 1.6)]
        for what, ratio, goal in checks:
            self.row("speed", what, f"{ratio:.2f}x", f">= {goal:g}x", ratio >= goal)
        for v in ("h2", "ens2"):  # the same two ranks against one rank that uses both cores through threads
            self.row("speed", f"2 ranks {v} vs 1 rank with 2 threads", f"{rate[v] / rate['default-2t']:.2f}x")
        self.say(f"speed stage took {sec:.0f} s")

    # ---- the table -----------------------------------------------------------------------------------------
    def table(self) -> str:
        lines = [f"Production rehearsal at {GRID[0]} x {GRID[1]}, 20 channels, patch 8, embed 768, depth 12: "
                 f"{time.perf_counter() - self.t0:.0f} s in all", "",
                 "| stage | check | measured | goal | verdict |", "|---|---|---|---|---|"]
        for r in self.rows:
            verdict = "" if r.ok is None else ("ok" if r.ok else "MISSED" if r.hard else "missed (goal)")
            lines.append(f"| {r.stage} | {r.check} | {r.measured} | {r.goal} | {verdict} |")
        return "\n".join(lines)


def max_rel_difference(a: Path, b: Path) -> float:
    """max |a - b| / max |b| over the members files of two run folders (netCDF or zarr), every variable and lead."""
    import numpy as np
    import xarray as xr

    def members(folder: Path):
        path = next(p for p in sorted(folder.glob("forecast_*_members*")))
        return xr.open_zarr(path) if path.suffix == ".zarr" else xr.open_dataset(path)
    worst = 0.0
    with members(a) as da, members(b) as db:
        for name, var in db.data_vars.items():
            if var.ndim < 3:
                continue
            x, y = np.asarray(da[name].values, dtype=np.float64), np.asarray(var.values, dtype=np.float64)
            worst = max(worst, float(np.abs(x - y).max() / max(np.abs(y).max(), 1e-30)))
    return worst


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bash tools/rehearsal.sh", description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default=str(ROOT / "runs" / "rehearsal"), help="data, runs and logs (about 15 GB)")
    p.add_argument("--days", type=int, default=14, help="days of 6-hourly input data (at least 8)")
    p.add_argument("--members", type=int, default=2)
    p.add_argument("--patches", type=int, nargs="+", default=[8, 4],
                   help="patch sizes of the memory stage (patch 4, a 4x token grid, takes about 2 minutes on 2 cores)")
    p.add_argument("--only", nargs="+", choices=STAGES, help="run only these stages (the others' files must exist)")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 also when a prediction misses its goal (step time 25 %%, memory 15 %%)")
    p.add_argument("--keep", action="store_true", help="keep the inputs and converted data (else removed at the end)")
    a = p.parse_args(argv)
    if a.days < 8:
        p.error("--days must be at least 8: the converter's memory is compared between 1 week and --days")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    work = Path(a.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    r = Rehearsal(work, a.days, a.members, tuple(a.patches))
    failed = None
    for stage in a.only or STAGES:
        r.say(f"stage {stage}")
        try:
            getattr(r, stage)()
        except Exception as exc:  # noqa: BLE001 - the table says which stage broke, and how
            r.row(stage, "stage completed", f"failed: {exc}", "completes", False)
            failed = failed or stage
            if stage in ("inputs", "convert", "checkpoint", "runs"):
                break  # the later stages need these
    text = r.table()
    (work / "rehearsal.md").write_text(text + "\n")
    print("\n" + text, flush=True)
    if not a.keep:
        for d in ("cds", "era5"):
            shutil.rmtree(work / d, ignore_errors=True)
    failed_rows = [row for row in r.rows if row.ok is False and (row.hard or a.strict)]
    return 0 if not failed_rows else 1


if __name__ == "__main__":
    sys.exit(main())

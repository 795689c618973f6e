"""Predicted vs measured, region by region, from trace summaries (``hpc_fcn.tracing.write_traces``).

A summary's ``meta`` says what ran: ``model_kwargs``, ``layout``, ``members_per_pass``, ``precision``,
``passes`` (forward passes traced) and optionally ``measured_fastest`` (per-region seconds of the fastest pass), ``group`` (configs of one strong-scaling series) and
``peak_rss_bytes``/``peak_tensor_bytes`` (measured memory), and ``joules_per_member_step`` (NVML; else it
is read from the ``timings.json`` of the ensemble run whose ``traces/`` holds the summary). Measured region
time is the busiest rank's total divided by ``passes``; the whole pass is the ``step`` region.
"""
from __future__ import annotations

import json
from pathlib import Path

from .hardware import load_hardware
from .predict import Prediction, predict

REGIONS = ("patch_embed", "norm1", "filter", "norm2", "mlp", "head")
OUTSIDE_HOOKS = {"head"}  # collectives issued after the region's module returned (the head's all-reduce)


def measured_energy(path: Path, meta: dict) -> float | None:
    """Measured joules per member-step: the summary's own, else its ensemble run's ``timings.json``."""
    if meta.get("joules_per_member_step") is not None:
        return float(meta["joules_per_member_step"])
    timings = path.resolve().parent.parent / "timings.json"
    if timings.is_file():
        value = (json.loads(timings.read_text()).get("energy") or {}).get("joules_per_member_step")
        return None if value is None else float(value)
    return None


def load_summary(path: str | Path) -> dict:
    data = json.loads(Path(path).read_text())
    if "regions" not in data or "meta" not in data:
        raise ValueError(f"{path}: not a summary written by hpc_fcn.tracing.write_traces")
    for key in ("model_kwargs", "layout", "passes"):
        if key not in data["meta"]:
            raise ValueError(f"{path}: meta has no '{key}' (write_traces(..., meta=...) must record it)")
    data["energy_measured"] = measured_energy(Path(path), data["meta"])
    return data


def measured(summary: dict) -> dict[str, float]:
    """Seconds per pass per canonical region (busiest rank), plus 'step'; ``meta.measured_fastest``
    (the fastest pass, see bench/perfmodel_validation.py) when the run recorded it."""
    if summary["meta"].get("measured_fastest"):
        return dict(summary["meta"]["measured_fastest"])
    passes = summary["meta"]["passes"]
    out: dict[str, float] = {}
    for name, r in summary["regions"].items():
        kind = r["kind"]
        if r["category"] == "comm":
            if kind not in OUTSIDE_HOOKS:
                continue
        elif kind not in REGIONS and kind != "step":
            continue
        out[kind] = out.get(kind, 0.0) + r["seconds_max"] / passes
    return out


def run_hardware(summary: dict, hardware):
    """``hardware`` = 'run': the hardware the run measured alongside itself (meta.hardware)."""
    if hardware == "run":
        if "hardware" not in summary["meta"]:
            raise ValueError("--hardware run needs summaries whose meta holds the run's own calibration")
        from .hardware import hardware_from_dict
        return hardware_from_dict(summary["meta"]["hardware"], "run")
    return hardware


def predicted(summary: dict, hardware) -> Prediction:
    m = summary["meta"]
    hardware = run_hardware(summary, hardware)
    serial = all(m["layout"].get(k, 1) == 1 for k in ("h", "w", "matmul"))  # the traced runs step AFNONet itself
    return predict(m["model_kwargs"], layout=m["layout"], hardware=hardware, members=m.get("members_per_pass", 1),
                   members_per_pass=m.get("members_per_pass", 1), precision=m.get("precision", "fp32"),
                   ranks_per_node=m.get("ranks_per_node"), code_path="eager" if serial else None)


def pass_tensor_bytes(pred: Prediction) -> float:
    """What a traced run measures of memory: weights, input/output and the live set of one pass. The member states
    an ensemble run holds between passes (``held``) are not in a traced run."""
    m = pred.memory_inference
    return m.tensors - m.held


def _energy_pred(pred: Prediction, hardware, summary: dict) -> float | None:
    """Predicted joules per member-step (None when the hardware file has no power figures)."""
    from .energy import predict_energy
    e = predict_energy(pred, run_hardware(summary, hardware))
    return e.joules_per_member_step if e else None


def compare(summaries: list[dict], hardware) -> dict:
    """Rows per config and region with predicted and measured seconds, and MAPEs."""
    hw = load_hardware(run_hardware(summaries[0], hardware))
    rows, step_err, region_err = [], [], {r: [] for r in REGIONS}
    for s in summaries:
        meas = measured(s)
        pred = predicted(s, hardware if hardware == "run" else hw)
        regs = {k: v.time_s for k, v in pred.regions.items()}
        row = {"label": s["meta"].get("label", ""), "ranks": s["ranks"], "layout": pred.layout,
               "members_per_pass": pred.members_per_pass, "step_pred": pred.step_time_s,
               "step_meas": meas.get("step"), "regions": {}, "memory_pred": pass_tensor_bytes(pred),
               "memory_meas": s["meta"].get("peak_tensor_bytes"), "group": s["meta"].get("group", ""),
               "flops": {k: v.flops for k, v in pred.regions.items()}, "bytes": {k: v.bytes for k, v in pred.regions.items()},
               "bound": {k: v.bound for k, v in pred.regions.items()},
               "energy_pred": _energy_pred(pred, hardware if hardware == "run" else hw, s),
               "energy_meas": s.get("energy_measured")}
        for r in REGIONS:
            if r in meas and r in regs:
                row["regions"][r] = (regs[r], meas[r])
                region_err[r].append(abs(regs[r] - meas[r]) / meas[r])
        if row["step_meas"]:
            step_err.append(abs(row["step_pred"] - row["step_meas"]) / row["step_meas"])
        rows.append(row)
    mape = lambda e: 100.0 * sum(e) / len(e) if e else float("nan")  # noqa: E731
    clocks = {s["meta"].get("clock", "wall") for s in summaries}
    return {"hardware": "per-run calibration" if hardware == "run" else hw.name, "rows": rows, "clock": "/".join(sorted(clocks)), "step_mape": mape(step_err),
            "region_mape": {r: mape(e) for r, e in region_err.items() if e}}


def print_report(res: dict) -> None:
    print(f"predicted vs measured on {res['hardware']} (seconds per forward pass, busiest rank)")
    print(f"{'config':<34}{'ranks':>6}{'pred ms':>10}{'meas ms':>10}{'err %':>8}")
    for r in res["rows"]:
        err = 100 * (r["step_pred"] - r["step_meas"]) / r["step_meas"] if r["step_meas"] else float("nan")
        print(f"{r['label'][:33]:<34}{r['ranks']:>6}{r['step_pred'] * 1e3:>10.2f}{(r['step_meas'] or 0) * 1e3:>10.2f}{err:>8.1f}")
    print(f"step MAPE: {res['step_mape']:.1f} %")
    energy = [r for r in res["rows"] if r.get("energy_pred") is not None or r.get("energy_meas") is not None]
    if energy:
        print(f"{'energy per member-step':<34}{'':>6}{'pred J':>10}{'meas J':>10}{'err %':>8}")
        for r in energy:
            p, m = r.get("energy_pred"), r.get("energy_meas")
            err = 100 * (p - m) / m if (p is not None and m) else float("nan")
            fmt = lambda v: f"{v:>10.3f}" if v is not None else f"{'n/a':>10}"  # noqa: E731
            print(f"{r['label'][:33]:<34}{r['ranks']:>6}{fmt(p)}{fmt(m)}{err:>8.1f}")
    print("region MAPE: " + ", ".join(f"{k} {v:.1f} %" for k, v in res["region_mape"].items()))


def plots(res: dict, hardware, outdir: str | Path, roof_hardware=None) -> list[Path]:
    """roofline.png, predicted_vs_measured.png, strong_scaling.png under ``outdir``
    (``roof_hardware``: the roofs to draw when ``hardware`` is 'run')."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    hw = load_hardware(roof_hardware if hardware == "run" else hardware)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = []
    # roofline: achieved FLOP/s (predicted FLOPs / measured time) against arithmetic intensity
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=90)
    ai = [10 ** (x / 10) for x in range(-20, 41)]
    for prec in ("fp32", "bf16"):
        if prec in hw.peak_flops:
            ax.plot(ai, [min(hw.peak_flops[prec], a * hw.mem_bandwidth_Bps) for a in ai], label=f"roof {prec}")
    markers = dict(zip(REGIONS, "osD^vP"))
    for reg in REGIONS:
        xs, ys = [], []
        for r in res["rows"]:
            if reg in r["regions"] and r["bytes"].get(reg):
                xs.append(r["flops"][reg] / r["bytes"][reg])
                ys.append(r["flops"][reg] / r["regions"][reg][1])
        if xs:
            ax.scatter(xs, ys, marker=markers[reg], label=reg, s=18)
    ax.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOP/byte, model)",
           ylabel="achieved FLOP/s (model FLOPs / measured s)", title=f"Roofline: {hw.name}")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    paths.append(outdir / "roofline.png")
    fig.savefig(paths[-1])
    plt.close(fig)
    # predicted vs measured
    fig, ax = plt.subplots(figsize=(5, 4.5), dpi=90)
    pts = [(r["step_meas"], r["step_pred"]) for r in res["rows"] if r["step_meas"]]
    rp = [v for r in res["rows"] for v in r["regions"].values()]
    if rp:
        ax.scatter([m for _, m in rp], [p for p, _ in rp], s=10, alpha=0.5, label="regions")
    ax.scatter([m for m, _ in pts], [p for _, p in pts], s=30, color="k", label="whole pass")
    allv = [v for pair in pts for v in pair] + [v for pair in rp for v in pair]
    lo, hi = min(allv) / 1.5, max(allv) * 1.5
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.plot([lo, hi], [lo * 1.15, hi * 1.15], ":", color="grey", lw=0.8)
    ax.plot([lo, hi], [lo / 1.15, hi / 1.15], ":", color="grey", lw=0.8)
    ax.set(xscale="log", yscale="log", xlabel="measured s", ylabel="predicted s",
           title=f"step MAPE {res['step_mape']:.1f} %")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(outdir / "predicted_vs_measured.png")
    fig.savefig(paths[-1])
    plt.close(fig)
    # strong scaling: step time against ranks, per group
    groups: dict[str, list] = {}
    for r in res["rows"]:
        if r["group"]:
            groups.setdefault(r["group"], []).append(r)
    if groups:
        fig, ax = plt.subplots(figsize=(5.5, 4.2), dpi=90)
        for g, rows in groups.items():
            rows = sorted(rows, key=lambda r: r["ranks"])
            line = ax.plot([r["ranks"] for r in rows], [r["step_meas"] for r in rows], "o-", label=f"{g} measured")
            ax.plot([r["ranks"] for r in rows], [r["step_pred"] for r in rows], "x--", color=line[0].get_color(),
                    label=f"{g} predicted")
        ax.set(xlabel="ranks (one model decomposed)", ylabel=f"{res.get('clock', 'wall')} s per forward pass (busiest rank)",
               yscale="log", xscale="log", title="Strong scaling")
        ax.set_xticks(sorted({r["ranks"] for r in res["rows"]}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.get_xaxis().set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(outdir / "strong_scaling.png")
        fig.savefig(paths[-1])
        plt.close(fig)
    return paths


def compare_main(paths: list[str], hardware: str, plot_dir: str | None) -> int:
    summaries = [load_summary(p) for p in paths]
    res = compare(summaries, hardware)
    print_report(res)
    if plot_dir:
        roof = run_hardware(summaries[0], hardware) if hardware == "run" else None
        for p in plots(res, hardware, plot_dir, roof):
            print(f"wrote {p}")
    return 0

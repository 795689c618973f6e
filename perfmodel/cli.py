"""``python -m perfmodel predict|suggest|calibrate|compare``: the performance model from the shell."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .hardware import load_hardware
from hpc_fcn.parallel.layout import Layout

from .predict import Prediction, predict, suggest


def _gb(x: float) -> str:
    return f"{x / 1e9:.2f} GB"


def channels_of(cfg, override: int | None) -> int:
    """Model channels: --channels, else data.channels, else the dataset's metadata, else 20 for 0.25 deg."""
    if override:
        return override
    if cfg.data.channels:
        return len(cfg.data.channels)
    root = cfg.data.root
    if root == "builtin":
        try:
            from hpc_fcn.data.builtin import builtin_root
            root = str(builtin_root())
        except Exception:  # noqa: BLE001 - no built-in data on this install
            root = None
    if root:
        meta = Path(root) / "metadata.json"
        if meta.is_file():
            return len(json.loads(meta.read_text())["channels"])
    if tuple(cfg.model.img_size) == (720, 1440):
        return 20
    raise SystemExit("error: cannot tell the channel count: set data.channels, generate the dataset, or pass --channels N")


def load_case(path: str, overrides: list[str], channels: int | None):
    """(model kwargs, config) of an ensemble YAML with overrides."""
    from hpc_fcn.config import load_config
    from hpc_fcn.ensemble.config import EnsembleConfig, parse_lead
    cfg = load_config(EnsembleConfig, path, overrides)
    n = channels_of(cfg, channels)
    return cfg.model.kwargs(n, n), cfg, parse_lead(cfg.forecast.lead_time, 6, "forecast.lead_time")


def _layout_from(cfg, ranks: int | None, layout: str | None) -> tuple[dict | None, int]:
    if layout:
        lay = Layout.of(layout)
        return lay.as_dict(), lay.ranks
    p = cfg.parallel
    model = p.h * p.w * p.matmul
    if ranks is None:
        ranks = model * (p.ensemble if p.ensemble != "auto" else 1)
    if p.layout == "auto":
        return None, ranks
    if ranks % model:
        raise SystemExit(f"error: h x w x matmul = {model} does not divide {ranks} ranks")
    e = ranks // model if p.ensemble == "auto" else p.ensemble
    return dict(ensemble=e, h=p.h, w=p.w, matmul=p.matmul), ranks


def print_prediction(pred: Prediction, out=None, hardware=None) -> None:
    out = out or sys.stdout
    lay = pred.layout
    print(f"hardware {pred.hardware}, layout ensemble={lay['ensemble']} h={lay['h']} w={lay['w']} "
          f"matmul={lay['matmul']}, precision {pred.precision}, {pred.members_per_pass} member(s) per pass"
          + (" (training)" if pred.training else ""), file=out)
    print(f"{'region':<15}{'GFLOP':>11}{'GB moved':>11}{'comm MB':>10}{'AI':>8}{'time ms':>11}  bound", file=out)
    for r in pred.table():
        ai = f"{r['intensity']:.1f}" if r["intensity"] != float("inf") else "-"
        print(f"{r['region']:<15}{r['flops'] / 1e9:>11.2f}{r['bytes'] / 1e9:>11.3f}{r['comm_bytes'] / 1e6:>10.2f}"
              f"{ai:>8}{r['time_s'] * 1e3:>11.3f}  {r['bound']}", file=out)
    print(f"{'step':<15}{pred.flops / 1e9:>11.2f}{'':>29}{pred.step_time_s * 1e3:>11.3f}", file=out)
    for name, mem in (("inference", pred.memory_inference), ("training", pred.memory_training)):
        d = mem.as_dict()
        print(f"memory per rank, {name}: {_gb(d['total'])} (weights {_gb(d['weights'])}, activations "
              f"{_gb(d['activations'])}, optimizer {_gb(d['optimizer'])}, autocast weights {_gb(d['weight_copies'])}, "
              f"io {_gb(d['io'])}, runtime {_gb(d['runtime'])})", file=out)
    print(f"time to solution: {pred.passes} pass(es) x {pred.lead_steps} step(s) x {pred.step_time_s * 1e3:.3f} ms = "
          f"{pred.time_to_solution_s:.3f} s for {pred.members} member(s)", file=out)
    energy = _energy(pred, hardware)
    if energy is not None:
        print(f"energy: {energy.joules_per_member_step:.2f} J per member-step ({energy.joules_per_pass:.2f} J per pass "
              f"at {energy.mean_watts:.0f} W per GPU; power figures from the hardware file)", file=out)
    for n in pred.notes:
        print(f"note: {n}", file=out)


def _energy(pred: Prediction, hardware=None):
    from .energy import predict_energy
    try:
        return predict_energy(pred, hardware or pred.hardware)
    except ValueError:  # a hardware file given by path that is not at hand by name
        return None


def _auto_batch(kw, layout, hw, members, precision, lead, training):
    """members_per_pass = 0: the batch with the lowest time to solution that fits in memory."""
    best = None
    b = 1
    local = -(-members // layout["ensemble"])
    while True:
        p = predict(kw, layout=layout, hardware=hw, members=members, members_per_pass=b, precision=precision,
                    lead_steps=lead, training=training)
        if p.memory_bytes <= hw.mem_capacity_bytes and (best is None or p.time_to_solution_s < best.time_to_solution_s):
            best = p
        if b >= local:
            break
        b = min(2 * b, local)
    return best or p


def cmd_predict(a) -> int:
    kw, cfg, lead = load_case(a.config, a.overrides, a.channels)
    hw = load_hardware(a.hardware)
    layout, ranks = _layout_from(cfg, a.ranks, a.layout)
    mpp = cfg.inference.members_per_pass
    pred = None
    if layout is None:
        layout, pred = suggest(kw, ranks=ranks, hardware=hw, members=cfg.ensemble.members,
                               members_per_pass=max(mpp, 1), precision=cfg.inference.precision, lead_steps=lead,
                               training=a.training)
        print(f"parallel.layout=auto: the model suggests {layout}")
    if mpp == 0:
        pred = _auto_batch(kw, layout, hw, cfg.ensemble.members, cfg.inference.precision, lead, a.training)
    elif pred is None:  # suggest() already predicted the layout it picked
        pred = predict(kw, layout=layout, hardware=hw, members=cfg.ensemble.members, members_per_pass=mpp,
                       precision=cfg.inference.precision, lead_steps=lead, training=a.training)
    if a.json:
        energy = _energy(pred, hw)
        print(json.dumps(dict(pred.as_dict(), energy=energy.as_dict() if energy else None), indent=1))
    else:
        print_prediction(pred, hardware=hw)
    return 0


def cmd_suggest(a) -> int:
    kw, cfg, lead = load_case(a.config, a.overrides, a.channels)
    layout, pred = suggest(kw, ranks=a.ranks, hardware=a.hardware, members=cfg.ensemble.members,
                           members_per_pass=max(cfg.inference.members_per_pass, 1),
                           precision=cfg.inference.precision, lead_steps=lead)
    print(f"suggested layout for {a.ranks} ranks: parallel.ensemble={layout['ensemble']} parallel.h={layout['h']} "
          f"parallel.w={layout['w']} parallel.matmul={layout['matmul']}")
    print_prediction(pred)
    return 0


def cmd_calibrate(a) -> int:
    from .calibrate import main as calibrate_main
    ranks = tuple(int(r) for r in a.mpi_ranks.split(",")) if a.mpi_ranks else ()
    calibrate_main(a.out, a.threads, ranks)
    return 0


def cmd_compare(a) -> int:
    from .compare import compare_main
    return compare_main(a.summaries, a.hardware, a.plots)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m perfmodel", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("predict", help="per-region FLOPs, bytes, messages, time, bound; memory; time to solution")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    p.add_argument("--hardware", default="h100")
    p.add_argument("--ranks", type=int)
    p.add_argument("--layout", help="e,h,w,m")
    p.add_argument("--channels", type=int)
    p.add_argument("--training", action="store_true", help="a training step instead of inference")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_predict)
    s = sub.add_parser("suggest", help="the fastest layout of N ranks that fits in memory")
    s.add_argument("config")
    s.add_argument("overrides", nargs="*")
    s.add_argument("--ranks", type=int, required=True)
    s.add_argument("--hardware", default="h100")
    s.add_argument("--channels", type=int)
    s.set_defaults(fn=cmd_suggest)
    c = sub.add_parser("calibrate", help="measure this machine and write a hardware YAML")
    c.add_argument("--out", help="default: perfmodel/hardware/this_machine.yaml")
    c.add_argument("--threads", type=int, default=1, help="torch threads per rank (1 = as under mpirun)")
    c.add_argument("--mpi-ranks", default="2,4", help="rank counts of the MPI sub-runs ('' = none)")
    c.set_defaults(fn=cmd_calibrate)
    m = sub.add_parser("compare", help="predicted vs measured per region from trace summaries; charts")
    m.add_argument("summaries", nargs="+", help="summary.json files written by hpc_fcn.tracing.write_traces")
    m.add_argument("--hardware", default="this_machine",
                   help="a hardware name or file, or 'run': each summary's own calibration (meta.hardware)")
    m.add_argument("--plots", default="docs/img", help="directory for the PNG charts ('' = none)")
    m.set_defaults(fn=cmd_compare)
    a, extra = ap.parse_known_args(argv)
    bad = [x for x in extra if "=" not in x or x.startswith("-")]
    if bad or (extra and not hasattr(a, "overrides")):
        ap.error(f"unrecognized arguments: {' '.join(bad or extra)}")
    if extra:  # key=value overrides given after the options
        a.overrides = list(a.overrides) + extra
    try:
        return a.fn(a)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

"""``python -m perfmodel predict|suggest|calibrate|compare``: the performance model from the shell."""
from __future__ import annotations

import argparse
import json
import sys

from .hardware import load_hardware
from hpc_fcn.parallel.layout import Layout

from .predict import Prediction, predict, suggest


CODE_PATH_NAMES = {"fused": "hpc_fcn.accel.FusedAFNONet, what the app runs for a serial model",
                   "eager": "the published AFNONet.forward",
                   "distributed": "DistributedAFNONet, what the app runs when h, w or matmul > 1"}


def _gb(x: float) -> str:
    return f"{x / 1e9:.2f} GB"


def _layout_from(p, ranks: int | None, layout: str | None) -> tuple[dict | None, int]:
    """The layout to predict (None: ``parallel.layout: auto``) and its ranks; ``p``: the config's parallel section."""
    if layout:
        lay = Layout.of(layout)
        return lay.as_dict(), lay.ranks
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
    print(f"code path {pred.code_path} ({CODE_PATH_NAMES[pred.code_path]}): its inference memory is predicted", file=out)
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
        print(f"memory per rank, {name} ({d['code_path']} code path): {_gb(d['total'])} (weights {_gb(d['weights'])}, activations "
              f"{_gb(d['activations'])}, optimizer {_gb(d['optimizer'])}, autocast weights {_gb(d['weight_copies'])}, "
              f"io {_gb(d['io'])}, held members {_gb(d['held'])}, runtime {_gb(d['runtime'])}, "
              f"allocator {_gb(d['allocator'])})", file=out)
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


def _case(a):
    """(model keywords, predict keywords, parallel section) of the config, read by the loader the top level gave."""
    if a.load_case is None:
        raise ValueError("predict and suggest read an app's config: run them as python -m perfmodel")
    return a.load_case(a.config, a.overrides, a.channels)


def cmd_predict(a) -> int:
    kw, run, par = _case(a)
    hw = load_hardware(a.hardware)
    layout, ranks = _layout_from(par, a.ranks, a.layout)
    if layout is None:
        if a.code_path:
            raise ValueError("--code-path needs a layout (--layout or the config's parallel section), not "
                             "parallel.layout=auto")
        layout, pred = suggest(kw, ranks=ranks, hardware=hw, training=a.training, **run)
        print(f"parallel.layout=auto: the model suggests {layout}")
    else:
        pred = predict(kw, layout=layout, hardware=hw, training=a.training, code_path=a.code_path, **run)
    if a.json:
        energy = _energy(pred, hw)
        print(json.dumps(dict(pred.as_dict(), energy=energy.as_dict() if energy else None), indent=1))
    else:
        print_prediction(pred, hardware=hw)
    return 0


def cmd_suggest(a) -> int:
    kw, run, _ = _case(a)
    layout, pred = suggest(kw, ranks=a.ranks, hardware=a.hardware, **run)
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


def main(argv=None, load_case=None) -> int:
    """``load_case(config, overrides, channels)``: (model keywords, predict keywords, parallel section) of an
    app's config, for predict and suggest (the top level, ``python -m perfmodel``, passes the ensemble app's)."""
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
    p.add_argument("--code-path", choices=("fused", "eager", "distributed"),
                   help="the inference forward whose memory is predicted (default: what the app runs: fused for a "
                        "serial model, distributed when the model is split)")
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
    a.load_case = load_case
    try:
        return a.fn(a)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

#!/usr/bin/env python
"""How predictable is a synthetic dataset? Perfect-model forecasts against persistence.

Runs the shallow-water generator (``hpc_fcn.data.synth``) for a few independent members and, from
initial states spread over the record, integrates the same equations again with the state truncated
to the stored grid and without the random stirring (which no forecast from the stored fields can
know). The ACC of these forecasts bounds what any model trained on the dataset can reach; persistence
is scored beside them. Anomalies are against the members' own time mean.

    python tools/synth_predictability.py                                # the built-in options
    python tools/synth_predictability.py --set relax_days=6 --set stir_rms=1e-10 \\
        --set 'jets=[[45,50,9],[-48,50,9]]'                             # any other option values
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hpc_fcn import metrics  # noqa: E402
from hpc_fcn.data import synth  # noqa: E402

DAYS = (1, 3, 5, 10)
CHANNELS = ("u", "v", "z")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE",
                   help="override a SynthOptions field (JSON value), e.g. stir_rms=2e-11")
    p.add_argument("--members", type=int, default=4, help="independent runs (batched)")
    p.add_argument("--spinup-days", type=float, default=60.0)
    p.add_argument("--record-days", type=float, default=120.0)
    p.add_argument("--every-days", type=float, default=8.0, help="spacing of the initial times")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args(argv)
    fields = {f.name: f for f in dataclasses.fields(synth.SynthOptions)}
    changes = {}
    for item in args.set:
        key, sep, text = item.partition("=")
        if not sep or key not in fields:
            p.error(f"--set {item!r}: expected OPTION=VALUE with OPTION one of {', '.join(fields)}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            p.error(f"--set {item!r}: the value must be JSON (a number, or a list such as [[45,60,6]])")
        changes[key] = tuple(tuple(v) if isinstance(v, list) else v for v in value) if isinstance(value, list) else value
    opts = dataclasses.replace(synth.builtin_options(), threads=args.threads, **changes)
    try:
        opts.check()
    except synth.SynthError as exc:
        p.error(str(exc))
    if args.record_days <= max(DAYS):
        p.error(f"--record-days must exceed the longest lead ({max(DAYS)} days)")
    return args, opts, changes


def predictability(opts: synth.SynthOptions, members: int, spinup_days: float, record_days: float,
                   every_days: float) -> dict:
    """Mean ACC of persistence and of perfect-model forecasts, {"persistence"|"perfect": (len(DAYS), 3)}."""
    torch.set_num_threads(opts.threads)
    model = synth.ForcedShallowWater(opts)
    gens = [torch.Generator().manual_seed(opts.seed * 1_000_003 + 7919 * (i + 1)) for i in range(members)]
    state, history = model.initial_state(gens), []

    def advance(s):
        model.update_stirring(gens, synth.SIX_HOURS)
        return model.run(s, model.substeps, history)

    for _ in range(round(spinup_days * 4)):
        state = advance(state)
    nrec, every, horizon = round(record_days * 4), max(1, round(every_days * 4)), max(DAYS) * 4
    truth, inits = [], []
    for t in range(nrec):
        if t:
            state = advance(state)
        truth.append(model.stored_fields(state)[:, :3].numpy())
        if t % every == 0 and t + horizon < nrec:
            inits.append((t, state.clone()))
    truth = np.stack(truth, 1)                               # (member, time, channel, lat, lon)
    clim = truth.mean(axis=(0, 1))
    w = metrics.lat_weights(synth.stored_latitudes(opts.nlat), "area")

    L = model.lmax_out
    x = torch.cat([s for _, s in inits])
    x[..., L:, :] = 0
    x[..., :, L:] = 0                                        # what the stored grid keeps
    model.stir, history = None, []
    forecasts = {}
    for k in range(1, horizon + 1):
        x = model.run(x, model.substeps, history)
        if k % 4 == 0 and k // 4 in DAYS:
            forecasts[k // 4] = model.stored_fields(x)[:, :3].numpy()

    out = {"persistence": [], "perfect": [], "initial_times": len(inits),
           "eddy_rms": np.sqrt(metrics.weighted_mean((truth - truth.mean(-1, keepdims=True)) ** 2, w)
                               .mean(axis=(0, 1)))}
    for d in DAYS:
        pers, perf = [], []
        for j, (t, _) in enumerate(inits):
            for m in range(members):
                obs = truth[m, t + 4 * d]
                pers.append(metrics.acc(truth[m, t], obs, clim, w))
                perf.append(metrics.acc(forecasts[d][j * members + m], obs, clim, w))
        out["persistence"].append(np.mean(pers, axis=0))
        out["perfect"].append(np.mean(perf, axis=0))
    out["persistence"], out["perfect"] = np.array(out["persistence"]), np.array(out["perfect"])
    return out


def main(argv=None) -> int:
    args, opts, changes = parse_args(sys.argv[1:] if argv is None else argv)
    t0 = time.perf_counter()
    r = predictability(opts, args.members, args.spinup_days, args.record_days, args.every_days)
    print(f"options changed: {json.dumps(changes) if changes else 'none (the built-in dataset)'}; "
          f"{args.members} members x {r['initial_times']} initial times; {time.perf_counter() - t0:.0f} s")
    print("eddy rms (deviation from the zonal mean): "
          + ", ".join(f"{c} {e:.3g}" for c, e in zip(CHANNELS, r["eddy_rms"])))
    print("\n| lead | " + " | ".join(f"{c} persistence | {c} perfect model" for c in CHANNELS) + " |")
    print("|---" * (1 + 2 * len(CHANNELS)) + "|")
    for i, d in enumerate(DAYS):
        print(f"| day {d} | " + " | ".join(f"{a:.3f} | {b:.3f}" for a, b in zip(r["persistence"][i], r["perfect"][i]))
              + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Skill of the built-in model on the built-in dataset's out_of_sample split (the held-out year).

Deterministic forecasts against persistence and climatology (RMSE in physical units, ACC against the
climatology) at days 1, 3, 5, 10, and a Gaussian-perturbed ensemble's fair CRPS against the
deterministic forecast's mean absolute error at day 5, all latitude weighted (cell areas) and averaged
over several initial times spread over the year. Prints the tables and writes them as markdown.

    python tools/evaluate_builtin.py [--checkpoint hpc_fcn/assets/builtin_model.ckpt] [--out FILE.md]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hpc_fcn import metrics  # noqa: E402
from hpc_fcn.data.builtin import ensure_builtin  # noqa: E402
from hpc_fcn.data.era5 import open_split  # noqa: E402
from hpc_fcn.model import load_checkpoint  # noqa: E402
from hpc_fcn.schema import DataConfig  # noqa: E402
from hpc_fcn.train.sampler import spread_starts  # noqa: E402

DAYS = (1, 3, 5, 10)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(REPO / "hpc_fcn" / "assets" / "builtin_model.ckpt"))
    p.add_argument("--data", default=None, help="dataset root (default: the built-in dataset)")
    p.add_argument("--inits", type=int, default=86, help="initial times for the deterministic scores, "
                   "evenly spread (86: every 2 days of the out_of_sample split)")
    p.add_argument("--ens-inits", type=int, default=4, help="initial times for the ensemble scores")
    p.add_argument("--members", type=int, default=100)
    p.add_argument("--amplitude", type=float, default=0.3, help="Gaussian noise std in normalised units")
    p.add_argument("--ens-day", type=int, default=5)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--out", default=None, help="markdown file to write (default: print only)")
    return p.parse_args(argv)


@torch.no_grad()
def rollout(model, x: torch.Tensor, steps: int, keep: set[int], batch: int = 50) -> dict[int, np.ndarray]:
    """Normalised states at the steps in ``keep``; members are run ``batch`` at a time."""
    out: dict[int, list[np.ndarray]] = {k: [] for k in keep}
    for i in range(0, x.shape[0], batch):
        state = x[i:i + batch]
        for step in range(1, steps + 1):
            state = model(state)
            if step in keep:
                out[step].append(state.numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def deterministic_scores(model, ds, inits, leads: dict[int, int]) -> dict:
    """Mean over ``inits`` of RMSE and ACC per channel: {kind: {"rmse"|"acc": {day: (C,)}}}.

    Kinds: model, persistence and climatology (no ACC: its anomaly is zero). ``leads`` maps day -> steps.
    """
    w, clim = metrics.lat_weights(ds.lat, "area"), ds.climatology()
    kinds = ("model", "persistence", "climatology")
    rmse = {k: {d: [] for d in leads} for k in kinds}
    acc = {k: {d: [] for d in leads} for k in kinds}
    x0 = np.stack([ds.read(int(i), normalise=True) for i in inits])
    fc = rollout(model, torch.from_numpy(x0), max(leads.values()), set(leads.values()))  # all at once
    for j, i in enumerate(inits):
        phys0 = ds.denormalise(x0[j])
        for d, k in leads.items():
            truth = ds.read(int(i) + k)
            for kind, f in (("model", ds.denormalise(fc[k][j])), ("persistence", phys0), ("climatology", clim)):
                rmse[kind][d].append(metrics.rmse(f, truth, w))
                if kind != "climatology":
                    acc[kind][d].append(metrics.acc(f, truth, clim, w))
    return {kind: {"rmse": {d: np.mean(rmse[kind][d], axis=0) for d in leads},
                   "acc": {d: np.mean(acc[kind][d], axis=0) if acc[kind][d] else None for d in leads}}
            for kind in kinds}


def evaluate(args) -> tuple[str, dict]:
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(args.data) if args.data else Path(ensure_builtin())
    ds = open_split(DataConfig(root=str(root)), "out_of_sample")
    model = load_checkpoint(args.checkpoint).eval()
    steps_per_day = 24 // ds.dt_hours
    leads = {d: d * steps_per_day for d in DAYS}
    inits = spread_starts(ds.times, max(leads.values()), args.inits)
    w = metrics.lat_weights(ds.lat, "area")
    names = ds.channels
    t0 = time.perf_counter()
    table = deterministic_scores(model, ds, inits, leads)
    t_det = time.perf_counter() - t0

    # ensemble at one lead: fair CRPS of the members vs MAE of the deterministic forecast
    k = args.ens_day * steps_per_day
    ens_inits = spread_starts(ds.times, k, args.ens_inits)
    rng = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()

    def forecasts():
        for i in ens_inits:
            x0 = torch.from_numpy(ds.read(int(i), normalise=True)[None])
            members = x0 + args.amplitude * torch.randn((args.members,) + tuple(x0.shape[1:]), generator=rng)
            yield (ds.denormalise(rollout(model, members, k, {k})[k]), ds.denormalise(rollout(model, x0, k, {k})[k][0]),
                   ds.read(int(i) + k))

    ens = ensemble_scores(forecasts(), w)
    t_ens = time.perf_counter() - t0

    checks = skill_checks(table, ens, names)
    md = render(args, ds, names, table, ens, checks, inits, ens_inits, t_det, t_ens)
    return md, {"table": table, "ensemble": ens, "checks": checks}


def ensemble_scores(forecasts, w) -> dict[str, np.ndarray]:
    """Scores per channel of ensembles (members, det, truth), each (M, C, r, c), (C, r, c), (C, r, c), physical units.

    CRPS, MAE and RMSEs per forecast averaged over forecasts; spread and spread/skill pooled over forecasts
    (:func:`hpc_fcn.metrics.pooled_spread_skill`, the definition metrics.json uses).
    """
    crps, mae, ens_rmse, det_rmse, var, mse = [], [], [], [], [], []
    n_members = None
    for ens, det, truth in forecasts:
        n_members = ens.shape[0]
        crps.append(metrics.weighted_mean(metrics.crps_fair(ens, truth), w))
        mae.append(metrics.weighted_mean(np.abs(det - truth), w))
        ens_rmse.append(metrics.rmse(ens.mean(0), truth, w))
        det_rmse.append(metrics.rmse(det, truth, w))
        v, e = metrics.spread_skill_sums(ens, truth, w)
        var.append(v)
        mse.append(e)
    if n_members is None:
        raise ValueError("no ensemble forecasts to score")
    return {"crps": np.mean(crps, 0), "mae": np.mean(mae, 0), "ens_rmse": np.mean(ens_rmse, 0),
            "det_rmse": np.mean(det_rmse, 0), **metrics.pooled_spread_skill(var, mse, n_members)}


def skill_checks(table, ens, names) -> dict[str, bool]:
    """The required properties, per variable (main variables u, v, z)."""
    out = {}
    main = [n for n in ("u", "v", "z") if n in names] or list(names)
    idx = [names.index(n) for n in main]
    m, p, c = table["model"], table["persistence"], table["climatology"]
    out["RMSE below persistence at every day"] = all((m["rmse"][d][idx] < p["rmse"][d][idx]).all() for d in DAYS)
    out["ACC above persistence at every day"] = all((m["acc"][d][idx] > p["acc"][d][idx]).all() for d in DAYS)
    out["RMSE below climatology at days 1 and 3"] = all((m["rmse"][d][idx] < c["rmse"][d][idx]).all() for d in (1, 3))
    # climatology's ACC against itself is undefined (zero anomaly): compare with 0, its effective value
    out["ACC above climatology (0) at days 1 and 3"] = all((m["acc"][d][idx] > 0).all() for d in (1, 3))
    out["ensemble CRPS below deterministic MAE"] = bool((ens["crps"][idx] < ens["mae"][idx]).all())
    return out


def render(args, ds, names, table, ens, checks, inits, ens_inits, t_det, t_ens) -> str:
    lines = [f"# Skill of the built-in model on the test split ({ds.years[0]}, the out-of-sample year)", "",
             f"Checkpoint `{Path(args.checkpoint).name}`; {len(inits)} initial times from {ds.times[inits[0]]} to "
             f"{ds.times[inits[-1]]}; latitude weights: cell areas; RMSE in physical units, ACC uncentred "
             f"against the dataset climatology (time means). Produced by `python tools/evaluate_builtin.py"
             f"{' --out ' + str(args.out) if args.out else ''}` ({t_det + t_ens:.0f} s).", ""]
    for metric, fmt in (("rmse", "{:.3g}"), ("acc", "{:.3f}")):
        lines += [f"## {metric.upper()}", "", "| variable | forecast | " + " | ".join(f"day {d}" for d in DAYS) + " |",
                  "|---|---|" + "---|" * len(DAYS)]
        for j, n in enumerate(names):
            for kind in ("model", "persistence", "climatology"):
                if metric == "acc" and kind == "climatology":
                    continue  # zero anomaly: undefined
                cells = [fmt.format(table[kind][metric][d][j]) for d in DAYS]
                lines.append(f"| {n} | {kind} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [f"## Ensemble at day {args.ens_day}", "",
              f"{args.members} members, Gaussian initial perturbations of {args.amplitude} sigma (normalised units), "
              f"{len(ens_inits)} initial times. Fair CRPS of the ensemble vs the mean absolute error of the "
              f"unperturbed (deterministic) forecast; lower is better. Spread/skill pools variance and MSE over "
              f"the initial times; the corrected ratio is sqrt((M + 1) / M) x spread / RMSE of the mean "
              f"(1 for a calibrated ensemble, see docs/ensembles.md).", "",
              "| variable | CRPS (ensemble) | MAE (deterministic) | RMSE ens. mean | RMSE deterministic | spread/skill "
              "| spread/skill (corrected) |",
              "|---|---|---|---|---|---|---|"]
    for j, n in enumerate(names):
        lines.append(f"| {n} | {ens['crps'][j]:.3g} | {ens['mae'][j]:.3g} | {ens['ens_rmse'][j]:.3g} | "
                     f"{ens['det_rmse'][j]:.3g} | {ens['ssr'][j]:.2f} | {ens['ssr_corrected'][j]:.2f} |")
    lines += ["", "## Required properties (u, v, z)", ""]
    lines += [f"- {'PASS' if ok else 'FAIL'}: {what}" for what, ok in checks.items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    md, result = evaluate(args)
    print(md)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(md)
    return 0 if all(result["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())

"""The end of a run: the metrics document (metrics.json), the skill table and the timing table."""
from __future__ import annotations

import numpy as np

from .config import parse_lead


def _per_var(arr: np.ndarray, channels: list[str]) -> dict[str, list]:
    return {c: [None if not np.isfinite(v) else float(v) for v in arr[:, i]] for i, c in enumerate(channels)}


def metrics_document(scores: dict, channels: list[str], lead_hours: list[int], members: int, init_times,
                     lat_weights: str) -> dict:
    """Scores per variable and lead, in the layout ``python -m hpc_fcn.plot`` reads."""
    ens, pers, clim = scores["ensemble"], scores["persistence"], scores["climatology"]
    doc = {"variables": channels, "lead_hours": list(lead_hours), "members": members,
           "initial_times": [str(np.datetime64(t, "h")) for t in init_times],
           "forecasts_per_lead": ens["count"].tolist(),
           "scores": {k: _per_var(ens[k], channels) for k in ("rmse", "acc", "crps", "spread", "ssr",
                                                                        "ssr_corrected")},
           "persistence": {k: _per_var(pers[k], channels) for k in ("rmse", "acc")},
           "climatology": {k: _per_var(clim[k], channels) for k in ("rmse", "acc")}}
    doc["scores"]["rank_hist"] = {c: ens["rank_hist"][:, i].tolist() for i, c in enumerate(channels)}
    if np.isfinite(ens["mae_control"]).any():
        doc["control"] = {k: _per_var(ens[k + "_control"], channels) for k in ("mae", "rmse")}
    doc["notes"] = ("rmse/acc: of the ensemble mean, per forecast then averaged over initial times; acc uncentred "
                    f"against the dataset climatology; crps: fair CRPS; ssr: spread / rmse, variance and MSE pooled "
                    f"over initial times; ssr_corrected: sqrt((M + 1) / M) ssr, 1 for a calibrated ensemble; "
                    f"{lat_weights} latitude weights")
    return doc


def format_table(doc: dict, leads: list[str]) -> str:
    """A markdown skill table: each variable at the requested leads (those the run reached)."""
    hours = doc["lead_hours"]
    cols = []
    for lead in leads:
        h = parse_lead(lead, 1, "scoring.table_leads")
        if h in hours:
            cols.append((lead, hours.index(h)))
    if not cols:
        cols = [(f"{h}h", i) for i, h in enumerate(hours) if h > 0][-4:]
    head = "| variable | score | " + " | ".join(c for c, _ in cols) + " |"
    lines = [f"Skill of the {doc['members']}-member ensemble ({len(doc['initial_times'])} initial time(s))", "",
             head, "|" + "---|" * (len(cols) + 2)]

    def fmt(v):
        return "n/a" if v is None else (f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}")

    rows = [("RMSE ens. mean", doc["scores"]["rmse"]), ("RMSE persistence", doc["persistence"]["rmse"]),
            ("RMSE climatology", doc["climatology"]["rmse"]), ("ACC ens. mean", doc["scores"]["acc"]),
            ("ACC persistence", doc["persistence"]["acc"]), ("CRPS", doc["scores"]["crps"]),
            ("spread/skill", doc["scores"]["ssr"]),
            ("spread/skill (corrected)", doc["scores"]["ssr_corrected"])]
    if "control" in doc:
        rows.append(("MAE control", doc["control"]["mae"]))
    for var in doc["variables"]:
        for name, table in rows:
            vals = table[var]
            lines.append(f"| {var} | {name} | " + " | ".join(fmt(vals[i]) for _, i in cols) + " |")
    return "\n".join(lines)


def timing_table(per_rank: list[dict], member_steps: int) -> str:
    """Compute / communication / IO seconds per ensemble group (max over its ranks) and throughput."""
    groups: dict[int, list[dict]] = {}
    for t in per_rank:
        groups.setdefault(t["group"], []).append(t)
    wall = max(t["wall"] for t in per_rank)
    lines = ["", f"Timings: {len(per_rank)} rank(s), wall {wall:.1f} s, "
                 f"{member_steps / max(wall, 1e-9):.1f} member-steps/s", "",
             "| group | ranks | compute s | communication s | IO s |", "|---|---|---|---|---|"]
    for gid in sorted(groups):
        ts = groups[gid]
        lines.append(f"| {gid} | {len(ts)} | {max(t.get('compute', 0.0) for t in ts):.2f} | "
                     f"{max(t.get('comm', 0.0) for t in ts):.2f} | {max(t.get('io', 0.0) for t in ts):.2f} |")
    return "\n".join(lines)


TOP_LEVEL_COMPUTE = ("forecast.step", "perturbation", "ensemble_stats", "scoring")


def rank_timings(tracer) -> dict[str, float]:
    """Seconds in compute (excluding the collectives nested in it), communication and IO."""
    summ = tracer.summary()
    comm = sum(v["seconds"] for v in summ.values() if v["category"] == "comm")
    io = sum(summ[k]["seconds"] for k in ("io.read", "io.write") if k in summ)
    compute = sum(summ[k]["seconds"] for k in TOP_LEVEL_COMPUTE if k in summ) - comm
    return {"compute": compute, "comm": comm, "io": io}

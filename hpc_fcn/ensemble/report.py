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
    if "probabilistic" in scores:
        doc["probabilistic"] = probabilistic_section(scores["probabilistic"])
    doc["notes"] = ("rmse/acc: of the ensemble mean, per forecast then averaged over initial times; acc uncentred "
                    f"against the dataset climatology; crps: fair CRPS; ssr: spread / rmse, variance and MSE pooled "
                    f"over initial times; ssr_corrected: sqrt((M + 1) / M) ssr, 1 for a calibrated ensemble; "
                    f"{lat_weights} latitude weights")
    return doc


def _finite(values) -> list:
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(values, np.float64).reshape(-1)]


def probabilistic_section(p: dict) -> dict:
    """metrics.json's scores of the probability products (:class:`hpc_fcn.metrics.ProbabilityAccumulator`)."""
    M = p["n_members"]
    rel = p["reliability"]  # (lead, event, M + 1, [weight, weighted observed, points])
    with np.errstate(invalid="ignore", divide="ignore"):
        freq = rel[..., 1] / rel[..., 0]
    return {
        "events": p["events"], "quantiles": p["levels"], "forecasts_per_lead": p["count"].tolist(),
        "brier": {e: _finite(p["brier"][:, i]) for i, e in enumerate(p["events"])},
        "reliability": {"forecast_probability": [k / M for k in range(M + 1)],
                        "observed_frequency": {e: [_finite(freq[li, i]) for li in range(freq.shape[0])]
                                               for i, e in enumerate(p["events"])},
                        "weight": {e: [_finite(rel[li, i, :, 0]) for li in range(rel.shape[0])]
                                   for i, e in enumerate(p["events"])},
                        "count": {e: np.rint(rel[:, i, :, 2]).astype(np.int64).tolist()
                                  for i, e in enumerate(p["events"])}},
        "pinball": {c: {f"{q:g}": _finite(p["pinball"][:, j, i]) for j, q in enumerate(p["levels"])}
                    for i, c in enumerate(p["channels"])},
        "notes": ("brier: latitude-weighted mean of (p - o)^2 per forecast, averaged over initial times, p = k / M "
                  "the fraction of members beyond the threshold (strictly), o the event in the truth; reliability: "
                  "per lead and forecast probability k / M, the latitude-weighted observed frequency, the weight "
                  "(sum of latitude weights) and the grid-point count; pinball: quantile loss (o - Q)(q - [o < Q]), "
                  "latitude-weighted like brier; quantiles: numpy.quantile method 'linear' over the members"),
    }


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
    prob = doc.get("probabilistic")
    if prob:
        for event, vals in prob["brier"].items():
            lines.append(f"| {event} | Brier | " + " | ".join(fmt(vals[i]) for _, i in cols) + " |")
        for var, by_q in prob["pinball"].items():
            for q, vals in by_q.items():
                lines.append(f"| {var} | pinball q{q} | " + " | ".join(fmt(vals[i]) for _, i in cols) + " |")
    return "\n".join(lines)


PARTS = (("compute", "compute"), ("comm", "communication"), ("io", "IO"), ("other", "other"))  # key, column


def _rate(x: float) -> str:
    """A throughput with the digits it needs: 103.4, 2.35, 0.0421 (production size on a CPU)."""
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}" if x >= 0.1 else f"{x:.4f}"


def timing_table(per_rank: list[dict], member_steps: int) -> str:
    """Each ensemble group's seconds in compute, communication, IO and other (mean over its ranks), which add
    up to its wall time, and the throughput."""
    groups: dict[int, list[dict]] = {}
    for t in per_rank:
        groups.setdefault(t["group"], []).append(t)
    wall = max(t["wall"] for t in per_rank)
    lines = ["", f"Timings: {len(per_rank)} rank(s), wall {wall:.1f} s, "
                 f"{_rate(member_steps / max(wall, 1e-9))} member-steps/s",
             "Seconds of the rollout per rank, mean over each ensemble group: compute + communication + IO + other "
             "= wall.", "Each second counts under the innermost timed region open then (the collectives inside a "
             "step are communication); other: outside every region.", "",
             "| group | ranks | " + " | ".join(f"{col} s" for _, col in PARTS) + " | wall s |",
             "|---|---|" + "---|" * (len(PARTS) + 1)]
    for gid in sorted(groups):
        ts = groups[gid]
        mean = [sum(t.get(k, 0.0) for t in ts) / len(ts) for k, _ in PARTS] + [sum(t["wall"] for t in ts) / len(ts)]
        lines.append(f"| {gid} | {len(ts)} | " + " | ".join(f"{v:.2f}" for v in mean) + " |")
    return "\n".join(lines)


# The phases a run's time and peak memory are reported by (timings.json "phases"), and the regions (or the tags of
# collectives, before the "/") that make each; the rest of the rollout is "other".
PHASES = ("startup", "checkpoint", "read", "perturb", "step", "output", "scoring", "report")
PHASE_REGIONS = {
    "checkpoint": ("checkpoint.load",),
    "read": ("io.read",),
    "perturb": ("perturbation",),
    "step": ("forecast.step", "forecast.spin_up", "forecaster.pass", "model_noise"),
    "output": ("io.open", "io.close", "io.to_host", "io.write", "io.submit", "io.wait", "snapshot", "ensemble_stats",
               "ens_mean", "ens_var"),
    "scoring": ("scoring", "probability_products", "score_members"),
}
_PHASE_OF = {region: phase for phase, regions in PHASE_REGIONS.items() for region in regions}


def phase_of(region: str) -> str | None:
    """The phase a timed region (or collective, ``tag/op@axis``) belongs to, or None."""
    return _PHASE_OF.get(region.split("/", 1)[0])


def phase_table(per_rank: list[dict]) -> str:
    """Seconds and peak resident memory of each phase, per rank (start-up: from the process's start, the
    checkpoint's load not counted; its peak includes it)."""
    def cell(ph: dict, name: str) -> str:
        if name not in ph["seconds"]:
            return "-"
        return f"{ph['seconds'][name]:.1f} s / {ph['peak_bytes'][name] / 2**30:.2f} GiB"
    lines = ["", "Phases per rank: seconds / peak resident memory (GiB) within the phase"
             + ("" if all(t["phases"]["resettable"] for t in per_rank) else
                " (this kernel cannot reset the peak: peaks are the process's up to the phase's end)"), "",
             "| rank | " + " | ".join(PHASES) + " |", "|---|" + "---|" * len(PHASES)]
    for r, t in enumerate(per_rank):
        lines.append(f"| {r} | " + " | ".join(cell(t["phases"], p) for p in PHASES) + " |")
    return "\n".join(lines)


def rank_timings(tracer, start: float, end: float) -> dict[str, float]:
    """This rank's seconds from ``start`` to ``end`` (the tracer's clock) in compute, communication (comm), IO
    and other: a partition of the wall time (:meth:`hpc_fcn.tracing.Tracer.partition`)."""
    parts = tracer.partition(start, end)
    return {k: parts.get(k, 0.0) for k, _ in PARTS}

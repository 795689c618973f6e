"""Threshold probabilities and quantiles of the ensemble (the config's ``products:``), computed on a block of rows
where all members meet (:func:`hpc_fcn.ensemble.exchange.members_for_rows`, the exchange the scores use), and
their CF layout.

Definitions (docs/output_format.md): the probability of ``x > t`` (``above``) or ``x < t`` (``below``) is the
fraction k / M of the M members beyond the threshold; a quantile at level q is ``numpy.quantile(members, q,
axis=0)`` with NumPy's default method, 'linear' (Hyndman & Fan type 7), rounded to float32.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..io.cf import DerivedLayout, LeadingAxis
from ..metrics import QUANTILE_METHOD, exceedance_probability, sorted_quantiles
from .config import ProductsConfig

RELATION = {"above": ("greater_than", ">"), "below": ("less_than", "<")}


@dataclass(frozen=True)
class Event:
    """Thresholds of one channel in one direction: one variable of the probability product."""
    channel: str
    direction: str  # above | below
    thresholds: np.ndarray  # float32, physical units

    @property
    def variable(self) -> str:
        return f"probability_of_{self.channel}_{self.direction}_threshold"

    @property
    def dim(self) -> str:
        return f"threshold_{self.channel}_{self.direction}"

    def names(self) -> list[str]:
        """One name per threshold, as metrics.json keys: 'u10>15', 't850<250'."""
        return [f"{self.channel}{RELATION[self.direction][1]}{t:g}" for t in self.thresholds.tolist()]


class ProbabilityProducts:
    """The run's probability products: what they are (layouts) and their values on a block of all members."""

    def __init__(self, cfg: ProductsConfig, channels: list[str], out_vars: list[str], n_members: int):
        self.channels, self.quantile_vars, self.n_members = list(channels), list(out_vars), n_members
        self.events = [Event(ch, d, np.asarray(sides[d], np.float32))
                       for ch, sides in cfg.probabilities.items() for d in ("above", "below") if sides.get(d)]
        self.levels = [float(q) for q in cfg.quantiles]
        self._qidx = [self.channels.index(v) for v in self.quantile_vars]

    @property
    def products(self) -> tuple[str, ...]:
        """The derived products this run writes."""
        return (("probability",) if self.events else ()) + (("quantile",) if self.levels else ())

    def event_names(self) -> list[str]:
        """Every threshold event, in the order of the probability product's rows."""
        return [n for e in self.events for n in e.names()]

    # -- values ---------------------------------------------------------------------------------------
    def compute(self, members: np.ndarray) -> dict[str, np.ndarray]:
        """The products on a block: ``members`` (M, C, r, c) -> {"probability": (T, r, c) float64 k / M,
        "quantile": (Q, C_written, r, c) float32}, only those configured."""
        out = {}
        if self.events:
            ci = {ch: self.channels.index(ch) for ch in {e.channel for e in self.events}}
            out["probability"] = np.concatenate([exceedance_probability(members[:, ci[e.channel]], e.thresholds,
                                                                        e.direction == "above")
                                                 for e in self.events])
        if self.levels:
            x = members[:, self._qidx] if self._qidx != list(range(members.shape[1])) else members
            out["quantile"] = sorted_quantiles(np.sort(x, axis=0), self.levels).astype(np.float32, copy=False)
        return out

    def observed(self, truth: np.ndarray) -> np.ndarray:
        """The events in the truth (C, r, c): (T, r, c) of 0/1."""
        ci = {ch: self.channels.index(ch) for ch in {e.channel for e in self.events}}
        parts = [(truth[None, ci[e.channel]] > e.thresholds[:, None, None]) if e.direction == "above" else
                 (truth[None, ci[e.channel]] < e.thresholds[:, None, None]) for e in self.events]
        return np.concatenate(parts).astype(np.float64) if parts else np.zeros((0,) + truth.shape[1:])

    @staticmethod
    def as_rows(name: str, values: np.ndarray) -> np.ndarray:
        """``compute``'s field as its product's rows (float32): the quantile product variable by variable."""
        if name == "quantile":
            Q, C = values.shape[:2]
            values = values.transpose(1, 0, 2, 3).reshape((C * Q,) + values.shape[2:])
        return np.ascontiguousarray(values, dtype=np.float32)

    # -- layout ---------------------------------------------------------------------------------------
    def layouts(self, units, standard_names, long_names) -> dict[str, DerivedLayout]:
        """The CF layout of each product (``units`` etc.: the channels')."""
        out = {}
        if self.events:
            u, sn, ln, axes, attrs = {}, {}, {}, {}, {}
            for e in self.events:
                v, rel = e.variable, RELATION[e.direction]
                u[v], sn[v] = "1", None
                ln[v] = f"probability of {long_names[e.channel]} {e.direction} threshold"
                coord = {"long_name": f"threshold of {long_names[e.channel]}", "units": str(units[e.channel]),
                         "spp__relative_to_threshold": rel[0]}
                if standard_names.get(e.channel):
                    coord["standard_name"] = str(standard_names[e.channel])
                axes[v] = LeadingAxis(e.dim, e.thresholds, coord)
                attrs[v] = {"comment": f"fraction of the {self.n_members} members with {e.channel} {rel[1]} "
                                       f"{e.dim} (k / {self.n_members})"}
            out["probability"] = DerivedLayout([e.variable for e in self.events], u, sn, ln, axes, attrs)
        if self.levels:
            axis = LeadingAxis("quantile", np.asarray(self.levels, np.float64),
                               {"long_name": "quantile level (probability of not exceeding)", "units": "1"})
            out["quantile"] = DerivedLayout(
                list(self.quantile_vars), {v: units[v] for v in self.quantile_vars},
                {v: standard_names.get(v) for v in self.quantile_vars},
                {v: f"ensemble quantile of {long_names[v]}" for v in self.quantile_vars},
                {v: axis for v in self.quantile_vars},
                {v: {"comment": f"numpy.quantile over the {self.n_members} members, method='{QUANTILE_METHOD}' "
                                "(type 7), rounded to float32"} for v in self.quantile_vars})
        return out


__all__ = ["Event", "ProbabilityProducts"]

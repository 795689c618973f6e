"""Scoring of an ensemble run: members exchanged so each rank scores all members on a block of its window.

The ensemble, persistence and climatology accumulators (:class:`hpc_fcn.metrics.ScoreAccumulator`)
hold sums per lead; they are part of the resume state and are reduced over the scoring ranks at the end.
The same exchange feeds the probability products (:mod:`.probabilities`: computed on the block, returned for
the outputs, and scored by a :class:`hpc_fcn.metrics.ProbabilityAccumulator`).
"""
from __future__ import annotations

import json
from typing import Mapping

import numpy as np

from .exchange import members_for_rows, row_blocks
from .probabilities import ProbabilityProducts
from .resolve import ResolvedRun


class Scoring:
    """Score accumulators of this rank's block, and the communicator of the ranks that score."""

    def __init__(self, run: ResolvedRun):
        from ..metrics import lat_weights
        self.run = run
        cfg, ds = run.cfg, run.ds
        self.ens_comm = run.grid.ensemble
        self.comm = run.grid.world.split(0 if run.scorer else None, run.grid.world.rank, name="scorers")
        self.row_w = lat_weights(ds.lat, cfg.scoring.lat_weights)[run.rows]
        with run.tracer.region("io.read", "io"):
            self.clim = ds.climatology(run.rows, run.cols)  # float32
        pc = cfg.products
        self.derived = ProbabilityProducts(pc, run.channels, run.out_vars, run.members) if pc.enabled else None
        self.reset()

    def reset(self) -> None:
        """Empty accumulators, one per lead of the plan (a fresh start for another forecast of the same run)."""
        from ..metrics import ScoreAccumulator
        run, cfg = self.run, self.run.cfg
        L, M = len(run.plan.output_steps), run.members
        ctl = 0 if (cfg.ensemble.control or cfg.perturbation.method == "none") else None
        self.accumulators = {"ensemble": ScoreAccumulator(run.channels, L, M, control_member=ctl,
                                                          rng=np.random.default_rng(cfg.ensemble.seed)),
                             "persistence": ScoreAccumulator(run.channels, L, 1),
                             "climatology": ScoreAccumulator(run.channels, L, 1)}
        if self.derived is not None:
            from ..metrics import ProbabilityAccumulator
            d = self.derived
            self.accumulators["probabilistic"] = ProbabilityAccumulator(d.event_names(), d.quantile_vars, d.levels,
                                                                        L, M)

    @property
    def active(self) -> bool:
        return bool(self.run.cfg.scoring.enabled and self.run.scorer)

    @property
    def needs_members(self) -> bool:
        """Whether :meth:`add` needs the members on the host (scores or probability products)."""
        return self.active or (self.derived is not None and self.run.scorer)

    def block_rows(self) -> slice:
        """The rows of the grid whose products this rank computes: its block of the exchange
        (:func:`members_for_rows`), in global rows (possibly empty)."""
        run = self.run
        b = row_blocks(run.rows.stop - run.rows.start, self.ens_comm.size)[self.ens_comm.rank]
        return slice(run.rows.start + b.start, run.rows.start + b.stop)

    def valid_index(self, init_index: int, step: int) -> int | None:
        """Index of the truth at the valid time, or None when the split does not have it."""
        ds = self.run.ds
        t = ds.times[init_index] + np.timedelta64(step * self.run.plan.dt_hours, "h")
        hit = np.nonzero(ds.times == t)[0]
        return int(hit[0]) if len(hit) else None

    def add(self, li: int, step: int, init_index: int, phys: np.ndarray, x0: np.ndarray) -> dict | None:
        """Score lead ``li`` (model step ``step``) of the members ``phys`` started from ``x0`` (physical units).

        Returns the probability products of this rank's :meth:`block_rows` ({product: rows of its layout}, for
        :meth:`hpc_fcn.io.backend.OutputBackend.write_blocks`) when the run has them, else None."""
        if not self.needs_members:
            return None
        valid = self.valid_index(init_index, step) if self.active else None
        if valid is None and self.derived is None:
            return None
        tr = self.run.tracer
        if valid is not None:
            with tr.region("io.read", "io"):
                truth = self.run.ds.read(valid, self.run.rows, self.run.cols)
        with tr.region("scoring", "compute"):
            members, blk = members_for_rows(self.ens_comm, phys, self.run.group_counts)
        fields = None
        if self.derived is not None:
            with tr.region("probability_products", "compute"):
                fields = self.derived.compute(members)
        if valid is not None:
            with tr.region("scoring", "compute"):
                o, cl, w = truth[:, blk], self.clim[:, blk], self.row_w[blk]
                acc = self.accumulators
                acc["ensemble"].add(li, members, o, cl, w)
                acc["persistence"].add(li, x0[None, :, blk], o, cl, w)
                acc["climatology"].add(li, cl[None], o, cl, w)
                if fields is not None:
                    d = self.derived
                    acc["probabilistic"].add(li, fields.get("probability", np.zeros((0,) + o.shape[1:])),
                                             d.observed(o),
                                             fields.get("quantile", np.zeros((0, len(d.quantile_vars)) + o.shape[1:])),
                                             o[self.run.out_idx], w)
        if fields is None:
            return None
        return {name: self.derived.as_rows(name, v) for name, v in fields.items()}

    def summed(self) -> dict[str, np.ndarray] | None:
        """The accumulators summed over the scoring ranks and each scoring rank's tie-breaking random state, as
        plain arrays (a resume snapshot's ``scores.npz``), on world rank 0 (None elsewhere); collective."""
        from ..metrics import rng_to_json
        if self.comm is None:
            return None
        accs = {k: a.summed(self.comm) for k, a in self.accumulators.items()}
        rngs = self.comm.gather({k: rng_to_json(a.rng) for k, a in self.accumulators.items() if hasattr(a, "rng")},
                                root=0, tag="snapshot_rngs")
        if self.run.grid.world.rank != 0:
            return None
        out = {f"{k}.{name}": v for k, a in accs.items() for name, v in a.to_arrays().items()}
        out["rngs"] = np.array(json.dumps(rngs))
        return out

    def restore(self, summed: Mapping[str, np.ndarray]) -> None:
        """Continue from ``summed`` (a snapshot's :meth:`summed`): rank 0 holds the sums, the other scoring ranks
        zeros. ValueError when the arrays do not describe this run's accumulators.

        On as many scoring ranks as before, each continues its own random stream (rank histograms equal an
        uninterrupted run's); on another layout the ties of the rank histogram are broken by other draws.
        """
        from ..metrics import rng_from_json
        accs = {}
        for k, a in self.accumulators.items():
            prefix = f"{k}."
            accs[k] = type(a).from_arrays({n[len(prefix):]: v for n, v in summed.items() if n.startswith(prefix)})
        rngs = json.loads(str(summed["rngs"]))
        if self.comm is None:
            return
        me = self.comm.rank
        self.accumulators = {k: (a if me == 0 else a.zeroed()) for k, a in accs.items()}
        own = rngs[me] if self.comm.size == len(rngs) else rngs[0]
        for k, a in self.accumulators.items():
            if k in own:
                a.rng = rng_from_json(own[k])

    def reduce(self) -> dict:
        """The scores of the whole run on every rank (collective over the run's communicator)."""
        scores = None
        if self.comm is not None:
            scores = {k: a.reduce(self.comm) for k, a in self.accumulators.items()}
        return self.run.grid.world.bcast(scores, root=0, tag="scores")

    def close(self) -> None:
        if self.comm is not None:
            self.comm.free()

"""Forecast-skill metrics on latitude-weighted grids, as partial sums that reduce across MPI ranks.

Fields are NumPy arrays (torch tensors are accepted and copied to NumPy) with latitude and longitude
as the last two axes; sums accumulate in float64. A rank holding a window of rows and columns computes
weighted sums over its window only; adding those sums over ranks gives the global weighted means.

Variants (see the reference "Metric definitions"):
- latitude weights: cell areas (default) or FourCastNet's cosine formula (``mode="fourcastnet"``);
- RMSE and ACC are computed per forecast (one initial time) over the globe, then averaged over initial
  times, as FourCastNet does; ACC is uncentred, on anomalies against a climatology;
- CRPS is the fair (unbiased) ensemble estimator unless the plain kernel form is asked for;
- the spread-skill ratio pools: it averages member variance (ddof 1) and squared error of the ensemble
  mean over space and initial times before taking square roots (:func:`pooled_spread_skill`, the one
  definition every tool uses); for M members of a perfect ensemble it is sqrt(M / (M + 1)), so the
  corrected ratio sqrt((M + 1) / M) x spread / RMSE of the mean is offered too (1 when calibrated);
- the rank histogram counts grid points (not area weighted), ties between truth and members broken at
  random; points where the truth or any member is NaN are left out.
"""
from __future__ import annotations

import json
import math
from typing import Any, Mapping, Sequence

import numpy as np

LAT_WEIGHT_MODES = ("area", "fourcastnet")


def _np(x: Any) -> np.ndarray:
    """NumPy float64 view/copy of an array or torch tensor."""
    if hasattr(x, "detach"):  # a torch tensor, possibly bf16/fp16 or on a GPU
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _host(x: Any) -> np.ndarray:
    """A NumPy array of ``x`` in its own dtype (a torch tensor copied to the host; bf16 and fp16 as float32), to
    slice before :func:`_np` converts it to float64."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        return (x if x.dtype.itemsize >= 4 or not x.dtype.is_floating_point else x.float()).numpy()
    return np.asarray(x)


def lat_weights(lat_deg: Sequence[float] | np.ndarray, mode: str = "area") -> np.ndarray:
    """Weights (N,) for the rows of a GLOBAL grid with latitudes ``lat_deg``, normalised to mean 1.

    "area": the area of each row's cell band, sin(upper edge) - sin(lower edge), with edges half-way
    between rows and the outer edges half a spacing beyond the end rows, clipped to +-90 degrees.
    "fourcastnet": the paper's cos(90 - 180 j / (N - 1)) degrees, which ignores ``lat_deg`` except its length
    (on the 720-row model grid it shifts every row by a fraction of a spacing); for compatibility only.
    Slice the result for a rank's rows; do not recompute it on a window.
    """
    lat = np.asarray(lat_deg, dtype=np.float64).reshape(-1)
    if mode not in LAT_WEIGHT_MODES:
        raise ValueError(f"unknown latitude weighting {mode!r}: use one of {', '.join(LAT_WEIGHT_MODES)}")
    n = lat.size
    if n < 2:
        raise ValueError(f"latitude weights need at least 2 rows, got {n}")
    if mode == "fourcastnet":
        w = np.cos(np.deg2rad(90.0 - 180.0 * np.arange(n) / (n - 1)))
    else:
        if not np.all(np.isfinite(lat)) or np.any(np.abs(lat) > 90):
            raise ValueError("latitudes must be finite and within [-90, 90] degrees")
        d = np.diff(lat)
        if not (np.all(d > 0) or np.all(d < 0)):
            raise ValueError("latitudes must be strictly monotonic (north->south or south->north)")
        edges = np.concatenate([[lat[0] - d[0] / 2], (lat[1:] + lat[:-1]) / 2, [lat[-1] + d[-1] / 2]])
        w = np.abs(np.diff(np.sin(np.deg2rad(np.clip(edges, -90.0, 90.0)))))
    return w / w.mean()


# -- weighted spatial sums ----------------------------------------------------------------------------
def weighted_sum(x: Any, row_weights: Any) -> np.ndarray:
    """Sum over the last two axes (rows, cols) of row_weight * x: the numerator of a weighted mean."""
    x, w = _np(x), _np(row_weights)
    if x.ndim < 2 or x.shape[-2] != w.shape[0]:
        raise ValueError(f"row weights of length {w.shape[0]} do not fit a field of shape {x.shape}")
    return np.einsum("...ij,i->...", x, w)


def weight_total(row_weights: Any, ncols: int) -> float:
    """The weighted mean's denominator for a window of ``ncols`` columns."""
    return float(_np(row_weights).sum() * ncols)


def weighted_mean(x: Any, row_weights: Any) -> np.ndarray:
    """Weighted mean over the last two axes (serial convenience: the window is the whole grid)."""
    x = _np(x)
    return weighted_sum(x, row_weights) / weight_total(row_weights, x.shape[-1])


# -- deterministic scores ----------------------------------------------------------------------------
def rmse(forecast: Any, truth: Any, row_weights: Any) -> np.ndarray:
    """sqrt(<(f - o)^2>) over the last two axes."""
    return np.sqrt(weighted_mean((_np(forecast) - _np(truth)) ** 2, row_weights))


def acc_sums(forecast: Any, truth: Any, clim: Any, row_weights: Any) -> np.ndarray:
    """The three reducible sums of the uncentred ACC: stack(sum w f'o', sum w f'^2, sum w o'^2) on axis 0."""
    fa, oa = _np(forecast) - _np(clim), _np(truth) - _np(clim)
    return np.stack([weighted_sum(fa * oa, row_weights), weighted_sum(fa * fa, row_weights),
                     weighted_sum(oa * oa, row_weights)])


def acc_from_sums(sums: np.ndarray) -> np.ndarray:
    """<f'o'> / sqrt(<f'^2> <o'^2>) from :func:`acc_sums` (added over ranks)."""
    return sums[0] / np.sqrt(sums[1] * sums[2])


def acc(forecast: Any, truth: Any, clim: Any, row_weights: Any) -> np.ndarray:
    """Uncentred anomaly correlation over the last two axes, anomalies against ``clim``."""
    return acc_from_sums(acc_sums(forecast, truth, clim, row_weights))


# -- ensemble scores (members on axis 0) -------------------------------------------------------------
def ensemble_mean(members: Any) -> np.ndarray:
    return _np(members).mean(axis=0)


def ensemble_spread(members: Any) -> np.ndarray:
    """Member standard deviation, ddof 1 (NaN for a single member)."""
    m = _np(members)
    if m.shape[0] < 2:
        return np.full(m.shape[1:], np.nan)
    return m.std(axis=0, ddof=1)


def pairwise_abs_sum(members: Any) -> np.ndarray:
    """sum_i sum_j |x_i - x_j| over members (axis 0), via sorting: 2 sum_k (2k - M - 1) x_(k), k = 1..M."""
    m = np.sort(_np(members), axis=0)
    M = m.shape[0]
    coef = (2.0 * np.arange(1, M + 1) - M - 1).reshape((M,) + (1,) * (m.ndim - 1))
    return 2.0 * (coef * m).sum(axis=0)


def crps_fair(members: Any, truth: Any) -> np.ndarray:
    """Fair ensemble CRPS at each point: mean|x_i - o| - sum_ij|x_i - x_j| / (2 M (M - 1)).

    With one member it is the absolute error (the spread term vanishes).
    """
    m, o = _np(members), _np(truth)
    M = m.shape[0]
    skill = np.abs(m - o).mean(axis=0)
    return skill if M < 2 else skill - pairwise_abs_sum(m) / (2.0 * M * (M - 1))


def crps_plain(members: Any, truth: Any) -> np.ndarray:
    """Kernel-form ensemble CRPS at each point (the CRPS of the empirical distribution): 1/(2 M^2) spread term."""
    m, o = _np(members), _np(truth)
    M = m.shape[0]
    return np.abs(m - o).mean(axis=0) - pairwise_abs_sum(m) / (2.0 * M * M)


def truth_ranks(members: Any, truth: Any, rng: np.random.Generator) -> np.ndarray:
    """Rank 0..M of the truth among the members at each point; ties get a uniformly random rank among them.

    -1 where the truth or any member is NaN (no rank: a NaN compares false with everything).
    """
    m, o = _np(members), _np(truth)
    below = (m < o).sum(axis=0)
    ties = (m == o).sum(axis=0)
    ranks = below + rng.integers(0, ties + 1)
    return np.where(np.isnan(o) | np.isnan(m).any(axis=0), -1, ranks)


def rank_histogram(members: Any, truth: Any, rng: np.random.Generator) -> np.ndarray:
    """Counts of truth ranks over the last two axes: shape truth.shape[:-2] + (M + 1,); NaN points are skipped."""
    M = _np(members).shape[0]
    r = truth_ranks(members, truth, rng)
    lead = r.shape[:-2]
    n = int(np.prod(lead))
    r = r.reshape(n, -1)
    bins = r + (M + 1) * np.arange(n)[:, None]  # one block of M + 1 bins per leading index
    return np.bincount(bins[r >= 0], minlength=n * (M + 1)).reshape(lead + (M + 1,))


def pooled_spread_skill(mean_var: Any, mean_mse: Any, n_members: int) -> dict[str, np.ndarray]:
    """Spread and spread/skill ratios pooled over forecasts (axis 0).

    ``mean_var``, ``mean_mse``: (n_forecasts, ...) spatial (weighted) means, one row per forecast, of
    the member variance (ddof 1) and of the squared error of the ensemble mean. Returns ``spread`` =
    sqrt(mean variance), ``ssr`` = spread / sqrt(mean MSE) and ``ssr_corrected`` = sqrt((M + 1) / M) x
    ssr, which is 1 for a perfect M-member ensemble (the uncorrected ratio is then sqrt(M / (M + 1))).
    """
    var, mse = np.mean(_np(mean_var), axis=0), np.mean(_np(mean_mse), axis=0)
    spread = np.sqrt(var)
    with np.errstate(invalid="ignore", divide="ignore"):  # a perfect forecast has no finite ratio
        ssr = spread / np.sqrt(mse)
    return {"spread": spread, "ssr": ssr, "ssr_corrected": np.sqrt((n_members + 1) / n_members) * ssr}


def spread_skill_sums(members: Any, truth: Any, row_weights: Any) -> tuple[np.ndarray, np.ndarray]:
    """(weighted mean member variance (ddof 1), weighted mean squared error of the ensemble mean) of one
    forecast over the last two axes: one row of :func:`pooled_spread_skill`'s input."""
    m = _np(members)
    var = m.var(axis=0, ddof=1)
    mse = (m.mean(axis=0) - _np(truth)) ** 2
    return weighted_mean(var, row_weights), weighted_mean(mse, row_weights)


def spread_skill_ratio(members: Any, truth: Any, row_weights: Any) -> np.ndarray:
    """sqrt(<member variance, ddof 1>) / sqrt(<(ensemble mean - o)^2>) over the last two axes (one forecast)."""
    var, mse = spread_skill_sums(members, truth, row_weights)
    return pooled_spread_skill(var[None], mse[None], _np(members).shape[0])["ssr"]


# -- accumulation over windows, initial times and ranks ------------------------------------------------
_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "Philox", "SFC64", "MT19937")


def rng_to_json(rng: np.random.Generator) -> str:
    """A NumPy generator's complete state as JSON text."""
    return json.dumps(rng.bit_generator.state)


def rng_from_json(text: str) -> np.random.Generator:
    """The generator :func:`rng_to_json` describes (only NumPy's own bit generators)."""
    state = json.loads(text)
    name = state.get("bit_generator") if isinstance(state, dict) else None
    if name not in _BIT_GENERATORS:
        raise ValueError(f"not a NumPy random state (bit generator {name!r})")
    rng = np.random.Generator(getattr(np.random, name)())
    rng.bit_generator.state = state
    return rng


class _ForecastSums:
    """Sums per lead, one row per forecast (``_rows``), and one table of totals (the attribute ``TOTALS`` names),
    as a resume snapshot sums and clears them."""
    TOTALS = ""

    def summed(self, comm=None):
        """A copy holding the sums over the ranks of ``comm`` (a Communicator, collective; None = serial); for
        resume snapshots."""
        import copy
        out = copy.deepcopy(self)
        if comm is not None and comm.size > 1:
            for lead, rows in enumerate(out._rows):
                if rows:
                    out._rows[lead] = list(comm.all_reduce(np.ascontiguousarray(np.stack(rows)), tag="snapshot_scores"))
            setattr(out, self.TOTALS, comm.all_reduce(getattr(out, self.TOTALS), tag="snapshot_scores"))
        return out

    def zeroed(self):
        """A copy with the same forecasts counted and every sum zero (what a rank holds beside a ``summed`` one)."""
        import copy
        out = copy.deepcopy(self)
        out._rows = [[np.zeros_like(r) for r in rows] for rows in out._rows]
        setattr(out, self.TOTALS, np.zeros_like(getattr(out, self.TOTALS)))
        return out

    def _rows_arrays(self) -> dict[str, np.ndarray]:
        """Each lead's rows as one (n, width) array, keyed rows{lead} (the snapshot's npz entries)."""
        return {f"rows{lead}": np.stack(rows) if rows else np.zeros((0, self._width))
                for lead, rows in enumerate(self._rows)}

    def _load(self, arrays: Mapping[str, np.ndarray], totals_key: str, what: str) -> None:
        """Take the totals (``arrays[totals_key]``) and each lead's rows from a snapshot's arrays; ValueError when
        a shape does not fit this accumulator."""
        totals = np.asarray(arrays[totals_key], np.float64)
        expected = getattr(self, self.TOTALS).shape
        if totals.shape != expected:
            raise ValueError(f"{what} of shape {totals.shape}, expected {expected}")
        setattr(self, self.TOTALS, totals)
        for lead in range(self.n_leads):
            rows = np.asarray(arrays[f"rows{lead}"], np.float64)
            if rows.ndim != 2 or rows.shape[1] != self._width:
                raise ValueError(f"lead {lead}: sums of shape {rows.shape}, expected (n, {self._width})")
            self._rows[lead] = list(rows)

    def _reduced(self, comm=None) -> tuple[list[int], list[np.ndarray], np.ndarray]:
        """The sums over ``comm`` (collective; None = serial): forecasts per lead, each lead's (n, width) rows and
        the totals, the same on every rank. RuntimeError when the ranks added different numbers of forecasts."""
        counts = [len(r) for r in self._rows]
        if comm is not None and comm.size > 1:
            all_counts = comm.allgather(counts, tag="scores")
            if any(c != counts for c in all_counts):
                raise RuntimeError(f"ranks added different numbers of forecasts per lead: {all_counts}")
        totals = getattr(self, self.TOTALS)
        flat = np.concatenate([np.stack(r).reshape(-1) for r in self._rows if r] + [totals.reshape(-1)])
        if comm is not None:
            flat = comm.all_reduce(flat, tag="scores")
        blocks, pos = [], 0
        for n in counts:
            blocks.append(flat[pos:pos + n * self._width].reshape(n, self._width))
            pos += n * self._width
        return counts, blocks, flat[pos:].reshape(totals.shape)


class ScoreAccumulator(_ForecastSums):
    """Per-lead, per-channel ensemble scores accumulated over initial times and reduced over ranks.

    Each call to :meth:`add` is one forecast (one initial time) at one lead, seen through this rank's
    spatial window, with ALL members of the ensemble for that window (gather them over the ensemble axis
    first). Every rank of the ``comm`` passed to :meth:`reduce` must add the same forecasts in the same
    order, and the ranks' windows must tile the grid exactly once (so pass the h x w communicator of one
    ensemble/matmul group, not the world when windows are duplicated).

    Scores, each (n_leads, C), after the reduction:
      rmse, acc   of the ensemble mean, per forecast over the globe, then averaged over initial times;
      crps        fair CRPS, area-weighted mean, averaged over initial times;
      spread      sqrt(mean member variance), ssr = spread / sqrt(mean MSE of the ensemble mean),
                  ssr_corrected = sqrt((M + 1) / M) ssr (see :func:`pooled_spread_skill`);
      mae_control, rmse_control  of member ``control_member`` if given (per forecast, then averaged);
      rank_hist   (n_leads, C, M + 1) grid-point counts; count (n_leads,) forecasts added per lead.
    Leads without forecasts give NaN.
    """
    TOTALS = "_ranks"

    _SUMS = ("se", "fo", "ff", "oo", "crps", "var", "ae_ctl", "se_ctl")

    def __init__(self, channels: Sequence[str], n_leads: int, n_members: int, *,
                 control_member: int | None = None, rng: np.random.Generator | None = None):
        if n_leads < 1 or n_members < 1:
            raise ValueError(f"need n_leads >= 1 and n_members >= 1, got {n_leads}, {n_members}")
        if control_member is not None and not 0 <= control_member < n_members:
            raise ValueError(f"control_member {control_member} is not a member index (0..{n_members - 1})")
        self.channels = list(channels)
        self.n_leads, self.n_members = n_leads, n_members
        self.control_member = control_member
        self.rng = rng if rng is not None else np.random.default_rng(0)
        nc = len(self.channels)
        # per lead: one row per forecast of [weight, *sums(C each)]; rank counts summed directly
        self._rows: list[list[np.ndarray]] = [[] for _ in range(n_leads)]
        self._ranks = np.zeros((n_leads, nc, n_members + 1), dtype=np.float64)
        self._width = 1 + len(self._SUMS) * nc

    def add(self, lead_index: int, members: Any, truth: Any, clim: Any, row_weights: Any) -> None:
        """Add one forecast's window: members (M, C, r, c), truth and clim (C, r, c), row_weights (r,)."""
        m, o, cl, w = _host(members), _host(truth), _host(clim), _np(row_weights)
        nc = len(self.channels)
        if not 0 <= lead_index < self.n_leads:
            raise ValueError(f"lead_index {lead_index} out of range 0..{self.n_leads - 1}")
        if m.ndim != 4 or m.shape[:2] != (self.n_members, nc):
            raise ValueError(f"members must be ({self.n_members}, {nc}, rows, cols), got {m.shape}")
        if o.shape != m.shape[1:] or cl.shape != m.shape[1:] or w.shape != (m.shape[2],):
            raise ValueError(f"truth {o.shape}, clim {cl.shape} and row_weights {w.shape} do not fit members "
                             f"{m.shape}")
        # channel by channel: every sum is per channel, and float64 temporaries of one channel rather than of
        # all (at 0.25 degrees they are 83 MB each per channel block of a rank); the tie-breaking draws stay in
        # the same order (channels are the leading axis of the truth's ranks)
        parts = [self._channel_sums(m[:, c:c + 1], o[c:c + 1], cl[c:c + 1], w) for c in range(nc)]
        sums = {k: np.concatenate([p[k] for p in parts], axis=-1) for k in parts[0] if k != "ranks"}
        self._rows[lead_index].append(np.concatenate([[weight_total(w, m.shape[3])]] +
                                                     [sums[k] for k in self._SUMS]))
        self._ranks[lead_index] += np.concatenate([p["ranks"] for p in parts])

    def _channel_sums(self, members: np.ndarray, truth: np.ndarray, clim: np.ndarray, w: np.ndarray) -> dict:
        """The sums of :meth:`add` for a block of channels (float64), and its rank counts."""
        m, o, cl = _np(members), _np(truth), _np(clim)
        nc = o.shape[0]
        mean = m.mean(axis=0)
        sums = {"se": weighted_sum((mean - o) ** 2, w)}
        fo, ff, oo = acc_sums(mean, o, cl, w)
        sums["fo"], sums["ff"], sums["oo"] = fo, ff, oo
        sums["crps"] = weighted_sum(crps_fair(m, o), w)
        sums["var"] = weighted_sum(m.var(axis=0, ddof=1), w) if self.n_members > 1 else np.full(nc, np.nan)
        ctl = m[self.control_member] if self.control_member is not None else None
        sums["ae_ctl"] = weighted_sum(np.abs(ctl - o), w) if ctl is not None else np.zeros(nc)
        sums["se_ctl"] = weighted_sum((ctl - o) ** 2, w) if ctl is not None else np.zeros(nc)
        sums["ranks"] = rank_histogram(m, o, self.rng)
        return sums

    def to_arrays(self) -> dict[str, np.ndarray]:
        """This accumulator as plain arrays (a resume snapshot's npz entries: no pickled objects)."""
        out = {"channels": np.array(self.channels, dtype=str),
               "shape": np.array([self.n_leads, self.n_members, -1 if self.control_member is None
                                  else self.control_member], dtype=np.int64),
               "ranks": self._ranks, "rng": np.array(rng_to_json(self.rng))}
        return out | self._rows_arrays()

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> "ScoreAccumulator":
        """The accumulator :meth:`to_arrays` describes (ValueError if the arrays do not fit together)."""
        n_leads, n_members, ctl = (int(v) for v in arrays["shape"])
        out = cls([str(c) for c in arrays["channels"]], n_leads, n_members,
                  control_member=None if ctl < 0 else ctl, rng=rng_from_json(str(arrays["rng"])))
        out._load(arrays, "ranks", "rank counts")
        return out

    def reduce(self, comm=None) -> dict[str, Any]:
        """Sum the partial sums over ``comm`` (a :class:`hpc_fcn.parallel.comm.Communicator`; None =
        serial) and return the scores (same on every rank)."""
        counts, blocks, ranks = self._reduced(comm)
        nc, L = len(self.channels), self.n_leads
        out = {k: np.full((L, nc), np.nan) for k in ("rmse", "acc", "crps", "spread", "ssr", "ssr_corrected",
                                                      "mae_control", "rmse_control")}
        for lead, (n, block) in enumerate(zip(counts, blocks)):
            if not n:
                continue
            wt = block[:, :1]
            s = {k: block[:, 1 + i * nc:1 + (i + 1) * nc] for i, k in enumerate(self._SUMS)}
            out["rmse"][lead] = np.sqrt(s["se"] / wt).mean(axis=0)
            with np.errstate(invalid="ignore", divide="ignore"):  # a zero anomaly (climatology) has no ACC
                out["acc"][lead] = (s["fo"] / np.sqrt(s["ff"] * s["oo"])).mean(axis=0)
            out["crps"][lead] = (s["crps"] / wt).mean(axis=0)
            for k, v in pooled_spread_skill(s["var"] / wt, s["se"] / wt, self.n_members).items():
                out[k][lead] = v
            if self.control_member is not None:
                out["mae_control"][lead] = (s["ae_ctl"] / wt).mean(axis=0)
                out["rmse_control"][lead] = np.sqrt(s["se_ctl"] / wt).mean(axis=0)
        out["rank_hist"] = np.rint(ranks).astype(np.int64)
        out["count"] = np.asarray(counts, dtype=np.int64)
        out["channels"] = list(self.channels)
        return out


# -- probability products: exceedance probabilities, quantiles and their scores -----------------------
QUANTILE_METHOD = "linear"  # numpy.quantile's default (Hyndman & Fan type 7): x_(k) + f (x_(k+1) - x_(k))


def exceedance_probability(members: Any, thresholds: Sequence[float], above: bool) -> np.ndarray:
    """The fraction of members (axis 0) strictly above (``above``) or below each threshold: shape
    (T,) + members.shape[1:], float64 values k / M."""
    m = np.asarray(members)
    t = np.asarray(thresholds, dtype=m.dtype if m.dtype.kind == "f" else np.float64)
    out = np.empty((len(t),) + m.shape[1:], np.float64)
    for i, th in enumerate(t):
        hits = (m > th) if above else (m < th)
        out[i] = hits.sum(axis=0, dtype=np.int32) / m.shape[0]
    return out


def sorted_quantiles(sorted_members: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """Quantiles (Q,) + shape[1:] of members already sorted along axis 0, by numpy.quantile's default method
    (``QUANTILE_METHOD``): at h = (M - 1) q, x_(floor h) + (h - floor h) (x_(floor h + 1) - x_(floor h)), with
    NumPy's own interpolation formula in float64, stored in the input's dtype (float32 members: np.quantile's
    float64 value rounded to float32)."""
    s = np.asarray(sorted_members)
    M = s.shape[0]
    out = np.empty((len(levels),) + s.shape[1:], np.result_type(s.dtype, np.float32))
    for i, q in enumerate(levels):
        h = (M - 1) * float(q)
        lo = min(int(math.floor(h)), M - 1)
        hi = min(lo + 1, M - 1)
        t = h - lo
        a, b = s[lo].astype(np.float64), s[hi].astype(np.float64)  # as NumPy: in float64, then stored
        diff = b - a
        # numpy's _lerp: a + t (b - a), computed from the upper end when t >= 0.5
        out[i] = (b - diff * (1 - t)) if t >= 0.5 else (a + diff * t)
    return out


def ensemble_quantiles(members: Any, levels: Sequence[float]) -> np.ndarray:
    """Quantiles of the members (axis 0) at ``levels``, as ``np.quantile(members, levels, axis=0)``."""
    return sorted_quantiles(np.sort(np.asarray(members), axis=0), levels)


def pinball_loss(quantile: Any, truth: Any, level: float) -> np.ndarray:
    """The quantile (pinball) loss of the forecast ``quantile`` at ``level``: (o - Q) (level - [o < Q])."""
    q, o = _np(quantile), _np(truth)
    d = o - q
    return d * (level - (d < 0))


def reliability_counts(probability: np.ndarray, event: np.ndarray, row_weights: Any,
                       n_members: int) -> np.ndarray:
    """One forecast's reliability table over the last two axes: (..., M + 1, 3) of [weight, weight x observed,
    grid points] per forecast probability k / M (k = 0..M); ``probability`` and ``event`` share their shape."""
    p, o, w = np.asarray(probability), np.asarray(event, np.float64), _np(row_weights)
    lead = p.shape[:-2]
    n = int(np.prod(lead))
    k = np.rint(p.reshape(n, -1) * n_members).astype(np.int64)  # p is k / M exactly up to rounding
    bins = k + (n_members + 1) * np.arange(n)[:, None]
    ww = np.broadcast_to(w[:, None], p.shape[-2:]).reshape(-1)
    ww = np.broadcast_to(ww, (n, ww.size))
    size = n * (n_members + 1)
    out = np.stack([np.bincount(bins.ravel(), weights=ww.ravel(), minlength=size),
                    np.bincount(bins.ravel(), weights=(ww * o.reshape(n, -1)).ravel(), minlength=size),
                    np.bincount(bins.ravel(), minlength=size).astype(np.float64)], axis=-1)
    return out.reshape(lead + (n_members + 1, 3))


class ProbabilityAccumulator(_ForecastSums):
    """Per-lead Brier scores, reliability tables and pinball losses, accumulated over initial times and ranks
    like :class:`ScoreAccumulator` (same rules for ``add`` and ``reduce``).

    ``events``: names of the T threshold events (e.g. 'u10>15'); ``channels``: the C quantile channels;
    ``levels``: the Q quantile levels. Scores after the reduction: brier (n_leads, T), the latitude-weighted
    mean of (p - o)^2 per forecast averaged over initial times; pinball (n_leads, Q, C) likewise; reliability
    (n_leads, T, M + 1, 3): [weight, weighted observed, grid points] per forecast probability k / M.
    """
    TOTALS = "_rel"

    def __init__(self, events: Sequence[str], channels: Sequence[str], levels: Sequence[float], n_leads: int,
                 n_members: int):
        if n_leads < 1 or n_members < 1:
            raise ValueError(f"need n_leads >= 1 and n_members >= 1, got {n_leads}, {n_members}")
        self.events, self.channels = list(events), list(channels)
        self.levels = [float(q) for q in levels]
        self.n_leads, self.n_members = n_leads, n_members
        self._rows: list[list[np.ndarray]] = [[] for _ in range(n_leads)]
        self._rel = np.zeros((n_leads, len(self.events), n_members + 1, 3), np.float64)
        self._width = 1 + len(self.events) + len(self.levels) * len(self.channels)

    def add(self, lead_index: int, probability: np.ndarray, event: np.ndarray, quantiles: np.ndarray,
            truth: np.ndarray, row_weights: Any) -> None:
        """One forecast's window: ``probability`` and ``event`` (T, r, c) (event: the truth's 0/1), ``quantiles``
        (Q, C, r, c) and their channels' ``truth`` (C, r, c), ``row_weights`` (r,)."""
        T, Q, C = len(self.events), len(self.levels), len(self.channels)
        w = _np(row_weights)
        if not 0 <= lead_index < self.n_leads:
            raise ValueError(f"lead_index {lead_index} out of range 0..{self.n_leads - 1}")
        if probability.shape[:1] != (T,) or event.shape != probability.shape or quantiles.shape[:2] != (Q, C):
            raise ValueError(f"probability {probability.shape}, event {event.shape} and quantiles "
                             f"{quantiles.shape} do not fit {T} events, {Q} levels and {C} channels")
        r, c = truth.shape[-2:]
        brier = weighted_sum((_np(probability) - np.asarray(event, np.float64)) ** 2, w)
        pin = np.stack([weighted_sum(pinball_loss(quantiles[i], truth, q), w) for i, q in enumerate(self.levels)]) \
            if Q else np.zeros((0, C))
        self._rows[lead_index].append(np.concatenate([[weight_total(w, c)], brier, pin.reshape(-1)]))
        if T:
            self._rel[lead_index] += reliability_counts(probability, event, w, self.n_members)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays (a resume snapshot's npz entries)."""
        out = {"events": np.array(self.events, dtype=str), "channels": np.array(self.channels, dtype=str),
               "levels": np.array(self.levels, np.float64),
               "shape": np.array([self.n_leads, self.n_members], np.int64), "reliability": self._rel}
        return out | self._rows_arrays()

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> "ProbabilityAccumulator":
        """The accumulator :meth:`to_arrays` describes (ValueError if the arrays do not fit together)."""
        n_leads, n_members = (int(v) for v in arrays["shape"])
        out = cls([str(e) for e in arrays["events"]], [str(c) for c in arrays["channels"]],
                  [float(q) for q in arrays["levels"]], n_leads, n_members)
        out._load(arrays, "reliability", "reliability table")
        return out

    def reduce(self, comm=None) -> dict[str, Any]:
        """The scores, summed over ``comm`` (collective; None = serial), the same on every rank."""
        counts, blocks, reliability = self._reduced(comm)
        T, Q, C, L = len(self.events), len(self.levels), len(self.channels), self.n_leads
        brier, pinball = np.full((L, T), np.nan), np.full((L, Q, C), np.nan)
        for lead, (n, block) in enumerate(zip(counts, blocks)):
            if not n:
                continue
            wt = block[:, :1]
            with np.errstate(invalid="ignore", divide="ignore"):  # zeroed sums (a snapshot's other ranks)
                brier[lead] = (block[:, 1:1 + T] / wt).mean(axis=0)
                pinball[lead] = (block[:, 1 + T:] / wt).mean(axis=0).reshape(Q, C)
        return {"brier": brier, "pinball": pinball, "reliability": reliability,
                "count": np.asarray(counts, np.int64), "events": list(self.events),
                "channels": list(self.channels), "levels": list(self.levels), "n_members": self.n_members}

"""Cost of the probability products per output step, beside the ensemble mean and spread that every run computes.

    python bench/products.py [--grid 721 1440] [--members 16] [--channels 2] [--thresholds 2]
                             [--quantiles 0.1 0.5 0.9] [--reps 3] [--smoke]

One process holds all members of the whole grid (what one rank holds after the members exchange when it is the
only rank; with E ranks on the ensemble axis each computes on 1/E of the rows). Times, per output step, the code
the app runs: mean and spread (``ensemble_statistics``, float32 torch, the device path on the CPU), the threshold
probabilities and the quantiles (``ProbabilityProducts.compute``), and the scores of both against a truth (the
ensemble scores' ``ScoreAccumulator.add`` and the products' ``ProbabilityAccumulator.add``). Prints one table:
seconds per output step (best of --reps; wall and this process's CPU time) and the ratios to mean + spread.
``--device cuda``: mean + spread on the GPU, as the app computes them there (the products run on the host).
``--smoke``: a tiny grid, one rep.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def best_of(fn, reps: int, sync=lambda: None) -> tuple[float, float]:
    """(wall, CPU) seconds of the fastest of ``reps`` calls after one warm-up call; CPU: this process's, which a
    shared machine's other load inflates less than the wall time."""
    fn()
    sync()
    best = (float("inf"), float("inf"))
    for _ in range(reps):
        t, c = time.perf_counter(), time.process_time()
        fn()
        sync()
        best = min(best, (time.perf_counter() - t, time.process_time() - c))
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", type=int, nargs=2, default=[721, 1440])
    ap.add_argument("--members", type=int, default=16)
    ap.add_argument("--channels", type=int, default=2, help="channels with thresholds and quantiles")
    ap.add_argument("--thresholds", type=int, default=2, help="thresholds per channel (above)")
    ap.add_argument("--quantiles", type=float, nargs="+", default=[0.1, 0.5, 0.9])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="where mean + spread run (the app's device), e.g. cuda")
    ap.add_argument("--smoke", action="store_true", help="a 16 x 32 grid, 4 members, one rep (tests)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.grid, args.members, args.reps = [16, 32], 4, 1

    import torch

    from hpc_fcn.ensemble.config import ProductsConfig
    from hpc_fcn.ensemble.probabilities import ProbabilityProducts
    from hpc_fcn.ensemble.products import ensemble_statistics
    from hpc_fcn.metrics import ProbabilityAccumulator, ScoreAccumulator, lat_weights

    class Serial:  # the ensemble axis of one rank: ensemble_statistics reduces nothing
        size = 1

    M, C, (H, W) = args.members, args.channels, args.grid
    names = [f"c{i}" for i in range(C)]
    rng = np.random.default_rng(0)
    base = rng.standard_normal((C, H, W), dtype=np.float32) * 5 + 280
    members = base + rng.standard_normal((M, C, H, W), dtype=np.float32)
    truth = base + rng.standard_normal((C, H, W), dtype=np.float32)
    thresholds = {n: {"above": [278.0 + 2 * k for k in range(args.thresholds)]} for n in names}
    products = ProbabilityProducts(ProductsConfig(probabilities=thresholds, quantiles=list(args.quantiles)),
                                   names, names, M)
    only_prob = ProbabilityProducts(ProductsConfig(probabilities=thresholds), names, names, M)
    only_quant = ProbabilityProducts(ProductsConfig(quantiles=list(args.quantiles)), names, names, M)
    x = torch.from_numpy(members).to(args.device)
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    w = lat_weights(np.linspace(90, -90, H))
    fields = products.compute(members)
    clim = base

    def scores():
        ScoreAccumulator(names, 1, M).add(0, members, truth, clim, w)

    def prob_scores():
        acc = ProbabilityAccumulator(products.event_names(), names, products.levels, 1, M)
        acc.add(0, fields["probability"], products.observed(truth), fields["quantile"], truth, w)

    torch.set_num_threads(1)
    rows = [(f"mean + spread (ensemble_statistics, {args.device})",
             best_of(lambda: ensemble_statistics(x, M, Serial()), args.reps, sync)),
            (f"probabilities ({C} x {args.thresholds} thresholds)",
             best_of(lambda: only_prob.compute(members), args.reps)),
            (f"quantiles ({C} x {len(args.quantiles)} levels)",
             best_of(lambda: only_quant.compute(members), args.reps)),
            ("probabilities + quantiles", best_of(lambda: products.compute(members), args.reps)),
            ("ensemble scores (ScoreAccumulator.add)", best_of(scores, args.reps)),
            ("product scores (Brier, reliability, pinball)", best_of(prob_scores, args.reps))]
    base_s, base_c = rows[0][1]
    print(f"Probability products per output step: {H} x {W} grid, {M} members, {C} channels, one process, "
          f"best of {args.reps}")
    print()
    print("| part | s per output step | x mean + spread | CPU s | x mean + spread (CPU) |")
    print("|---|---|---|---|---|")
    for name, (s, c) in rows:
        print(f"| {name} | {s:.4f} | {s / base_s:.2f} | {c:.4f} | {c / max(base_c, 1e-9):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

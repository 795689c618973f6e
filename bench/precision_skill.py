"""Skill cost of each precision and quantisation: the built-in model's test forecasts against fp32.

    python bench/precision_skill.py [--inits 8] [--days 1 5 10] [--variants fp32 tf32 bf16 int8 bf16+int8]

Forecasts from ``--inits`` initial times spread over the test split, run as one batch per variant;
RMSE (physical units) and uncentred ACC (against the dataset climatology, area-weighted rows) per
channel at each lead, averaged over initial times; prints the fp32 scores and every variant's
difference from fp32 as a markdown table. ``tf32-emulated`` runs fp32 with the multiplicands of every
GEMM and convolution rounded to TF32 (a CPU estimate of the GPU's ``tf32`` precision).
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpc_fcn.accel import AccelError  # noqa: E402
from hpc_fcn.forecaster import Forecaster  # noqa: E402
from hpc_fcn.metrics import acc, lat_weights, rmse  # noqa: E402
from hpc_fcn.model import AFNONet, load_checkpoint  # noqa: E402
from hpc_fcn.schema import DataConfig, InferenceConfig  # noqa: E402
from hpc_fcn.setup import rank_device  # noqa: E402

BUILTIN_CKPT = Path(__file__).resolve().parents[1] / "hpc_fcn" / "assets" / "builtin_model.ckpt"
VARIANTS = {"fp32": {}, "tf32": dict(precision="tf32"), "bf16": dict(precision="bf16"), "fp16": dict(precision="fp16"),
            "int8": dict(quantize="int8"), "bf16+int8": dict(precision="bf16", quantize="int8"),
            "bf16+fp8": dict(precision="bf16", quantize="fp8"), "tf32-emulated": {}}


def round_to_tf32(t: torch.Tensor) -> torch.Tensor:
    """fp32 values rounded to TF32's 10-bit mantissa (to nearest, ties to even), still stored as fp32."""
    i = t.contiguous().view(torch.int32)
    i = (i + 0xFFF + ((i >> 13) & 1)) & ~0x1FFF
    return i.view(torch.float32)


class Tf32Emulation(torch.overrides.TorchFunctionMode):
    """TF32 tensor-core numerics on the CPU: the multiplicands of every GEMM and convolution rounded to
    TF32, products accumulated and biases added in fp32 (what cuBLAS/cuDNN do with TF32 allowed)."""
    F = torch.nn.functional
    OPERANDS = {F.linear: (0, 1), F.conv2d: (0, 1), torch.addmm: (1, 2), torch.baddbmm: (1, 2),
                torch.matmul: (0, 1), torch.mm: (0, 1), torch.bmm: (0, 1), torch.Tensor.matmul: (0, 1),
                torch.Tensor.__matmul__: (0, 1)}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        idx = self.OPERANDS.get(func)
        if func is torch.einsum:
            idx = tuple(range(1, len(args)))
        if idx:
            args = tuple(round_to_tf32(a) if i in idx and isinstance(a, torch.Tensor) and a.dtype == torch.float32
                         else a for i, a in enumerate(args))
        return func(*args, **kwargs)


def load_model(in_chans: int, img_size) -> tuple[AFNONet, str]:
    """The built-in model when its checkpoint is there and fits the dataset's grid and channels, else random
    weights of the built-in size on the dataset's grid (e.g. a small synthetic dataset given with --data)."""
    why = "built-in checkpoint missing"
    if BUILTIN_CKPT.is_file():
        net = load_checkpoint(BUILTIN_CKPT).eval()
        if tuple(net.img_size) == tuple(img_size) and net.in_chans == in_chans:
            return net, "built-in trained model"
        why = (f"built-in checkpoint is for {net.in_chans} channels on {tuple(net.img_size)}, the dataset has "
               f"{in_chans} on {tuple(img_size)}")
    torch.manual_seed(0)
    net = AFNONet(img_size=img_size, patch_size=4, in_chans=in_chans, out_chans=in_chans, embed_dim=128, depth=6)
    return net.eval(), f"RANDOM weights ({why}): differences only, skill is meaningless"


def forecast(net, cfg: InferenceConfig, x0: torch.Tensor, leads: list[int]) -> dict[int, np.ndarray]:
    fc = Forecaster(net, cfg)
    out: dict[int, np.ndarray] = {}

    def keep(k: int, state: torch.Tensor) -> None:
        if k in leads:
            out[k] = state.cpu().numpy()
    fc.rollout(x0, max(leads), callback=keep)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inits", type=int, default=8)
    ap.add_argument("--days", type=int, nargs="+", default=[1, 5, 10])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--data", default="builtin", help="dataset root, or 'builtin'")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    a = ap.parse_args(argv)

    from hpc_fcn.data.era5 import open_split
    root = a.data
    if root == "builtin":
        from hpc_fcn.data.builtin import ensure_builtin
        root = str(ensure_builtin())
    ds = open_split(DataConfig(root=root), "out_of_sample")
    steps = [d * 24 // ds.dt_hours for d in a.days]
    last = max(steps)
    if len(ds) <= last:
        raise SystemExit(f"the test split has {len(ds)} samples, fewer than the {last} steps of {max(a.days)} days")
    inits = np.linspace(0, len(ds) - 1 - last, a.inits).astype(int)
    device = rank_device(a.device)
    net, origin = load_model(len(ds.channels), (ds.nlat, ds.nlon))
    net = net.to(device)
    x0 = torch.from_numpy(np.stack([ds.read(int(i), normalise=True) for i in inits])).to(device)
    truth = {k: np.stack([ds.read(int(i) + k) for i in inits]) for k in steps}
    clim = ds.climatology()
    w = lat_weights(ds.lat)

    scores: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
    for name in a.variants:
        cfg = InferenceConfig(device=device.type, members_per_pass=len(inits), **VARIANTS[name])
        try:
            with Tf32Emulation() if name == "tf32-emulated" else contextlib.nullcontext():
                states = forecast(net, cfg, x0, steps)
        except AccelError as exc:
            print(f"<!-- skip {name}: {exc} -->")
            continue
        scores[name] = {}
        for k in steps:
            f = ds.denormalise(states[k])
            scores[name][k] = (rmse(f, truth[k], w).mean(axis=0), acc(f, truth[k], clim, w).mean(axis=0))

    chans = list(ds.channels)
    print(f"# skill of precision/quantisation variants: {origin}; {len(inits)} initial times from the test split; "
          f"device {device}")
    print()
    print("| variant | lead | " + " | ".join(f"RMSE {c}" for c in chans) + " | " + " | ".join(f"ACC {c}" for c in chans) + " |")
    print("|---|---|" + "---|" * (2 * len(chans)))
    base = scores.get("fp32")
    for name, by_lead in scores.items():
        for d, k in zip(a.days, steps):
            r, c = by_lead[k]
            if name == "fp32" or base is None:
                cells = [f"{v:.4g}" for v in r] + [f"{v:.4f}" for v in c]
            else:
                r0, c0 = base[k]
                cells = [f"{v - v0:+.2e}" for v, v0 in zip(r, r0)] + [f"{v - v0:+.2e}" for v, v0 in zip(c, c0)]
            print(f"| {name}{'' if name == 'fp32' else ' - fp32'} | day {d} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

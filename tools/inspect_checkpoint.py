#!/usr/bin/env python
"""Show what a FourCastNet/AFNO checkpoint holds: layout, entries, tensors, size and the model it implies.

Recognises the published layout (``model_state`` of a DDP model, keys prefixed ``module.``), hpc_fcn's own
(the same plus ``model_config``), plain state dicts, and PrecipNet (``backbone.*`` + ``conv.*``).

    python tools/inspect_checkpoint.py /path/to/FourCastNet/backbone.ckpt
    python tools/inspect_checkpoint.py runs/train/checkpoints/last.ckpt --json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

try:
    from hpc_fcn.model import CheckpointError, extract_state_dict, infer_model_config
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from hpc_fcn.model import CheckpointError, extract_state_dict, infer_model_config

# The released backbone (docs: reference/fourcastnet.md); precip.ckpt is the same with one output channel.
PRODUCTION = dict(img_size=[720, 1440], patch_size=[8, 8], in_chans=20, out_chans=20, embed_dim=768, depth=12,
                  mlp_ratio=4.0, num_blocks=8)
MODEL_KEYS = ("model_state", "state_dict", "model")


def load(path: str | Path, unsafe: bool = False) -> Mapping:
    """Read a checkpoint on the CPU; ``unsafe`` allows arbitrary pickles (only for files you trust)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=not unsafe)
    except Exception as exc:  # noqa: BLE001 - one message whatever the unpickler says
        hint = "" if unsafe else " (if you trust the file, retry with --unsafe to allow arbitrary pickled objects)"
        raise CheckpointError(f"{path} could not be read: {type(exc).__name__}: {str(exc).splitlines()[0]}{hint}")
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"{path} holds a {type(ckpt).__name__}, not a dict of tensors or entries")
    return ckpt


def _summary(value: Any) -> str:
    """One line about a top-level entry."""
    if isinstance(value, torch.Tensor):
        return f"tensor {list(value.shape)} {str(value.dtype).replace('torch.', '')}"
    if isinstance(value, Mapping):
        return f"dict with {len(value)} entries"
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__} of {len(value)}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def layout_of(ckpt: Mapping) -> tuple[str, Mapping]:
    """('published' | 'hpc_fcn' | 'nested' | 'state_dict', the mapping that holds the weights)."""
    for key in MODEL_KEYS:
        if isinstance(ckpt.get(key), Mapping):
            inner = ckpt[key]
            if key == "model_state" and "model_config" in ckpt:
                return "hpc_fcn", inner
            if key == "model_state" and inner and all(k.startswith("module.") for k in inner):
                return "published", inner
            return f"nested under '{key}'", inner
    return "state_dict", ckpt


def _optimizer(value: Any) -> dict | None:
    if not isinstance(value, Mapping) or not value:
        return None
    groups = value.get("param_groups") or []
    out = {"params_with_state": len(value.get("state") or {}), "param_groups": len(groups)}
    lrs = [g.get("lr") for g in groups if isinstance(g, Mapping) and "lr" in g]
    if lrs:
        out["lr"] = lrs
    return out


def describe(ckpt: Mapping) -> dict:
    """Everything the report shows, as plain JSON-able data."""
    layout, raw = layout_of(ckpt)
    state = extract_state_dict(ckpt)
    prefixed = bool(raw) and all(str(k).startswith("module.") for k in raw if isinstance(raw[k], torch.Tensor))
    keys = [{"name": k, "shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", ""), "numel": v.numel()}
            for k, v in state.items()]
    precip = any(k.startswith("backbone.") for k in state) and any(k.startswith("conv.") for k in state)
    hint = ckpt.get("model_config") if isinstance(ckpt.get("model_config"), Mapping) else None
    try:
        config: dict | None = infer_model_config(state, hint)
        config_error = None
    except CheckpointError as exc:
        config, config_error = None, str(exc)
    if config is not None:
        config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items()}
    entries = {str(k): _summary(v) for k, v in ckpt.items()} if layout != "state_dict" else {}
    out = {
        "layout": layout,
        "module_prefix": prefixed,
        "model": "PrecipNet (backbone + conv)" if precip else ("AFNONet" if config else "unknown"),
        "entries": entries,
        "iters": ckpt.get("iters") if layout != "state_dict" else None,
        "epoch": ckpt.get("epoch") if layout != "state_dict" else None,
        "optimizer_state": _optimizer(ckpt.get("optimizer_state_dict", ckpt.get("optimizer"))),
        "num_tensors": len(keys),
        "parameters": sum(k["numel"] for k in keys),
        "bytes": sum(v.numel() * v.element_size() for v in state.values()),
        "dtypes": sorted({k["dtype"] for k in keys}),
        "config": config,
        "config_error": config_error,
        "production": bool(config) and all(config.get(k) == v for k, v in PRODUCTION.items()
                                           if not (precip and k == "out_chans")),
        "keys": keys,
    }
    return out


def render(info: dict, show_keys: bool = True) -> str:
    """The human-readable report."""
    lines = [f"layout      : {info['layout']}" + ("  (keys prefixed 'module.')" if info["module_prefix"] else ""),
             f"model       : {info['model']}"]
    if info["entries"]:
        lines.append("entries     :")
        lines += [f"  {k:<24} {v}" for k, v in info["entries"].items()]
    if info["iters"] is not None or info["epoch"] is not None:
        lines.append(f"iters/epoch : {info['iters']} / {info['epoch']}")
    opt = info["optimizer_state"]
    lines.append("optimizer   : " + (f"present ({', '.join(f'{k} {v}' for k, v in opt.items())})" if opt else "absent"))
    lines.append(f"tensors     : {info['num_tensors']}  ({', '.join(info['dtypes'])})")
    lines.append(f"parameters  : {info['parameters']:,}  ({info['bytes'] / 1e6:.1f} MB)")
    if info["config"]:
        lines.append("inferred config:")
        lines += [f"  {k:<28} {v}" for k, v in info["config"].items()]
        if info["production"]:
            lines.append("  -> the released FourCastNet production configuration (720 x 1440, 20 channels)")
    else:
        lines.append(f"inferred config: none ({info['config_error']})")
    if show_keys:
        lines.append("keys:")
        width = max((len(k["name"]) for k in info["keys"]), default=0)
        lines += [f"  {k['name']:<{width}}  {str(k['shape']):<22} {k['dtype']}" for k in info["keys"]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Inspect a FourCastNet/AFNO checkpoint (published, hpc_fcn or plain).")
    p.add_argument("path", help="checkpoint file (.ckpt, .pt, .tar)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the text report")
    p.add_argument("--no-keys", action="store_true", help="leave out the per-tensor listing")
    p.add_argument("--unsafe", action="store_true",
                   help="allow arbitrary pickled objects when loading (only for files you trust)")
    args = p.parse_args(argv)
    try:
        info = describe(load(args.path, unsafe=args.unsafe))
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.no_keys:
        info.pop("keys") if args.json else None
    print(json.dumps(info, indent=1) if args.json else render(info, show_keys=not args.no_keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())

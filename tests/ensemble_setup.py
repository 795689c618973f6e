"""A tiny dataset and config for ensemble tests (three channels, a 32 x 64 model grid, patch 4)."""
from pathlib import Path

from helpers_layout import write_layout

from hpc_fcn.config import from_dict
from hpc_fcn.ensemble.config import EnsembleConfig


def tiny_dataset(root: Path) -> Path:
    write_layout(root, splits={"train": [2000], "test": [2001], "out_of_sample": [2002]}, steps=40,
                 channels=["u", "v", "z"], rows=33, cols=64)
    return root


def tiny_config(data_root, outdir, overrides=()) -> EnsembleConfig:
    base = {"model": {"img_size": [32, 64], "patch_size": 4, "embed_dim": 16, "depth": 1, "num_blocks": 4, "seed": 3},
            "data": {"root": str(data_root)},
            "initial_conditions": {"split": "test", "every": "24h", "count": 2},
            "ensemble": {"members": 5, "control": True, "seed": 11},
            "forecast": {"lead_time": "2d", "output_every": 2},
            "output": {"dir": str(outdir), "members": True},
            "progress": False}
    return from_dict(EnsembleConfig, base, list(overrides))

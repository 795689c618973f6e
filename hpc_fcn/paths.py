"""Start-up checks that every file a config points at exists, so a job fails in seconds, not at step one.

``check_paths(cfg)`` raises :class:`~hpc_fcn.config.ConfigError` naming the config key whose path is
missing (``model.checkpoint``, ``data.root``, the split directory, the statistics under
``data.stats_dir``) and saying what belongs there. The special values ``builtin`` and null are skipped.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from .config import fail
from .data.era5 import SPLITS, STATS_FILES  # the reader needs exactly these
from .schema import check_split

SKIP = ("builtin", None)
_PLACEHOLDER = "/path/to/"


def _placeholder(value: str) -> str:
    """An extra hint when the value is still the template's placeholder."""
    return " (it is still the template's placeholder: edit the config or pass an override)" \
        if value.startswith(_PLACEHOLDER) else ""


def splits_used(cfg: Any) -> list[tuple[str, str]]:
    """(config key that chose it, split) of each data split an application config reads: the ensemble's
    initial-condition split, or train (+ the validation split)."""
    if hasattr(cfg, "initial_conditions"):
        return [("initial_conditions.split", cfg.initial_conditions.split)]
    if hasattr(cfg, "phases"):
        validation = getattr(cfg, "validation", None)
        used = [("data.root", "train")]
        return used + [("validation.split", validation.split)] if validation is not None and validation.enabled \
            else used
    return []


def check_checkpoint(value: str | None, key: str = "model.checkpoint") -> None:
    """The checkpoint file must exist (skipped for ``builtin`` and null)."""
    if value in SKIP:
        return
    path = Path(value).expanduser()
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        fail(key, f"{value} {what}{_placeholder(value)}; put the path of a checkpoint file there (e.g. the released "
                  "FourCastNet backbone.ckpt; see tools/inspect_checkpoint.py), 'builtin', or null for random weights")


def check_data(data: Any, splits: Iterable[tuple[str, str]], prefix: str = "data") -> None:
    """``data.root``, the folders of ``splits`` ((config key, split) pairs) and the statistics files must exist
    (skipped for ``builtin``)."""
    if data.root in SKIP:
        return
    root = Path(data.root).expanduser()
    if not root.is_dir():
        fail(f"{prefix}.root", f"{data.root} is not a directory{_placeholder(data.root)}; put the folder of the "
                               "FourCastNet-layout data there (train/, test/, out_of_sample/, stats/; "
                               "python -m hpc_fcn.data.convert writes it)")
    for key, split in splits:
        check_split(split, key)
        name = data.split_dir(split)
        folder = root / name
        convert = f"python -m hpc_fcn.data.convert --output {root} --split {name}"
        if not folder.is_dir():
            fail(key, f"{folder} does not exist: split {split} is read from {name}/ under data.root; convert its "
                      f"years into it ({convert}) or choose another of {', '.join(SPLITS)}")
        if not any(p.stem.isdigit() and len(p.stem) == 4 for p in folder.glob("*.h5")):
            fail(key, f"{folder} holds no year files (YYYY.h5); convert ERA5 into it with {convert}")
    stats = root / data.stats_dir
    missing = [name for name in STATS_FILES if not (stats / name).is_file()]
    if missing:
        fail(f"{prefix}.stats_dir", f"{', '.join(missing)} missing in {stats}; put the normalisation statistics "
                                    f"({', '.join(STATS_FILES)}) there, e.g. with python -m hpc_fcn.data.convert "
                                    f"--output {root} --stats-from {data.split_dir('train')}")


def check_paths(cfg: Any) -> None:
    """Check the checkpoint, data root, split directories and statistics an application config points at."""
    model = getattr(cfg, "model", None)
    if model is not None:
        check_checkpoint(model.checkpoint)
    data = getattr(cfg, "data", None)
    if data is not None:
        check_data(data, splits_used(cfg))


__all__ = ["check_paths", "check_checkpoint", "check_data", "splits_used", "STATS_FILES"]

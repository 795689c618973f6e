"""The identity of an ensemble run: everything that changes its results, stored to refuse a mismatched resume.

The identity is a flat mapping of dotted names: every field of the config schema except those a section
declares in its ``NOT_RESULTS`` (each with the reason it cannot change a result), plus the checkpoint's
SHA-256, the resolved data root, the initial times and the code version. It is stored in the resume
marker and, with its short hash ``run_id``, in every output file's attributes; resuming compares it field
by field.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import subprocess
import typing
from pathlib import Path

from .. import __version__
from ..runtime import UserError


def schema_fields(cls: type, prefix: str = "") -> list[tuple[str, type]]:
    """(dotted name, class that declares it) of every leaf field of the config dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += schema_fields(tp, f"{name}.")
        else:
            out.append((name, cls))
    return out


def exemption(name: str, owner: type) -> str | None:
    """Why the field ``name`` (declared by ``owner``) cannot change results, or None when it can."""
    return getattr(owner, "NOT_RESULTS", {}).get(name.rsplit(".", 1)[-1])


def result_keys(cls: type) -> list[str]:
    """The dotted config keys whose values change the numbers a run of schema ``cls`` writes."""
    return [name for name, owner in schema_fields(cls) if exemption(name, owner) is None]


@functools.lru_cache(maxsize=8)
def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The package version and, in a git checkout, its commit."""
    repo = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+g{commit[:12]}" if commit else __version__


def _get(cfg, dotted: str):
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _plain(v):
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in sorted(v.items())}
    return v


def run_identity(cfg, data_root: Path, init_times, lead_steps: int, checkpoint_file: Path | None) -> dict:
    """The identity of the run ``cfg`` (model and layout as resolved) over ``init_times``."""
    ident = {k: _plain(_get(cfg, k)) for k in result_keys(type(cfg))}
    ident["model.checkpoint_sha256"] = file_sha256(str(checkpoint_file)) if checkpoint_file else None
    ident["model.seed"] = cfg.model.seed if checkpoint_file is None else None  # random weights only
    ident["data.root_path"] = str(Path(data_root).resolve())
    ident["initial_conditions.init_times"] = [str(t) for t in init_times]
    ident["forecast.lead_steps"] = int(lead_steps)
    ident["code.version"] = code_version()
    return ident


def run_id(identity: dict) -> str:
    """A short hash of ``identity``, the same on every file of one run."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _short(v) -> str:
    s = json.dumps(v)
    return s if len(s) <= 40 else s[:37] + "..."


def differences(stored: dict | None, current: dict) -> list[str]:
    """``key: stored there, current here`` for each field that differs."""
    if not stored:
        return ["run identity: none recorded (written by an older version)"]
    keys = sorted(set(stored) | set(current))
    return [f"{k} {_short(stored.get(k))} -> {_short(current.get(k))}" for k in keys if stored.get(k) != current.get(k)]


def check_resume(stored: dict | None, current: dict, where: Path) -> None:
    """Refuse to resume ``where`` unless it was made by a run with ``current``'s identity."""
    diff = differences(stored, current)
    if diff:
        raise UserError(f"cannot resume {where}: it holds a different run ({'; '.join(diff)}); run with the same "
                        "settings, or resume=false (or another output.dir) to start again")

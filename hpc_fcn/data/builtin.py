"""Where the built-in synthetic dataset lives, and generating it on first use.

The root is ``$HPC_FCN_DATA`` if set, else ``~/.cache/hpc_fcn/builtin-sw-v<version>``; the version
changes whenever the generator's output does, so a stale cache is never mistaken for the current one.
"""
from __future__ import annotations

import contextlib
import fcntl
import time
from pathlib import Path
from typing import Callable

from .synth import BUILTIN_ENV_VAR as ENV_VAR
from .synth import builtin_options, builtin_root, generate


def is_complete(root: Path) -> bool:
    """The generator renames its output into place last, so metadata.json marks a finished dataset."""
    return (root / "metadata.json").is_file() and (root / "stats" / "time_means.npy").is_file()


@contextlib.contextmanager
def dataset_lock(root: Path, log: Callable[[str], None]):
    """Hold the lock of the dataset at ``root``: one generator per machine; others wait for the first."""
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another process that is generating the built-in dataset into {root}")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _generate_if_missing(root: Path, log: Callable[[str], None]) -> None:
    if is_complete(root):
        return
    with dataset_lock(root, log):
        if not is_complete(root):
            _generate(root, log)


def _generate(root: Path, log: Callable[[str], None]) -> None:
    if root.exists() and any(root.iterdir()):
        raise RuntimeError(f"{root} exists but holds no complete dataset; remove it (or unset ${ENV_VAR}) "
                           f"and run again")
    log(f"generating the built-in dataset into {root} (first use; a few minutes)")
    try:
        generate(root, builtin_options(), progress=True)
    except OSError:
        if not is_complete(root):  # another process may have finished the same dataset first
            raise


def ensure_builtin(comm=None, log: Callable[[str], None] = print) -> Path:
    """Return the built-in dataset's root, generating it first if missing.

    Under MPI only rank 0 of ``comm`` generates; the others wait for its verdict, and a failure on
    rank 0 is raised on every rank, so no rank is left waiting.
    """
    root = builtin_root()
    if comm is None or comm.Get_size() == 1:
        _generate_if_missing(root, log)
        return root
    error = None
    if comm.Get_rank() == 0:
        try:
            _generate_if_missing(root, log)
        except Exception as exc:  # noqa: BLE001 - reported on every rank below
            error = f"{type(exc).__name__}: {exc}"
    # Sleep while rank 0 works: a blocking collective would busy-poll and take its cores.
    req = comm.Ibarrier()
    while not req.Test():
        time.sleep(0.05)
    error = comm.bcast(error, root=0)
    if error is not None:
        raise RuntimeError(f"generating the built-in dataset on rank 0 failed: {error}")
    return root

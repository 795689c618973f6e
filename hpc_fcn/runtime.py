"""Process-level plumbing for the MPI programs: rank-prefixed logging, threads, and clean failure.

Errors that every rank detects alike (bad config, impossible layout) are printed once by rank 0 and
every rank exits with status 2. Any other exception is printed by the rank that raised it and the
whole job is aborted, so no rank is left waiting in a collective.
"""
from __future__ import annotations

import errno
import logging
import os
import sys
import time
import traceback
from typing import Callable, Sequence


class UserError(RuntimeError):
    """A problem with the user's input that every rank detects the same way (printed once)."""


def root_decides(comm, fn: Callable[[], object]):
    """Run ``fn`` on rank 0 of ``comm`` only and return its result on every rank (collective).

    A user-facing failure there (a config, input or output-folder problem: ``UserError``,
    ``ConfigError`` or ``OSError``) is raised on every rank as a ``UserError`` with rank 0's message,
    so the job ends with one line and status 2 instead of a hang.
    """
    from .config import ConfigError
    result, error = None, None
    if comm.rank == 0:
        try:
            result = fn()
        except (UserError, ConfigError, OSError) as exc:
            error = str(exc)
    if comm.size > 1:
        result, error = comm.bcast((result, error), root=0)
    if error is not None:
        raise UserError(error)
    return result


def fail_together(comm, error: BaseException | None, tag: str = "failure") -> None:
    """Share ``error`` (this rank's, or None) over ``comm`` and raise the first failing rank's on every rank.

    For failures found on some ranks only (a write on the writer thread): every rank then stops alike, so
    ``main_guard`` prints one line and no rank waits in a collective. An ``OSError`` is raised as a one-line
    :class:`~hpc_fcn.io.outdir.OutputError`, anything else as a ``RuntimeError`` naming the rank. Collective.
    """
    raise_first_failure(comm.allgather(failure_record(error), tag=tag))


def first_line(error: BaseException, limit: int | None = None) -> str:
    """The first line of ``error``'s message (its type's name when it has none), at most ``limit`` characters."""
    return (str(error).strip() or type(error).__name__).splitlines()[0][:limit]


def failure_record(error: BaseException | None):
    """What :func:`fail_together` shares of a rank's ``error`` (None, or errno, first line, is-OSError)."""
    if error is None:
        return None
    return getattr(error, "errno", None), first_line(error), isinstance(error, OSError)


def raise_first_failure(records) -> None:
    """Raise the first failing rank's error from every rank's :func:`failure_record` (the same on every rank)."""
    failed = [(r, e) for r, e in enumerate(records) if e is not None]
    if not failed:
        return
    from .io.outdir import OutputError
    rank, (code, text, oserror) = failed[0]
    if oserror:
        raise OutputError(code or errno.EIO, text)
    raise RuntimeError(f"rank {rank}: {text}")


def world():
    from mpi4py import MPI
    return MPI.COMM_WORLD


def alone():
    """The communicator of this process alone (whatever else runs under the same mpirun)."""
    from mpi4py import MPI
    return MPI.COMM_SELF


def setup_logging(rank: int, level: str | int = "INFO") -> logging.Logger:
    """Log to stderr with the rank in the prefix; ranks other than 0 only log warnings and above."""
    logger = logging.getLogger("hpc_fcn")
    logger.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s [rank {rank}] %(levelname)s %(message)s", "%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(level if rank == 0 else max(logging.WARNING, logging.getLevelName(level)
                                                   if isinstance(level, str) else level))
    logger.propagate = False
    return logger


def local_size(comm) -> int:
    """Ranks sharing this node."""
    from mpi4py import MPI
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    n = node.Get_size()
    node.Free()
    return n


def local_rank(comm) -> int:
    """This rank's index among the ranks on its node (selects its GPU)."""
    from mpi4py import MPI
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    r = node.Get_rank()
    node.Free()
    return r


def set_threads(comm, requested: int = 0) -> int:
    """Give each rank an equal share of this node's cores (``requested`` > 0 overrides)."""
    import torch
    n = requested or max(1, (os.cpu_count() or 1) // local_size(comm))
    torch.set_num_threads(n)
    return n


def _all_failed(err_comm, grace_s: float) -> bool:
    """True when every rank reports a failure within ``grace_s`` (a collective error, e.g. bad config)."""
    req = err_comm.Ibarrier()
    deadline = time.monotonic() + grace_s
    while not req.Test():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def main_guard(main: Callable[[Sequence[str]], int | None], argv: Sequence[str] | None = None) -> int:
    """Run ``main`` so that a failure on any rank ends every rank with a non-zero status and one message.

    When every rank fails alike (a bad config, a missing file), rank 0 prints one line and all exit with
    status 2 (user errors) or 1. When only some ranks fail, each of them prints its message and the job
    is aborted, so no rank is left waiting in a collective.
    """
    from .config import ConfigError
    comm = world()
    err_comm = comm.Dup() if comm.size > 1 else None
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        code = int(main(argv) or 0)
        if err_comm is not None:
            err_comm.Free()
        return code
    except BaseException as exc:  # noqa: BLE001 - the job must not hang whatever went wrong
        if isinstance(exc, SystemExit) and exc.code in (0, None):
            return 0
        user = isinstance(exc, (ConfigError, UserError))
        code = 2 if user or isinstance(exc, SystemExit) else 130 if isinstance(exc, KeyboardInterrupt) else 1
        msg = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        if user or getattr(exc, "one_line", False):
            msg = str(exc)
        if os.environ.get("HPC_FCN_DEBUG") or not (user or isinstance(exc, (ValueError, RuntimeError, OSError,
                                                                            SystemExit, KeyboardInterrupt))):
            traceback.print_exc()
        grace = float(os.environ.get("HPC_FCN_ERROR_GRACE", "3"))
        if err_comm is None or _all_failed(err_comm, grace):
            if comm.rank == 0 and not isinstance(exc, SystemExit):
                print(f"error: {msg}", file=sys.stderr, flush=True)
            sys.stdout.flush()
            return code
        print(f"\nerror [rank {comm.rank}]: {msg}", file=sys.stderr, flush=True)  # not on a progress bar's line
        time.sleep(0.5)  # let the launcher forward the message before Abort kills the job (it was lost under load)
        comm.Abort(code)
        return code

"""An output folder that belongs to one run: a lock file, start-up checks, and write failures that say why.

``OutputLock.acquire(folder)`` creates ``<folder>/.lock`` atomically (written under a temporary name and
hard-linked into place, so it is never seen half-written) holding the owner's host, pid, process start
time, user and command line. A second run into the folder is refused with one line naming the owner.
A lock whose owner is gone (same host, and no process with that pid and start time) is stale: it is
replaced. A lock from another host cannot be checked from here and is never broken automatically.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

LOCK_NAME = ".lock"


class OutputError(OSError):
    """Output that cannot be written: one line naming the file and the cause."""
    one_line = True  # main_guard prints the message alone

    def __str__(self) -> str:
        return str(self.strerror)


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def _start_time(pid: int) -> str | None:
    """The kernel's start time of process ``pid`` (field 22 of /proc/PID/stat), None where unknown."""
    fields = _proc_stat(pid)
    return None if fields is None else fields[19]


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = _proc_stat(pid)
    if fields is not None and fields[0] in ("Z", "X"):  # killed, not yet reaped (its launcher was killed too)
        return False
    now = None if fields is None else fields[19]
    return started is None or now is None or now == started  # a reused pid has another start time


def describe(owner: dict) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("time", 0)))
    return f"pid {owner.get('pid')} on {owner.get('host')} (started {when}: {owner.get('command', '?')})"


class OutputLock:
    """The lock of one output folder, held by the process that acquired it until :meth:`release`."""

    def __init__(self, path: Path, owner: dict):
        self.path = path
        self.owner = owner

    @classmethod
    def acquire(cls, folder: str | os.PathLike, what: str = "output.dir") -> "OutputLock":
        """Create the folder if needed and take its lock, or raise :class:`OutputError` naming the holder."""
        folder = Path(folder)
        check_writable(folder, what)
        path = folder / LOCK_NAME
        pid = os.getpid()
        owner = {"host": socket.gethostname(), "pid": pid, "started": _start_time(pid), "time": time.time(),
                 "user": os.environ.get("USER", ""), "command": " ".join(sys.argv)[:300]}
        tmp = folder / f"{LOCK_NAME}.{owner['host']}.{pid}"
        tmp.write_text(json.dumps(owner))
        try:
            for _ in range(3):
                try:
                    os.link(tmp, path)
                    return cls(path, owner)
                except FileExistsError:
                    pass
                held = read_lock(path)
                if held is None:
                    continue  # released between our attempt and the read: try again
                if held.get("host") == owner["host"] and not _alive(int(held.get("pid", -1)), held.get("started")):
                    stale = path.with_name(f"{LOCK_NAME}.stale.{pid}")
                    try:
                        os.replace(path, stale)  # one of several racing runs wins the stale lock
                        if read_lock(stale) == held:
                            stale.unlink()
                            continue
                        os.replace(stale, path)  # another run took the lock meanwhile: give it back
                    except FileNotFoundError:
                        continue
                    held = read_lock(path) or held
                raise OutputError(errno.EBUSY, f"{what} {folder} is in use by another run, {describe(held)}; "
                                  f"wait for it, choose another {what}, or delete {path} if that run is gone")
            raise OutputError(errno.EBUSY, f"could not take the lock {path}: other runs keep taking it")
        finally:
            tmp.unlink(missing_ok=True)

    def release(self) -> None:
        """Remove the lock if it is still ours."""
        if self.path is not None and read_lock(self.path) == self.owner:
            self.path.unlink(missing_ok=True)
        self.path = None


def read_lock(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"host": "?", "pid": -1, "command": f"unreadable lock file {path}"}


def check_writable(folder: Path, what: str = "output.dir") -> None:
    """Create ``folder`` and write a probe file in it, or raise :class:`OutputError` saying why not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test.{socket.gethostname()}.{os.getpid()}"
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as exc:
        raise OutputError(exc.errno or errno.EACCES,
                          f"{what} {folder} cannot be written: {exc.strerror or exc}") from None


def free_bytes(folder: Path) -> int:
    """Bytes available to this user on the filesystem of ``folder``."""
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def check_space(folder: Path, need: int, what: str) -> None:
    """Raise a no-space :class:`OutputError` when fewer than ``need`` bytes are free for ``what``."""
    free = free_bytes(folder)
    if free < need:
        raise OutputError(errno.ENOSPC, f"cannot write {what}: No space left on device ({human(free)} free "
                                        f"in {folder}, about {human(need)} needed)")


def write_failure(path: Path, exc: BaseException, need: int = 0) -> OutputError:
    """A one-line :class:`OutputError` for a failed write of ``path``, naming a full disk when that is the cause."""
    if isinstance(exc, OutputError):
        return exc
    err = getattr(exc, "errno", None)
    full = err == errno.ENOSPC
    if not full:
        try:
            full = free_bytes(path.parent) <= max(need, 1 << 20)
        except OSError:
            pass
    if full:
        return OutputError(errno.ENOSPC, f"cannot write {path}: No space left on device "
                                         f"({human(free_bytes(path.parent))} free)")
    detail = os.strerror(err) if err else str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return OutputError(err or errno.EIO, f"cannot write {path}: {detail}")


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)

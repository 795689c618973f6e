"""Compute slots: at most one rank per core of a node runs a forward pass at a time.

When the ranks on a node outnumber its cores (tools/mpirun.sh then sets HPC_FCN_YIELD=1), the kernel time-slices
the ranks' passes and each slice starts on a cache the other ranks emptied. With slots a rank holds one of the
node's ``count`` slots (an exclusive ``flock`` on one of ``count`` files only this job's ranks on this node opened)
for each model step (its noise and forward passes), so at most ``count`` ranks compute at once, while the others
sleep in the kernel. On with HPC_FCN_SLOTS=1, which tools/mpirun.sh sets where it makes waiting ranks yield: 8 ranks
on 2 quiet cores then step at 0.96x the rate of 2 ranks (0.87x yielding alone); on a machine other jobs load, a
job whose ranks sleep for slots gets a smaller share of the cores (docs/speed.md). A pass held in a slot must not
wait on another rank (only an unsplit model's pass qualifies), or a rank holding a slot could wait forever on
one that waits for the slot.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from pathlib import Path

from ..tracing import NULL_TRACER, Tracer
from .host import HostComm

log = logging.getLogger("hpc_fcn")

SWITCH = "HPC_FCN_SLOTS"  # 1: on where the node's ranks outnumber its cores; 0 or unset: off (tools/mpirun.sh sets it)


class ComputeSlots:
    """``count`` node-wide slots held one at a time around compute that waits on no other rank.

    ``paths``: the slot files (this job's, this node's), opened here and kept open, so they may be unlinked
    once every rank of the node has opened them. ``home``: the slot this rank waits on when none is free.
    """

    def __init__(self, paths: list[Path], home: int = 0, tracer: Tracer | None = None):
        if not paths:
            raise ValueError("ComputeSlots needs at least one slot file")
        self.count = len(paths)
        self.home = home % self.count
        self.tracer = tracer or NULL_TRACER
        self._files = [open(p, "a+b") for p in paths]  # open for the object's life
        self.held: int | None = None  # the slot this rank holds

    def __repr__(self) -> str:
        return f"ComputeSlots({self.count} slots, home {self.home})"

    @contextlib.contextmanager
    def hold(self):
        """Run the block holding a slot: a free one if any, else the first of the home slot's waiters to get it.
        Re-entrant: a block inside a held one runs in the same slot (a step holds one for its noise and passes)."""
        if self.held is not None:
            yield self.held
            return
        with self.tracer.region("compute_slot/wait", "comm"):
            self.held = self._acquire()
        try:
            yield self.held
        finally:
            fcntl.flock(self._files[self.held], fcntl.LOCK_UN)
            self.held = None

    def _acquire(self) -> int:
        order = [(self.home + i) % self.count for i in range(self.count)]
        for i in order:
            try:
                fcntl.flock(self._files[i], fcntl.LOCK_EX | fcntl.LOCK_NB)
                return i
            except BlockingIOError:
                continue
        fcntl.flock(self._files[self.home], fcntl.LOCK_EX)  # asleep in the kernel until the holder lets go
        return self.home

    def close(self) -> None:
        for f in self._files:
            f.close()
        self._files = []


def slots_wanted() -> bool:
    """Whether compute slots are asked for (HPC_FCN_SLOTS=1, which tools/mpirun.sh sets with yielding); unset is
    off, so a launcher that does not oversubscribe never gets them."""
    value = os.environ.get(SWITCH, "0").strip()
    if value not in ("0", "1"):
        from ..runtime import UserError
        raise UserError(f"{SWITCH}={value}: use 1 (compute slots where the ranks outnumber the cores) or 0")
    return value == "1"


def node_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def slot_folder() -> str:
    """Where the slot files live: node-local memory (/dev/shm) where there is one."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


def node_slots(world: HostComm, threads: int = 1, count: int | None = None, tracer: Tracer | None = None
               ) -> ComputeSlots | None:
    """This node's compute slots for the ranks of ``world`` (collective over ``world``), or None where they are
    not wanted (:func:`slots_wanted`) or not needed (the node's ranks fit its cores: the test tools/mpirun.sh
    makes for HPC_FCN_YIELD, made here per node). ``count``: slots per node
    (default: the cores over ``threads`` per rank). The slot files are made by the node's first rank in a fresh
    folder (one per job and node, so concurrent jobs never share slots) and unlinked once every rank of the node
    has opened them: nothing is left behind, even by a run that crashes."""
    if world.size == 1 or not slots_wanted():
        return None
    from mpi4py import MPI

    from ..runtime import fail_together
    raw = world.comm.Split_type(MPI.COMM_TYPE_SHARED)
    node = HostComm(raw, f"{world.name}/node", world._tracer_of)
    cores = node_cores()
    count = count or max(1, cores // max(1, threads))
    folder, slots, error = None, None, None
    try:
        if node.size > count:  # the same on every rank of the node
            if node.rank == 0:
                try:
                    folder = _make_files(count)
                except OSError as exc:
                    error = exc
            folder = node.bcast(folder, tag="compute_slots")
            if folder is None and error is None:
                error = OSError(f"no compute slot files: the node's first rank could not make them in {slot_folder()}")
            elif folder is not None:
                try:
                    slots = ComputeSlots([Path(folder) / f"slot{i}" for i in range(count)], home=node.rank,
                                         tracer=tracer or world.tracer)
                except OSError as exc:
                    error = exc
        fail_together(world, error, tag="compute_slots")  # after it every rank of every node has its files open
    finally:
        if node.rank == 0 and folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        raw.Free()
    if world.rank == 0 and slots is not None:
        log.info("compute slots: %d ranks on a node of %d cores (%d thread(s) each): at most %d ranks run a "
                 "forward pass at once, the others sleep (%s=1)",
                 node.size, cores, threads, count, SWITCH)
    return slots


def _make_files(count: int) -> str:
    """A fresh folder of ``count`` empty slot files (node-local memory where there is one)."""
    folder = tempfile.mkdtemp(prefix="hpc_fcn_slots_", dir=slot_folder())
    for i in range(count):
        (Path(folder) / f"slot{i}").touch()
    return folder

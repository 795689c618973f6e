"""Resume snapshots keyed by member index and window, so a run resumes on any rank count and layout.

A snapshot slot holds one file per writing rank, named by the members and the window it covers
(``m{m0}-{m1}_r{r0}-{r1}_c{c0}-{c1}.pt``, tensors only: read with ``weights_only=True``), and ``scores.npz``
(plain arrays, read without pickle) with the score sums already added over the ranks. Nothing read back
can run code; a damaged file is named in one line with the way to start again (:func:`damaged`). A resumed
run assembles its own members and window from whichever files overlap them.
Snapshots are asynchronous: :meth:`SnapshotStore.save` copies the state to host buffers and queues the
files on the run's writer thread (after the outputs queued before them); the next snapshot, the end of an
initial time or of the run completes it (:meth:`SnapshotStore.complete`): every rank's files are on disk, a
failure on any rank is raised on every rank, and only then rank 0 writes ``progress.json``, which names the
slot, the progress, how many leads of the current initial time are complete in the outputs, the facts a
resumed run must share, and the run identity (:mod:`.identity`): rank 0 refuses to resume another run's
state. Each snapshot gets a new slot (``slot{n}``); older slots are removed once the marker names a newer
one, so a run killed mid-write, or a snapshot stopped by a full disk, leaves the slot the marker names usable.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..accel.hostcopy import HostBuffers
from ..io.outdir import check_space, remove_tree, write_failure
from ..runtime import UserError, fail_together, first_line
from .identity import check_resume

MARGIN = 1 << 20  # bytes kept free beyond a snapshot file's estimate (file headers, file system metadata)
SCORES = "scores.npz"
_NAME = re.compile(r"m(\d+)-(\d+)_r(\d+)-(\d+)_c(\d+)-(\d+)\.pt$")
_SLOT = re.compile(r"slot(\d+)$")
log = logging.getLogger("hpc_fcn")


def _box_name(members: range, rows: slice, cols: slice) -> str:
    return f"m{members.start}-{members.stop}_r{rows.start}-{rows.stop}_c{cols.start}-{cols.stop}.pt"


class SnapshotStore:
    """Snapshots of one run in ``outdir/.resume``; ``comm``: the world Communicator. ``save``, ``complete`` and
    ``load`` are collective, ``check`` and ``remove`` are rank 0's.

    ``writer``: the run's :class:`~hpc_fcn.io.background.BackgroundWriter` (None: files written by ``save``).
    """

    def __init__(self, outdir: Path, comm, facts: dict, identity: dict | None = None, writer=None):
        self.dir = Path(outdir) / ".resume"
        self.comm = comm
        self.facts = dict(facts)  # what a resumed run must share: members, grid, channels, leads, format
        self.identity = identity  # rank 0's; None on the other ranks
        self.marker = self.dir / "progress.json"
        self.writer = writer
        self._slot = 0
        self._pending: _Pending | None = None
        self._buffers: HostBuffers | None = None

    def read_marker(self) -> dict | None:
        if not self.marker.is_file():
            return None
        try:
            marker = json.loads(self.marker.read_text())
            int(marker["slot"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise damaged(self.marker, f"not a progress marker ({type(exc).__name__})") from None
        return marker

    def check(self) -> dict | None:
        """Rank 0: the marker of the state to resume, refused unless it has this run's identity and facts."""
        marker = self.read_marker()
        if marker is None:
            return None
        check_resume(marker.get("identity"), self.identity, self.dir.parent)
        if marker.get("facts") != self.facts:
            old, new = marker.get("facts") or {}, self.facts
            diff = next((k for k in new if old.get(k) != new.get(k)), "facts")
            raise UserError(f"cannot resume {self.dir.parent}: it was run with {diff} {old.get(diff)}, this run has "
                            f"{new.get(diff)}; use the same config, or resume=false to start again")
        self._remove_slots(keep=int(marker["slot"]), newer=True)  # a killed run's half-written ones
        return marker

    def _remove_slots(self, keep: int, newer: bool) -> None:
        """Rank 0: delete the slots other than ``keep``: older ones, and also newer ones when ``newer``."""
        if not self.dir.is_dir():
            return
        for d in self.dir.iterdir():
            m = _SLOT.match(d.name)
            if m and (int(m.group(1)) < keep or (newer and int(m.group(1)) > keep)):
                shutil.rmtree(d, ignore_errors=True)

    def remove(self) -> None:
        """Rank 0: delete the resume state (the marker first, so a half-removed state is no state)."""
        self.marker.unlink(missing_ok=True)
        remove_tree(self.dir)

    def save(self, progress: dict, state: torch.Tensor | None, members: range, rows: slice, cols: slice,
             scores: dict | None, on_complete: Callable[[], None] | None = None) -> None:
        """Start a snapshot of ``state`` (members x C x rows x cols, or None on ranks holding a copy); collective.

        Completes the previous snapshot first (at most one in flight), copies ``state`` to a host buffer without
        waiting for it and queues the files on the writer thread. ``scores``: the score accumulators summed over
        the scoring ranks (written by rank 0). ``on_complete``: run by rank 0 once every rank's files (and the
        outputs queued before them) are on disk, before the marker names the snapshot.
        """
        self.complete()
        slot = self._slot + 1
        sdir = self.dir / f"slot{slot}"
        host = None
        if state is not None and len(members):
            if self._buffers is None:
                self._buffers = HostBuffers(state.device)
            host = self._buffers.copy(state)
        pending = _Pending(progress, slot, on_complete)
        box = sdir / _box_name(members, rows, cols)

        def write() -> None:
            try:
                sdir.mkdir(parents=True, exist_ok=True)
                if host is not None:
                    _atomic_save(host.wait(), box)
                if scores is not None:
                    _atomic_save(scores, sdir / SCORES)
            except BaseException as exc:  # noqa: BLE001 - shared over the ranks by complete()
                pending.error = exc
            finally:
                if host is not None:
                    host.release()

        self._pending = pending
        earlier = self.writer.take_error() if self.writer is not None else None
        if earlier is not None:  # an output write failed: reported by complete(), on every rank
            pending.error = earlier
            pending.done.set()
            if host is not None:
                host.release()
        elif self.writer is None:
            write()
            pending.done.set()
        else:
            try:
                pending.done = self.writer.submit([write])
            except BaseException as exc:  # noqa: BLE001 - an output write failed meanwhile: as above
                pending.error = exc
                pending.done.set()

    @property
    def in_flight(self) -> bool:
        return self._pending is not None

    def complete(self) -> None:
        """Wait for the snapshot in flight and name it in the marker (collective; nothing when none is in flight).

        Every rank waits for its own files; a failure on any rank (this snapshot's, or an output write queued on
        the writer thread) is raised on every rank with the first failing rank's message, and the marker keeps
        naming the previous snapshot.
        """
        p, self._pending = self._pending, None
        if p is None:
            return
        p.done.wait()
        err = p.error
        if self.writer is not None:
            err = err or self.writer.take_error()
        fail_together(self.comm, err, tag="snapshot")
        if self.comm.rank == 0:
            if p.on_complete is not None:
                p.on_complete()
            _atomic_write_text(self.marker, json.dumps(dict(p.progress, slot=p.slot, facts=self.facts,
                                                            identity=self.identity)))
            self._remove_slots(keep=p.slot, newer=False)
        self._slot = p.slot

    def abandon(self) -> None:
        """After an error: wait for this rank's snapshot in flight (no collective); the marker stays as it was."""
        p, self._pending = self._pending, None
        if p is not None:
            p.done.wait()

    def load(self, marker: dict, members: range, rows: slice, cols: slice, channels: int
             ) -> tuple[torch.Tensor | None, dict]:
        """(this rank's members x window of the state, the summed scores) of the snapshot ``marker`` names (the
        marker rank 0 checked, broadcast)."""
        slot = int(marker["slot"])
        sdir = self.dir / f"slot{slot}"
        scores = _load_scores(sdir / SCORES)
        state = None
        if marker.get("step", -1) >= 0 and len(members):
            state = self._assemble(sdir, members, rows, cols, channels)
        self._slot = slot
        return state, scores

    @staticmethod
    def _assemble(sdir: Path, members: range, rows: slice, cols: slice, channels: int) -> torch.Tensor:
        out = torch.empty((len(members), channels, rows.stop - rows.start, cols.stop - cols.start))
        covered = 0
        for f in sorted(sdir.iterdir()):
            m = _NAME.match(f.name)
            if not m:
                continue
            m0, m1, r0, r1, c0, c1 = map(int, m.groups())
            a0, a1 = max(m0, members.start), min(m1, members.stop)
            b0, b1 = max(r0, rows.start), min(r1, rows.stop)
            d0, d1 = max(c0, cols.start), min(c1, cols.stop)
            if a0 >= a1 or b0 >= b1 or d0 >= d1:
                continue
            part = _load_box(f, (m1 - m0, channels, r1 - r0, c1 - c0))
            out[a0 - members.start:a1 - members.start, :, b0 - rows.start:b1 - rows.start,
                d0 - cols.start:d1 - cols.start] = part[a0 - m0:a1 - m0, :, b0 - r0:b1 - r0, d0 - c0:d1 - c0]
            covered += (a1 - a0) * (b1 - b0) * (d1 - d0)
        if covered != out.shape[0] * out.shape[2] * out.shape[3]:
            raise UserError(f"the snapshot in {sdir} does not cover members {members.start}..{members.stop - 1} "
                            f"rows {rows.start}..{rows.stop - 1} cols {cols.start}..{cols.stop - 1}; "
                            f"it is damaged: {start_again(sdir.parent)}")
        return out


class _Pending:
    """A snapshot in flight: its progress and slot, set ``done`` by the writer thread, and its ``error``."""

    def __init__(self, progress: dict, slot: int, on_complete):
        self.progress, self.slot, self.on_complete = dict(progress), slot, on_complete
        self.done = threading.Event()
        self.error: BaseException | None = None


def _payload_bytes(obj: Any) -> int:
    """The bytes of the tensors and arrays in ``obj`` (what dominates its snapshot file)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if hasattr(obj, "nbytes") and not isinstance(obj, (str, bytes)):
        return int(obj.nbytes)
    if isinstance(obj, dict):
        return sum(_payload_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_payload_bytes(v) for v in obj)
    if hasattr(obj, "__dict__"):
        return _payload_bytes(vars(obj))
    return 0


def start_again(resume_dir: Path) -> str:
    """The action that always works on damaged resume state."""
    return f"delete {resume_dir} and run again (resume=true then starts this run afresh), or run with resume=false"


def damaged(path: Path, why: str, resume_dir: Path | None = None) -> UserError:
    """One line naming a damaged file of the resume state (``resume_dir``: its .resume folder, by default the
    one ``path`` lies in) and what to do."""
    if resume_dir is None:
        resume_dir = next((p for p in Path(path).parents if p.name == ".resume"), Path(path).parent)
    return UserError(f"the resume state {path} is damaged ({why}): {start_again(resume_dir)}")


def _load_box(path: Path, shape: tuple[int, ...]) -> torch.Tensor:
    """One snapshot file: a float tensor of ``shape`` (tensors only; anything else is refused, never run)."""
    try:
        part = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, garbage or a pickle of objects: one line each
        raise damaged(path, f"not a tensor file: {first_line(exc, 120)}") from None
    if not isinstance(part, torch.Tensor) or tuple(part.shape) != shape or not part.is_floating_point():
        raise damaged(path, f"holds {type(part).__name__} {tuple(getattr(part, 'shape', ()))}, expected a float "
                            f"tensor of shape {shape}")
    return part


def _load_scores(path: Path) -> dict:
    """A snapshot's score sums: plain arrays, read without pickle (an object array is refused, never run)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as exc:  # noqa: BLE001 - missing, truncated, garbage or pickled: one line each
        raise damaged(path, f"not the score sums: {first_line(exc, 120)}") from None


def _atomic_save(obj: Any, path: Path) -> None:
    """``obj`` (a tensor, or a dict of NumPy arrays: an npz file) to ``path`` through a temporary file; a
    failure (a full disk) is named and leaves no partial file."""
    tmp = path.with_suffix(".tmp")
    nbytes = _payload_bytes(obj)
    try:
        check_space(path.parent, nbytes + MARGIN, f"the resume snapshot {path}")
        if isinstance(obj, dict):
            with open(tmp, "wb") as f:
                np.savez(f, **obj)
        else:
            torch.save(obj, tmp)
        os.replace(tmp, path)
    except Exception as exc:  # noqa: BLE001 - every cause is named in one line
        tmp.unlink(missing_ok=True)
        raise write_failure(path, exc, nbytes) from None


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        os.replace(tmp, path)
    except Exception as exc:  # noqa: BLE001
        tmp.unlink(missing_ok=True)
        raise write_failure(path, exc) from None

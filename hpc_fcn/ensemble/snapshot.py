"""Resume snapshots keyed by member index and window, so a run resumes on any rank count and layout.

A snapshot slot holds one file per writing rank, named by the members and the window it covers
(``m{m0}-{m1}_r{r0}-{r1}_c{c0}-{c1}.pt``), and ``scores.pt`` with the score sums already added over
the ranks. A resumed run assembles its own members and window from whichever files overlap them.
Two slots alternate; ``progress.json`` (rank 0, after a barrier, i.e. after every file and the output
of the step is on disk) names the valid slot, the progress, how many leads of the current initial
time are complete in the outputs, the facts a resumed run must share, and the run identity
(:mod:`.identity`): rank 0 refuses to resume another run's state. A snapshot stopped by a full disk
leaves the previous slot, which the marker still names, usable.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from ..io.outdir import check_space, remove_tree, write_failure
from ..runtime import UserError
from .identity import check_resume

MARGIN = 1 << 20  # bytes kept free beyond a snapshot file's estimate (pickling, file system metadata)
_NAME = re.compile(r"m(\d+)-(\d+)_r(\d+)-(\d+)_c(\d+)-(\d+)\.pt$")


def _box_name(members: range, rows: slice, cols: slice) -> str:
    return f"m{members.start}-{members.stop}_r{rows.start}-{rows.stop}_c{cols.start}-{cols.stop}.pt"


class SnapshotStore:
    """Snapshots of one run in ``outdir/.resume``; ``comm``: the world Communicator. ``save`` and ``load`` are
    collective, ``check`` and ``remove`` are rank 0's."""

    def __init__(self, outdir: Path, comm, facts: dict, identity: dict | None = None):
        self.dir = Path(outdir) / ".resume"
        self.comm = comm
        self.facts = dict(facts)  # what a resumed run must share: members, grid, channels, leads, format
        self.identity = identity  # rank 0's; None on the other ranks
        self.marker = self.dir / "progress.json"
        self._slot = 0

    def read_marker(self) -> dict | None:
        if not self.marker.is_file():
            return None
        return json.loads(self.marker.read_text())

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
        return marker

    def remove(self) -> None:
        """Rank 0: delete the resume state (the marker first, so a half-removed state is no state)."""
        self.marker.unlink(missing_ok=True)
        remove_tree(self.dir)

    def save(self, progress: dict, state: torch.Tensor | None, members: range, rows: slice, cols: slice,
             scores: dict | None) -> None:
        """Snapshot ``state`` (members x C x rows x cols, or None on ranks holding a copy), then the marker.

        ``scores``: the score accumulators summed over the scoring ranks (written by rank 0).
        """
        slot = 1 - self._slot
        sdir = self.dir / f"slot{slot}"
        if self.comm.rank == 0:
            shutil.rmtree(sdir, ignore_errors=True)
            sdir.mkdir(parents=True)
        self.comm.barrier(tag="snapshot")
        if state is not None and len(members):
            _atomic_save(state.detach().cpu(), sdir / _box_name(members, rows, cols))
        if self.comm.rank == 0 and scores is not None:
            _atomic_save(scores, sdir / "scores.pt")
        self.comm.barrier(tag="snapshot")
        if self.comm.rank == 0:
            _atomic_write_text(self.marker, json.dumps(dict(progress, slot=slot, facts=self.facts,
                                                            identity=self.identity)))
        self.comm.barrier(tag="snapshot")
        self._slot = slot

    def load(self, marker: dict, members: range, rows: slice, cols: slice, channels: int
             ) -> tuple[torch.Tensor | None, dict]:
        """(this rank's members x window of the state, the summed scores) of the snapshot ``marker`` names (the
        marker rank 0 checked, broadcast)."""
        slot = int(marker["slot"])
        sdir = self.dir / f"slot{slot}"
        scores = torch.load(sdir / "scores.pt", map_location="cpu", weights_only=False)
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
            part = torch.load(f, map_location="cpu", weights_only=True)
            out[a0 - members.start:a1 - members.start, :, b0 - rows.start:b1 - rows.start,
                d0 - cols.start:d1 - cols.start] = part[a0 - m0:a1 - m0, :, b0 - r0:b1 - r0, d0 - c0:d1 - c0]
            covered += (a1 - a0) * (b1 - b0) * (d1 - d0)
        if covered != out.shape[0] * out.shape[2] * out.shape[3]:
            raise UserError(f"the snapshot in {sdir} does not cover members {members.start}..{members.stop - 1} "
                            f"rows {rows.start}..{rows.stop - 1} cols {cols.start}..{cols.stop - 1}; "
                            f"it is damaged: delete {sdir.parent} and start again with resume=false")
        return out


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


def _atomic_save(obj: Any, path: Path) -> None:
    """``obj`` to ``path`` through a temporary file; a failure (a full disk) is named and leaves no partial file."""
    tmp = path.with_suffix(".tmp")
    nbytes = _payload_bytes(obj)
    try:
        check_space(path.parent, nbytes + MARGIN, f"the resume snapshot {path}")
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except Exception as exc:  # noqa: BLE001 - every cause is named in one line
        tmp.unlink(missing_ok=True)
        raise write_failure(path, exc, nbytes) from None


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except Exception as exc:  # noqa: BLE001
        tmp.unlink(missing_ok=True)
        raise write_failure(path, exc) from None

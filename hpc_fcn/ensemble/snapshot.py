"""Resume snapshots keyed by member index and window, so a run resumes on any rank count and layout.

A snapshot slot holds one file per writing rank, named by the members and the window it covers
(``m{m0}-{m1}_r{r0}-{r1}_c{c0}-{c1}.pt``), and ``scores.pt`` with the score sums already added over
the ranks. A resumed run assembles its own members and window from whichever files overlap them.
Two slots alternate; ``progress.json`` (rank 0, after a barrier, i.e. after every file and the output
of the step is on disk) names the valid slot, the progress, how many leads of the current initial
time are complete in the outputs, the facts a resumed run must share, and a place for the run identity.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from ..runtime import UserError

_NAME = re.compile(r"m(\d+)-(\d+)_r(\d+)-(\d+)_c(\d+)-(\d+)\.pt$")


def _box_name(members: range, rows: slice, cols: slice) -> str:
    return f"m{members.start}-{members.stop}_r{rows.start}-{rows.stop}_c{cols.start}-{cols.stop}.pt"


class SnapshotStore:
    """Snapshots of one run in ``outdir/.resume`` (all methods collective over ``comm``)."""

    def __init__(self, outdir: Path, comm, facts: dict, identity: dict | None = None):
        self.dir = Path(outdir) / ".resume"
        self.comm = comm
        self.facts = dict(facts)  # what a resumed run must share: members, grid, channels, leads, format
        self.identity = identity
        self.marker = self.dir / "progress.json"
        self._slot = 0

    def read_marker(self) -> dict | None:
        if not self.marker.is_file():
            return None
        return json.loads(self.marker.read_text())

    def clear(self) -> None:
        """Forget any earlier run's snapshots (rank 0; a run without resume)."""
        if self.comm.rank == 0 and self.marker.exists():
            self.marker.unlink()

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
        self.comm.Barrier()
        if state is not None and len(members):
            _atomic_save(state.detach().cpu(), sdir / _box_name(members, rows, cols))
        if self.comm.rank == 0 and scores is not None:
            _atomic_save(scores, sdir / "scores.pt")
        self.comm.Barrier()
        if self.comm.rank == 0:
            tmp = self.marker.with_suffix(".tmp")
            tmp.write_text(json.dumps(dict(progress, slot=slot, facts=self.facts, identity=self.identity)))
            os.replace(tmp, self.marker)
        self.comm.Barrier()
        self._slot = slot

    def load(self, members: range, rows: slice, cols: slice, channels: int) -> tuple[dict, torch.Tensor | None, dict] | None:
        """(marker, this rank's members x window of the state, the summed scores), or None to start afresh."""
        marker = self.read_marker()
        if marker is None:
            return None
        if marker.get("facts") != self.facts:
            old, new = marker.get("facts") or {}, self.facts
            diff = next((k for k in new if old.get(k) != new.get(k)), "facts")
            raise UserError(f"cannot resume {self.dir.parent}: it was run with {diff} {old.get(diff)}, this run has "
                            f"{new.get(diff)}; use the same config, or resume=false to start again")
        slot = int(marker["slot"])
        sdir = self.dir / f"slot{slot}"
        scores = torch.load(sdir / "scores.pt", map_location="cpu", weights_only=False)
        state = None
        if marker.get("step", -1) >= 0 and len(members):
            state = self._assemble(sdir, members, rows, cols, channels)
        self._slot = slot
        return marker, state, scores

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


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)

"""Resume bookkeeping: per-rank state snapshots and a progress marker written only after them.

Snapshots alternate between two slots, and ``progress.json`` (written by rank 0 after a barrier,
i.e. after every rank's snapshot and the flushed output files are on disk) names the valid slot,
so a job killed at any point resumes from the last complete snapshot.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..runtime import UserError


class ResumeStore:
    def __init__(self, outdir: Path, comm, layout: dict):
        self.dir = Path(outdir) / ".resume"
        self.comm = comm
        self.layout = dict(layout, world=comm.size)
        self.marker = self.dir / "progress.json"
        self._slot = 0

    def _path(self, slot: int) -> Path:
        return self.dir / f"slot{slot}" / f"rank{self.comm.rank:05d}.pt"

    def read_marker(self) -> dict | None:
        if not self.marker.is_file():
            return None
        return json.loads(self.marker.read_text())

    def save(self, progress: dict, payload: dict[str, Any]) -> None:
        """Snapshot this rank's payload, then (rank 0, after everyone) record ``progress``."""
        slot = 1 - self._slot
        path = self._path(slot)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(payload, tmp)
        os.replace(tmp, path)
        self.comm.Barrier()
        if self.comm.rank == 0:
            tmp = self.marker.with_suffix(".tmp")
            tmp.write_text(json.dumps(dict(progress, slot=slot, layout=self.layout)))
            os.replace(tmp, self.marker)
        self.comm.Barrier()
        self._slot = slot

    def load(self) -> tuple[dict, dict] | None:
        """(progress, this rank's payload) of the last complete snapshot, or None to start afresh."""
        marker = self.read_marker()
        if marker is None:
            return None
        if marker.get("layout") != self.layout:
            raise UserError(f"cannot resume {self.dir.parent}: it was run with layout {marker.get('layout')}, "
                            f"this run has {self.layout}; use the same ranks and layout, or resume=false")
        slot = int(marker["slot"])
        payload = torch.load(self._path(slot), map_location="cpu", weights_only=False)
        self._slot = slot
        return marker, payload

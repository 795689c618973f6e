"""Resume bookkeeping: per-rank state snapshots and a progress marker written only after them.

Snapshots alternate between two slots, and ``progress.json`` (written by rank 0 after a barrier,
i.e. after every rank's snapshot and the flushed output files are on disk) names the valid slot,
so a job killed at any point, or stopped by a full disk, resumes from the last complete snapshot.
The marker also holds the run's identity (:mod:`.identity`): a resume by another run is refused.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..io.outdir import check_space, remove_tree, write_failure
from ..runtime import UserError
from .identity import check_resume

MARGIN = 1 << 20  # bytes kept free beyond a snapshot's estimate (pickling, file system metadata)


def payload_bytes(payload: Any) -> int:
    """The bytes of the tensors and arrays in ``payload`` (what dominates its snapshot file)."""
    if isinstance(payload, torch.Tensor):
        return payload.numel() * payload.element_size()
    if hasattr(payload, "nbytes") and not isinstance(payload, (str, bytes)):
        return int(payload.nbytes)
    if isinstance(payload, dict):
        return sum(payload_bytes(v) for v in payload.values())
    if isinstance(payload, (list, tuple)):
        return sum(payload_bytes(v) for v in payload)
    if hasattr(payload, "__dict__"):
        return payload_bytes(vars(payload))
    return 0


class ResumeStore:
    def __init__(self, outdir: Path, comm, layout: dict, identity: dict | None = None):
        self.dir = Path(outdir) / ".resume"
        self.comm = comm
        self.layout = dict(layout, world=comm.size)
        self.identity = identity  # rank 0's; None on the other ranks
        self.marker = self.dir / "progress.json"
        self._slot = 0

    def _path(self, slot: int) -> Path:
        return self.dir / f"slot{slot}" / f"rank{self.comm.rank:05d}.pt"

    def read_marker(self) -> dict | None:
        if not self.marker.is_file():
            return None
        return json.loads(self.marker.read_text())

    def check(self) -> dict | None:
        """Rank 0: the marker of the run to resume, refused unless it has this run's identity and layout."""
        marker = self.read_marker()
        if marker is None:
            return None
        check_resume(marker.get("identity"), self.identity, self.dir.parent)
        if marker.get("layout") != self.layout:
            raise UserError(f"cannot resume {self.dir.parent}: it was run with layout {marker.get('layout')}, "
                            f"this run has {self.layout}; use the same ranks and layout, or resume=false")
        return marker

    def save(self, progress: dict, payload: dict[str, Any]) -> None:
        """Snapshot this rank's payload, then (rank 0, after everyone) record ``progress``."""
        slot = 1 - self._slot
        path = self._path(slot)
        tmp = path.with_suffix(".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            check_space(path.parent, payload_bytes(payload) + MARGIN, f"the resume snapshot {path}")
            torch.save(payload, tmp)
            os.replace(tmp, path)
        except Exception as exc:  # noqa: BLE001 - every cause is named in one line
            tmp.unlink(missing_ok=True)
            raise write_failure(path, exc, payload_bytes(payload)) from None
        self.comm.Barrier()
        if self.comm.rank == 0:
            tmp = self.marker.with_suffix(".tmp")
            try:
                tmp.write_text(json.dumps(dict(progress, slot=slot, layout=self.layout, identity=self.identity)))
                os.replace(tmp, self.marker)
            except Exception as exc:  # noqa: BLE001
                tmp.unlink(missing_ok=True)
                raise write_failure(self.marker, exc) from None
        self.comm.Barrier()
        self._slot = slot

    def load(self, marker: dict) -> dict:
        """This rank's payload of the snapshot ``marker`` names (the marker as rank 0 checked and broadcast)."""
        slot = int(marker["slot"])
        payload = torch.load(self._path(slot), map_location="cpu", weights_only=False)
        self._slot = slot
        return payload

    def remove(self) -> None:
        """Rank 0: delete the resume state (the marker first, so a half-removed state is no state)."""
        self.marker.unlink(missing_ok=True)
        remove_tree(self.dir)

"""Analyses at any time a data root holds: the initial-condition split's own samples, then the other splits'.

Bred vectors start from analyses before the initial time. At a split's first times those lie in another
split's year file (out_of_sample 2018-01-01 needs test 2017-12-31T18). They are found by time, never by
sample index, so a gap between year files (the built-in dataset's half years) is never bridged by an
analysis from months before.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .era5 import SPLITS, DataError, FCNDataset, _as_hour, open_split


class Analyses:
    """Read-only lookup of analyses by time over the splits of one data root (the others opened on first need)."""

    def __init__(self, data_cfg, split: str, root, ds: FCNDataset):
        self.data_cfg, self.split, self.root, self.ds = data_cfg, split, root, ds
        self._others: list[FCNDataset] | None = None

    def _sources(self):
        yield self.ds
        if self._others is None:
            self._others = []
            for s in SPLITS:
                if s == self.split or not (self.ds.root / self.data_cfg.split_dir(s)).is_dir():
                    continue
                other = open_split(self.data_cfg, s, root=self.root)
                if (other.rows, other.cols, other.channels) != (self.ds.rows, self.ds.cols, self.ds.channels):
                    raise DataError(f"split {s!r} ({other.split_path}) has {len(other.channels)} channels on "
                                    f"{other.rows} x {other.cols}, but {self.split!r} has {len(self.ds.channels)} "
                                    f"on {self.ds.rows} x {self.ds.cols}: the splits of one data root must agree")
                self._others.append(other)
        yield from self._others

    def find(self, time: Any) -> tuple[FCNDataset, int] | None:
        """The split holding ``time`` and its sample index there (None: no split has it)."""
        for ds in self._sources():
            i = ds.find(time)
            if i is not None:
                return ds, i
        return None

    def has(self, time: Any) -> bool:
        return self.find(time) is not None

    def read(self, time: Any, rows: slice | None = None, cols: slice | None = None,
             normalise: bool = False) -> np.ndarray:
        """The analysis at ``time`` as (C, r, c) float32, like :meth:`FCNDataset.read`."""
        hit = self.find(time)
        if hit is None:
            raise DataError(f"no split of {self.ds.root} has an analysis at {_as_hour(time)}")
        ds, i = hit
        return ds.read(i, rows, cols, normalise)

    def close(self) -> None:
        for ds in self._others or []:
            ds.close()
        self._others = None

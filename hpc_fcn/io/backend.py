"""The one interface of a run's outputs, whatever the format: open with resume, write a lead's window,
settle, close, abandon. netCDF (:mod:`.netcdf`) and zarr (:mod:`.zarr`) implement it; a new format is a
module with an :class:`OutputBackend` and one line in :data:`FORMATS`.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

FORMATS = {  # output.format -> module:class
    "netcdf": "hpc_fcn.io.netcdf:NetCDFOutput",
    "zarr": "hpc_fcn.io.zarr:ZarrOutput",
}


class DamagedOutput(Exception):
    """An output that a resume cannot continue (truncated, unreadable): ``path`` and why."""

    def __init__(self, path, why: str):
        super().__init__(f"{path}: {why}")
        self.path, self.why = Path(path), why


@dataclass(frozen=True)
class OutputSpec:
    """What a run writes, the same on every rank: the products of each initial time and their CF layout."""
    outdir: Path
    products: tuple[str, ...]
    variables: Sequence[str]
    units: Mapping[str, str]
    standard_names: Mapping[str, str | None]
    long_names: Mapping[str, str]
    lat: np.ndarray
    lon: np.ndarray
    lead_hours: Sequence[int]
    n_members: int
    attrs: Mapping[str, Any] = field(default_factory=dict)  # the run's global attributes (config, identity)
    derived: Mapping[str, Any] = field(default_factory=dict)  # product -> its cf.DerivedLayout (probabilities...)
    member_lags: Sequence[int] | None = None  # a lagged ensemble's hours before the initial time, per member
    convention: str = "cf"  # names and layout: cf (CF-1.10, Earth2Studio's) or wb2 (WeatherBench2's, zarr only)

    def describe(self, product: str) -> dict:
        """The keyword arguments that define one product's file or store."""
        if product in self.derived:
            d = self.derived[product]
            return dict(variables=list(d.variables), units=d.units, standard_names=d.standard_names,
                        long_names=d.long_names, lat=self.lat, lon=self.lon, lead_hours=self.lead_hours,
                        product=product, n_members=self.n_members, leading=d.axes, extra_attrs=d.attrs)
        return dict(variables=list(self.variables), units=self.units, standard_names=self.standard_names,
                    long_names=self.long_names, lat=self.lat, lon=self.lon, lead_hours=self.lead_hours,
                    product=product, n_members=self.n_members,
                    member_lags=self.member_lags if product == "members" else None)

    def lead_bytes(self, product: str) -> int:
        """Bytes of one lead of ``product`` before compression."""
        if product in self.derived:
            return self.derived[product].rows * len(self.lat) * len(self.lon) * 4
        return lead_bytes(product, len(self.variables), len(self.lat), len(self.lon), self.n_members)


def lead_bytes(product: str, n_variables: int, n_lat: int, n_lon: int, n_members: int) -> int:
    """Bytes of one lead of ``product`` (float32 fields) before compression."""
    return n_variables * n_lat * n_lon * 4 * (n_members if product == "members" else 1)


@dataclass(frozen=True)
class RankWindow:
    """This rank's share of the outputs and the communicators that join the shares."""
    world: Any  # every rank (Communicator): agreement on errors, creation of shared outputs
    spatial: Any  # the ranks of one member group (Communicator): the windows of the statistics
    member_ranks: Any  # the ranks holding distinct members of one window (Communicator): the members
    rows: slice  # this rank's window of the grid
    cols: slice
    members: range  # the members this rank holds
    channels: Sequence[int]  # the written channels' indices in the model's channels
    writes_statistics: bool  # this rank sends its window of mean and spread
    writes_members: bool  # this rank sends its members' window
    chunk: tuple[int, int]  # rows and columns of a block that no two ranks' windows share
    tracer: Any
    block_rows: slice | None = None  # derived products: this rank's rows of them (a block of its window's rows)
    block_chunk: tuple[int, int] | None = None  # rows and columns of a block that no two ranks' row blocks share


class OutputBackend(ABC):
    """The outputs of one initial time at a time; every method is called on every rank."""

    def __init__(self, spec: OutputSpec, window: RankWindow, writer=None, buffers=None):
        """``writer``: the run's background writer thread (:mod:`.background`); ``buffers``: host buffers
        (:class:`hpc_fcn.accel.hostcopy.HostBuffers`) for device tensors that a background write holds."""
        self.spec, self.window, self.writer, self.buffers = spec, window, writer, buffers

    @abstractmethod
    def open(self, init_time: np.datetime64, resume_at: int | None) -> None:
        """Create the outputs of ``init_time``, or reopen them with ``resume_at`` leads kept (collective)."""

    @abstractmethod
    def write(self, lead: int, statistics: Mapping[str, Any], members, agreed: bool = False) -> None:
        """Write lead ``lead``: this window's mean and spread (device tensors, C x rows x cols) and the members'
        host copy (:class:`hpc_fcn.accel.hostcopy.HostCopy`, or None). ``agreed``: the caller has just agreed
        on :meth:`take_error` over the ranks (collective)."""

    def write_blocks(self, lead: int, fields: Mapping[str, np.ndarray]) -> None:
        """Write lead ``lead`` of the derived products: ``fields[product]`` (rows of its layout, block rows, window
        columns) is this rank's ``block_rows`` x ``cols`` (host float32; the block may be empty). Called by the
        ranks of ``member_ranks`` (collective over them)."""
        raise NotImplementedError(f"{type(self).__name__} does not write derived products")

    def take_error(self) -> BaseException | None:
        """This rank's error so far on the run's writer thread (cleared), for the caller to agree on."""
        return self.writer.take_error() if self.writer is not None else None

    def record_leads(self, leads_complete: int) -> None:
        """Rank 0, once every rank's writes of the first ``leads_complete`` leads are on disk: say so."""

    def settle(self, leads_complete: int) -> None:
        """Wait until every rank's writes so far are on disk and record ``leads_complete`` (collective)."""

    @abstractmethod
    def close(self, leads_complete: int | None) -> None:
        """Finish the outputs of this initial time; None (after an error): leave them as they are."""

    @abstractmethod
    def abandon(self) -> None:
        """After a failure on this rank: release the outputs without writing more (no collective)."""


def backend_class(fmt: str) -> type[OutputBackend]:
    """The :class:`OutputBackend` of ``output.format`` ``fmt``."""
    if fmt not in FORMATS:
        raise ValueError(f"output format {fmt!r} is not one of {', '.join(FORMATS)}")
    module, name = FORMATS[fmt].split(":")
    return getattr(importlib.import_module(module), name)

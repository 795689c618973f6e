"""What the ERA5 converter needs from its input: every channel's fields located in files, on one checked grid.

The format readers (:mod:`hpc_fcn.data.cds_netcdf`, :mod:`hpc_fcn.data.grib`) add :class:`Source` objects;
this module knows which ERA5 parameter and level each channel is, and checks that the input is complete.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np

from ..runtime import UserError

log = logging.getLogger("hpc_fcn.data.convert")

UNUSED = "unused20"  # the reference layout's channel 20: unused by the model, written as zeros

# channel -> (ERA5 short name, pressure level in hPa or None for single-level fields)
CHANNEL_SOURCES: dict[str, tuple[str, int | None]] = {
    "u10": ("u10", None), "v10": ("v10", None), "t2m": ("t2m", None), "sp": ("sp", None), "msl": ("msl", None),
    "t850": ("t", 850), "u1000": ("u", 1000), "v1000": ("v", 1000), "z1000": ("z", 1000),
    "u850": ("u", 850), "v850": ("v", 850), "z850": ("z", 850), "u500": ("u", 500), "v500": ("v", 500),
    "z500": ("z", 500), "t500": ("t", 500), "z50": ("z", 50), "r500": ("r", 500), "r850": ("r", 850),
    "tcwv": ("tcwv", None),
}
PRESSURE_VARS = frozenset(short for short, level in CHANNEL_SOURCES.values() if level is not None)


class ConversionError(UserError):
    """A problem with the input files or the request, reported as one line."""


class Source(Protocol):
    """One channel's fields in one file, at increasing ``times`` (datetime64[h])."""
    times: np.ndarray
    members: tuple[int, ...]  # ensemble member numbers held (one entry for a single analysis)

    def read(self, tidx: np.ndarray) -> np.ndarray:
        """(len(tidx), members, rows, cols) float32, north->south and longitudes from 0."""


@dataclass
class Grid:
    lat: np.ndarray  # north -> south
    lon: np.ndarray  # from 0 east
    origin: str

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.lat), len(self.lon)


def orient_grid(path: str, lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool, int]:
    """North-to-south latitudes and longitudes from 0; returns them with the flip and roll to apply."""
    flip = bool(len(lat) > 1 and lat[0] < lat[-1])
    if flip:
        lat = lat[::-1]
    if not (np.all(np.diff(lat) < 0) and np.isclose(lat[0], 90.0) and np.isclose(lat[-1], -90.0)):
        raise ConversionError(f"{path}: latitudes must run regularly from 90 to -90 (pole to pole), got "
                              f"{lat[0]:g} .. {lat[-1]:g} in {len(lat)} rows")
    lon = np.mod(lon, 360.0)
    roll = -int(np.argmin(lon)) % len(lon)
    lon = np.roll(lon, roll)
    if not (np.all(np.diff(lon) > 0) and np.isclose(lon[0], 0.0)):
        raise ConversionError(f"{path}: longitudes must be a regular global grid starting at 0 (or -180), got "
                              f"{lon[0]:g} .. {lon[-1]:g}")
    return lat, lon, flip, roll


def select_channels(text: str | None) -> list[str]:
    """The output channels: a comma list of names from CHANNEL_SOURCES, or all of the reference layout."""
    from .era5 import ERA5_CHANNELS
    if text is None:
        return list(ERA5_CHANNELS)
    names = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in names if c not in CHANNEL_SOURCES]
    if unknown or not names or len(set(names)) != len(names):
        raise ConversionError(f"--channels {text!r}: give distinct names among {', '.join(CHANNEL_SOURCES)}"
                              + (f" ({', '.join(unknown)} unknown)" if unknown else ""))
    return names


def _ranges(numbers: Sequence[int]) -> str:
    return f"{numbers[0]}..{numbers[-1]} ({len(numbers)})" if len(numbers) > 3 else ", ".join(map(str, numbers))


@dataclass
class Inventory:
    """Every wanted channel located in the input files, on one checked grid, with one set of members."""
    channels: list[str]  # output channels, in order (UNUSED is zero-filled)
    sources: dict[str, list[Source]] = field(default_factory=dict)  # channel -> sources
    grid: Grid | None = None
    members: tuple[int, ...] | None = None
    member_origin: str = ""
    seen: dict[str, set] = field(default_factory=dict)  # short name -> levels found (None = single level)
    files: int = 0
    # input format -> how it names a field (e.g. 'paramId 129 (z)'), for the message about a missing channel
    namers: dict[str, Callable[[str], str]] = field(default_factory=dict)
    told: set[str] = field(default_factory=set)  # unit conversions already logged

    def tell(self, note: str, path: str) -> None:
        """Log a unit conversion once per run (not once per file of a year split into days)."""
        if note and note not in self.told:
            self.told.add(note)
            log.info("%s (first in %s)", note, path)

    def field_name(self, short: str) -> str:
        """How the input formats seen name ERA5 field ``short``."""
        names = [namer(short) for namer in self.namers.values()] or [f"variable {short}"]
        return " / ".join(names)

    def wants(self, short: str, level: int | None) -> list[str]:
        """The wanted channels that are ``short`` at ``level`` (hPa, None for single level)."""
        return [c for c in self.channels if CHANNEL_SOURCES.get(c) == (short, level)]

    def note(self, short: str, level: int | None) -> None:
        self.seen.setdefault(short, set()).add(level)

    def check_grid(self, path: str, lat: np.ndarray, lon: np.ndarray) -> None:
        if self.grid is None:
            self.grid = Grid(lat, lon, path)
        elif (lat.shape != self.grid.lat.shape or lon.shape != self.grid.lon.shape
              or not np.allclose(lat, self.grid.lat) or not np.allclose(lon, self.grid.lon)):
            raise ConversionError(f"{path}: grid {len(lat)} x {len(lon)} differs from {self.grid.shape[0]} x "
                                  f"{self.grid.shape[1]} of {self.grid.origin}: regrid all files alike")

    def add(self, channel: str, source: Source, path: str) -> None:
        if self.members is None:
            self.members, self.member_origin = tuple(source.members), path
        elif tuple(source.members) != self.members:
            raise ConversionError(f"{path}: {channel} has ensemble members {_ranges(source.members)} but "
                                  f"{self.member_origin} has {_ranges(self.members)}: every input file must hold "
                                  "the same members")
        self.sources.setdefault(channel, []).append(source)

    @property
    def n_members(self) -> int:
        return len(self.members) if self.members else 1

    def check_complete(self) -> None:
        """Every wanted channel must be found in some file; name the variable and level that are missing."""
        missing = []
        for channel in self.channels:
            if channel == UNUSED or channel in self.sources:
                continue
            short, level = CHANNEL_SOURCES[channel]
            found, name = self.seen.get(short), self.field_name(short)
            if not found:
                missing.append(f"{channel} ({name}{f' at {level} hPa' if level else ''}: not in any input file)")
            elif level is None:
                missing.append(f"{channel} ({name}: found only on pressure levels)")
            else:
                have = ", ".join(str(v) for v in sorted(v for v in found if v is not None)) or "none"
                missing.append(f"{channel} ({name} at {level} hPa: levels found {have})")
        if missing:
            raise ConversionError("input lacks channel(s): " + "; ".join(missing))

    def locate(self, channel: str, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each target time, the index of the source holding it and the time index there (-1 = none)."""
        src = np.full(len(targets), -1, dtype=np.int64)
        idx = np.full(len(targets), -1, dtype=np.int64)
        for s, source in enumerate(self.sources[channel]):
            pos = np.searchsorted(source.times, targets)
            ok = (pos < len(source.times)) & (src < 0)
            ok[ok] = source.times[pos[ok]] == targets[ok]
            src[ok], idx[ok] = s, pos[ok]
        return src, idx

"""Convert ERA5 from the Copernicus Climate Data Store (netCDF or GRIB) into the FourCastNet layout.

Input: CDS netCDF (new and old conventions, :mod:`hpc_fcn.data.cds_netcdf`) or GRIB 1/2 as the CDS and
MARS deliver it (:mod:`hpc_fcn.data.grib`), single-level and pressure-level files, any split into files.
Output: ROOT/SPLIT/YYYY.h5 (SPLIT: train, test or out_of_sample, the folders of FourCastNet's layout and
the split names of the configs) with ``fields`` (T, C, rows, cols) float32, every ``--dt-hours`` from Jan 1 00 UTC,
in the reference channel order (index 20, unused by the model, is filled with zeros) or the ``--channels``
given; ROOT/metadata.json; with ``--stats-from`` also ROOT/stats/{global_means,global_stds,time_means}.npy
computed from that split (streaming, float64 sums). An ensemble of analyses (GRIB ``number`` key, e.g.
ERA5's EDA) also gives ``members`` (T, M, C, rows, cols) in the same files; ``fields`` is then the member
with the lowest number (the EDA control), see docs/era5.md.

Parallel: under mpirun the years are shared over the ranks, and the statistics over time chunks, through a
:class:`~hpc_fcn.parallel.comm.Communicator` (every collective traced); a failure on any rank is agreed over
all of them as in :mod:`hpc_fcn.runtime` (:func:`collective`), so every rank ends with the same one-line error.
Resumable: a year counts as done only once ``YYYY.h5.done`` exists, which is written after the file is
closed and renamed into place; a re-run skips done years and rewrites any other. A failed run removes the
partial file of the year it failed on and the folders it created that stayed empty; it writes metadata.json
only once every year asked for is done. Units and times of netCDF input: :mod:`hpc_fcn.data.units`,
:mod:`hpc_fcn.data.cds_netcdf`.

    python -m hpc_fcn.data.convert --input /data/cds --output /data/era5 --years 1979-2015 --split train \
        --stats-from train
    mpirun -n 8 python -m hpc_fcn.data.convert --input '/data/cds/*2016*.grib' --output /data/era5 \
        --years 2016-2017 --split test
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import h5py
import numpy as np

from ..runtime import UserError, alone, failure_record, root_decides, world as mpi_world
from .cds_netcdf import ALIAS_OF, add_netcdf_file, close_all
from .era5 import ERA5_ATTRS, ERA5_CHANNELS, SPLITS, split_problem
from .grib import GRIB_PARAMS, add_grib_file, is_grib
from .inventory import CHANNEL_SOURCES, UNUSED, ConversionError, Inventory, select_channels

if TYPE_CHECKING:
    from ..parallel.comm import Communicator

log = logging.getLogger("hpc_fcn.data.convert")

DT_HOURS = 6
REAL_GRID = (721, 1440)
STATS_FILES = ("global_means.npy", "global_stds.npy", "time_means.npy")
GRIB_EXTENSIONS = (".grib", ".grb", ".grib1", ".grib2", ".grb2")
INPUT_EXTENSIONS = ("*.nc", "*.nc4", "*.netcdf") + tuple(f"*{e}" for e in GRIB_EXTENSIONS)

__all__ = ["CHANNEL_SOURCES", "ConversionError", "Inventory", "build_inventory", "compute_stats", "convert_year",
           "main", "run"]


# ---------------------------------------------------------------------------------------------------
# Inventory of the input files
# ---------------------------------------------------------------------------------------------------
def expand_inputs(patterns: Sequence[str]) -> list[str]:
    """Directories (searched recursively for netCDF and GRIB files) and glob patterns -> sorted file list."""
    files: set[str] = set()
    for pattern in patterns:
        p = Path(pattern).expanduser()
        if p.is_dir():
            for ext in INPUT_EXTENSIONS:
                files.update(str(f) for f in p.rglob(ext))
        else:
            files.update(f for f in glob.glob(str(p), recursive=True) if Path(f).is_file())
    if not files:
        raise ConversionError(f"no netCDF or GRIB files match --input {' '.join(patterns)}")
    return sorted(files)


def build_inventory(files: Sequence[str], grid: tuple[int, int] | None, channels: Sequence[str] | None = None, *,
                    skip_unknown: bool = False) -> Inventory:
    """Scan every input file (GRIB by its first bytes, netCDF otherwise) and check the wanted channels."""
    inv = Inventory(list(channels) if channels is not None else list(ERA5_CHANNELS))
    for path in files:
        if is_grib(path):
            useful = add_grib_file(inv, path, skip_unknown=skip_unknown)
        elif str(path).lower().endswith(GRIB_EXTENSIONS):
            raise ConversionError(f"{path}: not a GRIB file (it does not start with 'GRIB'): a damaged or "
                                  "unfinished download? fetch it again")
        else:
            useful = add_netcdf_file(inv, path)
        if useful:
            inv.files += 1
        else:
            log.warning("%s: no field of a wanted channel; skipped", path)
    if inv.grid is None:
        raise ConversionError(f"none of the {len(files)} input files holds a field of a wanted channel (netCDF "
                              f"variables {', '.join(sorted(ALIAS_OF))}; GRIB paramIds "
                              f"{', '.join(map(str, GRIB_PARAMS))})")
    inv.check_complete()
    if grid is not None and inv.grid.shape != tuple(grid):
        raise ConversionError(f"input grid is {inv.grid.shape[0]} x {inv.grid.shape[1]} but {grid[0]} x {grid[1]} "
                              f"is expected (the 0.25 deg ERA5 grid); pass --grid any to accept it")
    return inv


# ---------------------------------------------------------------------------------------------------
# Conversion of one year
# ---------------------------------------------------------------------------------------------------
def year_targets(year: int, max_steps: int | None = None, dt_hours: int = DT_HOURS) -> np.ndarray:
    """The ``dt_hours``-hourly times of ``year`` from Jan 1 00 UTC (6-hourly: 1460 steps, 1464 in leap years)."""
    start = np.datetime64(f"{year:04d}-01-01T00", "h")
    stop = np.datetime64(f"{year + 1:04d}-01-01T00", "h")
    t = np.arange(start, stop, np.timedelta64(dt_hours, "h"))
    return t[:max_steps] if max_steps else t


def plan_year(inv: Inventory, year: int, max_steps: int | None, allow_partial: bool, dt_hours: int = DT_HOURS):
    """Targets and per-channel (source, index) maps for ``year``; error naming the first gap."""
    targets = year_targets(year, max_steps, dt_hours)
    located = {c: inv.locate(c, targets) for c in inv.channels if c != UNUSED}
    have = np.ones(len(targets), dtype=bool)
    for src, _ in located.values():
        have &= src >= 0
    n = len(targets)
    if not have.all():
        first = int(np.argmin(have))
        if allow_partial and first > 0 and not have[first:].any():
            n = first
        else:
            channel = next(c for c, (src, _) in located.items() if src[first] < 0)
            lacking = int(np.sum(located[channel][0] < 0))
            more = f" (and {lacking - 1} more {dt_hours}-hourly times)" if lacking > 1 else ""
            hint = "" if allow_partial else "; pass --allow-partial to convert a year that ends early"
            raise ConversionError(f"year {year}: no input has channel {channel} at {targets[first]}{more}{hint}")
    return targets[:n], {c: (src[:n], idx[:n]) for c, (src, idx) in located.items()}


def marker_path(out_dir: Path, year: int) -> Path:
    return out_dir / f"{year:04d}.h5.done"


def is_done(out_dir: Path, year: int) -> bool:
    return marker_path(out_dir, year).is_file() and (out_dir / f"{year:04d}.h5").is_file()


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def convert_year(inv: Inventory, year: int, out_dir: Path, *, chunk_steps: int = 4, max_steps: int | None = None,
                 allow_partial: bool = False, dt_hours: int = DT_HOURS) -> int:
    """Write OUT/YYYY.h5 (written as .partial, renamed when complete) and then its marker; returns steps.

    With several ensemble members, ``fields`` holds the first (lowest-numbered) one and ``members`` all.
    """
    targets, located = plan_year(inv, year, max_steps, allow_partial, dt_hours)
    rows, cols = inv.grid.shape
    names = list(inv.channels)
    n_mem = inv.n_members
    chunk_steps = max(1, chunk_steps // n_mem)  # the same memory per chunk whatever the member count
    final, partial = out_dir / f"{year:04d}.h5", out_dir / f"{year:04d}.h5.partial"
    marker_path(out_dir, year).unlink(missing_ok=True)
    final.unlink(missing_ok=True)
    t0 = time.perf_counter()
    try:
        with h5py.File(partial, "w") as f:
            ds = f.create_dataset("fields", shape=(len(targets), len(names), rows, cols), dtype="f4")
            mem = None
            if n_mem > 1:
                mem = f.create_dataset("members", shape=(len(targets), n_mem, len(names), rows, cols), dtype="f4")
                mem.attrs["member_numbers"] = json.dumps(list(inv.members))
            for a in range(0, len(targets), chunk_steps):
                b = min(a + chunk_steps, len(targets))
                block = np.zeros((b - a, n_mem, len(names), rows, cols), dtype=np.float32)  # unused20 stays 0
                for c, channel in enumerate(names):
                    if channel == UNUSED:
                        continue
                    src, idx = located[channel][0][a:b], located[channel][1][a:b]
                    for s in np.unique(src):
                        sel = np.nonzero(src == s)[0]
                        block[sel, :, c] = inv.sources[channel][int(s)].read(idx[sel])
                ds[a:b] = block[:, 0]
                if mem is not None:
                    mem[a:b] = block
            f.attrs["channels"] = json.dumps(names)
            f.attrs["first_time"] = str(targets[0])
            f.attrs["dt_hours"] = dt_hours
    except BaseException:
        partial.unlink(missing_ok=True)  # a failed year leaves nothing behind (a re-run writes it anew)
        raise
    finally:
        close_all()
    os.replace(partial, final)
    _write_json(marker_path(out_dir, year), {"year": year, "steps": int(len(targets)), "channels": names,
                                             "rows": rows, "cols": cols, "dt_hours": dt_hours, "members": n_mem,
                                             "seconds": round(time.perf_counter() - t0, 1)})
    return len(targets)


def write_metadata(root: Path, inv: Inventory, dt_hours: int = DT_HOURS) -> None:
    """ROOT/metadata.json: channel names, units, coordinates and members, read by hpc_fcn.data.era5."""
    names, grid = list(inv.channels), inv.grid
    attrs = {n: ERA5_ATTRS.get(n, ("1", "", n)) for n in names}
    meta = {"channels": names, "units": {n: a[0] for n, a in attrs.items()},
            "standard_names": {n: a[1] for n, a in attrs.items()}, "long_names": {n: a[2] for n, a in attrs.items()},
            "dt_hours": dt_hours, "lat": grid.lat.tolist(), "lon": grid.lon.tolist()}
    if UNUSED in names:
        meta["unused_channels"] = {UNUSED: "filled with zeros by the converter (mean 0, std 1)"}
    if inv.n_members > 1:
        meta["members"] = list(inv.members)
    _write_json(root / "metadata.json", meta)


# ---------------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------------
@dataclass
class Moments:
    """Per-channel count, mean and sum of squared deviations, merged pairwise (Chan et al.)."""
    n: float
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray) -> "Moments":  # x (T, C, rows, cols)
        """Moments of a chunk, one channel at a time in float64 (at 721 x 1440 a float64 copy of a whole chunk
        and its squares would take 4 times the chunk's memory)."""
        mean, m2 = np.empty(x.shape[1]), np.empty(x.shape[1])
        for c in range(x.shape[1]):
            xc = x[:, c].astype(np.float64)
            mean[c] = xc.mean()
            xc -= mean[c]
            m2[c] = np.square(xc, out=xc).sum()
        return cls(float(x.shape[0] * x.shape[2] * x.shape[3]), mean, m2)

    def merge(self, other: "Moments") -> "Moments":
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        delta = other.mean - self.mean
        return Moments(n, self.mean + delta * other.n / n, self.m2 + other.m2 + delta ** 2 * self.n * other.n / n)


def year_files(split_dir: Path, years: Sequence[int] | None = None) -> list[Path]:
    files = sorted(p for p in split_dir.glob("*.h5") if p.stem.isdigit() and len(p.stem) == 4)
    if years is not None:
        files = [p for p in files if int(p.stem) in set(years)]
    return files


def compute_stats(root: Path, split: str, comm: Communicator | None = None, *, years: Sequence[int] | None = None,
                  chunk_steps: int = 8) -> dict[str, np.ndarray]:
    """Global means/stds (1, C, 1, 1) and time means (1, C, rows, cols) of ROOT/SPLIT, written to ROOT/stats.

    Time chunks are shared over the ranks of ``comm`` (None: this process alone); sums are float64, so the
    result does not depend on it. Collective; the statistics are returned on rank 0, ``{}`` elsewhere.
    """
    comm = comm if comm is not None else _alone()
    rank, size = comm.rank, comm.size
    split_dir = root / split
    files = year_files(split_dir, years)
    if not files:
        raise ConversionError(f"--stats-from {split}: no year files (YYYY.h5) in {split_dir}")
    unfinished = [p.name for p in files if not marker_path(split_dir, int(p.stem)).is_file()]
    if unfinished:
        raise ConversionError(f"--stats-from {split}: {', '.join(unfinished)} not finished (no .done marker); "
                              "re-run the conversion of those years first")
    shapes, names = [], None
    for p in files:
        with h5py.File(p, "r", locking=False) as f:
            shapes.append(f["fields"].shape)
            names = names or json.loads(f.attrs.get("channels", "null") or "null")
    if len({s[1:] for s in shapes}) != 1:
        raise ConversionError(f"--stats-from {split}: year files differ in shape per step: {sorted(set(shapes))}")
    _, nchan, rows, cols = shapes[0]
    work = [(p, a, min(a + chunk_steps, s[0])) for p, s in zip(files, shapes) for a in range(0, s[0], chunk_steps)]

    def accumulate() -> tuple[Moments, np.ndarray]:
        moments = Moments(0.0, np.zeros(nchan), np.zeros(nchan))
        tsum = np.zeros((nchan, rows, cols), dtype=np.float64)
        for p, a, b in work[rank::size]:
            with h5py.File(p, "r", locking=False) as f:
                x = np.asarray(f["fields"][a:b], dtype=np.float32)
            moments = moments.merge(Moments.of(x))
            for c in range(nchan):  # one channel's float64 sum at a time, not the whole chunk's
                tsum[c] += x[:, c].sum(axis=0, dtype=np.float64)
        return moments, tsum
    moments, tsum = collective(comm, accumulate, tag="stats_read")  # a read failing on one rank stops all here
    steps = sum(s[0] for s in shapes)
    parts = comm.gather(moments, root=0, tag="stats")  # size 1: [moments], and merging it below gives it back
    tsum = comm.reduce(tsum, root=0, tag="stats")
    if rank != 0:
        return {}
    moments = Moments(0.0, np.zeros(nchan), np.zeros(nchan))
    for m in parts:
        moments = moments.merge(m)
    means = moments.mean.copy()
    stds = np.sqrt(moments.m2 / moments.n)
    names = names if names and len(names) == nchan else list(ERA5_CHANNELS)[:nchan]
    if UNUSED in names:
        k = names.index(UNUSED)
        means[k], stds[k] = 0.0, 1.0  # the zero-filled channel: normalisation leaves it unchanged
    stats = {"global_means.npy": means.reshape(1, nchan, 1, 1).astype(np.float32),
             "global_stds.npy": stds.reshape(1, nchan, 1, 1).astype(np.float32),
             "time_means.npy": (tsum / steps).reshape(1, nchan, rows, cols).astype(np.float32)}
    out = root / "stats"
    out.mkdir(parents=True, exist_ok=True)
    for name, arr in stats.items():
        tmp = out / (name + ".tmp.npy")
        np.save(tmp, arr)
        os.replace(tmp, out / name)
    _write_json(out / "stats.json", {"split": split, "years": [int(p.stem) for p in files], "steps": int(steps)})
    return stats


# ---------------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------------
def parse_years(text: str) -> list[int]:
    """'1979-2015', '2016,2017' or '2018' -> sorted list of years."""
    years: set[int] = set()
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                a, b = (int(v) for v in part.split("-", 1))
                if b < a:
                    raise ValueError
                years.update(range(a, b + 1))
            elif part:
                years.add(int(part))
    except ValueError:
        raise ConversionError(f"--years {text!r}: use a range like 1979-2015 or a list like 2016,2017") from None
    if not years:
        raise ConversionError("--years is empty")
    return sorted(years)


def parse_grid(text: str) -> tuple[int, int] | None:
    if text == "any":
        return None
    try:
        rows, cols = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConversionError(f"--grid {text!r}: use ROWSxCOLS (e.g. 721x1440) or 'any'") from None
    return rows, cols


def missing_folders(path: Path) -> list[Path]:
    """``path`` and those of its parents that do not exist yet, deepest first."""
    path = path.absolute()
    return [p for p in (path, *path.parents) if not p.exists()]


def remove_empty(folders: Sequence[Path]) -> None:
    """Remove those of ``folders`` (deepest first) that are empty: what a failed run created and left unused.

    Folders holding anything (a year another rank finished, which a re-run resumes from) are kept.
    """
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            pass


def _alone() -> Communicator:
    """A size-1 Communicator (this process alone, whatever else runs under mpirun): its collectives return
    their input."""
    from ..parallel.comm import MPICommunicator
    return MPICommunicator(alone(), "convert")


def _world() -> Communicator:
    """The Communicator of every rank of the job (the world communicator from the runtime bootstrap)."""
    from ..parallel.comm import MPICommunicator
    return MPICommunicator(mpi_world(), "convert")


def _attempt(comm: Communicator, fn: Callable, *args, **kwargs):
    """``fn(*args, **kwargs)``; a failure other than a :class:`UserError` is logged with its traceback and
    raised as a one-line :class:`ConversionError` naming this rank and the failure's type."""
    try:
        return fn(*args, **kwargs)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure must reach the other ranks, or they wait forever
        log.exception("unexpected failure")
        raise ConversionError(f"rank {comm.rank}: {type(exc).__name__}: {exc}") from exc


def collective(comm: Communicator, fn: Callable, *args, tag: str = "convert", **kwargs):
    """Run ``fn`` on every rank; if it fails on any rank, raise the first failing rank's error on all ranks.

    The runtime's agreement (:func:`hpc_fcn.runtime.fail_together`: every rank's
    :func:`~hpc_fcn.runtime.failure_record` in one allgather), with the message kept as :func:`_attempt` made
    it and raised as a :class:`ConversionError`, so the job ends with that one line and status 2.
    """
    result = error = None
    try:
        result = _attempt(comm, fn, *args, **kwargs)
    except UserError as exc:
        error = exc
    failed = [record for record in comm.allgather(failure_record(error), tag=tag) if record is not None]
    if failed:
        _, text, _ = failed[0]
        raise ConversionError(text)
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hpc_fcn.data.convert",
                                description="Convert ERA5 netCDF or GRIB files (CDS, MARS) into the FourCastNet "
                                            "layout (ROOT/SPLIT/YYYY.h5 + ROOT/stats).")
    p.add_argument("--input", action="append", default=[], metavar="DIR_OR_GLOB",
                   help="directory (searched recursively for *.nc, *.grib, ...) or glob; repeat for several")
    p.add_argument("--output", required=True, metavar="ROOT", help="dataset root (gets SPLIT/, stats/, metadata.json)")
    p.add_argument("--years", help="years to convert: 1979-2015, 2016,2017, ...")
    p.add_argument("--split", default="train", help=f"the split these years are, written to ROOT/SPLIT/: "
                                                    f"{', '.join(SPLITS)} (default train)")
    p.add_argument("--stats-from", metavar="SPLIT", help="afterwards compute stats/ from ROOT/SPLIT (e.g. train)")
    p.add_argument("--stats-years", help="only these years of --stats-from (default: every year file there)")
    p.add_argument("--grid", default="721x1440", help="expected input grid ROWSxCOLS, or 'any' (default 721x1440)")
    p.add_argument("--channels", help="comma list of output channels (default: the 21 of the reference layout)")
    p.add_argument("--dt-hours", type=int, default=DT_HOURS,
                   help="hours between stored steps, a divisor of 24 (default 6; ERA5's EDA on the CDS: 12 or 3)")
    p.add_argument("--skip-unknown", action="store_true",
                   help="GRIB: skip parameters no channel is made of (default: an error)")
    p.add_argument("--chunk-steps", type=int, default=4,
                   help="6-hourly steps held in memory at once (4 = 350 MB at 721x1440)")
    p.add_argument("--max-steps", type=int, help="at most this many steps per year (1460 = the published files, "
                                                  "which drop Dec 31 of leap years)")
    p.add_argument("--allow-partial", action="store_true", help="accept years whose data end early")
    p.add_argument("--force", action="store_true", help="redo years that are already marked done")
    return p


def convert_years(args: argparse.Namespace, comm: Communicator, root: Path, out_dir: Path, todo: list[int],
                  channels: list[str]) -> None:
    """Scan the input on rank 0, convert the ``todo`` years shared over the ranks, then write metadata.json."""
    if not todo:
        return
    rank, size = comm.rank, comm.size

    def scan() -> Inventory:  # on rank 0
        inv = build_inventory(expand_inputs(args.input), parse_grid(args.grid), channels,
                              skip_unknown=args.skip_unknown)
        log.info("%d input files, grid %d x %d, %d member(s); converting %d year(s) on %d rank(s)",
                 inv.files, *inv.grid.shape, inv.n_members, len(todo), size)
        out_dir.mkdir(parents=True, exist_ok=True)
        return inv
    inv = root_decides(comm, lambda: _attempt(comm, scan))

    def convert_mine():
        for year in todo[rank::size]:
            t0 = time.perf_counter()
            n = convert_year(inv, year, out_dir, chunk_steps=args.chunk_steps, max_steps=args.max_steps,
                             allow_partial=args.allow_partial, dt_hours=args.dt_hours)
            log.info("%s/%04d.h5: %d steps in %.1f s", args.split, year, n, time.perf_counter() - t0)
    collective(comm, convert_mine, tag="convert")
    root_decides(comm, lambda: _attempt(comm, write_metadata, root, inv, args.dt_hours))


def run(args: argparse.Namespace, comm: Communicator | None) -> None:
    """The conversion ``args`` ask for, shared over the ranks of ``comm`` (None: this process alone)."""
    comm = comm if comm is not None else _alone()
    rank = comm.rank
    root = Path(args.output).expanduser()
    if args.chunk_steps < 1 or (args.max_steps is not None and args.max_steps < 1):
        raise ConversionError("--chunk-steps and --max-steps must be >= 1")
    if args.dt_hours < 1 or 24 % args.dt_hours:
        raise ConversionError(f"--dt-hours {args.dt_hours}: use a divisor of 24 (1, 2, 3, 4, 6, 8, 12 or 24)")
    channels = select_channels(args.channels)
    for flag, split in (("--split", args.split), ("--stats-from", args.stats_from)):
        problem = split_problem(split) if split is not None else None
        if problem:
            raise ConversionError(f"{flag} {split}: {problem}")
    if args.years is None and args.stats_from is None:
        raise ConversionError("nothing to do: give --years (with --input) and/or --stats-from")
    if args.years is not None:
        if not args.input:
            raise ConversionError("--years needs --input (the CDS netCDF or GRIB files)")
        years = parse_years(args.years)
        out_dir = root / args.split
        todo = [y for y in years if args.force or not is_done(out_dir, y)]
        if rank == 0 and len(todo) < len(years):
            log.info("skipping %d year(s) already done in %s", len(years) - len(todo), out_dir)
        made = missing_folders(out_dir) if rank == 0 else []  # removed again if the run fails before using them
        try:
            convert_years(args, comm, root, out_dir, todo, channels)
        except UserError:
            remove_empty(made)  # on rank 0, after every rank has stopped (the failure was agreed collectively)
            raise
    if args.stats_from is not None:
        stats_years = parse_years(args.stats_years) if args.stats_years else None
        collective(comm, compute_stats, root, args.stats_from, comm, years=stats_years,
                   chunk_steps=max(1, args.chunk_steps), tag="stats")
        if rank == 0:
            log.info("statistics of %s written to %s", args.stats_from, root / "stats")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    comm = _world()
    rank = comm.rank
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(message)s", datefmt="%H:%M:%S")
    try:
        run(args, comm)
    except UserError as exc:  # a ConversionError, agreed over the ranks
        if rank == 0:
            print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""WeatherBench2's names and layout for zarr outputs (``output.convention: wb2``), so that its evaluation reads them
as they are: dimensions ``time`` (initial time), ``prediction_timedelta``, ``level`` (hPa), ``latitude``,
``longitude`` and, for the members, ``number``; channels of one quantity on pressure levels become one variable with
a ``level`` dimension (z500, z850 -> ``geopotential``), surface channels take WB2's names (t2m -> ``2m_temperature``),
and channels WB2 has no name for (the built-in world's u, v, z, vo, d) keep theirs. Values are the default
convention's, unconverted (docs/output_format.md). The store is written like the CF one (:mod:`.zarr`).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from . import cf
from .zarr import PARTIAL_SUFFIX, COMPRESSION_LEVEL, ZarrForecastStore

SURFACE = {"u10": "10m_u_component_of_wind", "v10": "10m_v_component_of_wind",
           "u100": "100m_u_component_of_wind", "v100": "100m_v_component_of_wind", "t2m": "2m_temperature",
           "sp": "surface_pressure", "msl": "mean_sea_level_pressure", "tcwv": "total_column_water_vapour",
           "tp": "total_precipitation"}
ON_LEVELS = {"z": "geopotential", "t": "temperature", "u": "u_component_of_wind", "v": "v_component_of_wind",
             "r": "relative_humidity", "q": "specific_humidity", "w": "vertical_velocity"}
_ON_LEVEL = re.compile(r"^([a-z])(\d{1,4})$")
ENSEMBLE_DIM = "number"  # WB2's evaluate.py --ensemble_dim default


def wb2_name(channel: str) -> tuple[str, int | None]:
    """WB2's variable and pressure level (hPa, or None) of a FourCastNet channel; its own name when WB2 has none."""
    if channel in SURFACE:
        return SURFACE[channel], None
    m = _ON_LEVEL.match(channel)
    if m and m.group(1) in ON_LEVELS and 1 <= int(m.group(2)) <= 1000:
        return ON_LEVELS[m.group(1)], int(m.group(2))
    return channel, None


def layout(variables: Sequence[str]) -> tuple[dict[str, bool], list[int], list[tuple[str, int | None]]]:
    """({WB2 variable: has a level dimension}, the levels (hPa, increasing), each channel's (variable, level index))."""
    names = [wb2_name(c) for c in variables]
    levels = sorted({lv for _, lv in names if lv is not None})
    arrays: dict[str, bool] = {}
    for (name, lv), channel in zip(names, variables):
        if name in arrays and (lv is None or not arrays[name]):
            raise ValueError(f"channel {channel!r} maps to WB2 variable {name!r} twice or with and without a level")
        arrays[name] = lv is not None
    return arrays, levels, [(n, None if lv is None else levels.index(lv)) for n, lv in names]


def dimensions(product: str, on_levels: bool) -> tuple[str, ...]:
    return (("time",) + ((ENSEMBLE_DIM,) if product == "members" else ()) + ("prediction_timedelta",)
            + (("level",) if on_levels else ()) + ("latitude", "longitude"))


class Wb2ForecastStore(ZarrForecastStore):
    """One store in WB2's layout; the same life cycle as :class:`~.zarr.ZarrForecastStore` (its region writes map
    each channel to its variable and level)."""

    @classmethod
    def create(cls, path, *, variables: Sequence[str], units: Mapping[str, str],
               standard_names: Mapping[str, str | None], long_names: Mapping[str, str], lat, lon,
               init_time: np.datetime64, lead_hours: Sequence[int], product: str, n_members: int | None,
               chunk_rows: int, chunk_cols: int, attrs: Mapping[str, Any] | None = None, **_ignored) -> None:
        import zarr
        from zarr.codecs import ZstdCodec
        variables, lat, lon, leads = cf.checked_layout(product, variables, units, long_names, lat, lon,
                                                       lead_hours, n_members)
        arrays, levels, targets = layout(variables)
        init = np.datetime64(init_time, "s")
        glob = cf.global_attributes(product, init, Path(path).name.removesuffix(PARTIAL_SUFFIX), n_members)
        del glob["Conventions"]  # WB2's layout, not CF's
        glob.update(convention="wb2", variables=variables, grid=[len(lat), len(lon)], lead_hours=leads)
        for k, v in (attrs or {}).items():
            glob[k] = v.tolist() if isinstance(v, np.ndarray) else v
        glob["leads_complete"] = 0
        root = zarr.open_group(path, mode="w", zarr_format=3, attributes=glob)
        coords = [("time", np.array([cf.hours_since_epoch(init)]), {"long_name": "initial time of forecast",
                                                                     "standard_name": "forecast_reference_time",
                                                                     "units": cf.TIME_UNITS, "calendar": cf.CALENDAR}),
                  ("prediction_timedelta", np.asarray(leads, np.int64),
                   {"long_name": "time since forecast_reference_time", "standard_name": "forecast_period",
                    "units": "hours", "dtype": "timedelta64[ns]"}),  # dtype: xarray decodes it as a timedelta
                  ("latitude", np.asarray(lat, np.float64), {"long_name": "latitude", "units": "degrees_north"}),
                  ("longitude", np.asarray(lon, np.float64), {"long_name": "longitude", "units": "degrees_east"})]
        if levels:
            coords.append(("level", np.asarray(levels, np.int32), {"long_name": "pressure level", "units": "hPa"}))
        if product == "members":
            coords.append((ENSEMBLE_DIM, np.arange(n_members, dtype=np.int32), {"long_name": "ensemble member"}))
        for name, values, attributes in coords:
            a = root.create_array(name, shape=values.shape, dtype=values.dtype.str[1:], dimension_names=(name,),
                                  attributes=attributes, fill_value=None, compressors=None)
            a[...] = values
        first = {}
        for channel, (name, _) in zip(variables, targets):
            first.setdefault(name, channel)
        for name, on_levels in arrays.items():
            ch = first[name]
            dims = dimensions(product, on_levels)
            shape = tuple({"time": 1, ENSEMBLE_DIM: n_members or 1, "prediction_timedelta": len(leads),
                           "level": len(levels), "latitude": len(lat), "longitude": len(lon)}[d] for d in dims)
            chunks = (1,) * (len(dims) - 2) + (chunk_rows, chunk_cols)
            va = {"long_name": name.replace("_", " ") if on_levels else str(long_names[ch]), "units": str(units[ch])}
            if standard_names.get(ch):
                va["standard_name"] = str(standard_names[ch])
            root.create_array(name, shape=shape, chunks=chunks, dtype="f4", fill_value=np.float32(np.nan),
                              dimension_names=dims, attributes=va, compressors=ZstdCodec(level=COMPRESSION_LEVEL))
        cls.consolidate(path)

    @classmethod
    def open(cls, path) -> "Wb2ForecastStore":
        import zarr
        root = zarr.open_group(path, mode="r+", use_consolidated=False)
        arrays, _, targets = layout(root.attrs["variables"])
        self = cls(Path(path), {n: root[n] for n in arrays}, root, root.attrs["product"])
        self.variables = list(root.attrs["variables"])
        self._targets = [(root[n], lv) for n, lv in targets]
        return self

    def write(self, lead_index: int, data: np.ndarray, *, rows: slice, cols: slice,
              members: slice | None = None) -> None:
        data = np.asarray(data, dtype=np.float32)
        for i, (arr, lv) in enumerate(self._targets):
            at = (0, members, lead_index) if self.product == "members" else (0, lead_index)
            at += (() if lv is None else (lv,)) + (rows, cols)
            arr[at] = data[:, i] if self.product == "members" else data[i]

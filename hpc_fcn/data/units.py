"""Units of the converter's netCDF input checked against what each channel holds, with cf-units (UDUNITS-2).

A variable in another unit of the same quantity is converted (hPa -> Pa, degC -> K, 1 -> %); geopotential
height (a length, e.g. ``m``) becomes geopotential by the standard gravity; anything else is refused in one
line naming the file, the variable, both units and how to fix it. A variable without ``units`` is taken to
be in the channel's units (as the CDS writes them), unless its ``standard_name`` says geopotential height.
GRIB needs no check: the paramId fixes the unit.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .era5 import ERA5_ATTRS
from .inventory import CHANNEL_SOURCES, ConversionError

G0 = 9.80665  # m s-2, standard gravity (WMO): geopotential = G0 * geopotential height


@dataclass(frozen=True)
class Conversion:
    """How a variable's values become the channel's units: cf-units from ``source`` to ``target``, then
    times ``factor`` (standard gravity for geopotential height); nothing when ``source`` is None."""
    source: str | None = None
    target: str | None = None
    factor: float = 1.0
    note: str = ""  # what is converted, for the log

    def apply(self, values: np.ndarray) -> np.ndarray:
        """float32 in the channel's units (the arithmetic in float64, so one rounding to float32)."""
        if self.source is None:
            return values.astype(np.float32, copy=False)
        import cf_units
        x = cf_units.Unit(self.source).convert(values.astype(np.float64), self.target)
        return (x * self.factor).astype(np.float32)


def channel_units(short: str) -> str:
    """The units the output channels made of ERA5 field ``short`` hold (ERA5_ATTRS)."""
    channel = next(c for c, (s, _) in CHANNEL_SOURCES.items() if s == short)
    return ERA5_ATTRS[channel][0]


def _unit(text: str):
    import cf_units
    try:
        return cf_units.Unit(text)
    except ValueError:
        return None


def to_channel_units(path: str, var: str, short: str, units: str | None,
                     standard_name: str | None = None) -> Conversion:
    """How netCDF variable ``var`` (ERA5 field ``short``, with attributes ``units`` and ``standard_name``) becomes
    its channel's units."""
    want = channel_units(short)
    if units is None or not str(units).strip():
        if standard_name == "geopotential_height":  # not geopotential, and in an unknown unit of length
            raise ConversionError(f"{path}: variable {var} is geopotential height (standard_name) without units: "
                                  f"set its units attribute (ncatted -O -a units,{var},c,c,'m' {path} for metres)")
        return Conversion()
    units = str(units).strip()
    have, target = _unit(units), _unit(want)
    height = " or to 'm' for geopotential height in metres" if short == "z" else ""
    fix = (f"if the values are in {want}, correct the attribute (ncatted -O -a units,{var},o,c,'{want}' {path})"
           f"{height}, else supply {short} in {want}")
    if have is None:
        raise ConversionError(f"{path}: variable {var} has units '{units}', which UDUNITS cannot read; its channels "
                              f"need {want}: {fix}")
    if have == target:
        return Conversion()
    if short == "z" and target.is_convertible("m2 s-2") and have.is_convertible("m"):
        return Conversion(units, "m", G0, f"variable {var} is geopotential height in {units}: converted to "
                                          f"geopotential in {want} (multiplied by g = {G0} m s-2)")
    if not have.is_convertible(target):
        raise ConversionError(f"{path}: variable {var} has units '{units}' but its channels need {want}, and "
                              f"'{units}' cannot be converted to {want}: {fix}")
    return Conversion(units, want, 1.0, f"variable {var} in {units}: converted to {want}")


__all__ = ["G0", "Conversion", "channel_units", "to_channel_units"]

"""The real ERA5 sample in tests/data (see its README): where it is, what it holds, how to convert it."""
from __future__ import annotations

from pathlib import Path

import eccodes as ec
import numpy as np

SAMPLE = Path(__file__).resolve().parent / "data" / "era5-levels-members.grib"
CHANNELS = ("z500", "z850", "t500", "t850")
TIMES = np.array(["2017-01-01T00", "2017-01-01T12", "2017-01-02T00", "2017-01-02T12"], dtype="datetime64[h]")
MEMBERS = list(range(10))


def ecc_fields(path: Path = SAMPLE) -> dict:
    """(shortName + level, validity time, member) -> (rows, cols) float64, straight from ecCodes."""
    out = {}
    with open(path, "rb") as f:
        while (h := ec.codes_grib_new_from_file(f)) is not None:
            try:
                d, t = ec.codes_get(h, "validityDate"), ec.codes_get(h, "validityTime")
                when = np.datetime64(f"{d // 10000:04d}-{d // 100 % 100:02d}-{d % 100:02d}T{t // 100:02d}", "h")
                name = f"{ec.codes_get(h, 'shortName')}{ec.codes_get(h, 'level')}"
                key = (name, when, ec.codes_get(h, "number"))
                assert key not in out
                out[key] = ec.codes_get_values(h).reshape(ec.codes_get(h, "Nj"), ec.codes_get(h, "Ni"))
            finally:
                ec.codes_release(h)
    return out


def sample_args(src, out, channels=CHANNELS, *extra) -> list[str]:
    """Converter arguments for the sample: 12-hourly, the year's first four steps, into the 'test' folder."""
    return [str(a) for a in ("--input", src, "--output", out, "--years", "2017", "--split", "test", "--grid",
                             "61x120", "--channels", ",".join(channels), "--dt-hours", "12", "--allow-partial",
                             *extra)]


def convert_sample(out: Path) -> Path:
    """The sample converted, with statistics, into ``out`` (a dataset root), by this process alone."""
    from hpc_fcn.data.convert import build_parser, run
    run(build_parser().parse_args(sample_args(SAMPLE, out, CHANNELS, "--stats-from", "test")), None)
    return out

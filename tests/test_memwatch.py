"""Peak resident memory per phase and per rank (hpc_fcn.memwatch)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hpc_fcn.memwatch import PhaseMeter, current_rss, peak_rss, reset_peak

ROOT = Path(__file__).resolve().parents[1]
MIB = 2 ** 20


def touch(nbytes: int) -> None:
    """Allocate and write ``nbytes`` (resident), then free them."""
    a = np.ones(nbytes // 8)
    a[::512] = 2.0
    del a


def test_peak_is_at_least_the_resident_set_and_follows_a_big_allocation():
    before = peak_rss()
    assert before >= current_rss() > 0
    touch(300 * MIB)
    assert peak_rss() >= current_rss() + 250 * MIB  # the freed 300 MiB stay in the high-water mark


def test_a_phase_peak_is_its_own_when_the_kernel_resets_it_else_the_process_peak():
    meter = PhaseMeter()
    with meter.phase("big"):
        touch(300 * MIB)
    with meter.phase("small"):
        touch(20 * MIB)
    with meter.phase("outer"):
        with meter.phase("inner"):
            touch(100 * MIB)
    # the resident set between phases varies by a few MiB (allocator, imports); 300 vs 20 MiB leaves a wide margin
    assert meter.peak["big"] >= meter.peak["small"] + (200 * MIB if meter.resettable else 0)
    assert meter.peak["outer"] >= meter.peak["inner"]  # a parent's peak includes its children's
    assert meter.peak["inner"] >= current_rss() + 80 * MIB
    assert set(meter.seconds) == {"big", "small", "outer", "inner"}
    assert meter.seconds["outer"] >= meter.seconds["inner"] >= 0.0
    assert reset_peak() == meter.resettable


def test_runner_writes_each_ranks_peak_and_passes_the_exit_status(tmp_path):
    env = dict(os.environ, PMI_RANK="3")
    out = tmp_path / "peak_{rank}.json"
    ok = subprocess.run([sys.executable, "-m", "hpc_fcn.memwatch", "--json", str(out), "-m", "json.tool", "--help"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "usage" in ok.stdout  # the module's own --help, not the runner's
    doc = json.loads((tmp_path / "peak_3.json").read_text())
    assert doc["rank"] == 3 and doc["exit"] == 0 and doc["peak_rss_bytes"] > 10 * MIB
    bad = subprocess.run([sys.executable, "-m", "hpc_fcn.memwatch", "--json", str(out), "-m", "json.tool",
                          str(tmp_path / "missing.json")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and json.loads((tmp_path / "peak_3.json").read_text())["exit"] == bad.returncode
    usage = subprocess.run([sys.executable, "-m", "hpc_fcn.memwatch", "--json", str(out)], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "-m MODULE" in usage.stderr.splitlines()[-1]


@pytest.mark.parametrize("bad", [["--json"], []])
def test_runner_needs_its_file(bad):
    proc = subprocess.run([sys.executable, "-m", "hpc_fcn.memwatch", *bad, "-m", "json.tool"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2

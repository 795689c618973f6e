"""Peak resident memory per phase and per rank (hpc_fcn.memwatch)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hpc_fcn.memwatch import PhaseMeter, _malloc_trim, current_rss, peak_rss, release_free_heap, reset_peak

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


@pytest.mark.skipif(_malloc_trim() is None or not current_rss(), reason="needs glibc's malloc_trim and /proc")
def test_free_heap_pages_go_back_to_the_kernel():
    """200 MB of 64 kB blocks (under glibc's mmap threshold, so in the heap) freed below a live block at the top:
    glibc keeps them resident; release_free_heap returns them."""
    blocks = [bytearray(64 << 10) for _ in range(3200)]
    for b in blocks:
        b[::4096] = b"\1" * len(b[::4096])  # touch every page
    pin = bytearray(64 << 10)  # allocated last: the heap's top stays in use, so free() cannot shrink it
    del blocks
    before = current_rss()
    released = release_free_heap()
    # at least half of the 200 MB: glibc keeps its trim threshold and the arena's bookkeeping pages
    assert released >= 100 << 20, (released, before)
    assert current_rss() <= before - released + (8 << 20)  # what it reports is what the resident set lost
    del pin

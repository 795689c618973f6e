"""Compute slots (hpc_fcn/parallel/slots.py): at most N holders at once, and the switch that turns them on."""
import os
import threading
import time

import pytest

from hpc_fcn.parallel.slots import ComputeSlots, slots_wanted


def test_at_most_n_holders_at_once(tmp_path):
    """Six holders, each with its own ComputeSlots (its own open files: flock then excludes them as it excludes
    processes), hold one of 2 slots 4 times for 20 ms each: never more than 2 at once, and 2 at some time."""
    paths = [tmp_path / f"slot{i}" for i in range(2)]
    for p in paths:
        p.touch()
    inside, most, seen, lock = [0], [0], set(), threading.Lock()

    def work(home):
        slots = ComputeSlots(paths, home=home)
        try:
            for _ in range(4):
                with slots.hold() as slot:
                    with lock:
                        inside[0] += 1
                        most[0] = max(most[0], inside[0])
                        seen.add(slot)
                    time.sleep(0.02)
                    with lock:
                        inside[0] -= 1
        finally:
            slots.close()

    threads = [threading.Thread(target=work, args=(h,)) for h in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert most[0] == 2 and seen == {0, 1}


def test_nested_hold_keeps_the_slot(tmp_path):
    """A hold inside a hold runs in the same slot and releases it only when the outermost one ends."""
    paths = [tmp_path / "slot0"]
    paths[0].touch()
    slots, other = ComputeSlots(paths), ComputeSlots(paths)
    with slots.hold() as outer:
        with slots.hold() as inner:
            assert inner == outer == 0
        assert slots.held == 0 and not free(other)  # still held after the inner block
    assert slots.held is None and free(other)
    slots.close()
    other.close()


def free(slots):
    """Whether ``slots``' only slot can be taken now (taken and let go at once)."""
    import fcntl
    try:
        fcntl.flock(slots._files[0], fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    fcntl.flock(slots._files[0], fcntl.LOCK_UN)
    return True


@pytest.mark.parametrize("switch, wanted", [(None, False), ("0", False), ("1", True), (" 1 ", True)])
def test_switch(monkeypatch, switch, wanted):
    """Slots are opt-in: HPC_FCN_SLOTS=1, whatever the launcher decided about yielding."""
    monkeypatch.setenv("HPC_FCN_YIELD", "1")
    if switch is None:
        monkeypatch.delenv("HPC_FCN_SLOTS", raising=False)
    else:
        monkeypatch.setenv("HPC_FCN_SLOTS", switch)
    assert slots_wanted() is wanted


def test_bad_switch(monkeypatch):
    monkeypatch.setenv("HPC_FCN_SLOTS", "auto")
    with pytest.raises(Exception, match="HPC_FCN_SLOTS=auto: use 1"):
        slots_wanted()


@pytest.mark.parametrize("threads, user, want", [("1", None, "0 0"), ("many", None, "1 1"), ("many", "0", "1 0")])
def test_the_launcher_gives_slots_with_yielding_unless_told_otherwise(monkeypatch, threads, user, want):
    """tools/mpirun.sh: ranks x threads over the cores -> HPC_FCN_YIELD=1 and HPC_FCN_SLOTS=1 (8 ranks on 2 quiet
    cores: 0.96x of 2 ranks with slots, 0.87x without); within the cores both 0; the user's HPC_FCN_SLOTS wins."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k not in ("HPC_FCN_YIELD", "HPC_FCN_SLOTS")}
    env["OMP_NUM_THREADS"] = str(len(os.sched_getaffinity(0)) + 1) if threads == "many" else "1"
    if user is not None:
        env["HPC_FCN_SLOTS"] = user
    code = "import os; print(os.environ['HPC_FCN_YIELD'], os.environ['HPC_FCN_SLOTS'])"
    p = subprocess.run([str(root / "tools" / "mpirun.sh"), "-n", "1", sys.executable, "-c", code], env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == want.split()

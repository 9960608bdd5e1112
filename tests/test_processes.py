"""The guard that test processes run under: whatever happens in a test, its children and
the processes they started are gone afterwards, and a wait fails on a hang, not on a
slow machine."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from processes import Processes, cpu_ticks, is_gone, wait_for

# Starts a grandchild in its process group, writes both pids, then hangs.
HANG = """
import os, subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
open(sys.argv[1], "w").write(f"{os.getpid()} {grandchild.pid}")
time.sleep(600)
"""


def _gone_soon(pid: int) -> bool:
    """The kill reached ``pid``: it is gone once its new parent (init) reaps it."""
    for _ in range(100):
        if is_gone(pid):
            return True
        time.sleep(0.05)
    return False


def _hanging_family(processes: Processes, tmp_path) -> tuple[subprocess.Popen, list[int]]:
    pids = tmp_path / "pids"
    child = processes.start([sys.executable, "-c", HANG, str(pids)])
    wait_for(lambda: pids.exists() and pids.read_text(), lambda: None, "the child", stall=60)
    family = [int(pid) for pid in pids.read_text().split()]
    assert not any(is_gone(pid) for pid in family)
    return child, family


def test_a_failing_test_still_kills_its_child_and_grandchild(tmp_path):
    with pytest.raises(AssertionError, match="deliberate"):
        with Processes() as processes:
            _, family = _hanging_family(processes, tmp_path)
            raise AssertionError("deliberate failure inside the guarded block")
    assert all(_gone_soon(pid) for pid in family)


def test_a_hang_fails_the_wait_and_the_hung_processes_are_killed(tmp_path):
    with Processes() as processes:
        child, family = _hanging_family(processes, tmp_path)
        started = time.monotonic()
        with pytest.raises(pytest.fail.Exception, match="made no progress for 1 s: it hangs"):
            wait_for(
                lambda: child.poll() is not None,
                lambda: cpu_ticks(groups=[child.pid]),
                "the sleeping child",
                stall=1.0,
            )
        assert time.monotonic() - started < 30  # the stall, not the 600 s sleep
    assert all(_gone_soon(pid) for pid in family)
    assert child.returncode == -9


def test_a_child_that_keeps_working_is_waited_for_past_the_stall(processes, tmp_path):
    # Prints for about 3 s, with a pause of 0.3 s between lines: longer than the
    # stall in all, never that long without output.
    script = "import time\nfor i in range(10):\n    print(i, flush=True)\n    time.sleep(0.3)\n"
    finished = processes.run([sys.executable, "-c", script], tmp_path / "logs", stall=2.0)
    assert finished.returncode == 0
    assert finished.stdout.split() == [str(i) for i in range(10)]


def test_a_child_computing_silently_counts_as_progress(processes, tmp_path):
    script = "import time\nend = time.monotonic() + 3\nwhile time.monotonic() < end: pass\n"
    finished = processes.run([sys.executable, "-c", script], tmp_path / "logs", stall=1.5)
    assert finished.returncode == 0


def test_the_cap_stops_a_child_that_works_forever(processes, tmp_path):
    script = "while True: pass\n"
    with pytest.raises(pytest.fail.Exception, match="still ran after 2 s"):
        processes.run([sys.executable, "-c", script], tmp_path / "logs", stall=60, cap=2.0)


# A launcher (like torchrun's) that polls its hung worker: the polling is no progress.
LAUNCHER = """
import subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
while worker.poll() is None:
    time.sleep(0.01)
"""


def test_a_launcher_polling_a_hung_worker_is_no_progress(processes, tmp_path):
    with pytest.raises(pytest.fail.Exception, match="made no progress"):
        processes.run([sys.executable, "-c", LAUNCHER], tmp_path / "logs", stall=2.0, cap=60)


def _hung_rank(rank: int, pids) -> None:
    (pids / str(rank)).write_text(str(os.getpid()))
    time.sleep(600)


def test_hung_ranks_fail_the_join_and_are_killed(tmp_path):
    with Processes() as processes:
        context = processes.spawn(_hung_rank, (tmp_path,), nprocs=2)
        with pytest.raises(pytest.fail.Exception, match="the 2 ranks made no progress"):
            processes.join(context, "the 2 ranks", stall=3.0, cap=120)
        ranks = context.pids()
        assert not any(is_gone(pid) for pid in ranks)
    assert all(_gone_soon(pid) for pid in ranks)

"""configure_threads: explicit counts, OMP_NUM_THREADS, and the automatic choice that leaves
the CPUs other work keeps busy (with a real competing process), the cgroup quota and bad
values."""

from __future__ import annotations

import sys

import pytest
import torch
from processes import wait_for

from torchdreamer.training import resources as threads
from torchdreamer.training.resources import available_cpus, busy_cpus, configure_threads


@pytest.fixture(autouse=True)
def restore_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Readings:
    """Stands in for ``/proc/loadavg``: returns the given runnable counts in turn."""

    def __init__(self, *runnable: int) -> None:
        self.texts = [f"0.50 0.40 0.30 {count}/200 4242\n" for count in runnable]

    def read_text(self) -> str:
        return self.texts.pop(0) if len(self.texts) > 1 else self.texts[0]


def machine(monkeypatch, cpus: int, machine_cpus: int, *runnable: int) -> None:
    monkeypatch.setattr(threads, "available_cpus", lambda: cpus)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: machine_cpus)
    monkeypatch.setattr(threads, "LOADAVG", Readings(*runnable))


@pytest.mark.parametrize("count", [1, 2, 3])
def test_an_explicit_count_is_set_as_given(count):
    assert configure_threads(count) == count
    assert torch.get_num_threads() == count


@pytest.mark.parametrize("bad", [-1, 1.5, "2", True, None])
def test_a_bad_count_is_refused(bad):
    torch.set_num_threads(1)
    with pytest.raises(ValueError, match="threads must be an integer >= 0"):
        configure_threads(bad)
    assert torch.get_num_threads() == 1  # left as it was


def test_zero_takes_omp_num_threads_when_it_is_set(monkeypatch):
    machine(monkeypatch, 4, 4, 1)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert configure_threads(0) == 3 and torch.get_num_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "1,2")  # nested levels: the first is torch's
    assert configure_threads(0) == 1 and torch.get_num_threads() == 1
    assert configure_threads(2) == 2  # an explicit count still wins
    monkeypatch.setenv("OMP_NUM_THREADS", "many")
    with pytest.raises(ValueError, match="OMP_NUM_THREADS='many' is not a positive integer"):
        configure_threads(0)


@pytest.mark.parametrize(
    ("cpus", "runnable", "expected"),
    [
        (4, 1, 4),  # only the caller runs: every CPU
        (4, 2, 3),  # one busy process: its CPU is left to it
        (2, 2, 1),
        (2, 5, 1),  # more load than CPUs: still one thread
        (1, 1, 1),
    ],
)
def test_zero_leaves_the_busy_cpus_to_the_work_on_them(monkeypatch, cpus, runnable, expected):
    machine(monkeypatch, cpus, cpus, runnable)
    assert configure_threads(0) == expected
    assert torch.get_num_threads() == expected


def test_a_thread_that_runs_for_an_instant_is_not_load(monkeypatch):
    monkeypatch.setattr(threads.time, "sleep", lambda seconds: None)
    machine(monkeypatch, 4, 4, 3, 1, 4, 4, 4)  # one look of the five saw nothing else running
    assert busy_cpus() == 0
    machine(monkeypatch, 4, 4, 3, 1, 4, 4, 4)
    assert configure_threads(0) == 4
    machine(monkeypatch, 4, 4, 3, 2, 4, 4, 4)  # at least one other all along
    assert busy_cpus() == 1


def test_load_on_a_larger_machine_is_scaled_to_this_process_share(monkeypatch):
    # 2 of 64 CPUs, 41 runnable threads: 40 others, 40 * 2 / 64 = 1.25 of ours busy.
    machine(monkeypatch, 2, 64, 41)
    assert busy_cpus() == 1 and configure_threads(0) == 1


@pytest.mark.parametrize(
    ("v2", "v1", "expected"),
    [
        ("max 100000\n", None, None),
        ("150000 100000\n", None, 2),
        ("50000 100000\n", None, 1),
        (None, ("-1\n", "100000\n"), None),
        (None, ("300000\n", "100000\n"), 3),
    ],
)
def test_the_cgroup_quota_caps_the_cpus(tmp_path, monkeypatch, v2, v1, expected):
    files = {"CGROUP_CPU_MAX": "cpu.max", "CGROUP_V1_QUOTA": "quota", "CGROUP_V1_PERIOD": "period"}
    for name, file in files.items():
        monkeypatch.setattr(threads, name, tmp_path / file)
    if v2 is not None:
        (tmp_path / "cpu.max").write_text(v2)
    if v1 is not None:
        (tmp_path / "quota").write_text(v1[0])
        (tmp_path / "period").write_text(v1[1])
    assert threads._cpu_quota() == expected
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(8)))
    assert available_cpus() == (expected or 8)


def test_a_real_busy_process_takes_one_thread_away(processes, tmp_path):
    cpus = available_cpus()
    spinning = tmp_path / "spinning"
    script = f"open({str(spinning)!r}, 'w').close()\nwhile True: pass\n"
    processes.start([sys.executable, "-c", script])
    wait_for(spinning.exists, lambda: None, "the busy child", stall=60)
    # More load than the child (another job) can only take more threads away.
    assert configure_threads(0) <= max(cpus - 1, 1)
    assert torch.get_num_threads() <= max(cpus - 1, 1)

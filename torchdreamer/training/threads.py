"""How many CPU threads torch computes with during a run."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch

__all__ = ["available_cpus", "busy_cpus", "configure_threads"]

#: Where the kernel reports the CPU time quota of this process's cgroup (v2, then v1).
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
#: The kernel's load figures; the fourth field is ``runnable/total`` threads right now.
LOADAVG = Path("/proc/loadavg")


def _cpu_quota() -> int | None:
    """CPUs' worth of time the cgroup grants per period (rounded up); None if unlimited."""
    try:
        if CGROUP_CPU_MAX.exists():
            quota, period = CGROUP_CPU_MAX.read_text().split()[:2]
        else:
            quota, period = CGROUP_V1_QUOTA.read_text(), CGROUP_V1_PERIOD.read_text()
        quota, period = quota.strip(), period.strip()
        if quota in ("max", "-1"):
            return None
        return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        return None


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by its cgroup's CPU quota.

    Examples:
        >>> import os
        >>> from torchdreamer.training.threads import available_cpus
        >>> 1 <= available_cpus() <= (os.cpu_count() or 1)
        True

    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = _cpu_quota()
    return min(cpus, quota) if quota else cpus


def busy_cpus(looks: int = 5, interval: float = 0.02) -> int:
    """CPUs of this process's share that other work keeps busy right now.

    The kernel's count of runnable threads, less the one reading it, is looked at
    ``looks`` times ``interval`` seconds apart and the least count kept, so that a
    thread that ran for an instant is not taken for load. On a machine where this
    process may use only some of the CPUs, that count is scaled to its share.
    Without ``/proc/loadavg`` (not Linux), the one-minute load average stands in.

    Examples:
        >>> from torchdreamer.training.threads import busy_cpus
        >>> busy_cpus() >= 0
        True

    """
    counts = []
    for look in range(looks):
        if look:
            time.sleep(interval)
        try:
            runnable = int(LOADAVG.read_text().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            try:
                return int(os.getloadavg()[0])
            except (AttributeError, OSError):  # no load figures at all
                return 0
        counts.append(max(runnable - 1, 0))
    share = available_cpus() / (os.cpu_count() or 1)
    return round(min(counts) * share)


def configure_threads(requested: int = 0) -> int:
    """Set torch's intra-op thread count and return it.

    ``requested > 0`` is taken as given. ``0`` chooses:

    * ``OMP_NUM_THREADS`` when it is set (by you, or by ``torchrun``, which sets
      it to 1 when it starts several processes on a machine);
    * otherwise the CPUs this process may use (:func:`available_cpus`) less those
      other work keeps busy as the run starts (:func:`busy_cpus`), and at least 1.

    On an idle machine that is every CPU, the fastest choice there. When another
    busy process shares the CPUs, torch's threads wait for each other at every
    parallel step while one of them is off its core, and an update takes many
    times longer than on a single thread; leaving the busy CPUs to that work
    avoids it. The choice is made once, as the run starts: a competitor that
    starts later is not seen, so on a machine others share pass a count
    (``Config.threads``, or ``OMP_NUM_THREADS``).

    Examples:
        >>> import torch
        >>> from torchdreamer.training.threads import configure_threads
        >>> before = torch.get_num_threads()
        >>> configure_threads(1), torch.get_num_threads()
        (1, 1)
        >>> _ = configure_threads(before)

    """
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 0:
        raise ValueError(
            f"threads must be an integer >= 0 (0 chooses automatically), got {requested!r}."
        )
    threads = requested or _from_environment() or max(available_cpus() - busy_cpus(), 1)
    torch.set_num_threads(threads)
    return threads


def _from_environment() -> int | None:
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if not value:
        return None
    try:
        threads = int(value.split(",")[0])  # a list sets nested levels; the first is ours
    except ValueError:
        threads = 0
    if threads < 1:
        raise ValueError(
            f"OMP_NUM_THREADS={value!r} is not a positive integer; set it to a thread "
            "count or unset it (torchdreamer then chooses from the idle CPUs)."
        )
    return threads

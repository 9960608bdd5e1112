"""What a run takes of the machine: the CPU threads torch computes with, and the memory
(or disk) its replay will reach, checked before the run starts."""

from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from torchdreamer.training.config import Config

__all__ = [
    "available_cpus",
    "busy_cpus",
    "check_replay_memory",
    "check_run_memory",
    "configure_threads",
    "nearest_existing",
]

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
        >>> from torchdreamer.training.resources import available_cpus
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
        >>> from torchdreamer.training.resources import busy_cpus
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
        >>> from torchdreamer.training.resources import configure_threads
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


# --------------------------------------------------------------------- memory
def _available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux: MemAvailable)."""
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_replay_memory(
    config: Config,
    observation_shape: tuple[int, ...] | dict[str, tuple[int, ...]],
    action_dim: int,
    available: int | None = None,
    processes: int = 1,
    where: Path | None = None,
) -> int:
    """The bytes the replay can reach in this run; raises if they exceed ``available``.

    A run reaches ``min(replay_capacity, steps)`` rows (one observation, action,
    reward and flags each, and with ``replay_context`` the policy's latent), in each
    of ``processes`` processes on this machine.
    ``available`` defaults to the memory the machine has free now or, with
    ``config.replay_on_disk``, to the disk space free at ``where`` (the run
    directory, or the nearest folder above it that exists).

    Examples:
        >>> from torchdreamer.training import Config
        >>> from torchdreamer.training.resources import check_replay_memory
        >>> config = Config(steps=1000, replay_capacity=10**12)
        >>> check_replay_memory(config, (64, 64, 3), 6, available=2**30)  # 1000 rows
        13855000
        >>> check_replay_memory(Config(steps=10**6), (64, 64, 3), 6, available=2**30)
        Traceback (most recent call last):
        ...
        ValueError: the replay would reach 1000000 rows of (64, 64, 3) observations: 12.9 GiB, \
more than the 1.0 GiB of memory available; pass a smaller --replay-capacity (e.g. 38749) \
or --replay-on-disk.

    """
    shapes = (
        observation_shape.values() if isinstance(observation_shape, dict) else [observation_shape]
    )
    # uint8 images, float32 vectors; then the action, the reward and three flags, and
    # with the replay context the policy's latent (float32).
    pixels = sum(math.prod(shape) * (1 if len(shape) == 3 else 4) for shape in shapes)
    latent = config.size.stoch_size + config.size.deter if config.replay_context else 0
    row = pixels + 4 * action_dim + 4 + 3 + 4 * latent
    rows = min(config.replay_capacity, config.steps)
    needed = rows * row * processes
    on_disk = config.replay_on_disk
    if available is None:
        available = _free_disk(where or Path.cwd()) if on_disk else _available_memory()
    if available is not None and needed > available:
        room = "disk space free there" if on_disk else "memory available"
        advice = "" if on_disk else " or --replay-on-disk"
        raise ValueError(
            f"the replay would reach {rows} rows of {_described(observation_shape)} observations"
            f"{f' in each of {processes} processes' if processes > 1 else ''}: "
            f"{needed / 2**30:.1f} GiB, more than the {available / 2**30:.1f} GiB of {room}; "
            f"pass a smaller --replay-capacity (e.g. {available // 2 // row // processes:d})"
            f"{advice}."
        )
    return needed


def _described(shape: tuple[int, ...] | dict[str, tuple[int, ...]]) -> str:
    if isinstance(shape, dict):
        return "{" + ", ".join(f"{k}: {tuple(v)}" for k, v in shape.items()) + "}"
    return str(tuple(shape))


def nearest_existing(path: Path) -> Path:
    """``path`` if it exists, else the nearest folder above it that does.

    Examples:
        >>> from pathlib import Path
        >>> from torchdreamer.training.resources import nearest_existing
        >>> nearest_existing(Path("/") / "no" / "such" / "folder")
        PosixPath('/')
    """
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _free_disk(path: Path) -> int | None:
    """Bytes free on the file system of ``path`` or of its nearest existing parent."""
    try:
        return shutil.disk_usage(nearest_existing(path)).free
    except OSError:
        return None


def check_run_memory(
    config: Config,
    observation_shape: tuple[int, ...] | dict[str, tuple[int, ...]],
    action_dim: int,
    logdir: Path,
) -> int:
    """:func:`check_replay_memory` for a run in ``logdir``, counting the processes
    ``torchrun`` starts on this machine (``LOCAL_WORLD_SIZE``).

    Examples:
        >>> from pathlib import Path
        >>> from torchdreamer.training import Config
        >>> from torchdreamer.training.resources import check_run_memory
        >>> config = Config(steps=1000, replay_context=0)  # rows of 4 + 2 floats, 4 + 3 bytes
        >>> check_run_memory(config, (4,), 2, Path("run")) == 1000 * (16 + 8 + 4 + 3)
        True
    """
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return check_replay_memory(
        config, observation_shape, action_dim, processes=local_processes, where=logdir
    )

"""Processes that tests start: killed with everything they started whatever happens, and
waited on for as long as they make progress.

``Processes`` starts commands (each in a process group of its own) and ``mp.spawn``
ranks, and kills all of them, groups included, when its ``with`` block ends (the
``processes`` fixture of ``conftest.py`` wraps a test in one). ``wait_for`` waits
while the children work: it fails when nothing moved (no CPU time used, no byte
written) for ``stall`` seconds, so a slow, busy machine passes and a hang fails
fast; ``cap`` is only a backstop against a child that is busy forever.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch.multiprocessing as mp

STALL = 120.0
"""Seconds without progress that count as a hang."""
CAP = 1800.0
"""Seconds after which a wait fails even while its children still make progress."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stat_fields(pid: str | int) -> list[str] | None:
    """``/proc/PID/stat`` after the command name (field 3 on, state first), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def cpu_ticks(pids: Iterable[int] = (), groups: Iterable[int] = ()) -> int:
    """CPU clock ticks used so far by ``pids`` and by the workers of process ``groups``:
    the members that started no other member (a launcher that only watches its workers
    is left out). 0 without ``/proc``."""
    pids, groups = set(pids), set(groups)
    if groups:
        try:
            entries = [entry for entry in os.listdir("/proc") if entry.isdigit()]
        except OSError:
            entries = []
        members = {}
        for entry in entries:
            fields = _stat_fields(entry)
            if fields and int(fields[2]) in groups:
                members[int(entry)] = int(fields[1])  # its parent
        pids |= set(members) - set(members.values())
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields:
            total += int(fields[11]) + int(fields[12])  # utime + stime
    return total


def is_gone(pid: int) -> bool:
    """No such process, or only its zombie left for its parent to reap."""
    fields = _stat_fields(pid)
    return fields is None or fields[0] in ("Z", "X")


def tree_size(paths: Iterable[Path]) -> int:
    """Bytes in the files at or under ``paths`` (missing ones count 0)."""
    total = 0
    for path in paths:
        path = Path(path)
        files = [path] if path.is_file() else path.rglob("*") if path.is_dir() else []
        for file in files:
            try:
                total += file.stat().st_size if file.is_file() else 0
            except OSError:
                pass
    return total


def wait_for(
    done: Callable[[], bool],
    progress: Callable[[], object],
    what: str,
    stall: float = STALL,
    cap: float = CAP,
    poll: float = 0.2,
) -> None:
    """Return once ``done()``; fail the test when ``progress()`` keeps its value for
    ``stall`` seconds, or after ``cap`` seconds in all."""
    start = last_change = time.monotonic()
    seen = progress()
    while not done():
        time.sleep(poll)
        now, value = time.monotonic(), progress()
        if value != seen:
            seen, last_change = value, now
        if now - last_change > stall:
            pytest.fail(f"{what} made no progress for {stall:.0f} s: it hangs")
        if now - start > cap:
            pytest.fail(f"{what} still ran after {cap:.0f} s")


@dataclass
class Finished:
    """A command's exit status and what it printed."""

    returncode: int
    stdout: str
    stderr: str


class Processes:
    """Starts processes for a test; kills each, with its process group, on exit."""

    def __init__(self) -> None:
        self._commands: list[subprocess.Popen] = []
        self._ranks: list[mp.ProcessContext] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill_all()

    def start(self, args: Sequence[str], **kwargs) -> subprocess.Popen:
        """``subprocess.Popen(args)`` as the leader of a new process group."""
        process = subprocess.Popen(args, start_new_session=True, **kwargs)
        self._commands.append(process)
        return process

    def run(self, args: Sequence[str], logs: Path, watch: Iterable[Path] = (), **wait) -> Finished:
        """Run ``args`` to its end, its output going to files under ``logs``; waits
        while it (or a process it started) uses CPU or writes to its output or
        under ``watch``."""
        logs.mkdir(parents=True, exist_ok=True)
        number = len(self._commands)
        out, err = logs / f"stdout.{number}", logs / f"stderr.{number}"
        with out.open("w") as stdout, err.open("w") as stderr:
            process = self.start(args, stdout=stdout, stderr=stderr, text=True)
        watched = [out, err, *watch]
        wait_for(
            lambda: process.poll() is not None,
            lambda: (cpu_ticks(groups=[process.pid]), tree_size(watched)),
            f"`{' '.join(map(str, args))}`",
            **wait,
        )
        return Finished(process.returncode, out.read_text(), err.read_text())

    def spawn(self, fn: Callable, args: tuple, nprocs: int) -> mp.ProcessContext:
        """``torch.multiprocessing.spawn`` without joining: the ranks' context."""
        context = mp.spawn(fn, args=args, nprocs=nprocs, join=False)
        self._ranks.append(context)
        return context

    def join(self, context: mp.ProcessContext, what: str, **wait) -> None:
        """Wait for every rank, re-raising a rank's failure, while they use CPU."""
        wait_for(lambda: context.join(timeout=0), lambda: cpu_ticks(context.pids()), what, **wait)

    def kill_all(self) -> None:
        for process in self._commands:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass  # the group has no member left
            process.wait()
        for context in self._ranks:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
                process.join()

"""Who is running: a process identity that survives pid reuse and reboots, and its liveness.

A pid alone cannot say whether a worker is still there: after a crash or a reboot the number is
handed to another process. The identity is (host, pid, start time); the process is alive only if
a process with that pid exists on this host and started at that moment.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from dataclasses import dataclass
from typing import Literal

ALIVE, GONE, UNKNOWN = "alive", "gone", "unknown"
Liveness = Literal["alive", "gone", "unknown"]
# psutil derives a start time from boot time + clock ticks (1/100 s): equal within rounding
_START_TOLERANCE_S = 1.0


def hostname() -> str:
    return socket.gethostname()


def start_time(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return None


@dataclass(frozen=True)
class ProcessIdentity:
    host: str
    pid: int
    started: float  # seconds since the epoch

    @classmethod
    def current(cls) -> "ProcessIdentity":
        pid = os.getpid()
        return cls(hostname(), pid, start_time(pid) or time.time())

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}"

    def liveness(self) -> tuple[Liveness, str]:
        """(alive | gone | unknown, why). Another host's process cannot be seen from here."""
        if self.host != hostname():
            return UNKNOWN, f"{self.describe()} runs on another host"
        started = start_time(self.pid)
        if started is None:
            return GONE, f"{self.describe()} is gone (killed, crashed or the machine rebooted)"
        if abs(started - self.started) > _START_TOLERANCE_S:
            return GONE, (f"{self.describe()} is gone: that pid now belongs to another process "
                          f"(started {time.ctime(started)})")
        return ALIVE, f"{self.describe()} is running"


def terminate(pids: list[int], not_before: float, grace_s: float = 5.0) -> list[int]:
    """SIGTERM, then SIGKILL after `grace_s`, each live pid that started at or after `not_before`
    (a pid that started earlier was reused by an unrelated process). Returns the pids signalled."""
    import psutil

    procs = []
    for pid in set(pids):
        if pid == os.getpid():
            continue
        try:
            p = psutil.Process(pid)
            if p.create_time() + _START_TOLERANCE_S < not_before:
                continue
            p.send_signal(signal.SIGTERM)
            procs.append(p)
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace_s)
    return [p.pid for p in procs]


def kill_descendants(grace_s: float = 0.0) -> int:
    """SIGKILL every descendant of this process (step processes, the forkserver, torchrun ranks);
    what a second Ctrl-C does before exiting. Returns how many were signalled."""
    import psutil

    children = psutil.Process().children(recursive=True)
    for c in children:
        try:
            c.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(children, timeout=grace_s or 3.0)
    return len(children)

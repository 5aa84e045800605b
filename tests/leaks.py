"""Processes a test module left running: servers it daemonized (the embedded graph store
detaches from whoever started it) and server children of pytest (a Dagster daemon, a Bolt
server). The conftest checks after every module, stops what it finds and fails the session."""

from __future__ import annotations

import os
from pathlib import Path

import psutil

# children of pytest that belong to pytest's own process and end with it
_HARMLESS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver", "from multiprocessing")
_SERVERS = ("redis-server", "dagster", "uvicorn")


def _under(path: str, root: Path) -> bool:
    try:
        return Path(path).resolve().is_relative_to(root)
    except (OSError, ValueError):
        return False


def snapshot() -> frozenset[tuple[int, float]]:
    """The processes running now, by (pid, start time) so that a reused pid reads as new.

    A set rather than a timestamp: psutil's start times count from a boot time it rounds to
    whole seconds, so they can read up to a second earlier than time.time() did (measured
    0.28 s early here), and a process started just after a timestamp looked older than it."""
    out = set()
    for p in psutil.process_iter(["pid", "create_time"]):
        out.add((p.pid, p.info["create_time"] or 0.0))
    return frozenset(out)


def leaked(before: frozenset[tuple[int, float]], roots: list[Path],
           me: int | None = None) -> list[psutil.Process]:
    """Processes not in `before` (a snapshot()) that outlive their test: detached ones working
    under one of `roots` (the session's temp dirs), and server-like descendants of this process."""
    me = me or os.getpid()
    mine = {p.pid for p in psutil.Process(me).children(recursive=True)}
    out = []
    for p in psutil.process_iter(["pid", "create_time", "cmdline", "cwd"]):
        try:
            if p.pid == me or (p.pid, p.info["create_time"] or 0.0) in before:
                continue
            cmd = " ".join(p.info["cmdline"] or [])
            if any(h in cmd for h in _HARMLESS):
                continue
            works_here = (p.info["cwd"] and any(_under(p.info["cwd"], r) for r in roots)) or any(
                str(r) in cmd for r in roots)
            if works_here or (p.pid in mine and any(s in cmd for s in _SERVERS)):
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return out


def describe(p: psutil.Process) -> str:
    try:
        return f"pid {p.pid}: {' '.join(p.cmdline())[:160]} (cwd {p.cwd()})"
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return f"pid {p.pid} (gone)"


def stop(procs: list[psutil.Process], grace_s: float = 10.0) -> None:
    from ossa_assets.lib.processes import terminate

    terminate([p.pid for p in procs], not_before=0.0, grace_s=grace_s)

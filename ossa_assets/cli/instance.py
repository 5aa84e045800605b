"""`ossa doctor`: what a crash left behind in the instance and the embedded services, and repair.

Shows in-progress runs with their workers (alive / gone), each pool's holders and waiters, and
the embedded services' locks; `--repair` fails runs whose worker is gone, frees stale slots and
clears a dead graph server's pidfile. Exit status 1 when something needs repair and was not
repaired.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path


def embedded_services(repair: bool) -> list[dict]:
    """Each embedded service's state; locks are flocks (released by the kernel when their holder
    dies), the graph server's pidfile is checked against the pid it names."""
    from ossa_assets.lib.graph_store import EmbeddedFalkorDB
    from resources import data_root

    root = data_root()
    out = []
    graph = root / "graph"
    if graph.exists():
        state, stale = EmbeddedFalkorDB(graph).state()
        if stale and repair:
            EmbeddedFalkorDB(graph).clear_stale()
            state += "; stale pidfile and socket removed"
        out.append({"service": "graph store (FalkorDB)", "path": str(graph), "state": state,
                    "needs_repair": stale and not repair})
    qdrant = root / "qdrant"
    if qdrant.exists():
        out.append({"service": "Qdrant local", "path": str(qdrant), "state": _flock_state(qdrant / ".lock"),
                    "needs_repair": False})
    db = root / "mlflow" / "mlflow.db"
    if db.exists():
        out.append({"service": "MLflow SQLite", "path": str(db), "state": _sqlite_state(db), "needs_repair": False})
    return out


def _flock_state(path: Path) -> str:
    import fcntl

    if not path.exists():
        return "free (no lock file)"
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return "in use by a live process (a flock: it ends with its holder)"
        fcntl.flock(fh, fcntl.LOCK_UN)
    return "free"


def _sqlite_state(db: Path) -> str:
    conn = sqlite3.connect(db, timeout=1.0)
    try:
        ok = conn.execute("PRAGMA quick_check").fetchone()[0]
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.rollback()
            lock = "writable"
        except sqlite3.OperationalError:
            lock = "a live process is writing"
        return f"integrity {ok}, {lock}"
    finally:
        conn.close()


def doctor(repair: bool = False, as_json: bool = False) -> int:
    from ossa_assets import recovery
    from ossa_assets.cli.materialize import instance
    from resources import data_root

    inst = instance()
    report = recovery.recover(inst, by="ossa doctor --repair", dry_run=not repair, data_root=data_root())
    state = recovery.status(inst)
    services = embedded_services(repair)
    needs = (report.changed and not repair) or any(s["needs_repair"] for s in services)
    if as_json:
        print(json.dumps({"repaired" if repair else "to_repair": report.lines(), **state,
                          "services": services, "needs_repair": needs}, indent=2))
        return 1 if needs else 0
    verb = "repaired" if repair else "needs repair (run `ossa doctor --repair`)"
    for line in report.lines():
        print(f"{verb}: {line}")
    if not report.changed:
        print("no orphaned runs, no stale slots")
    for r in state["runs"]:
        print(f"run {r['run']}: {r['status']}, worker {r['worker']} ({r['why']})")
    for line in report.unknown:
        print(f"note: {line} (Dagster's run monitoring judges it)")
    for p in state["pools"]:
        held = "; ".join(p["held_by"]) or "free"
        print(f"pool {p['pool']} (limit {p['limit']}): {held}"
              + (f"; waiting: {', '.join(p['waiting'])}" if p["waiting"] else ""))
    for s in services:
        print(f"{s['service']} at {s['path']}: {s['state']}")
    return 1 if needs else 0

"""The embedded services recover from a holder that was killed: the local Qdrant store's lock,
the MLflow SQLite store (its first-open lock and a write transaction cut off mid-way) and the
graph server (tests/lib/test_graph_store.py). Every holder here is a real process killed with
SIGKILL, so nothing gets to clean up; nothing is left for the user to delete by hand."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest


def _hold_qdrant(path: str, ready) -> None:
    from qdrant_client import models

    from resources.qdrant import QdrantResource

    with QdrantResource(path=path).client() as c:
        c.create_collection("docs", vectors_config=models.VectorParams(size=4, distance=models.Distance.COSINE))
        c.upsert("docs", points=[models.PointStruct(id=i, vector=[1.0, i, 0.0, 0.5]) for i in range(10)])
        ready.set()
        time.sleep(600)  # killed here, holding the store's lock


def _killed_holder(target, *args):
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=target, args=(*args, ready))
    proc.start()
    assert ready.wait(120), "the holder never got going"
    return proc


def test_qdrant_local_store_opens_at_once_after_its_holder_was_killed(tmp_path):
    from resources.qdrant import QdrantResource

    path = str(tmp_path / "qdrant")
    holder = _killed_holder(_hold_qdrant, path)
    with pytest.raises(RuntimeError, match="already accessed"):  # alive: it really holds the lock
        with QdrantResource(path=path, lock_timeout_s=1).client():
            pass
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(10)
    t0 = time.monotonic()
    with QdrantResource(path=path, lock_timeout_s=5).client() as c:
        assert time.monotonic() - t0 < 3, "a dead holder's lock must not be waited for"
        assert c.count("docs").count == 10
    assert (tmp_path / "qdrant" / ".lock").exists()  # the file stays; the flock died with its holder


def _hold_mlflow(db: str, ready) -> None:
    from resources.mlflow import MlflowResource, _file_lock

    MlflowResource(tracking_uri=f"sqlite:///{db}").client()  # schema created
    with _file_lock(Path(db).with_suffix(".lock")):
        conn = sqlite3.connect(db)
        conn.execute("BEGIN IMMEDIATE")  # the database's write lock, as a run being logged holds it
        conn.execute("INSERT INTO experiments (name, lifecycle_stage) VALUES ('torn', 'active')")
        ready.set()
        time.sleep(600)


def test_mlflow_sqlite_store_recovers_from_a_writer_killed_mid_transaction(tmp_path):
    from resources.mlflow import MlflowResource

    db = tmp_path / "mlflow" / "mlflow.db"
    db.parent.mkdir()
    holder = _killed_holder(_hold_mlflow, str(db))
    with pytest.raises(sqlite3.OperationalError, match="locked"):  # alive: it holds the write lock
        sqlite3.connect(db, timeout=0.5).execute("BEGIN IMMEDIATE")
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(10)
    t0 = time.monotonic()
    client = MlflowResource(tracking_uri=f"sqlite:///{db}", experiment="after-crash").client()
    exp = client.get_experiment_by_name("after-crash")
    run = client.create_run(exp.experiment_id)
    client.log_metric(run.info.run_id, "loss", 1.0)
    client.set_terminated(run.info.run_id)
    assert time.monotonic() - t0 < 10
    assert client.get_experiment_by_name("torn") is None  # the cut-off transaction rolled back
    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone()[0] == "ok"

"""Warm-up for the step forkserver (listed in resources/local_executor.py PRELOAD_MODULES).

Opening the Dagster instance the first time in a process costs ~1 s of imports (SQLAlchemy,
alembic, the storage classes). The local executor forks every step from one server process;
opening (and closing) the instance there once means each step opens it in ~0.1 s instead.
"""

import os

import dagster as dg


def _warm() -> None:
    if not os.environ.get("DAGSTER_HOME"):
        return
    instance = dg.DagsterInstance.get()
    try:
        instance.get_runs(limit=1)
    finally:
        instance.dispose()  # no connection may cross the fork


_warm()

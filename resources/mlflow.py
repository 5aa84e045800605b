"""MLflow tracking and registry as a Dagster resource.

One MLflow run per Dagster step, tagged with the Dagster run id, step and partition, and ended
with the step's real outcome: FAILED when the step raises, and FAILED when the model failed a
blocking check (the step then fails too: Dagster fails a step whose blocking check fails). Only a
model that passed its gates is registered, tagged `ossa.gates=passed`; `set_alias` refuses any
version without that tag, so a failed model can never hold `champion` or `challenger`.
(dagster-mlflow's `mlflow_tracking`
shares one MLflow run across a whole Dagster run and has left runs in the wrong state,
dagster#21872; it stays installed for users who want it, but the stages use this resource.)
"""

from __future__ import annotations

import contextlib
import fcntl
from pathlib import Path
from typing import Any, Iterator, Optional

import dagster as dg
from pydantic import Field, PrivateAttr


class MlflowResource(dg.ConfigurableResource):
    """Experiment tracking + model registry (local SQLite store in tiny mode, Postgres in prod)."""

    tracking_uri: str = Field(description="e.g. sqlite:///.ossa_data/mlflow/mlflow.db or postgresql://...")
    artifact_root: Optional[str] = Field(
        default=None, description="Where run artifacts go (local dir or s3://...); server default if None."
    )
    experiment: str = Field(default="ossa", description="Experiment name for all stage runs.")

    _ready: bool = PrivateAttr(default=False)

    def client(self):
        from mlflow.tracking import MlflowClient

        self._ensure_ready()
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def _ensure_ready(self) -> None:
        """Create the store and experiment once, even when several step processes start at once.

        SQLite stores run schema migrations on first open; two processes doing that together
        collide, so the first open is serialised with a file lock beside the database.
        """
        if self._ready:
            return
        from mlflow.tracking import MlflowClient

        lock_cm: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if self.tracking_uri.startswith("sqlite:///"):
            db = Path(self.tracking_uri.removeprefix("sqlite:///"))
            db.parent.mkdir(parents=True, exist_ok=True)
            lock_cm = _file_lock(db.with_suffix(".lock"))
        with lock_cm:
            client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
            if client.get_experiment_by_name(self.experiment) is None:
                try:
                    client.create_experiment(self.experiment, artifact_location=self._artifact_location())
                except Exception:  # another process won the race; fetch below
                    if client.get_experiment_by_name(self.experiment) is None:
                        raise
        self._ready = True

    def _artifact_location(self) -> Optional[str]:
        if not self.artifact_root:
            return None
        if "://" in self.artifact_root:
            return self.artifact_root
        Path(self.artifact_root).mkdir(parents=True, exist_ok=True)
        return Path(self.artifact_root).resolve().as_uri()

    @contextlib.contextmanager
    def start_run(
        self, context: dg.AssetExecutionContext, run_name: str, tags: dict[str, str] | None = None
    ) -> Iterator["TrackedRun"]:
        client = self.client()
        exp = client.get_experiment_by_name(self.experiment)
        all_tags = {
            "dagster.run_id": context.run.run_id,
            "dagster.asset_key": context.asset_key.to_user_string(),
            "dagster.partition": context.partition_key if context.has_partition_key else "",
            **(tags or {}),
        }
        run = client.create_run(exp.experiment_id, run_name=run_name, tags=all_tags)
        tracked = TrackedRun(client, run.info.run_id, run.info.artifact_uri)
        try:
            yield tracked
        except BaseException:
            tracked.flush()
            client.set_terminated(run.info.run_id, status="FAILED")
            raise
        tracked.flush()
        client.set_terminated(run.info.run_id, status="FAILED" if tracked.failed_checks else "FINISHED")


class TrackedRun:
    """A thin handle on one MLflow run: params, metrics, artifacts, registry."""

    # Per-step metrics are buffered: one tracking-store write per step cost ~8 % of a tiny
    # training run (SQLite or a remote server alike); they are flushed every few seconds, when
    # the buffer fills, and when the run ends, with their own steps and timestamps.
    FLUSH_SECONDS = 5.0
    FLUSH_METRICS = 500

    def __init__(self, client, run_id: str, artifact_uri: str):
        import time

        self.client = client
        self.run_id = run_id
        self.artifact_uri = artifact_uri
        self._pending: list = []
        self._flushed_at = time.monotonic()
        self.failed_checks: list[str] = []
        self.gates_recorded = False

    def record_gates(self, checks) -> bool:
        """Record the blocking checks' outcome on the run; True when all passed.

        A failed gate ends the run FAILED (without raising: the step reports the check) and
        tags it with the failed check names, so MLflow and Dagster tell the same story.
        """
        failed = sorted(c.check_name for c in checks if not c.passed)
        self.failed_checks = failed
        self.gates_recorded = True
        self.client.set_tag(self.run_id, GATES_TAG, "failed" if failed else "passed")
        if failed:
            self.client.set_tag(self.run_id, FAILED_CHECKS_TAG, ",".join(failed))
        return not failed

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending.extend(Metric(k, float(v), now, step) for k, v in metrics.items())
        if len(self._pending) >= self.FLUSH_METRICS or time.monotonic() - self._flushed_at > self.FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        import time

        pending, self._pending = self._pending, []
        for i in range(0, len(pending), 1000):  # MLflow's log_batch limit
            self.client.log_batch(self.run_id, metrics=pending[i : i + 1000])
        self._flushed_at = time.monotonic()

    def log_artifacts(self, local_dir: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(local_path), artifact_path)

    def register(self, name: str, source: str, tags: dict[str, str] | None = None) -> str:
        """Register `source` (an artifact URI or a stored path) as a new version of `name`.

        Only a model whose gates passed (`record_gates`) is registered: a failed one stays a
        FAILED run with its artifacts, and never becomes a version that an alias could name.
        """
        if not self.gates_recorded:
            raise ValueError(f"{name}: record the blocking checks (record_gates) before registering")
        if self.failed_checks:
            raise ValueError(f"{name}: not registered, it failed {', '.join(self.failed_checks)}")
        return register_version(self.client, name, source, self.run_id, tags)


GATES_TAG = "ossa.gates"  # passed | failed: on the run, and on every registered version
FAILED_CHECKS_TAG = "ossa.failed_checks"


def register_version(client, name: str, source: str, run_id: str, tags: dict[str, str] | None = None) -> str:
    """A new version of `name` for a model that passed its blocking checks."""
    try:
        client.create_registered_model(name)
    except Exception:  # exists already (or raced another process): versions still append
        pass
    mv = client.create_model_version(name, source, run_id=run_id, tags={**(tags or {}), GATES_TAG: "passed"})
    return str(mv.version)


def set_alias(client, name: str, alias: str, version: str) -> None:
    """Point `alias` at `version`, which must have passed its gates: the one way ossa moves aliases."""
    mv = client.get_model_version(name, str(version))
    if (mv.tags or {}).get(GATES_TAG) != "passed":
        raise ValueError(f"{name} v{version} did not pass its blocking checks "
                         f"({GATES_TAG}={(mv.tags or {}).get(GATES_TAG)!r}): it can never hold the alias {alias!r}")
    client.set_registered_model_alias(name, alias, str(version))


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def registry_alias_version(client, name: str, alias: str):
    """The model version behind `alias`, or None (no such model or alias yet)."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except Exception:  # MlflowException RESOURCE_DOES_NOT_EXIST: nothing holds the alias
        return None


def mirror_release(client, rel) -> dict[str, str | None]:
    """Point the registry's `champion`/`challenger` aliases where the release points (and drop
    `challenger` when the release has none), so MLflow cannot disagree with what is served.
    Written *after* the release moved; the release stays the source of truth. Returns the
    alias -> version it set (None: removed)."""
    names = {v.registered_model for v in rel.variants if v.registered_model}
    done: dict[str, str | None] = {}
    for name in names:
        for role in ("champion", "challenger"):
            v = next((v for v in rel.variants if v.role == role and v.registered_model == name
                      and v.registry_version), None)
            if v is not None:
                set_alias(client, name, role, v.registry_version)
                done[f"{name}@{role}"] = str(v.registry_version)
            elif registry_alias_version(client, name, role) is not None:
                client.delete_registered_model_alias(name, role)
                done[f"{name}@{role}"] = None
    return done

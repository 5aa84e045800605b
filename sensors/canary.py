"""The rollback sensor: judges each route's challenger on live metrics, every tick.

It reads `ossa_variant_outcomes_total` from every server replica's /metrics (OSSA_SERVE_URLS,
comma-separated; default the server `make run` starts), sums them per variant and asks the
sequential rule in lib/canary.py: promote, roll back, or keep collecting. A move is one
compare-and-set of the route's release (lib/release.py) on the version it judged; servers
follow the store, MLflow's aliases are mirrored from the new release and the decision with its
evidence is tagged on the challenger's registry version; the lineage graph gets Release nodes
with REPLACED / ROLLED_BACK_FROM edges. Its baselines live in the cursor. A replica or a store
it cannot reach makes it skip with the reason: it never decides on partial evidence.
"""

from __future__ import annotations

import json
import os

import dagster as dg

from resources.graph import GraphStoreResource
from resources.mlflow import MlflowResource
from resources.release import ReleaseStoreResource, publish_move

DEFAULT_URLS = "http://127.0.0.1:8000"


def serve_urls() -> list[str]:
    return [u.strip().rstrip("/") for u in os.environ.get("OSSA_SERVE_URLS", DEFAULT_URLS).split(",") if u.strip()]


class MetricsUnreachable(RuntimeError):
    pass


def read_outcomes(urls: list[str], timeout_s: float = 5.0) -> dict:
    """route -> model_version -> outcome -> count, summed over the replicas."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    out: dict = {}
    for url in urls:
        try:
            r = httpx.get(url + "/metrics", timeout=timeout_s)
            r.raise_for_status()
        except httpx.HTTPError as e:
            raise MetricsUnreachable(f"{url}/metrics: {type(e).__name__}: {e}") from None
        for fam in text_string_to_metric_families(r.text):
            if fam.name != "ossa_variant_outcomes":
                continue
            for s in fam.samples:
                if not s.name.endswith("_total"):
                    continue
                lb = s.labels
                per = out.setdefault(lb["route"], {}).setdefault(lb["model_version"], {})
                per[lb["outcome"]] = per.get(lb["outcome"], 0) + int(s.value)
    return out


def canary_policy():
    from ossa_assets.lib.canary import CanaryPolicy

    env = os.environ.get
    return CanaryPolicy(alpha=float(env("OSSA_CANARY_ALPHA", "0.05")),
                        min_requests=int(env("OSSA_CANARY_MIN_REQUESTS", "50")),
                        min_events=int(env("OSSA_CANARY_MIN_EVENTS", "5")),
                        promote_after=int(env("OSSA_CANARY_PROMOTE_AFTER", "500")))


def judge_once(cursor: str | None, releases: ReleaseStoreResource, mlflow: MlflowResource | None,
               graph: GraphStoreResource | None, urls: list[str]) -> tuple[str, str]:
    """One tick: (the next cursor, what it did or why it skipped). Raises nothing for an
    unreachable replica or store: that is a skip, with its reason."""
    from ossa_assets.lib import canary

    try:
        outcomes = read_outcomes(urls)
    except MetricsUnreachable as e:
        return cursor or "{}", f"skipped, no decision: metrics unreachable ({e})"
    try:
        store = releases.open()
        moves, nxt, notes = canary.judge(store, outcomes, json.loads(cursor or "{}"), canary_policy(),
                                         moved_by="sensor:canary_judge")
    except Exception as e:  # the release store is down: nothing can move, nothing is decided
        return cursor or "{}", f"skipped, no decision: release store unreachable ({type(e).__name__}: {e})"
    for m in moves:
        notes.extend(publish_move(m, mlflow, graph))
    return json.dumps(nxt, sort_keys=True), "; ".join(notes) or "no route has a challenger"


@dg.sensor(
    name="canary_judge",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Judges each route's challenger on the servers' live metrics (errors, slow answers, invalid "
    "outputs, feedback) with a sequential test: promotes, rolls back, or keeps collecting.",
)
def canary_judge(context: dg.SensorEvaluationContext, releases: ReleaseStoreResource, mlflow: MlflowResource,
                 graph: GraphStoreResource):
    cursor, note = judge_once(context.cursor, releases, mlflow, graph, serve_urls())
    context.update_cursor(cursor)
    return dg.SkipReason(note)

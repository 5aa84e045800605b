"""The release store as a Dagster resource: where each route's release pointer lives.

Local mode: a directory under the data root (`<root>/serving/releases`), beside the deployment
state. Production: Postgres by URL (`OSSA_RELEASE_URL`), so that server replicas on different
machines follow one release without a shared file system. The logic is in lib/release.py.
"""

from __future__ import annotations

import dagster as dg
from pydantic import Field


def publish_move(move, mlflow=None, graph=None) -> list[str]:
    """After a release moved (the truth): MLflow's aliases follow it, a judged challenger's
    registry version is tagged with the decision and its evidence, and the lineage graph records
    the move. Each failure is returned as a note; none undoes the move. `move` is a
    lib.canary.Move; `mlflow`/`graph` the resources (None: skipped)."""
    import json

    from ossa_assets.lib.canary import record_move
    from resources.mlflow import mirror_release

    notes = []
    chall = move.before.challenger if move.before else None
    if mlflow is not None:
        try:
            client = mlflow.client()
            mirror_release(client, move.after)
            if move.decision is not None and chall and chall.registered_model and chall.registry_version:
                client.set_model_version_tag(chall.registered_model, chall.registry_version, "ossa.canary",
                                             "promoted" if move.action == "promote" else "rolled_back")
                client.set_model_version_tag(chall.registered_model, chall.registry_version, "ossa.canary_evidence",
                                             json.dumps(move.decision.evidence(), sort_keys=True)[:5000])
        except Exception as e:
            notes.append(f"MLflow not updated ({type(e).__name__}: {e})")
    if graph is not None and move.before is not None:
        try:
            g = graph.open()
            try:
                record_move(g, move)
            finally:
                g.close()
        except Exception as e:
            notes.append(f"lineage graph not updated ({type(e).__name__}: {e})")
    return notes


class ReleaseStoreResource(dg.ConfigurableResource):
    location: str = Field(description="A directory (embedded default) or a postgresql:// URL (set via EnvVar).")

    def open(self):
        from ossa_assets.lib.release import open_store

        return open_store(self.location)

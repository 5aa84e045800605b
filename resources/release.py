"""The release store as a Dagster resource: where each route's release pointer lives.

Local mode: a directory under the data root (`<root>/serving/releases`), beside the deployment
state. Production: Postgres by URL (`OSSA_RELEASE_URL`), so that server replicas on different
machines follow one release without a shared file system. The logic is in lib/release.py.
"""

from __future__ import annotations

import dagster as dg
from pydantic import Field


class ReleaseStoreResource(dg.ConfigurableResource):
    location: str = Field(description="A directory (embedded default) or a postgresql:// URL (set via EnvVar).")

    def open(self):
        from ossa_assets.lib.release import open_store

        return open_store(self.location)

"""Neo4j over Bolt (and FalkorDB's Bolt endpoint, which stands in for it in tests)."""

from __future__ import annotations

from typing import Any

from ossa_assets.lib.graph_store.base import Row

# -- Bolt ----------------------------------------------------------------------------------------


def _collect(tx: Any, query: str, params: dict[str, Any]) -> list[Row]:
    return [list(r.values()) for r in tx.run(query, params)]  # consumed inside the transaction


class BoltGraphBackend:
    """Neo4j over Bolt. On a new database run, once:
    `CREATE CONSTRAINT artifact_id IF NOT EXISTS FOR (n:Artifact) REQUIRE n.id IS UNIQUE`
    (`NEO4J_SCHEMA`): it backs the id lookups with an index and makes racing MERGEs safe.

    Statements stay small (10 rows, ~8 KB): FalkorDB's experimental Bolt side, which stands in
    for Neo4j in tests, segfaults on an UNWIND of ~400 maps, a 70 KB string parameter, or 20 rows
    of 9 properties each (5.5 KB; 15 rows pass — it counts values, not bytes). A real Neo4j takes
    far larger statements: raise batch_size (OSSA_NEO4J_BATCH_SIZE, e.g. 1000) there.
    `driver_options` go to `neo4j.GraphDatabase.driver` (e.g. `connection_timeout`).
    """

    def __init__(self, uri: str, user: str | None = None, password: str | None = None,
                 database: str | None = None, *, batch_size: int | None = None,
                 max_batch_bytes: int = 8_000, **driver_options: Any):
        import neo4j

        auth = (user, password or "") if user else None
        self._driver = neo4j.GraphDatabase.driver(uri, auth=auth, **driver_options)
        self.database = database
        self.batch_size = batch_size or 10
        self.max_batch_bytes: int | None = max_batch_bytes

    def read(self, query: str, params: dict[str, Any]) -> list[Row]:
        with self._driver.session(database=self.database) as s:
            return s.execute_read(_collect, query, params)

    def write(self, query: str, params: dict[str, Any]) -> list[Row]:
        with self._driver.session(database=self.database) as s:
            # the driver replays this on transient errors: safe, every write is idempotent
            return s.execute_write(_collect, query, params)

    def close(self) -> None:
        self._driver.close()



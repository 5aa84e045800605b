"""The lineage graph store: embedded FalkorDB by default, Neo4j over Bolt in production."""

from __future__ import annotations

from typing import Literal, Optional

import dagster as dg
from pydantic import Field


class GraphStoreResource(dg.ConfigurableResource):
    backend: Literal["embedded", "bolt"] = Field(
        default="embedded",
        description="embedded: a local FalkorDB server the store starts itself; bolt: Neo4j.",
    )
    data_dir: Optional[str] = Field(default=None, description="Embedded store directory.")
    uri: Optional[str] = Field(default=None, description="bolt://host:7687 or neo4j+s://...")
    user: Optional[str] = Field(default=None, description="Neo4j user (EnvVar).")
    password: Optional[str] = Field(default=None, description="Neo4j password (EnvVar).")
    batch_size: Optional[int] = Field(
        default=None,
        description="Rows per Bolt statement (default 10, what FalkorDB's Bolt side survives; a real "
        "Neo4j takes 1000).",
    )

    def open(self):
        from ossa_assets.lib.graph_store import open_graph_store

        return open_graph_store(
            self.backend, data_dir=self.data_dir, uri=self.uri, user=self.user, password=self.password,
            batch_size=self.batch_size,
        )

"""Lineage graph store: one Cypher query layer over an embedded FalkorDB or a Bolt (Neo4j) server.

Model: every node has the label `Artifact` plus one kind label (`Adapter`, `Run`, ...), a unique
string property `id` and scalar properties (str/int/float/bool, lists of one of those). Edges have
a type (`DERIVED_FROM`, `SERVES`, ...) and optional scalar properties. Walks follow edges outward:
`upstream(x)` is what `x` was made from (`(x)-[*]->(m)`), `downstream(x)` what was made from `x`
(`(m)-[*]->(x)`). Nodes come back as `{"id", "kind", "props"}`.

Backends:
- `EmbeddedFalkorDB(data_dir)`, the default: a private FalkorDB server on a unix socket, its
  append-only file in `data_dir`, started by whichever process needs it first and shared by all
  (Dagster steps, daemon, webserver, CLI). FalkorDB runs write queries one at a time, so MERGEs
  racing from many processes cannot duplicate a node.
- `BoltGraphBackend(uri)`: Neo4j. Run `NEO4J_SCHEMA` once per database; without that constraint
  concurrent MERGEs may create duplicate ids.

Floats: native FalkorDB replies carry 15 significant digits (the full double is stored).
"""

from __future__ import annotations

from ossa_assets.lib.graph_store.base import NEO4J_SCHEMA, GraphBackend
from ossa_assets.lib.graph_store.bolt import BoltGraphBackend
from ossa_assets.lib.graph_store.embedded import EmbeddedFalkorDB
from ossa_assets.lib.graph_store.store import GraphStore, Lineage, open_graph_store

__all__ = [
    "NEO4J_SCHEMA",
    "BoltGraphBackend",
    "EmbeddedFalkorDB",
    "GraphBackend",
    "GraphStore",
    "Lineage",
    "open_graph_store",
]

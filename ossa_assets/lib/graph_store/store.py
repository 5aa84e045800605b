"""The one query layer both backends share."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from ossa_assets.lib.graph_store.base import KIND_RE, PROP_RE, REL_RE, GraphBackend
from ossa_assets.lib.graph_store.bolt import BoltGraphBackend
from ossa_assets.lib.graph_store.embedded import EmbeddedFalkorDB

# -- the query layer -----------------------------------------------------------------------------
# The one place for Cypher, written once for both dialects: no FalkorDB procedures, no Neo4j
# subqueries or APOC. Labels and relationship types cannot be parameters: they are validated, then
# formatted in. Walks expand one level per query (a BFS) rather than `-[*1..n]->`: FalkorDB
# enumerates every path of a variable-length pattern, exponential on diamond-shaped lineage (20
# stacked diamonds: 7.5 s), where a BFS reads each node and edge once.

# Every filter on kind reads the `kind` property, never a label: FalkorDB 4.16 answers a label
# test (`n:Label`, or a label on an expanded node in a pattern) wrongly for nodes that were
# labelled in a statement during which the graph grew past 16,384 nodes (its label matrix is
# resized lazily: 116 of 17,000 Documents missing from `MATCH (n:Artifact:Document)`, measured),
# while properties and single-label scans stay right. The label is still set, for people browsing
# the graph. A node written before the property existed is matched by label once and gets it.
_UPSERT_NODES = """UNWIND $rows AS row
MERGE (n:Artifact {{id: row.id}})
ON CREATE SET n:{kind}, n.kind = '{kind}'
WITH n, row WHERE n.kind = '{kind}' OR (n.kind IS NULL AND n:{kind})
SET n += row.props, n.kind = '{kind}'
RETURN n.id"""
_UPSERT_EDGES = """UNWIND $rows AS row
MATCH (a:Artifact {{id: row.src}})
MATCH (b:Artifact {{id: row.dst}})
MERGE (a)-[e:{rel}]->(b)
SET e += row.props
RETURN row.k"""
_EXPAND = {
    "out": "UNWIND $ids AS x MATCH (a:Artifact {id: x})-[e]->(b:Artifact) "
           "RETURN a.id, type(e), b.id, labels(b), properties(b)",
    "in": "UNWIND $ids AS x MATCH (b:Artifact {id: x})<-[e]-(a:Artifact) "
          "RETURN a.id, type(e), b.id, labels(a), properties(a)",
}
# The same walk without (corpus version)-[:CONTAINS]->(document) edges: a corpus version can hold
# 100,000 documents, which an upstream answer summarises (_DOC_COUNTS, _DOC_SAMPLE) rather than
# lists. Naming the other types keeps the store from touching those edges at all (FalkorDB keeps
# one matrix per relationship type): 2,000 documents per corpus cost ~0.3 s as a filter.
WALK_TYPES = ("DERIVED_FROM", "TRAINED_ON", "PRODUCED_BY", "TRACKED_IN", "SERVES", "DECLARES", "FOLLOWS")
_EXPAND_NO_DOCS = ("UNWIND $ids AS x MATCH (a:Artifact {id: x})-[e:" + "|".join(WALK_TYPES) + "]->(b:Artifact) "
                   "RETURN a.id, type(e), b.id, labels(b), properties(b)")
_DOCS_OF = "UNWIND $ids AS x MATCH (:Artifact {id: x})-[:CONTAINS]->(d:Artifact) "
_DOC_COUNTS = _DOCS_OF + "WITH DISTINCT d RETURN d.source, count(d)"
_DOC_SAMPLE = _DOCS_OF + "WITH DISTINCT d ORDER BY d.id LIMIT $n RETURN labels(d), properties(d)"
_DOC_IDS = _DOCS_OF + "RETURN DISTINCT d.id"
_CLEAR = "MATCH (n:Artifact) WITH n LIMIT 5000 DETACH DELETE n RETURN count(*)"


def _plain(v: Any) -> Any:
    """Driver values (OrderedDict, neo4j or FalkorDB nodes) -> plain dicts, lists and scalars."""
    props = getattr(v, "properties", None)  # FalkorDB Node/Edge
    if isinstance(props, dict):
        v = props
    if hasattr(v, "items") and not isinstance(v, (str, bytes)):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _check_props(props: Mapping[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in props.items():
        if not PROP_RE.match(k) or k in ("id", "kind"):
            raise ValueError(f"{where}: bad property name {k!r}")
        if isinstance(v, (list, tuple)):
            v = list(v)
            if len({type(x) for x in v}) > 1 or any(x is None or isinstance(x, (list, tuple, dict))
                                                    for x in v):
                raise TypeError(f"{where}: property {k!r} must be a list of one scalar type")
        for x in v if isinstance(v, list) else [v]:
            if x is not None and not isinstance(x, (str, bool, int, float)):
                raise TypeError(f"{where}: property {k!r} has unsupported type {type(x).__name__}")
            if isinstance(x, float) and not math.isfinite(x):
                raise ValueError(f"{where}: property {k!r} is not finite")
            if isinstance(x, int) and not -(2**63) <= x < 2**63:
                raise ValueError(f"{where}: property {k!r} does not fit in 64 bits")
        out[k] = v
    return out


def _node(labels: list[str], props: Mapping[str, Any]) -> dict[str, Any]:
    props = _plain(props)
    kind = props.pop("kind", None)
    if not kind:  # written before nodes carried their kind as a property
        kinds = sorted(x for x in labels if x != "Artifact")
        kind = kinds[0] if kinds else "Artifact"
    return {"id": props.pop("id"), "kind": kind, "props": props}


@dataclass
class Lineage:
    root: dict[str, Any]
    nodes: list[dict[str, Any]]  # distinct, sorted by id, without the root
    edges: list[tuple[str, str, str]]  # (src, rel, dst), distinct, sorted
    # upstream(documents=N): {"total", "by_source": {source: n}, "sample": [first N document nodes]}
    documents: dict[str, Any] | None = None

    @property
    def ids(self) -> set[str]:
        return {n["id"] for n in self.nodes}


class GraphStore:
    def __init__(self, backend: GraphBackend):
        self.backend = backend

    def _batches(self, rows: list[Any]) -> Iterator[list[Any]]:
        size, budget = self.backend.batch_size, self.backend.max_batch_bytes
        batch: list[Any] = []
        used = 0
        for row in rows:
            cost = len(json.dumps(row)) if budget else 0
            if batch and (len(batch) >= size or (budget and used + cost > budget)):
                yield batch
                batch, used = [], 0
            batch.append(row)
            used += cost
        if batch:
            yield batch

    def upsert_nodes(self, nodes: Iterable[Mapping[str, Any]]) -> int:
        """MERGE nodes by id and add their properties; returns the number of distinct ids written.

        Takes `{"id", "kind", **props}` or the `{"id", "kind", "props": {...}}` this store
        returns. A property set to None is removed. An id that exists with another kind is left
        unchanged and named in a ValueError raised once the others are written (kind "Artifact"
        matches any kind).
        """
        by_kind: dict[str, dict[str, dict[str, Any]]] = {}
        for node in nodes:
            flat = dict(node)
            nid, kind = flat.pop("id", None), flat.pop("kind", None)
            if not isinstance(nid, str) or not nid:
                raise ValueError(f"node needs a non-empty string id: {node!r}")
            if not isinstance(kind, str) or not KIND_RE.match(kind):
                raise ValueError(f"node {nid!r}: kind {kind!r} must match {KIND_RE.pattern}")
            nested = flat.pop("props") if isinstance(flat.get("props"), Mapping) else {}
            props = _check_props({**flat, **nested}, f"node {nid!r}")
            row = by_kind.setdefault(kind, {}).setdefault(nid, {"id": nid, "props": {}})
            row["props"].update(props)
        written, conflicts = 0, []
        for kind, rows in by_kind.items():
            for batch in self._batches(list(rows.values())):
                got = {r[0] for r in self.backend.write(_UPSERT_NODES.format(kind=kind),
                                                        {"rows": batch})}
                written += len(got)
                conflicts += [f"{r['id']} (not {kind})" for r in batch if r["id"] not in got]
        if conflicts:
            raise ValueError(f"ids already used by another kind, left unchanged: {', '.join(conflicts)}")
        return written

    def upsert_edges(self, edges: Iterable[tuple[str, str, str, Mapping[str, Any] | None]]) -> int:
        """MERGE (src)-[:rel]->(dst) and add its properties. Returns how many edges were skipped
        because an endpoint does not exist; no stub nodes are created."""
        by_rel: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
        inputs: list[int] = []  # for each input edge, the key (k) of the row that carries it
        for src, rel, dst, *rest in edges:
            if not REL_RE.match(rel):
                raise ValueError(f"edge type {rel!r} must match {REL_RE.pattern}")
            props = _check_props((rest[0] or {}) if rest else {}, f"edge {src}-{rel}->{dst}")
            # One row per edge: FalkorDB answers identical MERGEs in one UNWIND with a single row.
            row = by_rel.setdefault(rel, {}).setdefault(
                (src, dst), {"k": len(inputs), "src": src, "dst": dst, "props": {}})
            row["props"].update(props)
            inputs.append(row["k"])
        done: set[int] = set()
        for rel, rows in by_rel.items():
            for batch in self._batches(list(rows.values())):
                done.update(int(r[0]) for r in self.backend.write(_UPSERT_EDGES.format(rel=rel),
                                                                  {"rows": batch}))
        return sum(1 for k in inputs if k not in done)

    def get_node(self, id: str) -> dict[str, Any] | None:
        rows = self.backend.read("MATCH (n:Artifact {id: $id}) RETURN labels(n), properties(n)",
                                 {"id": id})
        return _node(*rows[0]) if rows else None

    def find_nodes(self, kind: str | None = None, **props: Any) -> list[dict[str, Any]]:
        """Nodes of `kind` (any if None) whose given properties equal the values (None: absent)."""
        if kind is not None and not KIND_RE.match(kind):
            raise ValueError(f"kind {kind!r} must match {KIND_RE.pattern}")
        if not isinstance(props.get("id", ""), str):
            raise TypeError("find_nodes: id must be a string")
        wanted = _check_props({k: v for k, v in props.items() if k != "id"}, "find_nodes")
        wanted.update({"id": props["id"]} if "id" in props else {})
        conds = [f"n.{k} IS NULL" if v is None else f"n.{k} = $p{i}"
                 for i, (k, v) in enumerate(wanted.items())]
        if kind:
            conds.insert(0, f"n.kind = '{kind}'")  # validated above; a property, not a label (see top)
        q = ("MATCH (n:Artifact)"
             + (" WHERE " + " AND ".join(conds) if conds else "")
             + " RETURN labels(n), properties(n) ORDER BY n.id")
        params = {f"p{i}": v for i, v in enumerate(wanted.values())}
        return [_node(*r) for r in self.backend.read(q, params)]

    def upstream(self, id: str, max_depth: int = 50, documents: int | None = None) -> Lineage:
        """What `id` was made from: nodes reachable along outgoing edges within max_depth hops.

        documents=None follows every edge, CONTAINS included (every document listed);
        documents=N leaves corpus versions' documents out of the walk and summarises the
        documents of every corpus version reached: their count, the count per source, and the
        first N (by id).
        """
        if documents is None:
            return self._walk(id, max_depth, "out")
        if not isinstance(documents, int) or documents < 0:
            raise ValueError("documents must be a non-negative int or None")
        lin = self._walk(id, max_depth, "out", query=_EXPAND_NO_DOCS)
        corpora = [n["id"] for n in [lin.root, *lin.nodes] if n["kind"] == "CorpusVersion"]
        by_source: dict[str, int] = {}
        sample: list[dict[str, Any]] = []
        if corpora:
            for src, n in self.backend.read(_DOC_COUNTS, {"ids": corpora}):
                by_source[str(src)] = by_source.get(str(src), 0) + int(n)
            if documents:
                sample = [_node(*r) for r in self.backend.read(_DOC_SAMPLE, {"ids": corpora, "n": documents})]
        lin.documents = {"total": sum(by_source.values()), "by_source": dict(sorted(by_source.items())),
                         "sample": sample}
        return lin

    def document_ids(self, corpus_ids: list[str]) -> set[str]:
        """Ids of the Document nodes the given corpus versions contain."""
        out: set[str] = set()
        for batch in self._batches(list(corpus_ids)):
            out.update(r[0] for r in self.backend.read(_DOC_IDS, {"ids": batch}))
        return out

    def downstream(self, id: str, max_depth: int = 50) -> Lineage:
        """What was made from `id`: nodes that reach it along outgoing edges within max_depth."""
        return self._walk(id, max_depth, "in")

    def _walk(self, id: str, max_depth: int, direction: str, query: str | None = None) -> Lineage:
        root = self.get_node(id)
        if root is None:
            raise KeyError(f"no artifact with id {id!r}")
        if not isinstance(max_depth, int) or max_depth < 0:
            raise ValueError("max_depth must be a non-negative int")
        seen, frontier = {id}, [id]
        nodes: dict[str, dict[str, Any]] = {}
        edges: set[tuple[str, str, str]] = set()
        for _ in range(max_depth):  # one query per level: not one snapshot while others write
            nxt: list[str] = []
            for batch in self._batches(frontier):
                for src, rel, dst, labels, props in self.backend.read(query or _EXPAND[direction],
                                                                      {"ids": batch}):
                    edges.add((src, rel, dst))
                    other = dst if direction == "out" else src
                    if other not in seen:
                        seen.add(other)
                        nxt.append(other)
                        nodes[other] = _node(labels, props)
            if not nxt:
                break
            frontier = nxt
        return Lineage(root, [nodes[k] for k in sorted(nodes)], sorted(edges))

    def counts(self) -> dict[str, dict[str, int]]:
        """{"nodes": {kind: n}, "edges": {type: n}}."""
        nodes: dict[str, int] = {}
        for k, labels, n in self.backend.read("MATCH (n:Artifact) RETURN n.kind, labels(n), count(n)", {}):
            kind = k or _node(labels, {"id": ""})["kind"]
            nodes[kind] = nodes.get(kind, 0) + int(n)  # int(): FalkorDB aggregates can be floats
        edges = {t: int(n) for t, n in self.backend.read(
            "MATCH (:Artifact)-[e]->(:Artifact) RETURN type(e), count(e)", {})}
        return {"nodes": dict(sorted(nodes.items())), "edges": dict(sorted(edges.items()))}

    def dump(self, page: int = 50) -> tuple[list[dict[str, Any]], list[tuple[str, str, str, dict[str, Any]]]]:
        """Every node (id, kind, properties) and edge (src, type, dst, properties), sorted: two
        graphs hold the same lineage exactly when their dumps are equal. Read in pages, since
        FalkorDB's Bolt side fails on large messages."""
        nodes: list[dict[str, Any]] = []
        while True:
            rows = self.backend.read("MATCH (n:Artifact) RETURN labels(n), properties(n) ORDER BY n.id "
                                     "SKIP $skip LIMIT $n", {"skip": len(nodes), "n": page})
            nodes.extend(_node(*r) for r in rows)
            if len(rows) < page:
                break
        edges: list[tuple[str, str, str, dict[str, Any]]] = []
        while True:
            rows = self.backend.read("MATCH (a:Artifact)-[e]->(b:Artifact) RETURN a.id, type(e), b.id, "
                                     "properties(e) ORDER BY a.id, type(e), b.id SKIP $skip LIMIT $n",
                                     {"skip": len(edges), "n": page})
            edges.extend((a, t, b, _plain(p)) for a, t, b, p in rows)
            if len(rows) < page:
                break
        return nodes, edges

    def clear(self) -> None:
        """Delete every Artifact node and its edges; other data in a shared Neo4j stays."""
        while int(self.backend.write(_CLEAR, {})[0][0]) > 0:  # chunks bound Neo4j's tx memory
            pass

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> GraphStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_graph_store(backend: str, *, data_dir: str | Path | None = None, uri: str | None = None,
                     user: str | None = None, password: str | None = None,
                     database: str | None = None, batch_size: int | None = None) -> GraphStore:
    """`embedded` (needs data_dir) or `bolt` (needs uri)."""
    if backend == "embedded":
        if data_dir is None:
            raise ValueError("the embedded graph store needs data_dir")
        return GraphStore(EmbeddedFalkorDB(data_dir))
    if backend == "bolt":
        if not uri:
            raise ValueError("the bolt graph store needs uri (bolt://host:7687, neo4j+s://...)")
        return GraphStore(BoltGraphBackend(uri, user, password, database, batch_size=batch_size))
    raise ValueError(f"unknown graph store backend {backend!r}: expected 'embedded' or 'bolt'")

"""Lineage recorder: Dagster's event log -> the lineage graph.

No asset writes lineage itself. Every stage asset goes through `artifact_asset`, which puts the
artifact's lineage id, kind and input lineage ids in its materialization metadata; this module
reads materializations back from the event log and upserts nodes and edges. Upserts are
idempotent (MERGE by id), so replaying the whole log (`ossa lineage rebuild`) yields the same
graph: losing the graph database loses nothing.

Graph model (nodes carry `kind`):
  Artifact kinds: SourceSnapshot, CorpusVersion, BaseModel, Dataset (tokenized corpus, embedding
  pairs), Checkpoint, Adapter, EmbeddingModel, Evaluation, OnnxModel, Engine, Collection,
  Deployment — (artifact)-[:DERIVED_FROM]->(input artifact); a model's data inputs are
  (model)-[:TRAINED_ON]->(dataset | corpus version | source snapshot) instead. These edges carry
  the artifact's data_version, code_version and time (`at`).
  Document (id `doc:<content hash>`), Source (id `source:<name>`):
  (corpus version)-[:CONTAINS]->(document)-[:DERIVED_FROM]->(source), and
  (source snapshot)-[:DERIVED_FROM]->(source); read from the corpus's own files at sync time.
  Run (a Dagster run, with its job) — (artifact)-[:PRODUCED_BY]->(run)
  MLflowRun                  — (artifact)-[:TRACKED_IN]->(mlflow run)
  Endpoint (a serving route) — (endpoint)-[:SERVES]->(engine), (deployment)-[:DECLARES]->(endpoint);
                               the endpoint's `lineage_id` property names the engine it serves now.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import dagster as dg

from ossa_assets.artifact_asset import (
    MD_ARTIFACT_META,
    MD_CONFIG,
    MD_DERIVED_FROM,
    MD_KIND,
    MD_LINEAGE_ID,
    MD_PATH,
    MD_TRAINED_ON,
)

PAGE = 500


@dataclass
class SyncStats:
    materializations: int = 0
    nodes: int = 0
    edges: int = 0
    skipped_edges: int = 0
    cursor: int = 0
    errors: list[str] = field(default_factory=list)


def _md(mat: dg.AssetMaterialization, key: str) -> Any:
    v = mat.metadata.get(key)
    return None if v is None else v.value


def _scalar_props(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, (str, int, float, bool)):
            out[prefix + k] = v
        elif isinstance(v, (dict, list)):
            out[prefix + k] = json.dumps(v, sort_keys=True)
    return out


def document_id(doc_id: str) -> str:
    return f"doc:{doc_id}"


def source_id(name: str) -> str:
    return f"source:{name}"


def _documents(corpus_node: dict[str, Any], edge_props: dict[str, Any]):
    """Document and Source nodes of a curated corpus version, read from the corpus's own files
    (the event log holds the path, not 100,000 document ids)."""
    from ossa_assets.lib.curation.corpus import document_rows

    nodes, edges, sources = [], [], {}
    for d in document_rows(corpus_node["path"]):
        did = document_id(d["doc_id"])
        nodes.append({"id": did, "kind": "Document", **{k: v for k, v in d.items() if v is not None}})
        edges.append((corpus_node["id"], "CONTAINS", did, edge_props))
        sources.setdefault(d["source"], d.get("domain", ""))
        edges.append((did, "DERIVED_FROM", source_id(d["source"]), {}))
    nodes += [{"id": source_id(n), "kind": "Source", "name": n, "domain": dom} for n, dom in sorted(sources.items())]
    return nodes, edges


def graph_items(record: Any, documents: bool = True) -> tuple[list[dict[str, Any]], list[tuple[str, str, str, dict[str, Any]]]]:
    """Nodes and edges for one materialization event record (empty if it is not an ossa artifact).

    Edges carry the artifact's data version, code version and time. A curated corpus version
    also brings its Document nodes (and their Source nodes) when `documents` is true.
    """
    mat = record.asset_materialization
    lineage_id = _md(mat, MD_LINEAGE_ID) if mat else None
    if not lineage_id:
        return [], []
    meta = json.loads(_md(mat, MD_ARTIFACT_META) or "{}")
    derived = json.loads(_md(mat, MD_DERIVED_FROM) or "[]")
    trained = set(json.loads(_md(mat, MD_TRAINED_ON) or "[]"))
    dagster_event = record.event_log_entry.dagster_event
    tags = dagster_event.event_specific_data.materialization.tags or {}
    at = float(record.timestamp)
    node = {
        "id": lineage_id,
        "kind": _md(mat, MD_KIND) or "Artifact",
        "asset_key": mat.asset_key.to_user_string(),
        "partition": mat.partition or "",
        "data_version": tags.get("dagster/data_version", ""),
        "code_version": tags.get("dagster/code_version", ""),
        "config_hash": _md(mat, MD_CONFIG) or "",
        "path": _md(mat, MD_PATH) or "",
        "dagster_run_id": record.run_id,
        "storage_id": int(record.storage_id),
        "materialized_at": at,
        **_scalar_props({k: v for k, v in meta.items() if k != "serves"}, "meta_"),
    }
    props = {"data_version": node["data_version"], "code_version": node["code_version"], "at": at}
    run = {"id": f"run:{record.run_id}", "kind": "Run", "run_id": record.run_id,
           "job": dagster_event.job_name or ""}
    nodes = [node, run]
    edges: list[tuple[str, str, str, dict[str, Any]]] = [
        (lineage_id, "TRAINED_ON" if src in trained else "DERIVED_FROM", src, props) for src in derived
    ]
    edges.append((lineage_id, "PRODUCED_BY", run["id"], props))
    if meta.get("mlflow_run_id"):
        mid = f"mlflow:{meta['mlflow_run_id']}"
        nodes.append({"id": mid, "kind": "MLflowRun", "run_id": meta["mlflow_run_id"]})
        edges.append((lineage_id, "TRACKED_IN", mid, {}))
    if node["kind"] == "SourceSnapshot" and "|" in node["partition"]:
        domain, name = node["partition"].split("|", 1)
        nodes.append({"id": source_id(name), "kind": "Source", "name": name, "domain": domain})
        edges.append((lineage_id, "DERIVED_FROM", source_id(name), props))
    if node["kind"] == "CorpusVersion" and documents and node["path"]:
        doc_nodes, doc_edges = _documents(node, props)
        nodes += doc_nodes
        edges += doc_edges
    releases = meta.get("releases") or {}
    for route, engine_id in sorted((meta.get("serves") or {}).items()):
        eid = f"endpoint:{route}"
        nodes.append(
            {"id": eid, "kind": "Endpoint", "route": route, "lineage_id": engine_id,
             "deployment": lineage_id, "declared_at": at, **({"release": releases[route]} if route in releases else {})}
        )
        edges.append((eid, "SERVES", engine_id, {"deployment": lineage_id, "at": at}))
        edges.append((lineage_id, "DECLARES", eid, {"at": at}))
        if route in releases:  # the release it follows: every variant, not the champion alone
            edges.append((eid, "FOLLOWS", releases[route], {"deployment": lineage_id, "at": at}))
    if node["kind"] == "Release" and meta.get("previous_release"):
        edges.append((lineage_id, "REPLACED", meta["previous_release"], {"action": "offer", "at": at}))
    return nodes, edges


def sync(
    instance: dg.DagsterInstance,
    store: Any,
    asset_keys: Sequence[dg.AssetKey],
    after_storage_id: int = 0,
) -> SyncStats:
    """Write every materialization after `after_storage_id` into the graph, oldest first."""
    records = []
    for key in asset_keys:
        cursor = None
        while True:
            res = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=key, after_storage_id=after_storage_id or None),
                limit=PAGE,
                cursor=cursor,
                ascending=True,
            )
            records.extend(res.records)
            if not res.has_more:
                break
            cursor = res.cursor
    records.sort(key=lambda r: r.storage_id)  # upstream before downstream: edges find their nodes
    stats = SyncStats(cursor=after_storage_id)
    for r in records:
        nodes, edges = graph_items(r)
        stats.cursor = max(stats.cursor, int(r.storage_id))
        if not nodes:
            continue
        store.upsert_nodes(nodes)
        stats.skipped_edges += store.upsert_edges(edges) or 0
        stats.materializations += 1
        stats.nodes += len(nodes)
        stats.edges += len(edges)
    return stats


def rebuild(instance: dg.DagsterInstance, store: Any, asset_keys: Iterable[dg.AssetKey]) -> SyncStats:
    """Drop the graph and replay the whole event log into it."""
    store.clear()
    return sync(instance, store, list(asset_keys), 0)

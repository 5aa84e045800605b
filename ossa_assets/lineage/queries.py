"""Lineage questions over the graph store: resolve what the user named, render the answer."""

from __future__ import annotations

from typing import Any

# Edges that mean "was computed from" when walking towards the data.
DATA_EDGES = ("DERIVED_FROM", "SERVES")


def resolve(store: Any, target: str, partition: str | None = None) -> str | None:
    """A node id for an endpoint route (`/api-model/v1`), a lineage id, or an asset key.

    A route resolves to the engine it serves now; an asset key to its latest materialization
    (of `partition`, for partitioned assets).
    """
    if target.startswith("/"):
        node = store.get_node(f"endpoint:{target}")
        return node["props"].get("lineage_id") if node else None
    if "@" in target or target.startswith(("run:", "mlflow:", "endpoint:")):
        return target if store.get_node(target) else None
    candidates = store.find_nodes(asset_key=target, partition=partition or "")
    if not candidates:
        return None
    return max(candidates, key=lambda n: n["props"].get("storage_id", 0))["id"]


def _label(node: dict[str, Any]) -> str:
    p = node.get("props", {})
    if node["kind"] == "Endpoint":
        return f"endpoint {p.get('route')}"
    extras = []
    if p.get("meta_mlflow_run_id"):
        extras.append(f"mlflow run {p['meta_mlflow_run_id'][:12]}")
    if p.get("meta_model_version"):
        extras.append(f"{p.get('meta_registered_model', 'model')} v{p['meta_model_version']}")
    if p.get("meta_documents"):
        extras.append(f"{p['meta_documents']} documents")
    if p.get("dagster_run_id"):
        extras.append(f"dagster run {p['dagster_run_id'][:8]}")
    tail = f"  ({', '.join(extras)})" if extras else ""
    return f"{node['kind']:<14} {node['id']}{tail}"


def render(lineage: Any, direction: str = "upstream") -> str:
    """An indented tree from the root along data edges; shared ancestors are printed once."""
    nodes = {n["id"]: n for n in [lineage.root, *lineage.nodes]}
    children: dict[str, list[str]] = {}
    for src, rel, dst in lineage.edges:
        if rel not in DATA_EDGES:
            continue
        a, b = (src, dst) if direction == "upstream" else (dst, src)
        children.setdefault(a, []).append(b)
    lines: list[str] = []
    seen: set[str] = set()

    def walk(node_id: str, depth: int) -> None:
        node = nodes.get(node_id, {"id": node_id, "kind": "?", "props": {}})
        prefix = "  " * depth + ("└─ " if depth else "")
        if node_id in seen:
            lines.append(f"{prefix}{node['kind']:<14} {node_id}  (shown above)")
            return
        seen.add(node_id)
        lines.append(prefix + _label(node))
        for child in sorted(children.get(node_id, []), key=lambda c: nodes.get(c, {}).get("kind", "")):
            walk(child, depth + 1)

    walk(lineage.root["id"], 0)
    return "\n".join(lines)


def as_json(lineage: Any) -> dict[str, Any]:
    return {
        "root": lineage.root,
        "nodes": lineage.nodes,
        "edges": [{"src": s, "rel": r, "dst": d} for s, r, d in lineage.edges],
    }


def chain_kinds(lineage: Any) -> set[str]:
    """The kinds of artifact reached (for checks and tests)."""
    return {n["kind"] for n in lineage.nodes} | {lineage.root["kind"]}

"""Lineage questions over the graph store: resolve what the user named, render the answer."""

from __future__ import annotations

from typing import Any

# Edges that mean "was computed from" when walking towards the data.
DATA_EDGES = ("DERIVED_FROM", "TRAINED_ON", "CONTAINS", "SERVES", "DECLARES", "FOLLOWS")


def resolve(store: Any, target: str, partition: str | None = None) -> str | None:
    """A node id for an endpoint route (`/api-model/v1`), a lineage id, or an asset key.

    A route resolves to the release it follows now (its variants, each down to its documents),
    or, without a release in the graph, to the engine it serves; an asset key to its latest
    materialization (of `partition`, for partitioned assets).
    """
    if target.startswith("/"):
        node = store.get_node(f"endpoint:{target}")
        if node is None:
            return None
        release = node["props"].get("release")
        if release and store.get_node(release):
            return release
        return node["props"].get("lineage_id")
    if "@" in target or target.startswith(("run:", "mlflow:", "endpoint:", "doc:", "source:")):
        return target if store.get_node(target) else None
    candidates = store.find_nodes(asset_key=target, partition=partition or "")
    if not candidates:
        return None
    return max(candidates, key=lambda n: n["props"].get("storage_id", 0))["id"]


def previous(store: Any, node_id: str) -> str | None:
    """The materialization of the same asset (partition) before `node_id`, if the graph has one."""
    node = store.get_node(node_id)
    if node and node["kind"] == "Release":  # the release this one replaced (a move, not a rebuild)
        rows = store.backend.read("MATCH (:Artifact {id: $id})-[:REPLACED]->(b:Artifact) RETURN b.id", {"id": node_id})
        if rows:
            return rows[0][0]
    if not node or not node["props"].get("asset_key"):
        return None
    p = node["props"]
    older = [n for n in store.find_nodes(asset_key=p["asset_key"], partition=p.get("partition"))
             if n["props"].get("storage_id", 0) < p.get("storage_id", 0) and n["id"] != node_id]
    return max(older, key=lambda n: n["props"]["storage_id"])["id"] if older else None


def _by_asset(lineage: Any) -> dict[str, dict[str, Any]]:
    out = {}
    for n in [lineage.root, *lineage.nodes]:
        p = n.get("props", {})
        if p.get("asset_key"):
            out[p["asset_key"] + (f"[{p['partition']}]" if p.get("partition") else "")] = n
    return out


def _variants(node: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    import json

    try:
        return json.loads((node or {}).get("props", {}).get("meta_variants") or "{}")
    except ValueError:
        return {}


def release_diff(store: Any, a: str, b: str, sample: int = 10) -> dict[str, Any]:
    """Two releases of a route: the variants that came, went or changed weight or role, and,
    when the champion changed, what changed upstream of it (the artifact diff below)."""
    va, vb = _variants(store.get_node(a)), _variants(store.get_node(b))
    changed = [{"variant": n, "a": va.get(n), "b": vb.get(n)} for n in sorted(va.keys() | vb.keys())
               if va.get(n) != vb.get(n)]

    def champion(vs):
        return next((v.get("lineage_id") for v in vs.values() if v.get("role") == "champion"), None)

    ca, cb = champion(va), champion(vb)
    upstream = None
    if ca and cb and ca != cb and store.get_node(ca) and store.get_node(cb):
        upstream = diff(store, ca, cb, sample)
    return {"a": a, "b": b, "kind": "release", "variants": changed,
            "champion": {"a": ca, "b": cb}, "champion_upstream": upstream}


def diff(store: Any, a: str, b: str, sample: int = 10) -> dict[str, Any]:
    """What changed between two artifacts' lineages (two deployments, two model versions): per
    upstream asset, whether its data, code or config changed; and which documents came or went.
    Two releases compare as releases (release_diff)."""
    na, nb = store.get_node(a), store.get_node(b)
    if na and nb and na["kind"] == nb["kind"] == "Release":
        return release_diff(store, a, b, sample)
    la, lb = store.upstream(a, documents=0), store.upstream(b, documents=0)
    ma, mb = _by_asset(la), _by_asset(lb)
    changed, same = [], 0
    for key in sorted(ma.keys() | mb.keys()):
        na, nb = ma.get(key), mb.get(key)
        if na and nb and na["id"] == nb["id"]:
            same += 1
            continue
        entry: dict[str, Any] = {"asset": key, "a": na["id"] if na else None, "b": nb["id"] if nb else None}
        if na and nb:
            pa, pb = na["props"], nb["props"]
            entry["data"] = pa.get("data_version") != pb.get("data_version")
            for what, prop in (("code", "code_version"), ("config", "config_hash")):
                entry[what] = ({"a": pa.get(prop, ""), "b": pb.get(prop, "")}
                               if pa.get(prop, "") != pb.get(prop, "") else None)
        changed.append(entry)
    corpora = {side: [n["id"] for n in [lin.root, *lin.nodes] if n["kind"] == "CorpusVersion"]
               for side, lin in (("a", la), ("b", lb))}
    docs_a, docs_b = store.document_ids(corpora["a"]), store.document_ids(corpora["b"])
    added, removed = sorted(docs_b - docs_a), sorted(docs_a - docs_b)
    return {
        "a": a, "b": b, "unchanged": same, "changed": changed,
        "documents": {"a": len(docs_a), "b": len(docs_b), "added": len(added), "removed": len(removed),
                      "added_sample": added[:sample], "removed_sample": removed[:sample]},
    }


def render_diff(d: dict[str, Any]) -> str:
    if d.get("kind") == "release":
        lines = [f"a: {d['a']}", f"b: {d['b']}", f"{len(d['variants'])} variants changed:"]
        for c in d["variants"]:
            def show(v):
                return f"{v['role']} {float(v['weight']):.0%}" if v else "absent"
            lines.append(f"  {c['variant']}: {show(c['a'])} -> {show(c['b'])}")
        ch = d["champion"]
        lines.append(f"champion: {ch['a']} -> {ch['b']}" if ch["a"] != ch["b"] else f"champion unchanged: {ch['b']}")
        if d.get("champion_upstream"):
            lines.append("upstream of the champion:")
            lines += ["  " + x for x in render_diff(d["champion_upstream"]).splitlines()]
        return "\n".join(lines)
    lines = [f"a: {d['a']}", f"b: {d['b']}", f"{d['unchanged']} upstream artifacts unchanged, {len(d['changed'])} changed:"]
    for c in d["changed"]:
        if not c["a"] or not c["b"]:
            lines.append(f"  {c['asset']}: only in {'b' if c['b'] else 'a'}")
            continue
        what = [w for w in ("data", "code", "config") if c.get(w)]
        lines.append(f"  {c['asset']}: {', '.join(what) or 'version'} changed")
        for w in ("code", "config"):
            if c.get(w):
                lines.append(f"      {w}: {c[w]['a'] or '-'} -> {c[w]['b'] or '-'}")
    docs = d["documents"]
    lines.append(f"documents: {docs['a']} -> {docs['b']} (+{docs['added']} -{docs['removed']})")
    for sign, key in (("+", "added_sample"), ("-", "removed_sample")):
        lines += [f"  {sign} {x}" for x in docs[key]]
    return "\n".join(lines)


def _label(node: dict[str, Any]) -> str:
    p = node.get("props", {})
    if node["kind"] == "Endpoint":
        return f"endpoint {p.get('route')}"
    if node["kind"] == "Document":
        return f"Document       {p.get('source', '')}/{p.get('path', '')}  ({node['id'][:16]})"
    if node["kind"] == "Source":
        return f"Source         {p.get('name', node['id'])}"
    if node["kind"] == "Release":
        variants = _variants(node)
        shown = ", ".join(f"{v.get('role', '?')} {name} {float(v.get('weight', 0)):.0%}" for name, v in variants.items())
        moved_by = p.get("moved_by") or p.get("meta_moved_by")
        who = f"; moved by {moved_by}" if moved_by else ""
        return f"Release        {node['id']}  (v{p.get('meta_version', '?')}: {shown}{who})"
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
    docs = getattr(lineage, "documents", None)
    if docs is not None:
        per = ", ".join(f"{k}: {v}" for k, v in docs["by_source"].items())
        lines.append(f"documents: {docs['total']} ({per or 'none'})")
        lines += [f"  {_label(n)}" for n in docs["sample"]]
        if docs["total"] > len(docs["sample"]):
            lines.append(f"  ... {docs['total'] - len(docs['sample'])} more (--documents N, or --json)")
    return "\n".join(lines)


def as_json(lineage: Any) -> dict[str, Any]:
    out = {
        "root": lineage.root,
        "nodes": lineage.nodes,
        "edges": [{"src": s, "rel": r, "dst": d} for s, r, d in lineage.edges],
    }
    if getattr(lineage, "documents", None) is not None:
        out["documents"] = lineage.documents
    return out


def chain_kinds(lineage: Any) -> set[str]:
    """The kinds of artifact reached (for checks and tests)."""
    return {n["kind"] for n in lineage.nodes} | {lineage.root["kind"]}

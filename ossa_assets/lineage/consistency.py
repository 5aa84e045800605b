"""Does the lineage graph still say what Dagster and MLflow say? A drift report.

Compared:
- every ossa materialization in Dagster's event log has its artifact node, and its
  DERIVED_FROM / TRAINED_ON edges to its inputs (missing_nodes, missing_edges);
- every artifact node in the graph comes from a materialization in the log (unknown_nodes: a
  graph written by another instance, or an event log that was wiped);
- every artifact-to-artifact edge follows a dependency Dagster's asset graph declares
  (undeclared_edges: lineage that the definitions no longer explain);
- every MLflow run the graph names exists in the tracking store (missing_mlflow_runs).

`ossa lineage check` prints the report and exits 1 on drift; `ossa lineage sync` (or rebuild)
repairs everything but unknown nodes and undeclared edges, which need a person.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import dagster as dg

from ossa_assets.artifact_asset import MD_DERIVED_FROM, MD_LINEAGE_ID, MD_TRAINED_ON

_ARTIFACT_NODES = "MATCH (n:Artifact) WHERE n.storage_id IS NOT NULL RETURN n.id, n.asset_key"
_ARTIFACT_EDGES = ("MATCH (a:Artifact)-[e]->(b:Artifact) WHERE a.storage_id IS NOT NULL AND "
                   "b.storage_id IS NOT NULL RETURN a.id, type(e), b.id, a.asset_key, b.asset_key")
_MLFLOW_NODES = "MATCH (n:Artifact) WHERE n.kind = 'MLflowRun' RETURN n.run_id"


@dataclass
class DriftReport:
    materializations: int = 0
    graph_artifacts: int = 0
    missing_nodes: list[str] = field(default_factory=list)
    missing_edges: list[str] = field(default_factory=list)
    unknown_nodes: list[str] = field(default_factory=list)
    undeclared_edges: list[str] = field(default_factory=list)
    missing_mlflow_runs: list[str] = field(default_factory=list)
    mlflow_checked: bool = False

    @property
    def drift(self) -> bool:
        return bool(self.missing_nodes or self.missing_edges or self.unknown_nodes
                    or self.undeclared_edges or self.missing_mlflow_runs)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "drift": self.drift}

    def render(self, limit: int = 10) -> str:
        lines = [f"{self.materializations} materializations in Dagster, {self.graph_artifacts} artifacts in the graph"
                 + ("" if self.mlflow_checked else " (MLflow not checked)")]
        for name in ("missing_nodes", "missing_edges", "unknown_nodes", "undeclared_edges", "missing_mlflow_runs"):
            items = getattr(self, name)
            if items:
                lines.append(f"{name.replace('_', ' ')}: {len(items)}")
                lines += [f"  {x}" for x in items[:limit]] + ([f"  ... {len(items) - limit} more"] if len(items) > limit else [])
        lines.append("drift: " + ("YES (ossa lineage sync repairs missing nodes and edges)" if self.drift else "none"))
        return "\n".join(lines)


def _asset_of(node_id: str) -> str:
    key = node_id.split("@", 1)[0]
    return key.split("[", 1)[0]


def check(
    instance: dg.DagsterInstance,
    store: Any,
    asset_graph: Any,
    asset_keys: Sequence[dg.AssetKey],
    mlflow_run_exists: Callable[[str], bool] | None = None,
) -> DriftReport:
    """Compare the graph with the event log, the asset graph's dependencies and MLflow."""
    rep = DriftReport()
    expected_nodes: set[str] = set()
    expected_edges: set[tuple[str, str, str]] = set()
    for key in asset_keys:
        cursor = None
        while True:
            res = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=500, cursor=cursor)
            for r in res.records:
                md = r.asset_materialization.metadata
                lid = md.get(MD_LINEAGE_ID)
                if lid is None:
                    continue
                rep.materializations += 1
                lid = lid.value
                expected_nodes.add(lid)
                trained = set(json.loads(md[MD_TRAINED_ON].value)) if MD_TRAINED_ON in md else set()
                for src in json.loads(md[MD_DERIVED_FROM].value) if MD_DERIVED_FROM in md else []:
                    expected_edges.add((lid, "TRAINED_ON" if src in trained else "DERIVED_FROM", src))
            if not res.has_more:
                break
            cursor = res.cursor
    graph_nodes = {nid: ak for nid, ak in store.backend.read(_ARTIFACT_NODES, {})}
    rep.graph_artifacts = len(graph_nodes)
    rep.missing_nodes = sorted(expected_nodes - set(graph_nodes))
    rep.unknown_nodes = sorted(set(graph_nodes) - expected_nodes)
    graph_edges = set()
    deps = {k.to_user_string(): {p.to_user_string() for p in asset_graph.get(k).parent_keys}
            for k in asset_graph.get_all_asset_keys()}
    for a, rel, b, ak_a, ak_b in store.backend.read(_ARTIFACT_EDGES, {}):
        if rel not in ("DERIVED_FROM", "TRAINED_ON"):
            continue
        graph_edges.add((a, rel, b))
        # an hourly adapter warm-starts from its own previous partition: a self-dependency
        if ak_a != ak_b and ak_b not in deps.get(ak_a, set()):
            rep.undeclared_edges.append(f"{a} -[{rel}]-> {b} ({ak_b} is not an input of {ak_a})")
    # an edge whose input was never materialized here cannot be written (no stub nodes): only
    # edges between known artifacts count as missing
    rep.missing_edges = sorted(f"{a} -[{rel}]-> {b}" for a, rel, b in expected_edges - graph_edges
                               if b in expected_nodes)
    rep.undeclared_edges.sort()
    if mlflow_run_exists is not None:
        rep.mlflow_checked = True
        for (run_id,) in store.backend.read(_MLFLOW_NODES, {}):
            if not mlflow_run_exists(run_id):
                rep.missing_mlflow_runs.append(run_id)
        rep.missing_mlflow_runs.sort()
    return rep


def mlflow_checker(client: Any) -> Callable[[str], bool]:
    def exists(run_id: str) -> bool:
        try:
            client.get_run(run_id)
            return True
        except Exception:  # MlflowException (RESOURCE_DOES_NOT_EXIST) or a deleted store
            return False

    return exists

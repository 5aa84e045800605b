"""`ossa lineage …`: keep the lineage graph in step with the event log and ask it questions."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ossa_assets.cli.materialize import instance as _instance


def _graph_store():
    from resources import build_resources

    return build_resources()["graph"].open()


def _cursor_path() -> Path:
    from resources import data_root

    return data_root() / "graph" / "sync_cursor"


def lineage_sync(rebuild: bool = False):
    from ossa_assets.definitions import ASSET_KEYS
    from ossa_assets.lineage import recorder

    instance = _instance()
    store = _graph_store()
    try:
        cursor_file = _cursor_path()
        if rebuild:
            stats = recorder.rebuild(instance, store, ASSET_KEYS)
        else:
            after = int(cursor_file.read_text()) if cursor_file.exists() else 0
            stats = recorder.sync(instance, store, ASSET_KEYS, after)
        cursor_file.parent.mkdir(parents=True, exist_ok=True)
        cursor_file.write_text(str(stats.cursor))
        return stats
    finally:
        store.close()


def lineage_check():
    """The drift report of the lineage graph against Dagster's event log, asset graph and MLflow."""
    from ossa_assets.definitions import ASSET_KEYS, defs
    from ossa_assets.lineage import consistency
    from resources import build_resources

    store = _graph_store()
    try:
        client = build_resources()["mlflow"].client()
        return consistency.check(_instance(), store, defs.resolve_asset_graph(), ASSET_KEYS,
                                 consistency.mlflow_checker(client))
    finally:
        store.close()


def _cmd_lineage(args: argparse.Namespace) -> int:
    from ossa_assets.lib.graph_store import queries

    if args.action in ("sync", "rebuild"):
        stats = lineage_sync(rebuild=args.action == "rebuild")
        print(
            f"{stats.materializations} materializations -> {stats.nodes} nodes, {stats.edges} edges "
            f"({stats.skipped_edges} skipped)"
        )
        return 0
    if args.action == "check":
        report = lineage_check()
        print(json.dumps(report.to_dict(), indent=2) if args.json else report.render())
        return 1 if report.drift else 0
    if not args.target:
        print("error: give an endpoint route (/api-model/v1), an asset key, a lineage id, "
              "doc:<content hash> or source:<name>", file=sys.stderr)
        return 2
    store = _graph_store()
    try:
        lineage_sync()  # answer from an up-to-date graph
        root_id = queries.resolve(store, args.target, args.partition)
        if root_id is None:
            print(f"error: nothing in the lineage graph matches {args.target!r}", file=sys.stderr)
            return 1
        if args.action == "diff":
            other = queries.resolve(store, args.other, args.partition) if args.other else queries.previous(store, root_id)
            if other is None:
                print(f"error: nothing to compare {root_id} with" + (f" ({args.other!r} not found)" if args.other else
                      " (no earlier materialization; name a second version)"), file=sys.stderr)
                return 1
            d = queries.diff(store, other, root_id, sample=args.documents)
            print(json.dumps(d, indent=2, default=str) if args.json else queries.render_diff(d))
            return 0
        if args.action == "upstream":
            lin = store.upstream(root_id, documents=args.documents)
        else:
            lin = store.downstream(root_id)
        if args.target.startswith("/") and not args.json:
            print(f"endpoint {args.target} follows:" if lin.root["kind"] == "Release"
                  else f"endpoint {args.target} serves:")
        if args.json:
            print(json.dumps(queries.as_json(lin), indent=2, default=str))
        else:
            print(queries.render(lin, direction=args.action))
        return 0
    finally:
        store.close()



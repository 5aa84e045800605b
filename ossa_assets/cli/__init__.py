"""`ossa`: materialize the graph, serve it, and ask lineage questions.

  ossa materialize            run the whole graph (every job, every domain) on this instance
  ossa serve                  the inference server (reloads when a deployment is materialized)
  ossa run                    materialize, then serve the Dagster UI and the endpoints until Ctrl-C;
                              with CI=true: one smoke request per endpoint, then exit
  ossa lineage upstream X     the chain from an endpoint route or asset key back to its corpora
  ossa lineage downstream X   everything derived from an artifact
  ossa lineage sync|rebuild   write new (or all) materializations into the lineage graph
  ossa release show|history   what is live on each route (variants, weights, who moved it, why)
  ossa release promote|rollback|pin ROUTE --by NAME --reason TEXT
                              move a route's release by hand (audited)
  ossa store stop             stop the embedded lineage graph server
  ossa doctor [--repair]      what a crash left behind (orphaned runs, held pool slots, stale
                              locks), and its repair
"""

from __future__ import annotations

import argparse
import os
import sys

# Steps share two cores: OpenMP threads that spin while waiting for a busy core made torch
# steps 2-10x slower when another step ran beside them; passive waiting costs little alone.
# Must be set before torch loads (forked step processes inherit it).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


from ossa_assets.cli import release as release_cli  # noqa: E402
from ossa_assets.cli.lineage import _cmd_lineage, lineage_check, lineage_sync  # noqa: E402
from ossa_assets.cli.materialize import MaterializeSummary, materialize  # noqa: E402
from ossa_assets.cli.serve import _cmd_run, _serve, smoke_test  # noqa: E402

__all__ = ["MaterializeSummary", "lineage_check", "lineage_sync", "main", "materialize", "smoke_test"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ossa", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("materialize", help="run the whole graph")
    m.add_argument("--job", action="append", help="only these jobs (repeatable)")
    m.add_argument("--verbose", action="store_true", help="print every Dagster event")
    s = sub.add_parser("serve", help="run the inference server")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    r = sub.add_parser("run", help="materialize, then serve UI + endpoints")
    r.add_argument("--host", default="127.0.0.1")
    r.add_argument("--port", type=int, default=8000)
    r.add_argument("--ui-port", type=int, default=3000)
    lg = sub.add_parser("lineage", help="lineage queries")
    lg.add_argument("action", choices=["upstream", "downstream", "diff", "check", "sync", "rebuild"])
    lg.add_argument("target", nargs="?",
                    help="endpoint route, asset key (stage/artifact), lineage id, doc:<hash> or source:<name>")
    lg.add_argument("other", nargs="?", help="diff: the version to compare with (default: the one before)")
    lg.add_argument("--partition", help="partition of the asset key (e.g. api_spec)")
    lg.add_argument("--documents", type=int, default=20, help="upstream/diff: documents listed (the rest counted)")
    lg.add_argument("--json", action="store_true")
    release_cli.add_parser(sub)
    st = sub.add_parser("store", help="the embedded lineage graph server")
    st.add_argument("action", choices=["stop"])
    dr = sub.add_parser("doctor", help="show (and --repair) what a crash left behind")
    dr.add_argument("--repair", action="store_true", help="fail orphaned runs, free stale slots and locks")
    dr.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    if args.cmd == "materialize":
        try:
            summary = materialize(only=args.job, verbose=args.verbose)
        except KeyboardInterrupt:  # a second Ctrl-C while the first one's run was winding down
            print("interrupted", file=sys.stderr)
            return 130
        print(summary.line())
        if summary.interrupted:
            return 130  # what a shell reports for a command stopped by Ctrl-C
        return 0 if summary.ok else 1
    if args.cmd == "serve":
        _serve(args.host, args.port)
        return 0
    if args.cmd == "run":
        return _cmd_run(args)
    if args.cmd == "lineage":
        return _cmd_lineage(args)
    if args.cmd == "release":
        return release_cli.cmd_release(args)
    if args.cmd == "doctor":
        from ossa_assets.cli.instance import doctor

        return doctor(repair=args.repair, as_json=args.json)
    if args.cmd == "store":
        from ossa_assets.lib.graph_store import EmbeddedFalkorDB
        from resources import data_root

        EmbeddedFalkorDB(data_root() / "graph").stop()
        print("embedded graph store stopped")
        return 0
    return 2



"""`ossa release`: what is live on each route, and the moves a person makes by hand.

  ossa release show [ROUTE] [--json]     each route's release: variants, weights, who moved it, why
  ossa release history ROUTE             every version of a route's release
  ossa release promote ROUTE --by NAME --reason TEXT    the challenger takes all the traffic
  ossa release rollback ROUTE --by NAME --reason TEXT   the challenger leaves, never offered again
  ossa release pin ROUTE (--variant NAME | --engine DIR) --by NAME --reason TEXT
                                          serve this engine alone, whatever its gates said
                                          (recorded as pinned by NAME)

Every move is one compare-and-set write of the release store (OSSA_RELEASE_URL, else
`<data root>/serving/releases`); servers following the store switch on their next poll. The
MLflow aliases are written from the release afterwards.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _store():
    from ossa_assets.lib.release import open_store
    from resources import _release_location, data_root

    return open_store(_release_location(data_root()))


def _route(route: str) -> str:
    from ossa_assets.lib.domains import ROUTES

    if route not in ROUTES:
        raise SystemExit(f"unknown route {route!r}: one of {', '.join(ROUTES)}")
    return route


def engine_variant(route: str, engine_dir: str):
    """A variant for an engine directory a person names (`pin --engine`): versioned by its
    content hash, as quantize/int8_model publishes it."""
    from ossa_assets.keys import INT8_MODEL
    from ossa_assets.lib.artifacts import hash_dir, lineage_id_for
    from ossa_assets.lib.domains import ROUTES
    from ossa_assets.lib.release import CHAMPION, ReleaseError, Variant, engine_spec

    path = Path(engine_dir).resolve()
    if not (path / "model.int8.onnx").is_file():
        raise ReleaseError(f"{path}: no model.int8.onnx here (expected a quantize/int8_model directory)")
    d = ROUTES[route]
    version = hash_dir(path)
    spec = engine_spec(d, str(path), version, lineage_id_for("Engine", INT8_MODEL.to_user_string(), d, version),
                       kv_model_file="model_kv.int8.onnx" if (path / "model_kv.int8.onnx").is_file() else None)
    return Variant(name=spec.model_version, role=CHAMPION, weight=1.0, spec=spec)


def _describe(rel) -> str:
    lines = [f"{rel.route}  release v{rel.version}  ({rel.at}, {rel.moved_by}: {rel.reason})"]
    for v in rel.variants:
        reg = f"  {v.registered_model} v{v.registry_version}" if v.registered_model else ""
        pinned = f"  pinned by {v.pinned_by}" if v.pinned_by else ""
        lines.append(f"  {v.role:<10} {v.weight:>5.0%}  {v.name}{reg}{pinned}")
        lines.append(f"  {'':<10}        {v.spec.lineage_id}")
    if rel.rejected:
        lines.append(f"  rolled back before: {', '.join(rel.rejected)}")
    return "\n".join(lines)


def _publish(before, rel, action: str) -> None:
    """MLflow and the lineage graph follow the move; neither being unreachable undoes it."""
    from ossa_assets.lib.canary import Move
    from resources import build_resources
    from resources.release import publish_move

    res = build_resources()
    for note in publish_move(Move(rel.route, action, before, rel, None), res["mlflow"], res["graph"]):
        print(f"warning: {note}", file=sys.stderr)


def cmd_release(args) -> int:
    from ossa_assets.lib import release as rl
    from ossa_assets.lib.domains import ROUTES

    store = _store()
    if args.action == "show":
        routes = [_route(args.route)] if args.route else list(ROUTES)
        rels = {r: store.get(r) for r in routes}
        if args.json:
            print(json.dumps({r: rel.to_dict() if rel else None for r, rel in rels.items()}, indent=2))
        else:
            for r, rel in rels.items():
                print(_describe(rel) if rel else f"{r}  no release yet (materialize serving/release)")
        return 0
    if not args.route:
        print(f"ossa release {args.action}: name the route", file=sys.stderr)
        return 2
    route = _route(args.route)
    if args.action == "history":
        for rel in store.history(route):
            print(_describe(rel))
        return 0
    if not args.by or not args.reason:
        print(f"ossa release {args.action}: --by NAME and --reason TEXT are required (the move is audited)",
              file=sys.stderr)
        return 2
    who = f"person:{args.by}"
    try:
        if args.action == "promote":
            step = lambda cur: rl.promote(cur, moved_by=who, reason=args.reason)  # noqa: E731
        elif args.action == "rollback":
            step = lambda cur: rl.rollback(cur, moved_by=who, reason=args.reason)  # noqa: E731
        else:  # pin
            if bool(args.variant) == bool(args.engine):
                print("ossa release pin: give exactly one of --variant NAME or --engine DIR", file=sys.stderr)
                return 2
            if args.engine:
                variant = engine_variant(route, args.engine)
            else:
                variant = next((v for rel in reversed(store.history(route)) for v in rel.variants
                                if v.name == args.variant), None)
                if variant is None:
                    raise rl.ReleaseError(f"{route}: no variant {args.variant!r} ever served this route "
                                          f"(see `ossa release history {route}`); pin an engine with --engine DIR")
            rl.verify_engine(variant.spec)
            step = lambda cur: rl.pin(cur, route, variant, person=args.by, reason=args.reason)  # noqa: E731
        before = store.get(route)  # decided on what it read: a concurrent move is a conflict
        rel = store.put(step(before), before.version if before else None)
    except rl.ReleaseConflict as e:
        print(f"ossa release {args.action}: {e}; nothing moved: look again (`ossa release show {route}`)",
              file=sys.stderr)
        return 1
    except rl.ReleaseError as e:
        print(f"ossa release {args.action}: {e}", file=sys.stderr)
        return 1
    _publish(before, rel, args.action)
    print(_describe(rel))
    return 0


def add_parser(sub) -> None:
    rp = sub.add_parser("release", help="show or move a route's release (promote, rollback, pin)")
    rp.add_argument("action", choices=["show", "history", "promote", "rollback", "pin"])
    rp.add_argument("route", nargs="?", help="endpoint route, e.g. /api-model/v1")
    rp.add_argument("--by", help="who moves it (recorded)")
    rp.add_argument("--reason", help="why (recorded)")
    rp.add_argument("--variant", help="pin: a variant that served this route before (from its history)")
    rp.add_argument("--engine", help="pin: a quantize/int8_model engine directory")
    rp.add_argument("--json", action="store_true")

"""`ossa serve` and `ossa run`: the inference server, and materialize-then-serve."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from ossa_assets.cli.lineage import _graph_store
from ossa_assets.cli.materialize import materialize


def _state_path() -> Path:
    from ossa_assets.lib.deployment import state_path
    from resources import data_root

    return state_path(data_root())


def _serve(host: str, port: int) -> None:
    from ossa_serving.app import create_app
    from ossa_serving.cli import make_server

    app = create_app(_state_path(), cache_url=os.environ.get("OSSA_REDIS_URL"), graph_factory=_graph_store)
    make_server(app, host, port).run()


def smoke_test(log=print) -> tuple[int, int]:
    """One request per endpoint against an in-process server over real HTTP."""
    import socket
    import threading

    import httpx
    import uvicorn

    from ossa_assets.lib.domains import ROUTES
    from ossa_serving.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(_state_path(), graph_factory=_graph_store), host="127.0.0.1", port=port,
                       log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    ok = total = 0
    try:
        for _ in range(1200):  # start-up loads and warms every engine and embedder
            if server.started:
                break
            time.sleep(0.05)
        with httpx.Client(base_url=base, timeout=60) as client:
            probes: list[tuple[str, str, Any]] = [("GET", "/health", None), ("GET", "/v1/models", None)]
            probes += [("POST", r, {"prompt": "openapi: 3.0.0\ninfo:", "max_new_tokens": 8}) for r in ROUTES]
            probes.append(("POST", "/v1/search", {"query": "list pets by tag", "limit": 3}))
            probes.append(("POST", "/v1/search", {"query": "run the unit tests", "index": "capability", "limit": 3}))
            probes.append(("POST", "/v1/search", {"query": "paths: get: responses", "index": "code", "limit": 3}))
            probes.append(("GET", "/v1/lineage/upstream?id=/api-model/v1&documents=3", None))
            for method, path, body in probes:
                total += 1
                r = client.request(method, path, json=body)
                good = r.status_code == 200
                ok += good
                preview = json.dumps(r.json())[:140]
                log(f"  {method} {path} -> {r.status_code} {preview}")
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    return ok, total


def _cmd_run(args: argparse.Namespace) -> int:
    import signal
    import subprocess

    ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    summary = materialize()
    if summary.interrupted:  # Ctrl-C while it materialized: stop, serve nothing
        print(summary.line())
        return 130
    print(f"graph materialized in {summary.seconds:.1f}s")
    if ci:
        ok, total = smoke_test()
        print(f"smoke requests: {ok}/{total} answered 200")
        print(summary.line())
        return 0 if summary.ok and ok == total else 1
    if not summary.ok:
        print(summary.line())
        print("inspect the failed runs in the Dagster UI: make ui")
        return 1
    print(summary.line())
    # the daemon's canary_judge reads this server's live metrics
    env = {**os.environ, "OSSA_SERVE_URLS": os.environ.get("OSSA_SERVE_URLS") or f"http://{args.host}:{args.port}"}
    ui = subprocess.Popen(
        [sys.executable, "-m", "dagster", "dev", "-w", "workspace.yaml", "-h", args.host, "-p", str(args.ui_port)],
        env=env,
    )
    print(f"Dagster UI: http://{args.host}:{args.ui_port}   endpoints: http://{args.host}:{args.port}")
    try:
        _serve(args.host, args.port)
    except KeyboardInterrupt:
        pass
    finally:
        # SIGINT, as Ctrl-C in a terminal would: `dagster dev` then stops its webserver, daemon
        # and code servers (on SIGTERM it would exit and leave them running)
        ui.send_signal(signal.SIGINT)
        try:
            ui.wait(timeout=30)
        except subprocess.TimeoutExpired:
            ui.kill()
    return 0



"""`python -m ossa_serving` (also `ossa serve`): run the inference server.

SIGTERM drains: new requests get 503 at once, in-flight ones finish (up to --drain-s), then
the process exits, as a Kubernetes pod's termination expects.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time


def make_server(app, host: str, port: int, drain_s: float = 30.0, log_level: str = "info"):
    import uvicorn

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame):  # SIGTERM / SIGINT
            runtime = app.state.runtime
            if runtime["draining"]:
                return super().handle_exit(sig, frame)  # a second signal: stop now
            runtime["draining"] = True

            def finish():
                deadline = time.monotonic() + drain_s
                while runtime["in_flight"] > 0 and time.monotonic() < deadline:
                    time.sleep(0.02)
                uvicorn.Server.handle_exit(self, sig, frame)

            threading.Thread(target=finish, daemon=True).start()

    # the app writes its own access log (request id, lineage id): uvicorn's would be a second line
    return DrainingServer(uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                                         timeout_graceful_shutdown=drain_s))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ossa-serving", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--state", default=None, help="deployment state file (default: <OSSA_DATA_ROOT>/serving/deployment.json)")
    p.add_argument("--release-store", default=None,
                   help="follow this release store (a postgresql:// URL, or a directory) for the routes' variants; "
                        "default: OSSA_RELEASE_URL, else the store the deployment state names")
    p.add_argument("--drain-s", type=float, default=30.0)
    p.add_argument("--naive", action="store_true",
                   help="the pre-batching server (one thread per request), kept as the benchmarks' baseline")
    p.add_argument("--naive-torch", metavar="CHECKPOINT", default=None,
                   help="a per-request PyTorch server of this checkpoint on every route (the other baseline)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.naive_torch:
        from ossa_serving.baseline import create_torch_app

        app = create_torch_app(args.naive_torch)
    elif args.naive:
        from ossa_serving.baseline import create_app as naive_app
        from ossa_serving.settings import Settings

        s = Settings.from_env(args.state)
        app = naive_app(s.state_path, cache_url=s.cache_url, graph_factory=s.graph_factory)
        app.state.runtime = {"draining": False, "in_flight": 0}
    else:
        from ossa_serving.app import create_app
        from ossa_serving.settings import Settings

        settings = Settings.from_env(args.state)
        settings.release_store = args.release_store or settings.release_store
        app = create_app(settings=settings)
    make_server(app, args.host, args.port, args.drain_s).run()
    return 0

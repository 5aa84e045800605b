"""Releases under load: switching variants, replicas following one store, the live judgement.

    .venv/bin/python bench/bench_release.py [--seconds 6] [--repeats 3] [--sims 1000]

Builds a servable deployment like bench_serving's (configs/tiny.yaml's decoder, int8), publishes
the engine as three versions, and serves it from two replica processes that follow one release
store (Postgres on 127.0.0.1:5432 when it answers, else a directory). Measured, medians of
`--repeats`:
- a release move under steady load (16 connections per replica, bench/loadgen.py): failed
  requests during the swap, and the seconds from the move until both replicas answer from the
  new variant;
- the canary rule (lib/canary.py) by simulation: its false rollback rate with no regression
  (`--sims` runs, asked every tick) and how often / how fast it rolls back a challenger with
  5x the champion's error rate at 10 % traffic;
- live: a challenger at 10 % whose engine hangs (SIGSTOP), judged by the sensor's tick every
  2 s: ticks until the rollback once the minimum sample is in, and seconds until no replica
  serves it.
Each target is printed with the measured figure and MET or MISSED (verdict.py). The hourly
adapter is not served yet: its target is printed as not measured, MISSED.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench_serving import load, start  # noqa: E402
from verdict import Verdicts  # noqa: E402

ROUTE, DOMAIN = "/api-model/v1", "api_spec"
GEN = '{"prompt": "openapi: 3.0.0 request {n}", "max_new_tokens": 16}'


def release_store_location(tmp: Path) -> tuple[str, object]:
    try:
        import psycopg2

        name = f"ossa_bench_{uuid.uuid4().hex[:8]}"
        conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=2)
        conn.autocommit = True
        conn.cursor().execute(f'CREATE DATABASE "{name}"')

        def drop():
            conn.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.close()

        return f"postgresql://postgres@127.0.0.1:5432/{name}", drop
    except Exception as e:
        print(f"no Postgres ({type(e).__name__}): the replicas share a directory store", flush=True)
        return str(tmp / "releases"), lambda: None


def serving(url: str) -> str:
    import httpx

    r = httpx.post(url + ROUTE, json={"prompt": "x", "max_new_tokens": 1}, timeout=30)
    return r.json().get("variant", "") if r.status_code == 200 else ""


def simulate(sims: int) -> dict:
    import numpy as np

    from ossa_assets.lib.canary import CanaryPolicy, decide

    policy = CanaryPolicy()

    def run(rng, q0, q1):
        a, b = {"ok": 0, "error": 0}, {"ok": 0, "error": 0}
        for tick in range(1, 400):
            n1 = rng.binomial(200, 0.1)
            for c, n, q in ((a, 200 - n1, q0), (b, n1, q1)):
                e = rng.binomial(n, q)
                c["error"] += e
                c["ok"] += n - e
            d = decide(a, b, policy)
            if d.action != "collect":
                return d.action, tick, sum(b.values())
        return "collect", 400, sum(b.values())

    rng = np.random.default_rng(0)
    null = [run(rng, 0.02, 0.02) for _ in range(sims)]
    bad = [run(rng, 0.02, 0.10) for _ in range(sims)]
    rolled = [x for x in bad if x[0] == "rollback"]
    return {"false_rollback": sum(x[0] == "rollback" for x in null) / sims,
            "detected": len(rolled) / sims,
            "median_requests_to_rollback": statistics.median(x[2] for x in rolled) if rolled else float("nan"),
            "alpha": policy.alpha}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sims", type=int, default=1000)
    args = ap.parse_args()
    v = Verdicts()

    from ossa_assets.lib import release as rl
    from ossa_assets.lib.artifacts import hash_dir
    from ossa_assets.lib.deployment import read_state, write_state
    from tests.serving.deployment import build_deployment, tiny_arch

    sim = simulate(args.sims)
    print(f"canary rule, {args.sims} simulated runs each: false rollback {sim['false_rollback']:.3%} "
          f"(alpha {sim['alpha']}); 5x errors rolled back in {sim['detected']:.1%}, median after "
          f"{sim['median_requests_to_rollback']:.0f} challenger requests", flush=True)

    arch, vocab = tiny_arch()
    tmp = Path(tempfile.mkdtemp(prefix="bench_release_"))
    dep = build_deployment(tmp, arch=arch, vocab_size=vocab, int8=True)
    st = read_state(dep.state)
    specs = []
    for tag in "abc":
        d = tmp / f"engine-{tag}"
        shutil.copytree(dep.engine, d)
        (d / "VARIANT").write_text(tag)
        h = hash_dir(d)
        specs.append(replace(st.routes[ROUTE], model_version=f"{DOMAIN}-{h[:12]}", engine_path=str(d),
                             lineage_id=f"quantize/int8_model[{DOMAIN}]@{h[:16]}", content_version=h))
    location, drop = release_store_location(tmp)
    store = rl.open_store(location)

    def offer(spec, weight):
        return rl.move(store, ROUTE, lambda cur: rl.offer(cur, ROUTE, rl.Variant(spec.model_version, "challenger", 0.0,
                                                                                  spec), canary_weight=weight,
                                                          moved_by="bench", reason="bench"))

    def pin(spec):
        return rl.move(store, ROUTE, lambda cur: rl.pin(cur, ROUTE, rl.Variant(spec.model_version, "champion", 1.0, spec),
                                                        person="bench", reason="bench"))

    offer(specs[0], 1.0)
    state = write_state(tmp / "serving" / "deployment.json", replace(st, release_store=location))
    env = {**os.environ, "OSSA_DATA_ROOT": str(tmp), "OSSA_SERVE_MAX_QUEUE": "64"}
    replicas = [start(state, naive=False, env=env, extra=("--release-store", location)) for _ in range(2)]
    urls = [u for _, u in replicas]
    switch_s, promote_s, failed, answered = [], [], 0, 0
    try:
        for i in range(args.repeats):
            target = specs[(i + 1) % 3]
            loads: list[dict] = []
            threads = [threading.Thread(target=lambda u=u: loads.append(load(u, ROUTE, GEN, 16, args.seconds)))
                       for u in urls]
            [t.start() for t in threads]
            time.sleep(args.seconds / 3)
            moved = time.monotonic()
            pin(target)
            pending = set(urls)
            while pending and time.monotonic() - moved < 60:
                pending = {u for u in pending if serving(u) != target.model_version}
                time.sleep(0.02)
            switch_s.append(time.monotonic() - moved if not pending else float("nan"))
            [t.join() for t in threads]
            for r in loads:
                failed += sum(n for code, n in r["status"].items() if str(code) != "200") + r["timeouts"]
                answered += r["status"].get("200", r["status"].get(200, 0))
            print(f"swap {i + 1}: both replicas on {target.model_version} after {switch_s[-1]:.2f}s; "
                  f"{sum(r['ok_rps'] for r in loads):.0f} ok req/s over both; statuses "
                  f"{[dict(r['status']) for r in loads]}, timeouts {[r['timeouts'] for r in loads]}", flush=True)

        # a promotion: the challenger is loaded already (it served its canary share), so the
        # move is a weight change on every replica, no engine to start
        import httpx

        for i in range(args.repeats):
            offer(specs[i % 3] if specs[i % 3].model_version != serving(urls[0]) else specs[(i + 1) % 3], 0.1)
            want = store.get(ROUTE).version
            while any(httpx.get(u + "/ready", timeout=5).json()["releases"].get(ROUTE) != want for u in urls):
                time.sleep(0.05)
            moved = time.monotonic()
            nxt = rl.move(store, ROUTE, lambda cur: rl.promote(cur, moved_by="bench", reason="bench"))
            while any(httpx.get(u + "/ready", timeout=5).json()["releases"].get(ROUTE) != nxt.version for u in urls):
                time.sleep(0.01)
            promote_s.append(time.monotonic() - moved)
        print(f"promotion of a loaded challenger: both replicas on it after "
              f"{', '.join(f'{x:.2f}' for x in promote_s)} s", flush=True)
    finally:
        for p, _ in replicas:
            p.terminate()
            p.wait(30)

    # live judgement: a 10 % challenger whose engine hangs, on a server in this process (its
    # engine processes are reachable), judged by the sensor's own function every 2 s
    from ossa_serving.settings import Settings
    from resources.release import ReleaseStoreResource
    from sensors.canary import judge_once
    from tests.serving.test_runtime import serving as serve_here

    pin(specs[0])
    offer(specs[1], 0.1)
    res = ReleaseStoreResource(location=location)
    lag, ticks, gone_s, note = None, 0, float("nan"), ""
    settings = Settings(state_path=state, release_store=location, search_poll_s=60, request_timeout_s=1.0)
    try:
        with serve_here(settings) as srv:
            cursor, note = judge_once(None, res, None, None, [srv.url])
            hung = next(x for x in srv.app.state.watcher.variants[ROUTE] if x.role == "challenger").loaded.engine
            os.kill(hung.process.pid, signal.SIGSTOP)
            stop = threading.Event()

            def traffic():
                with httpx.Client(timeout=15) as c:
                    while not stop.is_set():
                        c.post(srv.url + ROUTE, json={"prompt": f"x {time.time()}", "max_new_tokens": 4})

            workers = [threading.Thread(target=traffic) for _ in range(8)]
            [w.start() for w in workers]
            first_judged = None
            try:
                while ticks < 60:
                    time.sleep(2.0)
                    cursor, note = judge_once(cursor, res, None, None, [srv.url])
                    ticks += 1
                    if first_judged is None and "min-sample guard" not in note:
                        first_judged = ticks
                    if "rollback" in note:
                        lag = ticks - first_judged
                        t_roll = time.monotonic()
                        while time.monotonic() - t_roll < 30:
                            if httpx.get(srv.url + "/ready", timeout=5).json()["releases"].get(ROUTE) == \
                                    store.get(ROUTE).version:
                                gone_s = time.monotonic() - t_roll
                                break
                            time.sleep(0.05)
                        break
            finally:
                os.kill(hung.process.pid, signal.SIGCONT)
                stop.set()
                [w.join(30) for w in workers]
        print(f"live: {note}", flush=True)
        print(f"live: rolled back on tick {ticks} ({lag} ticks after the minimum sample was in); the server "
              f"stopped serving the challenger {gone_s:.2f}s later", flush=True)
    finally:
        drop()

    v.at_most("failed requests during a release swap under 16 connections per replica", failed, 0)
    print(f"  ({answered} requests answered across {args.repeats} swaps)")
    v.at_most("seconds from a move to a new engine to both replicas serving it, under load (median)",
              statistics.median(switch_s), 5.0, "s")
    print("  (ossa's own target: a new engine process starts, verifies and warms beside the old one)")
    v.at_most("seconds from promoting a loaded challenger to both replicas on it (median)",
              statistics.median(promote_s), 1.0, "s")
    v.at_most("false rollback rate, no regression, asked every tick", sim["false_rollback"], sim["alpha"])
    v.at_least("share of 5x-error challengers rolled back", sim["detected"], 0.95)
    v.at_most("live: sensor ticks from sufficient evidence to the rollback of a hung 10 % challenger", lag, 2)
    v.at_most("file dropped -> hour's adapter answering requests (median)", None, 60.0, "s")
    print("  (the hourly adapter is not served yet: lora/realtime_adapter stops at the adapter)")
    return v.report()


if __name__ == "__main__":
    sys.exit(main())

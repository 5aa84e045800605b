"""Servers follow the release store: A/B by weight with sticky callers, replicas that share no file
system switch together on one move, and a release naming a corrupt engine is refused while the
route keeps serving. Real ONNX engines, the real Postgres on 127.0.0.1:5432, real HTTP."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from tests.serving.test_runtime import _port, serving

ROUTE, DOMAIN = "/api-model/v1", "api_spec"


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """One tiny decoder published as two engine versions (A and B: the same weights, distinct
    content hashes), and the deployment state of the other routes."""
    from ossa_assets.lib.artifacts import hash_dir
    from tests.serving.deployment import build_deployment

    dep = build_deployment(tmp_path_factory.mktemp("release"))
    st = __import__("ossa_assets.lib.deployment", fromlist=["read_state"]).read_state(dep.state)
    base = st.routes[ROUTE]
    specs = {}
    for tag in ("a", "b", "c"):
        d = dep.root / f"engine-{tag}"
        shutil.copytree(dep.engine, d)
        (d / "VARIANT").write_text(tag)  # a distinct published version of the same model
        v = hash_dir(d)
        specs[tag] = replace(base, model_version=f"{DOMAIN}-{v[:12]}", engine_path=str(d),
                             lineage_id=f"quantize/int8_model[{DOMAIN}]@{v[:16]}", content_version=v)
    return dep, st, specs


def _variant(spec):
    from ossa_assets.lib.release import CHALLENGER, Variant

    return Variant(name=spec.model_version, role=CHALLENGER, weight=0.0, spec=spec)


def _offer(store, spec, canary):
    from ossa_assets.lib import release as rl

    return rl.move(store, ROUTE, lambda cur: rl.offer(cur, ROUTE, _variant(spec), canary_weight=canary,
                                                      moved_by="test", reason="x"))


def _wait(fn, timeout_s=120.0, every=0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(every)
    raise AssertionError("timed out waiting")


def _ask(url: str, key: str | None = None, prompt: str = "paths:") -> dict:
    import httpx

    r = httpx.post(url + ROUTE, json={"prompt": prompt, "max_new_tokens": 2},
                   headers={"x-ossa-key": key} if key else {}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_two_replicas_follow_one_release_and_switch_together(engines, pg_url, tmp_path):
    """Replica 1 reads the deployment state (which names the Postgres store); replica 2, another
    process, is given only the store's URL: no file is shared. A/B weights split sticky
    callers the same way on both; one move switches both within a poll or two; no request fails
    during the switch."""
    import httpx

    from ossa_assets.lib import release as rl
    from ossa_assets.lib.deployment import write_state
    from ossa_serving.settings import Settings

    dep, st, specs = engines
    store = rl.open_store(pg_url)
    a, b, c = specs["a"], specs["b"], specs["c"]
    _offer(store, a, 0.1)
    state_file = tmp_path / "deployment.json"
    write_state(state_file, replace(st, release_store=pg_url, releases={ROUTE: 1}))
    port = _port()
    env = {**os.environ, "OSSA_RELEASE_URL": pg_url, "OSSA_SERVE_RELEASE_POLL_S": "0.2"}
    replica = subprocess.Popen([sys.executable, "-m", "ossa_serving", "--port", str(port), "--state",
                                str(tmp_path / "no-such-file.json")], cwd=tmp_path, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url2 = f"http://127.0.0.1:{port}"
    try:
        with serving(Settings(state_path=state_file, release_poll_s=0.2, search_poll_s=60)) as s1:
            def up():
                try:
                    return httpx.get(url2 + "/ready", timeout=2).status_code == 200
                except httpx.HTTPError:
                    return False

            _wait(up)
            for url in (s1.url, url2):
                got = _ask(url)
                assert got["variant"] == a.model_version and got["variant_role"] == "champion"
                assert got["release"] == store.get(ROUTE).lineage_id and got["lineage_id"] == a.lineage_id

            # a 50 % challenger: each caller key sees one variant, the same one on both replicas
            rel2 = _offer(store, b, 0.5)
            _wait(lambda: all(httpx.get(u + "/ready", timeout=5).json()["releases"].get(ROUTE) == 2
                              for u in (s1.url, url2)))
            seen: dict[str, set[str]] = {}
            for i in range(40):
                for url in (s1.url, url2, s1.url):
                    seen.setdefault(f"caller-{i}", set()).add(_ask(url, key=f"caller-{i}")["variant"])
            assert all(len(v) == 1 for v in seen.values()), seen
            on_b = sum(v == {b.model_version} for v in seen.values())
            assert 8 <= on_b <= 32, on_b  # ~half of 40 callers (binomial, p=0.5: outside is < 0.1 %)
            listed = httpx.get(s1.url + "/v1/models", timeout=10).json()["models"]
            ours = {m["variant"]: (m["variant_role"], m["weight"], m["release"]) for m in listed if m["route"] == ROUTE}
            assert ours == {a.model_version: ("champion", 0.5, rel2.lineage_id),
                            b.model_version: ("challenger", 0.5, rel2.lineage_id)}
            metrics = httpx.get(s1.url + "/metrics", timeout=10).text
            assert 'variant="challenger"' in metrics and f'model_version="{b.model_version}"' in metrics
            assert f'release="{rel2.lineage_id}"' in metrics

            # one move (C promoted at once) under steady load: both replicas switch, no request fails
            answers: list[tuple[str, float, int, str]] = []
            stop = threading.Event()

            def load(url):
                with httpx.Client(timeout=30) as cl:
                    while not stop.is_set():
                        r = cl.post(url + ROUTE, json={"prompt": "x", "max_new_tokens": 2})
                        answers.append((url, time.monotonic(), r.status_code,
                                        r.json().get("variant", r.text) if r.status_code == 200 else r.text))

            threads = [threading.Thread(target=load, args=(u,)) for u in (s1.url, url2) for _ in range(2)]
            [t.start() for t in threads]
            time.sleep(0.5)
            _offer(store, c, 1.0)
            moved = time.monotonic()
            _wait(lambda: {u for u, _, _, v in answers[-20:] if v == c.model_version} == {s1.url, url2})
            stop.set()
            [t.join(30) for t in threads]
            assert {code for _, _, code, _ in answers} == {200}, [x for x in answers if x[2] != 200][:3]
            first = {u: min(t for uu, t, _, v in answers if uu == u and v == c.model_version) for u in (s1.url, url2)}
            assert abs(first[s1.url] - first[url2]) < 5.0 and max(first.values()) - moved < 30
            # after each replica's first answer from C, it never answered from the old release
            for u in (s1.url, url2):
                assert all(v == c.model_version for uu, t, _, v in answers if uu == u and t > first[u])
    finally:
        replica.terminate()
        replica.wait(30)


def test_a_release_naming_a_corrupt_engine_is_refused_and_the_route_keeps_serving(engines, tmp_path):
    """The engine files changed after the release named them (bit rot, a partial copy): the
    server refuses that release before any traffic reaches it, answers from the variants it
    served, says why on /ready, and takes the next good release."""
    import httpx

    from ossa_assets.lib import release as rl
    from ossa_assets.lib.deployment import write_state
    from ossa_serving.settings import Settings

    dep, st, specs = engines
    store_dir = tmp_path / "releases"
    store = rl.open_store(store_dir)
    _offer(store, specs["a"], 0.1)
    bad = tmp_path / "engine-bad"
    shutil.copytree(specs["b"].engine_path, bad)
    bad_spec = replace(specs["b"], engine_path=str(bad))
    state_file = tmp_path / "deployment.json"
    write_state(state_file, replace(st, release_store=str(store_dir), releases={ROUTE: 1}))
    with serving(Settings(state_path=state_file, release_poll_s=0.1, search_poll_s=60)) as srv:
        assert _ask(srv.url)["variant"] == specs["a"].model_version
        (Path(bad) / "model.onnx").write_bytes(b"\0" * 64)  # corrupted after it was published
        _offer(store, bad_spec, 0.5)
        ready = _wait(lambda: (r := httpx.get(srv.url + "/ready", timeout=5).json())["release_errors"].get(ROUTE) and r)
        assert "corrupt" in ready["release_errors"][ROUTE] and "v2 refused" in ready["release_errors"][ROUTE]
        assert ready["ready"] is True and ready["releases"][ROUTE] == 1  # still serving v1
        assert {_ask(srv.url, key=f"k{i}")["variant"] for i in range(20)} == {specs["a"].model_version}
        # the next good release goes live and clears the error
        rl.move(store, ROUTE, lambda cur: rl.rollback(cur, moved_by="test", reason="corrupt engine"))
        _offer(store, specs["c"], 1.0)
        _wait(lambda: httpx.get(srv.url + "/ready", timeout=5).json()["releases"].get(ROUTE) == 4)
        assert httpx.get(srv.url + "/ready", timeout=5).json()["release_errors"] == {}
        assert _ask(srv.url)["variant"] == specs["c"].model_version


def _load(url: str, n: int, threads: int = 8, timeout_s: float = 30) -> list[dict]:
    import httpx

    def one(i):
        r = httpx.post(url + ROUTE, json={"prompt": f"paths {i}", "max_new_tokens": 2}, timeout=timeout_s)
        return {"status": r.status_code, **(r.json() if r.headers.get("content-type") == "application/json" else {})}

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(n)))


def test_the_canary_judge_rolls_back_a_degraded_challenger_and_promotes_a_healthy_one(engines, tmp_path,
                                                                                     monkeypatch):
    """A challenger at 10 % whose engine hangs (SIGSTOP: its requests miss their deadline) is
    rolled back by the sensor's tick on the first look at which the evidence suffices, and is
    never served after; a healthy one is promoted. Unreachable metrics or store: a skip, never
    a move. The move is recorded in the lineage graph (REPLACED / ROLLED_BACK_FROM)."""
    import json
    import signal

    import httpx

    from ossa_assets.lib import release as rl
    from ossa_assets.lib.deployment import write_state
    from ossa_assets.lib.graph_store import EmbeddedFalkorDB
    from ossa_serving.settings import Settings
    from resources.graph import GraphStoreResource
    from resources.release import ReleaseStoreResource
    from sensors.canary import judge_once

    monkeypatch.setenv("OSSA_CANARY_MIN_REQUESTS", "20")
    monkeypatch.setenv("OSSA_CANARY_PROMOTE_AFTER", "60")
    dep, st, specs = engines
    a, b, c = specs["a"], specs["b"], specs["c"]
    store_dir = tmp_path / "releases"
    store = rl.open_store(store_dir)
    _offer(store, a, 0.1)
    _offer(store, b, 0.1)
    releases = ReleaseStoreResource(location=str(store_dir))
    graph = GraphStoreResource(backend="embedded", data_dir=str(tmp_path / "graph"))
    state_file = tmp_path / "deployment.json"
    write_state(state_file, replace(st, release_store=str(store_dir), releases={ROUTE: 2}))
    settings = Settings(state_path=state_file, release_poll_s=0.1, search_poll_s=60, request_timeout_s=0.5,
                        validity_sample_rate=1.0)
    try:
        with serving(settings) as srv:
            urls = [srv.url]
            # faults in what it reads: a skip with the reason, nothing moves
            cur, note = judge_once(None, releases, None, None, ["http://127.0.0.1:1"])
            assert note.startswith("skipped, no decision: metrics unreachable") and cur == "{}"
            down = ReleaseStoreResource(location="postgresql://nobody@127.0.0.1:1/none")
            cur, note = judge_once(None, down, None, None, urls)
            assert note.startswith("skipped, no decision: release store unreachable")
            cursor, note = judge_once(None, releases, None, graph, urls)
            assert "baseline taken" in note and store.get(ROUTE).version == 2

            hung = next(s for s in srv.app.state.watcher.variants[ROUTE] if s.role == "challenger").loaded.engine
            os.kill(hung.process.pid, signal.SIGSTOP)
            ticks = []
            try:
                for _ in range(40):
                    answers = _load(srv.url, 60)
                    assert {x["status"] for x in answers} <= {200, 504}
                    cursor, note = judge_once(cursor, releases, None, graph, urls)
                    ticks.append(note)
                    if "rollback" in note:
                        break
            finally:
                os.kill(hung.process.pid, signal.SIGCONT)
            print(f"canary: rolled back on tick {len(ticks)}: {ticks[-1]}")
            assert "rollback" in ticks[-1] and "errors:" in ticks[-1], ticks
            assert all("collect" not in t and "no signal" in t or "min-sample" in t for t in ticks[:-1]), ticks
            assert len(ticks) <= 10, ticks
            rel = store.get(ROUTE)
            assert rel.version == 3 and rel.challenger is None and rel.rejected == (b.model_version,)
            assert rel.moved_by == "sensor:canary_judge" and rel.evidence["action"] == "rollback"
            _wait(lambda: httpx.get(srv.url + "/ready", timeout=5).json()["releases"].get(ROUTE) == 3)
            after = _load(srv.url, 60)
            assert {x["variant"] for x in after} == {a.model_version}  # never served after
            assert rl.offer(rel, ROUTE, _variant(b), canary_weight=0.1, moved_by="t", reason="x") is None

            # the lineage graph: v3 replaced v2 and rolled back from it
            g = graph.open()
            try:
                edges = g.backend.read("MATCH (n:Release)-[r]->(m:Release) RETURN n.id, type(r), m.id", {})
            finally:
                g.close()
            v2_id = store.history(ROUTE)[1].lineage_id
            assert {(x[0], x[1], x[2]) for x in edges} == {(rel.lineage_id, "REPLACED", v2_id),
                                                           (rel.lineage_id, "ROLLED_BACK_FROM", v2_id)}

            # every answer was judged by the domain's curator (sample rate 1.0 here), per variant
            metrics = httpx.get(srv.url + "/metrics", timeout=10).text
            assert 'outcome="invalid"' in metrics or 'outcome="valid"' in metrics
            # feedback reaches the variant that answered
            rid = after[0]["request_id"]
            fb = httpx.post(srv.url + "/v1/feedback", json={"request_id": rid, "rating": "bad"}, timeout=10)
            assert fb.status_code == 200 and fb.json()["variant"] == a.model_version, fb.text
            assert httpx.post(srv.url + "/v1/feedback", json={"request_id": rid, "rating": "good"},
                              timeout=10).status_code == 409
            assert httpx.post(srv.url + "/v1/feedback", json={"request_id": "nope", "rating": "bad"},
                              timeout=10).status_code == 404
            assert (f'ossa_variant_outcomes_total{{model_version="{a.model_version}",outcome="feedback_bad"'
                    in httpx.get(srv.url + "/metrics", timeout=10).text)

            # a healthy challenger: promoted once it served enough without a signal
            _offer(store, c, 0.1)
            _wait(lambda: httpx.get(srv.url + "/ready", timeout=5).json()["releases"].get(ROUTE) == 4)
            cursor, note = judge_once(cursor, releases, None, graph, urls)
            assert "baseline taken" in note
            for _ in range(40):
                _load(srv.url, 120)
                cursor, note = judge_once(cursor, releases, None, graph, urls)
                if "promote" in note:
                    break
            assert "promote" in note, note
            rel = store.get(ROUTE)
            assert [(v.name, v.weight) for v in rel.variants] == [(c.model_version, 1.0)]
            assert json.loads(cursor) == {}  # no challenger left to judge
    finally:
        EmbeddedFalkorDB(tmp_path / "graph").stop()

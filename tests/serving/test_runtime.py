"""The serving runtime over real HTTP: a real (tiny, untrained) ONNX decoder behind each route,
a real local Qdrant index embedded by the packaged MiniLM model. No Dagster."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    from tests.serving.deployment import build_deployment

    return build_deployment(tmp_path_factory.mktemp("serve"))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(settings):
    """The runtime on a free port in this process, over real HTTP; its URL."""
    from ossa_serving import create_app
    from ossa_serving.cli import make_server

    app = create_app(settings=settings)
    port = _port()
    srv = make_server(app, "127.0.0.1", port, log_level="warning")
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    try:
        for _ in range(3600):  # start-up loads and warms the engines and embedders (first: ONNX export)
            if srv.started:
                break
            time.sleep(0.05)
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}", app=app, settings=settings)
    finally:
        srv.should_exit = True
        t.join(timeout=10)


@pytest.fixture(scope="module")
def server(deployment):
    from ossa_assets.lib.graph_store import EmbeddedFalkorDB, open_graph_store
    from ossa_serving.settings import Settings

    graph = deployment.root / "graph"
    settings = Settings(state_path=deployment.state, max_queue=8, request_timeout_s=20.0, search_poll_s=0.2,
                        graph_factory=lambda: open_graph_store("embedded", data_dir=graph))
    with serving(settings) as s:
        yield s
    EmbeddedFalkorDB(graph).stop()


def test_the_runtime_does_not_import_dagster():
    code = "import sys, ossa_serving, ossa_serving.app, ossa_serving.cli; print('dagster' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_deployment_state_round_trips_and_refuses_what_it_cannot_serve(deployment, tmp_path):
    from ossa_assets.lib.deployment import DeploymentError, DeploymentState, read_state

    state = read_state(deployment.state)
    assert DeploymentState.from_dict(json.loads(state.to_json())) == state
    assert read_state(tmp_path / "none.json") is None
    bad = json.loads(state.to_json())
    bad["routes"]["/nope/v1"] = bad["routes"]["/api-model/v1"]
    with pytest.raises(DeploymentError, match="unknown route '/nope/v1'"):
        DeploymentState.from_dict(bad)
    bad = json.loads(state.to_json())
    del bad["routes"]["/api-model/v1"]["engine_path"]
    with pytest.raises(DeploymentError, match="routes./api-model/v1.*engine_path"):
        DeploymentState.from_dict(bad)


def test_generation_is_batched_and_matches_one_request_alone(server):
    import httpx

    body = {"prompt": "stages:", "max_new_tokens": 8}
    with httpx.Client(base_url=server.url, timeout=60) as c:
        assert c.get("/ready").status_code == 200
        # the engines run their KV-cache graphs (what ran, not what was configured)
        assert all(m["kv_cache"] for m in c.get("/v1/models").json()["models"])
        alone = c.post("/devops-model/v1", json={**body, "prompt": "stages: [x]"}).json()
    prompts = [f"stages: [{i}]" for i in range(12)] + ["stages: [x]"]

    def one(p):
        return httpx.post(server.url + "/devops-model/v1", json={**body, "prompt": p}, timeout=60)

    with ThreadPoolExecutor(13) as pool:
        answers = list(pool.map(one, prompts))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    # right-padded batching gives exactly the tokens the request gets alone
    together = answers[-1].json()
    assert together["completion"] == alone["completion"]
    assert together["cached"] or together["completion_tokens"] == alone["completion_tokens"]
    metrics = httpx.get(server.url + "/metrics").text
    sizes = [line for line in metrics.splitlines() if line.startswith("ossa_batch_size_count")]
    batches = sum(float(line.split()[-1]) for line in sizes if "devops" in line)
    assert 0 < batches < 13, sizes  # 13 requests did not run as 13 batches of one
    assert 'ossa_model_info{lineage_id="quantize/int8_model[devops_workflow]@1"' in metrics


def test_each_engine_runs_in_its_own_process_and_a_dead_one_is_restarted(deployment):
    """Decoding never shares the HTTP process's GIL; an engine process that dies fails its
    requests with 503 (not a hang), the other routes keep serving, and it comes back."""
    import os
    import signal

    import httpx

    from ossa_serving.settings import Settings
    from ossa_serving.workers import EngineProcess

    settings = Settings(state_path=deployment.state, search_poll_s=60)
    with serving(settings) as srv:
        routes = srv.app.state.watcher.routes
        engine = routes["/api-model/v1"].engine
        assert isinstance(engine, EngineProcess) and engine.process.pid != os.getpid()
        assert len({lr.engine.process.pid for lr in routes.values()}) == 3
        assert httpx.post(srv.url + "/api-model/v1", json={"prompt": "a", "max_new_tokens": 4}, timeout=30).status_code == 200
        os.kill(engine.process.pid, signal.SIGKILL)
        engine.process.join(10)
        r = httpx.post(srv.url + "/api-model/v1", json={"prompt": "b", "max_new_tokens": 4}, timeout=30)
        assert r.status_code == 503 and "engine process" in r.json()["error"], r.text
        other = httpx.post(srv.url + "/devops-model/v1", json={"prompt": "c", "max_new_tokens": 4}, timeout=30)
        assert other.status_code == 200
        for _ in range(300):  # restarted in the background
            r = httpx.post(srv.url + "/api-model/v1", json={"prompt": "d", "max_new_tokens": 4}, timeout=30)
            if r.status_code == 200:
                break
            time.sleep(0.1)
        assert r.status_code == 200, r.text
        assert srv.app.state.watcher.routes["/api-model/v1"].engine.process.pid != engine.process.pid
        assert httpx.get(srv.url + "/ready", timeout=10).json()["last_reload_error"] is None


def test_a_new_deployment_loads_beside_the_old_and_no_request_fails_during_the_swap(deployment, tmp_path):
    """The state file changes under steady load: the new engine process starts in the
    background (seconds) while the old one answers; the swap loses no request, and the
    event loop is never blocked by the load (requests keep completing meanwhile)."""
    import dataclasses

    import httpx

    from ossa_assets.lib.deployment import read_state, write_state
    from ossa_serving.settings import Settings

    state_file = tmp_path / "deployment.json"
    st = read_state(deployment.state)
    write_state(state_file, st)
    settings = Settings(state_path=state_file, search_poll_s=60)
    with serving(settings) as srv:
        answers: list[tuple[float, int, str]] = []
        stop = threading.Event()

        def load():
            with httpx.Client(base_url=srv.url, timeout=30) as c:
                while not stop.is_set():
                    r = c.post("/api-model/v1", json={"prompt": f"swap {time.time()}", "max_new_tokens": 4})
                    answers.append((time.monotonic(), r.status_code, r.json().get("model_version", r.text)))

        threads = [threading.Thread(target=load) for _ in range(4)]
        [t.start() for t in threads]
        time.sleep(1.0)
        routes = {r: (dataclasses.replace(s, model_version="api_spec-v2") if r == "/api-model/v1" else s)
                  for r, s in st.routes.items()}
        swapped_at = time.monotonic()
        write_state(state_file, dataclasses.replace(st, routes=routes, version="v2"))
        for _ in range(600):
            if answers and answers[-1][2] == "api_spec-v2":
                break
            time.sleep(0.1)
        time.sleep(0.5)
        stop.set()
        [t.join(30) for t in threads]
    assert {code for _, code, _ in answers} == {200}
    versions = [v for _, _, v in answers]
    assert versions[0] == "api_spec-v1" and versions[-1] == "api_spec-v2"
    first_new = next(t for t, _, v in answers if v == "api_spec-v2")
    during = [t for t, _, v in answers if swapped_at < t < first_new]
    assert first_new - swapped_at > 0.5  # a process really started (not an instant swap)...
    assert len(during) > 10  # ...while the old engine kept answering


def test_sampling_is_seeded_and_stop_sequences_cut(server):
    import httpx

    with httpx.Client(base_url=server.url, timeout=60) as c:
        req = {"prompt": "openapi:", "max_new_tokens": 12, "temperature": 1.0, "top_p": 0.9, "seed": 7}
        a, b = c.post("/api-model/v1", json=req).json(), c.post("/api-model/v1", json={**req, "stop": []}).json()
        assert a["completion"] == b["completion"]
        other = c.post("/api-model/v1", json={**req, "seed": 8}).json()
        greedy = c.post("/api-model/v1", json={"prompt": "openapi:", "max_new_tokens": 12}).json()
        assert len({a["completion"], other["completion"], greedy["completion"]}) >= 2
        if len(greedy["completion"]) > 2:
            stop = greedy["completion"][1:3]
            cut = c.post("/api-model/v1", json={"prompt": "openapi:", "max_new_tokens": 12, "stop": [stop]}).json()
            assert cut["finish_reason"] == "stop" and stop not in cut["completion"]
        long = c.post("/api-model/v1", json={"prompt": "stages: " * 200, "max_new_tokens": 4}).json()
        assert long["prompt_truncated"] and long["prompt_tokens"] <= 60


def test_embeddings_and_search(server):
    import httpx
    import numpy as np

    with httpx.Client(base_url=server.url, timeout=60) as c:
        r = c.post("/v1/embeddings", json={"input": ["list pets", "run the tests"], "model": "docs"})
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        v = np.array([d["embedding"] for d in data])
        assert v.shape == (2, 384) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
        # served from the ONNX export, in a process of its own, and the same vectors as the model's
        from ossa_assets.lib.embeddings import load_embedder

        backends = c.get("/v1/models").json()["embedders"]
        assert list(backends.values()) == ["onnx:model.onnx"], backends  # MiniLM's int8 stays under 0.99
        ref = load_embedder(None).encode(["list pets", "run the tests"], normalize_embeddings=True)
        assert np.min(np.sum(ref * v, axis=1)) > 0.9999
        short = c.post("/v1/embeddings", json={"input": "list pets", "model": "docs", "dimensions": 64}).json()
        s = np.array(short["data"][0]["embedding"])
        assert s.shape == (64,) and np.allclose(np.linalg.norm(s), 1, atol=1e-5)
        assert np.allclose(s, v[0, :64] / np.linalg.norm(v[0, :64]), atol=1e-5)  # a Matryoshka prefix
        whole = c.post("/v1/embeddings", json={"input": "x", "model": "docs", "dimensions": 4096}).json()
        assert whole["dimensions"] == 384 and len(whole["data"][0]["embedding"]) == 384
        assert c.post("/v1/embeddings", json={"input": "", "model": "docs"}).status_code == 422
        assert c.post("/v1/embeddings", json={"input": [], "model": "docs"}).status_code == 422
        assert c.post("/v1/embeddings", json={"input": "x", "model": "images"}).status_code == 422
        hits = c.post("/v1/search", json={"query": "UAVariable Temperature", "limit": 2,
                                          "domain": "industrial_protocol"}).json()
        assert hits["hits"] and all(h["domain"] == "industrial_protocol" for h in hits["hits"])
        assert hits["lineage_id"] == "embeddings/vector_index[docs]@1" and hits["collection"] == "docs-v1"


def test_search_serves_while_a_rebuild_holds_the_store_and_follows_the_alias(server, deployment):
    import httpx

    from ossa_assets.lib import embeddings

    # another process holding local Qdrant (a materialization) blocks nothing
    client = embeddings.open_qdrant(path=str(deployment.qdrant))
    try:
        t = time.perf_counter()
        r = httpx.post(server.url + "/v1/search", json={"query": "pets", "limit": 1}, timeout=30)
        assert r.status_code == 200 and time.perf_counter() - t < 2
        # the rebuild makes a new collection and moves the alias
        mini = embeddings.packaged_minilm_path()
        embedder = embeddings.load_embedder(mini, 128)
        embeddings.ensure_collection(client, "docs-v2", 384, {**embeddings.collection_metadata(client, "docs-v1"),
                                                               "model_lineage_id": "embeddings/docs@2"})
        embeddings.embed_and_upsert(client, embedder, "docs-v2",
                                    [embeddings.IndexRecord("a brand new document", {"domain": "api_spec"})],
                                    embeddings.model_version(mini))
        embeddings.point_alias(client, "docs", "docs-v2")
    finally:
        client.close()
    for _ in range(100):
        body = httpx.post(server.url + "/v1/search", json={"query": "new", "limit": 3}, timeout=30).json()
        if body.get("collection") == "docs-v2":
            break
        time.sleep(0.1)
    assert body["collection"] == "docs-v2" and len(body["hits"]) == 1
    assert body["lineage_id"] == "embeddings/docs@2"  # after an alias move: the collection's model


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "needle"),
    [
        ("POST", "/api-model/v1", {"json": {}}, 422, "prompt"),
        ("POST", "/api-model/v1", {"json": {"prompt": "x", "max_new_tokens": 100000}}, 422, "max_new_tokens"),
        ("POST", "/api-model/v1", {"json": {"prompt": "x", "temperature": 5}}, 422, "temperature"),
        ("POST", "/api-model/v1", {"content": b"\xff\xfe{", "headers": {"content-type": "application/json"}}, 400,
         "error parsing the body"),  # not UTF-8
        ("POST", "/api-model/v1", {"content": "{not json", "headers": {"content-type": "application/json"}}, 422,
         "invalid"),
        ("POST", "/api-model/v1", {"content": "prompt=x", "headers": {"content-type": "text/plain"}}, 415,
         "application/json"),
        ("POST", "/api-model/v1", {"content": b"x" * 3_000_000, "headers": {"content-type": "application/json"}},
         413, "limit"),
        ("GET", "/api-model/v1", {}, 405, "Method Not Allowed"),
        ("POST", "/nope/v1", {"json": {}}, 404, "Not Found"),
    ],
)
def test_bad_input_gets_a_json_4xx(server, method, path, kwargs, status, needle):
    import httpx

    r = httpx.request(method, server.url + path, timeout=30, **kwargs)
    assert r.status_code == status, r.text
    assert needle in json.dumps(r.json()) and "Traceback" not in r.text
    if status == 405:
        assert r.headers["allow"] == "POST"


def _raw(url: str, head: bytes, chunks: list[bytes], pause_s: float = 0.0) -> tuple[int, dict, bytes, float]:
    """Send a request byte by byte as written (no client library smoothing it); the status,
    the JSON body and how long the answer took."""
    from urllib.parse import urlparse

    u = urlparse(url)
    t0 = time.monotonic()
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        s.sendall(head)
        try:
            for c in chunks:
                s.sendall(c)
                time.sleep(pause_s)
        except OSError:
            pass  # the server answered and closed while we were still sending: that is the point
        raw = b""
        while b"\r\n\r\n" not in raw or len(raw.split(b"\r\n\r\n", 1)[1]) < int(
                dict(ln.split(b": ", 1) for ln in raw.split(b"\r\n\r\n")[0].split(b"\r\n")[1:] if b": " in ln)
                .get(b"content-length", b"0")):
            part = s.recv(65536)
            if not part:
                break
            raw += part
    head_, _, body = raw.partition(b"\r\n\r\n")
    return int(head_.split()[1]), json.loads(body), raw, time.monotonic() - t0


def test_a_chunked_body_past_the_limit_is_refused_before_it_is_read_whole(server):
    """No Content-Length to refuse from: the 413 comes after the limit's bytes, not at the end."""
    limit = server.settings.max_body_bytes
    head = (b"POST /api-model/v1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    piece = b"x" * 65536
    n_chunks = 3 * limit // len(piece)  # three times the limit, if the server read it all
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    status, body, raw, _ = _raw(server.url, head, [chunk] * n_chunks + [b"0\r\n\r\n"])
    assert status == 413 and "limit" in body["error"], raw[:300]
    assert b"connection: close" in raw.lower()


def test_a_trickling_client_gets_408_and_holds_no_model_slot(deployment):
    """A body sent a few bytes at a time past the body timeout: 408; meanwhile the model's one
    batch slot and its queue of one serve everyone else."""
    import httpx

    from ossa_serving.settings import Settings

    settings = Settings(state_path=deployment.state, max_batch=1, max_queue=1, body_timeout_s=1.0, search_poll_s=60)
    with serving(settings) as srv:
        body = json.dumps({"prompt": "slow " * 20, "max_new_tokens": 4}).encode()
        head = (f"POST /api-model/v1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        slow = ThreadPoolExecutor(4)
        trickles = [slow.submit(_raw, srv.url, head, [body[i:i + 4] for i in range(0, len(body), 4)], 0.1)
                    for _ in range(3)]
        time.sleep(0.2)
        fast = [httpx.post(srv.url + "/api-model/v1", json={"prompt": f"fast {i}", "max_new_tokens": 4}, timeout=30)
                for i in range(5)]
        results = [t.result(timeout=60) for t in trickles]
        slow.shutdown()
    assert [r.status_code for r in fast] == [200] * 5  # one slot, three trickling clients: never refused
    for status, answer, raw, seconds in results:
        assert status == 408 and "did not arrive within 1s" in answer["error"], raw[:300]
        assert seconds < 5  # refused at the body timeout, not when the body finally arrived (~12 s)


def test_overload_is_refused_fast_with_429_and_retry_after(deployment):
    import httpx

    from ossa_serving.settings import Settings

    # batches of 2, 2 waiting: 40 long generations at once overflow it; none may time out or 5xx
    settings = Settings(state_path=deployment.state, max_batch=2, max_queue=2, search_poll_s=60)
    with serving(settings) as srv:
        def one(i):
            return httpx.post(srv.url + "/protocol-model/v1",
                              json={"prompt": f"<UANodeSet> {i}", "max_new_tokens": 48}, timeout=60)

        with ThreadPoolExecutor(40) as pool:
            answers = list(pool.map(one, range(40)))
    codes = [a.status_code for a in answers]
    assert set(codes) <= {200, 429} and 429 in codes and 200 in codes, codes
    assert all(a.headers.get("retry-after") == "1" for a in answers if a.status_code == 429)
    assert all("capacity" in a.json()["error"] for a in answers if a.status_code == 429)


def test_sigterm_drains_in_flight_requests_then_exits(deployment, tmp_path):
    import signal

    import httpx

    port = _port()
    env = {**__import__("os").environ, "OSSA_SERVE_MAX_QUEUE": "64"}
    proc = subprocess.Popen([sys.executable, "-m", "ossa_serving", "--port", str(port), "--state",
                             str(deployment.state)], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(base + "/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        with ThreadPoolExecutor(8) as pool:
            futs = [pool.submit(httpx.post, base + "/api-model/v1",
                                json={"prompt": f"paths {i}", "max_new_tokens": 48}, timeout=60) for i in range(6)]
            time.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.05)
            late = None
            try:
                late = httpx.get(base + "/ready", timeout=5)
            except httpx.HTTPError:
                pass  # already closed: also refused
            done = [f.result() for f in futs]
        assert [d.status_code for d in done] == [200] * 6  # in-flight requests finished
        assert late is None or late.status_code == 503
        # uvicorn re-raises the signal it caught once it has shut down: a SIGTERM exit, after the drain
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_response_cache_keys_on_the_model_version_in_redis(deployment, tmp_path):
    """The real Redis on 127.0.0.1:6379."""
    import httpx
    import redis

    from ossa_serving.settings import Settings

    redis.Redis.from_url("redis://127.0.0.1:6379/0").ping()
    settings = Settings(state_path=deployment.state, cache_url="redis://127.0.0.1:6379/0")
    with serving(settings) as srv:
        req = {"prompt": f"cache me {time.time()}", "max_new_tokens": 3}
        first = httpx.post(srv.url + "/api-model/v1", json=req, timeout=30).json()
        again = httpx.post(srv.url + "/api-model/v1", json=req, timeout=30).json()
    assert not first["cached"] and again["cached"] and again["completion"] == first["completion"]
    assert again["model_version"] == "api_spec-v1"


def test_schemathesis_finds_no_failure_against_the_spec(server, tmp_path):
    """Every status the server answers is in /openapi.json, on a small example budget."""
    cli = Path(sys.executable).with_name("schemathesis")
    out = subprocess.run([str(cli), "run", server.url + "/openapi.json", "--checks", "all", "--max-examples", "8",
                          "--seed", "1", "--request-timeout", "30", "--no-color"],
                         capture_output=True, text=True, timeout=900, cwd=tmp_path)
    # schemathesis prints whole generated bodies (hundreds of kB): keep the readable lines
    readable = "\n".join(line[:300] for line in out.stdout.splitlines() if "Request body was truncated" not in line)
    assert out.returncode == 0, readable[-8000:] + out.stderr[-2000:]

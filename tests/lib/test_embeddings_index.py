"""The Qdrant index on a real local-mode Qdrant with the real packaged MiniLM: incremental sync,
idempotent ids, deletes, payload refresh, blue/green alias moves, old-collection clean-up, and
filtered search."""

from __future__ import annotations

import pytest

from ossa_assets.lib import embeddings as lib

DOCS = [
    ("api_spec", "openapi", "GET /pets lists every pet in the store, paged by a cursor"),
    ("api_spec", "openapi", "POST /orders places an order for a pet and returns the order id"),
    ("api_spec", "petstore-extra", "DELETE /pets/{id} removes one pet from the store"),
    ("industrial_protocol", "opcua", "NodeSet variable AirTemp holds the freezer air temperature in Celsius"),
    ("industrial_protocol", "opcua", "UADP NetworkMessage header: version, flags and the PublisherId"),
    ("devops_workflow", "cicd", "GitLab CI job that runs pytest in the python:3.12 image on merge requests"),
    ("devops_workflow", "cicd", "GitHub Actions workflow that builds a container image and pushes it"),
]


def _records(docs=DOCS, data_version="v1"):
    return [lib.IndexRecord(text=t, payload={"doc_id": f"doc-{i}", "domain": d, "source": s,
                                             "data_version": data_version})
            for i, (d, s, t) in enumerate(docs)]


@pytest.fixture(scope="module")
def embedder():
    return lib.load_embedder(None, 128)


@pytest.fixture
def client(tmp_path):
    c = lib.open_qdrant(path=str(tmp_path / "qdrant"))
    yield c
    c.close()


def test_sync_is_incremental_and_idempotent(client, embedder):
    first = lib.sync_collection(client, embedder, "docs-m1", _records(), "m1")
    assert (first.embedded, first.deleted, first.points, first.dim) == (len(DOCS), 0, len(DOCS), 384)
    again = lib.sync_collection(client, embedder, "docs-m1", _records(), "m1")
    assert (again.embedded, again.deleted, again.unchanged, again.points) == (0, 0, len(DOCS), len(DOCS))

    changed = list(DOCS)
    changed[0] = ("api_spec", "openapi", "GET /pets lists every pet, now filtered by tag")  # edited
    del changed[4]  # withdrawn
    changed.append(("devops_workflow", "cicd", "Tekton pipeline that lints Helm charts"))  # new
    res = lib.sync_collection(client, embedder, "docs-m1", _records(changed, data_version="v2"), "m1")
    assert (res.embedded, res.deleted, res.points) == (2, 2, len(DOCS))
    payloads = {p.payload["doc_id"]: p.payload for p in client.scroll("docs-m1", limit=100)[0]}
    assert "UADP" not in " ".join(str(p) for p in payloads.values())
    # unchanged points carry the new corpus version without being embedded again
    assert {p["data_version"] for p in payloads.values()} == {"v2"}
    # point ids come from (content hash, model version) alone
    want = {lib.point_id(r.key, "m1") for r in _records(changed)}
    assert lib.existing_point_ids(client, "docs-m1") == want


def test_search_filters_by_domain_and_source(client, embedder):
    lib.sync_collection(client, embedder, "docs-m1", _records(), "m1")
    hits = lib.search(client, embedder, "docs-m1", "remove a pet", limit=3)
    assert hits[0]["doc_id"] == "doc-2" and hits[0]["model_version"] == "m1"
    only = lib.search(client, embedder, "docs-m1", "pets", limit=10, domain="api_spec", source="openapi")
    assert {h["doc_id"] for h in only} == {"doc-0", "doc-1"}
    assert lib.search(client, embedder, "docs-m1", "pets", domain="industrial_protocol")[0]["domain"] == "industrial_protocol"
    assert lib.search(client, embedder, "docs-m1", "pets", domain="no-such-domain") == []


def test_alias_moves_atomically_and_metadata_names_the_model(client, embedder):
    lib.sync_collection(client, embedder, "docs-m1", _records(), "m1", metadata={"model_path": "/models/m1"})
    lib.point_alias(client, "docs-live", "docs-m1")
    lib.sync_collection(client, embedder, "docs-m2", _records(), "m2", metadata={"model_path": "/models/m2"})
    assert lib.alias_target(client, "docs-live") == "docs-m1"
    assert lib.collection_metadata(client, "docs-live")["model_path"] == "/models/m1"
    lib.point_alias(client, "docs-live", "docs-m2")
    assert lib.alias_target(client, "docs-live") == "docs-m2"
    assert lib.collection_metadata(client, "docs-live")["model_version"] == "m2"
    # the alias answers queries like the collection
    assert lib.search(client, embedder, "docs-live", "remove a pet", limit=1)[0]["model_version"] == "m2"


def test_old_collections_are_dropped_but_live_and_previous_kept(client, embedder):
    for i in range(1, 5):
        lib.sync_collection(client, embedder, f"docs-m{i}", _records()[:2], f"m{i}",
                            metadata={"created_at": f"2026-01-0{i}"})
    lib.point_alias(client, "docs-live", "docs-m2")  # rolled back to m2, say
    client.create_collection("code-x", vectors_config=None)  # another model's: never touched
    dropped = lib.remove_old_collections(client, "docs-", keep=["docs-m4"], keep_previous=1)
    names = {c.name for c in client.get_collections().collections}
    assert sorted(dropped) == ["docs-m1"]
    assert names == {"docs-m2", "docs-m3", "docs-m4", "code-x"}


def test_collection_recall_counts_misses(client, embedder):
    recs = _records()
    lib.sync_collection(client, embedder, "docs-m1", recs, "m1")
    good = [("delete a pet from the store", lib.point_id(recs[2].key, "m1")),
            ("freezer temperature variable", lib.point_id(recs[3].key, "m1"))]
    assert lib.collection_recall(client, embedder, "docs-m1", good, k=1) == (1.0, [])
    wrong = [("freezer temperature variable", lib.point_id(recs[0].key, "m1"))]
    rate, misses = lib.collection_recall(client, embedder, "docs-m1", good + wrong, k=1)
    assert rate == pytest.approx(2 / 3) and misses == ["freezer temperature variable"]


# the client warns about an API key over plain http and an unknown server version: both true here
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_server_mode_is_the_same_client_by_url():
    """No Qdrant server can run here (no Docker, no binary on PyPI): this checks that a URL and API
    key build the remote client that production uses, and that an unreachable server is an error,
    not a silent fallback to local mode."""
    c = lib.open_qdrant(url="http://127.0.0.1:9", api_key="secret-key")
    try:
        assert type(c._client).__name__ == "QdrantRemote"
        with pytest.raises(Exception, match="(?i)connect|refused"):
            c.collection_exists("docs-live")
    finally:
        c.close()
    with pytest.raises(ValueError, match="url or a local path"):
        lib.open_qdrant()

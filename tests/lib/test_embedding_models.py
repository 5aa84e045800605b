"""Pair mining, the projected model and Matryoshka training, on the real packaged MiniLM (no
download) and units curated from the shipped sample corpus. The retrieval metrics and their gate:
test_retrieval_eval.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ossa_assets.lib import embedding_models as em
from ossa_assets.lib.embeddings import load_embedder, packaged_minilm_path

OPERATION = {
    "unit_type": "operation", "title": "Finds Pets by status — Swagger Petstore", "unit_id": "d1:0", "doc_id": "d1",
    "domain": "api_spec", "source": "openapi",
    "text": "/pet/findByStatus:\n  get:\n    summary: Finds Pets by status\n    operationId: findPetsByStatus\n",
    "meta": json.dumps({"method": "get", "path": "/pet/findByStatus", "operation_id": "findPetsByStatus",
                       "name": "Finds Pets by status", "api": "Swagger Petstore",
                       "summary": "Finds Pets by status", "parameters": ["status"], "schemas": ["Pet"],
                       "tags": ["pet"]}),
}
UNNAMED = {**OPERATION, "title": "GET /users/{username}", "unit_id": "d1:1",
           "text": "/users/{username}:\n  get:\n    parameters: [username]\n",
           "meta": json.dumps({"method": "get", "path": "/users/{username}", "summary": "",
                               "parameters": [{"name": "username"}], "schemas": []})}
METHOD = {
    "unit_type": "node", "title": "Reset — This Method sets the CurrentInterval to 0", "unit_id": "d2:3",
    "doc_id": "d2", "domain": "industrial_protocol", "source": "opcua",
    "text": "NodeClass: Method\nBrowseName: 3:Reset\nDisplayName: Reset\n"
            "Description: This Method sets the CurrentInterval to 0\nParent: ns=1;i=5007 (Maintenance)\n",
    "meta": json.dumps({"node_class": "Method", "browse_name": "3:Reset"}),
}
JOB = {
    "unit_type": "job", "title": "unit-tests (stage test) — ci", "unit_id": "d3:1", "doc_id": "d3",
    "domain": "devops_workflow", "source": "cicd",
    "text": "unit-tests:\n  stage: test\n  image: python:3.12\n  script:\n    - pytest -q\n",
    "meta": json.dumps({"job": "unit-tests", "stage": "test", "image": "python:3.12", "needs": [], "uses": []}),
}
SECTION = {
    "unit_type": "section", "title": "UADP > PublisherId", "unit_id": "d4:2", "doc_id": "d4",
    "domain": "industrial_protocol", "source": "opcua",
    "text": "The PublisherId identifies the sending application on a shared multicast group.",
    "meta": "{}",
}


def test_pairs_per_model_cut_the_anchor_out_of_the_positive():
    code = em.mine_pairs("code", [OPERATION, METHOD, JOB, SECTION])
    assert [p["pair_type"] for p in code] == ["operation", "node", "job"]
    op = code[0]
    # the anchor is the operation's own name, not the API's name every operation of it shares
    assert op["anchor"] == "Finds Pets by status" and "Finds Pets by status" not in op["positive"]
    assert "operationId: findPetsByStatus" in op["positive"] and op["doc_id"] == "d1"
    assert "unit-tests" not in code[2]["positive"] and "pytest -q" in code[2]["positive"]

    docs = em.mine_pairs("docs", [OPERATION, METHOD, SECTION])
    assert {p["pair_type"] for p in docs} == {"section", "node_description"}
    assert next(p for p in docs if p["pair_type"] == "section")["anchor"] == "PublisherId"

    cap = {p["pair_type"]: p for p in em.mine_pairs("capability", [OPERATION, METHOD, JOB, SECTION])}
    assert set(cap) == {"operation", "method", "job"}
    assert cap["operation"]["positive"].startswith("HTTP operation GET /pet/findByStatus")
    assert cap["method"]["anchor"] == "This Method sets the CurrentInterval to 0"
    # an indexed card keeps its name: a searcher may type it
    cards = em.capability_cards([OPERATION, SECTION])
    assert cards[0]["text"].startswith("Finds Pets by status — Swagger Petstore\nHTTP operation GET")
    assert len(cards) == 1 and cap["operation"]["anchor"] == "Finds Pets by status"
    # an operation without a summary has no words of its own to pair: no pair, but a card
    assert not em.mine_pairs("code", [UNNAMED]) and not em.mine_pairs("capability", [UNNAMED])
    assert em.capability_cards([UNNAMED])[0]["text"].startswith("GET /users/{username}\nHTTP operation GET")
    assert "parameters: username" in em.capability_cards([UNNAMED])[0]["text"]  # a dict entry, named
    with pytest.raises(ValueError, match="unknown embedding model"):
        em.mine_pairs("images", [OPERATION])


def test_pairs_from_the_sample_corpus_keep_their_documents_split(curated_sample):
    for kind in em.KINDS:
        by_split = {s: em.mine_pairs(kind, units) for s, units in curated_sample.items()}
        assert len(by_split["train"]) >= 20, kind
        train_docs = {p["doc_id"] for p in by_split["train"]}
        held_docs = {p["doc_id"] for s in ("validation", "test") for p in by_split[s]}
        assert held_docs and not train_docs & held_docs, kind


@pytest.fixture(scope="module")
def curated_sample(tmp_path_factory):
    """Units of the shipped sample, curated by the real pipeline (no Dagster)."""
    from ossa_assets.lib.curation import corpus, pipeline
    from ossa_assets.lib.curation.sources import SourceSpec, list_files
    from tests.conftest import SAMPLE

    work = tmp_path_factory.mktemp("curated")
    units = {"train": [], "validation": [], "test": []}
    for domain, sub in (("api_spec", "openapi"), ("industrial_protocol", "opcua"), ("devops_workflow", "cicd")):
        spec = SourceSpec(name=sub, domain=domain, kind="local", path=str(SAMPLE / sub))
        src = pipeline.curate_source(spec, list_files(spec, work), work / "cache", pipeline.CurationSettings())
        res = corpus.assemble(domain, [src], validation_fraction=0.2, test_fraction=0.05, near_dup_threshold=0.85,
                              config={})
        corpus.save_corpus(res, work / domain)
        for split in units:
            units[split] += corpus.load_units(work / domain, split)
    return units


def test_projection_starts_out_ranking_exactly_like_the_base():
    texts = ["list pets", "GET /pets returns pets", "GitLab CI job runs pytest", "OPC UA variable"]
    base = load_embedder(None, 64)
    model = em.build_model(packaged_minilm_path(), 768, 64, device="cpu")
    assert model.get_embedding_dimension() == 768
    b = base.encode(texts, normalize_embeddings=True)
    m = model.encode(texts)
    assert np.allclose(np.linalg.norm(m, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(m @ m.T, b @ b.T, atol=1e-5)


def test_matryoshka_training_saves_a_model_whose_prefixes_embed(tmp_path):
    pairs = em.mine_pairs("capability", [OPERATION, METHOD, JOB]) * 3
    settings = em.EmbedTrainSettings(max_seq_length=64, batch_size=3, learning_rate=1e-4, max_steps=3)
    logged = []
    report = em.train_embedding_model("capability", packaged_minilm_path(), pairs, tmp_path / "m", settings,
                                      tmp_path / "work", log_metrics=lambda m, s: logged.append((s, m)))
    assert report.steps == 3 and report.dim == 512 and len(report.step_losses) == 3
    assert all(np.isfinite(report.step_losses)) and [s for s, _ in logged] == [1, 2, 3]
    model = load_embedder(str(tmp_path / "m"), 64)
    assert model.get_embedding_dimension() == 512
    v = model.encode(["reset the maintenance interval", "run the unit tests"])
    assert v.shape == (2, 512)
    # a 64-d prefix is an embedding of its own: the two texts stay apart
    p = v[:, :64] / np.linalg.norm(v[:, :64], axis=1, keepdims=True)
    assert float(p[0] @ p[1]) < 0.95
    with pytest.raises(ValueError, match="at least 2"):
        em.train_embedding_model("code", packaged_minilm_path(), pairs[:1], tmp_path / "x", settings, tmp_path / "w")

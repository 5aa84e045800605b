"""Pair mining, the projected model, Matryoshka training and the retrieval metrics, on the real
packaged MiniLM (no download) and units curated from the shipped sample corpus."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ossa_assets.lib import embedding_models as em
from ossa_assets.lib.embeddings import load_embedder, packaged_minilm_path

OPERATION = {
    "unit_type": "operation", "title": "Finds Pets by status", "unit_id": "d1:0", "doc_id": "d1",
    "domain": "api_spec", "source": "openapi",
    "text": "/pet/findByStatus:\n  get:\n    summary: Finds Pets by status\n    operationId: findPetsByStatus\n",
    "meta": json.dumps({"method": "get", "path": "/pet/findByStatus", "operation_id": "findPetsByStatus",
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
    assert len(cards) == 1 and cards[0]["text"].startswith("Finds Pets by status\nHTTP operation GET")
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


def test_rank_metrics_by_hand():
    # 3 queries, 3 candidates: query 0 ranks its target 1st, query 1 2nd, query 2 3rd
    q = np.eye(3, dtype=np.float32)
    c = np.array([[1, 0, 0], [0.1, 0.9, 0], [0.2, 0.1, 0.5]], dtype=np.float32)
    m = em.rank_metrics(q, c, [0, 2, 1], k=1)
    # query 1 = [0,1,0]: scores 0, .9, .1 (normalised) -> target 2 is 2nd; query 2 = [0,0,1]:
    # scores 0, 0, ~.98 -> target 1 ties candidate 0 for 2nd: a tie counts against it (rank 3)
    assert m.recall_at_10 == pytest.approx(1 / 3)  # k=1: only query 0
    assert m.mrr == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    assert em.rank_metrics(q, c, [0, 2, 1]).recall_at_10 == 1.0 and not m.degenerate


def test_ties_count_against_the_target():
    # every candidate scores the same for every query: each target ranks last, not first
    q = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)
    c = np.tile(np.array([[1.0, 2.0, 0, 0, 0, 0, 0, 0]], dtype=np.float32), (30, 1))
    c[:, 1] += np.arange(30, dtype=np.float32) * 0  # identical rows
    m = em.rank_metrics(q, c, list(range(20)))
    assert m.recall_at_10 == 0.0 and m.mrr == 0.0 and "collapsed" in m.degenerate
    # two candidates tied exactly: the target shares rank 2 with its twin
    q2 = np.array([[1, 0]], dtype=np.float32)
    c2 = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)
    assert em.rank_metrics(q2, c2, [0]).mrr == pytest.approx(1 / 2)


@pytest.mark.parametrize(("vecs", "why"), [
    (np.full((12, 4), np.nan, dtype=np.float32), "NaN"),
    (np.zeros((12, 4), dtype=np.float32), "zero"),
    (np.ones((12, 4), dtype=np.float32), "collapsed"),
])
def test_degenerate_embeddings_are_no_evaluation(vecs, why):
    good = np.random.default_rng(1).normal(size=(12, 4)).astype(np.float32)
    for q, c in ((vecs, good), (good, vecs)):
        m = em.rank_metrics(q, c, list(range(12)))
        assert why in m.degenerate and m.recall_at_10 == 0.0 and m.mrr == 0.0


HELDOUT = [{"anchor": a, "positive": p} for a, p in [
    ("list every pet in the store", "GET /pets returns an array of Pet objects"),
    ("create a new pet", "POST /pets adds a Pet to the store"),
    ("delete an order", "DELETE /store/orders/{id} removes the order"),
    ("run the unit tests", "script: pytest -q tests/unit"),
    ("build the container image", "script: docker build -t app ."),
    ("deploy to production", "environment: production; script: ./deploy.sh"),
    ("lint the code", "script: ruff check ."),
    ("cache pip downloads", "cache: paths: [.cache/pip]"),
    ("air temperature of the freezer", "Variable AirTemp Float Celsius of Freezer"),
    ("motor speed in rpm", "Variable MotorSpeed Double rpm"),
    ("reset the maintenance counter", "Method ResetCounter sets the interval to 0"),
    ("pump discharge pressure", "Variable DischargePressure Float bar of Pump"),
    ("open the valve", "Method OpenValve of Valve"),
    ("publisher id of the network message", "UADP PublisherId identifies the sender"),
    ("security mode of the writer group", "WriterGroup SecurityMode SignAndEncrypt"),
    ("list the invoices of a customer", "GET /customers/{id}/invoices"),
]]


def _broken(kind: str):
    """A real sentence-transformers model (MiniLM + projection) broken the way models break."""
    import torch

    model = em.build_model(packaged_minilm_path(), 512, 64, device="cpu")
    dense = model[-2].linear
    with torch.no_grad():
        if kind == "collapsed":  # every text maps to the same point
            dense.weight.zero_()
            dense.bias.fill_(0.5)
        elif kind == "nan":
            dense.weight.fill_(float("nan"))
        elif kind == "random":  # an untrained encoder: BERT's initialisation, nothing learned
            g = torch.Generator().manual_seed(0)
            for m in model[0].auto_model.modules():
                if isinstance(m, (torch.nn.Linear, torch.nn.Embedding)):
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.02)
    return model


@pytest.mark.parametrize("kind", ["collapsed", "nan", "random"])
def test_the_gate_fails_broken_models(kind):
    base = em.evaluate_retrieval(load_embedder(None, 64), HELDOUT)["384"]
    got = em.evaluate_retrieval(_broken(kind), HELDOUT)["512"]
    decision = em.not_worse_than_base(got, base, max_regression=0.0)
    assert not decision.passed, (kind, got, base)
    if kind == "random":
        assert not got.degenerate and got.recall_at_10 < base.recall_at_10 - 0.05
    else:
        assert got.degenerate and got.degenerate.split(": ", 1)[1] in decision.reason


def test_the_gate_resolves_one_query_and_no_less():
    base = em.RetrievalMetrics(recall_at_10=0.80, mrr=0.60, queries=50, candidates=50)
    one = em.RetrievalMetrics(recall_at_10=0.78, mrr=0.59, queries=50, candidates=50)  # one query out of the top 10
    two = em.RetrievalMetrics(recall_at_10=0.76, mrr=0.59, queries=50, candidates=50)
    assert em.not_worse_than_base(one, base, 0.0).passed
    decision = em.not_worse_than_base(two, base, 0.0)
    assert not decision.passed and "recall@10 0.760 < base 0.800 - 0.0200" in decision.reason
    assert em.not_worse_than_base(two, base, 0.03).passed  # a configured tolerance adds to it


def test_the_gate_passes_the_base_against_itself():
    base = em.evaluate_retrieval(load_embedder(None, 64), HELDOUT)["384"]
    assert base.recall_at_10 > 0.8 and not base.degenerate  # a meaningful held-out set for the base
    assert em.not_worse_than_base(base, base, max_regression=0.0).passed
    # the untrained projection ranks like the base: it ties, at zero tolerance
    projected = em.evaluate_retrieval(em.build_model(packaged_minilm_path(), 512, 64, device="cpu"), HELDOUT)["512"]
    assert projected.mrr == pytest.approx(base.mrr, abs=1e-6)
    assert em.not_worse_than_base(projected, base, max_regression=1e-6).passed


def test_held_out_retrieval_prefers_the_trained_pairing_over_chance():
    pairs = [{"anchor": a, "positive": p} for a, p in [
        ("list every pet", "GET /pets returns an array of Pet"),
        ("run the unit tests", "script: pytest -q"),
        ("air temperature of the freezer", "Variable AirTemp Float Celsius"),
    ]]
    out = em.evaluate_retrieval(load_embedder(None, 64), pairs, (None, 64))
    assert set(out) == {"384", "64"}
    assert out["384"].queries == 3 and out["384"].candidates == 3
    assert out["384"].mrr > 1 / 3  # better than a random ranking of three

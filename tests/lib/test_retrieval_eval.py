"""Retrieval metrics and the embedding gate: ties count against the target, degenerate embeddings
are no evaluation, and broken models (collapsed, NaN, random) fail while the base ties itself.
The models are real: the packaged MiniLM and the projection ossa trains, broken on purpose."""

from __future__ import annotations

import numpy as np
import pytest

from ossa_assets.lib import embedding_models as em
from ossa_assets.lib import retrieval_eval as rev
from ossa_assets.lib.embeddings import load_embedder, packaged_minilm_path


def test_rank_metrics_by_hand():
    # 3 queries, 3 candidates: query 0 ranks its target 1st, query 1 2nd, query 2 3rd
    q = np.eye(3, dtype=np.float32)
    c = np.array([[1, 0, 0], [0.1, 0.9, 0], [0.2, 0.1, 0.5]], dtype=np.float32)
    m = rev.rank_metrics(q, c, [0, 2, 1], k=1)
    # query 1 = [0,1,0]: scores 0, .9, .1 (normalised) -> target 2 is 2nd; query 2 = [0,0,1]:
    # scores 0, 0, ~.98 -> target 1 ties candidate 0 for 2nd: a tie counts against it (rank 3)
    assert m.recall_at_10 == pytest.approx(1 / 3)  # k=1: only query 0
    assert m.mrr == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    assert rev.rank_metrics(q, c, [0, 2, 1]).recall_at_10 == 1.0 and not m.degenerate


def test_ties_count_against_the_target():
    # every candidate scores the same for every query: each target ranks last, not first
    q = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)
    c = np.tile(np.array([[1.0, 2.0, 0, 0, 0, 0, 0, 0]], dtype=np.float32), (30, 1))
    c[:, 1] += np.arange(30, dtype=np.float32) * 0  # identical rows
    m = rev.rank_metrics(q, c, list(range(20)))
    assert m.recall_at_10 == 0.0 and m.mrr == 0.0 and "collapsed" in m.degenerate
    # two candidates tied exactly: the target shares rank 2 with its twin
    q2 = np.array([[1, 0]], dtype=np.float32)
    c2 = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)
    assert rev.rank_metrics(q2, c2, [0]).mrr == pytest.approx(1 / 2)


@pytest.mark.parametrize(("vecs", "why"), [
    (np.full((12, 4), np.nan, dtype=np.float32), "NaN"),
    (np.zeros((12, 4), dtype=np.float32), "zero"),
    (np.ones((12, 4), dtype=np.float32), "collapsed"),
])
def test_degenerate_embeddings_are_no_evaluation(vecs, why):
    good = np.random.default_rng(1).normal(size=(12, 4)).astype(np.float32)
    for q, c in ((vecs, good), (good, vecs)):
        m = rev.rank_metrics(q, c, list(range(12)))
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
    base = rev.evaluate_retrieval(load_embedder(None, 64), HELDOUT)["384"]
    got = rev.evaluate_retrieval(_broken(kind), HELDOUT)["512"]
    decision = rev.not_worse_than_base(got, base, max_regression=0.0)
    assert not decision.passed, (kind, got, base)
    if kind == "random":
        assert not got.degenerate and got.recall_at_10 < base.recall_at_10 - 0.05
    else:
        assert got.degenerate and got.degenerate.split(": ", 1)[1] in decision.reason


def test_the_gate_resolves_one_query_and_no_less():
    base = rev.RetrievalMetrics(recall_at_10=0.80, mrr=0.60, queries=50, candidates=50)
    one = rev.RetrievalMetrics(recall_at_10=0.78, mrr=0.59, queries=50, candidates=50)  # one query out of the top 10
    two = rev.RetrievalMetrics(recall_at_10=0.76, mrr=0.59, queries=50, candidates=50)
    assert rev.not_worse_than_base(one, base, 0.0).passed
    decision = rev.not_worse_than_base(two, base, 0.0)
    assert not decision.passed and "recall@10 0.760 < base 0.800 - 0.0200" in decision.reason
    assert rev.not_worse_than_base(two, base, 0.03).passed  # a configured tolerance adds to it


def test_the_gate_passes_the_base_against_itself():
    base = rev.evaluate_retrieval(load_embedder(None, 64), HELDOUT)["384"]
    assert base.recall_at_10 > 0.8 and not base.degenerate  # a meaningful held-out set for the base
    assert rev.not_worse_than_base(base, base, max_regression=0.0).passed
    # the untrained projection ranks like the base: it ties, at zero tolerance
    projected = rev.evaluate_retrieval(em.build_model(packaged_minilm_path(), 512, 64, device="cpu"), HELDOUT)["512"]
    assert projected.mrr == pytest.approx(base.mrr, abs=1e-6)
    assert rev.not_worse_than_base(projected, base, max_regression=1e-6).passed


def test_held_out_retrieval_prefers_the_trained_pairing_over_chance():
    pairs = [{"anchor": a, "positive": p} for a, p in [
        ("list every pet", "GET /pets returns an array of Pet"),
        ("run the unit tests", "script: pytest -q"),
        ("air temperature of the freezer", "Variable AirTemp Float Celsius"),
    ]]
    out = rev.evaluate_retrieval(load_embedder(None, 64), pairs, (None, 64))
    assert set(out) == {"384", "64"}
    assert out["384"].queries == 3 and out["384"].candidates == 3
    assert out["384"].mrr > 1 / 3  # better than a random ranking of three

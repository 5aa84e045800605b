"""The server's read-only copy of a local-mode collection (ossa_serving/search.py MatrixCopy)
answers exactly what Qdrant answers: same points, same scores, same filters."""

from __future__ import annotations

import numpy as np


def test_the_matrix_copy_answers_what_qdrant_answers():
    from qdrant_client import QdrantClient, models

    from ossa_serving.search import _copy_collection

    rng = np.random.default_rng(7)
    client = QdrantClient(":memory:")
    client.create_collection("c", vectors_config=models.VectorParams(size=48, distance=models.Distance.COSINE))
    domains, sources = ["api_spec", "industrial_protocol", "devops_workflow"], ["a", "b"]
    client.upsert("c", [models.PointStruct(id=i, vector=rng.normal(size=48).tolist(),
                                           payload={"domain": domains[i % 3], "source": sources[i % 2], "n": i})
                        for i in range(300)])
    copy = _copy_collection(client, "c")
    assert len(copy) == 300
    for t in range(40):
        q = rng.normal(size=48).astype(np.float32)
        filters = [{}, {"domain": domains[t % 3]}, {"domain": domains[t % 3], "source": sources[t % 2]},
                   {"domain": "nowhere"}][t % 4]
        must = [models.FieldCondition(key=k, match=models.MatchValue(value=v)) for k, v in filters.items()]
        ref = client.query_points("c", query=q.tolist(), limit=7, with_payload=True,
                                  query_filter=models.Filter(must=must) if must else None).points
        got = copy.query(q * 3.0, 7, filters)  # an unnormalized query scores the same (cosine)
        assert [str(p.id) for p in ref] == [g["id"] for g in got]
        assert np.allclose([p.score for p in ref], [g["score"] for g in got], atol=1e-5)
        assert all(g["domain"] == filters.get("domain", g["domain"]) for g in got)
    assert copy.query(rng.normal(size=48), 5, {"domain": "nowhere"}) == []

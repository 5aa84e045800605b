"""Retrieval evaluation of an embedding model on held-out pairs, and the gate on it. No Dagster.

Each held-out anchor ranks every distinct held-out positive; recall@10 and MRR say how often and
how high its own positive comes. The gate compares a trained model with its base on the same
pairs; a degenerate evaluation (NaN, zero or collapsed embeddings) fails whatever its numbers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence


@dataclass
class RetrievalMetrics:
    recall_at_10: float
    mrr: float
    queries: int
    candidates: int
    degenerate: str = ""  # why the embeddings cannot be ranked (NaN, zero, collapsed); "" if sound


def degenerate_reason(vecs, what: str) -> str:
    """Why a batch of embeddings is not an evaluation at all, or "".

    Non-finite or zero vectors cannot be ranked; vectors that are all the same (a collapsed
    model) rank every candidate equally. Both must fail a gate with this reason, not score by
    accident of tie-breaking.
    """
    import numpy as np

    v = np.asarray(vecs, dtype=np.float32)
    if v.size == 0:
        return f"{what}: no vectors"
    bad = int((~np.isfinite(v)).any(axis=1).sum())
    if bad:
        return f"{what}: {bad} of {len(v)} vectors hold NaN or inf"
    norms = np.linalg.norm(v, axis=1)
    zero = int((norms < 1e-8).sum())
    if zero:
        return f"{what}: {zero} of {len(v)} vectors are zero"
    unit = v / norms[:, None]
    # the widest spread of any coordinate across the batch: ~0 when every text embeds the same
    if len(v) > 1 and float(np.ptp(unit, axis=0).max()) < 1e-4:
        return f"{what}: all {len(v)} vectors are the same (a collapsed model)"
    return ""


def rank_metrics(query_vecs, cand_vecs, targets: Sequence[int], k: int = 10) -> RetrievalMetrics:
    """Recall@k and MRR (full ranking) of `targets[i]` among the candidates for query i.

    Ties count against the target: its rank is the number of candidates scoring at least as high
    (itself included), so a model that scores everything alike ranks every target last. NaN,
    zero or collapsed embeddings are no ranking: metrics 0 and the reason in `degenerate`.
    """
    import numpy as np

    q = np.asarray(query_vecs, dtype=np.float32)
    c = np.asarray(cand_vecs, dtype=np.float32)
    t = np.asarray(targets)
    n = len(t)
    reason = degenerate_reason(q, "queries") or degenerate_reason(c, "candidates")
    if reason or not n:
        return RetrievalMetrics(0.0, 0.0, n, len(c), reason or "no queries")
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    c = c / np.linalg.norm(c, axis=1, keepdims=True)
    scores = q @ c.T
    target_scores = scores[np.arange(n), t]
    ranks = (scores >= target_scores[:, None]).sum(axis=1)
    return RetrievalMetrics(
        recall_at_10=float((ranks <= k).sum() / n),
        mrr=float((1.0 / ranks).sum() / n),
        queries=n,
        candidates=len(c),
    )


def evaluate_retrieval(model, pairs: Sequence[dict[str, Any]], dims: Iterable[int | None] = (None,),
                       batch_size: int = 64) -> dict[str, RetrievalMetrics]:
    """Each held-out anchor ranks every distinct held-out positive; metrics per embedding size
    (None = the model's full dimension; a smaller one = its Matryoshka prefix)."""
    positives = sorted({p["positive"] for p in pairs})
    index = {p: i for i, p in enumerate(positives)}
    anchors = [p["anchor"] for p in pairs]
    targets = [index[p["positive"]] for p in pairs]
    a = model.encode(anchors, batch_size=batch_size, normalize_embeddings=False, convert_to_numpy=True)
    c = model.encode(positives, batch_size=batch_size, normalize_embeddings=False, convert_to_numpy=True)
    out = {}
    for d in dims:
        d_eff = d or a.shape[1]
        out[str(d_eff)] = rank_metrics(a[:, :d_eff], c[:, :d_eff], targets)
    return out


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reason: str


def not_worse_than_base(trained: RetrievalMetrics, base: RetrievalMetrics, max_regression: float) -> GateDecision:
    """The embedding gate: a sound evaluation whose recall@10 and MRR trail the base's by at most
    `max_regression` plus one query's worth (1 / queries): a smaller difference is below what the
    held-out set can measure (with 18 pairs one query moving is 0.056 of recall; with 2,000,
    0.0005). A degenerate evaluation fails, whatever its numbers."""
    if trained.degenerate:
        return GateDecision(False, f"trained model: {trained.degenerate}")
    if base.degenerate:
        return GateDecision(False, f"base model: {base.degenerate} (nothing to compare with)")
    slack = max_regression + 1.0 / max(min(trained.queries, base.queries), 1)
    short = [f"{name} {t:.3f} < base {b:.3f} - {slack:.4f}"
             for name, t, b in (("recall@10", trained.recall_at_10, base.recall_at_10), ("MRR", trained.mrr, base.mrr))
             if t < b - slack - 1e-9]  # (float rounding of exact counts)
    bound = f"max regression {max_regression} + one query of {trained.queries} = {slack:.4f}"
    if short:
        return GateDecision(False, "; ".join(short) + f" ({bound})")
    return GateDecision(True, f"recall@10 {trained.recall_at_10:.3f} / MRR {trained.mrr:.3f} vs base "
                              f"{base.recall_at_10:.3f} / {base.mrr:.3f} ({bound})")


def metrics_dict(m: dict[str, RetrievalMetrics]) -> dict[str, dict[str, float]]:
    return {k: asdict(v) for k, v in m.items()}

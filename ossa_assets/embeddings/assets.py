"""Embeddings stage: three models (code 768-d, docs 1536-d, capability 512-d), each a partition.

  curated_corpus[*] -> embedding_pairs[m] -> embedding_model[m] -> embedding_eval[m]
                                                     \\-> vector_index[m] (after the eval gate)

- `embedding_pairs`: anchor/positive pairs mined from the curated units (lib/embedding_models.py
  says which, per model); train pairs from train documents, held-out pairs from validation/test.
- `embedding_model`: MiniLM (or a configured local base) + Dense to the model's dimension, trained
  with MultipleNegativesRankingLoss inside MatryoshkaLoss; tracked and registered in MLflow.
- `embedding_eval`: recall@10 and MRR on the held-out pairs, trained vs base, per Matryoshka
  prefix; blocking check: not worse than the base. A model that fails it never reaches an index.
- `vector_index`: one Qdrant collection per model version (`<model>-<version>`), one point per
  unit of a curated document (section, operation, schema, node, job; capability: a card), point
  ids from (content hash, model version); only new or changed texts are embedded, the points of
  withdrawn documents are deleted; a recall check runs against the collection and only then does the alias
  (`docs-live`, `code-live`, `capability-live`) move to it, in one atomic request.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import dagster as dg

from ossa_assets.artifact_asset import StageResult, artifact_asset, gate
from ossa_assets.embeddings.config import (
    EmbeddingEvalConfig,
    EmbeddingModelConfig,
    EmbeddingPairsConfig,
    VectorIndexConfig,
)
from ossa_assets.embeddings.partitions import embedding_partitions
from ossa_assets.keys import CURATED_CORPUS, EMBEDDING_EVAL, EMBEDDING_MODEL, EMBEDDING_PAIRS, VECTOR_INDEX
from ossa_assets.lib import embedding_models as em
from ossa_assets.lib import retrieval_eval
from ossa_assets.lib.artifacts import (
    Artifact,
    atomic_write_text,
    publish_dir,
    publish_versioned,
    sha256_json,
    staging_dir,
)
from ossa_assets.lib.curation import corpus as corpora_lib
from resources import GPU_POOL, gpu_pod_tags
from resources.mlflow import MlflowResource
from resources.qdrant import QdrantResource
from resources.storage import ArtifactStore

ALL_CORPORA = dg.AssetIn(CURATED_CORPUS, partition_mapping=dg.AllPartitionMapping())
HELDOUT_SPLITS = ("validation", "test")


def _by_hash(rows: list[dict], limit: int) -> list[dict]:
    """A deterministic sample that does not shift when unrelated rows come and go."""
    if not limit or len(rows) <= limit:
        return rows
    key = lambda r: hashlib.sha256((r["anchor"] + "\0" + r["positive"]).encode()).hexdigest()  # noqa: E731
    return sorted(rows, key=key)[:limit]


def load_pairs(path: str | Path, split: str) -> list[dict]:
    from datasets import load_from_disk

    return [dict(r) for r in load_from_disk(str(path))[split]]


@artifact_asset(
    kind="Dataset",
    key=EMBEDDING_PAIRS,
    ins={"corpora": ALL_CORPORA},
    partitions_def=embedding_partitions,
    group_name="embeddings",
    kinds={"huggingface"},
    owners=["team:search"],
)
def embedding_pairs(
    context: dg.AssetExecutionContext,
    config: EmbeddingPairsConfig,  # type: ignore[valid-type]
    store: ArtifactStore,
    corpora: dict,
) -> StageResult:
    """Anchor/positive pairs for one embedding model, mined from every domain's curated units."""
    from collections import Counter

    from datasets import Dataset, DatasetDict

    kind = context.partition_key
    train_units, heldout_units = [], []
    for _domain, art in sorted(corpora.items()):
        train_units += corpora_lib.load_units(art.path, "train")
        for split in HELDOUT_SPLITS:
            heldout_units += corpora_lib.load_units(art.path, split)
    train = _by_hash(em.mine_pairs(kind, train_units), config.max_train_pairs)
    heldout = _by_hash(em.mine_pairs(kind, heldout_units), config.max_eval_pairs)
    if len(train) < 2 or not heldout:
        raise dg.Failure(f"{kind}: {len(train)} training and {len(heldout)} held-out pairs mined; the "
                         "curated corpora hold too few units for this model (see lib/embedding_models.py)")
    version = sha256_json({"kind": kind, "train": train, "heldout": heldout})
    parent = store.dir_for(context.asset_key, kind)
    final = parent / version[:16]
    if not final.exists():  # same pairs as a published version: nothing to write
        with staging_dir(parent) as tmp:
            DatasetDict({"train": Dataset.from_list(train), "heldout": Dataset.from_list(heldout)}).save_to_disk(
                str(tmp), num_shards={"train": 1, "heldout": 1})
            publish_dir(tmp, final)
    types = Counter(p["pair_type"] for p in train)
    return StageResult(
        Artifact(kind="Dataset", path=str(final), data_version=version,
                 meta={"model": kind, "train_pairs": len(train), "heldout_pairs": len(heldout),
                       "corpus_versions": {d: a.data_version for d, a in sorted(corpora.items())}}),
        metadata={
            "train_pairs": len(train),
            "heldout_pairs": len(heldout),
            "pair_types": dg.JsonMetadataValue(dict(sorted(types.items()))),
            "example": dg.JsonMetadataValue({k: train[0][k][:300] for k in ("anchor", "positive")}),
        },
    )


@artifact_asset(
    kind="EmbeddingModel",
    key=EMBEDDING_MODEL,
    ins={"pairs": dg.AssetIn(EMBEDDING_PAIRS)},
    partitions_def=embedding_partitions,
    group_name="embeddings",
    kinds={"pytorch", "mlflow"},
    owners=["team:search"],
    pool=GPU_POOL,
    op_tags=gpu_pod_tags(gpus=1),
)
def embedding_model(
    context: dg.AssetExecutionContext,
    config: EmbeddingModelConfig,  # type: ignore[valid-type]
    store: ArtifactStore,
    mlflow: MlflowResource,
    pairs: Artifact,
) -> StageResult:
    """A sentence-transformers model with a Dense projection to its dimension, Matryoshka-trained."""
    from ossa_assets.lib.embeddings import packaged_minilm_path

    kind = context.partition_key
    k = em.kind_of(kind)
    base = config.base_path or packaged_minilm_path()
    settings = em.EmbedTrainSettings(
        max_seq_length=config.max_seq_length, batch_size=config.batch_size, learning_rate=config.learning_rate,
        max_steps=config.max_steps, epochs=config.epochs, warmup_ratio=config.warmup_ratio, seed=config.seed,
    )
    train = load_pairs(pairs.path, "train")
    parent = store.dir_for(context.asset_key, kind)
    with mlflow.start_run(context, run_name=f"embed-{kind}") as run:
        run.log_params({**config.model_dump(), "model": kind, "dim": k.dim, "base": base,
                        "matryoshka_dims": list(k.matryoshka_dims), "pairs_version": pairs.data_version})
        with staging_dir(parent) as tmp:
            report = em.train_embedding_model(kind, base, train, tmp / "model", settings, tmp / "trainer",
                                              log_metrics=run.log_metrics)
            # the report holds timings: identical weights get the identical version
            final, version = publish_versioned(tmp / "model", parent, exclude=("ossa_train_report.json",))
        run.log_artifact(final / "ossa_train_report.json", "model")
    # registered by embedding_eval, and only if it passes its gate there
    return StageResult(
        Artifact(kind="EmbeddingModel", path=str(final), data_version=version,
                 meta={"model": kind, "dim": k.dim, "matryoshka_dims": list(k.matryoshka_dims),
                       "base_path": base, "max_seq_length": config.max_seq_length,
                       "mlflow_run_id": run.run_id, "registered_model": f"ossa-embed-{kind}",
                       "pairs_version": pairs.data_version}),
        metadata={
            "dimension": k.dim,
            "matryoshka_dims": dg.JsonMetadataValue(list(k.matryoshka_dims)),
            "train_pairs": report.train_pairs,
            "steps": report.steps,
            "first_loss": dg.FloatMetadataValue(round(report.step_losses[0], 4) if report.step_losses else 0.0),
            "last_loss": dg.FloatMetadataValue(round(report.step_losses[-1], 4) if report.step_losses else 0.0),
            "train_seconds": dg.FloatMetadataValue(round(report.train_seconds, 2)),
        },
    )


@artifact_asset(
    kind="Evaluation",
    key=EMBEDDING_EVAL,
    ins={"model": dg.AssetIn(EMBEDDING_MODEL), "pairs": dg.AssetIn(EMBEDDING_PAIRS)},
    partitions_def=embedding_partitions,
    group_name="embeddings",
    kinds={"pytorch"},
    owners=["team:search"],
    check_specs=[gate("not_worse_than_base", EMBEDDING_EVAL,
                      "On held-out pairs the trained model's recall@10 and MRR are not below the base's.")],
)
def embedding_eval(
    context: dg.AssetExecutionContext,
    config: EmbeddingEvalConfig,  # type: ignore[valid-type]
    store: ArtifactStore,
    mlflow: MlflowResource,
    model: Artifact,
    pairs: Artifact,
) -> StageResult:
    """Held-out recall@10 and MRR of the trained model (and each Matryoshka prefix) vs its base."""
    from ossa_assets.lib.embeddings import load_embedder

    kind = context.partition_key
    heldout = load_pairs(pairs.path, "heldout")
    seq = model.meta.get("max_seq_length")
    trained = retrieval_eval.evaluate_retrieval(load_embedder(model.path, seq), heldout, model.meta["matryoshka_dims"])
    base = retrieval_eval.evaluate_retrieval(load_embedder(model.meta["base_path"], seq), heldout, (None,))
    full, (base_key, base_m) = trained[str(model.meta["dim"])], next(iter(base.items()))
    decision = retrieval_eval.not_worse_than_base(full, base_m, config.max_regression)
    passed = decision.passed
    report = {"model": kind, "model_version": model.data_version, "pairs_version": pairs.data_version,
              "trained": retrieval_eval.metrics_dict(trained), "base": retrieval_eval.metrics_dict(base), "passed": passed,
              "reason": decision.reason}
    version = sha256_json(report)
    out = store.dir_for(context.asset_key, kind) / f"{version[:16]}.json"
    atomic_write_text(out, json.dumps(report, indent=2, sort_keys=True))
    registered = _register_if_passed(context, mlflow, model, kind, passed, decision.reason, trained)
    table = "\n".join(
        ["| model | dim | recall@10 | MRR |", "|---|---|---|---|",
         f"| base | {base_key} | {base_m.recall_at_10:.3f} | {base_m.mrr:.3f} |"]
        + [f"| trained | {d} | {m.recall_at_10:.3f} | {m.mrr:.3f} |" for d, m in trained.items()]
    )
    check = dg.AssetCheckResult(
        check_name="not_worse_than_base",
        passed=passed,
        description=decision.reason,
        metadata={"trained_recall_at_10": full.recall_at_10, "base_recall_at_10": base_m.recall_at_10,
                  "trained_mrr": full.mrr, "base_mrr": base_m.mrr},
    )
    return StageResult(
        Artifact(kind="Evaluation", path=str(out), data_version=version,
                 meta={"model": kind, "model_version": model.data_version,
                       "recall_at_10": full.recall_at_10, "mrr": full.mrr,
                       "base_recall_at_10": base_m.recall_at_10, "base_mrr": base_m.mrr}),
        metadata={
            "recall_at_10": dg.FloatMetadataValue(round(full.recall_at_10, 4)),
            "mrr": dg.FloatMetadataValue(round(full.mrr, 4)),
            "base_recall_at_10": dg.FloatMetadataValue(round(base_m.recall_at_10, 4)),
            "base_mrr": dg.FloatMetadataValue(round(base_m.mrr, 4)),
            "heldout_pairs": full.queries,
            "by_dimension": dg.MarkdownMetadataValue(table),
            "registered_model": f"ossa-embed-{kind} v{registered}" if registered else "not registered",
        },
        checks=[check],
    )


def _register_if_passed(context, mlflow: MlflowResource, model: Artifact, kind: str, passed: bool,
                        reason: str, trained: dict) -> str | None:
    """The model's MLflow run gets the verdict: a registered version when it passed, FAILED when not.

    The training run ended FINISHED before anyone judged the model; its gate is here, so this is
    where MLflow learns the outcome, in the same words as the check.
    """
    from resources.mlflow import FAILED_CHECKS_TAG, GATES_TAG, register_version

    run_id = model.meta.get("mlflow_run_id")
    if not run_id:
        return None
    client = mlflow.client()
    for dim, m in trained.items():
        client.log_metric(run_id, f"heldout_recall_at_10_d{dim}", m.recall_at_10)
        client.log_metric(run_id, f"heldout_mrr_d{dim}", m.mrr)
    client.set_tag(run_id, GATES_TAG, "passed" if passed else "failed")
    if not passed:
        client.set_tag(run_id, FAILED_CHECKS_TAG, "not_worse_than_base")
        client.set_tag(run_id, "ossa.gate_reason", reason[:5000])
        client.set_terminated(run_id, status="FAILED")
        context.log.warning(f"ossa-embed-{kind} not registered: {reason}")
        return None
    name = f"ossa-embed-{kind}"
    done = [v for v in client.search_model_versions(f"name='{name}'") if v.run_id == run_id]
    if done:  # the same model judged again: one version per trained model
        return str(done[0].version)
    return register_version(client, name, model.path, run_id,
                            {"dagster_run_id": context.run.run_id, "data_version": model.data_version,
                             "pairs_version": model.meta.get("pairs_version", "")})


CODE_UNITS = ("operation", "schema", "node", "job")


def index_records(kind: str, corpora: dict) -> list:
    """What a model's collection holds, one point per retrievable unit of the curated corpora:

    - docs: every unit (section, operation, schema, node, job), its title and text;
    - code: the structural units (operations, schemas, nodes, jobs);
    - capability: one card per operation, OPC UA method and CI job.
    A document without units (a format the curators do not split) is one point of its own. Units,
    not whole documents: an encoder reads max_seq_length tokens, so a 13 MB NodeSet embedded whole
    would be its first page (measured: held-out headings found their whole document in the top 10
    for 17 % of queries, vs their unit for most).
    """
    from ossa_assets.lib.embeddings import IndexRecord, embedding_text

    records = []
    for domain, art in sorted(corpora.items()):
        for split in ("train", *HELDOUT_SPLITS):
            units = corpora_lib.load_units(art.path, split)
            if kind == "capability":
                for c in em.capability_cards(units):
                    records.append(IndexRecord(text=c.pop("text"), payload={**c, "data_version": art.data_version}))
                continue
            with_units = set()
            for u in units:
                with_units.add(u["doc_id"])
                if kind == "code" and u["unit_type"] not in CODE_UNITS:
                    continue
                records.append(IndexRecord(
                    text=embedding_text(f"{u['title']}\n{u['text']}"),
                    payload={"doc_id": u["doc_id"], "unit_id": u["unit_id"], "unit_type": u["unit_type"],
                             "title": u["title"], "domain": domain, "source": u["source"], "path": u["path"],
                             "data_version": art.data_version},
                ))
            for d in corpora_lib.load_split_texts(art.path, split):
                if d["doc_id"] in with_units or (kind == "code" and d["format"] == "prose"):
                    continue
                records.append(IndexRecord(
                    text=embedding_text(d["text"]),
                    payload={"doc_id": d["doc_id"], "unit_id": f"{d['doc_id']}:doc", "unit_type": "document",
                             "title": d["path"], "domain": domain, "source": d["source"], "path": d["path"],
                             "data_version": art.data_version},
                ))
    return records


def _live_recall(client, live: str, kind: str, heldout: list[dict], records: list, config) -> float | None:
    """Recall@10 of the collection serving now, on the same anchors, with the model that built it."""
    from ossa_assets.lib import embeddings as lib

    meta = lib.collection_metadata(client, live)
    if not meta.get("model_path") or not Path(meta["model_path"]).exists() or not meta.get("model_version"):
        return None  # built elsewhere or its model is gone: nothing to compare with
    old = lib.load_embedder(meta["model_path"], meta.get("max_seq_length"))
    qs = recall_queries(kind, heldout, records, meta["model_version"], config.recall_queries)
    return lib.collection_recall(client, old, live, qs, k=10)[0] if qs else None


def recall_queries(kind: str, heldout: list[dict], records: list, model_ver: str, limit: int) -> list[tuple[str, str]]:
    """(held-out anchor, the point id of its unit) for the units the collection holds."""
    from ossa_assets.lib.embeddings import point_id

    target = {}
    for r in records:
        target.setdefault(r.payload["unit_id"], point_id(r.key, model_ver))
    qs = [(p["anchor"], target[p["unit_id"]]) for p in heldout if p["unit_id"] in target]
    return qs[:limit] if limit else qs


@artifact_asset(
    kind="Collection",
    key=VECTOR_INDEX,
    ins={"model": dg.AssetIn(EMBEDDING_MODEL), "evaluation": dg.AssetIn(EMBEDDING_EVAL),
         "pairs": dg.AssetIn(EMBEDDING_PAIRS), "corpora": ALL_CORPORA},
    partitions_def=embedding_partitions,
    group_name="embeddings",
    kinds={"qdrant"},
    owners=["team:search"],
    check_specs=[gate("live_collection_recall", VECTOR_INDEX,
                      "Held-out anchors find their unit in the new collection's top 10; "
                      "else the live alias stays where it was.")],
)
def vector_index(
    context: dg.AssetExecutionContext,
    config: VectorIndexConfig,  # type: ignore[valid-type]
    qdrant: QdrantResource,
    model: Artifact,
    evaluation: Artifact,
    pairs: Artifact,
    corpora: dict,
) -> StageResult:
    """One Qdrant collection per model version, kept in step with the corpora; blue/green alias."""
    from ossa_assets.lib import embeddings as lib

    kind = context.partition_key
    k = em.kind_of(kind)
    model_ver = model.data_version
    judged = evaluation.meta.get("model_version")
    if judged != model_ver:
        # a model re-trained after its evaluation has no verdict yet: it must not reach an index
        raise dg.Failure(f"{kind}: the latest evaluation judged model {str(judged)[:12]}, not the model "
                         f"{model_ver[:12]} to index; materialize embeddings/embedding_eval first")
    collection = f"{kind}-{model_ver[:12]}"
    records = index_records(kind, corpora)
    if not records:
        raise dg.Failure(f"{kind}: nothing to index in the curated corpora")
    embedder = lib.load_embedder(model.path, model.meta.get("max_seq_length"))
    heldout = load_pairs(pairs.path, "heldout")
    queries = recall_queries(kind, heldout, records, model_ver, config.recall_queries)
    meta = {"model": kind, "model_path": model.path, "max_seq_length": model.meta.get("max_seq_length"),
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "model_lineage_id": model.lineage_id}
    with qdrant.client() as client:
        live_before = lib.alias_target(client, k.alias)
        res = lib.sync_collection(client, embedder, collection, records, model_ver, meta, config.batch_size)
        recall, misses = lib.collection_recall(client, embedder, collection, queries, k=10)
        # blue/green: a new collection must also answer the same held-out anchors at least as
        # well as the one serving now, each with its own model
        live_recall = None
        if live_before and live_before != collection and client.collection_exists(live_before):
            live_recall = _live_recall(client, live_before, kind, heldout, records, config)
        reasons = []
        if not queries:
            reasons.append("no held-out anchor has its target in the collection")
        if recall < config.min_recall_at_10:
            reasons.append(f"recall@10 {recall:.3f} < min {config.min_recall_at_10}")
        # one query's worth is below what the anchors can measure (as in the eval gate)
        drop = config.max_recall_drop + 1.0 / max(len(queries), 1)
        if live_recall is not None and recall < live_recall - drop - 1e-9:
            reasons.append(f"recall@10 {recall:.3f} < live {live_before}'s {live_recall:.3f} - {drop:.4f}")
        passed = not reasons
        if passed and live_before != collection:
            lib.point_alias(client, k.alias, collection)
        elif not passed:
            context.log.warning(f"{collection}: {'; '.join(reasons)}; {k.alias} stays on {live_before}")
        live_after = lib.alias_target(client, k.alias)
        dropped = lib.remove_old_collections(client, f"{kind}-", keep=[collection], keep_previous=config.keep_previous)
    # the collection's content: which texts under which model (not when it was built)
    version = sha256_json({"model": model_ver, "points": sorted(r.key for r in records)})
    check = dg.AssetCheckResult(
        check_name="live_collection_recall",
        passed=passed,
        description=(f"recall@10 {recall:.3f} over {len(queries)} held-out anchors (min {config.min_recall_at_10}"
                     + (f"; live {live_before}: {live_recall:.3f}" if live_recall is not None else "") + ")"
                     + ("" if passed else ": " + "; ".join(reasons) + f"; {k.alias} left on {live_after}")),
        metadata={"recall_at_10": recall, "queries": len(queries), "live_before": live_before or "",
                  "live_recall_at_10": live_recall if live_recall is not None else -1.0,
                  "misses": dg.JsonMetadataValue(misses[:10])},
    )
    return StageResult(
        Artifact(kind="Collection", path=f"qdrant://{collection}", data_version=version,
                 meta={"model": kind, "collection": collection, "alias": k.alias if live_after == collection else None,
                       "model_version": model_ver, "model_path": model.path, "dim": res.dim,
                       "max_seq_length": model.meta.get("max_seq_length"), "points": res.points}),
        metadata={
            "collection": collection,
            "alias": f"{k.alias} -> {live_after}",
            "points": res.points,
            "dimension": res.dim,
            "embedded": res.embedded,
            "deleted": res.deleted,
            "unchanged": res.unchanged,
            "sync_seconds": dg.FloatMetadataValue(round(res.seconds, 2)),
            "recall_at_10": dg.FloatMetadataValue(round(recall, 4)),
            "dropped_collections": dg.JsonMetadataValue(dropped),
            "eval": dg.JsonMetadataValue({"recall_at_10": evaluation.meta.get("recall_at_10"),
                                          "base_recall_at_10": evaluation.meta.get("base_recall_at_10")}),
        },
        checks=[check],
    )


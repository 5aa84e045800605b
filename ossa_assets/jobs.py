"""Jobs: the graph in the order `ossa materialize` (and a user in the UI) runs it.

Partitioned stages run one run per domain (partitioning is inferred from the selected
assets); fan-in stages run once after them.
"""

import dagster as dg

from ossa_assets.keys import (
    BASE_MODEL,
    CURATED_CORPUS,
    DEPLOYMENT,
    DOMAIN_CHECKPOINT,
    EMBEDDING_EVAL,
    EMBEDDING_MODEL,
    EMBEDDING_PAIRS,
    INT8_MODEL,
    MULTITASK_ADAPTER,
    ONNX_MODEL,
    REALTIME_ADAPTER,
    RELEASE,
    SOURCE_DOCUMENTS,
    TOKENIZED_CORPUS,
    VECTOR_INDEX,
)
from resources import active_env
from resources.k8s import single_step_executor_for

curate_sources = dg.define_asset_job(
    "curate_sources",
    selection=dg.AssetSelection.assets(SOURCE_DOCUMENTS),
    description="Curate one source (one run per (domain, source) partition; only changed files are re-curated).",
    executor_def=single_step_executor_for(active_env()),
)
curate_corpora = dg.define_asset_job(
    "curate_corpora",
    selection=dg.AssetSelection.assets(CURATED_CORPUS),
    description="Merge a domain's curated sources into its corpus (one run per domain partition).",
)
build_foundations = dg.define_asset_job(
    "build_foundations",
    selection=dg.AssetSelection.assets(BASE_MODEL),
    description="The base model (and its tokenizer), from all curated corpora.",
)
build_embeddings = dg.define_asset_job(
    "build_embeddings",
    selection=dg.AssetSelection.assets(EMBEDDING_PAIRS, EMBEDDING_MODEL, EMBEDDING_EVAL, VECTOR_INDEX),
    description="Mine pairs, train, evaluate and index one embedding model (one run per model partition).",
)
refresh_vector_indexes = dg.define_asset_job(
    "refresh_vector_indexes",
    selection=dg.AssetSelection.assets(VECTOR_INDEX),
    description="Bring a model's live collection in step with the curated corpora using the current "
    "model: embeds only new or changed documents, deletes withdrawn ones (no retraining).",
)
train_domain_models = dg.define_asset_job(
    "train_domain_models",
    selection=dg.AssetSelection.assets(
        TOKENIZED_CORPUS, DOMAIN_CHECKPOINT, MULTITASK_ADAPTER, ONNX_MODEL, INT8_MODEL, RELEASE
    ),
    description="Tokenize, fine-tune, adapt, export and quantize one domain's model, and offer it to "
    "its route's release (champion of an empty route, else a canary challenger).",
)
deploy = dg.define_asset_job(
    "deploy",
    selection=dg.AssetSelection.assets(DEPLOYMENT),
    description="Declare the serving state from the routes' releases and the search indexes.",
)
refresh_realtime_adapter = dg.define_asset_job(
    "refresh_realtime_adapter",
    selection=dg.AssetSelection.assets(REALTIME_ADAPTER),
    description="Train one hour's real-time adapter.",
    executor_def=single_step_executor_for(active_env()),
)

# The main job's order: (job, what its runs are partitioned by)
PIPELINE = [
    (curate_sources, "source"),
    (curate_corpora, "domain"),
    (build_foundations, None),
    (build_embeddings, "embedding_model"),
    (train_domain_models, "domain"),
    (deploy, None),
    (refresh_realtime_adapter, "hour"),
]

ALL_JOBS = [job for job, _ in PIPELINE] + [refresh_vector_indexes]

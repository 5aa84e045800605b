"""Jobs: the graph in the order `ossa materialize` (and a user in the UI) runs it.

Partitioned stages run one run per domain (partitioning is inferred from the selected
assets); fan-in stages run once after them.
"""

import dagster as dg

from ossa_assets.keys import (
    BASE_MODEL,
    DEPLOYMENT,
    DOCUMENT_INDEX,
    DOMAIN_CHECKPOINT,
    INT8_MODEL,
    MULTITASK_ADAPTER,
    ONNX_MODEL,
    REALTIME_ADAPTER,
)

curate_corpora = dg.define_asset_job(
    "curate_corpora",
    selection=dg.AssetSelection.groups("corpora"),
    description="Curate one domain's corpus (one run per domain partition).",
)
build_foundations = dg.define_asset_job(
    "build_foundations",
    selection=dg.AssetSelection.assets(BASE_MODEL, DOCUMENT_INDEX),
    description="The base model and the document index, from all curated corpora.",
)
train_domain_models = dg.define_asset_job(
    "train_domain_models",
    selection=dg.AssetSelection.assets(DOMAIN_CHECKPOINT, MULTITASK_ADAPTER, ONNX_MODEL, INT8_MODEL),
    description="Fine-tune, adapt, export and quantize one domain's model.",
)
deploy = dg.define_asset_job(
    "deploy",
    selection=dg.AssetSelection.assets(DEPLOYMENT),
    description="Declare the serving state from the latest engines and index.",
)
refresh_realtime_adapter = dg.define_asset_job(
    "refresh_realtime_adapter",
    selection=dg.AssetSelection.assets(REALTIME_ADAPTER),
    description="Train one hour's real-time adapter.",
)

# The main job's order: (job, partitioned by domain?)
PIPELINE = [
    (curate_corpora, True),
    (build_foundations, False),
    (train_domain_models, True),
    (deploy, False),
    (refresh_realtime_adapter, False),
]

ALL_JOBS = [job for job, _ in PIPELINE]

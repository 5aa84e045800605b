"""Jobs: the graph in the order `ossa materialize` (and a user in the UI) runs it.

Partitioned stages run one run per domain (partitioning is inferred from the selected
assets); fan-in stages run once after them.
"""

import dagster as dg

curate_corpora = dg.define_asset_job(
    "curate_corpora",
    selection=dg.AssetSelection.groups("corpora"),
    description="Curate one domain's corpus (one run per domain partition).",
)
build_foundations = dg.define_asset_job(
    "build_foundations",
    selection=dg.AssetSelection.assets(["finetune", "base_model"], ["embeddings", "document_index"]),
    description="The base model and the document index, from all curated corpora.",
)
train_domain_models = dg.define_asset_job(
    "train_domain_models",
    selection=dg.AssetSelection.assets(
        ["finetune", "domain_checkpoint"],
        ["lora", "multitask_adapter"],
        ["quantize", "onnx_model"],
        ["quantize", "int8_model"],
    ),
    description="Fine-tune, adapt, export and quantize one domain's model.",
)
deploy = dg.define_asset_job(
    "deploy",
    selection=dg.AssetSelection.assets(["serving", "deployment"]),
    description="Declare the serving state from the latest engines and index.",
)
refresh_realtime_adapter = dg.define_asset_job(
    "refresh_realtime_adapter",
    selection=dg.AssetSelection.assets(["lora", "realtime_adapter"]),
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

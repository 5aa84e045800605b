"""The composition root: every stage's assets, the jobs, sensors, resources and executor.

Environment (`OSSA_ENV`: local | prod) picks resources and executor; the profile
(`OSSA_PROFILE`: tiny | prod) picks hyper-parameters. Heavy libraries are imported inside the
asset bodies, so loading these definitions takes about a second.
"""

import dagster as dg

from ossa_assets import jobs
from ossa_assets.corpora import assets as corpora_assets
from ossa_assets.embeddings import assets as embeddings_assets
from ossa_assets.finetune import assets as finetune_assets
from ossa_assets.lora import assets as lora_assets
from ossa_assets.quantize import assets as quantize_assets
from ossa_assets.serving import assets as serving_assets
from resources import active_env, build_resources, executor_for
from sensors.automation import automation_sensor
from sensors.canary import canary_judge
from sensors.corpus_sources import corpus_sources_sensor
from sensors.lineage import build_lineage_sensor
from sensors.new_documents import new_documents_sensor

_modules = [
    corpora_assets,
    finetune_assets,
    lora_assets,
    embeddings_assets,
    quantize_assets,
    serving_assets,
]
all_assets = dg.load_assets_from_modules(_modules)
ASSET_KEYS = sorted({k for a in all_assets for k in a.keys}, key=lambda k: k.to_user_string())

defs = dg.Definitions(
    assets=all_assets,
    asset_checks=dg.load_asset_checks_from_modules(_modules),
    jobs=jobs.ALL_JOBS,
    sensors=[build_lineage_sensor(ASSET_KEYS), automation_sensor, corpus_sources_sensor,
             new_documents_sensor, canary_judge],
    resources=build_resources(),
    executor=executor_for(active_env()),
)

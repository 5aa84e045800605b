"""Corpus sources sensor: the sources YAML is the truth for the `corpus_source` partitions.

Each tick reads the sources file; a new source becomes a dynamic partition and gets a curation
run, a removed one is dropped from the partitions (its curated data stays in the event log and
on disk). The cursor is a digest of the source list, so an unchanged file costs one read.
"""

from __future__ import annotations

import hashlib
import json

import dagster as dg

from ossa_assets.corpora.partitions import source_partitions
from ossa_assets.keys import SOURCE_DOCUMENTS
from resources.corpus import CorpusSources


@dg.sensor(
    name="corpus_sources_sensor",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    asset_selection=[SOURCE_DOCUMENTS],
    description="Registers configured corpus sources as partitions and curates new ones.",
)
def corpus_sources_sensor(context: dg.SensorEvaluationContext, corpus: CorpusSources):
    specs = corpus.specs()
    digest = hashlib.sha256(
        json.dumps(sorted((s.name, s.domain, s.kind, s.path or s.url or "") for s in specs)).encode()
    ).hexdigest()[:16]
    if context.cursor == digest:
        return dg.SkipReason(f"{len(specs)} sources, unchanged")
    existing = set(context.instance.get_dynamic_partitions(source_partitions.name))
    configured = {s.name: s for s in specs}
    new = sorted(set(configured) - existing)
    removed = sorted(existing - set(configured))
    requests = []
    if new:
        requests.append(source_partitions.build_add_request(new))
    if removed:
        requests.append(source_partitions.build_delete_request(removed))
    runs = [
        dg.RunRequest(
            run_key=f"curate:{name}:{digest}",
            partition_key=dg.MultiPartitionKey({"domain": configured[name].domain, "source": name}),
        )
        for name in new
    ]
    context.update_cursor(digest)
    return dg.SensorResult(run_requests=runs, dynamic_partitions_requests=requests)

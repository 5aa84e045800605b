import dagster as dg

from ossa_assets.lib.domains import DOMAINS

# One partition per domain, shared by every per-domain stage downstream.
domain_partitions = dg.StaticPartitionsDefinition(list(DOMAINS))

# Configured sources (configs/sources.yaml, or OSSA_SOURCES): registered from the config by the
# corpus_sources_sensor and by `ossa materialize`, so a new source is a YAML entry, not code.
source_partitions = dg.DynamicPartitionsDefinition(name="corpus_source")

# A source's curation is partitioned by (domain, source): a backfill can re-curate one source
# alone, and the domain corpus depends on exactly its own domain's sources.
domain_source_partitions = dg.MultiPartitionsDefinition({"domain": domain_partitions, "source": source_partitions})

import dagster as dg

from ossa_assets.lib.corpora import DOMAINS

# One partition per domain, shared by every per-domain stage downstream.
domain_partitions = dg.StaticPartitionsDefinition(list(DOMAINS))

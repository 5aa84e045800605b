import dagster as dg

from ossa_assets.lib.embedding_models import KINDS

# One partition per embedding model: each trains, evaluates and indexes on its own, so a new
# docs model never re-embeds the code collection.
embedding_partitions = dg.StaticPartitionsDefinition(list(KINDS))

"""Lineage sensor: keeps the lineage graph in step with Dagster's event log.

Runs in the daemon; each tick writes the materializations recorded since its cursor (the last
event storage id it wrote). Idempotent, so a crashed tick is simply redone.
"""

from __future__ import annotations

import dagster as dg

from ossa_assets.lineage.recorder import sync
from resources.graph import GraphStoreResource


def build_lineage_sensor(asset_keys: list[dg.AssetKey]) -> dg.SensorDefinition:
    @dg.sensor(
        name="lineage_sensor",
        minimum_interval_seconds=15,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Writes new materializations into the lineage graph.",
    )
    def lineage_sensor(context: dg.SensorEvaluationContext, graph: GraphStoreResource):
        after = int(context.cursor or 0)
        store = graph.open()
        try:
            stats = sync(context.instance, store, asset_keys, after)
        finally:
            store.close()
        context.update_cursor(str(stats.cursor))
        return dg.SkipReason(
            f"recorded {stats.materializations} materializations "
            f"({stats.nodes} nodes, {stats.edges} edges, {stats.skipped_edges} skipped edges)"
        )

    return lineage_sensor

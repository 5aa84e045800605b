"""The real-time adapter chain: which hours are stale because an earlier hour changed.

Hour h is trained from hour h-1's adapter and records that adapter's data version
(`WARM_START_VERSION`). When an earlier hour is re-materialized with different weights, every
later hour built on the old weights is stale. Dagster's own staleness stops following a
self-dependency beyond 100 partitions (an hourly asset passes that in four days), so the chain
is checked here, from the event log, and the new-documents sensor re-materializes stale hours in
order.
"""

from __future__ import annotations

import dagster as dg

from ossa_assets.keys import REALTIME_ADAPTER

WARM_START_VERSION = "ossa/warm_start_version"
NO_ADAPTER = "none"  # the data version of a quiet hour with no earlier adapter to carry forward


def latest_hours(instance: dg.DagsterInstance, limit: int = 5000) -> dict[str, tuple[str, str]]:
    """hour -> (data version, warm-start version) of each hour's latest materialization."""
    records = instance.fetch_materializations(REALTIME_ADAPTER, limit=limit, ascending=False).records
    out: dict[str, tuple[str, str]] = {}
    for rec in records:
        mat = rec.asset_materialization
        if mat is None or mat.partition is None or mat.partition in out:
            continue
        md = mat.metadata
        version = mat.tags.get("dagster/data_version", "") if mat.tags else ""
        warm = md[WARM_START_VERSION].value if WARM_START_VERSION in md else ""
        out[mat.partition] = (version, str(warm))
    return out


def stale_hours(instance: dg.DagsterInstance) -> list[str]:
    """Materialized hours (in order) whose warm start is no longer the previous hour's adapter."""
    hours = latest_hours(instance)
    stale: list[str] = []
    previous: tuple[str, str] | None = None
    broken = False
    for hour in sorted(hours):
        version, warm = hours[hour]
        if version == NO_ADAPTER:
            version = ""  # a quiet hour before any adapter existed: its successor starts cold
        if previous is not None and (broken or warm != previous[0]):
            stale.append(hour)
            broken = True  # everything after a stale hour is built on stale weights
        previous = (version, warm)
    return stale

import datetime as dt

import dagster as dg

# One partition per hour; the adapter of hour h warm-starts from hour h-1. end_offset=1: the
# current, still-open hour is a partition too, so a document dropped now reaches an adapter now
# (the new-documents sensor), and the hour is re-materialized once complete (below).
hourly_partitions = dg.HourlyPartitionsDefinition(start_date="2026-11-01-00:00", timezone="UTC", end_offset=1)

# Five minutes past each hour (documents that landed late in the hour are on disk by then),
# materialize the hour that just ended and the new one (the two windows that start within two
# hours of the latest window's end), once per tick; never while a run for it
# or for the hour before it (the warm start) is in flight.
HOURLY_REFRESH = (
    dg.AutomationCondition.in_latest_time_window(lookback_delta=dt.timedelta(hours=2))
    & dg.AutomationCondition.cron_tick_passed("5 * * * *", cron_timezone="UTC").since_last_handled()
    & ~dg.AutomationCondition.in_progress()
    & ~dg.AutomationCondition.any_deps_in_progress()
).with_label("hourly_refresh")

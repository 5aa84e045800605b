import dagster as dg

# One partition per hour; the adapter of hour h warm-starts from hour h-1.
hourly_partitions = dg.HourlyPartitionsDefinition(start_date="2026-11-01-00:00", timezone="UTC")

# Materialize the latest complete hour five minutes past each hour (documents that landed late in
# the hour are on disk by then), once per tick, never while a run for it is in flight.
HOURLY_REFRESH = (
    dg.AutomationCondition.in_latest_time_window()
    & dg.AutomationCondition.cron_tick_passed("5 * * * *", cron_timezone="UTC").since_last_handled()
    & ~dg.AutomationCondition.in_progress()
).with_label("hourly_refresh")

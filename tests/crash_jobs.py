"""A one-step job in the `gpu` pool on the project's local executors, for the crash tests: it
holds the pool's only slot for CRASH_SLEEP_S seconds. Run as
`python -m tests.crash_jobs multiprocess|in_process [TAG=VALUE ...]` against $DAGSTER_HOME."""

from __future__ import annotations

import os
import sys
import time

import dagster as dg

from resources.local_executor import in_process_executor, local_executor


@dg.asset(pool="gpu")
def held_slot() -> None:
    time.sleep(float(os.environ.get("CRASH_SLEEP_S", "60")))


defs = dg.Definitions(
    assets=[held_slot],
    jobs=[dg.define_asset_job("hold_gpu", selection=[held_slot], executor_def=local_executor),
          dg.define_asset_job("hold_gpu_in_process", selection=[held_slot], executor_def=in_process_executor)],
)


def hold_gpu():
    return defs.resolve_job_def("hold_gpu")


def hold_gpu_in_process():
    return defs.resolve_job_def("hold_gpu_in_process")


if __name__ == "__main__":
    mode, *tag_args = sys.argv[1:]
    pointer = hold_gpu if mode == "multiprocess" else hold_gpu_in_process
    # the multiprocess executor with a light forkserver (the project's default preloads torch & co)
    config = {"execution": {"config": {"multiprocess": {"start_method": {"spawn": {}}}}}} if mode == "multiprocess" else None
    result = dg.execute_job(dg.reconstructable(pointer), instance=dg.DagsterInstance.get(), run_config=config,
                            tags=dict(t.split("=", 1) for t in tag_args))
    print(f"RESULT {result.run_id} {'success' if result.success else 'failure'}", flush=True)
    sys.exit(0 if result.success else 1)

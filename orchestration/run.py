"""`make run`: materialize the whole graph on the embedded default, then summarize.

Runs in-process against the instance in DAGSTER_HOME, so `dagster dev` shows the runs.
"""

from __future__ import annotations

import json
import sys
import time

from dagster import DagsterInstance

from orchestration.assets.data import BENCHMARKS
from orchestration.definitions import defs

QUIET = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def main() -> int:
    t0 = time.perf_counter()
    instance = DagsterInstance.get()
    ok = defs.resolve_job_def("pipeline").execute_in_process(
        run_config=QUIET, instance=instance, raise_on_error=False).success
    for key in BENCHMARKS.get_partition_keys():
        run = defs.resolve_job_def("benchmarks").execute_in_process(
            run_config=QUIET, instance=instance, partition_key=key, raise_on_error=False)
        ok = ok and run.success
    summary = {}
    for key in defs.resolve_asset_graph().get_all_asset_keys():
        event = instance.get_latest_materialization_event(key)
        if event and event.asset_materialization:
            meta = event.asset_materialization.metadata
            summary[key.to_user_string()] = {
                k: getattr(v, "value", v) for k, v in meta.items()
                if k in ("path", "kept", "rejected", "frames", "files")
            }
    print(json.dumps(summary, indent=1, default=str))
    print(f"{'OK' if ok else 'FAILED'} in {time.perf_counter() - t0:.1f} s; Dagster instance "
          f"{instance.root_directory} (browse it with `make ui`)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""`make run`: materialize the whole graph on the embedded default, then summarize.

Runs in-process against the instance in DAGSTER_HOME, so `make ui` shows every run,
materialization and check afterwards. Writes `<artifacts>/summary.json` (per stage: MC
accuracy with its 95 % interval, format compliance, temporal sensitivity, per-family
accuracy; the chance level; wall time) and prints where everything is.
"""

from __future__ import annotations

import json
import sys
import time

from dagster import DagsterInstance

from orchestration.definitions import BENCHMARKS, defs
from vlmrl.eval.summary import format_stage_summary, percent

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def main() -> int:
    t0 = time.perf_counter()
    instance = DagsterInstance.get()
    artifacts = defs.resources["artifacts"]
    tracker = defs.resources["tracker"]
    print(f"recipe {defs.resources['recipe'].recipe}; artifacts {artifacts.root}; Dagster home "
          f"{instance.root_directory}", flush=True)
    runs = [("pipeline", None)] + [("benchmarks", key) for key in BENCHMARKS.get_partition_keys()]
    ok = True
    for job, partition in runs:
        step = time.perf_counter()
        res = defs.resolve_job_def(job).execute_in_process(
            run_config=QUIET, instance=instance, partition_key=partition, raise_on_error=False)
        failed = [e.step_key for e in res.all_events if e.is_step_failure]
        print(f"{job}{f'[{partition}]' if partition else ''}: {'ok' if res.success else 'FAILED ' + str(failed)} "
              f"in {time.perf_counter() - step:.0f} s (run {res.run_id[:8]})", flush=True)
        ok = ok and res.success
        if not res.success:
            break
    wall = time.perf_counter() - t0
    summary = {"wall_time_s": round(wall, 1), "ok": ok, "benchmarks": {}}
    for key in BENCHMARKS.get_partition_keys():
        path = artifacts.local_root / "reports" / key / "comparison" / "summary.json"
        if path.is_file():
            summary["benchmarks"][key] = json.loads(path.read_text())
    first = next(iter(summary["benchmarks"].values()), None)
    if first:  # the headline benchmark's figures at top level (the held-out synthetic split)
        summary.update(chance=first["chance"], **first["stages"])
    headroom = artifacts.local_root / "reports" / "rl_training" / "headroom.json"
    if headroom.is_file():  # the SFT model's sampled pass@1 / pass@k on the RL split
        summary["rl_headroom"] = json.loads(headroom.read_text())
    out = artifacts.local_root / "summary.json"
    out.write_text(json.dumps(summary, indent=1) + "\n")

    for bench, data in summary["benchmarks"].items():
        print("\n" + format_stage_summary(bench, data))
        print(f"  reports: {artifacts.local_root / 'reports' / bench}")
    if h := summary.get("rl_headroom"):
        k = h["k"]
        print(f"\nRL headroom (SFT, RL split, {h['n']} MC questions, T={h.get('temperature')}): "
              f"pass@1 {percent(h.get('pass@1'))}, pass@{k} {percent(h.get(f'pass@{k}'))}, "
              f"groups with signal {percent(h.get('mixed_groups'))}")
    print(f"\n{'OK' if ok else 'FAILED'} in {wall:.0f} s. summary: {out}")
    print(f"MLflow: {tracker.uri} (UI: make ui -> {tracker.ui_url}); Dagster UI: make ui -> http://127.0.0.1:3000")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

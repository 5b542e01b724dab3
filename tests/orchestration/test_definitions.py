"""Pin the Dagster definitions; check the whole graph materialized (conftest `graph`)."""

import datetime as dt
import json

import mlflow
import pytest
from dagster import AssetKey, DefaultScheduleStatus, DefaultSensorStatus

from orchestration.definitions import GPU_ASSET_NAMES, defs

EDGES = {
    "raw_data": set(),
    "sft_frames": {"raw_data"},
    "rl_frames": {"raw_data"},
    "benchmark_frames": {"raw_data"},
    "base_model": {"sft_frames", "rl_frames"},
    "sft_checkpoint": {"base_model", "sft_frames"},
    "rl_checkpoint": {"sft_checkpoint", "rl_frames"},
    "base_report": {"base_model", "benchmark_frames"},
    "sft_report": {"sft_checkpoint", "benchmark_frames"},
    "rl_report": {"rl_checkpoint", "benchmark_frames"},
    "benchmark_report": {"base_report", "sft_report", "rl_report"},
}
PARTITIONED = {"benchmark_frames", "base_report", "sft_report", "rl_report", "benchmark_report"}
GPU = {"sft_checkpoint", "rl_checkpoint", "base_report", "sft_report", "rl_report"}
CHECKS = {
    "sft_frames_usable": ("sft_frames", True), "rl_frames_usable": ("rl_frames", True),
    "base_model_verifies": ("base_model", True), "sft_checkpoint_verifies": ("sft_checkpoint", True),
    "rl_checkpoint_verifies": ("rl_checkpoint", True), "base_report_complete": ("base_report", False),
    "sft_report_complete": ("sft_report", False), "rl_report_complete": ("rl_report", False),
}


def test_asset_graph_pinned():
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == set(EDGES)
    for name, parents in EDGES.items():
        node = graph.get(AssetKey(name))
        assert {p.to_user_string() for p in node.parent_keys} == parents, name
        part = node.partitions_def
        assert (part is not None) == (name in PARTITIONED), name
        if part is not None:
            assert part.get_partition_keys() == ["synthetic"]
        assert node.code_version, name


def test_gpu_tags_pools_and_automation():
    assert set(GPU_ASSET_NAMES) == GPU  # derived from the assets' own pool, not a hand list
    graph = defs.resolve_asset_graph()
    for name in EDGES:
        node = graph.get(AssetKey(name))
        assets_def = defs.resolve_assets_def(AssetKey(name))
        tags = assets_def.op.tags
        k8s = tags.get("dagster-k8s/config")
        k8s = json.loads(k8s) if isinstance(k8s, str) else k8s  # op tags store JSON strings
        if name in GPU:
            limits = k8s["container_config"]["resources"]["limits"]
            assert limits["nvidia.com/gpu"] == "1" or limits["nvidia.com/gpu"] == 1
            assert k8s["job_spec_config"]["active_deadline_seconds"] > 0
            assert assets_def.op.pool == "gpu"
        else:
            assert k8s is None and assets_def.op.pool is None, name
        eager = name.endswith("_report")
        assert (node.automation_condition is not None) == eager, name


def test_checks_schedule_sensor_executor():
    checks = {}
    for c in defs.asset_checks:
        for spec in c.check_specs:
            checks[spec.name] = (spec.asset_key.to_user_string(), spec.blocking)
    assert checks == CHECKS
    [schedule] = defs.schedules
    assert schedule.name == "nightly_reevaluation" and schedule.cron_schedule == "0 3 * * *"
    assert schedule.default_status == DefaultScheduleStatus.RUNNING
    assert schedule.job_name == "reevaluation"
    [sensor] = defs.sensors
    assert sensor.name == "reports_follow_checkpoints" and sensor.default_status == DefaultSensorStatus.RUNNING
    assert defs.executor.name == "in_process"


def test_schedule_requests_every_benchmark():
    from dagster import build_schedule_context

    [schedule] = defs.schedules
    ctx = build_schedule_context(scheduled_execution_time=dt.datetime(2026, 11, 21, 3, tzinfo=dt.UTC),
                                 repository_def=defs.get_repository_def())
    requests = list(schedule.evaluate_tick(ctx).run_requests)
    assert [(r.partition_key, r.run_key) for r in requests] == [("synthetic", "2026-11-21-synthetic")]


def test_whole_graph_materialized(graph):
    assert graph.results["pipeline"].success and graph.results["benchmarks"].success
    instance = graph.instance()
    client = mlflow.MlflowClient(tracking_uri=graph.mlflow_uri)
    run_ids = set()
    for name in EDGES:
        event = instance.get_latest_materialization_event(AssetKey(name))
        assert event is not None, name
        mat = event.asset_materialization
        meta = mat.metadata
        assert mat.tags["dagster/data_version"] == meta["content_hash"].value[:16], name
        assert "path" in meta and "mlflow_run_id" in meta, name
        run = client.get_run(meta["mlflow_run_id"].value)
        assert run.data.tags["dagster.run_id"] == event.run_id
        assert run.data.tags["dagster.asset_key"] == name
        assert run.data.params, name  # the recipe (or the stage's settings)
        assert run.data.metrics, name
        run_ids.add(run.info.run_id)
    assert len(run_ids) == len(EDGES)  # one MLflow run per materialization
    sft_run = client.get_run(instance.get_latest_materialization_event(AssetKey("sft_checkpoint"))
                             .asset_materialization.metadata["mlflow_run_id"].value)
    assert "train_loss" in sft_run.data.metrics  # the trainer's own logs, via report_to=mlflow
    checks = {c.check_name: c.passed for r in graph.results.values() for c in r.get_asset_check_evaluations()}
    for name in ("sft_frames_usable", "rl_frames_usable", "base_model_verifies", "sft_checkpoint_verifies",
                 "rl_checkpoint_verifies", "base_report_complete"):
        assert checks[name], name
    summary = json.loads((graph.artifacts / "reports" / "synthetic" / "comparison" / "summary.json").read_text())
    assert set(summary["stages"]) == {"base", "sft", "rl"} and summary["chance"] > 0


def test_lineage_audit_and_dagster_agree(graph, capsys):
    from orchestration.audit import cross_check
    from vlmrl.cli import main

    assert cross_check(graph.instance(), "rl_checkpoint") == []
    assert main(["lineage", "rl_checkpoint", "--artifacts", str(graph.artifacts)]) == 0
    out = capsys.readouterr().out
    assert "rl checkpoint" in out and "sft checkpoint" in out and "base checkpoint" in out


@pytest.mark.parametrize("target", ["frames", "checkpoint"])
def test_lineage_audit_names_a_changed_file(graph, capsys, target):
    from vlmrl.cli import main

    changed = (next((graph.artifacts / "frames" / "rl").glob("data-*.arrow")) if target == "frames"
               else graph.artifacts / "checkpoints" / "sft" / "model.safetensors")
    original = changed.read_bytes()
    try:
        data = bytearray(original)
        data[len(data) // 2] ^= 0x01
        changed.write_bytes(bytes(data))
        assert main(["lineage", "rl_checkpoint", "--artifacts", str(graph.artifacts)]) == 1
        assert f"PROBLEM: {changed}" in capsys.readouterr().out
    finally:
        changed.write_bytes(original)
    assert main(["lineage", "rl_checkpoint", "--artifacts", str(graph.artifacts)]) == 0

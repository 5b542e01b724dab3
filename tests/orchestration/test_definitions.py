"""Pin the Dagster definitions and materialize the data graph in a temporary instance."""

import pytest
from dagster import AssetKey, DagsterInstance

from orchestration.definitions import defs

DATA = ["synthetic_media", "sft_frames", "rl_frames", "benchmark_frames"]


def test_asset_specs_pinned():
    graph = defs.resolve_asset_graph()
    keys = sorted(k.to_user_string() for k in graph.get_all_asset_keys())
    assert keys == sorted(DATA)
    for name in ("sft_frames", "rl_frames", "benchmark_frames"):
        node = graph.get(AssetKey(name))
        assert node.parent_keys == {AssetKey("synthetic_media")}
        assert node.group_name == "data"
    assert graph.get(AssetKey("benchmark_frames")).partitions_def.get_partition_keys() == ["synthetic"]
    assert graph.get(AssetKey("sft_frames")).partitions_def is None
    checks = {c.name: c for c in graph.asset_check_keys}
    assert set(checks) == {"sft_frames_usable", "rl_frames_usable"}
    for spec_key in graph.asset_check_keys:
        assert defs.resolve_assets_def(spec_key.asset_key) is not None
    assert defs.executor is not None and defs.executor.name == "in_process"


@pytest.fixture()
def instance(tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    with DagsterInstance.local_temp(str(home)) as inst:
        yield inst


def test_data_graph_materializes(instance, tmp_path):
    from orchestration.resources import ArtifactStore
    from vlmrl.data.extract import load_frame_dataset

    run_config = {"ops": {"synthetic_media": {"config": {"sizes": "sft=4,rl=6,bench=4"}},
                          **{n: {"config": {"workers": 1}} for n in ("sft_frames", "rl_frames")}}}
    job = defs.resolve_job_def("pipeline")
    artifacts = ArtifactStore(root=str(tmp_path / "art"))
    result = job.execute_in_process(run_config=run_config, instance=instance,
                                    resources={"artifacts": artifacts})
    assert result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"sft_frames_usable": True, "rl_frames_usable": True}
    for name, n in (("sft_frames", 4), ("rl_frames", 6)):
        event = instance.get_latest_materialization_event(AssetKey(name))
        meta = event.asset_materialization.metadata
        _, manifest = load_frame_dataset(meta["path"].value)
        assert meta["kept"].value == n == manifest["counts"]["kept"]
        assert event.asset_materialization.tags["dagster/data_version"] == manifest["fingerprint"][:16]
    bench = defs.resolve_job_def("benchmarks").execute_in_process(
        run_config={"ops": {"benchmark_frames": {"config": {"workers": 1}}}},
        instance=instance, partition_key="synthetic", resources={"artifacts": artifacts})
    assert bench.success
    event = instance.get_latest_materialization_event(AssetKey("benchmark_frames"))
    assert event.asset_materialization.partition == "synthetic"
    assert event.asset_materialization.metadata["kept"].value == 4

"""The whole graph with its artifacts on object storage (a moto S3 server on 127.0.0.1).

VLMRL_ARTIFACTS=s3://...: every asset publishes its output (marker last) and indexes it
there; Dagster's metadata and MLflow's records name the same URIs; a second "pod" with an
empty cache re-runs the benchmarks from what is stored; the lineage audit works over S3.
"""

import json

import pytest
from dagster import AssetKey, DagsterInstance

from orchestration import audit as dagster_audit
from orchestration.definitions import defs
from orchestration.resources import ArtifactStore, RecipeResource
from orchestration.tracking import MlflowTracker
from tests.orchestration.conftest import INSTANCE_YAML, QUIET, SHORT
from vlmrl import storage
from vlmrl.artifact_root import ArtifactRoot
from vlmrl.cli import main as cli_main
from vlmrl.lineage import lineage_hash

ASSETS = ("raw_data", "sft_frames", "rl_frames", "base_model", "sft_checkpoint", "rl_checkpoint")
REPORTS = ("benchmark_frames", "base_report", "sft_report", "rl_report", "benchmark_report")


@pytest.fixture
def on_s3(s3, s3_uri, tmp_path, monkeypatch):
    """Credentials and endpoint from the environment only, as in a pod."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3["options"]["key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3["options"]["secret"])
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3["endpoint"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("VLMRL_CACHE", raising=False)
    monkeypatch.chdir(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(INSTANCE_YAML)
    return s3_uri, home, f"sqlite:///{tmp_path / 'mlflow.db'}"


def _resources(uri, cache, mlflow_uri):
    return {"artifacts": ArtifactStore(root=uri, cache=str(cache)), "tracker": MlflowTracker(tracking_uri=mlflow_uri),
            "recipe": RecipeResource(recipe="tiny-cpu", overrides=json.dumps(SHORT))}


def _meta(instance, key, partition=None):
    if partition is None:
        event = instance.get_latest_materialization_event(AssetKey(key))
        mat = event.asset_materialization
    else:
        from dagster import AssetRecordsFilter

        records = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey(key), asset_partitions=[partition]), limit=1).records
        mat = records[0].asset_materialization
    return {k: v.value for k, v in mat.metadata.items()}


def test_the_graph_on_object_storage(on_s3, tmp_path, capsys):
    from mlflow import MlflowClient

    uri, home, mlflow_uri = on_s3
    first, second = tmp_path / "cache-pod-1", tmp_path / "cache-pod-2"
    with DagsterInstance.from_config(str(home)) as instance:
        assert defs.resolve_job_def("pipeline").execute_in_process(
            run_config=QUIET, instance=instance, resources=_resources(uri, first, mlflow_uri)).success
        # every output is published under the root, at the URI its metadata names
        for key in ASSETS:
            meta = _meta(instance, key)
            assert meta["uri"] == f"{uri}/{meta['artifact_path']}" and storage.is_published(meta["uri"]), key
        rl = _meta(instance, "rl_checkpoint")
        assert rl["lineage_sha256"] == lineage_hash(first / "checkpoints" / "rl")
        assert storage.is_published(rl["training_report"])  # headroom + curves of the RL run

        # MLflow names the same URIs: the checkpoint's logged model and its input datasets
        client = MlflowClient(tracking_uri=mlflow_uri)
        model = client.get_logged_model(rl["mlflow_model_id"])
        assert model.tags["vlmrl.checkpoint_uri"] == rl["uri"]
        inputs = client.get_run(rl["mlflow_run_id"]).inputs.dataset_inputs
        assert [json.loads(i.dataset.source)["uri"] for i in inputs] == [f"{uri}/frames/rl"]

        # a second pod with an empty cache: the benchmarks run from what is stored
        assert defs.resolve_job_def("benchmarks").execute_in_process(
            run_config=QUIET, instance=instance, partition_key="synthetic",
            resources=_resources(uri, second, mlflow_uri)).success
        for key in REPORTS:
            assert storage.is_published(_meta(instance, key, "synthetic")["uri"]), key
        assert (second / "checkpoints" / "rl" / "lineage.json").read_bytes() == \
            (first / "checkpoints" / "rl" / "lineage.json").read_bytes()

    # the asset index lives on the store, one object per key
    tree = ArtifactRoot(uri, cache=tmp_path / "cache-auditor")
    assert {"rl_checkpoint", "rl_report[synthetic]", "benchmark_report[synthetic]"} <= set(tree.keys())
    assert tree.lookup("rl_checkpoint")["uri"] == f"{uri}/checkpoints/rl"

    # the lineage audit over S3, from a third empty cache, against Dagster's record
    capsys.readouterr()
    with DagsterInstance.from_config(str(home)) as instance:
        code = dagster_audit.main(["rl_checkpoint", "--artifacts", uri], instance=instance)
        out = capsys.readouterr().out
        assert code == 0, out
        assert "the published chain of rl_checkpoint: verified" in out and "agrees with the manifests" in out
        # the same from the library's command, by asset key in the store's index
        assert cli_main(["lineage", "rl_checkpoint", "--artifacts", uri]) == 0
        assert f"{uri}/checkpoints/rl: the published chain verified" in capsys.readouterr().out
        # the same audit catches an object changed on the store after it was published
        weights = next(name for name in storage.read_marker(f"{uri}/checkpoints/sft")["files"]
                       if name.endswith(".safetensors"))
        fs, path = __import__("fsspec").core.url_to_fs(f"{uri}/checkpoints/sft/{weights}")
        data = bytearray(fs.cat_file(path))
        data[-1] ^= 0xFF
        fs.pipe_file(path, bytes(data))
        code = dagster_audit.main(["rl_checkpoint", "--artifacts", uri], instance=instance)
        out = capsys.readouterr().out
        assert code == 1 and f"{uri}/checkpoints/sft" in out and "PROBLEM" in out
        assert cli_main(["lineage", "rl_checkpoint", "--artifacts", uri]) == 1
        assert "content differs from the marker" in capsys.readouterr().out
    assert not list(tmp_path.glob("s3:*"))  # nothing written to a local directory named after the URI

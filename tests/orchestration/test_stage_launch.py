"""The training and report assets on a recipe launched on 2 processes: each runs `vlmrl
train` / `vlmrl eval` under `accelerate launch` through dagster-pipes (orchestration.launcher),
as a step pod would, and gets the checkpoint or report and its metrics back; a failing
command fails the asset."""

import json
import shutil
import socket
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, StaticPartitionsDefinition, materialize

from orchestration.assets.models import rl_checkpoint, sft_checkpoint
from orchestration.assets.reports import report_assets
from orchestration.launcher import StageLauncher
from orchestration.resources import ArtifactStore, RecipeResource
from orchestration.tracking import MlflowTracker
from tests.orchestration.conftest import INSTANCE_YAML, QUIET, SHORT
from vlmrl.lineage import lineage_hash, read_manifest
from vlmrl.recipes import deep_merge

TWO = {"launch": {"accelerate_config": "ddp", "num_processes": 2},
       # T-GRPO, G = 4: 2 groups of 4 rows per process and step
       "rl": {"per_device_train_batch_size": 8, "num_generations": 4}}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tree(graph, tmp_path, monkeypatch):
    """A fresh artifacts tree with the graph's frames and base model, and a Dagster instance."""
    art = tmp_path / "artifacts"
    shutil.copytree(graph.artifacts / "frames", art / "frames", symlinks=True)
    shutil.copytree(graph.artifacts / "checkpoints" / "base", art / "checkpoints" / "base", symlinks=True)
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(INSTANCE_YAML)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("VLMRL_ACCELERATE_ARGS", f"--main_process_ip 127.0.0.1 --main_process_port {_port()}")
    return art, home, f"sqlite:///{tmp_path / 'mlflow.db'}"


def _resources(art, uri, overrides):
    return {"artifacts": ArtifactStore(root=str(art)), "tracker": MlflowTracker(tracking_uri=uri),
            "recipe": RecipeResource(recipe="tiny-cpu", overrides=json.dumps(deep_merge(SHORT, overrides))),
            "launcher": StageLauncher()}  # auto: the command, as the recipe asks for 2 processes


def _metadata(instance, key):
    event = instance.get_latest_materialization_event(AssetKey(key))
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def test_training_assets_launch_two_processes_through_pipes(tree):
    from mlflow import MlflowClient

    art, home, uri = tree
    with DagsterInstance.from_config(str(home)) as instance:
        result = materialize([sft_checkpoint, rl_checkpoint], instance=instance, run_config=QUIET,
                             resources=_resources(art, uri, TWO))
        assert result.success
        client = MlflowClient(tracking_uri=uri)
        for stage, key in (("sft", "sft_checkpoint"), ("rl", "rl_checkpoint")):
            meta, path = _metadata(instance, key), art / "checkpoints" / stage
            manifest = read_manifest(path)
            assert meta["launched_processes"] == 2 and meta["lineage_sha256"] == lineage_hash(path)
            assert [r["rank"] for r in manifest["metrics"]["replicas"]] == [0, 1]
            # the ranks ended with the same weights; RL's ranks trained on different rows (the
            # SFT trainer does not record its rows)
            assert len({r["weights_sha256"] for r in manifest["metrics"]["replicas"]}) == 1
            if stage == "rl":
                assert len({r["ids_sha256"] for r in manifest["metrics"]["replicas"]}) == 2
            # the command joined the asset's MLflow run: the trainer's metrics are in it
            run = client.get_run(meta["mlflow_run_id"])
            assert manifest["tracking"]["mlflow_run_id"] == meta["mlflow_run_id"]
            assert manifest["tracking"]["dagster_run_id"] == result.run_id
            assert run.info.status == "FINISHED" and "train_loss" in run.data.metrics
            assert run.data.params["launch.num_processes"] == "2"
        assert read_manifest(art / "checkpoints" / "rl")["parent"]["lineage_sha256"] == lineage_hash(
            art / "checkpoints" / "sft")

        # the RL checkpoint's report: `vlmrl eval` on 2 processes, one report, every row answered
        report_asset = next(a for a in report_assets(StaticPartitionsDefinition(["synthetic"]))
                            if a.key == AssetKey("rl_report"))
        # 8 questions in batches of 4: one batch per process
        result = materialize([report_asset], instance=instance, run_config=QUIET, partition_key="synthetic",
                             resources=_resources(art, uri, deep_merge(TWO, {"eval": {"batch_size": 4}})))
        assert result.success
        event = instance.fetch_materializations(AssetKey("rl_report"), limit=1).records[0]
        meta = {k: v.value for k, v in event.asset_materialization.metadata.items()}
        report = json.loads((Path(meta["path"]) / "report.json").read_text())
        rows = json.loads(meta["rows_per_rank"])
        assert meta["launched_processes"] == 2 and report["processes"]["world_size"] == 2
        assert rows == [4, 4] and sum(rows) == report["benchmark"]["n"]
        assert report["checkpoint"]["lineage_sha256"] == lineage_hash(art / "checkpoints" / "rl")


def test_a_failing_command_fails_the_asset_and_its_run(tree):
    from mlflow import MlflowClient

    art, home, uri = tree
    # FSDP cannot run on CPU: the command fails before training (torch refuses its setup)
    fsdp = deep_merge(TWO, {"launch": {"accelerate_config": "fsdp"}})
    with DagsterInstance.from_config(str(home)) as instance:
        result = materialize([sft_checkpoint], instance=instance, run_config=QUIET, raise_on_error=False,
                             resources=_resources(art, uri, fsdp))
        assert not result.success
        failure = result.get_step_failure_events()[0].event_specific_data.error
        assert "External execution process failed" in failure.to_string()
        assert not (art / "checkpoints" / "sft").exists()
        client = MlflowClient(tracking_uri=uri)
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert runs and all(r.info.status == "FAILED" for r in runs)

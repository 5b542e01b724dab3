"""MlflowTracker: one MLflow run per materialization, linked both ways, with lineage.

A real transformers Trainer (report_to="mlflow") and a subprocess (as accelerate would be)
log into the materialization's run; checkpoints become MLflow LoggedModels of that run
with their input datasets and upstream model, and no weights are copied into MLflow.
"""

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from dagster import (
    AssetExecutionContext,
    AssetKey,
    DagsterInstance,
    MaterializeResult,
    StaticPartitionsDefinition,
    asset,
    materialize,
)
from mlflow import MlflowClient

from orchestration.tracking import (
    ASYNC_BUFFERING,
    ASYNC_BUFFERING_S,
    MlflowTracker,
    TrackedRun,
    flatten_params,
    is_secret,
)

PARTS = StaticPartitionsDefinition(["synthetic"])
RECIPE = {
    "model": {"name": "tiny-qwen2.5-vl", "hf_token": "hf_SHOULD_NOT_LEAK"},
    "train": {"learning_rate": 1e-5, "max_tokens": 64, "tokenizer": "local"},
    "storage": {"aws_secret_access_key": "AKIA_SHOULD_NOT_LEAK", "apiKey": "KEY_SHOULD_NOT_LEAK"},
    "long": "x" * 7000,
}
CHILD = """import mlflow
with mlflow.start_run():  # what transformers' MLflowCallback does when MLFLOW_RUN_ID is set
    mlflow.log_metric("child_metric", 2.0)
"""


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)

    def forward(self, x, labels):
        return {"loss": torch.nn.functional.mse_loss(self.linear(x).squeeze(-1), labels)}


def train_tiny(output_dir: Path) -> None:
    """A real Trainer run whose metrics go to MLflow through report_to="mlflow"."""
    from transformers import Trainer, TrainingArguments

    data = [{"x": torch.tensor([float(i), 1.0]), "labels": torch.tensor(float(i))} for i in range(8)]
    args = TrainingArguments(output_dir=str(output_dir), report_to=["mlflow"], max_steps=3,
                             logging_steps=1, per_device_train_batch_size=4, use_cpu=True,
                             save_strategy="no", disable_tqdm=True, dataloader_num_workers=0)
    Trainer(model=Tiny(), args=args, train_dataset=data).train()


@asset(partitions_def=PARTS, code_version="base-1")
def base(context: AssetExecutionContext, tracker: MlflowTracker) -> MaterializeResult:
    with tracker.start_run(context, params={"kind": "base"}) as run:
        model = tracker.log_checkpoint(run, "/models/base", "base")
    return MaterializeResult(metadata={**run.metadata, **model})


@asset(partitions_def=PARTS, deps=[base], code_version="sft-7")
def tiny_checkpoint(context: AssetExecutionContext, tracker: MlflowTracker) -> MaterializeResult:
    upstream = context.instance.get_latest_materialization_event(AssetKey("base"))
    base_model_id = upstream.asset_materialization.metadata["mlflow_model_id"].value
    out = Path(tracker.uri.removeprefix("sqlite:///")).parent / "ckpt"
    with tracker.start_run(context, params=RECIPE, tags={"recipe": "tiny-cpu"}) as run:
        assert "MLFLOW_RUN_ID" not in os.environ  # see orchestration/tracking.py
        # the async logging thread waits on its stop event, not on its queue (end_run, see _pinned)
        assert os.environ[ASYNC_BUFFERING] == str(ASYNC_BUFFERING_S)
        mlflow.log_metric("fluent_metric", 1.5)
        train_tiny(out)
        subprocess.run([sys.executable, "-c", CHILD], env={**os.environ, **run.env}, check=True,
                       timeout=120)
        (out / "model.safetensors").write_bytes(b"\0" * 1024)
        model = tracker.log_checkpoint(
            run, str(out), "tiny-sft",
            datasets=[{"name": "sft_frames", "digest": "abc123def456", "source": "/data/sft"}],
            params={"learning_rate": 1e-5, "token": "SHOULD_NOT_LEAK"},
            input_models=[base_model_id])
    return MaterializeResult(metadata={**run.metadata, **model})


@asset
def failing(context: AssetExecutionContext, tracker: MlflowTracker) -> None:
    with tracker.start_run(context):
        raise RuntimeError("boom")


@pytest.fixture()
def tracker(tmp_path) -> MlflowTracker:
    return MlflowTracker(tracking_uri=f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}",
                         experiment="test", ui_url="http://127.0.0.1:5999",
                         dagster_ui_url="http://127.0.0.1:3999")


def test_secret_keys_and_flattening():
    for key in ("hf_token", "aws_secret_access_key", "apiKey", "password", "db.credentials",
                "private_key", "auth"):
        assert is_secret(key), key
    for key in ("max_tokens", "tokenizer", "keyframes", "learning_rate", "monkey"):
        assert not is_secret(key), key
    flat = flatten_params(RECIPE)
    assert flat["train.learning_rate"] == "1e-05" and flat["train.max_tokens"] == "64"
    assert len(flat["long"]) == 6000 and flat["long"].endswith("[truncated]")
    assert not any("LEAK" in v for v in flat.values())


def test_materialization_runs_are_tracked(tracker, tmp_path):
    env_before = os.environ.get("MLFLOW_TRACKING_URI")
    with DagsterInstance.ephemeral() as instance:
        result = materialize([base, tiny_checkpoint], instance=instance, partition_key="synthetic",
                             resources={"tracker": tracker})
        assert result.success
        meta = instance.get_latest_materialization_event(
            AssetKey("tiny_checkpoint")).asset_materialization.metadata
    assert os.environ.get("MLFLOW_TRACKING_URI") == env_before and mlflow.active_run() is None
    assert ASYNC_BUFFERING not in os.environ

    client = MlflowClient(tracker.uri)
    run_id = meta["mlflow_run_id"].value
    run = client.get_run(run_id)
    exp_id = run.info.experiment_id
    # Dagster -> MLflow
    assert meta["mlflow_run_url"].value == f"http://127.0.0.1:5999/#/experiments/{exp_id}/runs/{run_id}"
    # MLflow -> Dagster
    tags = run.data.tags
    assert tags["dagster.run_id"] == result.run_id
    assert tags["dagster.run_url"] == f"http://127.0.0.1:3999/runs/{result.run_id}"
    assert tags["dagster.asset_key"] == "tiny_checkpoint"
    assert tags["dagster.partition_key"] == "synthetic"
    assert tags["dagster.code_version"] == "sft-7"
    assert tags["recipe"] == "tiny-cpu" and run.info.run_name == "tiny_checkpoint[synthetic]"
    assert run.info.status == "FINISHED"
    # Params: the flattened recipe, without secrets (keys nor values)
    params = run.data.params
    assert params["train.learning_rate"] == "1e-05" and params["model.name"] == "tiny-qwen2.5-vl"
    assert not {"model.hf_token", "storage.aws_secret_access_key", "storage.apiKey"} & set(params)
    assert not any("LEAK" in v for v in params.values())
    # (The Trainer logs its own arguments here too; transformers redacts hub_token itself.)
    assert params["hub_token"] == "<HUB_TOKEN>"
    # Metrics: in-process fluent, the Trainer's callback, and a subprocess, all in this run
    metrics = run.data.metrics
    assert metrics["fluent_metric"] == 1.5 and metrics["child_metric"] == 2.0
    assert "loss" in metrics and len(client.get_metric_history(run_id, "loss")) == 3
    assert params["max_steps"] == "3"
    assert len(client.search_runs([exp_id])) == 2  # base + tiny_checkpoint: no stray runs

    # The checkpoint: an external LoggedModel of this run, with its lineage
    model = client.get_logged_model(meta["mlflow_model_id"].value)
    assert model.source_run_id == run_id and model.name == "tiny-sft"
    assert model.tags["vlmrl.checkpoint_uri"] == str(tmp_path / "mlflow" / "ckpt")
    assert model.params["learning_rate"] == "1e-05" and "token" not in model.params
    assert meta["mlflow_model_url"].value.endswith(f"/models/{model.model_id}")
    (dataset,) = run.inputs.dataset_inputs
    assert (dataset.dataset.name, dataset.dataset.digest) == ("sft_frames", "abc123def456")
    assert "/data/sft" in dataset.dataset.source
    assert {t.key: t.value for t in dataset.tags}["mlflow.data.context"] == "training"
    base_meta_id = client.search_logged_models([exp_id], filter_string="name = 'base'")[0].model_id
    assert [m.model_id for m in run.inputs.model_inputs] == [base_meta_id]
    # No weights copied into MLflow's artifact store
    stored = [p.name for p in (tmp_path / "mlflow" / "mlartifacts").rglob("*") if p.is_file()]
    assert stored and "model.safetensors" not in stored


def test_failed_materialization_fails_the_run(tracker):
    with DagsterInstance.ephemeral() as instance:
        result = materialize([failing], instance=instance, resources={"tracker": tracker},
                             raise_on_error=False)
    assert not result.success
    assert mlflow.active_run() is None
    (run,) = MlflowClient(tracker.uri).search_runs(
        [MlflowClient(tracker.uri).get_experiment_by_name("test").experiment_id])
    assert run.info.status == "FAILED" and run.data.tags["dagster.run_id"] == result.run_id


def test_tracked_run_metadata():
    run = TrackedRun("r1", "0", "http://mlflow/#/experiments/0/runs/r1", env={})
    assert run.metadata["mlflow_run_id"] == "r1"
    assert run.metadata["mlflow_run_url"].value == run.url


def test_curriculum_phases_are_child_runs_and_no_param_is_refused(graph):
    """Two trainers in one SFT asset: the curriculum phase logs into a child run, so the main
    phase's arguments are not refused as "changed param values" (that batch used to be lost)."""
    client = MlflowClient(graph.mlflow_uri)
    exp = client.get_experiment_by_name("vlmrl")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    (sft,) = [r for r in runs if r.data.tags.get("dagster.asset_key") == "sft_checkpoint"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == sft.info.run_id]
    assert [c.data.tags.get("vlmrl.curriculum_phase") for c in children] == ["1"]
    (phase,) = children
    assert phase.info.status == "FINISHED"
    assert phase.data.params["_name_or_path"].endswith("checkpoints/base")
    assert phase.data.params["max_steps"] == "2"
    assert "train_loss" in phase.data.metrics
    # the main phase's own arguments reached the stage's run: it starts from the phase's weights
    assert sft.data.params["_name_or_path"].endswith("phase-1/final")
    assert float(sft.data.params["num_train_epochs"]) == 1
    assert float(sft.data.params["sft.num_train_epochs"]) == 1  # the recipe, logged by the tracker
    assert sft.info.status == "FINISHED" and "train_loss" in sft.data.metrics
    assert "mlflow_problems" not in graph.instance().get_latest_materialization_event(
        AssetKey("sft_checkpoint")).asset_materialization.metadata


def test_reported_problems_are_bounded_in_the_metadata():
    run = TrackedRun("r1", "0", "http://mlflow/#/experiments/0/runs/r1", env={})
    for i in range(50):
        run.problems.append(f"batch {i} failed")
    shown = run.metadata["mlflow_problems"].value.splitlines()
    assert shown[0] == "- batch 0 failed" and shown[19] == "- batch 19 failed"
    assert shown[20] == "- ... and 30 more" and len(shown) == 21


def test_users_async_buffering_wins(tracker, monkeypatch):
    monkeypatch.setenv(ASYNC_BUFFERING, "3")
    seen = []

    @asset
    def buffered(context: AssetExecutionContext, tracker: MlflowTracker) -> None:
        with tracker.start_run(context):
            seen.append(os.environ[ASYNC_BUFFERING])

    with DagsterInstance.ephemeral() as instance:
        assert materialize([buffered], instance=instance, resources={"tracker": tracker}).success
    assert seen == ["3"] and os.environ[ASYNC_BUFFERING] == "3"

"""A tracking server that dies mid-run costs no work: training goes on to the end, the
checkpoint and the Dagster record are complete, and the failure is reported.

A real `mlflow server` on 127.0.0.1 is started by the test and stopped from inside the
training loop (a Trainer callback, once step 2 of 6 is logged), the way a crashed or restarted
tracking server looks to a long GPU job.
"""

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest
import torch
from dagster import (
    AssetExecutionContext,
    AssetKey,
    DagsterInstance,
    MaterializeResult,
    asset,
    materialize,
)
from mlflow import MlflowClient
from transformers import Trainer, TrainerCallback, TrainingArguments

from orchestration.assets.common import log_metrics
from orchestration.tracking import MlflowTracker

STEPS, STOP_AT = 6, 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, root: Path):
        self.port = _free_port()
        self.db = root / "mlflow.db"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{self.db}",
             "--default-artifact-root", (root / "artifacts").as_uri()],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2):
                    return
            except OSError:
                assert self.proc.poll() is None, "mlflow server exited"
                time.sleep(0.5)
        raise TimeoutError("mlflow server did not start")

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


class Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)

    def forward(self, x, labels):
        return {"loss": torch.nn.functional.mse_loss(self.linear(x).squeeze(-1), labels)}


class StopServer(TrainerCallback):
    def __init__(self, server: Server):
        self.server = server

    def on_log(self, args, state, control, **kwargs):  # runs after MLflowCallback's on_log
        if state.global_step == STOP_AT and self.server.proc.poll() is None:
            mlflow.flush_async_logging()  # what was logged so far has reached the server
            self.server.stop()


@pytest.fixture()
def server(tmp_path):
    srv = Server(tmp_path / "mlflow")
    yield srv
    if srv.proc.poll() is None:
        srv.stop()


def test_tracking_server_stopped_mid_run(server, tmp_path):
    out = tmp_path / "checkpoint"
    tracker = MlflowTracker(tracking_uri=server.uri, experiment="outage", http_max_retries=0,
                            http_timeout_s=5)

    @asset
    def trained(context: AssetExecutionContext, tracker: MlflowTracker) -> MaterializeResult:
        with tracker.start_run(context, params={"max_steps": STEPS}) as run:
            data = [{"x": torch.tensor([float(i), 1.0]), "labels": torch.tensor(float(i))}
                    for i in range(8)]
            args = TrainingArguments(output_dir=str(tmp_path / "work"), report_to=["mlflow"],
                                     max_steps=STEPS, logging_steps=1, per_device_train_batch_size=4,
                                     use_cpu=True, save_strategy="no", disable_tqdm=True)
            trainer = Trainer(model=Linear(), args=args, train_dataset=data,
                              callbacks=[StopServer(server)])
            trainer.train()
            trainer.save_model(str(out))
            log_metrics({"global_step": trainer.state.global_step})
            model = tracker.log_checkpoint(run, str(out), "tiny")
            return MaterializeResult(metadata={**run.metadata, **model,
                                               "global_step": trainer.state.global_step})

    started = time.monotonic()
    with DagsterInstance.ephemeral() as instance:
        result = materialize([trained], instance=instance, resources={"tracker": tracker})
        assert result.success  # the work finished although the store died at step 2 of 6
        meta = instance.get_latest_materialization_event(AssetKey("trained")).asset_materialization.metadata
        warnings = [e.message for e in instance.all_logs(result.run_id)
                    if e.level >= 30 and "MLflow run" in (e.message or "")]
    elapsed = time.monotonic() - started
    assert elapsed < 120, f"a dead tracking server stalled the run for {elapsed:.0f} s"
    assert mlflow.active_run() is None

    # Nothing lost from the checkpoint or the Dagster record
    assert (out / "model.safetensors").is_file() and meta["global_step"].value == STEPS
    run_id = meta["mlflow_run_id"].value
    assert "mlflow_model_id" not in meta  # could not be logged, and says so:
    problems = meta["mlflow_problems"].value
    assert "logging checkpoint tiny failed" in problems and "logging metrics failed" in problems
    assert "Failed to log run data" in problems  # the trainer callback's background batches
    assert any("logging checkpoint tiny failed" in w for w in warnings)

    # What reached the store before the outage is there: the run, its params, the first steps
    client = MlflowClient(f"sqlite:///{server.db}")
    stored = client.get_run(run_id)
    assert stored.data.params["max_steps"] == str(STEPS)
    steps = [m.step for m in client.get_metric_history(run_id, "loss")]
    assert steps[:STOP_AT] == list(range(1, STOP_AT + 1)) and max(steps) < STEPS


def test_unreachable_store_at_start_fails_fast_naming_it(tmp_path):
    uri = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    tracker = MlflowTracker(tracking_uri=uri, http_max_retries=0, http_timeout_s=5)
    ran = []

    @asset
    def never(context: AssetExecutionContext, tracker: MlflowTracker) -> None:
        with tracker.start_run(context):
            ran.append(True)

    with DagsterInstance.ephemeral() as instance:
        result = materialize([never], instance=instance, resources={"tracker": tracker},
                             raise_on_error=False)
    assert not result.success and not ran
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    error = failure.event_specific_data.error.to_string()
    assert f"MLflow tracking store {uri} is not usable" in error

"""MLflow tracking as a small Dagster resource: one MLflow run per asset materialization.

Not dagster-mlflow: it is beta and its run-finished hook ends runs early (dagster #21872).

How trainer metrics reach the right run: ``start_run`` makes the run MLflow's active run
in this process, so transformers' ``MLflowCallback`` (``report_to="mlflow"``) logs into it
and leaves it open (the callback only ends runs it started). MLFLOW_RUN_ID is NOT put in
this process's environment: with a run active, the callback would call ``start_run`` again
and fail ("Run with UUID ... is already active"). A subprocess (accelerate, dagster-pipes)
gets ``TrackedRun.env`` instead, whose MLFLOW_RUN_ID makes its callback resume this run.

Tracking never costs the work it records: once a run has started, a tracking store that
fails (a stopped server, a refused write) is reported (the Dagster log, the asset's
``mlflow_problems`` metadata) and the materialization goes on. HTTP retries are bounded
(``http_max_retries``, ``http_timeout_s``) so a dead server cannot stall a run for minutes.
"""

import functools
import logging
import os
import re
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import requests
from dagster import AssetExecutionContext, ConfigurableResource, MetadataValue
from mlflow import MlflowClient
from mlflow.entities import DatasetInput, InputTag, LoggedModelInput, Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_RUN_NOTE
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

from orchestration.resources import default_artifact_root

# A key is dropped (value never logged) when one of its words is one of these.
SECRET_WORDS = frozenset({"token", "secret", "password", "passwd", "key", "apikey",
                          "credential", "credentials", "auth"})
TRUNCATED = "...[truncated]"
# What a failing tracking store raises: MLflow's own errors, HTTP errors, a gone SQLite file.
TRACKING_ERRORS = (MlflowException, requests.exceptions.RequestException, OSError)
log = logging.getLogger(__name__)
MAX_PROBLEMS_SHOWN = 20  # in an asset's metadata
# How long MLflow's async logging thread gathers batches before writing them (see _pinned).
ASYNC_BUFFERING = "MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS"
ASYNC_BUFFERING_S = 1


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else a SQLite store beside the artefacts (never MLflow's CWD default)."""
    if uri := os.environ.get("MLFLOW_TRACKING_URI"):
        return uri
    root = default_artifact_root()
    local = Path(root if "://" not in root else os.environ.get("DAGSTER_HOME", "."))
    return f"sqlite:///{local.resolve() / 'mlflow.db'}"


@functools.lru_cache(maxsize=8)
def _client(uri: str) -> MlflowClient:
    """One client per store and process: building one costs ~50 ms (store set-up)."""
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri)


def is_secret(key: str) -> bool:
    words = re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key).lower())
    return any(w in SECRET_WORDS for w in words)


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested recipe -> {"a.b": "value"}; secret-looking keys dropped; values capped for MLflow."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if is_secret(str(key)):
            continue
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, f"{name}."))
            continue
        text = str(value)
        if len(text) > MAX_PARAM_VAL_LENGTH:
            text = text[: MAX_PARAM_VAL_LENGTH - len(TRUNCATED)] + TRUNCATED
        flat[name] = text
    return flat


@contextmanager
def _environ(**values: str) -> Iterator[None]:
    """Set ``values`` in ``os.environ`` inside the block; restore (or remove) them after."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass(frozen=True)
class TrackedRun:
    run_id: str
    experiment_id: str
    url: str
    env: dict[str, str]  # for subprocesses: their MLflowCallback resumes this run
    problems: list[str] = field(default_factory=list, compare=False)
    logger: Any = field(default=None, compare=False, repr=False)  # the Dagster context's log

    @property
    def metadata(self) -> dict[str, Any]:
        """Dagster metadata: the run's id and link, and the tracking failures so far.

        MLflow's async batches (the trainer callback's) are flushed first, so that a batch
        still buffered when the asset builds its result has failed or landed by then
        (quick inside ``start_run``: see ``MlflowTracker._pinned``)."""
        uri = self.env.get("MLFLOW_TRACKING_URI")
        if uri and os.environ.get("MLFLOW_TRACKING_URI") == uri:  # MLflow points at this run's store
            with self.guard("flushing the async logging"):
                mlflow.flush_async_logging()
        meta = {"mlflow_run_id": self.run_id, "mlflow_run_url": MetadataValue.url(self.url)}
        if self.problems:  # a dead store fails every batch of a long run: show the first ones
            shown = [f"- {p}" for p in self.problems[:MAX_PROBLEMS_SHOWN]]
            if len(self.problems) > MAX_PROBLEMS_SHOWN:
                shown.append(f"- ... and {len(self.problems) - MAX_PROBLEMS_SHOWN} more")
            meta["mlflow_problems"] = MetadataValue.md("\n".join(shown))
        return meta

    def report(self, problem: str) -> None:
        """Record a tracking failure: kept for the asset's metadata and logged as a warning."""
        self.problems.append(problem)
        (self.logger or log).warning("MLflow run %s: %s", self.run_id, problem)

    def set_tag(self, key: str, value: str) -> None:
        """A tag on this run (through the store, whatever run is active in-process)."""
        with self.guard(f"setting the tag {key}"):
            _client(self.env["MLFLOW_TRACKING_URI"]).set_tag(self.run_id, key, value)

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        """Metrics of this run (through the store, whatever run is active in-process)."""
        if metrics:
            with self.guard("logging metrics"):
                now = int(time.time() * 1000)
                _client(self.env["MLFLOW_TRACKING_URI"]).log_batch(
                    self.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])

    @contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Run a tracking call; if the store fails, report it and go on with the work."""
        try:
            yield
        except TRACKING_ERRORS as exc:
            self.report(f"{what} failed: {type(exc).__name__}: {_first_line(exc)}")


_ACTIVE: ContextVar[TrackedRun | None] = ContextVar("vlmrl_tracked_run", default=None)


def active_tracked_run() -> TrackedRun | None:
    """The TrackedRun of the ``start_run`` block this code runs in, if any."""
    return _ACTIVE.get()


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else "")[:limit]


class _ReportErrors(logging.Handler):
    """MLflow's background logging (the trainer callback's async batches) reports failures
    only as ERROR log records; this turns them into the run's reported problems."""

    def __init__(self, run: TrackedRun):
        super().__init__(logging.ERROR)
        self.run = run

    def emit(self, record: logging.LogRecord) -> None:
        self.run.problems.append(f"{record.name}: {record.getMessage().splitlines()[0][:300]}")


class MlflowTracker(ConfigurableResource):
    """Where and how asset materializations are recorded in MLflow."""

    tracking_uri: str | None = None  # None: default_tracking_uri()
    experiment: str = "vlmrl"
    ui_url: str = "http://127.0.0.1:5000"
    dagster_ui_url: str = "http://127.0.0.1:3000"
    artifact_location: str | None = None  # None: beside a SQLite store, else the server's
    # Bounded HTTP retries: MLflow's defaults (7 retries, backoff 2) can hold a run for minutes
    # per request when the server is gone. An MLFLOW_HTTP_REQUEST_* variable set by the user wins.
    http_max_retries: int = 2
    http_timeout_s: int = 20

    @classmethod
    def from_env(cls) -> "MlflowTracker":
        """The tracking URI pinned now; UI links from VLMRL_MLFLOW_UI_URL / VLMRL_DAGSTER_UI_URL."""
        uri = default_tracking_uri()
        ui = os.environ.get("VLMRL_MLFLOW_UI_URL") or (
            uri if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000")
        return cls(tracking_uri=uri, ui_url=ui,
                   dagster_ui_url=os.environ.get("VLMRL_DAGSTER_UI_URL", "http://127.0.0.1:3000"),
                   experiment=os.environ.get("VLMRL_MLFLOW_EXPERIMENT", "vlmrl"))

    @property
    def uri(self) -> str:
        return self.tracking_uri or default_tracking_uri()

    def client(self) -> MlflowClient:
        return _client(self.uri)

    def experiment_id(self, client: MlflowClient) -> str:
        if exp := client.get_experiment_by_name(self.experiment):
            return exp.experiment_id
        location = self.artifact_location
        if location is None and self.uri.startswith("sqlite:///"):
            location = (Path(self.uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
        try:
            return client.create_experiment(self.experiment, artifact_location=location)
        except MlflowException:  # created meanwhile by a parallel step
            return client.get_experiment_by_name(self.experiment).experiment_id

    def run_url(self, experiment_id: str, run_id: str) -> str:
        return f"{self.ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"

    def dagster_tags(self, context: AssetExecutionContext) -> dict[str, str]:
        """Tags that lead from the MLflow run back to the Dagster materialization."""
        key = context.asset_key
        ui = self.dagster_ui_url.rstrip("/")
        tags = {
            "dagster.run_id": context.run_id,
            "dagster.job": context.job_name,
            "dagster.asset_key": key.to_user_string(),
            "dagster.run_url": f"{ui}/runs/{context.run_id}",
            "dagster.asset_url": f"{ui}/assets/{'/'.join(key.path)}",
        }
        if context.has_partition_key:
            tags["dagster.partition_key"] = context.partition_key
        if code_version := context.assets_def.code_versions_by_key.get(key):
            tags["dagster.code_version"] = code_version
        tags[MLFLOW_RUN_NOTE] = (f"Materialization of `{tags['dagster.asset_key']}` in Dagster "
                                 f"run [{context.run_id}]({tags['dagster.run_url']}).")
        return tags

    @contextmanager
    def start_run(self, context: AssetExecutionContext, params: Mapping[str, Any] | None = None,
                  tags: Mapping[str, str] | None = None) -> Iterator[TrackedRun]:
        """One MLflow run for this materialization, active in-process for the block's duration.

        Ends FINISHED, or FAILED if the block raises. Put ``run.metadata`` on the result.
        """
        with self._pinned():
            # Before any work: an unreachable store fails here, fast, naming the URI.
            try:
                client = self.client()
                exp_id = self.experiment_id(client)
                all_tags = {**self.dagster_tags(context), **(tags or {})}
                name = all_tags["dagster.asset_key"]
                if "dagster.partition_key" in all_tags:
                    name += f"[{all_tags['dagster.partition_key']}]"
                run_id = client.create_run(exp_id, run_name=name, tags=all_tags).info.run_id
            except TRACKING_ERRORS as exc:
                raise ConnectionError(f"MLflow tracking store {self.uri} is not usable: "
                                      f"{type(exc).__name__}: {_first_line(exc)}") from exc
            run = TrackedRun(run_id, exp_id, self.run_url(exp_id, run_id), env={
                "MLFLOW_TRACKING_URI": self.uri, "MLFLOW_RUN_ID": run_id,
                "MLFLOW_EXPERIMENT_NAME": self.experiment}, logger=context.log)
            with run.guard("logging the params"):
                self._log_params(client, run_id, flatten_params(params or {}))
            status = "FAILED"
            handler = _ReportErrors(run)
            mlflow_log = logging.getLogger("mlflow")
            mlflow_log.addHandler(handler)
            token = _ACTIVE.set(run)
            try:
                # Runs started inside (a curriculum phase's nested trainer run) join this experiment.
                with _environ(MLFLOW_EXPERIMENT_ID=exp_id):
                    with run.guard("starting the run"):
                        mlflow.start_run(run_id=run_id)
                    yield run
                status = "FINISHED"
            finally:
                _ACTIVE.reset(token)
                ended = False
                with run.guard("ending the run"):
                    active = mlflow.active_run()
                    if active is not None and active.info.run_id == run_id:
                        mlflow.end_run(status)  # also flushes the callback's async logging
                        ended = True  # end_run recorded `status` (over a subprocess's own)
                # Else something in-process ended it, or the store failed: a subprocess
                # resuming the run may have ended it with its own status, so record ours.
                if not ended:
                    with run.guard("recording the run's status"):
                        client.set_terminated(run_id, status)
                mlflow_log.removeHandler(handler)

    def log_checkpoint(self, run: TrackedRun, path: str, name: str,
                       datasets: Sequence[Mapping[str, str]] = (),
                       params: Mapping[str, Any] | None = None,
                       input_models: Sequence[str] = ()) -> dict[str, Any]:
        """Record a checkpoint as an MLflow LoggedModel of ``run``, weights left in place.

        ``datasets``: {"name", "digest" (content fingerprint), "source" (path/URI),
        optional "context" (default "training")}, logged as the run's inputs;
        ``input_models``: ids of upstream LoggedModels (e.g. the SFT checkpoint of an RL
        run), logged as model inputs. Returns Dagster metadata (model id and link); empty if
        the store failed (reported on ``run``).
        """
        with run.guard(f"logging checkpoint {name}"):
            return self._log_checkpoint(run.run_id, path, name, datasets, params, input_models)
        return {}

    def _log_checkpoint(self, run_id: str, path: str, name: str, datasets: Sequence[Mapping[str, str]],
                        params: Mapping[str, Any] | None, input_models: Sequence[str]) -> dict[str, Any]:
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        client = self.client()
        exp_id = client.get_run(run_id).info.experiment_id
        inputs = []
        for d in datasets:
            with warnings.catch_warnings():  # "can be interpreted in multiple ways": all local
                warnings.simplefilter("ignore", UserWarning)
                source = resolve_dataset_source(d["source"])
            entity = MetaDataset(source=source, name=d["name"], digest=d["digest"])._to_mlflow_entity()
            inputs.append(DatasetInput(entity, tags=[
                InputTag(MLFLOW_DATASET_CONTEXT, d.get("context", "training"))]))
        client.log_inputs(run_id, datasets=inputs or None,
                          models=[LoggedModelInput(m) for m in input_models] or None)
        with self._pinned():  # create_external_model uses the fluent (global) client
            model = mlflow.create_external_model(
                name=name, source_run_id=run_id, experiment_id=exp_id,
                params=flatten_params(params or {}),
                tags={"vlmrl.checkpoint_uri": str(path)}, model_type="checkpoint")
        url = f"{self.ui_url.rstrip('/')}/#/experiments/{exp_id}/models/{model.model_id}"
        return {"mlflow_model_id": model.model_id, "mlflow_model_url": MetadataValue.url(url)}

    @staticmethod
    def _log_params(client: MlflowClient, run_id: str, flat: Mapping[str, str]) -> None:
        items = [Param(k, v) for k, v in flat.items()]
        for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
            client.log_batch(run_id, params=items[i : i + MAX_PARAMS_TAGS_PER_BATCH])

    @contextmanager
    def _pinned(self) -> Iterator[None]:
        """Point MLflow's fluent API (and child processes) at this store, then restore."""
        from mlflow.tracking._tracking_service.utils import _use_tracking_uri

        settings = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(self.http_max_retries),
                    "MLFLOW_HTTP_REQUEST_TIMEOUT": str(self.http_timeout_s),
                    # MLflow's async logging thread (the trainer callback's batches) otherwise
                    # blocks on its queue for up to 1 s, and end_run waits for it: ~1 s idle
                    # per trained stage. Buffering waits on the stop event instead, which
                    # end_run sets, so the thread drains at once.
                    ASYNC_BUFFERING: str(ASYNC_BUFFERING_S)}
        settings = {k: os.environ.get(k, v) for k, v in settings.items()}  # the user's win
        with _environ(MLFLOW_TRACKING_URI=self.uri, **settings), _use_tracking_uri(self.uri):
            yield


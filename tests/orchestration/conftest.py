"""The whole graph materialized once, on a shortened tiny-cpu recipe, in a temporary instance."""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# telemetry off; nux off: no "Join the Dagster community" dialog over UI screenshots
INSTANCE_YAML = "telemetry:\n  enabled: false\nnux:\n  enabled: false\n"
SHORT = {
    "data": {"synthetic": {"sizes": {"sft": 8, "rl": 8, "bench": 8}}},
    "sft": {"num_train_epochs": 1, "save_strategy": "no",
            "curriculum": [{"families": ["motion"], "max_steps": 2}]},
    "rl": {"max_steps": 2, "save_strategy": "no", "per_device_train_batch_size": 16},
    "eval": {"max_new_tokens": 8},
}
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@dataclass
class Graph:
    home: Path
    artifacts: Path
    mlflow_uri: str
    resources: dict[str, Any]
    results: dict[str, Any]

    def instance(self):
        from dagster import DagsterInstance

        return DagsterInstance.from_config(str(self.home))


@pytest.fixture(scope="session")
def graph(tmp_path_factory) -> Graph:
    from dagster import DagsterInstance

    from orchestration.definitions import defs
    from orchestration.resources import ArtifactStore, RecipeResource
    from orchestration.tracking import MlflowTracker

    tmp = tmp_path_factory.mktemp("graph")
    home, art = tmp / "dagster_home", tmp / "artifacts"
    home.mkdir()
    (home / "dagster.yaml").write_text(INSTANCE_YAML)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    resources = {"artifacts": ArtifactStore(root=str(art)),
                 "recipe": RecipeResource(recipe="tiny-cpu", overrides=json.dumps(SHORT)),
                 "tracker": MlflowTracker(tracking_uri=uri)}
    results = {}
    os.environ.pop("VLMRL_EXECUTOR", None)
    with DagsterInstance.from_config(str(home)) as instance:
        results["pipeline"] = defs.resolve_job_def("pipeline").execute_in_process(
            run_config=QUIET, instance=instance, resources=resources)
        results["benchmarks"] = defs.resolve_job_def("benchmarks").execute_in_process(
            run_config=QUIET, instance=instance, resources=resources, partition_key="synthetic")
    return Graph(home, art, uri, resources, results)

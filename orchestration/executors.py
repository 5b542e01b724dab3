"""The executor, chosen by environment, and the Kubernetes config of the GPU steps.

``VLMRL_EXECUTOR`` picks the executor that ``definitions.py`` sets on ``Definitions``
(so UI materializations and automation runs use it too, not only the jobs):

    in_process (default)   one process, the embedded demo
    multiprocess           one process per step (``VLMRL_MAX_CONCURRENT`` caps them)
    k8s                    dagster-k8s ``k8s_job_executor``: one Kubernetes Job per step

The k8s executor loads the cluster config when a run starts executing (not at import),
but a process without a cluster cannot run it, hence the choice by environment. Its
settings come from ``VLMRL_K8S_*`` variables, read once when the definitions load (see
``k8s_executor_config``). GPU steps add ``gpu_tags()`` as op tags and ``pool=GPU_POOL``
so the instance caps how many run at once (``concurrency: pools:`` in dagster.yaml); that
pool is what makes an asset a GPU asset (``gpu_asset_names``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from dagster import AssetsDefinition, ExecutorDefinition, in_process_executor, multiprocess_executor
from dagster_k8s import k8s_job_executor

EXECUTOR_ENV = "VLMRL_EXECUTOR"
GPU_POOL = "gpu"
STEP_GPUS_ENV = "VLMRL_STEP_GPUS"  # GPUs per GPU step pod (gpu_tags)

DAY_S = 24 * 3600
# Step pods without a GPU tag (data preparation): modest requests, a memory limit only
# (CPU limits throttle; memory limits protect the node).
CPU_STEP_RESOURCES = {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "16Gi"}}
# Settings (never secrets) that step pods need, copied as NAME=VALUE when set here: a bare
# NAME would be read in the run pod and fail the launch if unset there.
FORWARDED_ENV = ("VLMRL_ARTIFACTS", "VLMRL_CACHE", "VLMRL_RECIPE", "VLMRL_STAGE_LAUNCH", "VLMRL_STEP_GPUS",
                 "MLFLOW_TRACKING_URI", "VLMRL_MLFLOW_UI_URL", "VLMRL_DAGSTER_UI_URL")


def _csv(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def k8s_executor_config(env: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """The ``k8s_job_executor`` config, from ``VLMRL_K8S_*`` variables.

    VLMRL_K8S_NAMESPACE (vlmrl), VLMRL_K8S_IMAGE (else the code location's image),
    VLMRL_K8S_IMAGE_PULL_POLICY (IfNotPresent), VLMRL_K8S_MAX_CONCURRENT (8, per run),
    VLMRL_K8S_SERVICE_ACCOUNT, VLMRL_K8S_ENV_SECRETS / VLMRL_K8S_ENV_CONFIG_MAPS (comma
    lists of Secret / ConfigMap names mounted as env, e.g. object-store credentials),
    VLMRL_K8S_KUBECONFIG (run outside the cluster with this kubeconfig; default: in-cluster).
    """
    cfg: dict[str, Any] = {
        "job_namespace": env.get("VLMRL_K8S_NAMESPACE", "vlmrl"),
        "image_pull_policy": env.get("VLMRL_K8S_IMAGE_PULL_POLICY", "IfNotPresent"),
        "max_concurrent": int(env.get("VLMRL_K8S_MAX_CONCURRENT", "8")),
        "env_vars": [f"{name}={env[name]}" for name in FORWARDED_ENV if env.get(name)],
        "env_secrets": _csv(env.get("VLMRL_K8S_ENV_SECRETS")),
        "env_config_maps": _csv(env.get("VLMRL_K8S_ENV_CONFIG_MAPS")),
        "resources": CPU_STEP_RESOURCES,
        # Dagster's default keeps finished Jobs one day; keep them a week for post-mortems.
        "step_k8s_config": {"job_spec_config": {"ttl_seconds_after_finished": 7 * DAY_S,
                                                "backoff_limit": 0}},
    }
    if image := env.get("VLMRL_K8S_IMAGE"):
        cfg["job_image"] = image
    if account := env.get("VLMRL_K8S_SERVICE_ACCOUNT"):
        cfg["service_account_name"] = account
    if kubeconfig := env.get("VLMRL_K8S_KUBECONFIG"):
        cfg.update(load_incluster_config=False, kubeconfig_file=kubeconfig)
    return cfg


def executor_from_env(env: Mapping[str, str] = os.environ) -> ExecutorDefinition:
    """The executor named by ``VLMRL_EXECUTOR``; never contacts a cluster here."""
    kind = env.get(EXECUTOR_ENV, "in_process").strip().lower().replace("-", "_")
    if kind in ("", "in_process", "inprocess"):
        return in_process_executor
    if kind == "multiprocess":
        limit = env.get("VLMRL_MAX_CONCURRENT")
        if not limit:
            return multiprocess_executor
        return multiprocess_executor.configured({"max_concurrent": int(limit)})
    if kind == "k8s":
        return k8s_job_executor.configured(k8s_executor_config(env))
    raise ValueError(f"{EXECUTOR_ENV}={kind!r}: expected in_process, multiprocess or k8s")


def gpu_asset_names(assets: Iterable[Any]) -> tuple[str, ...]:
    """The assets that train or evaluate models, in order: those declared in the GPU pool."""
    return tuple(key.to_user_string() for a in assets
                 if isinstance(a, AssetsDefinition) and a.is_executable and a.op.pool == GPU_POOL
                 for key in a.keys)


def _json_env(name: str, default: Any) -> Any:
    value = os.environ.get(name)
    return json.loads(value) if value else default


def gpu_tags(
    gpus: int | None = None,
    *,
    cpu: str = "8",
    memory: str = "64Gi",
    shm: str = "16Gi",
    node_selector: Mapping[str, str] | None = None,
    tolerations: list[dict[str, Any]] | None = None,
    deadline_s: int = 2 * DAY_S,
    ttl_s: int = 7 * DAY_S,
) -> dict[str, Any]:
    """Op tags for a GPU step: ``@asset(op_tags=gpu_tags(), pool=GPU_POOL)``.

    ``gpus`` defaults to ``VLMRL_STEP_GPUS`` (else 1): set it to the recipe's
    ``launch.num_processes``, one process per GPU. Node selector and tolerations default to
    the NVIDIA GPU operator's conventions, or to JSON in ``VLMRL_GPU_NODE_SELECTOR`` /
    ``VLMRL_GPU_TOLERATIONS``. Only the k8s executor reads these tags; the other executors
    ignore them.
    """
    if gpus is None:
        gpus = int(os.environ.get(STEP_GPUS_ENV, "1"))
    if gpus < 1:
        raise ValueError(f"{STEP_GPUS_ENV}={gpus}: a GPU step needs at least one GPU")
    if node_selector is None:
        node_selector = _json_env("VLMRL_GPU_NODE_SELECTOR", {"nvidia.com/gpu.present": "true"})
    if tolerations is None:
        tolerations = _json_env("VLMRL_GPU_TOLERATIONS", [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
    gpu = str(gpus)
    return {"dagster-k8s/config": {
        "container_config": {
            # Name every resource the executor sets: older dagster-k8s replaced the
            # executor's resources with a tag's, 0.29 deep-merges them; either way the
            # GPU pod then gets exactly these. GPU requests must equal GPU limits.
            "resources": {"requests": {"cpu": cpu, "memory": memory, "nvidia.com/gpu": gpu},
                          "limits": {"memory": memory, "nvidia.com/gpu": gpu}},
            # NCCL and DataLoader workers need more shared memory than the 64 MiB default.
            "volume_mounts": [{"name": "dshm", "mount_path": "/dev/shm"}],
        },
        "pod_spec_config": {
            "node_selector": dict(node_selector),
            "tolerations": list(tolerations),
            "volumes": [{"name": "dshm", "empty_dir": {"medium": "Memory", "size_limit": shm}}],
        },
        "job_spec_config": {
            # A Pending GPU pod never fails on its own: bound the whole Job's lifetime.
            "active_deadline_seconds": deadline_s,
            "ttl_seconds_after_finished": ttl_s,
            "backoff_limit": 0,  # Dagster's own retries decide, not Kubernetes'
        },
    }}

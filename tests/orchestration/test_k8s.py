"""The executor by environment, and the Kubernetes Jobs dagster-k8s would create for GPU steps.

No cluster here: the step Job is built offline along the k8s executor's own code path
(K8sRunLauncher from deploy/dagster-k8s.yaml -> executor config -> the asset's
`dagster-k8s/config` op tags -> construct_dagster_k8s_job) and validated against the
Kubernetes OpenAPI schema (kubernetes-validate, strict: unknown fields fail).
"""

import importlib
import json
from pathlib import Path
from typing import Any

import kubernetes
import kubernetes_validate
import pytest
import yaml
from dagster import DagsterInstance, DagsterRun, Definitions, asset, define_asset_job
from dagster._config import process_config
from dagster._core.definitions.job_base import InMemoryJob
from dagster._core.executor.init import InitExecutorContext
from dagster_k8s import K8sRunLauncher, k8s_job_executor
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import construct_dagster_k8s_job, get_k8s_job_name, get_user_defined_k8s_config

import orchestration.definitions
from orchestration.definitions import GPU_ASSET_NAMES
from orchestration.executors import (
    CPU_STEP_RESOURCES,
    GPU_POOL,
    executor_from_env,
    gpu_tags,
    k8s_executor_config,
)

REPO = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.31"  # the oldest API the manifests must satisfy
RUN_ID = "0123456789abcdef0123456789abcdef"
LAUNCHER_ENV = {"DAGSTER_K8S_NAMESPACE": "vlmrl", "DAGSTER_K8S_INSTANCE_CONFIG_MAP": "dagster-instance",
                "DAGSTER_K8S_PG_PASSWORD_SECRET": "dagster-postgresql",
                "DAGSTER_K8S_SERVICE_ACCOUNT": "vlmrl-runner"}


@pytest.fixture()
def reload_definitions(monkeypatch):
    """Reload orchestration.definitions under a patched environment, then restore it."""
    def load():
        return importlib.reload(orchestration.definitions).defs
    yield load
    monkeypatch.undo()
    importlib.reload(orchestration.definitions)


@pytest.mark.parametrize(("value", "name"), [
    (None, "in_process"), ("in_process", "in_process"), ("multiprocess", "multiprocess"),
    ("k8s", "k8s")])
def test_executor_from_env(value, name, monkeypatch, reload_definitions, tmp_path):
    # No cluster config anywhere: loading the definitions must not need one.
    for var in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "VLMRL_K8S_KUBECONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    if value is None:
        monkeypatch.delenv("VLMRL_EXECUTOR", raising=False)
    else:
        monkeypatch.setenv("VLMRL_EXECUTOR", value)
    defs = reload_definitions()
    assert defs.executor.name == name
    # Jobs built from the Definitions inherit it (UI materializations use it too).
    assert defs.resolve_job_def("pipeline").executor_def.name == name


def test_executor_options():
    mp = executor_from_env({"VLMRL_EXECUTOR": "multiprocess", "VLMRL_MAX_CONCURRENT": "3"})
    assert mp.name == "multiprocess"
    with pytest.raises(ValueError, match="VLMRL_EXECUTOR"):
        executor_from_env({"VLMRL_EXECUTOR": "kubernetes-typo"})
    cfg = k8s_executor_config({"VLMRL_K8S_NAMESPACE": "ml", "VLMRL_K8S_MAX_CONCURRENT": "3",
                               "VLMRL_K8S_ENV_SECRETS": "a, b", "VLMRL_ARTIFACTS": "s3://bkt/art"})
    result = process_config(k8s_job_executor.config_schema.config_type, cfg)
    assert result.success, result.errors
    assert cfg["job_namespace"] == "ml" and cfg["max_concurrent"] == 3
    assert cfg["env_secrets"] == ["a", "b"]
    assert cfg["env_vars"] == ["VLMRL_ARTIFACTS=s3://bkt/art"]  # unset names are not forwarded
    bad = process_config(k8s_job_executor.config_schema.config_type, {**cfg, "max_concurent": 3})
    assert not bad.success


def gpu_asset(tags: dict[str, Any]):
    @asset(name=GPU_ASSET_NAMES[0], op_tags=tags, pool=GPU_POOL)
    def _gpu_asset() -> None: ...
    return _gpu_asset


@pytest.fixture()
def k8s(tmp_path, monkeypatch, offline_kubeconfig):
    """The launcher of deploy/dagster-k8s.yaml and the k8s executor, both built offline."""
    for k, v in LAUNCHER_ENV.items():
        monkeypatch.setenv(k, v)
    kubeconfig = offline_kubeconfig
    instance_yaml = yaml.safe_load((REPO / "deploy" / "dagster-k8s.yaml").read_text())
    launcher_cfg = instance_yaml["run_launcher"]["config"]
    parsed = process_config(K8sRunLauncher.config_type(), {
        **launcher_cfg, "load_incluster_config": False, "kubeconfig_file": str(kubeconfig)})
    assert parsed.success, parsed.errors
    launcher = K8sRunLauncher(**parsed.value)

    exec_cfg = k8s_executor_config({"VLMRL_K8S_IMAGE": "registry.example/vlmrl:1",
                                    "VLMRL_K8S_KUBECONFIG": str(kubeconfig),
                                    "VLMRL_ARTIFACTS": "s3://bucket/artifacts"})
    processed = process_config(k8s_job_executor.config_schema.config_type, exec_cfg)
    assert processed.success, processed.errors
    job = Definitions(assets=[gpu_asset(gpu_tags())], jobs=[define_asset_job("p")]).resolve_job_def("p")
    with DagsterInstance.ephemeral() as instance:
        executor = k8s_job_executor.executor_creation_fn(InitExecutorContext(
            job=InMemoryJob(job), executor_def=k8s_job_executor,
            executor_config=processed.value, instance=instance))
    yield launcher, executor._step_handler


def step_job(k8s, op_tags: dict[str, str], step_key: str = GPU_ASSET_NAMES[0]) -> dict[str, Any]:
    """The Job K8sStepHandler.launch_step would submit for a step with these op tags, as JSON."""
    launcher, handler = k8s
    # As K8sStepHandler._get_container_context: run launcher, executor, then the step's tags.
    context = (K8sContainerContext.create_for_run(DagsterRun(job_name="p", run_id=RUN_ID), launcher,
                                                  include_run_tags=False)
               .merge(handler._executor_container_context)
               .merge(K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(op_tags))))
    name = f"dagster-step-{get_k8s_job_name(RUN_ID, step_key)}"
    job = construct_dagster_k8s_job(
        job_config=context.get_k8s_job_config(handler._executor_image, launcher),
        args=["dagster", "api", "execute_step"], job_name=name, pod_name=name,
        component="step_worker", user_defined_k8s_config=context.run_k8s_config,
        labels={"dagster/job": "p", "dagster/op": step_key, "dagster/run-id": RUN_ID},
        env_vars=[{"name": "DAGSTER_RUN_STEP_KEY", "value": step_key}])
    assert context.namespace == "vlmrl"
    return kubernetes.client.ApiClient().sanitize_for_serialization(job)


def test_gpu_step_job_validates(k8s):
    tolerations = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                   {"key": "cloud.example/spot", "operator": "Equal", "value": "true",
                    "effect": "NoSchedule"}]
    definition = gpu_asset(gpu_tags(4, cpu="16", memory="200Gi", node_selector={"gpu": "h100"},
                                    tolerations=tolerations, deadline_s=3 * 3600, ttl_s=86400))
    assert definition.op.pool == GPU_POOL
    job = step_job(k8s, definition.op.tags)
    assert kubernetes_validate.validate(job, K8S_VERSION, strict=True) == K8S_VERSION

    # the label the MLflow network policy admits (deploy/mlflow-networkpolicy.yaml)
    assert job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/part-of"] == "vlmrl"

    spec = job["spec"]
    assert spec["activeDeadlineSeconds"] == 3 * 3600
    assert spec["ttlSecondsAfterFinished"] == 86400
    assert spec["backoffLimit"] == 0
    pod = spec["template"]["spec"]
    assert pod["nodeSelector"] == {"gpu": "h100"}
    assert pod["tolerations"] == tolerations
    assert pod["serviceAccountName"] == "vlmrl-runner"  # from the run launcher
    (container,) = pod["containers"]
    assert container["image"] == "registry.example/vlmrl:1"
    # Exactly the tag's resources: nothing of the executor's CPU-step defaults leaks in.
    assert container["resources"] == {
        "requests": {"cpu": "16", "memory": "200Gi", "nvidia.com/gpu": "4"},
        "limits": {"memory": "200Gi", "nvidia.com/gpu": "4"}}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}} in pod["volumes"]
    env = {e["name"]: e for e in container["env"]}
    assert env["VLMRL_ARTIFACTS"]["value"] == "s3://bucket/artifacts"
    assert env["DAGSTER_PG_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "dagster-postgresql"
    assert {"secretRef": {"name": "vlmrl-secrets"}} in container["envFrom"]


def test_cpu_step_job_gets_executor_defaults(k8s):
    job = step_job(k8s, {}, step_key="sft_frames")
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["resources"] == CPU_STEP_RESOURCES
    assert "nodeSelector" not in job["spec"]["template"]["spec"]
    assert "activeDeadlineSeconds" not in job["spec"]
    assert job["spec"]["ttlSecondsAfterFinished"] == 7 * 24 * 3600


def test_gpu_tags_name_every_executor_resource():
    # dagster-k8s 0.29 deep-merges a tag's resources into the executor's (older versions
    # replaced them): a key only the executor sets would leak into the GPU pod.
    tag = gpu_tags()["dagster-k8s/config"]["container_config"]["resources"]
    for kind, values in CPU_STEP_RESOURCES.items():
        assert set(values) <= set(tag[kind])
    assert tag["requests"]["nvidia.com/gpu"] == tag["limits"]["nvidia.com/gpu"]


def test_gpus_per_step_come_from_the_environment(monkeypatch):
    # one process per GPU: a recipe launched on 4 processes needs 4-GPU step pods
    monkeypatch.setenv("VLMRL_STEP_GPUS", "4")
    res = gpu_tags()["dagster-k8s/config"]["container_config"]["resources"]
    assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"] == "4"
    assert gpu_tags(2)["dagster-k8s/config"]["container_config"]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    monkeypatch.setenv("VLMRL_STEP_GPUS", "0")
    with pytest.raises(ValueError, match="VLMRL_STEP_GPUS=0: a GPU step needs at least one GPU"):
        gpu_tags()


def with_config(change) -> dict[str, str]:
    tags = gpu_tags()
    change(tags["dagster-k8s/config"])
    return {"dagster-k8s/config": json.dumps(tags["dagster-k8s/config"])}


def test_malformed_tags_fail(k8s):
    # A typo'd key: rejected while the step's config is parsed, before any pod exists.
    typo = with_config(lambda c: c["pod_spec_config"]["tolerations"][0].update(efect="NoSchedule"))
    with pytest.raises(Exception, match="efect"):
        step_job(k8s, typo)
    typo_section = with_config(lambda c: c.update(pod_spec_confg=c.pop("pod_spec_config")))
    with pytest.raises(Exception, match="pod_spec_confg"):
        step_job(k8s, typo_section)
    # A field an older API does not know (Job successPolicy, added in 1.30): the Python
    # client accepts it, the schema of an older cluster does not.
    newer = step_job(k8s, with_config(lambda c: c["job_spec_config"].update(
        completion_mode="Indexed", success_policy={"rules": [{"succeeded_count": 1}]})))
    kubernetes_validate.validate(newer, "1.31", strict=True)
    with pytest.raises(kubernetes_validate.ValidationError, match="successPolicy"):
        kubernetes_validate.validate(newer, "1.29", strict=True)
    # And the validator itself is strict about unknown fields in the Job.
    job = step_job(k8s, gpu_asset(gpu_tags()).op.tags)
    job["spec"]["template"]["spec"]["tolerationz"] = []
    with pytest.raises(kubernetes_validate.ValidationError, match="tolerationz"):
        kubernetes_validate.validate(job, K8S_VERSION, strict=True)


def test_deploy_instance_files_agree():
    postgres = yaml.safe_load((REPO / "deploy" / "dagster-postgres.yaml").read_text())
    k8s_yaml = yaml.safe_load((REPO / "deploy" / "dagster-k8s.yaml").read_text())
    assert k8s_yaml["storage"] == postgres["storage"]
    assert k8s_yaml["concurrency"] == postgres["concurrency"]


def test_mlflow_network_policy_validates_and_admits_only_vlmrl_pods():
    """docs/deploy.md requires a network policy in front of MLflow: the shipped one is valid
    Kubernetes and admits only labelled vlmrl pods and the ingress controller."""
    policy = yaml.safe_load((REPO / "deploy" / "mlflow-networkpolicy.yaml").read_text())
    assert kubernetes_validate.validate(policy, K8S_VERSION, strict=True) == K8S_VERSION
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]
    sources = [s.get("podSelector", s.get("namespaceSelector"))["matchLabels"] for s in rule["from"]]
    assert sources == [{"app.kubernetes.io/part-of": "vlmrl"},
                       {"kubernetes.io/metadata.name": "ingress-nginx"}]
    assert rule["ports"] == [{"protocol": "TCP", "port": 5000}]

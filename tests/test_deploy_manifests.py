"""The cluster setup in deploy/, checked offline: no cluster, no registry, no network.

- Every Kubernetes object in deploy/*.yaml validates against the Kubernetes 1.31 OpenAPI
  schema (kubernetes-validate, strict: unknown fields fail), as tests/orchestration/test_k8s.py
  does for the step Jobs. The other YAML files in deploy/ are dagster.yaml instance files.
- deploy/helm/values.yaml (values for the dagster/dagster chart). Rendering the chart needs the
  chart itself, which cannot be fetched offline; `helm template` runs only where a `helm`
  binary and a local copy of the chart (VLMRL_DAGSTER_CHART) exist. Instead: every key must be
  one of the chart's documented value names (a closed subset of the chart's values schema). The
  dagster.yaml sections that the chart's instance templates write from these values are built
  here, transcribed for the keys used. They are then validated with dagster's own instance and
  K8sRunLauncher schemas and compared with deploy/dagster-k8s.yaml. The run Job that this
  launcher config makes (built offline by dagster-k8s) validates and mounts the artifacts PVC.
- deploy/Dockerfile: a small instruction parser. The checks: a CUDA base matching torch's CUDA
  build, the project installed, a numeric non-root USER, no secret-looking ENV/ARG, and an
  ignore file that admits what the image copies and keeps .venv, artifacts, dagster_home,
  .git and tests out.
- deploy/multinode-step.yaml: the Indexed Job's command parsed by accelerate's own launch
  parser, then by the `vlmrl` parser. It must use the entry point of the local path
  (`python -m vlmrl.cli train rl`), and its rendezvous host must be pod 0 of the headless Service.
- deploy/mlflow.yaml: the server's arguments parsed by `mlflow server`'s own CLI. Secrets come
  only from Secret references, the Service is ClusterIP, and the tracking URI that the pods get
  passes the server's Host check.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import jsonschema
import kubernetes_validate
import pytest
import yaml
from dagster._config import process_config
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.instance.config import (
    ConcurrencyConfig,
    PoolGranularity,
    dagster_instance_config,
)
from dagster_k8s import K8sRunLauncher

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
K8S_VERSION = "1.31"  # as tests/orchestration/test_k8s.py
NAMESPACE = "vlmrl"
# dagster.yaml instance files (not Kubernetes objects), tested in tests/orchestration/.
INSTANCE_FILES = {"dagster-k8s.yaml", "dagster-postgres.yaml"}
MANIFEST_FILES = sorted(p.name for p in DEPLOY.glob("*.yaml") if p.name not in INSTANCE_FILES)
PART_OF = {"app.kubernetes.io/part-of": "vlmrl"}  # admitted by deploy/mlflow-networkpolicy.yaml


def docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d is not None]


def objects() -> dict[tuple[str, str], dict[str, Any]]:
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for name in MANIFEST_FILES:
        for doc in docs(name):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in out, f"{key} defined twice in deploy/"
            out[key] = doc
    return out


def obj(kind: str, name: str) -> dict[str, Any]:
    return objects()[(kind, name)]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def shared_env() -> dict[str, str]:
    return obj("ConfigMap", "vlmrl-env")["data"]


def helm_values() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())


def instance_yaml() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "dagster-k8s.yaml").read_text())


# --------------------------------------------------------------------------------------------
# Kubernetes manifests


def test_deploy_yaml_files_are_manifests_or_instance_files():
    # A new YAML file in deploy/ is either a dagster.yaml (listed above) or Kubernetes objects:
    # nothing escapes validation by looking like neither.
    for name in INSTANCE_FILES:
        (doc,) = docs(name)
        assert "storage" in doc and "apiVersion" not in doc
    assert {"mlflow.yaml", "mlflow-networkpolicy.yaml", "multinode-step.yaml",
            "vlmrl-shared.yaml"} <= set(MANIFEST_FILES)
    for name in MANIFEST_FILES:
        for doc in docs(name):
            assert {"apiVersion", "kind", "metadata"} <= set(doc), name


@pytest.mark.parametrize("name", MANIFEST_FILES)
def test_manifest_validates(name):
    for doc in docs(name):
        assert kubernetes_validate.validate(doc, K8S_VERSION, strict=True) == K8S_VERSION
        assert doc["metadata"]["namespace"] == NAMESPACE, (name, doc["kind"])


def test_validation_is_strict():
    job = obj("Job", "vlmrl-rl-multinode")
    job["spec"]["completionMod"] = job["spec"].pop("completionMode")
    with pytest.raises(kubernetes_validate.ValidationError, match="completionMod"):
        kubernetes_validate.validate(job, K8S_VERSION, strict=True)


def test_namespace_agrees_everywhere():
    values = helm_values()
    assert values["runLauncher"]["config"]["k8sRunLauncher"]["jobNamespace"] == NAMESPACE
    assert shared_env()["VLMRL_K8S_NAMESPACE"] == NAMESPACE


# --------------------------------------------------------------------------------------------
# The multi-node training Job


def multinode() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    job = obj("Job", "vlmrl-rl-multinode")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return job, job["spec"]["template"]["spec"], container


def expand(arg: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command and args; only declared variables expand."""
    def sub(m: re.Match) -> str:
        assert m.group(1) in env, f"$({m.group(1)}) is not declared in the container's env"
        return env[m.group(1)]
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", sub, arg)


def launch_args(rank: int) -> list[str]:
    """The container's command as pod `rank` of the Indexed Job runs it."""
    _, _, container = multinode()
    env = {k: e["value"] for k, e in env_of(container).items() if "value" in e}
    env["JOB_COMPLETION_INDEX"] = str(rank)
    return [expand(a, env) for a in container["command"] + container.get("args", [])]


def test_multinode_job_is_indexed_with_matching_counts():
    job, pod, container = multinode()
    spec = job["spec"]
    env = env_of(container)
    nodes, gpus = int(env["NNODES"]["value"]), int(env["GPUS_PER_NODE"]["value"])
    assert spec["completionMode"] == "Indexed"
    assert spec["parallelism"] == spec["completions"] == nodes >= 2
    assert int(env["NUM_PROCESSES"]["value"]) == nodes * gpus
    resources = container["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == str(gpus)
    # The Job controller's own source of the index: declaring it makes $(...) expand.
    index = env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert index == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    assert pod["restartPolicy"] == "Never" and spec["backoffLimit"] == 0
    assert spec["activeDeadlineSeconds"] > 0


def test_multinode_rendezvous_host_is_pod_zero_of_the_headless_service():
    job, pod, container = multinode()
    service = obj("Service", pod["subdomain"])
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    # Indexed Job pods are named <job>-<index>, and their hostname is that name in the subdomain.
    expected = f"{job['metadata']['name']}-0.{service['metadata']['name']}.{NAMESPACE}.svc.cluster.local"
    for rank in range(job["spec"]["parallelism"]):
        args = launch_args(rank)
        assert args[args.index("--main_process_ip") + 1] == expected
        port = int(args[args.index("--main_process_port") + 1])
        assert port in {p["port"] for p in service["spec"]["ports"]}
        assert port in {p["containerPort"] for p in container["ports"]}


@pytest.mark.parametrize("rank", [0, 1])
def test_multinode_command_is_the_local_cli_under_accelerate(rank, tmp_path):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    from vlmrl.cli import build_parser
    from vlmrl.cli.train import cmd_rl
    from vlmrl.recipes import recipe_path

    job, pod, container = multinode()
    args = launch_args(rank)
    assert args[:2] == ["accelerate", "launch"]
    launch = launch_command_parser().parse_args(args[2:])
    env = env_of(container)
    assert launch.machine_rank == rank
    assert launch.num_machines == job["spec"]["parallelism"]
    assert launch.num_processes == int(env["NUM_PROCESSES"]["value"])
    # The same entry point as the local path: `vlmrl` is vlmrl.cli:main, run as a module.
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert launch.module is True
    assert launch.training_script == pyproject["project"]["scripts"]["vlmrl"].split(":")[0] == "vlmrl.cli"
    assert (REPO / "vlmrl" / "cli" / "__main__.py").is_file()
    cli = build_parser().parse_args(launch.training_script_args)
    assert (cli.command, cli.train_command, cli.func) == ("train", "rl", cmd_rl)
    assert recipe_path(cli.recipe).is_file()  # a recipe shipped in configs/
    artifacts = shared_env()["VLMRL_ARTIFACTS"]
    for path in (cli.sft, cli.frames, cli.out):
        assert Path(path).is_relative_to(artifacts)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    claim = volumes[mounts[artifacts]]["persistentVolumeClaim"]["claimName"]
    assert obj("PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadWriteMany"]
    # The accelerate config file is the ConfigMap mounted there, and accelerate accepts it.
    config_dir, config_name = os.path.split(launch.config_file)
    config_map = volumes[mounts[config_dir]]["configMap"]["name"]
    config_file = tmp_path / config_name
    config_file.write_text(obj("ConfigMap", config_map)["data"][config_name])
    config = load_config_from_file(str(config_file))
    assert config.distributed_type == "MULTI_GPU"
    assert config.num_machines == launch.num_machines
    assert config.num_processes == launch.num_processes


def test_multinode_pod_matches_gpu_steps_and_shared_settings(monkeypatch):
    from orchestration.executors import gpu_tags

    monkeypatch.delenv("VLMRL_GPU_NODE_SELECTOR", raising=False)
    monkeypatch.delenv("VLMRL_GPU_TOLERATIONS", raising=False)
    job, pod, container = multinode()
    defaults = gpu_tags()["dagster-k8s/config"]["pod_spec_config"]
    assert pod["nodeSelector"] == defaults["node_selector"]
    assert pod["tolerations"] == defaults["tolerations"]
    assert PART_OF.items() <= job["spec"]["template"]["metadata"]["labels"].items()
    assert {"configMapRef": {"name": "vlmrl-env"}} in container["envFrom"]
    assert {"secretRef": {"name": "vlmrl-secrets"}} in container["envFrom"]
    assert container["image"] == code_location_image()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == image_uid()
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]


def test_multinode_undeclared_variable_is_caught():
    with pytest.raises(AssertionError, match="MASTER_ADDR"):
        expand("$(MASTER_ADDR)", {"NNODES": "2"})


# --------------------------------------------------------------------------------------------
# MLflow


def mlflow_container() -> dict[str, Any]:
    (container,) = obj("Deployment", "mlflow")["spec"]["template"]["spec"]["containers"]
    return container


def test_mlflow_server_arguments_parse_and_carry_no_secret(monkeypatch):
    from mlflow.cli import server

    for var in ("MLFLOW_BACKEND_STORE_URI", "MLFLOW_DEFAULT_ARTIFACT_ROOT",
                "MLFLOW_ARTIFACTS_DESTINATION"):
        monkeypatch.delenv(var, raising=False)
    container = mlflow_container()
    assert container["command"] == ["mlflow", "server"]
    params = server.make_context("server", list(container["args"])).params
    assert params["host"] == "0.0.0.0" and params["port"] == 5000
    assert params["app_name"] == "basic-auth"
    assert params["artifacts_destination"].startswith("s3://")
    assert params["serve_artifacts"] is True
    assert params["backend_store_uri"] is None  # not on the command line...
    env = env_of(container)
    backend = env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]  # ...but from a Secret
    assert backend["name"] == "mlflow-secrets"
    assert not any(re.search(r"://[^/\s]*:[^/\s]*@", a) for a in container["args"])
    for name, var in env.items():
        if re.search(r"PASSWORD|SECRET|KEY|URI", name) and name != "MLFLOW_AUTH_CONFIG_PATH":
            assert "value" not in var and "secretKeyRef" in var["valueFrom"], name


def test_mlflow_is_cluster_internal_and_reachable_by_the_pods():
    from mlflow.server.security_utils import is_allowed_host_header

    deployment, service = obj("Deployment", "mlflow"), obj("Service", "mlflow")
    pod = deployment["spec"]["template"]
    container = mlflow_container()
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (port,) = service["spec"]["ports"]
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container_ports[port["targetPort"]] == 5000
    # The network policy selects these pods and opens exactly this port.
    policy = obj("NetworkPolicy", "mlflow-ingress")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert [p["port"] for p in policy["spec"]["ingress"][0]["ports"]] == [5000]
    # The tracking URI the pods get names this Service, and the server accepts its Host header.
    uri = urlparse(shared_env()["MLFLOW_TRACKING_URI"])
    assert uri.hostname == f"{service['metadata']['name']}.{NAMESPACE}.svc.cluster.local"
    assert uri.port == port["port"]
    args = container["args"]
    allowed = args[args.index("--allowed-hosts") + 1].split(",")
    assert is_allowed_host_header(allowed, uri.netloc)
    assert not is_allowed_host_header(allowed, "attacker.example:5000")


def test_mlflow_pod_is_non_root_with_requests():
    pod = obj("Deployment", "mlflow")["spec"]["template"]["spec"]
    container = mlflow_container()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    # The image is the Dockerfile's mlflow-server stage, at the MLflow version it pins.
    tag = container["image"].rsplit(":", 1)[1]
    assert tag == dockerfile_args()["MLFLOW_VERSION"]
    assert "mlflow-server" in {s["name"] for s in dockerfile_stages()}


# --------------------------------------------------------------------------------------------
# Dockerfile


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: continuation lines joined, comments and blanks dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        instruction, _, rest = (buf + line).partition(" ")
        out.append((instruction.upper(), rest.strip()))
        buf = ""
    assert not buf, "Dockerfile ends inside a continuation"
    return out


def dockerfile_text() -> str:
    return (DEPLOY / "Dockerfile").read_text()


def dockerfile_args(text: str | None = None) -> dict[str, str]:
    """The global ARGs (before the first FROM) and their defaults."""
    args: dict[str, str] = {}
    for instruction, rest in dockerfile_instructions(dockerfile_text() if text is None else text):
        if instruction == "FROM":
            break
        if instruction == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
    return args


def dockerfile_stages(text: str | None = None) -> list[dict[str, Any]]:
    text = dockerfile_text() if text is None else text
    instructions = dockerfile_instructions(text)
    args = dockerfile_args(text)
    stages: list[dict[str, Any]] = []
    for instruction, rest in instructions:
        if instruction == "FROM":
            parts = rest.split()
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], parts[0])
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append({"image": image, "name": name, "instructions": []})
        elif stages:
            stages[-1]["instructions"].append((instruction, rest))
    return stages


def env_names(rest: str) -> list[str]:
    """The variable names an ENV instruction sets (`ENV A=1 B=2` or `ENV A 1`)."""
    tokens = shlex.split(rest)
    if tokens and "=" not in tokens[0]:
        return [tokens[0]]
    return [t.split("=", 1)[0] for t in tokens]


def final_stage() -> dict[str, Any]:
    return dockerfile_stages()[-1]  # what `docker build` without --target produces


def image_uid() -> int:
    users = [rest for i, rest in final_stage()["instructions"] if i == "USER"]
    return int(users[-1].split(":")[0])


def code_location_image() -> str:
    (deployment,) = helm_values()["dagster-user-deployments"]["deployments"]
    return f"{deployment['image']['repository']}:{deployment['image']['tag']}"


def test_dockerfile_parser():
    text = "ARG B=ubuntu:24.04\nFROM ${B} AS x\n# c\nRUN a \\\n  && b\nUSER 10\n"
    (stage,) = dockerfile_stages(text)
    assert (stage["image"], stage["name"]) == ("ubuntu:24.04", "x")
    assert stage["instructions"] == [("RUN", "a  && b"), ("USER", "10")]
    assert dockerfile_instructions(text) == [("ARG", "B=ubuntu:24.04"), ("FROM", "${B} AS x"),
                                             ("RUN", "a  && b"), ("USER", "10")]
    assert env_names("A=1 B='x y'") == ["A", "B"] and env_names("A 1") == ["A"]


def test_dockerfile_final_stage_is_cuda_matching_torch():
    stage = final_stage()
    assert stage["image"].startswith("nvidia/cuda:")
    cuda_major = stage["image"].split(":")[1].split(".")[0]
    # torch's pinned Linux build names the CUDA runtime it brings as wheels.
    pins = [r for r in importlib.metadata.requires("torch") or []
            if re.match(r"(cuda-toolkit|nvidia-cuda-runtime)", r) and "Linux" in r]
    versions = [m.group(1) for r in pins if (m := re.search(r"==(\d+)\.", r))]
    versions += [m.group(1) for r in pins if (m := re.match(r"nvidia-cuda-runtime-cu(\d+)", r))]
    if versions:  # a CPU-only torch in this venv names none
        assert cuda_major in versions, (stage["image"], pins)


def test_dockerfile_installs_the_project_as_a_non_root_user():
    stage = final_stage()
    instructions = stage["instructions"]
    kinds = [i for i, _ in instructions]
    assert "WORKDIR" in kinds
    uid = image_uid()
    assert uid != 0
    assert kinds.index("USER") > max(i for i, k in enumerate(kinds) if k == "RUN")  # last RUN as root
    commands = [shlex.split(c) for i, rest in instructions if i == "RUN" for c in rest.split("&&")]
    installs = [c for c in commands if c[:2] == ["pip", "install"]]
    assert any(c[-1] == "." for c in installs), installs  # the project itself
    assert any("requirements.txt" in " ".join(c) for c in installs)  # its dependencies
    # Named recipes resolve beside the package: the image must carry configs/ there.
    from vlmrl.recipes import CONFIG_DIR

    copies = [shlex.split(rest) for i, rest in instructions if i == "COPY"]
    sources = {s.rstrip("/") for c in copies for s in c[:-1] if not s.startswith("--")}
    assert CONFIG_DIR.relative_to(REPO).as_posix() in sources
    assert {"vlmrl", "orchestration", "pyproject.toml"} <= sources
    # Every stage runs as a numeric non-root user (Kubernetes runAsNonRoot can verify it).
    for s in dockerfile_stages():
        users = [rest for i, rest in s["instructions"] if i == "USER"]
        assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0", s["name"]
    (deployment,) = helm_values()["dagster-user-deployments"]["deployments"]
    assert deployment["podSecurityContext"]["runAsUser"] == uid


SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIAL|API_?KEY|ACCESS_?KEY|PRIVATE", re.I)


def test_dockerfile_bakes_in_no_secret():
    names = [n for s in dockerfile_stages() for i, rest in s["instructions"] if i == "ENV"
             for n in env_names(rest)]
    names += [rest.split("=")[0] for i, rest in dockerfile_instructions(dockerfile_text()) if i == "ARG"]
    assert "DAGSTER_HOME" in names  # the parser sees the ENV lines at all
    assert not [n for n in names if SECRET_NAME.search(n)]
    assert SECRET_NAME.search("AWS_SECRET_ACCESS_KEY") and SECRET_NAME.search("MLFLOW_TRACKING_PASSWORD")


def ignore_rules() -> list[tuple[bool, re.Pattern]]:
    """deploy/Dockerfile.dockerignore as (re-include?, pattern) in order; the last match wins."""
    rules = []
    for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern):
            regex += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
        rules.append((negate, re.compile(regex)))
    return rules


def ignored(path: str) -> bool:
    """Docker's rule: a path is excluded when a pattern matches it or one of its parents."""
    parts = path.split("/")
    excluded = False
    for negate, regex in ignore_rules():
        if any(regex.fullmatch("/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            excluded = not negate
    return excluded


def test_dockerignore_admits_what_the_image_copies_and_nothing_else():
    copied = [s for s in dockerfile_stages()[-1]["instructions"] if s[0] == "COPY"]
    for _, rest in copied:
        for source in shlex.split(rest)[:-1]:
            path = REPO / source
            assert path.exists(), source
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()
                                                   and "__pycache__" not in p.parts]
            for f in files:
                assert not ignored(f.relative_to(REPO).as_posix()), f
    for kept_out in (".venv/bin/python", "artifacts/mlflow.db", "dagster_home/dagster.yaml",
                     ".git/HEAD", "tests/conftest.py", "deploy/mlflow.yaml", ".env",
                     "vlmrl/__pycache__/x.cpython-312.pyc"):
        assert ignored(kept_out), kept_out


# --------------------------------------------------------------------------------------------
# Helm values


def closed(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required),
            "additionalProperties": False}


ANY: dict[str, Any] = {}
ENV_REFS = {"type": "array", "items": closed({"name": {"type": "string"}}, ("name",))}
IMAGE = closed({"repository": {"type": "string"}, "tag": {"type": "string"},
                "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]}}, ("repository",))
# The value names of the dagster/dagster chart (its values.schema.json and instance templates),
# closed to the keys documented there: a misspelt key fails here instead of being ignored by helm.
CHART_VALUES_SUBSET = closed({
    "global": closed({"postgresqlSecretName": {"type": "string"}, "dagsterHome": ANY,
                      "serviceAccountName": ANY, "celeryConfigSecretName": ANY}),
    "postgresql": closed({
        "enabled": {"type": "boolean"}, "image": ANY, "postgresqlHost": {"type": "string"},
        "postgresqlUsername": {"type": "string"}, "postgresqlPassword": {"type": "string"},
        "postgresqlDatabase": {"type": "string"}, "postgresqlParams": {"type": "object"},
        "postgresqlScheme": {"type": "string"}, "service": closed({"port": {"type": "integer"}})}),
    "generatePostgresqlPasswordSecret": {"type": "boolean"},
    "dagster-user-deployments": closed({
        "enabled": {"type": "boolean"}, "enableSubchart": {"type": "boolean"},
        "imagePullSecrets": ANY,
        "deployments": {"type": "array", "items": closed({
            "name": {"type": "string"}, "image": IMAGE,
            "dagsterApiGrpcArgs": {"type": "array", "items": {"type": "string"}},
            "codeServerArgs": {"type": "array", "items": {"type": "string"}},
            "includeConfigInLaunchedRuns": closed({"enabled": {"type": "boolean"}}),
            "deploymentNamespace": ANY, "port": {"type": "integer"}, "env": ANY,
            "envConfigMaps": ENV_REFS, "envSecrets": ENV_REFS, "annotations": ANY,
            "nodeSelector": ANY, "affinity": ANY, "tolerations": ANY, "podSecurityContext": ANY,
            "securityContext": ANY, "resources": ANY, "livenessProbe": ANY, "readinessProbe": ANY,
            "startupProbe": ANY, "labels": {"type": "object"}, "volumeMounts": ANY, "volumes": ANY,
            "schedulerName": ANY, "initContainers": ANY, "sidecarContainers": ANY},
            ("name", "image", "port"))}}),
    "runLauncher": closed({
        "type": {"enum": ["K8sRunLauncher", "CeleryK8sRunLauncher", "CustomRunLauncher"]},
        "config": closed({"k8sRunLauncher": closed({
            "image": ANY, "imagePullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
            "jobNamespace": {"type": ["string", "null"]}, "loadInclusterConfig": {"type": "boolean"},
            "kubeconfigFile": ANY, "envConfigMaps": ENV_REFS, "envSecrets": ENV_REFS,
            "envVars": {"type": "array", "items": {"type": "string"}},
            "volumeMounts": {"type": "array"}, "volumes": {"type": "array"},
            "labels": {"type": "object"}, "failPodOnRunFailure": ANY, "resources": ANY,
            "schedulerName": ANY, "securityContext": ANY, "runK8sConfig": ANY})})},
        ("type", "config")),
    "dagsterDaemon": closed({
        "enabled": {"type": "boolean"},
        "runCoordinator": closed({
            "enabled": {"type": "boolean"}, "type": {"enum": ["QueuedRunCoordinator",
                                                              "CustomRunCoordinator"]},
            "config": closed({"queuedRunCoordinator": closed({
                "maxConcurrentRuns": ANY, "tagConcurrencyLimits": ANY,
                "dequeueIntervalSeconds": ANY, "dequeueNumWorkers": ANY,
                "dequeueUseThreads": ANY, "blockOpConcurrencyLimitedRuns": ANY})})}),
        "runMonitoring": closed({
            "enabled": {"type": "boolean"}, "startTimeoutSeconds": {"type": "integer"},
            "cancelTimeoutSeconds": {"type": "integer"}, "maxResumeRunAttempts": {"type": "integer"},
            "maxRuntimeSeconds": {"type": "integer"}, "pollIntervalSeconds": {"type": "integer"},
            "freeSlotsAfterRunEndSeconds": {"type": "integer"}}),
        "runRetries": ANY, "sensors": ANY, "schedules": ANY, "heartbeatTolerance": ANY,
        "env": ANY, "envConfigMaps": ENV_REFS, "envSecrets": ENV_REFS, "resources": ANY}),
    "concurrency": closed({
        "enabled": {"type": "boolean"},
        "pools": closed({"defaultLimit": {"type": "integer"},
                         "granularity": {"enum": ["op", "run"]},
                         "opGranularityRunBuffer": {"type": "integer"}}),
        "runs": closed({"maxConcurrentRuns": {"type": "integer"},
                        "tagConcurrencyLimits": {"type": "array"}})}),
    "telemetry": closed({"enabled": {"type": "boolean"}}),
    "dagsterWebserver": {"type": "object"}, "computeLogManager": {"type": "object"},
    "imagePullSecrets": ANY, "serviceAccount": ANY, "rbacEnabled": ANY, "retention": ANY,
    "additionalInstanceConfig": ANY,
})


def test_helm_values_use_only_the_charts_value_names():
    jsonschema.validate(helm_values(), CHART_VALUES_SUBSET)
    # A misspelt key (which helm would silently ignore) fails the check.
    for path, typo in ((["dagsterDaemon", "runMonitoring"], "maxRuntimeSecond"),
                       (["runLauncher", "config", "k8sRunLauncher"], "envConfigMap"),
                       (["dagster-user-deployments", "deployments", 0], "codeServerArg"),
                       (["concurrency", "pools"], "default_limit")):
        values = helm_values()
        node = values
        for key in path:
            node = node[key]
        node[typo] = 1
        with pytest.raises(jsonschema.ValidationError, match=typo):
            jsonschema.validate(values, CHART_VALUES_SUBSET)


def chart_instance_config(values: dict[str, Any]) -> dict[str, Any]:
    """The dagster.yaml sections the chart's configmap-instance template writes from `values`.

    Transcribed from the chart's instance helpers for the keys these values set. This is a model
    of the chart, not the chart: `helm template` is the authority (see the test below).
    """
    pg = values["postgresql"]
    pg_config = {"postgres_db": {
        "username": pg["postgresqlUsername"], "password": {"env": "DAGSTER_PG_PASSWORD"},
        "hostname": pg["postgresqlHost"], "db_name": pg["postgresqlDatabase"],
        "port": pg["service"]["port"], "params": pg.get("postgresqlParams", {}),
        "scheme": pg["postgresqlScheme"]}}
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    daemon = values["dagsterDaemon"]
    monitoring = daemon["runMonitoring"]
    concurrency = values["concurrency"]
    snake = {"startTimeoutSeconds": "start_timeout_seconds",
             "cancelTimeoutSeconds": "cancel_timeout_seconds",
             "maxResumeRunAttempts": "max_resume_run_attempts",
             "maxRuntimeSeconds": "max_runtime_seconds",
             "pollIntervalSeconds": "poll_interval_seconds",
             "freeSlotsAfterRunEndSeconds": "free_slots_after_run_end_seconds"}
    out: dict[str, Any] = {
        **{f"{kind}_storage": {"module": f"dagster_postgres.{module}", "class": cls, "config": pg_config}
           for kind, module, cls in (("run", "run_storage", "PostgresRunStorage"),
                                     ("event_log", "event_log", "PostgresEventLogStorage"),
                                     ("schedule", "schedule_storage", "PostgresScheduleStorage"))},
        "run_launcher": {"module": "dagster_k8s", "class": "K8sRunLauncher", "config": {
            "load_incluster_config": launcher["loadInclusterConfig"],
            "job_namespace": launcher["jobNamespace"],
            "image_pull_policy": launcher["imagePullPolicy"],
            "service_account_name": "dagster",
            "dagster_home": {"env": "DAGSTER_HOME"},
            "instance_config_map": {"env": "DAGSTER_K8S_INSTANCE_CONFIG_MAP"},
            "postgres_password_secret": {"env": "DAGSTER_K8S_PG_PASSWORD_SECRET"},
            "env_config_maps": [{"env": "DAGSTER_K8S_PIPELINE_RUN_ENV_CONFIGMAP"}]
            + [c["name"] for c in launcher["envConfigMaps"]],
            "env_secrets": [s["name"] for s in launcher["envSecrets"]],
            "env_vars": launcher["envVars"],
            "volume_mounts": launcher["volumeMounts"],
            "volumes": launcher["volumes"],
            "labels": launcher["labels"]}},
        "run_coordinator": {"module": "dagster.core.run_coordinator",
                            "class": daemon["runCoordinator"]["type"]},
        "run_monitoring": {"enabled": monitoring["enabled"],
                           **{snake[k]: v for k, v in monitoring.items() if k in snake}},
        "telemetry": {"enabled": values["telemetry"]["enabled"]},
    }
    qrc = daemon["runCoordinator"].get("config", {}).get("queuedRunCoordinator", {})
    if qrc.get("maxConcurrentRuns") is not None:
        out["run_coordinator"]["config"] = {"max_concurrent_runs": qrc["maxConcurrentRuns"]}
    if concurrency.get("enabled"):
        pools, runs = concurrency["pools"], concurrency["runs"]
        out["concurrency"] = {
            "pools": {"default_limit": pools["defaultLimit"], "granularity": pools["granularity"]},
            "runs": {"max_concurrent_runs": runs["maxConcurrentRuns"],
                     **({"tag_concurrency_limits": runs["tagConcurrencyLimits"]}
                        if runs["tagConcurrencyLimits"] else {})}}
    return out


def write_instance(tmp_path: Path, config: dict[str, Any]) -> Path:
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


def test_helm_values_produce_a_valid_instance_like_deploy_dagster_k8s(tmp_path, monkeypatch):
    rendered = chart_instance_config(helm_values())
    # dagster's own instance schema and its concurrency / run-queue conflict rules.
    config, _ = dagster_instance_config(str(write_instance(tmp_path, rendered)))
    assert config["run_monitoring"]["enabled"] is True
    assert config["run_monitoring"]["max_runtime_seconds"] > 2 * 2 * 24 * 3600  # two GPU Jobs
    assert config["run_monitoring"]["free_slots_after_run_end_seconds"] > 0
    concurrency = ConcurrencyConfig.from_concurrency_settings(config["concurrency"], None)
    assert concurrency.pool_config.pool_granularity == PoolGranularity.OP

    # The K8sRunLauncher accepts the launcher config (env-sourced fields resolved as in a pod).
    for var, value in {"DAGSTER_HOME": "/opt/dagster/dagster_home",
                       "DAGSTER_K8S_INSTANCE_CONFIG_MAP": "dagster-instance",
                       "DAGSTER_K8S_PG_PASSWORD_SECRET": "dagster-postgresql-secret",
                       "DAGSTER_K8S_PIPELINE_RUN_ENV_CONFIGMAP": "dagster-pipeline-env"}.items():
        monkeypatch.setenv(var, value)
    launcher = rendered["run_launcher"]["config"]
    parsed = process_config(K8sRunLauncher.config_type(), launcher)
    assert parsed.success, parsed.errors

    # The same instance as deploy/dagster-k8s.yaml, the file the docs describe.
    reference = instance_yaml()
    assert rendered["concurrency"] == reference["concurrency"]
    assert rendered["telemetry"] == reference["telemetry"]
    assert rendered["run_storage"]["config"]["postgres_db"]["scheme"] == \
        reference["storage"]["postgres"]["postgres_db"]["scheme"]
    ref_launcher = reference["run_launcher"]["config"]
    assert launcher["labels"] == ref_launcher["labels"] == PART_OF
    assert launcher["env_config_maps"][1:] == ref_launcher["env_config_maps"]
    assert launcher["env_secrets"] == ref_launcher["env_secrets"]
    assert "resources" not in launcher and "resources" not in ref_launcher
    assert launcher["job_namespace"] == NAMESPACE




def test_helm_launcher_builds_a_valid_run_pod_with_the_shared_volume(tmp_path, monkeypatch,
                                                                   offline_kubeconfig):
    """The run Job the chart's K8sRunLauncher would create, built offline (as test_k8s.py)."""
    import kubernetes
    from dagster import DagsterRun
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import construct_dagster_k8s_job, get_job_name_from_run_id

    for var, value in {"DAGSTER_HOME": "/opt/dagster/dagster_home",
                       "DAGSTER_K8S_INSTANCE_CONFIG_MAP": "dagster-instance",
                       "DAGSTER_K8S_PG_PASSWORD_SECRET": "dagster-postgresql-secret",
                       "DAGSTER_K8S_PIPELINE_RUN_ENV_CONFIGMAP": "dagster-pipeline-env"}.items():
        monkeypatch.setenv(var, value)
    config = chart_instance_config(helm_values())["run_launcher"]["config"]
    parsed = process_config(K8sRunLauncher.config_type(), {
        **config, "load_incluster_config": False, "kubeconfig_file": str(offline_kubeconfig)})
    assert parsed.success, parsed.errors
    launcher = K8sRunLauncher(**parsed.value)
    run_id = "0123456789abcdef0123456789abcdef"
    context = K8sContainerContext.create_for_run(DagsterRun(job_name="pipeline", run_id=run_id),
                                                 launcher, include_run_tags=False)
    name = get_job_name_from_run_id(run_id)
    job = construct_dagster_k8s_job(
        job_config=context.get_k8s_job_config(code_location_image(), launcher),
        args=["dagster", "api", "execute_run"], job_name=name, pod_name=name,
        component="run_worker", user_defined_k8s_config=context.run_k8s_config,
        labels={"dagster/job": "pipeline", "dagster/run-id": run_id})
    job = kubernetes.client.ApiClient().sanitize_for_serialization(job)
    assert kubernetes_validate.validate(job, K8S_VERSION, strict=True) == K8S_VERSION
    pod = job["spec"]["template"]
    assert PART_OF.items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    assert container["image"] == code_location_image()
    assert {"configMapRef": {"name": "vlmrl-env"}} in container["envFrom"]
    assert {"secretRef": {"name": "vlmrl-secrets"}} in container["envFrom"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    (claim,) = [(n, v["persistentVolumeClaim"]["claimName"]) for n, v in volumes.items()
                if "persistentVolumeClaim" in v]
    assert mounts[claim[0]] == shared_env()["VLMRL_ARTIFACTS"]
    assert claim[1] == "vlmrl-artifacts"
    assert "resources" not in container or not container["resources"]


def test_helm_values_conflicting_run_limits_are_rejected(tmp_path):
    # A run limit in both the run coordinator and `concurrency` is invalid (the chart fails the
    # render; dagster rejects the instance): the check above would catch it.
    values = helm_values()
    values["dagsterDaemon"]["runCoordinator"]["config"] = {
        "queuedRunCoordinator": {"maxConcurrentRuns": 10}}
    with pytest.raises(DagsterInvalidConfigError, match="max_concurrent_runs"):
        dagster_instance_config(str(write_instance(tmp_path, chart_instance_config(values))))


def test_helm_code_location_loads_the_workspace_module_with_shared_settings():
    values = helm_values()
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    workspace = yaml.safe_load((REPO / "workspace.yaml").read_text())
    (location,) = workspace["load_from"]
    module = location["python_module"]["module_name"]
    assert deployment["codeServerArgs"] == ["-m", module]
    assert importlib.util.find_spec(module) is not None
    assert PART_OF.items() <= deployment["labels"].items()
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True
    assert {"name": "vlmrl-env"} in deployment["envConfigMaps"]
    # The image the Dockerfile's CMD starts serves the same module on the same port.
    (cmd,) = [rest for i, rest in final_stage()["instructions"] if i == "CMD"]
    argv = yaml.safe_load(cmd)
    assert argv[argv.index("-m") + 1] == module
    assert argv[argv.index("-p") + 1] == str(deployment["port"])
    # Run and step pods mount the shared volume where VLMRL_ARTIFACTS points.
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    (mount,) = launcher["volumeMounts"]
    (volume,) = launcher["volumes"]
    assert mount["name"] == volume["name"]
    assert mount["mountPath"] == shared_env()["VLMRL_ARTIFACTS"]
    claim = volume["persistentVolumeClaim"]["claimName"]
    assert obj("PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadWriteMany"]
    assert shared_env()["VLMRL_EXECUTOR"] == "k8s"


def test_helm_pool_limit_covers_the_gpu_pool():
    from orchestration.definitions import GPU_ASSET_NAMES
    from orchestration.executors import GPU_POOL

    # The only pool the assets use is "gpu", which the default pool limit covers.
    assert GPU_POOL == "gpu" and GPU_ASSET_NAMES
    pools = helm_values()["concurrency"]["pools"]
    assert 1 <= pools["defaultLimit"] == instance_yaml()["concurrency"]["pools"]["default_limit"]


def test_helm_template_renders_valid_manifests(tmp_path):
    """Only where `helm` and a local copy of the dagster chart exist (no network here)."""
    helm, chart = shutil.which("helm"), os.environ.get("VLMRL_DAGSTER_CHART")
    if not (helm and chart):
        pytest.skip("needs a helm binary and VLMRL_DAGSTER_CHART (a local dagster/dagster chart)")
    out = subprocess.run([helm, "template", "dagster", chart, "--namespace", NAMESPACE,
                          "-f", str(DEPLOY / "helm" / "values.yaml")],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    rendered = [d for d in yaml.safe_load_all(out) if d]
    assert rendered
    for doc in rendered:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    (instance,) = [d for d in rendered if d["kind"] == "ConfigMap"
                   and d["metadata"]["name"].endswith("-instance")]
    config, _ = dagster_instance_config(str(write_instance(
        tmp_path, yaml.safe_load(instance["data"]["dagster.yaml"]))))
    assert config["concurrency"] == instance_yaml()["concurrency"]


def test_the_shared_recipe_gets_one_gpu_per_process():
    # every pod loads VLMRL_RECIPE; its GPU steps launch launch.num_processes processes, one per GPU
    from vlmrl.recipes import load_recipe

    env = shared_env()
    recipe = load_recipe(env["VLMRL_RECIPE"])
    assert int(env["VLMRL_STEP_GPUS"]) == recipe.launch.num_processes > 1

"""Shared test set-up: offline by construction, real fixture videos, a small synthetic set."""

from __future__ import annotations

import os
from pathlib import Path

# No hub access, ever: every model and dataset in the suite is built locally.
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[_var] = "1"
os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures" / "real"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """The real videos in ../shared/fixtures/real (read in place, never copied in)."""
    if not FIXTURES.is_dir():
        raise RuntimeError(f"real-video fixtures not found at {FIXTURES}")
    return FIXTURES


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic set (all families, every split), generated once per session."""
    from vlmrl.data.synth import SynthSizes, generate

    out = tmp_path_factory.mktemp("synth")
    generate(out, seed=0, sizes=SynthSizes(sft=16, rl=16, bench=16), progress=False)
    return out


@pytest.fixture()
def offline_kubeconfig(tmp_path: Path) -> Path:
    """A kubeconfig naming an unreachable API server (127.0.0.1:9): dagster-k8s objects can be
    built and validated offline, and any attempt to talk to a cluster fails at once."""
    path = tmp_path / "kubeconfig"
    path.write_text("""apiVersion: v1
kind: Config
clusters: [{name: offline, cluster: {server: "https://127.0.0.1:9"}}]
contexts: [{name: offline, context: {cluster: offline, user: nobody}}]
current-context: offline
users: [{name: nobody, user: {token: unused}}]
""")
    return path


# --- object storage: a real S3-compatible server (moto's server mode) on 127.0.0.1 ----------
S3_BUCKET = "vlmrl-test"
S3_KEY_ID, S3_SECRET = "vlmrl-test-key-id", "vlmrl-test-secret-value"  # moto accepts any


@pytest.fixture(scope="session")
def s3():
    """A moto S3 server on 127.0.0.1 (a free port) with one bucket: its endpoint, a boto3
    client, the fsspec ``storage_options`` that reach it, and the bucket's name."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=S3_KEY_ID, aws_secret_access_key=S3_SECRET)
    client.create_bucket(Bucket=S3_BUCKET)
    options = {"key": S3_KEY_ID, "secret": S3_SECRET,
               "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
    yield {"endpoint": endpoint, "client": client, "options": options, "bucket": S3_BUCKET}
    server.stop()


@pytest.fixture
def s3_uri(s3):
    """A fresh prefix in the bucket."""
    import uuid

    return f"s3://{s3['bucket']}/t-{uuid.uuid4().hex[:10]}"

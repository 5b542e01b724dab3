"""The Dagster UI, in a real browser, shows the pipeline's assets and their metadata.

Serves the instance in which tests/orchestration/conftest.py materialized the whole graph with
`dagster-webserver` on 127.0.0.1, and loads pages in headless Debian chromium (installed by
scripts/system-deps.sh). The UI is a React app: chromium's virtual time budget lets it
finish its GraphQL fetches before the DOM is dumped. Screenshots are kept under
tests/artifacts/ (git-ignored).
"""

import contextlib
import html
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dagster import (
    AssetKey,
    DagsterInstance,
    IntMetadataValue,
    PathMetadataValue,
    TextMetadataValue,
)

from orchestration.definitions import defs

REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / "tests" / "artifacts"
CHROMIUM = "/usr/bin/chromium"


@dataclass
class UI:
    url: str
    home: Path
    profile: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(url: str, server: subprocess.Popen, log: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"dagster-webserver exited ({server.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/server_info", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"dagster-webserver not serving after {timeout_s} s:\n{log.read_text()[-3000:]}")


def stop(server: subprocess.Popen) -> None:
    """SIGTERM the server's own process group (it and its code server), SIGKILL if it lingers."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=15)
    with contextlib.suppress(ProcessLookupError):  # its gRPC code server, if still there
        os.killpg(server.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def ui(graph, tmp_path_factory) -> Iterator[UI]:
    """Serve the instance in which conftest's `graph` materialized the whole pipeline."""
    if not os.access(CHROMIUM, os.X_OK):
        raise RuntimeError(f"{CHROMIUM} not found: run `bash scripts/system-deps.sh`")
    tmp = tmp_path_factory.mktemp("ui")
    home, art = graph.home, graph.artifacts
    port = free_port()
    log = tmp / "webserver.log"
    env = {**os.environ, "DAGSTER_HOME": str(home), "VLMRL_ARTIFACTS": str(art),
           "MLFLOW_TRACKING_URI": graph.mlflow_uri, "DAGSTER_DISABLE_TELEMETRY": "1"}
    env.pop("VLMRL_EXECUTOR", None)
    with log.open("w") as out:
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster-webserver"), "-h", "127.0.0.1",
             "-p", str(port), "-m", "orchestration.definitions"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_serving(url, server, log)
        yield UI(url, home, tmp / "chromium-profile")
    finally:
        stop(server)


def browse(ui: UI, path: str, screenshot: str) -> str:
    """Load a page in headless chromium; return its rendered text, keep a screenshot."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    shot = SHOTS / screenshot
    shot.unlink(missing_ok=True)
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={ui.profile}",
         "--virtual-time-budget=15000", "--window-size=1400,900", f"--screenshot={shot}",
         "--dump-dom", f"{ui.url}{path}"],
        capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert shot.stat().st_size > 10_000, "blank screenshot"
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", proc.stdout, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom)))


def test_asset_graph_shows_every_asset(ui):
    text = browse(ui, "/asset-groups", "ui-asset-graph.png")
    assert "Global asset lineage" in text, text[:2000]
    graph = defs.resolve_asset_graph()
    groups = {}
    for key in graph.get_all_asset_keys():
        groups.setdefault(graph.get(key).group_name, []).append(key.to_user_string())
    assert set(groups) == {"data", "models", "reports"}
    for group in groups:
        assert group in text  # the global graph shows each group (collapsed)
    # each group's own lineage graph shows its assets expanded
    for group, keys in sorted(groups.items()):
        page = browse(ui, f"/locations/orchestration.definitions/asset-groups/{group}",
                      f"ui-asset-graph-{group}.png")
        missing = [k for k in keys if not re.search(rf"(?<![\w/]){re.escape(k)}(?![\w/])", page)]
        assert not missing, f"not in the {group} graph page: {missing}\n{page[:2000]}"


@pytest.mark.parametrize("asset_key", ["sft_frames", "rl_report"])
def test_asset_page_shows_latest_materialization(ui, asset_key):
    key = AssetKey.from_user_string(asset_key)
    with DagsterInstance.from_config(str(ui.home)) as instance:
        meta = instance.get_latest_materialization_event(key).asset_materialization.metadata
    text = browse(ui, f"/assets/{'/'.join(key.path)}", f"ui-asset-{'-'.join(key.path)}.png")
    assert "Latest materialization" in text, text[:2000]
    # The metadata table (key, timestamp, value): text and paths verbatim, integers by key.
    checked = []
    for name, entry in meta.items():
        if isinstance(entry, TextMetadataValue | PathMetadataValue):
            assert entry.value in text, f"{name}={entry.value!r} not on the page"
        elif isinstance(entry, IntMetadataValue):
            assert re.search(rf"\b{re.escape(name)}\b.{{0,60}}?\b{entry.value}\b", text), name
        else:
            continue
        checked.append(name)
    assert len(checked) >= 2, f"too little metadata to check: {checked}"

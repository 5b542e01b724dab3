"""deploy/dagster-postgres.yaml against a real, throwaway PostgreSQL server.

Debian's postgresql package provides the server (scripts/system-deps.sh installs it). The
server refuses to run as root, so as root it runs as the `postgres` user, in a data
directory outside pytest's root-only tmp tree; it listens on 127.0.0.1 only, with
password authentication over TCP so the password really comes from the environment.
"""

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
from dagster import (
    AssetKey,
    DagsterInstance,
    DagsterRunStatus,
    MaterializeResult,
    asset,
    materialize,
)

from orchestration.executors import GPU_POOL

REPO = Path(__file__).resolve().parents[2]
USER, PASSWORD, DB = "dagster", "s3cret-for-tests", "dagster_test"


def pg_bin(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
                   key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    if found:
        return str(found[-1])
    if path := shutil.which(name):
        return path
    raise RuntimeError(f"PostgreSQL's {name} not found: run `bash scripts/system-deps.sh` "
                       "(installs Debian's postgresql package)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def postgres() -> Iterator[dict[str, str]]:
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    base = Path(tempfile.mkdtemp(prefix="vlmrl-pg-"))
    data, sock, log = base / "data", base / "sock", base / "server.log"
    sock.mkdir()
    (base / "pw").write_text(PASSWORD + "\n")
    if as_root:
        shutil.chown(base, "postgres")
        for p in (sock, base / "pw"):
            shutil.chown(p, "postgres")

    def run(*cmd: str) -> None:
        subprocess.run([*prefix, *cmd], check=True, capture_output=True, text=True, timeout=120)

    port = free_port()
    started = False
    try:
        run(pg_bin("initdb"), "-D", str(data), "-U", USER, f"--pwfile={base / 'pw'}",
            "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync")
        run(pg_bin("pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
            f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={sock} "
            "-c fsync=off", "start")
        started = True
        conn = psycopg2.connect(host="127.0.0.1", port=port, user=USER, password=PASSWORD,
                                dbname="postgres")
        conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
        conn.cursor().execute(f"CREATE DATABASE {DB}")
        conn.close()
        yield {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(port),
               "DAGSTER_PG_USERNAME": USER, "DAGSTER_PG_PASSWORD": PASSWORD, "DAGSTER_PG_DB": DB}
    except subprocess.CalledProcessError as e:
        server_log = log.read_text() if log.exists() else ""
        raise RuntimeError(f"{e.cmd} failed: {e.stderr}\n{server_log}") from e
    finally:
        if started:
            subprocess.run([*prefix, pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "-w",
                            "stop"], capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


@asset(pool=GPU_POOL)
def trivial() -> MaterializeResult:
    return MaterializeResult(metadata={"answer": 42})


def test_instance_storage_in_postgres(postgres, tmp_path, monkeypatch):
    for k, v in postgres.items():
        monkeypatch.setenv(k, v)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster-postgres.yaml", home / "dagster.yaml")
    with DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 2
        result = materialize([trivial], instance=instance)
        assert result.success
        run = instance.get_run_by_id(result.run_id)
        assert run.status == DagsterRunStatus.SUCCESS
        event = instance.get_latest_materialization_event(AssetKey("trivial"))
        assert event.run_id == result.run_id
        assert event.asset_materialization.metadata["answer"].value == 42
        # The "gpu" pool was created with the instance's default limit when the step claimed it.
        assert instance.event_log_storage.get_concurrency_info(GPU_POOL).slot_count == 2

    # Read back straight from PostgreSQL: the run and its materialization are stored there.
    with psycopg2.connect(host="127.0.0.1", port=int(postgres["DAGSTER_PG_PORT"]), user=USER,
                          password=PASSWORD, dbname=DB) as conn, conn.cursor() as cur:
        cur.execute("SELECT status FROM runs WHERE run_id = %s", (result.run_id,))
        assert cur.fetchall() == [("SUCCESS",)]
        cur.execute("SELECT count(*) FROM event_logs WHERE run_id = %s AND "
                    "dagster_event_type = 'ASSET_MATERIALIZATION' AND asset_key = %s",
                    (result.run_id, AssetKey("trivial").to_string()))
        assert cur.fetchone() == (1,)
    conn.close()
    # Nothing fell back to SQLite files in DAGSTER_HOME.
    assert not list(home.rglob("*.db"))

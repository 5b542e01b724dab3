"""A checkpoint through object storage, side by side with a local copy.

    .venv/bin/python bench/bench_storage.py [--quick]

A tiny-recipe-sized checkpoint directory is not a useful size, so the measure uses a
checkpoint-shaped directory of random bytes (safetensors shards, config, lineage.json;
64 MiB, 16 MiB with --quick) and a moto S3 server started here on 127.0.0.1. It times,
best of 3 each: `ArtifactRoot.push` (publish: upload, then the marker), `pull` into an
empty cache (download, verify every file against the marker, rename into place), a pull
that finds the cache already matching (re-hash only), `audit_published` (re-hash what is
stored), and `shutil.copytree` of the same directory as the local baseline. moto keeps
objects in this process's memory, so the figures are this code's overhead (hashing,
staging, fsspec/HTTP), not a real network's bandwidth.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

MIB = 1 << 20


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def checkpoint_like(root: Path, total_mib: int) -> Path:
    """Four weight shards plus the small files a checkpoint holds."""
    root.mkdir(parents=True)
    for i in range(4):
        (root / f"model-{i:05d}-of-00004.safetensors").write_bytes(os.urandom(total_mib * MIB // 4))
    for name in ("config.json", "generation_config.json", "tokenizer.json", "lineage.json"):
        (root / name).write_text(json.dumps({"name": name, "pad": "x" * 2048}))
    return root


def _best(fn, rounds: int = 3) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def measure(quick: bool = False) -> dict[str, Any]:
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    from vlmrl import storage
    from vlmrl.artifact_root import ArtifactRoot

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    size = 16 if quick else 64
    port = _port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket="bench")
        with tempfile.TemporaryDirectory() as tmp:
            tmp_path = Path(tmp)
            writer = ArtifactRoot("s3://bench/artifacts", cache=tmp_path / "writer")
            checkpoint_like(writer.local("checkpoints", "rl"), size)
            n = [0]

            def copy() -> None:
                n[0] += 1
                shutil.copytree(writer.local("checkpoints", "rl"), tmp_path / f"copy{n[0]}")

            def push() -> None:
                writer.push("checkpoints", "rl", overwrite=True)

            def pull_cold() -> None:
                n[0] += 1
                ArtifactRoot("s3://bench/artifacts", cache=tmp_path / f"reader{n[0]}").pull("checkpoints", "rl")

            copy_s = _best(copy)
            push_s = _best(push)
            pull_s = _best(pull_cold)
            warm = ArtifactRoot("s3://bench/artifacts", cache=tmp_path / "warm")
            warm.pull("checkpoints", "rl")
            warm_s = _best(lambda: warm.pull("checkpoints", "rl"))
            audit_s = _best(lambda: storage.audit_published("s3://bench/artifacts/checkpoints/rl"))
            same = all((warm.local("checkpoints", "rl") / f.name).read_bytes() == f.read_bytes()
                       for f in writer.local("checkpoints", "rl").iterdir())
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return {"mib": size, "copytree_s": copy_s, "push_s": push_s, "pull_s": pull_s,
            "pull_cached_s": warm_s, "audit_s": audit_s, "round_trip_identical": same,
            "push_mib_s": size / push_s, "pull_mib_s": size / pull_s,
            "round_trip_vs_copy": (push_s + pull_s) / copy_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="16 MiB instead of 64")
    r = measure(p.parse_args().quick)
    print(f"checkpoint of {r['mib']} MiB, best of 3, moto S3 on 127.0.0.1 (this process)")
    print(f"  local copytree        {r['copytree_s']:.3f} s")
    print(f"  push (publish)        {r['push_s']:.3f} s  ({r['push_mib_s']:.0f} MiB/s)")
    print(f"  pull, empty cache     {r['pull_s']:.3f} s  ({r['pull_mib_s']:.0f} MiB/s)")
    print(f"  pull, cache matches   {r['pull_cached_s']:.3f} s")
    print(f"  audit where stored    {r['audit_s']:.3f} s")
    print(f"  push + pull vs copy   {r['round_trip_vs_copy']:.1f}x; round trip identical: {r['round_trip_identical']}")


if __name__ == "__main__":
    main()

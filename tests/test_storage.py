"""vlmrl.storage against a real S3-compatible server (moto's server mode on 127.0.0.1, started
here) and against local paths: round trips, interrupted uploads (a killed process), refusals,
corruption written directly on the server."""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from vlmrl import storage
from vlmrl.atomic import OutputKind
from vlmrl.lineage import FORMAT as LINEAGE_FORMAT
from vlmrl.lineage import LINEAGE, audit, lineage_hash, write_manifest

# the bucket and keys of the `s3` server fixture (tests/conftest.py)
BUCKET = "vlmrl-test"
KEY_ID, SECRET = "vlmrl-test-key-id", "vlmrl-test-secret-value"


@pytest.fixture(params=["s3", "local"])
def target(request, tmp_path):
    """(uri, storage_options) of a fresh location, on the S3 server or a local directory."""
    if request.param == "local":
        return str(tmp_path / "published" / "art"), None
    s3 = request.getfixturevalue("s3")
    return f"s3://{BUCKET}/t-{uuid.uuid4().hex[:10]}", s3["options"]


def names(client, uri: str) -> set[str]:
    """The objects under an s3:// prefix, listed directly on the server (not through vlmrl)."""
    prefix = uri.removeprefix(f"s3://{BUCKET}/") + "/"
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {obj["Key"][len(prefix):] for page in pages for obj in page.get("Contents", [])}


def keys(client, uri: str) -> dict[str, bytes]:
    """Every object under an s3:// prefix with its bytes, read directly from the server."""
    prefix = uri.removeprefix(f"s3://{BUCKET}/") + "/"
    return {name: client.get_object(Bucket=BUCKET, Key=prefix + name)["Body"].read()
            for name in names(client, uri)}


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def nested_dir(root: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    files = {"a.txt": b"alpha\n", "empty.bin": b"", "sub/b.json": json.dumps({"seed": seed}).encode(),
             "sub/deeper/c.bin": rng.bytes(300_000), "sub/deeper/d e (x).txt": "ünïcode\n".encode()}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def checkpoint_dir(root: Path, megabytes: float = 0.05, seed: int = 0) -> Path:
    """A checkpoint-like directory: safetensors weights, config.json, lineage.json (written last)."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    n = max(1, int(megabytes * (1 << 20) / 4 / 2))
    save_file({"w1": rng.standard_normal(n).astype(np.float32),
               "w2": rng.standard_normal(n).astype(np.float32)}, str(root / "model.safetensors"))
    (root / "config.json").write_text(json.dumps({"model_type": "tiny", "hidden": 8}))
    write_manifest(root, kind="sft", recipe={"name": "test"}, seed=seed)
    return root


def many_files(root: Path, count: int = 200, size: int = 128 * 1024) -> Path:
    root.mkdir(parents=True)
    for i in range(count):
        (root / f"shard-{i:04d}.bin").write_bytes(os.urandom(size))
    return root


# --- round trips ---------------------------------------------------------------------------


def test_round_trip_of_nested_files(target, tmp_path):
    uri, opts = target
    src = nested_dir(tmp_path / "src")
    assert not storage.is_published(uri, storage_options=opts)
    marker = storage.publish(src, uri, storage_options=opts)
    assert marker["file_count"] == 5 and set(marker["files"]) == set(tree_bytes(src))
    assert marker["files"]["sub/deeper/c.bin"] == {
        "size": 300_000, "sha256": hashlib.sha256((src / "sub/deeper/c.bin").read_bytes()).hexdigest()}
    assert storage.is_published(uri, storage_options=opts)
    assert storage.audit_published(uri, storage_options=opts) == []
    out = storage.fetch(uri, tmp_path / "out", storage_options=opts)
    assert tree_bytes(out) == tree_bytes(src)  # exactly the files: no marker, no staging leftovers
    assert {p.name for p in tmp_path.iterdir()} == {"out", "src"} | ({"published"} if opts is None else set())
    assert storage.read_text(uri, "sub/deeper/d e (x).txt", storage_options=opts) == "ünïcode\n"
    # a second fetch to a directory holding exactly these files is a no-op, not a refusal
    assert storage.fetch(uri, out, storage_options=opts) == out.resolve()


def test_checkpoint_round_trip_keeps_lineage_auditable(s3, s3_uri, tmp_path):
    src = checkpoint_dir(tmp_path / "ckpt")
    storage.publish(src, s3_uri, storage_options=s3["options"])
    assert names(s3["client"], s3_uri) == {"model.safetensors", "config.json", LINEAGE, storage.MARKER, storage.UPLOAD}
    # lineage without downloading the weights: verified text, and the identity from the marker
    text = storage.read_text(s3_uri, LINEAGE, storage_options=s3["options"])
    assert json.loads(text)["format"] == LINEAGE_FORMAT
    marker = storage.read_marker(s3_uri, storage_options=s3["options"])
    assert marker["files"][LINEAGE]["sha256"] == lineage_hash(src)
    assert storage.audit_published(s3_uri, storage_options=s3["options"]) == []
    out = storage.fetch(s3_uri, tmp_path / "fetched", storage_options=s3["options"])
    assert tree_bytes(out) == tree_bytes(src)
    weights, original = load_file(str(out / "model.safetensors")), load_file(str(src / "model.safetensors"))
    assert all(np.array_equal(weights[k], original[k]) for k in original)
    # the fetched copy is a checkpoint vlmrl.lineage audits like any local one
    report = audit(out, check_media=False, root=tmp_path / "fetched")
    assert report.ok, report.problems


def test_audit_cross_checks_lineage_against_the_published_files(s3, s3_uri, tmp_path):
    """Weights changed after lineage.json was written (marker and lineage disagree): the audit
    on S3 says so, and so does vlmrl.lineage on the fetched copy."""
    src = checkpoint_dir(tmp_path / "ckpt")
    (src / "config.json").write_text(json.dumps({"model_type": "tiny", "hidden": 9}))
    (src / "notes.txt").write_text("added later")
    storage.publish(src, s3_uri, storage_options=s3["options"])
    problems = storage.audit_published(s3_uri, storage_options=s3["options"])
    assert any("config.json: published content differs from lineage.json" in p for p in problems)
    assert any("notes.txt: published but not part of the checkpoint" in p for p in problems)
    assert len(problems) == 2, problems
    out = storage.fetch(s3_uri, tmp_path / "fetched", storage_options=s3["options"])
    assert len(audit(out, check_media=False).problems) == 2


# --- interrupted uploads -------------------------------------------------------------------

PUBLISH_SCRIPT = textwrap.dedent("""
    import sys
    from vlmrl.storage import publish
    publish(sys.argv[1], sys.argv[2], overwrite=sys.argv[3] == "1")
""")


def kill_mid_upload(s3, src: Path, uri: str, overwrite: bool = False) -> int:
    """Run publish in a subprocess (credentials and endpoint from the environment only), kill -9
    it as soon as its first data object is on the server; return how many data objects were."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FSSPEC_"))}
    env.update(AWS_ACCESS_KEY_ID=KEY_ID, AWS_SECRET_ACCESS_KEY=SECRET, AWS_ENDPOINT_URL=s3["endpoint"],
               AWS_DEFAULT_REGION="us-east-1", PYTHONPATH=str(Path(storage.__file__).parents[1]))
    before = names(s3["client"], uri) if overwrite else set()
    proc = subprocess.Popen([sys.executable, "-c", PUBLISH_SCRIPT, str(src), uri, "1" if overwrite else "0"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    prefix = uri.removeprefix(f"s3://{BUCKET}/") + "/"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            listed = s3["client"].list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
            if any(o["Key"][len(prefix):].startswith("shard-") and o["Key"][len(prefix):] not in before
                   for o in listed):
                proc.send_signal(signal.SIGKILL)
                break
            assert proc.poll() is None, f"publish ended before it could be killed: {proc.stdout.read()!r}"
            time.sleep(0.005)
        else:
            pytest.fail("no object appeared on the server")
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # A request the client sent just before the kill can still land on the server afterwards
    # (seen in CI: 10 counted, 11 present), so count only once the listing stops changing.
    count, settle = -1, time.monotonic() + 10
    while time.monotonic() < settle:
        now = sum(1 for n in names(s3["client"], uri) if n.startswith("shard-") and n not in before)
        if now == count:
            return count
        count = now
        time.sleep(0.5)
    pytest.fail("the server's listing kept changing 10 s after the uploader was killed")


def test_upload_killed_halfway_is_incomplete_then_a_rerun_completes(s3, s3_uri, tmp_path):
    opts = s3["options"]
    src = many_files(tmp_path / "src")
    uploaded = kill_mid_upload(s3, src, s3_uri)
    stored = names(s3["client"], s3_uri)
    assert 0 < uploaded < 200 and storage.MARKER not in stored and storage.UPLOAD in stored
    assert not storage.is_published(s3_uri, storage_options=opts)
    with pytest.raises(storage.NotPublishedError, match=rf"{s3_uri}: incomplete: no _vlmrl_published.json.*never finished"):
        storage.fetch(s3_uri, tmp_path / "out", storage_options=opts)
    assert not (tmp_path / "out").exists()
    with pytest.raises(storage.NotPublishedError, match="never finished"):
        storage.read_text(s3_uri, "shard-0000.bin", storage_options=opts)
    problems = storage.audit_published(s3_uri, storage_options=opts)
    assert len(problems) == 1 and "incomplete" in problems[0] and f"({uploaded} of 200 files present)" in problems[0]
    # the leftovers are ours: a rerun replaces them without overwrite=True
    marker = storage.publish(src, s3_uri, storage_options=opts)
    record = json.loads(keys(s3["client"], s3_uri)[storage.UPLOAD])
    assert record["upload_id"] == marker["upload_id"] and record["pid"] == os.getpid()
    assert storage.audit_published(s3_uri, storage_options=opts) == []
    out = storage.fetch(s3_uri, tmp_path / "out", storage_options=opts)
    assert tree_bytes(out) == tree_bytes(src)


def test_overwrite_killed_halfway_never_looks_complete(s3, s3_uri, tmp_path):
    """overwrite=True deletes the old marker first: killed midway, the prefix is neither the
    old artifact nor the new one, and the next publish (without overwrite) cleans both up."""
    opts = s3["options"]
    old = nested_dir(tmp_path / "old")
    storage.publish(old, s3_uri, storage_options=opts)
    new = many_files(tmp_path / "new")
    assert kill_mid_upload(s3, new, s3_uri, overwrite=True) < 200
    assert storage.MARKER not in names(s3["client"], s3_uri)
    assert not storage.is_published(s3_uri, storage_options=opts)
    with pytest.raises(storage.NotPublishedError):
        storage.fetch(s3_uri, tmp_path / "out", storage_options=opts)
    third = nested_dir(tmp_path / "third", seed=3)
    (third / "sub/deeper/c.bin").unlink()
    storage.publish(third, s3_uri, storage_options=opts)
    assert names(s3["client"], s3_uri) == set(tree_bytes(third)) | {storage.MARKER, storage.UPLOAD}
    assert tree_bytes(storage.fetch(s3_uri, tmp_path / "out", storage_options=opts)) == tree_bytes(third)


# --- refusals ------------------------------------------------------------------------------


def test_complete_artifact_is_replaced_only_with_overwrite(target, tmp_path):
    uri, opts = target
    first = nested_dir(tmp_path / "first", seed=1)
    storage.publish(first, uri, storage_options=opts)
    second = tmp_path / "second"
    (second / "only").mkdir(parents=True)
    (second / "only/new.txt").write_text("second")
    with pytest.raises(FileExistsError, match="already holds a published artifact.*overwrite=True"):
        storage.publish(second, uri, storage_options=opts)
    assert tree_bytes(storage.fetch(uri, tmp_path / "a", storage_options=opts)) == tree_bytes(first)
    storage.publish(second, uri, overwrite=True, storage_options=opts)
    assert storage.audit_published(uri, storage_options=opts) == []  # the old files are gone too
    assert tree_bytes(storage.fetch(uri, tmp_path / "b", storage_options=opts)) == tree_bytes(second)


def test_foreign_prefix_is_never_written_or_deleted(s3, s3_uri, tmp_path):
    client, opts = s3["client"], s3["options"]
    prefix = s3_uri.removeprefix(f"s3://{BUCKET}/")
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/someone-elses.csv", Body=b"a,b\n")
    src = nested_dir(tmp_path / "src")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match=r"vlmrl did not write.*someone-elses.csv"):
            storage.publish(src, s3_uri, overwrite=overwrite, storage_options=opts)
    assert keys(client, s3_uri) == {"someone-elses.csv": b"a,b\n"}
    assert storage.audit_published(s3_uri, storage_options=opts) == [
        f"{s3_uri}: not a vlmrl artifact: 1 object(s) but no {storage.MARKER}"]
    with pytest.raises(storage.NotPublishedError, match="not a vlmrl artifact"):
        storage.fetch(s3_uri, tmp_path / "out", storage_options=opts)
    # our own leftovers beside a foreign object: still refused, and nothing deleted
    sibling = f"{s3_uri}-2"
    storage.publish(src, sibling, storage_options=opts)
    client.delete_object(Bucket=BUCKET, Key=f"{prefix}-2/{storage.MARKER}")  # as if interrupted
    client.put_object(Bucket=BUCKET, Key=f"{prefix}-2/sub/foreign.bin", Body=b"x")
    before = keys(client, sibling)
    with pytest.raises(FileExistsError, match="sub/foreign.bin"):
        storage.publish(src, sibling, overwrite=True, storage_options=opts)
    assert keys(client, sibling) == before
    # prefixes are directories: "<p>" never touches "<p>-2", and an object named like the prefix is refused
    assert storage.audit_published(s3_uri, storage_options=opts)[0].endswith("1 object(s) but no _vlmrl_published.json")
    client.put_object(Bucket=BUCKET, Key=f"{prefix}-3", Body=b"a file")
    with pytest.raises(FileExistsError, match="single object"):
        storage.publish(src, f"{s3_uri}-3", storage_options=opts)
    assert client.get_object(Bucket=BUCKET, Key=f"{prefix}-3")["Body"].read() == b"a file"


def test_foreign_local_directory_is_refused(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "mine.txt").write_text("not vlmrl's")
    src = nested_dir(tmp_path / "src")
    with pytest.raises(FileExistsError, match="mine.txt"):
        storage.publish(src, dest, overwrite=True)
    assert tree_bytes(dest) == {"mine.txt": b"not vlmrl's"}
    with pytest.raises(ValueError, match="one contains the other"):
        storage.publish(src, src / "inside")
    (src / storage.MARKER).write_text("{}")
    with pytest.raises(ValueError, match="reserved"):
        storage.publish(src, tmp_path / "elsewhere")


def test_fetch_refuses_to_replace_a_local_directory_it_cannot_recognise(s3, s3_uri, tmp_path):
    opts = s3["options"]
    storage.publish(checkpoint_dir(tmp_path / "ckpt"), s3_uri, storage_options=opts)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="refusing to replace"):
        storage.fetch(s3_uri, busy, overwrite=True, storage_options=opts)
    assert tree_bytes(busy) == {"keep.txt": b"keep"}
    # a checkpoint of the kind the caller names may be replaced, with overwrite only
    other = checkpoint_dir(tmp_path / "other", seed=7)
    kind = OutputKind("sft checkpoint", LINEAGE, values=(("format", LINEAGE_FORMAT), ("kind", "sft")))
    with pytest.raises(FileExistsError, match="overwrite"):
        storage.fetch(s3_uri, other, kind=kind, storage_options=opts)
    storage.fetch(s3_uri, other, overwrite=True, kind=kind, storage_options=opts)
    assert tree_bytes(other) == tree_bytes(tmp_path / "ckpt")


# --- corruption ----------------------------------------------------------------------------


def test_corrupted_objects_are_detected_by_fetch_read_and_audit(s3, s3_uri, tmp_path):
    client, opts = s3["client"], s3["options"]
    src = checkpoint_dir(tmp_path / "ckpt")
    storage.publish(src, s3_uri, storage_options=opts)
    prefix = s3_uri.removeprefix(f"s3://{BUCKET}/")
    weights = bytearray((src / "model.safetensors").read_bytes())
    weights[-1] ^= 0xFF  # same size, one bit pattern changed
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/model.safetensors", Body=bytes(weights))
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/config.json", Body=b"{}")  # another size
    with pytest.raises(storage.ArtifactIntegrityError, match="model.safetensors: content differs from the marker"):
        storage.fetch(s3_uri, tmp_path / "out", storage_options=opts)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no target, no staging left
    problems = storage.audit_published(s3_uri, storage_options=opts)
    assert len(problems) == 2, problems
    assert "model.safetensors: content differs from the marker" in problems[1]
    assert "config.json: 2 bytes, the marker records" in problems[0]
    with pytest.raises(storage.ArtifactIntegrityError, match="config.json: 2 bytes"):
        storage.read_text(s3_uri, "config.json", storage_options=opts)
    assert json.loads(storage.read_text(s3_uri, LINEAGE, storage_options=opts))["kind"] == "sft"
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/{LINEAGE}", Body=b"{not json" + b" " * 10)
    client.delete_object(Bucket=BUCKET, Key=f"{prefix}/config.json")
    problems = storage.audit_published(s3_uri, storage_options=opts)
    assert any(p.endswith("config.json: missing") for p in problems)
    assert any(f"{LINEAGE}: " in p and "marker records" in p for p in problems)


def test_a_marker_naming_paths_outside_the_prefix_is_not_valid(s3, s3_uri, tmp_path):
    client, opts = s3["client"], s3["options"]
    storage.publish(nested_dir(tmp_path / "src"), s3_uri, storage_options=opts)
    prefix = s3_uri.removeprefix(f"s3://{BUCKET}/")
    marker = json.loads(keys(client, s3_uri)[storage.MARKER])
    marker["files"]["../escape.txt"] = marker["files"].pop("a.txt")
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/{storage.MARKER}", Body=json.dumps(marker).encode())
    assert not storage.is_published(s3_uri, storage_options=opts)
    with pytest.raises(storage.NotPublishedError, match="unsafe file name '../escape.txt'"):
        storage.fetch(s3_uri, tmp_path / "out", storage_options=opts)
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "out").exists()


def test_credentials_never_reach_messages_or_the_log(s3, s3_uri, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="vlmrl.storage")
    opts = s3["options"]
    src = nested_dir(tmp_path / "src")
    storage.publish(src, s3_uri, storage_options=opts)
    errors = []
    for call in (lambda: storage.publish(src, s3_uri, storage_options=opts),
                 lambda: storage.fetch(f"{s3_uri}-missing", tmp_path / "o", storage_options=opts),
                 lambda: storage.fetch("s3://no-such-bucket-x/p", tmp_path / "o", storage_options=opts)):
        with pytest.raises(OSError) as info:
            call()
        errors.append(str(info.value))
    assert "no-such-bucket-x/p: cannot list" in errors[2]
    text = caplog.text + "\n".join(errors)
    assert "published" in caplog.text and SECRET not in text and KEY_ID not in text
    assert storage.display("s3://AKIAX:s3cr3t@bucket/p") == "s3://***@bucket/p"


# --- layer and timing ----------------------------------------------------------------------


def test_storage_imports_only_the_standard_library_fsspec_and_layer_0():
    tree = ast.parse(Path(storage.__file__).read_text(encoding="utf-8"))
    modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    modules |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    outside = {m for m in modules if m.split(".")[0] not in sys.stdlib_module_names
               and m.split(".")[0] != "fsspec" and m not in ("vlmrl.atomic", "vlmrl.hashing")}
    assert modules and not outside, outside


def test_round_trip_time_of_a_20mb_checkpoint(s3, s3_uri, tmp_path):
    """Run with -s to see the figures (no assertion on time: it measures the local moto server)."""
    opts = s3["options"]
    src = checkpoint_dir(tmp_path / "ckpt", megabytes=20)
    size = sum(len(b) for b in tree_bytes(src).values())
    t0 = time.perf_counter()
    storage.publish(src, s3_uri, storage_options=opts)
    t1 = time.perf_counter()
    out = storage.fetch(s3_uri, tmp_path / "out", storage_options=opts)
    t2 = time.perf_counter()
    assert storage.audit_published(s3_uri, storage_options=opts) == []
    t3 = time.perf_counter()
    assert tree_bytes(out) == tree_bytes(src)
    print(f"\n{size / 1e6:.1f} MB checkpoint on moto 127.0.0.1: publish {t1 - t0:.2f} s, "
          f"fetch {t2 - t1:.2f} s, audit {t3 - t2:.2f} s, round trip {t2 - t0:.2f} s")

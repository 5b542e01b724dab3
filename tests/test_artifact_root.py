"""vlmrl.artifact_root: the artifacts tree on a local path, and on object storage with a local
cache (a real S3-compatible server, moto on 127.0.0.1, and fsspec's memory://).

One small real tree is built once (synthetic raw data, frame datasets built by extract, a tiny
base model, a few SFT steps, an evaluation report) and copied where each test needs it: the
same tree serves as a local root, and as the cache of a remote root it is pushed from.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import uuid
from pathlib import Path

import fsspec
import pytest
import s3fs

from vlmrl import storage
from vlmrl.artifact_root import INDEX, ArtifactRoot, default_cache
from vlmrl.lineage import ASSET_INDEX, find_asset

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SFT = ("checkpoints", "sft")
BASE = ("checkpoints", "base")
FRAMES = ("frames", "sft")
REPORT = ("reports", "bench", "sft", "run00001")
ARTIFACTS = (("raw",), FRAMES, ("frames", "bench"), BASE, SFT, REPORT)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def file_ids(root: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of every file and directory: a download replaces them."""
    return {p.relative_to(root).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in [root, *root.rglob("*")]}


def server_names(s3, uri: str) -> set[str]:
    """Objects under an s3:// prefix, listed directly on the server (not through vlmrl)."""
    prefix = uri.removeprefix(f"s3://{s3['bucket']}/") + "/"
    pages = s3["client"].get_paginator("list_objects_v2").paginate(Bucket=s3["bucket"], Prefix=prefix)
    return {o["Key"][len(prefix):] for page in pages for o in page.get("Contents", [])}


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def first_answer(rows, frames, **_):
    return ["<think>x</think><answer>A</answer>" for _ in rows]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """artifacts/{raw, frames/{sft,bench}, checkpoints/{base,sft}, reports/bench/sft/run00001}."""
    from vlmrl.data.extract import extract_dataset
    from vlmrl.data.synth import SynthSizes, generate
    from vlmrl.eval import load_benchmark
    from vlmrl.eval.runner import EvalSettings, evaluate
    from vlmrl.recipes import load_recipe
    from vlmrl.stages.training import build_base_model, train_sft

    recipe = load_recipe("tiny-cpu", {
        "frames": {"train": {"max_frames": 4}, "eval": {"max_frames": 4}},
        "sft": {"max_steps": 2, "per_device_train_batch_size": 4, "logging_steps": 1, "save_steps": 2,
                "curriculum": [{"families": ["motion"], "max_steps": 1}]}})
    root = tmp_path_factory.mktemp("artifact-root") / "artifacts"
    raw = root / "raw"
    generate(raw, seed=0, sizes=SynthSizes(sft=8, rl=4, bench=4), progress=False)
    frames = extract_dataset(raw / "sft.json", raw, root.joinpath(*FRAMES), recipe.frames.train, workers=1,
                             progress=False).path
    bench = extract_dataset(raw / "bench.json", raw, root / "frames" / "bench", recipe.frames.eval, workers=1,
                            progress=False).path
    base = build_base_model(recipe, root.joinpath(*BASE), [frames])
    sft = train_sft(recipe, base, frames, root.joinpath(*SFT))
    evaluate(load_benchmark(bench, name="bench"), first_answer, root.joinpath(*REPORT),
             EvalSettings(shuffled_control=False), checkpoint=sft, stage="sft", progress=False)
    return root


@pytest.fixture(params=["s3", "memory"])
def remote(request):
    """(a fresh remote root URI, its storage_options)."""
    if request.param == "memory":
        return f"memory://vlmrl-{uuid.uuid4().hex[:10]}/artifacts", None
    s3 = request.getfixturevalue("s3")
    return f"s3://{s3['bucket']}/t-{uuid.uuid4().hex[:10]}/artifacts", s3["options"]


@pytest.fixture
def writer(tree, tmp_path, s3, s3_uri) -> ArtifactRoot:
    """An S3 root whose cache holds a copy of the built tree (as if the assets had built it there)."""
    shutil.copytree(tree, tmp_path / "cache-w")
    return ArtifactRoot(s3_uri, cache=tmp_path / "cache-w", storage_options=s3["options"])


def reader(writer: ArtifactRoot, cache: Path) -> ArtifactRoot:
    """The same remote root seen from another machine (an empty cache of its own)."""
    return ArtifactRoot(writer.root, cache=cache, storage_options=writer.storage_options)


# --- local roots ---------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["", "file://"])
def test_local_root_is_the_tree_itself(tree, tmp_path, scheme):
    copy = tmp_path / "artifacts"
    shutil.copytree(tree, copy)
    before = tree_bytes(copy)
    root = ArtifactRoot(f"{scheme}{copy}")
    assert not root.remote and root.cache is None and root.local_root == copy
    assert root.local(*SFT) == copy / "checkpoints" / "sft" and root.uri(*SFT) == str(copy / "checkpoints/sft")
    assert root.pull(*SFT) == copy / "checkpoints" / "sft"
    assert root.push(*SFT) == str(copy / "checkpoints" / "sft")
    with pytest.raises(FileNotFoundError, match=f"{copy / 'checkpoints' / 'rl'}: no such artifact"):
        root.pull("checkpoints", "rl")
    assert root.audit(*SFT) == [] and root.audit(*REPORT) == []
    assert tree_bytes(copy) == before  # nothing copied, moved or written
    flip(copy / "checkpoints" / "base" / "model.safetensors")
    assert any("base/model.safetensors: content changed" in p for p in root.audit(*SFT))


@pytest.mark.parametrize("parts", [("..", "x"), ("checkpoints/../..",), ("a//b",), (".vlmrl-pulled", "x")])
def test_paths_outside_the_tree_refused(tmp_path, parts):
    with pytest.raises(ValueError):
        ArtifactRoot(str(tmp_path)).local(*parts)
    with pytest.raises(ValueError):
        ArtifactRoot("memory://b/p", cache=tmp_path).uri(*parts)


def test_remote_uri_and_cache_names(tmp_path, monkeypatch):
    monkeypatch.delenv("VLMRL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    root = ArtifactRoot("s3://someone:hunter2@bucket/team/artifacts/", storage_options={"anon": True})
    assert root.remote and root.root == "s3://bucket/team/artifacts"
    assert root.uri(*SFT) == "s3://bucket/team/artifacts/checkpoints/sft"
    assert root.cache == tmp_path / "xdg" / "vlmrl" / "artifacts" / "s3" / "bucket" / "team" / "artifacts"
    assert "hunter2" not in repr(root) + str(root.cache) + root.uri("raw")
    assert root.local(*FRAMES) == root.cache / "frames" / "sft" and (root.cache / "frames").is_dir()
    odd = default_cache("s3://bucket/a b/..")
    assert odd.parent == tmp_path / "xdg" / "vlmrl" / "artifacts" / "s3" / "bucket" / "a_b"
    assert odd.name.startswith("_-") and odd != default_cache("s3://bucket/a_b/_")
    monkeypatch.setenv("VLMRL_CACHE", str(tmp_path / "mine"))
    assert ArtifactRoot("memory://b/p").cache == tmp_path / "mine"
    assert ArtifactRoot("memory://b/p", cache=tmp_path / "arg").local_root == tmp_path / "arg"


# --- push and pull -------------------------------------------------------------------------


def test_push_and_pull_round_trip_byte_for_byte(tree, tmp_path, remote):
    uri, opts = remote
    shutil.copytree(tree, tmp_path / "w")
    w = ArtifactRoot(uri, cache=tmp_path / "w", storage_options=opts)
    for parts in (FRAMES, SFT):
        assert w.push(*parts) == f"{uri}/{'/'.join(parts)}"
        assert w.pull(*parts) == w.local(*parts)  # the very artifact written there: kept as it is
    r = ArtifactRoot(uri, cache=tmp_path / "r", storage_options=opts)
    for parts in (FRAMES, SFT):
        out = r.pull(*parts)
        assert out == tmp_path.joinpath("r", *parts)
        assert tree_bytes(out) == tree_bytes(tree.joinpath(*parts))
    assert sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir()) == ["sft"]  # no leftovers


def test_pull_skips_a_matching_copy_and_refetches_a_changed_artifact(writer, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.WARNING)
    writer.push(*SFT)
    r = reader(writer, tmp_path / "r")
    out = r.pull(*SFT)
    ids = file_ids(out)
    real_fetch, fetched = storage.fetch, []
    monkeypatch.setattr(storage, "fetch", lambda *a, **k: fetched.append(a) or real_fetch(*a, **k))
    assert r.pull(*SFT) == out and file_ids(out) == ids and fetched == []
    # the writer changes the artifact and publishes it over the old one: the stale copy is replaced
    config = writer.local(*SFT) / "config.json"
    config.write_text(config.read_text().replace("}", ', "edited": true}', 1))
    writer.push(*SFT)
    assert r.pull(*SFT) == out and len(fetched) == 1
    assert tree_bytes(out) == tree_bytes(writer.local(*SFT))
    assert sorted(p.name for p in out.parent.iterdir()) == ["sft"]  # no staging or trash left
    # a fetched copy damaged in the cache is this project's copy too: replaced, not refused
    flip(out / "model.safetensors")
    (out / "tokenizer.json").unlink()
    r.pull(*SFT)
    assert tree_bytes(out) == tree_bytes(writer.local(*SFT)) and len(fetched) == 2
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_pull_never_replaces_what_vlmrl_did_not_put_there(writer, tmp_path):
    writer.push(*SFT)
    r = reader(writer, tmp_path / "r")
    theirs = r.local(*SFT)
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=rf"{theirs} holds something other than the published "
                                              rf"{writer.uri(*SFT)}"):
        r.pull(*SFT)
    assert tree_bytes(theirs) == {"notes.txt": b"mine"}
    shutil.rmtree(theirs)
    out = r.pull(*SFT)
    (out / "extra.bin").write_bytes(b"written after the pull")  # a file the pull did not bring
    writer.local(*SFT, "config.json").write_text("{}")
    writer.push(*SFT)
    with pytest.raises(FileExistsError, match="not replaced"):
        r.pull(*SFT)
    assert (out / "extra.bin").read_bytes() == b"written after the pull"


class Killed(BaseException):
    """Stands for SIGKILL: nothing in publish runs after it."""


def test_unpublished_or_interrupted_artifact_is_not_pulled(writer, tmp_path, s3, monkeypatch):
    r = reader(writer, tmp_path / "r")
    with pytest.raises(storage.NotPublishedError, match=f"{writer.uri(*SFT)}: nothing is published"):
        r.pull(*SFT)
    assert not r.local(*SFT).exists()
    # the upload dies after its first file: the upload record and one file are on the server
    fs = fsspec.core.url_to_fs(writer.uri(*SFT), **writer.storage_options)[0]  # fsspec's cached instance
    assert isinstance(fs, s3fs.S3FileSystem)
    real_put = fs.put

    def put_one_then_die(lpath, rpath, *args, **kwargs):
        real_put(lpath[:1], rpath[:1], *args, **kwargs)
        raise Killed

    monkeypatch.setattr(fs, "put", put_one_then_die)
    with pytest.raises(Killed):
        writer.push(*SFT)
    monkeypatch.undo()
    stored = server_names(s3, writer.uri(*SFT))
    assert storage.UPLOAD in stored and storage.MARKER not in stored and len(stored) == 2
    with pytest.raises(storage.NotPublishedError, match=f"{writer.uri(*SFT)}: incomplete.*never finished"):
        r.pull(*SFT)
    assert sorted(os.listdir(r.local(*SFT).parent)) == []  # nothing that looks like a checkpoint
    assert r.audit(*SFT) and "incomplete" in r.audit(*SFT)[0]


def test_two_caches_pull_the_same_artifact_at_once(writer, tmp_path, tree):
    writer.push(*SFT)
    readers = [reader(writer, tmp_path / f"r{i}") for i in range(2)]
    results, errors = {}, []
    start = threading.Barrier(len(readers))

    def pull(i: int) -> None:
        try:
            start.wait()
            results[i] = readers[i].pull(*SFT)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=pull, args=(i,)) for i in range(len(readers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert results[0] != results[1]
    assert all(tree_bytes(p) == tree_bytes(tree.joinpath(*SFT)) for p in results.values())


# --- the asset index -----------------------------------------------------------------------


@pytest.fixture(params=["local", "s3", "memory"])
def any_root(request, tmp_path) -> ArtifactRoot:
    if request.param == "local":
        return ArtifactRoot(str(tmp_path / "artifacts"))
    if request.param == "memory":
        return ArtifactRoot(f"memory://vlmrl-{uuid.uuid4().hex[:10]}/artifacts", cache=tmp_path / "cache")
    s3 = request.getfixturevalue("s3")
    return ArtifactRoot(f"s3://{s3['bucket']}/t-{uuid.uuid4().hex[:10]}", cache=tmp_path / "cache",
                        storage_options=s3["options"])


def test_index_record_lookup_keys(any_root):
    root = any_root
    assert root.keys() == [] and root.lookup("sft_checkpoint") is None
    ckpt = root.local(*SFT)
    ckpt.mkdir()
    stored = root.record("sft_checkpoint", {"path": str(ckpt.resolve()), "data_version": "abc",
                                            "mlflow_run_id": None})
    assert stored == {"path": "checkpoints/sft", "uri": root.uri(*SFT), "data_version": "abc",
                      "mlflow_run_id": None}
    root.record("sft_report[bench]", {"path": "reports/bench/sft/run00001", "dagster_run_id": "r1"})
    root.record("odd key/with spaces%", {"path": "raw"})
    assert root.keys() == ["odd key/with spaces%", "sft_checkpoint", "sft_report[bench]"]
    assert root.lookup("sft_checkpoint") == stored
    assert root.lookup("sft_report[bench]")["uri"] == root.uri(*REPORT)
    assert root.lookup("odd key/with spaces%")["path"] == "raw"
    root.record("sft_checkpoint", {"path": "checkpoints/rl"})  # a newer materialization replaces it
    assert root.lookup("sft_checkpoint") == {"path": "checkpoints/rl", "uri": root.uri("checkpoints", "rl")}
    with pytest.raises(ValueError, match="not an artifact inside"):
        root.record("elsewhere", {"path": str(root.local_root.parent / "other")})
    if root.remote:
        assert not (root.local_root / ASSET_INDEX).exists()  # the index lives on the remote only
    else:  # assets.json as before: `vlmrl lineage <asset key>` resolves it
        path, entry = find_asset("sft_report[bench]", root.local_root / ASSET_INDEX)
        assert path == root.local(*REPORT).absolute() and entry["dagster_run_id"] == "r1"


def test_index_objects_on_s3_and_concurrent_writers(s3, s3_uri, tmp_path):
    roots = [ArtifactRoot(s3_uri, cache=tmp_path / f"c{i}", storage_options=s3["options"]) for i in range(2)]
    start = threading.Barrier(2)
    errors = []

    def write(i: int) -> None:
        try:
            start.wait()
            for n in range(15):
                roots[i].record(f"asset-{i}-{n}[p]", {"path": f"reports/b/{i}/{n}", "n": n})
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    expected = sorted(f"asset-{i}-{n}[p]" for i in range(2) for n in range(15))
    assert roots[0].keys() == roots[1].keys() == expected  # no entry lost
    assert roots[1].lookup("asset-0-7[p]") == {"path": "reports/b/0/7", "n": 7, "uri": f"{s3_uri}/reports/b/0/7"}
    assert server_names(s3, f"{s3_uri}/{INDEX}") == {
        f"asset-{i}-{n}%5Bp%5D.json" for i in range(2) for n in range(15)}


# --- audit ---------------------------------------------------------------------------------


def test_audit_of_a_published_chain_from_a_fresh_cache(writer, tree, tmp_path, s3):
    for parts in ARTIFACTS:
        writer.push(*parts)
    r = reader(writer, tmp_path / "r")
    assert r.audit(*SFT) == []
    assert r.audit(*REPORT) == []
    # everything the chain names was pulled, byte for byte, and nothing else
    for parts in ARTIFACTS:
        assert tree_bytes(r.local(*parts)) == tree_bytes(tree.joinpath(*parts)), parts
    assert {p.name for p in (tmp_path / "r").iterdir()} == {"raw", "frames", "checkpoints", "reports",
                                                           ".vlmrl-pulled"}

    # an object changed directly on the server (the marker no longer matches it)
    arrow = next(p for p in server_names(s3, writer.uri(*FRAMES)) if p.endswith(".arrow"))
    bucket = s3["bucket"]
    key = writer.uri(*FRAMES).removeprefix(f"s3://{bucket}/") + f"/{arrow}"
    data = bytearray(s3["client"].get_object(Bucket=s3["bucket"], Key=key)["Body"].read())
    data[len(data) // 2] ^= 0x01
    s3["client"].put_object(Bucket=s3["bucket"], Key=key, Body=bytes(data))
    problems = reader(writer, tmp_path / "fresh").audit(*SFT)
    assert any(p.startswith(f"{writer.uri(*FRAMES)}/{arrow}: content differs from the marker") for p in problems)
    assert any("frames/sft: dataset missing" in p for p in problems)  # the copy it could not pull

    # a consistent re-publication of changed weights (marker recomputed): the lineage catches it
    flip(writer.local(*BASE) / "model.safetensors")
    writer.push(*BASE)
    problems = r.audit(*SFT)  # r's cache holds the old base: pulled again, then audited
    assert any("checkpoints/base/model.safetensors: content changed since it was recorded" in p
               for p in problems), problems
    assert tree_bytes(r.local(*BASE)) == tree_bytes(writer.local(*BASE))

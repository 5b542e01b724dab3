"""The lineage audit on a copied artifacts tree (issue 13, finding 6).

A small real tree (synthetic media, two frame datasets built by extract, a base and an
SFT checkpoint with lineage, an evaluation report of the SFT checkpoint, assets.json and
an MLflow store outside the tree) is copied; the copy is audited in place of the
original, tampered in each way, and every tamper is detected in the copy while the
original stays untouched and clean.
"""

import json
import os
import shutil
from pathlib import Path

import pytest

from vlmrl.hashing import sha256_file, sha256_tree
from vlmrl.lineage import (
    ASSET_INDEX,
    CONTENT_TAG,
    LINEAGE,
    Anchor,
    audit,
    dataset_entry,
    format_chain,
    lineage_hash,
    read_manifest,
    record_asset,
    write_manifest,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def rewrite_lineage(checkpoint: Path, **changes) -> None:
    """What a careful forger does: edit lineage.json and keep it self-consistent."""
    m = read_manifest(checkpoint)
    m.update(changes)
    (checkpoint / LINEAGE).write_text(json.dumps(m, indent=1) + "\n")


def first_answer(rows, frames, **_):
    return ["<think>x</think><answer>A</answer>" for _ in rows]


def build_tree(root: Path, synth_dir: Path, mlflow_uri: str | None = None) -> dict:
    """artifacts/{raw, frames/{sft,bench}, checkpoints/{base,sft}, reports/...} + assets.json."""
    from vlmrl.data.extract import extract_dataset
    from vlmrl.data.frames import FrameOptions
    from vlmrl.eval import load_benchmark
    from vlmrl.eval.runner import EvalSettings, evaluate

    opts = FrameOptions(max_pixels=3136, min_pixels=3136, max_frames=4, frame_format="png")
    raw = root / "raw"
    raw.mkdir(parents=True)
    for name in ("sft.json", "bench.json"):  # the media those two splits use, and the annotations
        rows = json.loads((synth_dir / name).read_text())[:3]
        (raw / name).write_text(json.dumps(rows))
        for r in rows:
            (raw / r["path"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(synth_dir / r["path"], raw / r["path"])
    sft_frames = extract_dataset(raw / "sft.json", raw, root / "frames" / "sft", opts, workers=1, progress=False)
    bench_frames = extract_dataset(raw / "bench.json", raw, root / "frames" / "bench", opts, workers=1,
                                   progress=False)
    base = root / "checkpoints" / "base"
    base.mkdir(parents=True)
    (base / "model.safetensors").write_bytes(b"base weights" * 10)
    write_manifest(base, kind="base", recipe={"model": "tiny"}, seed=0)
    sft = root / "checkpoints" / "sft"
    sft.mkdir()
    (sft / "model.safetensors").write_bytes(b"sft weights" * 10)
    (sft / "config.json").write_text("{}")
    write_manifest(sft, kind="sft", parent=base, datasets=[dataset_entry(sft_frames.path, "sft")],
                   recipe={"lr": 1e-4}, seed=1, metrics={"train_loss": 0.5}, tracking={"mlflow_run_id": None})
    report_dir = root / "reports" / "bench" / "sft" / "run1"
    bench = load_benchmark(bench_frames.path, name="bench")
    evaluate(bench, first_answer, report_dir, EvalSettings(shuffled_control=False), checkpoint=sft,
             stage="sft", progress=False)
    runs = {}
    if mlflow_uri:  # the record outside the tree: what `make run` tags each asset's MLflow run with
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=mlflow_uri)
        exp = client.create_experiment("lineage-copy")
        for key, digest in (("sft_checkpoint", lineage_hash(sft)),
                            ("sft_report[bench]", sha256_file(report_dir / "report.json"))):
            runs[key] = client.create_run(exp, tags={CONTENT_TAG: digest}).info.run_id
    record_asset(root / ASSET_INDEX, "sft_checkpoint", {"path": str(sft), "mlflow_run_id": runs.get("sft_checkpoint")})
    record_asset(root / ASSET_INDEX, "sft_report[bench]",
                 {"path": str(report_dir), "mlflow_run_id": runs.get("sft_report[bench]")})
    return {"root": root, "sft": sft, "base": base, "report": report_dir, "runs": runs}


@pytest.fixture(scope="module")
def original(tmp_path_factory, synth_dir):
    tmp = tmp_path_factory.mktemp("lineage-copy")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    tree = build_tree(tmp / "artifacts", synth_dir, uri)
    tree["uri"] = uri
    tree["hashes"] = sha256_tree(tree["root"])
    return tree


@pytest.fixture()
def copy(original, tmp_path):
    dst = tmp_path / "copied" / "artifacts"
    shutil.copytree(original["root"], dst, symlinks=True)
    yield {k: dst / Path(v).relative_to(original["root"]) if isinstance(v, Path) else v
           for k, v in original.items()}
    # whatever the copy went through, the original is byte for byte what it was, and clean
    assert sha256_tree(original["root"]) == original["hashes"]


def copy_audit(copy, target="sft", **kw):
    return audit(copy[target], root=copy["root"], **kw)


def test_manifests_record_relative_references(original):
    sft = read_manifest(original["sft"])
    assert sft["parent"]["ref"] == "../base" and sft["datasets"][0]["ref"] == "../../frames/sft"
    ds = json.loads((original["root"] / "frames" / "sft" / "manifest.json").read_text())
    assert ds["annotations"]["ref"] == "../../raw/sft.json" and ds["media_root_ref"] == "../../raw"
    report = json.loads((original["report"] / "report.json").read_text())
    assert report["checkpoint"]["ref"] == "../../../../checkpoints/sft"
    assert report["benchmark"]["dataset_ref"] == "../../../../frames/bench"
    assert set(report["file_sha256"]) == {"predictions.jsonl", "report.md", "accuracy.png"}
    index = json.loads((original["root"] / ASSET_INDEX).read_text())
    assert index["sft_checkpoint"]["path"] == "checkpoints/sft"


def test_untouched_copy_audits_clean_inside_itself(copy, original):
    for target in ("sft", "report"):
        report = copy_audit(copy, target)
        assert report.ok, report.problems
        assert report.chain and all(Path(n.path).is_relative_to(copy["root"]) for n in report.chain)
    assert [n.manifest["kind"] for n in copy_audit(copy, "report").chain] == ["report", "sft", "base"]
    assert audit(original["report"], root=original["root"]).ok


@pytest.mark.parametrize("where", ["dataset", "bench_dataset", "media", "annotations", "parent", "prediction",
                                   "report_plot"])
def test_flipped_byte_in_copy_detected(copy, where):
    changed = {
        "dataset": lambda: next((copy["root"] / "frames" / "sft").glob("data-*.arrow")),
        "bench_dataset": lambda: next((copy["root"] / "frames" / "bench").glob("data-*.arrow")),
        "media": lambda: copy["root"] / "raw" / json.loads((copy["root"] / "raw" / "sft.json").read_text())[0]["path"],
        "annotations": lambda: copy["root"] / "raw" / "sft.json",
        "parent": lambda: copy["base"] / "model.safetensors",
        "prediction": lambda: copy["report"] / "predictions.jsonl",
        "report_plot": lambda: copy["report"] / "accuracy.png",
    }[where]()
    flip(changed)
    target = "sft" if where in ("dataset", "media", "annotations", "parent") else "report"
    report = copy_audit(copy, target)
    assert not report.ok
    assert any(p.startswith(f"{changed}:") for p in report.problems), report.problems


@pytest.mark.parametrize("where", ["frames/sft", "checkpoints/sft", "checkpoints/base", "reports/bench/sft/run1"])
def test_stray_file_in_copy_detected(copy, where):
    stray = copy["root"] / where / "stray.bin"
    stray.write_bytes(b"not built here")
    report = copy_audit(copy, "report")
    assert any(p.startswith(f"{stray}: not part of the") for p in report.problems), report.problems


def test_edited_head_with_every_hash_recomputed(copy):
    """metrics and seed edited in the newest lineage.json, assets.json kept consistent: the files
    agree with each other, so only a record outside the tree can tell (Dagster, MLflow)."""
    rewrite_lineage(copy["sft"], seed=7, metrics={"train_loss": 0.01})
    record_asset(copy["root"] / ASSET_INDEX, "sft_checkpoint",
                 {"path": str(copy["sft"]), "mlflow_run_id": copy["runs"]["sft_checkpoint"],
                  "data_version": lineage_hash(copy["sft"])[:16]})
    files_only = copy_audit(copy)
    assert files_only.ok and "not checked against an outside record" in format_chain(files_only)
    from vlmrl.lineage import mlflow_anchor

    anchored = copy_audit(copy, anchor=mlflow_anchor(copy["uri"], copy["runs"]["sft_checkpoint"]))
    assert not anchored.ok
    (problem,) = anchored.problems
    assert problem.startswith(f"{copy['sft'] / LINEAGE}: differs from the one MLflow run ")


def test_edited_parent_with_child_rehashed_caught_at_the_head(copy):
    rewrite_lineage(copy["base"], seed=99)
    m = read_manifest(copy["sft"])
    m["parent"]["lineage_sha256"] = lineage_hash(copy["base"])
    (copy["sft"] / LINEAGE).write_text(json.dumps(m, indent=1) + "\n")
    assert copy_audit(copy).ok  # self-consistent files
    report = copy_audit(copy, anchor=Anchor(read_manifest_hash_of_original(copy), "the recorded head"))
    assert any("differs from the recorded head" in p for p in report.problems), report.problems


def read_manifest_hash_of_original(copy) -> str:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=copy["uri"]).get_run(copy["runs"]["sft_checkpoint"]).data.tags[CONTENT_TAG]


def test_edited_report_with_hashes_recomputed(copy):
    path = copy["report"] / "report.json"
    report = json.loads(path.read_text())
    report["summary"]["accuracy"]["mean"] = 0.99
    path.write_text(json.dumps(report))
    from vlmrl.lineage import mlflow_anchor

    anchored = copy_audit(copy, "report", anchor=mlflow_anchor(copy["uri"], copy["runs"]["sft_report[bench]"]))
    assert [p for p in anchored.problems if p.startswith(f"{path}: differs from the one MLflow run")]


def test_reference_out_of_the_copy_refused(copy, original):
    """A reference that leads back to the original (or anywhere outside) is not followed."""
    m = read_manifest(copy["sft"])
    m["datasets"][0]["ref"] = os.path.relpath(original["root"] / "frames" / "sft", copy["sft"])
    (copy["sft"] / LINEAGE).write_text(json.dumps(m, indent=1) + "\n")
    problems = copy_audit(copy).problems
    assert any("sft dataset" in p and "outside the audited tree" in p and "refused" in p for p in problems), problems


def test_legacy_absolute_manifest_refused_in_a_copy(copy, original):
    """Manifests from before relative references: absolute paths into the original."""
    m = read_manifest(copy["sft"])
    del m["parent"]["ref"]
    m["parent"]["path"] = str(original["base"])
    (copy["sft"] / LINEAGE).write_text(json.dumps(m, indent=1) + "\n")
    problems = copy_audit(copy).problems
    assert any("recorded only as the absolute path" in p and str(original["base"]) in p for p in problems), problems


def test_symlink_back_to_original_flagged(copy, original):
    target = copy["sft"] / "model.safetensors"
    target.unlink()
    target.symlink_to(original["sft"] / "model.safetensors")  # same bytes, but not the copy's
    problems = copy_audit(copy).problems
    assert any(p.startswith(f"{target}: symbolic link to") and "outside the audited tree" in p for p in problems)


def test_raw_inputs_outside_the_tree_need_an_input_root(tmp_path, copy):
    """Raw media kept outside the artifacts tree: refused unless named as an input root."""
    outside = tmp_path / "data"
    shutil.move(copy["root"] / "raw", outside)
    (copy["root"] / "raw").symlink_to(outside)
    refused = copy_audit(copy)
    assert any("lies outside the audited tree" in p and "--input-root" in p for p in refused.problems)
    assert copy_audit(copy, input_roots=(outside,)).ok


def test_lineage_cli_on_the_copy(copy, capsys):
    from vlmrl.cli import main

    args = ["--artifacts", str(copy["root"]), "--tracking-uri", copy["uri"]]
    assert main(["lineage", "sft_checkpoint", *args]) == 0
    out = capsys.readouterr().out
    assert f"sft checkpoint {copy['sft']}" in out and "the head matches the one MLflow run" in out
    assert main(["lineage", "sft_report[bench]", *args]) == 0
    assert f"report {copy['report']}" in capsys.readouterr().out
    rewrite_lineage(copy["sft"], metrics={"train_loss": 0.01})
    assert main(["lineage", "sft_checkpoint", *args]) == 1
    assert f"PROBLEM: {copy['sft'] / LINEAGE}: differs from the one MLflow run" in capsys.readouterr().out
    assert main(["lineage", "sft_report[bench]", *args]) == 1  # the report evaluated another lineage.json
    assert "differs from the one the report evaluated" in capsys.readouterr().out
    assert main(["lineage", str(copy["sft"]), "--artifacts", str(copy["root"]),
                 "--expect-sha256", "0" * 64, "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["root"] == str(copy["root"].resolve()) and "--expect-sha256" in out["anchor"]


def test_cli_names_a_missing_mlflow_record(copy, tmp_path, capsys):
    from vlmrl.cli import main

    assert main(["lineage", "sft_checkpoint", "--artifacts", str(copy["root"]),
                 "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"]) == 1
    assert "cannot be checked against MLflow: no MLflow store" in capsys.readouterr().out
    assert not (tmp_path / "none.db").exists()


def test_dagster_audit_of_a_copy(copy, original, capsys):
    """`python -m orchestration.audit KEY --artifacts COPY`: the event log outside the tree
    vouches for the head, so a self-consistent edit of the copy is caught."""
    from dagster import AssetMaterialization, DagsterInstance, MetadataValue

    from orchestration.audit import main

    events = [("base_model", None, original["base"], lineage_hash(original["base"])),
              ("sft_checkpoint", None, original["sft"], lineage_hash(original["sft"])),
              ("sft_report", "bench", original["report"], sha256_file(original["report"] / "report.json"))]
    with DagsterInstance.ephemeral() as instance:
        for key, partition, path, digest in events:
            instance.report_runless_asset_event(AssetMaterialization(
                key, partition=partition, tags={"dagster/data_version": digest[:16]},
                metadata={"path": MetadataValue.path(str(path)), "content_hash": digest,
                          "artifact_path": path.relative_to(original["root"]).as_posix()}))
        argv = ["--artifacts", str(copy["root"])]
        assert main(["sft_checkpoint", *argv], instance) == 0
        out = capsys.readouterr().out
        assert f"sft checkpoint {copy['sft']}" in out and "the head matches the one Dagster recorded" in out
        assert main(["sft_report[bench]", *argv], instance) == 0
        assert f"report {copy['report']}" in capsys.readouterr().out
        rewrite_lineage(copy["sft"], seed=7, metrics={"train_loss": 0.01})
        assert main(["sft_checkpoint", *argv], instance) == 1
        out = capsys.readouterr().out
        assert f"PROBLEM: {copy['sft'] / LINEAGE}: differs from the one Dagster recorded for sft_checkpoint" in out
        assert "DAGSTER/MANIFEST MISMATCH: sft_checkpoint: Dagster data version" in out
        assert main(["sft_report[bench]", *argv], instance) == 1
        assert "differs from the one the report evaluated" in capsys.readouterr().out
        assert main(["rl_checkpoint", *argv], instance) == 2
        assert "rl_checkpoint has never been materialized" in capsys.readouterr().err


def test_index_or_target_outside_the_tree_refused(copy, original, capsys):
    """An assets.json from before it recorded relative paths sends a key to the original."""
    from vlmrl.cli import main

    index = json.loads((copy["root"] / ASSET_INDEX).read_text())
    index["sft_checkpoint"]["path"] = str(original["sft"])
    (copy["root"] / ASSET_INDEX).write_text(json.dumps(index))
    assert main(["lineage", "sft_checkpoint", "--artifacts", str(copy["root"])]) == 2
    assert f"points to {original['sft']}, outside the artifacts tree" in capsys.readouterr().err
    report = audit(original["sft"], root=copy["root"])
    assert f"{original['sft']} lies outside the audited tree" in report.problems[0]

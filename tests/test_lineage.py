import json

import pytest

from vlmrl.data.extract import extract_dataset
from vlmrl.data.frames import FrameOptions
from vlmrl.lineage import LINEAGE, audit, dataset_entry, format_chain, lineage_hash, write_manifest

OPTS = FrameOptions(max_pixels=3136, min_pixels=3136, frame_format="png")


def flip(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture()
def chain(tmp_path, synth_dir):
    import shutil

    media = tmp_path / "media"
    shutil.copytree(synth_dir, media)
    ds = extract_dataset(media / "sft.json", media, tmp_path / "sft_frames", OPTS, workers=1, progress=False)
    base = tmp_path / "base"
    base.mkdir()
    (base / "model.safetensors").write_bytes(b"base weights")
    write_manifest(base, kind="base", recipe={"model": "tiny"}, seed=0)
    sft = tmp_path / "sft"
    sft.mkdir()
    (sft / "model.safetensors").write_bytes(b"sft weights")
    (sft / "config.json").write_text("{}")
    write_manifest(sft, kind="sft", parent=base, datasets=[dataset_entry(ds.path, "train")],
                   recipe={"lr": 1e-4}, seed=1, metrics={"loss": 0.5},
                   tracking={"mlflow_run_id": "abc"})
    return {"base": base, "sft": sft, "dataset": ds.path, "media": media}


def test_audit_passes_and_prints_chain(chain):
    report = audit(chain["sft"])
    assert report.ok, report.problems
    assert [n.manifest["kind"] for n in report.chain] == ["sft", "base"]
    text = format_chain(report)
    assert "sft checkpoint" in text and "base checkpoint" in text and "mlflow_run_id=abc" in text
    assert "lineage OK" in text
    m = json.loads((chain["sft"] / LINEAGE).read_text())
    assert m["parent"]["lineage_sha256"] == lineage_hash(chain["base"])
    assert set(m["files"]) == {"model.safetensors", "config.json"}


@pytest.mark.parametrize("target", ["checkpoint", "parent", "dataset", "media", "annotations"])
def test_audit_names_the_changed_file(chain, target):
    if target == "checkpoint":
        changed = chain["sft"] / "model.safetensors"
    elif target == "parent":
        changed = chain["base"] / "model.safetensors"
    elif target == "dataset":
        changed = next(chain["dataset"].glob("data-*.arrow"))
    elif target == "media":
        changed = chain["media"] / json.loads((chain["media"] / "sft.json").read_text())[0]["path"]
    else:
        changed = chain["media"] / "sft.json"
    flip(changed)
    report = audit(chain["sft"])
    assert not report.ok
    assert any(str(changed) in p for p in report.problems), report.problems
    assert "lineage FAILED" in format_chain(report)


def test_replaced_parent_detected(chain):
    write_manifest(chain["base"], kind="base", recipe={"model": "other"}, seed=0)
    report = audit(chain["sft"])
    assert any("differs from the one its child was trained from" in p for p in report.problems)


def test_not_a_checkpoint(tmp_path):
    report = audit(tmp_path)
    assert not report.ok and "no lineage.json" in report.problems[0]


def test_lineage_cli_by_path_and_asset_key(chain, tmp_path, capsys):
    from vlmrl.cli import main
    from vlmrl.lineage import record_asset

    assert main(["lineage", str(chain["sft"]), "--artifacts", str(tmp_path)]) == 0
    assert "lineage OK" in capsys.readouterr().out
    record_asset(tmp_path / "assets.json", "sft_checkpoint", {"path": str(chain["sft"]), "dagster_run_id": "r1"})
    assert main(["lineage", "sft_checkpoint", "--artifacts", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and [n["kind"] for n in out["chain"]] == ["sft", "base"]
    flip(chain["base"] / "model.safetensors")
    assert main(["lineage", "sft_checkpoint", "--artifacts", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"PROBLEM: {chain['base'] / 'model.safetensors'}: content changed" in out
    assert main(["lineage", "nope", "--artifacts", str(tmp_path)]) == 2
    assert "known: ['sft_checkpoint']" in capsys.readouterr().err

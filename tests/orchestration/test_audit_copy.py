"""The materialized graph records what the lineage audit of a copy needs (issue 13, finding 6):
paths relative to the artifacts root, the head's hash in Dagster's event log and as an MLflow
run tag, so a copied tree audits clean and a self-consistent edit of the copy is caught."""

import json
import shutil

from vlmrl.lineage import ASSET_INDEX, LINEAGE, read_manifest


def test_copied_graph_audits_and_catches_a_rehashed_edit(graph, tmp_path, capsys):
    from orchestration.audit import main as dagster_audit
    from vlmrl.cli import main

    copy = tmp_path / "artifacts"
    shutil.copytree(graph.artifacts, copy, symlinks=True)
    index = json.loads((copy / ASSET_INDEX).read_text())
    assert index["rl_checkpoint"]["path"] == "checkpoints/rl"
    instance = graph.instance()
    by_dagster = ["rl_checkpoint", "--artifacts", str(copy)]
    by_mlflow = ["lineage", "rl_checkpoint", "--artifacts", str(copy), "--tracking-uri", graph.mlflow_uri]
    assert dagster_audit(by_dagster, instance) == 0
    out = capsys.readouterr().out
    assert f"rl checkpoint {copy / 'checkpoints' / 'rl'}" in out and str(graph.artifacts) + "/" not in out
    assert main(by_mlflow) == 0
    assert "the head matches the one MLflow run" in capsys.readouterr().out
    assert dagster_audit(["rl_report[synthetic]", "--artifacts", str(copy), "--skip-media"], instance) == 0
    capsys.readouterr()

    head = copy / "checkpoints" / "rl"
    manifest = read_manifest(head)
    manifest["seed"] = manifest["seed"] + 1  # every hash inside the tree still agrees
    (head / LINEAGE).write_text(json.dumps(manifest, indent=1) + "\n")
    assert dagster_audit(by_dagster, instance) == 1
    out = capsys.readouterr().out
    assert f"PROBLEM: {head / LINEAGE}: differs from the one Dagster recorded for rl_checkpoint" in out
    assert main(by_mlflow) == 1
    assert f"PROBLEM: {head / LINEAGE}: differs from the one MLflow run" in capsys.readouterr().out
    assert main(["lineage", "rl_checkpoint", "--artifacts", str(graph.artifacts)]) == 0  # the original: clean

"""Campaign cases for the lineage audit on a copied artifacts tree (issue 13, finding 6).

Each case builds a small real tree in its scratch directory (synthetic media, frame
datasets built by extract, a base and an SFT checkpoint with lineage, an evaluation
report, ``assets.json`` and, where the case needs it, an MLflow store outside the tree),
copies it as a user would (``cp -r``), tampers with the copy and runs ``vlmrl lineage``
on the copy. A tamper the audit names is ``REJECTED``; an audit that passes anyway, or
that follows a path back into the original, is ``SILENT``; the original must stay
untouched throughout.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vlmrl.doctor.campaign import Case, Result

AREA = "lineage"


@dataclass
class Tree:
    original: Path  # the artifacts root that was built
    copy: Path  # its copy, which the case tampers with
    mlflow_uri: str | None  # a store outside both trees

    def at(self, rel: str) -> Path:
        return self.copy / rel

    def snapshot(self) -> dict[str, str]:
        from vlmrl.hashing import sha256_tree

        return sha256_tree(self.original)


def _constant_answer(rows, frames, **_):
    return ["<think>the frames</think><answer>A</answer>" for _ in rows]


def build_tree(work: Path, mlflow: bool = False) -> Tree:
    """``work/artifacts`` as `make run` lays it out (small), copied to ``work/copy/artifacts``."""
    from vlmrl.data.extract import extract_dataset
    from vlmrl.data.frames import FrameOptions
    from vlmrl.data.synth import SynthSizes, generate
    from vlmrl.eval import load_benchmark
    from vlmrl.eval.runner import EvalSettings, evaluate
    from vlmrl.hashing import sha256_file
    from vlmrl.lineage import (
        ASSET_INDEX,
        CONTENT_TAG,
        dataset_entry,
        lineage_hash,
        record_asset,
        write_manifest,
    )

    art = work / "artifacts"
    raw = art / "raw"
    generate(raw, seed=0, sizes=SynthSizes(sft=4, rl=4, bench=4), progress=False)
    opts = FrameOptions(max_pixels=3136, min_pixels=3136, max_frames=4, frame_format="png")
    sft_frames = extract_dataset(raw / "sft.json", raw, art / "frames" / "sft", opts, workers=1, progress=False)
    bench_frames = extract_dataset(raw / "bench.json", raw, art / "frames" / "bench", opts, workers=1,
                                   progress=False)
    base, sft = art / "checkpoints" / "base", art / "checkpoints" / "sft"
    base.mkdir(parents=True)
    (base / "model.safetensors").write_bytes(b"base weights " * 64)
    write_manifest(base, kind="base", recipe={"model": "tiny"}, seed=0)
    sft.mkdir()
    (sft / "model.safetensors").write_bytes(b"sft weights " * 64)
    (sft / "config.json").write_text("{}\n")
    write_manifest(sft, kind="sft", parent=base, datasets=[dataset_entry(sft_frames.path, "sft")],
                   recipe={"lr": 1e-4}, seed=1, metrics={"train_loss": 0.5})
    report = art / "reports" / "bench" / "sft" / "run1"
    evaluate(load_benchmark(bench_frames.path, name="bench"), _constant_answer, report,
             EvalSettings(shuffled_control=False), checkpoint=sft, stage="sft", progress=False)
    runs: dict[str, str | None] = {"sft_checkpoint": None, "sft_report[bench]": None}
    uri = None
    if mlflow:  # what `make run` records outside the tree: each asset's hash as an MLflow run tag
        from mlflow import MlflowClient

        uri = f"sqlite:///{work / 'mlflow' / 'mlflow.db'}"
        (work / "mlflow").mkdir()
        with contextlib.redirect_stderr(io.StringIO()):  # MLflow's store set-up chatter
            client = MlflowClient(tracking_uri=uri)
            exp = client.create_experiment("doctor")
        for key, digest in (("sft_checkpoint", lineage_hash(sft)),
                            ("sft_report[bench]", sha256_file(report / "report.json"))):
            runs[key] = client.create_run(exp, tags={CONTENT_TAG: digest}).info.run_id
    record_asset(art / ASSET_INDEX, "sft_checkpoint", {"path": str(sft), "mlflow_run_id": runs["sft_checkpoint"]})
    record_asset(art / ASSET_INDEX, "sft_report[bench]",
                 {"path": str(report), "mlflow_run_id": runs["sft_report[bench]"]})
    copy = work / "copy" / "artifacts"
    shutil.copytree(art, copy, symlinks=True)
    return Tree(art, copy, uri)


def _lineage(tree: Tree, target: str, *extra: str) -> tuple[int, str]:
    """``vlmrl lineage TARGET --artifacts COPY ...``: exit code and everything it printed."""
    from vlmrl.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        rc = main(["lineage", target, "--artifacts", str(tree.copy), *extra])
    return rc, out.getvalue()


def _anchored(tree: Tree) -> tuple[str, ...]:
    return ("--tracking-uri", tree.mlflow_uri) if tree.mlflow_uri else ()


def _judge(tree: Tree, before: dict[str, str], target: str, must_name: list[str],
           extra: tuple[str, ...] = ()) -> Result:
    """REJECTED when the audit of the copy fails naming every ``must_name``; SILENT when it
    passes, or when the original changed."""
    rc, out = _lineage(tree, target, *extra)
    if tree.snapshot() != before:
        return Result.silent("the original tree changed while its copy was audited")
    if rc == 0:
        return Result.silent(f"the audit of the tampered copy passed:\n{out[-600:]}")
    problems = [line.strip() for line in out.splitlines() if "PROBLEM" in line or "error:" in line]
    missing = [m for m in must_name if not any(m in p for p in problems)]
    if rc not in (1, 2) or missing:  # 2: refused before auditing (e.g. an index entry out of the tree)
        return Result.crashed(f"exit {rc}; no problem names {missing}:\n{out[-600:]}")
    hits = [p for p in problems if all(m in p for m in must_name[:1])]
    return Result.rejected(hits[0] if hits else problems[0])


def _tamper_case(name: str, target: str, tamper: Callable[[Tree], list[str]], mlflow: bool = False) -> Case:
    """A case: build, copy, ``tamper`` the copy (returns what the audit must name), audit the copy."""
    def fn(work: Path) -> Result:
        tree = build_tree(work, mlflow=mlflow)
        before = tree.snapshot()
        must_name = tamper(tree)
        return _judge(tree, before, target, must_name, _anchored(tree))
    fn.__name__ = name
    return Case(name, AREA, fn)


def _flip(path: Path) -> list[str]:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    return [f"{path}:"]


def _stray(directory: Path) -> list[str]:
    (directory / "stray.bin").write_bytes(b"not built here")
    return [f"{directory / 'stray.bin'}: not part of the"]


def _rewrite_json(path: Path, edit: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    edit(data)
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def _recompute_index(tree: Tree) -> None:
    """A careful forger also keeps assets.json consistent with the edited files."""
    from vlmrl.hashing import sha256_file
    from vlmrl.lineage import ASSET_INDEX, lineage_hash

    def edit(index: dict) -> None:
        index["sft_checkpoint"]["data_version"] = lineage_hash(tree.at("checkpoints/sft"))[:16]
        index["sft_report[bench]"]["data_version"] = sha256_file(tree.at("reports/bench/sft/run1/report.json"))[:16]
    _rewrite_json(tree.copy / ASSET_INDEX, edit)


def _edit_head(field: str, value: object) -> Callable[[Tree], list[str]]:
    def tamper(tree: Tree) -> list[str]:
        lineage = tree.at("checkpoints/sft/lineage.json")
        _rewrite_json(lineage, lambda m: m.__setitem__(field, value))
        _recompute_index(tree)
        return [f"{lineage}: differs from the one MLflow run"]
    return tamper


def _edit_parent_rehash(tree: Tree) -> list[str]:
    from vlmrl.lineage import lineage_hash

    _rewrite_json(tree.at("checkpoints/base/lineage.json"), lambda m: m.__setitem__("seed", 99))
    new = lineage_hash(tree.at("checkpoints/base"))
    _rewrite_json(tree.at("checkpoints/sft/lineage.json"), lambda m: m["parent"].__setitem__("lineage_sha256", new))
    _recompute_index(tree)
    return [f"{tree.at('checkpoints/sft/lineage.json')}: differs from the one MLflow run"]


def _edit_report_rehash(tree: Tree) -> list[str]:
    report = tree.at("reports/bench/sft/run1/report.json")
    _rewrite_json(report, lambda r: r["summary"]["accuracy"].__setitem__("mean", 0.99))
    _recompute_index(tree)
    return [f"{report}: differs from the one MLflow run"]


def _edit_predictions_rehash(tree: Tree) -> list[str]:
    """Predictions edited and report.json's file hashes recomputed to match."""
    from vlmrl.hashing import sha256_file

    run = tree.at("reports/bench/sft/run1")
    predictions = (run / "predictions.jsonl").read_text(encoding="utf-8")
    if "<answer>A</answer>" not in predictions:
        raise AssertionError("the case's tamper found nothing to edit")
    (run / "predictions.jsonl").write_text(predictions.replace("<answer>A</answer>", "<answer>B</answer>"))
    _rewrite_json(run / "report.json", lambda r: r["file_sha256"].__setitem__(
        "predictions.jsonl", sha256_file(run / "predictions.jsonl")))
    _recompute_index(tree)
    return [f"{run / 'report.json'}: differs from the one MLflow run"]


def _ref_to_original(tree: Tree) -> list[str]:
    sft = tree.at("checkpoints/sft")
    _rewrite_json(sft / "lineage.json", lambda m: m["datasets"][0].__setitem__(
        "ref", os.path.relpath(tree.original / "frames" / "sft", sft)))
    return ["sft dataset", "outside the audited tree"]


def _parent_ref_escapes(tree: Tree) -> list[str]:
    sft = tree.at("checkpoints/sft")
    _rewrite_json(sft / "lineage.json", lambda m: m["parent"].__setitem__("ref", "../../../../artifacts/checkpoints/base"))
    return ["parent checkpoint", "outside the audited tree"]


def _legacy_absolute_parent(tree: Tree) -> list[str]:
    """A manifest from before references were relative: the parent as an absolute path."""
    def edit(m: dict) -> None:
        m["parent"].pop("ref")
        m["parent"]["path"] = str(tree.original / "checkpoints" / "base")
    _rewrite_json(tree.at("checkpoints/sft/lineage.json"), edit)
    return ["recorded only as the absolute path"]


def _legacy_absolute_index(tree: Tree) -> list[str]:
    """An assets.json from before it was relative sends the audit to the original checkpoint."""
    from vlmrl.lineage import ASSET_INDEX

    _rewrite_json(tree.copy / ASSET_INDEX, lambda i: i["sft_checkpoint"].__setitem__(
        "path", str(tree.original / "checkpoints" / "sft")))
    return ["outside the artifacts tree", "refused"]


def _symlink_to_original(tree: Tree) -> list[str]:
    weights = tree.at("checkpoints/sft/model.safetensors")
    weights.unlink()
    weights.symlink_to(tree.original / "checkpoints" / "sft" / "model.safetensors")
    return [f"{weights}: symbolic link to"]


def _media_outside(tree: Tree) -> list[str]:
    """Raw media moved out of the tree (and linked back): refused unless named as an input root."""
    outside = tree.copy.parent.parent / "elsewhere"
    shutil.move(tree.at("raw"), outside)
    tree.at("raw").symlink_to(outside)
    return ["lies outside the audited tree", "--input-root"]


def _media_file(tree: Tree) -> Path:
    rows = json.loads(tree.at("raw/sft.json").read_text(encoding="utf-8"))
    return tree.at("raw") / rows[0]["path"]


def _clean_copy(work: Path) -> Result:
    """The untouched copy audits clean, every node inside the copy, and the head matches MLflow."""
    tree = build_tree(work, mlflow=True)
    before = tree.snapshot()
    results = {t: _lineage(tree, t, *_anchored(tree)) for t in ("sft_checkpoint", "sft_report[bench]")}
    if tree.snapshot() != before:
        return Result.silent("the original tree changed while its copy was audited")
    for target, (rc, out) in results.items():
        nodes = [line for line in out.splitlines() if " checkpoint /" in line or line.startswith("report /")]
        outside = [n for n in nodes if str(tree.copy) not in n]
        if rc != 0 or outside or not nodes:
            return Result.silent(f"{target}: exit {rc}, nodes outside the copy {outside}:\n{out[-600:]}")
    return Result.handled("untouched copy: checkpoint and report chains audited inside the copy, "
                          "heads match their MLflow runs; the original untouched")


def _external_inputs_allowed(work: Path) -> Result:
    """Raw media outside the tree, named with --input-root: audited in place, nothing refused."""
    tree = build_tree(work)
    outside = tree.copy.parent.parent / "elsewhere"
    shutil.move(tree.at("raw"), outside)
    tree.at("raw").symlink_to(outside)
    _flip(_media_file(tree))
    rc, out = _lineage(tree, "sft_checkpoint", "--input-root", str(outside))
    if rc == 1 and "media file changed" in out and "outside the audited tree" not in out:
        return Result.handled("media under an explicit --input-root re-hashed in place (the flipped byte named)")
    return Result.silent(f"exit {rc}:\n{out[-600:]}")


CASES: list[Case] = [
    Case("lineage_copy_clean", AREA, _clean_copy),
    _tamper_case("lineage_copy_flip_dataset_byte", "sft_checkpoint",
                 lambda t: _flip(next(t.at("frames/sft").glob("data-*.arrow")))),
    _tamper_case("lineage_copy_flip_dataset_manifest", "sft_checkpoint",
                 lambda t: _flip(t.at("frames/sft/manifest.json"))),
    _tamper_case("lineage_copy_stray_dataset_file", "sft_checkpoint", lambda t: _stray(t.at("frames/sft"))),
    _tamper_case("lineage_copy_flip_media_byte", "sft_checkpoint", lambda t: _flip(_media_file(t))),
    _tamper_case("lineage_copy_flip_annotations", "sft_checkpoint", lambda t: _flip(t.at("raw/sft.json"))),
    _tamper_case("lineage_copy_flip_weights", "sft_checkpoint",
                 lambda t: _flip(t.at("checkpoints/sft/model.safetensors"))),
    _tamper_case("lineage_copy_flip_parent_weights", "sft_checkpoint",
                 lambda t: _flip(t.at("checkpoints/base/model.safetensors"))),
    _tamper_case("lineage_copy_stray_checkpoint_file", "sft_checkpoint",
                 lambda t: _stray(t.at("checkpoints/sft"))),
    _tamper_case("lineage_copy_edit_head_metrics_rehashed", "sft_checkpoint",
                 _edit_head("metrics", {"train_loss": 0.01}), mlflow=True),
    _tamper_case("lineage_copy_edit_head_seed_rehashed", "sft_checkpoint", _edit_head("seed", 7), mlflow=True),
    _tamper_case("lineage_copy_edit_parent_rehashed", "sft_checkpoint", _edit_parent_rehash, mlflow=True),
    _tamper_case("lineage_copy_report_flip_predictions", "sft_report[bench]",
                 lambda t: _flip(t.at("reports/bench/sft/run1/predictions.jsonl"))),
    _tamper_case("lineage_copy_report_stray_file", "sft_report[bench]",
                 lambda t: _stray(t.at("reports/bench/sft/run1"))),
    _tamper_case("lineage_copy_report_flip_bench_dataset", "sft_report[bench]",
                 lambda t: _flip(next(t.at("frames/bench").glob("data-*.arrow")))),
    _tamper_case("lineage_copy_report_checkpoint_changed", "sft_report[bench]",
                 lambda t: _flip(t.at("checkpoints/sft/model.safetensors"))),
    _tamper_case("lineage_copy_report_edit_rehashed", "sft_report[bench]", _edit_report_rehash, mlflow=True),
    _tamper_case("lineage_copy_report_predictions_rehashed", "sft_report[bench]", _edit_predictions_rehash,
                 mlflow=True),
    _tamper_case("lineage_copy_ref_to_original", "sft_checkpoint", _ref_to_original),
    _tamper_case("lineage_copy_parent_ref_escapes", "sft_checkpoint", _parent_ref_escapes),
    _tamper_case("lineage_copy_legacy_absolute_parent", "sft_checkpoint", _legacy_absolute_parent),
    _tamper_case("lineage_copy_legacy_absolute_index", "sft_checkpoint", _legacy_absolute_index),
    _tamper_case("lineage_copy_symlink_to_original", "sft_checkpoint", _symlink_to_original),
    _tamper_case("lineage_copy_media_outside_tree", "sft_checkpoint", _media_outside),
    Case("lineage_copy_media_under_input_root", AREA, _external_inputs_allowed),
]

"""End to end on the real tiny model: generation, scoring, shuffled control, report, CLI."""

import json

from vlmrl.cli import main
from vlmrl.eval import EvalSettings, GenerationSettings, evaluate, model_answerer, read_report


def build_model(bench, tmp_path):
    from vlmrl.models import build_tiny_model
    from vlmrl.train.prompts import tokenizer_corpus

    return build_tiny_model(tmp_path / "tiny", tokenizer_corpus(list(bench.dataset)), seed=0)


def test_tiny_model_report(bench, tmp_path):
    model_dir = build_model(bench, tmp_path)
    gen = GenerationSettings(max_new_tokens=12, batch_size=4)
    answer = model_answerer(model_dir, gen)
    a = answer(list(bench.dataset)[:3], [r["frames"] for r in list(bench.dataset)[:3]])
    b = answer(list(bench.dataset)[:3], [r["frames"] for r in list(bench.dataset)[:3]])
    assert a == b and all(isinstance(x, str) for x in a)  # greedy: deterministic
    report = evaluate(bench, answer, tmp_path / "r", EvalSettings(generation=gen), checkpoint=model_dir,
                      stage="base", progress=False)
    assert report["checkpoint"]["kind"] == "base" and report["checkpoint"]["path"] == str(model_dir)
    assert report["summary"]["n"] == len(bench.dataset)
    assert report["throughput"]["samples_per_s"] > 0
    assert 0.0 <= report["summary"]["accuracy"]["mean"] <= 1.0
    assert "all" in report["temporal"]["sensitivity"]
    preds = [json.loads(x) for x in (tmp_path / "r" / "predictions.jsonl").read_text().splitlines()]
    assert {p["completion"] for p in preds if not p["shuffled"]} >= set(a)


def test_eval_cli(bench, tmp_path, synth_dir, capsys):
    model_dir = build_model(bench, tmp_path)
    rc = main(["eval", "--checkpoint", str(model_dir), "--benchmark", "synthetic", "--data-root", str(synth_dir),
               "--out", str(tmp_path / "rep"), "--cache-dir", str(tmp_path / "cache"), "--max-new-tokens", "8",
               "--limit", "6", "--workers", "1", "--stage", "sft", "--max-pixels", "3136"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "# synthetic: sft checkpoint" in out
    report = read_report(tmp_path / "rep")
    assert report["summary"]["n"] == 6 and report["settings"]["limit"] == 6
    assert main(["compare", f"base={tmp_path / 'rep'}", f"sft={tmp_path / 'rep'}", "--out", str(tmp_path / "cmp"),
                 "--previous", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "cmp" / "stages.png").is_file()
    assert "| base |" in (tmp_path / "cmp" / "stages.md").read_text()
    assert '"common": 6' in capsys.readouterr().out

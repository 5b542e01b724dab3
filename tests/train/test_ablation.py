"""The RL ablation: aggregation over seeds (exact figures) and a real two-variant run."""

import json

import pytest

from vlmrl.lineage import read_manifest
from vlmrl.recipes import load_recipe
from vlmrl.stages.ablation import AblationPlan, run_ablation, summarize_ablation, write_ablation

# (ordered, shuffled) scores per question: q1, q2 multiple choice (motion), q3 count
FAKE = {
    ("grpo", 0): {"q1": (1, 1), "q2": (0, 0), "q3": (1, 0)},
    ("grpo", 1): {"q1": (1, 0), "q2": (1, 0), "q3": (1, 1)},
    ("t_grpo", 0): {"q1": (1, 0), "q2": (1, 0), "q3": (1, 0)},
    ("t_grpo", 1): {"q1": (1, 0), "q2": (1, 0), "q3": (1, 0)},
}
KIND = {"q1": ("multiple choice", "synthetic/motion"), "q2": ("multiple choice", "synthetic/motion"),
        "q3": ("numerical", "synthetic/count")}


def write_fake_reports(plan):
    for (variant, seed), scores in FAKE.items():
        report = plan.run_dir(variant, seed) / "report"
        report.mkdir(parents=True)
        lines = []
        for q, (ordered, shuffled) in scores.items():
            ptype, source = KIND[q]
            for flag, score in ((False, ordered), (True, shuffled)):
                lines.append(json.dumps({"problem_id": q, "problem_type": ptype, "data_type": "video",
                                         "data_source": source, "shuffled": flag, "score": score}))
        (report / "predictions.jsonl").write_text("\n".join(lines) + "\n")


def test_ablation_pools_seeds_per_question(tmp_path):
    plan = AblationPlan(recipe=load_recipe("tiny-cpu"), sft_dir=tmp_path, rl_frames=tmp_path,
                        bench_frames=tmp_path, out_dir=tmp_path / "ab",
                        variants=["grpo", "t_grpo", "reg_grpo"], seeds=[0, 1])
    write_fake_reports(plan)
    summary = summarize_ablation(plan)
    grpo, t_grpo = summary["variants"]["grpo"], summary["variants"]["t_grpo"]
    assert grpo["per_seed"]["0"]["mc_accuracy"]["mean"] == 0.5
    assert grpo["per_seed"]["1"]["mc_accuracy"]["mean"] == 1.0
    assert grpo["mc_accuracy"]["mean"] == 0.75  # q1: 1, q2: (0 + 1) / 2
    assert grpo["per_seed"]["0"]["temporal_sensitivity"]["mean"] == pytest.approx(1 / 3)
    assert grpo["temporal_sensitivity"]["mean"] == 0.5  # every question: (0 + 1) / 2
    assert t_grpo["mc_accuracy"]["mean"] == 1.0 and t_grpo["temporal_sensitivity"]["mean"] == 1.0
    assert grpo["by_family"]["motion"]["accuracy"]["mean"] == 0.75
    assert grpo["by_family"]["count"]["temporal_sensitivity"]["mean"] == 0.5
    (comparison,) = summary["comparisons"]  # reg_grpo has no runs: no comparison with it
    assert (comparison["a"], comparison["b"]) == ("grpo", "t_grpo")
    assert comparison["mc_accuracy_delta"]["mean"] == 0.25
    assert comparison["temporal_sensitivity_delta"]["mean"] == 0.5
    assert summary["missing"] == ["reg_grpo/seed-0", "reg_grpo/seed-1"]

    write_ablation(plan)
    md = (plan.out_dir / "ablation.md").read_text()
    assert "| t_grpo - grpo | 25.0 [" in md and "Missing runs: reg_grpo/seed-0" in md
    assert (plan.out_dir / "ablation.png").stat().st_size > 0


def test_unknown_variant_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"unknown ablation variants \['ppo'\]"):
        AblationPlan(recipe=load_recipe("tiny-cpu"), sft_dir=tmp_path, rl_frames=tmp_path,
                     bench_frames=tmp_path, out_dir=tmp_path, variants=["ppo"])


def test_ablation_trains_each_variant_from_the_sft_checkpoint(short_recipe, stage_sft, stage_frames,
                                                              tmp_path):
    recipe = short_recipe.override({"rl": {"max_steps": 1, "save_strategy": "no"},
                                    "eval": {"max_new_tokens": 4, "batch_size": 16}})
    plan = AblationPlan(recipe=recipe, sft_dir=stage_sft, rl_frames=stage_frames["rl"],
                        bench_frames=stage_frames["rl"], out_dir=tmp_path / "ab",
                        variants=["grpo", "t_grpo"], seeds=[3])
    summary = run_ablation(plan)
    assert summary["missing"] == [] and set(summary["variants"]) == {"grpo", "t_grpo"}
    stamps = {}
    for variant in ("grpo", "t_grpo"):
        checkpoint = plan.run_dir(variant, 3) / "checkpoint"
        manifest = read_manifest(checkpoint)
        assert manifest["parent"]["path"] == str(stage_sft)
        assert manifest["recipe"]["rl"]["algorithm"] == variant
        assert manifest["seed"] == 3 and manifest["metrics"]["global_step"] == 1
        report = json.loads((plan.run_dir(variant, 3) / "report" / "report.json").read_text())
        assert report["checkpoint"]["kind"] == f"{variant}/seed-3"
        stamps[variant] = (checkpoint / "model.safetensors").stat().st_mtime_ns
    assert summary["comparisons"][0]["a"] == "grpo"

    again = run_ablation(plan)  # finished runs are not redone
    assert json.dumps(again["variants"]) == json.dumps(summary["variants"])  # NaN-safe
    for variant, stamp in stamps.items():
        assert (plan.run_dir(variant, 3) / "checkpoint" / "model.safetensors").stat().st_mtime_ns == stamp

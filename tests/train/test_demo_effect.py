"""The direction of the demo's effect that is reliable at test scale: SFT on the CoT split
teaches the answer format the untrained base model never produces (issue 7)."""

from vlmrl.eval import load_benchmark
from vlmrl.stages.evaluation import evaluate_checkpoint
from vlmrl.stages.training import train_sft


def test_sft_beats_base_on_format_compliance(short_recipe, stage_base, stage_frames, tmp_path):
    recipe = short_recipe.override({
        "sft": {"max_steps": 60, "learning_rate": 3e-3, "curriculum": [], "save_strategy": "no",
                "lr_scheduler_type": "constant", "warmup_steps": 0},
        "eval": {"max_new_tokens": 48, "batch_size": 16},
    })
    sft = train_sft(recipe, stage_base, stage_frames["sft"], tmp_path / "sft")
    # held out: the RL split's questions, never seen in SFT
    bench = load_benchmark(stage_frames["rl"], name="synthetic")
    base_report = evaluate_checkpoint(recipe, stage_base, bench, tmp_path / "eval-base", stage="base")
    sft_report = evaluate_checkpoint(recipe, sft, bench, tmp_path / "eval-sft", stage="sft")
    base = base_report["summary"]["format_compliance"]["mean"]
    tuned = sft_report["summary"]["format_compliance"]["mean"]
    print(f"format compliance: base {base:.2f}, SFT {tuned:.2f}")
    assert tuned >= base + 0.5, (base, tuned)

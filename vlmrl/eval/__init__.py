"""Evaluation: benchmark loading, generation, scoring with bootstrap intervals, reports.

Recipe-free: evaluating a checkpoint the way a recipe says is `evaluate_checkpoint` in
stages/evaluation.py, a layer above.

    from vlmrl.eval import load_benchmark, model_answerer, evaluate
    bench = load_benchmark("bench.json", media_root="media/")
    evaluate(bench, model_answerer("checkpoints/rl", GenerationSettings()), "reports/rl")
"""

from vlmrl.eval.benchmarks import BENCHMARKS, BenchmarkSpec, LoadedBenchmark, load_benchmark
from vlmrl.eval.compare import delta, plot_stages, stage_table
from vlmrl.eval.metrics import bootstrap_mean, eval_score, summarize, temporal_sensitivity
from vlmrl.eval.report import read_report, write_report
from vlmrl.eval.runner import (
    EvalSettings,
    GenerationSettings,
    evaluate,
    model_answerer,
    shuffled_order,
)

__all__ = [
    "BENCHMARKS",
    "BenchmarkSpec",
    "EvalSettings",
    "GenerationSettings",
    "LoadedBenchmark",
    "bootstrap_mean",
    "delta",
    "eval_score",
    "evaluate",
    "load_benchmark",
    "model_answerer",
    "plot_stages",
    "read_report",
    "shuffled_order",
    "stage_table",
    "summarize",
    "temporal_sensitivity",
    "write_report",
]

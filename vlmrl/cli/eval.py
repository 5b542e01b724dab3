"""`vlmrl eval`, `vlmrl compare` and `vlmrl ablate`: the evaluation part of the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vlmrl.cli.options import assignments, frame_options


def _resolve_benchmark(value: str, data_root: str) -> tuple[str, str]:
    """(source, name): an existing file/dir as given, else a known name under data_root."""
    path = Path(value)
    if path.exists():
        return str(path), path.stem if path.is_file() else path.name
    candidate = Path(data_root) / ("bench.json" if value == "synthetic" else f"{value}.json")
    if not candidate.is_file():
        raise FileNotFoundError(f"benchmark {value!r}: no such file, and no {candidate}")
    return str(candidate), value


def cmd_eval(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from vlmrl.eval import (
        EvalSettings,
        GenerationSettings,
        evaluate,
        load_benchmark,
        model_answerer,
    )
    from vlmrl.eval.benchmarks import spec_for

    source, name = _resolve_benchmark(args.benchmark, args.data_root)
    frames = spec_for(name).frames
    if args.max_frames:  # fewer frames than the benchmark's minimum lowers the minimum too
        frames = replace(frames, min_frames=min(frames.min_frames, args.max_frames))
    frames = frame_options(args, frames)
    bench = load_benchmark(source, name=name, media_root=args.media_root, frames=frames,
                           cache_dir=args.cache_dir, workers=args.workers)
    gen = GenerationSettings(max_new_tokens=args.max_new_tokens, do_sample=args.temperature > 0,
                             temperature=args.temperature or 1.0, top_p=args.top_p,
                             batch_size=args.batch_size, seed=args.seed)
    settings = EvalSettings(generation=gen, shuffled_control=not args.no_shuffled_control, limit=args.limit)
    prompt = None
    if args.recipe:  # evaluate with the prompt the checkpoint was trained with
        from vlmrl.recipes import load_recipe

        prompt = load_recipe(args.recipe).rl.prompt
    answer = model_answerer(args.checkpoint, gen, device=args.device, dtype=args.dtype, prompt=prompt)
    report = evaluate(bench, answer, args.out, settings, checkpoint=args.checkpoint, stage=args.stage,
                      overwrite=args.overwrite)
    s = report["summary"]
    print((Path(args.out) / "report.md").read_text())
    print(json.dumps({"report": str(Path(args.out) / "report.json"), "accuracy": s["accuracy"]["mean"],
                      "mc_accuracy": s["mc_accuracy"]["mean"], "format_compliance": s["format_compliance"]["mean"],
                      "skipped": report["benchmark"]["skipped"],
                      "samples_per_s": report["throughput"]["samples_per_s"]}))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from vlmrl.eval import delta, plot_stages, stage_table

    reports = dict(item.split("=", 1) for item in args.reports)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = stage_table(reports)
    (out / "stages.md").write_text(table)
    plot_stages(reports, out / "stages.png")
    print(table)
    if args.previous:
        d = delta(args.previous, list(reports.values())[-1])
        print(json.dumps(d, indent=1))
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from vlmrl.recipes import load_recipe
    from vlmrl.stages.ablation import AblationPlan, run_ablation

    root = Path(args.artifacts)  # `make run`'s layout, unless the inputs are given one by one
    plan = AblationPlan(
        recipe=load_recipe(args.recipe, assignments(args.set, "--set")),
        sft_dir=Path(args.sft or root / "checkpoints" / "sft"),
        rl_frames=Path(args.rl_frames or root / "frames" / "rl"),
        bench_frames=Path(args.bench_frames or root / "frames" / "bench-synthetic"),
        out_dir=Path(args.out or root / "ablation"),
        variants=args.variants.split(","),
        seeds=[int(s) for s in args.seeds.split(",")],
        workers=args.workers,
    )
    for name in ("sft_dir", "rl_frames", "bench_frames"):
        if not getattr(plan, name).is_dir():
            raise FileNotFoundError(f"{name}: {getattr(plan, name)} does not exist (run `make run` first, "
                                    "or pass --sft / --rl-frames / --bench-frames)")
    summary = run_ablation(plan)
    print((plan.out_dir / "ablation.md").read_text())
    print(f"written: {plan.out_dir / 'ablation.json'}, ablation.md, ablation.png")
    return 0 if not summary["missing"] else 1


def add_eval_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint on a benchmark and write a report")
    p.add_argument("--checkpoint", required=True, help="local model directory")
    p.add_argument("--benchmark", required=True,
                   help="annotation file, frame-dataset dir, or a name (synthetic, mvbench, ...) under --data-root")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a report already at --out (nothing else is replaced)")
    p.add_argument("--data-root", default="artifacts/demo/raw", help="where named benchmarks' files live")
    p.add_argument("--media-root", default=None, help="media root (default: the file's directory)")
    p.add_argument("--cache-dir", default="artifacts/cache/benchmarks", help="frame-dataset cache")
    p.add_argument("--frames", dest="max_frames", type=int, default=None,
                   help="max frames per video (16, 32, 64)")
    p.add_argument("--max-pixels", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="only the first N samples")
    p.add_argument("--no-shuffled-control", action="store_true")
    p.add_argument("--stage", default=None, help="label for the report (base, sft, rl)")
    p.add_argument("--recipe", default=None, help="use this recipe's prompt (the one the model was trained with)")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--workers", type=int, default=None)
    p.set_defaults(func=cmd_eval)

    c = sub.add_parser("compare", help="stages side by side; optionally the delta to a previous report")
    c.add_argument("reports", nargs="+", help="STAGE=REPORT_DIR, e.g. base=r/base sft=r/sft rl=r/rl")
    c.add_argument("--out", required=True)
    c.add_argument("--previous", default=None, help="an earlier report of the last checkpoint (drift)")
    c.set_defaults(func=cmd_compare)

    a = sub.add_parser("ablate", help="RL ablation: GRPO vs T-GRPO vs Reg-GRPO, several seeds, one SFT checkpoint")
    a.add_argument("--recipe", default="tiny-cpu", help="a recipe file, or a name from configs/")
    a.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe value (repeatable)")
    a.add_argument("--artifacts", default="artifacts", help="where `make run` wrote its artifacts")
    a.add_argument("--sft", default=None, help="SFT checkpoint (default: ARTIFACTS/checkpoints/sft)")
    a.add_argument("--rl-frames", default=None, help="RL frame dataset (default: ARTIFACTS/frames/rl)")
    a.add_argument("--bench-frames", default=None,
                   help="benchmark frame dataset (default: ARTIFACTS/frames/bench-synthetic)")
    a.add_argument("--out", default=None, help="output directory (default: ARTIFACTS/ablation)")
    a.add_argument("--variants", default="grpo,t_grpo,reg_grpo")
    a.add_argument("--seeds", default="0,1,2")
    a.add_argument("--workers", type=int, default=2, help="runs in parallel (processes)")
    a.set_defaults(func=cmd_ablate)

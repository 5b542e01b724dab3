"""`vlmrl eval`, `vlmrl compare` and `vlmrl ablate`: the evaluation part of the command line."""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path
from typing import Any

from vlmrl.cli.options import assignments, frame_options, recipe_from_args


def _resolve_benchmark(value: str, data_root: str) -> tuple[str, str]:
    """(source, name): an existing file/dir as given, else a known name under data_root."""
    path = Path(value)
    if path.exists():
        return str(path), path.stem if path.is_file() else path.name
    candidate = Path(data_root) / ("bench.json" if value == "synthetic" else f"{value}.json")
    if not candidate.is_file():
        raise FileNotFoundError(f"benchmark {value!r}: no such file, and no {candidate}")
    return str(candidate), value


# plain-mode decoding flags: None when not given, so that recipe mode can refuse them
PLAIN_DEFAULTS = {"max_new_tokens": 1024, "temperature": 0.0, "top_p": 1.0, "batch_size": 8, "seed": 0,
                  "dtype": "float32"}
# flags whose values come from the recipe in recipe mode (dest -> the recipe key to --set)
RECIPE_KEYS = {"max_new_tokens": "eval.max_new_tokens", "temperature": "eval.temperature",
               "top_p": "eval.top_p", "batch_size": "eval.batch_size", "seed": "seed",
               "dtype": "model.dtype", "device": "model.device", "max_frames": "frames.eval.max_frames",
               "max_pixels": "frames.eval.max_pixels", "no_shuffled_control": None}


def _check_modes(args: argparse.Namespace) -> None:
    """Refuse flag combinations that would be silently ignored."""
    if args.recipe_settings and not args.recipe:
        raise ValueError("--recipe-settings needs --recipe")
    if args.set and not args.recipe:
        raise ValueError("--set needs --recipe")
    if args.recipe_settings:
        for dest, key in RECIPE_KEYS.items():
            value = getattr(args, dest)
            if value is not None and value is not False:  # given (0 and 0.0 too)
                flag = "--" + {"max_frames": "frames"}.get(dest, dest).replace("_", "-")
                hint = f": use --set {key}=..." if key else " (the shuffled control is always on)"
                raise ValueError(f"{flag}: with --recipe-settings the recipe decides{hint}")


def _checkpoint_kind(checkpoint: str) -> str | None:
    """The stage a vlmrl checkpoint's lineage names (None for a bare model directory)."""
    from vlmrl.lineage import LINEAGE, read_manifest

    return read_manifest(checkpoint).get("kind") if (Path(checkpoint) / LINEAGE).is_file() else None


def _main_process_first() -> contextlib.AbstractContextManager[Any]:
    """In a launched group, the main process loads (and for an annotation file extracts and
    caches) the benchmark before the others read the cache; a no-op in one process."""
    from vlmrl.eval.runner import launched

    if not launched():
        return contextlib.nullcontext()
    from accelerate import PartialState

    return PartialState().main_process_first()


def cmd_eval(args: argparse.Namespace) -> int:
    """Plain mode: the flags' decoding settings (--recipe only gives the prompt). Recipe mode
    (--recipe-settings): exactly as the report assets evaluate (evaluate_checkpoint), on the
    recipe's launch.num_processes processes."""
    from dataclasses import replace

    from vlmrl.cli.launch import end_processes, relaunch
    from vlmrl.eval.benchmarks import load_benchmark, spec_for
    from vlmrl.eval.report import check_report_dir
    from vlmrl.eval.runner import check_report_dir_all, launched, process_device

    _check_modes(args)
    if not launched():  # before anything is loaded or any process started
        check_report_dir(args.out, args.overwrite)
    recipe = recipe_from_args(args) if args.recipe else None
    if launched():  # one of several processes: all join the group, and all refuse together
        cpu = (recipe.model.device if args.recipe_settings and recipe else args.device) == "cpu"
        process_device(cpu=cpu)
        check_report_dir_all(args.out, args.overwrite)
    source, name = _resolve_benchmark(args.benchmark, args.data_root)
    if args.recipe_settings and (status := relaunch(args, recipe)) is not None:
        return status

    name = args.name or name
    if args.recipe_settings:  # an annotation file is extracted as the benchmark_frames asset does
        frames = recipe.frames.eval
    else:
        frames = spec_for(name).frames
        if args.max_frames:  # fewer frames than the benchmark's minimum lowers the minimum too
            frames = replace(frames, min_frames=min(frames.min_frames, args.max_frames))
        frames = frame_options(args, frames)
    with _main_process_first():
        bench = load_benchmark(source, name=name, media_root=args.media_root, frames=frames,
                               cache_dir=args.cache_dir, workers=args.workers)
    if args.recipe_settings:
        from vlmrl.stages.evaluation import evaluate_checkpoint

        report = evaluate_checkpoint(recipe, args.checkpoint, bench, args.out,
                                     stage=args.stage or _checkpoint_kind(args.checkpoint),
                                     progress=True, overwrite=args.overwrite, limit=args.limit)
    else:
        report = _evaluate_plain(args, bench, recipe)
    _announce(report, Path(args.out))
    end_processes()
    return 0


def _evaluate_plain(args: argparse.Namespace, bench: Any, recipe: Any) -> dict[str, Any]:
    from vlmrl.eval import EvalSettings, GenerationSettings, evaluate, model_answerer

    flag = {k: v if getattr(args, k) is None else getattr(args, k) for k, v in PLAIN_DEFAULTS.items()}
    gen = GenerationSettings(max_new_tokens=flag["max_new_tokens"], do_sample=flag["temperature"] > 0,
                             temperature=flag["temperature"] or 1.0, top_p=flag["top_p"],
                             batch_size=flag["batch_size"], seed=flag["seed"])
    settings = EvalSettings(generation=gen, shuffled_control=not args.no_shuffled_control, limit=args.limit)
    # with a recipe: the prompt the checkpoint was trained with
    prompt = recipe.rl.prompt if recipe is not None else None
    answer = model_answerer(args.checkpoint, gen, device=args.device, dtype=flag["dtype"], prompt=prompt)
    return evaluate(bench, answer, args.out, settings, checkpoint=args.checkpoint, stage=args.stage,
                    overwrite=args.overwrite)


def _announce(report: dict[str, Any], out: Path) -> None:
    """The main process prints the report and sends its figures to the Dagster asset that
    launched this command (dagster-pipes), if one did."""
    from vlmrl.cli.launch import is_main_process, report_to_dagster
    from vlmrl.eval.report import REPORT, Report
    from vlmrl.hashing import sha256_file

    if not is_main_process():
        return
    r = Report(report)
    print((out / "report.md").read_text())
    print(json.dumps({"report": str(out / REPORT), "accuracy": r.mean("accuracy"),
                      "mc_accuracy": r.mean("mc_accuracy"), "format_compliance": r.mean("format_compliance"),
                      "skipped": r.benchmark["skipped"], "samples_per_s": r.throughput["samples_per_s"],
                      "world_size": report["processes"]["world_size"]}))
    digest = sha256_file(out / REPORT)
    metadata = {k: v for k, v in r.headline().items() if v is not None}
    report_to_dagster({**metadata, "report_dir": str(out.resolve()), "report_sha256": digest,
                       "benchmark": r.benchmark["name"], "checkpoint_kind": r.checkpoint_kind,
                       "checkpoint_lineage_sha256": str(r.checkpoint.get("lineage_sha256")),
                       "world_size": report["processes"]["world_size"],
                       "rows_per_rank": json.dumps(report["processes"]["rows_per_rank"])},
                      data_version=digest[:16])


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
    p.add_argument("--name", default=None,
                   help="the benchmark's name in the report, which also selects its spec (default: the "
                        "file or directory name); e.g. synthetic for the frame dataset frames/bench-synthetic, "
                        "as the report assets name it")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default 1024")
    p.add_argument("--temperature", type=float, default=None, help="0: greedy (default)")
    p.add_argument("--top-p", type=float, default=None, help="default 1.0")
    p.add_argument("--batch-size", type=int, default=None, help="default 8")
    p.add_argument("--seed", type=int, default=None, help="default 0")
    p.add_argument("--limit", type=int, default=None, help="only the first N samples")
    p.add_argument("--no-shuffled-control", action="store_true")
    p.add_argument("--stage", default=None, help="label for the report (base, sft, rl; with --recipe-settings "
                                                 "default: the checkpoint's lineage)")
    p.add_argument("--recipe", default=None,
                   help="a recipe file or name from configs/: its prompt (the one the model was trained "
                        "with); with --recipe-settings, all of its evaluation settings")
    p.add_argument("--recipe-settings", action="store_true",
                   help="evaluate exactly as the report assets do (the recipe's eval generation, dtype, "
                        "threads, prompt, frames.eval, a sampled pass unless the stage is base), on the "
                        "recipe's launch.num_processes processes; the decoding flags are refused")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set eval.max_new_tokens=64 (repeatable)")
    p.add_argument("--launch", action=argparse.BooleanOptionalAction, default=True,
                   help="with --recipe-settings, start the recipe's launch.num_processes processes with "
                        "accelerate launch (default); --no-launch evaluates in this process only")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None, help="default float32")
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

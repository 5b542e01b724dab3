"""The ``vlmrl`` command: data synthesis and frame extraction (more stages as they land)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path


def _frame_args(p: argparse.ArgumentParser) -> None:
    from vlmrl.data.frames import FrameOptions

    d = FrameOptions()
    g = p.add_argument_group("frame options")
    g.add_argument("--fps", type=float, default=d.fps, help="frames sampled per second of video")
    g.add_argument("--min-frames", type=int, default=d.min_frames)
    g.add_argument("--max-frames", type=int, default=d.max_frames)
    g.add_argument("--num-frames", type=int, default=None, help="exact frame count (overrides fps)")
    g.add_argument("--min-pixels", type=int, default=d.min_pixels, help="per-frame lower bound")
    g.add_argument("--max-pixels", type=int, default=d.max_pixels, help="per-frame upper bound")
    g.add_argument("--total-pixels", type=int, default=None, help="pixel budget for a whole clip")
    g.add_argument("--image-min-pixels", type=int, default=d.image_min_pixels)
    g.add_argument("--image-max-pixels", type=int, default=d.image_max_pixels)
    g.add_argument("--frame-format", choices=("jpeg", "png"), default=d.frame_format)
    g.add_argument("--jpeg-quality", type=int, default=d.jpeg_quality)


def _frame_options(args: argparse.Namespace):
    from vlmrl.data.frames import FrameOptions

    return FrameOptions(
        fps=args.fps, min_frames=args.min_frames, max_frames=args.max_frames,
        num_frames=args.num_frames, min_pixels=args.min_pixels, max_pixels=args.max_pixels,
        total_pixels=args.total_pixels, image_min_pixels=args.image_min_pixels,
        image_max_pixels=args.image_max_pixels, frame_format=args.frame_format,
        jpeg_quality=args.jpeg_quality,
    )


def _print_extract(split: str, result) -> None:
    m = result.manifest
    c = m["counts"]
    print(
        f"{split}: {result.path}  kept {c['kept']}/{c['rows']} rows, rejected {c['rejected']}, "
        f"{c['frames']} frames from {c['media_files']} media files "
        f"({m['frames_per_second']} frames/s), fingerprint {m['fingerprint'][:12]}"
    )
    for r in m["rejected"][:10]:
        print(f"  rejected row {r['row']} ({r.get('problem_id')}): {r['field']}: {r['reason']}")
    if len(m["rejected"]) > 10:
        print(f"  ... {len(m['rejected']) - 10} more in {result.path / 'manifest.json'}")


def cmd_synth(args: argparse.Namespace) -> int:
    from vlmrl.data.synth import SynthSizes, generate

    summary = generate(args.out, seed=args.seed, sizes=SynthSizes.parse(args.sizes or ""))
    for split, info in summary["splits"].items():
        print(f"{split}: {info['samples']} samples -> {info['annotations']}  {info['families']}")
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    from vlmrl.data.extract import extract_dataset

    result = extract_dataset(
        args.annotations, args.media_root, args.out, _frame_options(args), workers=args.workers,
        overwrite=args.overwrite,
    )
    _print_extract(Path(args.annotations).stem, result)
    rate = result.rejected / max(1, result.manifest["counts"]["rows"])
    if args.max_reject_rate is not None and rate > args.max_reject_rate:
        print(f"reject rate {rate:.1%} exceeds --max-reject-rate {args.max_reject_rate:.1%}",
              file=sys.stderr)
        return 1
    return 0


def cmd_demo_data(args: argparse.Namespace) -> int:
    """Synthesize the demo set and extract frames for every split."""
    from vlmrl.data.extract import extract_dataset
    from vlmrl.data.synth import SynthSizes, generate

    t0 = time.perf_counter()
    out = Path(args.out)
    summary = generate(out / "raw", seed=args.seed, sizes=SynthSizes.parse(args.sizes or ""))
    results = {}
    for split, info in summary["splits"].items():
        result = extract_dataset(info["annotations"], out / "raw", out / "frames" / split,
                                 _frame_options(args), workers=args.workers,
                                 overwrite=args.overwrite)
        _print_extract(split, result)
        results[split] = {"path": str(result.path), "kept": result.kept,
                          "rejected": result.rejected, "fingerprint": result.fingerprint}
    (out / "data_summary.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"done in {time.perf_counter() - t0:.1f} s; summary: {out / 'data_summary.json'}")
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    from vlmrl.lineage import (
        ASSET_INDEX,
        Anchor,
        audit,
        find_asset,
        find_root,
        format_chain,
        is_report,
        mlflow_anchor,
        read_manifest,
    )

    target, entry = find_asset(args.target, Path(args.artifacts) / ASSET_INDEX)
    root = find_root(target, args.artifacts)
    if root is None:
        print(f"vlmrl: note: no artifacts root holds {target} (no {ASSET_INDEX} above it, not under "
              f"--artifacts {args.artifacts}): references are followed wherever they lead", file=sys.stderr)
    anchor, unanchored = None, None
    if args.expect_sha256:
        anchor = Anchor(args.expect_sha256, "the hash given with --expect-sha256")
    elif args.tracking_uri:  # the head's hash as the MLflow run that materialized it recorded it
        run_id = entry.get("mlflow_run_id")
        if not run_id and not is_report(target) and (Path(target) / "lineage.json").is_file():
            run_id = read_manifest(target).get("tracking", {}).get("mlflow_run_id")
        try:
            if not run_id:
                raise LookupError(f"{target} names no MLflow run (give the asset key, e.g. rl_checkpoint)")
            anchor = mlflow_anchor(args.tracking_uri, run_id)
        except LookupError as exc:
            unanchored = f"the head cannot be checked against MLflow: {exc}"
    report = audit(target, check_media=not args.skip_media, root=root, input_roots=tuple(args.input_root),
                   anchor=anchor)
    if unanchored:
        report.chain[0].problems.insert(0, unanchored)
    if args.json:
        print(json.dumps({"ok": report.ok, "problems": report.problems, "root": report.root,
                          "anchor": report.anchor,
                          "chain": [{"path": n.path, **n.manifest} for n in report.chain]}, indent=1))
    else:
        print(format_chain(report))
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlmrl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="synthetic data and frame extraction")
    data_sub = data.add_subparsers(dest="data_command", required=True)

    synth = data_sub.add_parser("synth", help="write the synthetic temporal video QA set")
    synth.add_argument("--out", required=True)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--sizes", default="", help="e.g. sft=64,rl=256,bench=128")
    synth.set_defaults(func=cmd_synth)

    extract = data_sub.add_parser("extract", help="build a frame-extracted dataset")
    extract.add_argument("--annotations", required=True, help="JSON list or JSONL of records")
    extract.add_argument("--media-root", required=True, help="media paths are relative to this")
    extract.add_argument("--out", required=True)
    extract.add_argument("--overwrite", action="store_true",
                         help="replace a frame dataset already at --out (nothing else is ever replaced)")
    extract.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    extract.add_argument("--max-reject-rate", type=float, default=None,
                         help="exit 1 when more than this fraction of rows is rejected")
    _frame_args(extract)
    extract.set_defaults(func=cmd_extract)

    demo = data_sub.add_parser("demo", help="synthesize and extract every split of the demo")
    demo.add_argument("--out", default="artifacts/demo")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--sizes", default="")
    demo.add_argument("--workers", type=int, default=None)
    demo.add_argument("--overwrite", action="store_true",
                      help="replace the frame datasets of a previous demo in --out")
    _frame_args(demo)
    demo.set_defaults(func=cmd_demo_data)

    lineage = sub.add_parser("lineage", help="print and verify a checkpoint's or report's chain back to its raw inputs")
    lineage.add_argument("target", help="checkpoint directory or asset key (e.g. rl_checkpoint)")
    lineage.add_argument("--artifacts", default="artifacts", help="artifact root holding assets.json")
    lineage.add_argument("--skip-media", action="store_true", help="do not re-hash media files")
    lineage.add_argument("--json", action="store_true", help="machine-readable output")
    lineage.add_argument("--input-root", action="append", default=[], metavar="DIR",
                         help="raw annotations/media kept outside the artifacts tree may lie here (repeatable)")
    anchor = lineage.add_mutually_exclusive_group()
    anchor.add_argument("--tracking-uri", help="check the head's hash against the MLflow run that recorded it "
                        "(use the original store, not one inside the audited copy)")
    anchor.add_argument("--expect-sha256", help="the head's hash (lineage.json or report.json) as recorded elsewhere")
    lineage.set_defaults(func=cmd_lineage)

    from vlmrl.eval.commands import add_eval_commands

    add_eval_commands(sub)
    from vlmrl.train.commands import add_train_commands

    add_train_commands(sub)
    from vlmrl.doctor.run import add_doctor_command

    add_doctor_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, NotADirectoryError, FileExistsError) as exc:
        print(f"vlmrl: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

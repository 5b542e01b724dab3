"""``vlmrl data synth|extract|demo``: synthetic data and frame extraction."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from vlmrl.cli.options import frame_args, frame_options


def print_extract(split: str, result) -> None:
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
        args.annotations, args.media_root, args.out, frame_options(args), workers=args.workers,
        overwrite=args.overwrite,
    )
    print_extract(Path(args.annotations).stem, result)
    rate = result.manifest.reject_rate
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
                                 frame_options(args), workers=args.workers,
                                 overwrite=args.overwrite)
        print_extract(split, result)
        results[split] = {"path": str(result.path), "kept": result.kept,
                          "rejected": result.rejected, "fingerprint": result.fingerprint}
    (out / "data_summary.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"done in {time.perf_counter() - t0:.1f} s; summary: {out / 'data_summary.json'}")
    return 0


def add_data_commands(sub: Any) -> None:
    """Add the ``data`` command group to the ``vlmrl`` sub-parsers."""
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
    frame_args(extract)
    extract.set_defaults(func=cmd_extract)

    demo = data_sub.add_parser("demo", help="synthesize and extract every split of the demo")
    demo.add_argument("--out", default="artifacts/demo")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--sizes", default="")
    demo.add_argument("--workers", type=int, default=None)
    demo.add_argument("--overwrite", action="store_true",
                      help="replace the frame datasets of a previous demo in --out")
    frame_args(demo)
    demo.set_defaults(func=cmd_demo_data)

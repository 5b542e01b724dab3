"""`make bench`: every performance claim measured against its reference, side by side.

    .venv/bin/python bench/run.py [--quick] [--only frames,rewards]

Each measure runs in its own process (so one cannot warm or starve another) through its
script's ``measure(quick)``, and is reported as a figure next to its target. The results go
to bench/results.json, and the table (with the command, date and machine) into
docs/performance.md between its markers. The machines are noisy: every figure is a ratio
of two things measured in the same run, or a throughput on one core.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results.json"
DOC = REPO / "docs" / "performance.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


@dataclass
class Row:
    measure: str
    figure: str
    target: str
    met: bool | None  # None: not measured


def _frames(r: dict) -> list[Row]:
    # The figure is the read the RL trainer does (FrameSource); a decoded `datasets` row,
    # how it read frames before, is shown beside it.
    return [Row(f"1. frame read vs decord decode + resize ({name})",
                f"{v['speedup']:.1f}x (a decoded datasets row: {v['speedup_before']:.1f}x)",
                ">= 20x", v["speedup"] >= 20) for name, v in r["sets"].items()]


def _extract(r: dict) -> list[Row]:
    # the ceiling: both cores busy with extraction's own CPU work (decode, confirm, encode,
    # write) against the loop's decode alone; a figure under it is overhead, above it impossible
    return [Row(f"2. extraction, {r['cores']} cores vs bare 1-core decord loop ({name})",
                f"{v['speedup_vs_bare_decord']:.2f}x (cold {v['speedup_cold']:.2f}x; CPU "
                f"{v['split']['times_bare']:.2f}x the loop's, so at most {v['split']['ceiling']:.2f}x)",
                ">= 1.5x", v["speedup_vs_bare_decord"] >= 1.5)
            for name, v in r["sets"].items()]


def _train(r: dict) -> list[Row]:
    return [Row(f"3. T-GRPO / GRPO step time (G = {r['G']})", f"{r['ratio']:.3f}", "<= 1.25",
                r["ratio"] <= r["target"])]


def _rewards(r: dict) -> list[Row]:
    return [Row(f"4. reward {v['reward']}, {v['samples']} (one core)",
                f"{v['completions_per_s']:,.0f}/s", f">= {v['target']:,}/s", v["ok"])
            for v in r.values()]


def _orchestration(r: dict) -> list[Row]:
    return [Row(f"5. orchestration overhead ({r['recipe']}{', short' if r['short'] else ''})",
                f"{100 * r['overhead']:+.1f} % ({r['fixed_cost_s']:+.1f} s; CPU time "
                f"{100 * r['overhead_cpu']:+.1f} %)", "< 10 %",
                r["overhead"] < r["target"])]


def _vision_cache(r: dict) -> list[Row]:
    # No speed target in the issue: the cache must change no result (same losses) and speed
    # the step up where the tower is a real share of it (docs/performance.md models 7B).
    return [Row(f"7. vision-embedding cache, RL step ({r['recipe']}, {r['algorithm']}, G = {r['G']})",
                f"{r['speedup']:.3f}x faster; tower {100 * r['vision_share_uncached']:.1f} % -> "
                f"{100 * r['vision_share_cached']:.1f} % of step time; same losses: "
                f"{'yes' if r['same_losses'] else 'NO'}",
                "same losses, faster", r["same_losses"] and r["speedup"] > 1.0)]


def _gpu(r: dict) -> list[Row]:
    target = "EasyR1: 1,600-2,000 tokens/s per H100"
    if "skipped" in r:
        return [Row("8. GRPO step of a 7B-shaped video VLM on one GPU", f"not measured: {r['skipped']}",
                    target, None)]
    return [Row("8. GRPO step of a 7B-shaped video VLM on one GPU",
                f"{r['step_tokens_per_s']:,.0f} step tokens/s (rollout {r['rollout_tokens_per_s']:,.0f}/s, "
                f"{100 * r['rollout_roofline_fraction']:.0f} % of the HBM roofline; step MFU "
                f"{100 * r['mfu']['step']:.0f} %)", target, None)]


def _datawait(r: dict) -> list[Row]:
    sft, rl = r["stages"]["sft"], r["stages"]["rl"]
    return [Row("6. data wait in SFT steps (tiny-cpu)",
                f"{100 * sft['data_wait_fraction']:.1f} % (datasets/PIL path, same run: "
                f"{100 * sft['data_wait_fraction_datasets_path']:.1f} %)", "< 5 %",
                sft["data_wait_fraction"] < 0.05),
            Row("6. data wait in RL steps (tiny-cpu, T-GRPO)", f"{100 * rl['data_wait_fraction']:.2f} %",
                "< 5 %", rl["data_wait_fraction"] < 0.05)]


def _ddp(r: dict) -> list[Row]:
    # issue 16's figure: no target, the path must scale at all (tiny model: overhead-bound)
    return [Row(f"2 DDP processes vs 1, GRPO step at global batch {r['global_batch']} (tiny, CPU)",
                f"{r['speedup']:.2f}x ({r['step_s_1']:.3f} s -> {r['step_s_2']:.3f} s)", "> 1x",
                r["speedup"] > 1.0)]


def _storage(r: dict) -> list[Row]:
    # issue 16's figure: a checkpoint through object storage (moto in-process: overhead, not bandwidth)
    return [Row(f"S3 round trip of a {r['mib']} MiB checkpoint (moto, 127.0.0.1)",
                f"push {r['push_s']:.2f} s, pull {r['pull_s']:.2f} s, cached pull {r['pull_cached_s']:.2f} s "
                f"(local copy {r['copytree_s']:.3f} s)", "identical; cached pull < pull",
                r["round_trip_identical"] and r["pull_cached_s"] < r["pull_s"])]


def _vllm(r: dict) -> list[Row]:
    # issue 17's figure: rollout time of vLLM vs the trainer's `generate`, same batch, and
    # their per-token log-prob gaps (the agreement gate's quantity)
    res = r["results"]
    hf = res["hf"]["median_s"]
    names = ("pixels", "embeddings", "server")
    paths = ", ".join(f"{name} {hf / res[name]['median_s']:.2f}x (gap {res[name]['gap_max']:.1e})"
                      for name in names)
    gaps_ok = max(res[n]["gap_max"] for n in names) < 1e-4
    return [Row(f"vLLM rollout vs transformers generate, {r['prompts']} videos x {r['samples']} "
                "samples (tiny, CPU; server: vlmrl rollout-serve, embeddings)",
                f"{paths}; generate {hf:.2f} s", "> 1x, gap < 1e-4",
                gaps_ok and all(hf / res[n]["median_s"] > 1 for n in names)),
            Row("vLLM: a prompt's G samples as one request (n = G) vs G requests (embeddings)",
                f"{res['ungrouped']['median_s'] / res['embeddings']['median_s']:.2f}x "
                f"({res['ungrouped']['median_s']:.2f} s -> {res['embeddings']['median_s']:.2f} s)",
                "> 1x", res["ungrouped"]["median_s"] > res["embeddings"]["median_s"])]


# name -> (module in bench/, rows from its measure(); seconds allowed)
MEASURES: dict[str, tuple[str, Callable[[dict], list[Row]], int]] = {
    "frames": ("bench_frames", _frames, 240),
    "extract": ("bench_extract", _extract, 240),
    "train": ("bench_train", _train, 300),
    "rewards": ("bench_rewards", _rewards, 240),
    "datawait": ("bench_datawait", _datawait, 300),
    "orchestration": ("bench_orchestration", _orchestration, 600),
    "vision_cache": ("bench_vision_cache", _vision_cache, 300),
    "ddp": ("bench_ddp", _ddp, 300),
    "storage": ("bench_storage", _storage, 240),
    "gpu": ("bench_gpu", _gpu, 600),
    "vllm": ("bench_vllm", _vllm, 600),
}
# measures that run in another environment: name -> (its python, how to build it)
INTERPRETERS = {"vllm": (REPO / ".venv-vllm" / "bin" / "python", "make vllm")}
NOT_YET: list[Row] = []  # measures without a script yet: listed, never silently left out


def run_measure(module: str, quick: bool, timeout: int, python: str = sys.executable) -> dict:
    code = (f"import json, sys; sys.path.insert(0, {str(BENCH)!r}); import {module} as m; "
            f"print('\\n@@RESULT@@' + json.dumps(m.measure({quick!r})))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([python, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0 or "@@RESULT@@" not in proc.stdout:
        raise RuntimeError(f"{module} failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}")
    return json.loads(proc.stdout.rsplit("@@RESULT@@", 1)[1])


def table(rows: list[Row]) -> str:
    mark = {True: "met", False: "**missed**", None: "–"}
    lines = ["| measure | figure | target | |", "|---|---|---|---|"]
    lines += [f"| {r.measure} | {r.figure} | {r.target} | {mark[r.met]} |" for r in rows]
    return "\n".join(lines)


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def write_doc(rows: list[Row], command: str, when: str) -> None:
    block = (f"{BEGIN}\n`{command}` on {when} ({machine()}):\n\n{table(rows)}\n{END}")
    text = DOC.read_text(encoding="utf-8") if DOC.is_file() else "# Performance\n\n"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    DOC.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller inputs, one repeat")
    p.add_argument("--only", default="", help=f"comma-separated subset of {','.join(MEASURES)}")
    p.add_argument("--no-doc", action="store_true", help="do not update docs/performance.md")
    args = p.parse_args(argv)
    wanted = [m for m in args.only.split(",") if m] or list(MEASURES)
    rows: list[Row] = []
    raw: dict[str, dict] = {}
    started = time.perf_counter()
    for name in wanted:
        module, to_rows, timeout = MEASURES[name]
        python, build = INTERPRETERS.get(name, (Path(sys.executable), ""))
        if not python.is_file():  # an optional environment: listed as not measured
            raw[name] = {"skipped": f"{python.relative_to(REPO)} absent"}
            rows.append(Row(f"{name}: not measured", f"needs `{build}` ({python.relative_to(REPO)})",
                            "", None))
            continue
        t0 = time.perf_counter()
        try:
            raw[name] = run_measure(module, args.quick, timeout, str(python))
            rows += to_rows(raw[name])
        except (RuntimeError, subprocess.TimeoutExpired, KeyError) as exc:  # KeyError: shape changed
            raw[name] = {"error": str(exc)}
            rows.append(Row(f"{name}: FAILED", str(exc).splitlines()[0][:120], "", False))
        print(f"[{time.perf_counter() - t0:6.1f} s] {name}", flush=True)
    if not args.only:
        rows += NOT_YET
    print("\n" + table(rows))
    when = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = "make bench" + (" (--quick)" if args.quick else "")
    # a partial run (--only) keeps the last full run's files: it would replace them with a subset
    out = RESULTS if not args.only else RESULTS.with_name("results.partial.json")
    out.write_text(json.dumps({"when": when, "machine": machine(), "quick": args.quick,
                               "seconds": round(time.perf_counter() - started, 1),
                               "rows": [asdict(r) for r in rows], "raw": raw}, indent=1) + "\n")
    if not args.no_doc and not args.only:
        write_doc(rows, command, when)
    print(f"\n{len(rows)} figures in {time.perf_counter() - started:.0f} s -> {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

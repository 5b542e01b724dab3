"""Throughput of the reward functions on synthetic completions, on one core.

Run: ``.venv/bin/python bench/bench_rewards.py [--n 10000] [--batch 64]``

Each scenario generates ``--n`` completions in groups of G = 8 sharing a solution (as in GRPO),
calls the reward as TRL does, in batches of ``--batch`` with extra unused columns, and prints
completions per second against the targets (text rewards >= 50,000/s, detection >= 5,000/s).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlmrl.rewards import get_reward  # noqa: E402

TARGETS = {"text": 50_000, "detection": 5_000}
G = 8
WORDS = ["the", "a", "man", "dog", "video", "frame", "left", "right", "moves", "object", "then", "after", "before", "red", "blue", "car", "person", "holds", "table"]  # fmt: skip
LABELS = ["golden retriever", "tabby cat", "boeing 737", "red fox", "sunflower"]

Rng = random.Random
Group = tuple[str, list[str]]  # solution answer, G completion answers


def words(rng: Rng, low: int, high: int) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(low, high)))


def wrap(rng: Rng, answer: str) -> str:
    """A typical completion (40-200 words of thinking); 1 in 10 malformed."""
    roll = rng.random()
    if roll < 0.05:
        return f"<answer>{answer}</answer>"
    if roll < 0.1:
        return f"<think>{words(rng, 40, 200)}</think> {answer}"
    return f"<think>{words(rng, 40, 200)}</think>\n<answer>{answer}</answer>"


def multiple_choice(rng: Rng) -> Group:
    gt = rng.choice("ABCD")
    return gt, [rng.choice([gt, f"{gt}.", f"({gt})", rng.choice("ABCD")]) for _ in range(G)]


def numerical(rng: Rng) -> Group:
    gt = round(rng.uniform(0, 100), rng.choice([0, 1, 2]))
    return str(gt), [str(round(gt + rng.choice([0, 0, 0.5, 3]), 2)) for _ in range(G)]


def regression(rng: Rng) -> Group:
    gt = round(rng.uniform(0.5, 20), 1)
    return str(gt), [str(round(gt * rng.uniform(0.5, 1.5), 1)) for _ in range(G)]


def ocr(rng: Rng) -> Group:
    gt = words(rng, 2, 8)
    return gt, [" ".join(w for w in gt.split() if rng.random() < 0.8) for _ in range(G)]


def free_form(rng: Rng) -> Group:
    return words(rng, 5, 15), [words(rng, 5, 15) for _ in range(G)]


def classification(rng: Rng) -> Group:
    gt = rng.choice(LABELS)
    return gt, [rng.choice([*LABELS, gt.replace(" ", "_").title()]) for _ in range(G)]


def box(rng: Rng, near: list[int] | None = None) -> list[int]:
    if near is not None:
        return [max(0, v + rng.randint(-30, 30)) for v in near]
    x, y = rng.randint(0, 800), rng.randint(0, 800)
    return [x, y, x + rng.randint(20, 200), y + rng.randint(20, 200)]


def detection(rng: Rng) -> Group:
    """Visual-RFT lists: 1-6 ground-truth boxes, 1-8 jittered predictions, 1 in 10 images empty."""
    if rng.random() < 0.1:
        spurious = json.dumps([{"Position": box(rng), "Confidence": 0.5}])
        return "No Objects", [rng.choice(["No Objects", spurious]) for _ in range(G)]
    gts = [box(rng) for _ in range(rng.randint(1, 6))]
    answers = []
    for _ in range(G):
        preds = [
            {"Position": box(rng, rng.choice(gts) if rng.random() < 0.8 else None), "Confidence": round(rng.random(), 2)}
            for _ in range(rng.randint(1, 8))
        ]  # fmt: skip
        answers.append(json.dumps(preds) if rng.random() < 0.5 else str(preds))
    return str([{"Position": b} for b in gts]), answers


def ovd(rng: Rng) -> Group:
    """VLM-R1 fenced lists: 1-6 ground-truth boxes, 1-8 predictions, 1 in 5 with a wrong label."""
    labels = ["dog", "cat", "car", "person"]
    gts = [(box(rng), rng.choice(labels)) for _ in range(rng.randint(1, 6))]
    answers = []
    for _ in range(G):
        preds = []
        for _ in range(rng.randint(1, 8)):
            b, lab = rng.choice(gts)
            preds.append(
                {"bbox_2d": box(rng, b), "label": lab if rng.random() < 0.8 else rng.choice(labels)}
            )
        answers.append("```json\n" + json.dumps(preds) + "\n```")
    return json.dumps([{"bbox_2d": b, "label": lab} for b, lab in gts]), answers


def grounding(rng: Rng) -> Group:
    gt = box(rng)
    answers = [
        json.dumps({"bbox_2d": box(rng, gt)}) if rng.random() < 0.5 else str(box(rng, gt))
        for _ in range(G)
    ]
    return str(gt), answers


MAKERS: dict[str, Callable[[Rng], Group]] = {
    "multiple choice": multiple_choice,
    "numerical": numerical,
    "regression": regression,
    "OCR": ocr,
    "free-form": free_form,
    "classification": classification,
    "detection": detection,
    "ovd": ovd,
    "grounding": grounding,
}
MIXED = ["multiple choice", "numerical", "regression", "OCR", "free-form"]  # Video-R1's text types

# (kind, reward, problem types of the samples)
SCENARIOS = [
    ("text", "format", MIXED),
    ("text", "accuracy", ["multiple choice"]),
    ("text", "accuracy", ["numerical"]),
    ("text", "accuracy", ["regression"]),
    ("text", "accuracy", ["OCR"]),
    ("text", "accuracy", ["free-form"]),
    ("text", "accuracy", MIXED),
    ("text", "classification", ["classification"]),
    ("text", "mra", ["regression"]),
    ("text", "cosine_length", ["multiple choice"]),
    ("text", "overlong", MIXED),
    ("text", "repetition", MIXED),
    ("detection", "iou_confidence", ["detection"]),
    ("detection", "accuracy", ["detection"]),
    ("detection", "grounding_iou", ["grounding"]),
    ("detection", "od_length", ["ovd"]),
    ("detection", "od_map", ["ovd"]),
    ("detection", "od_ap50", ["ovd"]),
    ("detection", "od_weighted", ["ovd"]),
    ("detection", "repetition", ["ovd"]),
]


def make_batches(n: int, batch: int, types: list[str], rng: Rng) -> list[tuple[list[str], dict]]:
    """n completions as TRL reward calls: (completions, columns) per batch."""
    rows: list[tuple[str, str, str]] = []
    while len(rows) < n:
        ptype = rng.choice(types)
        solution, answers = MAKERS[ptype](rng)
        rows += [(wrap(rng, a), f"<answer>{solution}</answer>", ptype) for a in answers]
    batches = []
    for i in range(0, n, batch):
        chunk = rows[i : min(i + batch, n)]
        columns = {
            "prompts": ["question"] * len(chunk),
            "solution": [s for _, s, _ in chunk],
            "problem_type": [t for _, _, t in chunk],
            "completion_ids": [[0] * rng.randint(100, 900) for _ in chunk],
            "problem_id": list(range(len(chunk))),
            "data_type": ["video"] * len(chunk),
        }
        batches.append(([c for c, _, _ in chunk], columns))
    return batches


def throughput(fn: Callable, batches: list[tuple[list[str], dict]], passes: int = 3) -> float:
    """Completions per second: the best of `passes` full passes (as timeit does: a shared
    machine only ever slows a pass down)."""
    completions, columns = batches[0]
    fn(completions, **columns)  # warm-up: lazy imports (nltk, rapidfuzz, jiwer)
    best = float("inf")
    for _ in range(passes):
        start = time.perf_counter()
        for completions, columns in batches:
            fn(completions, **columns)
        best = min(best, time.perf_counter() - start)
    return sum(len(c) for c, _ in batches) / best


def measure(quick: bool = False, n: int | None = None, batch: int = 64) -> dict[str, dict]:
    """Completions per second of every scenario on one core, keyed ``"kind/reward/samples"``:
    ``{"kind", "reward", "samples", "completions_per_s", "target", "ok"}``. ``quick`` uses 2,000
    completions per scenario instead of 10,000."""
    n = n or (2_000 if quick else 10_000)
    if hasattr(os, "sched_setaffinity"):  # the targets are per core
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    results: dict[str, dict] = {}
    for kind, name, types in SCENARIOS:
        batches = make_batches(n, batch, types, random.Random(0))
        rate = throughput(get_reward(name), batches, passes=1 if quick else 3)
        label = types[0] if len(types) == 1 else "mixed text"
        results[f"{kind}/{name}/{label}"] = {
            "kind": kind, "reward": name, "samples": label, "completions_per_s": rate,
            "target": TARGETS[kind], "ok": rate >= TARGETS[kind],
        }  # fmt: skip
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=10_000, help="completions per scenario")
    parser.add_argument("--batch", type=int, default=64, help="completions per reward call")
    args = parser.parse_args()

    print(f"{args.n} completions per scenario, {args.batch} per call, one core")
    print(
        f"{'kind':<10} {'reward':<15} {'samples':<17} {'completions/s':>13} {'target':>7}  status"
    )
    results = measure(n=args.n, batch=args.batch)
    for r in results.values():
        print(
            f"{r['kind']:<10} {r['reward']:<15} {r['samples']:<17} {r['completions_per_s']:>13,.0f} {r['target']:>7,}  {'ok' if r['ok'] else 'BELOW TARGET'}"
        )
    below = [f"{r['reward']} ({r['samples']})" for r in results.values() if not r["ok"]]
    print(f"\nbelow target: {', '.join(below)}" if below else "\nall scenarios meet their target")
    return 0


if __name__ == "__main__":
    sys.exit(main())

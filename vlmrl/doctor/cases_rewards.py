"""Garbage into every reward: on anything a model can emit, a reward returns a value in its
documented range (or None) and never raises.

The pieces below are the formats the parsers look for, so random outputs reach deep into
them; tests/rewards/test_reward_properties.py draws from the same pieces with hypothesis.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path

from vlmrl.doctor.campaign import Case, Result

FRAGMENTS = [
    "<think>", "</think>", "<answer>", "</answer>", "[", "]", "{", "}", ",", ":", " ", "\n",
    '"Position"', "'Position'", '"Confidence"', "'Confidence'", '"bbox_2d"', '"label"', '"dog"',
    "'cat'", "```json", "```", "No Objects", "None", "null", "true", "NaN", "Infinity", "-1e999",
    "0", "1", "10", "100", "0.5", "-3", "1,000", "9" * 400, "B", "(B)", "A.", "golden retriever", "the",
]  # fmt: skip

# One valid solution set per problem type (the answer tags are added where used).
SOLUTIONS = {
    "multiple choice": ["B", "A"],
    "numerical": ["3", "0.5", "-2"],
    "OCR": ["STOP", "the quick fox"],
    "free-form": ["a dog runs", "golden retriever"],
    "regression": ["0", "10", "2.5"],
    "classification": ["cat", "golden retriever"],
    "grounding": ["[0, 0, 10, 10]", "[5, 5, 100, 100]"],
    "detection": [
        "No Objects",
        "[{'Position': [0, 0, 10, 10]}]",
        "[{'Position': [0, 0, 1, 1]}, {'Position': [5, 5, 100, 100]}]",
    ],
    "ovd": [
        "None",
        '[{"bbox_2d": [0, 0, 10, 10], "label": "dog"}]',
        '[{"bbox_2d": [0, 0, 10, 10], "label": "dog"}, {"bbox_2d": [0, 0, 1, 1], "label": "cat"}]',
    ],
}

BIG = 1_000_000
ADVERSARIAL = [
    "",
    " " * BIG,
    "<answer>" * (BIG // 8),
    "</answer>" * (BIG // 9),
    "<think>" + "x " * (BIG // 2) + "</think><answer>" + "B " * (BIG // 2) + "</answer>",
    "<answer>" + "[" * BIG + "</answer>",
    "<answer>" + "{" * BIG + "</answer>",
    "<answer>" + '[{"Position": [0, 0, 10, 10], "Confidence": 0.5}, ' * 20_000 + "</answer>",
    "<answer>" + '[{"bbox_2d": [0, 0, 10, 10], "label": "dog"}, ' * 20_000 + "{}]</answer>",
    "<answer>" + "9" * BIG + "</answer>",
    "<answer>NaN</answer>",
    "<answer>-inf</answer>",
    "<answer>[NaN, 0, 1, 1]</answer>",
    "<answer>[{'Position': [10, 10, 0, 0], 'Confidence': Infinity}]</answer>",
    "<answer>[{'bbox_2d': [1e400, 0, 1, 1], 'label': 'dog'}]</answer>",
    "<answer><answer><answer>B</answer></answer></answer>",
    "<think><think></think></think><answer></answer><answer>A</answer>",
    "<answer>\x00\ud800\U0001f600 é</answer>",
]


def random_text(rng: random.Random) -> str:
    """A random model output: unicode noise or a jumble of format fragments."""
    if rng.random() < 0.3:
        return "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(200)))
    return "".join(rng.choice(FRAGMENTS) if rng.random() < 0.7 else chr(rng.randrange(0x20, 0x7F))
                   for _ in range(rng.randrange(40)))


def random_completion(rng: random.Random) -> object:
    """Plain text or either chat shape a TRL trainer passes."""
    text = random_text(rng)
    shape = rng.randrange(3)
    if shape == 1:
        return [{"role": "assistant", "content": text}]
    if shape == 2:
        return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]
    return text


def _fuzz(name: str, calls: int, seed: int) -> Callable[[Path], Result]:
    def case(_work: Path) -> Result:
        from vlmrl.rewards import REWARD_RANGES, REWARDS

        reward, (low, high) = REWARDS[name], REWARD_RANGES[name]
        rng = random.Random(seed)
        types = sorted(SOLUTIONS)
        bad: list[str] = []
        done = scored = 0
        batches = [[random_completion(rng) for _ in range(4)] for _ in range(calls // 4)]
        batches.append(ADVERSARIAL)
        for batch in batches:
            ptypes = [rng.choice(types) for _ in batch]
            columns = {
                "problem_type": ptypes,
                "solution": [f"<answer>{rng.choice(SOLUTIONS[t])}</answer>" for t in ptypes],
                "completion_ids": [[0] * rng.randrange(3000) for _ in batch],
                "prompts": ["q"] * len(batch),
            }
            out = reward(batch, **columns)  # an exception escapes: CRASHED
            done += len(batch)
            if len(out) != len(batch):
                return Result.silent(f"{len(out)} values for {len(batch)} completions")
            scored += sum(v is not None for v in out)
            bad += [repr(v) for v in out if v is not None and not (
                isinstance(v, float) and math.isfinite(v) and low <= v <= high)]
        if bad:
            return Result.silent(f"{len(bad)} of {done} values out of [{low}, {high}]: {bad[:5]}")
        if not scored:  # None means "not my problem type"; a reward that never scores is broken
            return Result.silent(f"None for all {done} completions, of every problem type")
        return Result.handled(f"{done} garbage completions: {scored} scored in [{low}, {high}], "
                              f"{done - scored} None (other problem types)")
    return case


def reward_cases(calls: int = 400, seed: int = 0) -> list[Case]:
    from vlmrl.rewards import REWARDS

    return [Case(f"reward fuzz: {name}", "rewards", _fuzz(name, calls, seed + i))
            for i, name in enumerate(sorted(REWARDS))]


CASES = reward_cases()

"""Headroom for RL: a checkpoint's sampled pass@1 and pass@k on the questions RL trains on.

RL with a verifiable reward can only reinforce answers the policy already samples: where
pass@k (at least one of k samples right) is well above pass@1 (the mean sample), groups
of k completions carry signal; where they are equal, nothing is left to learn from.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from vlmrl.data.records import family_of
from vlmrl.eval.metrics import score_predictions
from vlmrl.eval.runner import _prediction


def pass_at_k(
    answer: Any,
    rows: Sequence[dict[str, Any]],
    k: int = 8,
    temperature: float = 1.0,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """pass@1 and pass@k of `answer` (a `model_answerer`) on `rows`, overall and per family.

    Each question is answered k times by sampling at `temperature`; a sample is right when
    its score is >= 0.5 (exact for multiple choice).
    """
    if k < 1:
        raise ValueError("k must be >= 1")
    right: dict[str, list[float]] = {}
    family: dict[str, str] = {}
    bar = tqdm(total=len(rows) * k, desc=f"pass@{k}", unit="sample", disable=not progress)
    for start in range(0, len(rows), batch_size):
        batch = list(rows[start : start + batch_size])
        for j in range(k):
            texts = answer(batch, [r["frames"] for r in batch], temperature=temperature,
                           seed=seed + 1000 * j + start)
            preds = [_prediction(r, t, False, None) for r, t in zip(batch, texts, strict=True)]
            for p in score_predictions(preds):
                right.setdefault(p["problem_id"], []).append(float(p["score"] >= 0.5))
                family[p["problem_id"]] = family_of(p["data_source"])
            bar.update(len(batch))
    bar.close()

    def figures(ids: list[str]) -> dict[str, Any]:
        return {"n": len(ids),
                "pass@1": statistics.mean(statistics.mean(right[i]) for i in ids),
                f"pass@{k}": statistics.mean(float(any(right[i])) for i in ids),
                # the share of questions whose k samples disagree: groups with a learning signal
                "mixed_groups": statistics.mean(float(0 < sum(right[i]) < k) for i in ids)}

    ids = list(right)
    out = {"k": k, "temperature": temperature, **figures(ids), "families": {}}
    for fam in sorted(set(family.values())):
        out["families"][fam] = figures([i for i in ids if family[i] == fam])
    return out

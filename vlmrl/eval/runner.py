"""Evaluate a checkpoint on a benchmark: generate, score, shuffled-frame control, report.

Generation is a plain callable ``answer(rows, frames) -> completions`` so the scoring
path can be tested with fixed answers; `model_answerer` builds one from a checkpoint.
The temporal control answers every video question again with its frames in a random
(non-identity, seeded per question) order; the accuracy drop is the model's temporal
sensitivity.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from vlmrl.eval.benchmarks import LoadedBenchmark
from vlmrl.eval.metrics import score_predictions, summarize, temporal_sensitivity
from vlmrl.eval.report import check_report_dir, write_report

Answerer = Callable[[Sequence[dict[str, Any]], Sequence[Any]], list[str]]


@dataclass
class DecodingSettings:
    """How answers are decoded. Defaults are deterministic (greedy), as evaluation should be.

    Video-R1 evaluates with temperature 0.1 / top_p 0.001, which is greedy in practice;
    set ``do_sample`` with ``temperature`` / ``top_p`` to sample instead. A recipe's
    ``eval`` section subclasses this class with Video-R1's values (one set of fields).
    """

    max_new_tokens: int = 1024
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    batch_size: int = 8

    def generation(self, seed: int) -> GenerationSettings:
        """These decoding settings, seeded (what `model_answerer` takes)."""
        decoding = {f.name: getattr(self, f.name) for f in fields(DecodingSettings)}
        return GenerationSettings(**decoding, seed=seed)


@dataclass
class GenerationSettings(DecodingSettings):
    """Decoding settings and the sampling seed."""

    seed: int = 0


@dataclass
class EvalSettings:
    """What an evaluation run does besides generating."""

    generation: GenerationSettings = field(default_factory=GenerationSettings)
    shuffled_control: bool = True
    # Also answer every question once more by sampling (temperature `sampled_temperature`):
    # what RL optimises is the sampled policy, whose accuracy greedy decoding can hide.
    sampled: bool = False
    sampled_temperature: float = 1.0
    bootstrap_seed: int = 0
    limit: int | None = None  # evaluate only the first N samples (smoke runs)


def shuffled_order(problem_id: str, n: int, seed: int = 0) -> list[int]:
    """A non-identity permutation of ``range(n)``, fixed for a question and seed."""
    import torch

    from vlmrl.train.temporal import non_identity_permutation

    digest = hashlib.sha256(f"{seed}:{problem_id}".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    order = non_identity_permutation(n, gen)
    return list(order) if order is not None else list(range(n))


def model_answerer(checkpoint: str | os.PathLike[str], settings: GenerationSettings,
                   device: str | None = None, dtype: str = "float32", prompt: Any = None) -> Answerer:
    """Batched generation with a local checkpoint, visual placeholder tokens suppressed.

    ``prompt`` is the `PromptConfig` the checkpoint was trained with (default: the one its
    lineage records, else the standard Video-R1-style prompt); evaluating with another
    prompt measures something else.
    """
    import torch

    from vlmrl.models import load_model
    from vlmrl.models.multimodal import encode_chats
    from vlmrl.train.prompts import build_prompt, resolve_prompt

    prompt = resolve_prompt(prompt, checkpoint)
    loaded = load_model(checkpoint, dtype=dtype, device=device)
    model, processor = loaded.model, loaded.processor
    model.eval()
    config = model.config
    suppress = sorted({getattr(config, n) for n in ("image_token_id", "video_token_id",
                                                   "vision_start_token_id", "vision_end_token_id")
                       if getattr(config, n, None) is not None})
    tok = processor.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def answer(rows: Sequence[dict[str, Any]], frames: Sequence[Any], *,
               temperature: float | None = None, seed: int | None = None) -> list[str]:
        """Greedy (or as `settings` say); a `temperature` samples at it (top_p 1)."""
        torch.manual_seed(settings.seed if seed is None else seed)
        convs = [build_prompt(row, prompt, frames=f) for row, f in zip(rows, frames, strict=True)]
        enc = encode_chats(processor, convs)
        inputs = {k: v.to(model.device) if hasattr(v, "to") else v for k, v in enc.model_inputs().items()}
        gen_kwargs: dict[str, Any] = {"max_new_tokens": settings.max_new_tokens, "do_sample": settings.do_sample,
                                      "suppress_tokens": suppress, "pad_token_id": pad_id}
        if temperature is not None:
            gen_kwargs.update(do_sample=True, temperature=temperature, top_p=1.0, top_k=None)
        elif settings.do_sample:
            gen_kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
        else:  # keep sampling-only knobs out of greedy decoding (transformers warns otherwise)
            gen_kwargs.update(temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            out = model.generate(**inputs, **gen_kwargs)
        new = out[:, enc.input_ids.shape[1]:]
        return tok.batch_decode(new, skip_special_tokens=True)

    answer.checkpoint = str(Path(checkpoint).resolve())  # type: ignore[attr-defined]
    return answer


def _prediction(row: dict[str, Any], completion: str, shuffled: bool, order: list[int] | None) -> dict[str, Any]:
    return {"problem_id": row["problem_id"], "problem_type": row["problem_type"], "data_type": row["data_type"],
            "data_source": row.get("data_source", ""), "options": row.get("options") or [],
            "solution": row["solution"], "completion": completion, "shuffled": shuffled,
            "frame_order": order}


def evaluate(
    benchmark: LoadedBenchmark,
    answer: Answerer,
    out_dir: str | os.PathLike[str],
    settings: EvalSettings | None = None,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    stage: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Answer every benchmark question (and the shuffled control), score, write the report
    (a new directory; with overwrite, a previous report there is replaced)."""
    from vlmrl.lineage import LINEAGE, lineage_hash, read_manifest

    check_report_dir(out_dir, overwrite)  # before the work, not after it

    settings = settings or EvalSettings()
    ds = benchmark.dataset
    n = len(ds) if settings.limit is None else min(settings.limit, len(ds))
    t0 = time.perf_counter()
    bs = settings.generation.batch_size
    predictions: list[dict[str, Any]] = []
    shuffled_preds: list[dict[str, Any]] = []
    sampled_preds: list[dict[str, Any]] = []
    bar = tqdm(total=n, desc=f"eval {benchmark.name}", unit="sample", disable=not progress)
    # One batch of rows in memory at a time: its frames serve the ordered answers and, for
    # its videos, the shuffled control, so each row's frames are decoded once.
    for start in range(0, n, bs):
        rows = [ds[i] for i in range(start, min(start + bs, n))]
        answers = answer(rows, [r["frames"] for r in rows])
        predictions += [_prediction(r, c, False, None) for r, c in zip(rows, answers, strict=True)]
        if settings.sampled:
            sampled = answer(rows, [r["frames"] for r in rows],
                             temperature=settings.sampled_temperature,
                             seed=settings.generation.seed + start)
            sampled_preds += [_prediction(r, c, False, None) for r, c in zip(rows, sampled, strict=True)]
        if settings.shuffled_control:
            video = [r for r in rows if r["data_type"] == "video" and len(r["frames"]) > 1]
            orders = [shuffled_order(r["problem_id"], len(r["frames"]), settings.generation.seed) for r in video]
            if video:
                frames = [[r["frames"][i] for i in o] for r, o in zip(video, orders, strict=True)]
                shuffled_preds += [_prediction(r, c, True, o) for r, c, o
                                   in zip(video, answer(video, frames), orders, strict=True)]
        bar.update(len(rows))
    bar.close()
    seconds = time.perf_counter() - t0
    scored = score_predictions(predictions)
    scored_shuffled = score_predictions(shuffled_preds)
    seed = settings.bootstrap_seed

    ckpt: dict[str, Any] = {"path": str(checkpoint) if checkpoint else getattr(answer, "checkpoint", None),
                            "kind": stage, "lineage_sha256": None}
    if ckpt["path"] and (Path(ckpt["path"]) / LINEAGE).is_file():
        ckpt["lineage_sha256"] = lineage_hash(ckpt["path"])
        ckpt["kind"] = stage or read_manifest(ckpt["path"]).get("kind")
    report = {
        "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "benchmark": {"name": benchmark.name, "source": benchmark.source, "sha256": benchmark.source_sha256,
                      "dataset_fingerprint": benchmark.manifest.fingerprint, "n": len(scored),
                      "skipped": len(benchmark.skipped), "skipped_rows": benchmark.skipped},
        "checkpoint": ckpt,
        "settings": {"generation": asdict(settings.generation), "shuffled_control": settings.shuffled_control,
                     "limit": settings.limit, "frames": benchmark.manifest.options},
        "summary": summarize(scored, seed=seed),
        "throughput": {"samples": len(scored) + len(scored_shuffled), "seconds": round(seconds, 3),
                       "samples_per_s": round((len(scored) + len(scored_shuffled)) / seconds, 3) if seconds else None},
    }
    if settings.sampled:
        report["sampled"] = {"temperature": settings.sampled_temperature,
                             "summary": summarize(score_predictions(sampled_preds), seed=seed)}
    if settings.shuffled_control:
        report["temporal"] = {"summary": summarize(scored_shuffled, seed=seed),
                              "sensitivity": temporal_sensitivity(scored, scored_shuffled, seed=seed)}
    write_report(out_dir, report, scored + scored_shuffled, overwrite=overwrite)
    return report

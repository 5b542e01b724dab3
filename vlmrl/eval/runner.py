"""Evaluate a checkpoint on a benchmark: generate, score, shuffled-frame control, report.

Generation is a plain callable ``answer(rows, frames) -> completions`` so the scoring
path can be tested with fixed answers; `model_answerer` builds one from a checkpoint.
The temporal control answers every video question again with its frames in a random
(non-identity, seeded per question) order; the accuracy drop is the model's temporal
sensitivity.

Several processes (torchrun / accelerate launch) share one evaluation: whole batches are dealt
out across the ranks, so every batch and its sampling seed are those of a single process, and
the answers are gathered back into row order; the main process writes the one report.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
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


def launched() -> bool:
    """True in one of several processes that torchrun / accelerate launch started."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def process_device(cpu: bool = False) -> str:
    """This process's device in a launched group, joining the group on the way (accelerate's
    PartialState): its own GPU, or "cpu" (gloo) with `cpu` or without CUDA."""
    import torch
    from accelerate import PartialState

    cpu = cpu or not torch.cuda.is_available()
    state = PartialState(cpu=cpu)
    return "cpu" if cpu else str(state.device)


def process_group() -> tuple[int, int]:
    """(rank, world size) of this evaluation; (0, 1) in a single process. A launched process
    joins its group first: evaluating alone, each would do all the work and write a report."""
    import torch.distributed as dist

    if launched() and not (dist.is_available() and dist.is_initialized()):
        process_device()
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather(value: Any, error: BaseException | None, world: int) -> list[Any]:
    """Every rank's `value` (all_gather_object, gloo included), in rank order. When a rank
    failed (`error`), every rank raises, the others naming it: one rank alone would otherwise
    wait forever for the rest at the next collective."""
    if world == 1:
        if error is not None:
            raise error
        return [value]
    import torch.distributed as dist

    # an exception is sent as text: not every exception class survives pickling
    sent = (None, value) if error is None else (f"{type(error).__name__}: {error}", None)
    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, sent)
    if error is not None:
        raise error
    for rank, (problem, _) in enumerate(parts):
        if problem is not None:
            raise RuntimeError(f"evaluation failed in process {rank}: {problem}")
    return [v for _, v in parts]


def check_report_dir_all(out_dir: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """`check_report_dir` in every process of the evaluation; all refuse when one does."""
    _, world = process_group()
    try:
        out = check_report_dir(out_dir, overwrite)
    except Exception as exc:
        _gather(None, exc, world)  # raises, here and in every other process
        raise
    _gather(None, None, world)
    return out


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
    prompt measures something else. ``device`` None: where from_pretrained puts the model,
    except in a launched process: its own GPU (or the CPU without CUDA).
    """
    import torch

    from vlmrl.models import load_model
    from vlmrl.models.multimodal import encode_chats
    from vlmrl.train.prompts import build_prompt, resolve_prompt

    prompt = resolve_prompt(prompt, checkpoint)
    if device is None and launched():  # N processes on one GPU would only compete
        device = process_device()
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
    (a new directory; with overwrite, a previous report there is replaced).

    In several processes (a launched group), batch b is answered by rank b % world size and
    the answers are gathered to every rank; the main process writes the report, and every
    process returns it."""
    rank, world = process_group()
    check_report_dir_all(out_dir, overwrite)  # before the work, not after it, in every process

    settings = settings or EvalSettings()
    ds = benchmark.dataset
    n = len(ds) if settings.limit is None else min(settings.limit, len(ds))
    t0 = time.perf_counter()
    bs = settings.generation.batch_size
    # whole batches per rank: a batch's padding and its sampling seed (generation.seed + start)
    # are those of a single process, so N processes give one process's answers
    starts = range(0, n, bs)[rank::world]
    # (start, ordered, sampled, shuffled predictions) per batch
    batches: list[tuple[int, list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]] = []
    bar = tqdm(total=sum(min(bs, n - s) for s in starts), unit="sample", disable=not progress,
               desc=f"eval {benchmark.name}" + (f" [process {rank}/{world}]" if world > 1 else ""))
    error: BaseException | None = None
    try:
        # One batch of rows in memory at a time: its frames serve the ordered answers and, for
        # its videos, the shuffled control, so each row's frames are decoded once.
        for start in starts:
            rows = [ds[i] for i in range(start, min(start + bs, n))]
            answers = answer(rows, [r["frames"] for r in rows])
            ordered = [_prediction(r, c, False, None) for r, c in zip(rows, answers, strict=True)]
            sampled_preds: list[dict[str, Any]] = []
            shuffled_preds: list[dict[str, Any]] = []
            if settings.sampled:
                sampled = answer(rows, [r["frames"] for r in rows],
                                 temperature=settings.sampled_temperature,
                                 seed=settings.generation.seed + start)
                sampled_preds = [_prediction(r, c, False, None) for r, c in zip(rows, sampled, strict=True)]
            if settings.shuffled_control:
                video = [r for r in rows if r["data_type"] == "video" and len(r["frames"]) > 1]
                orders = [shuffled_order(r["problem_id"], len(r["frames"]), settings.generation.seed)
                          for r in video]
                if video:
                    frames = [[r["frames"][i] for i in o] for r, o in zip(video, orders, strict=True)]
                    shuffled_preds = [_prediction(r, c, True, o) for r, c, o
                                      in zip(video, answer(video, frames), orders, strict=True)]
            batches.append((start, ordered, sampled_preds, shuffled_preds))
            bar.update(len(rows))
    except Exception as exc:
        if world == 1:
            raise
        error = exc  # raised in every process by the gather
    bar.close()
    per_rank = _gather(batches, error, world)
    seconds = time.perf_counter() - t0  # to the slowest process's end
    gathered = sorted((b for part in per_rank for b in part), key=lambda b: b[0])
    predictions = [p for b in gathered for p in b[1]]
    sampled_all = [p for b in gathered for p in b[2]]
    shuffled_all = [p for b in gathered for p in b[3]]
    processes = {"world_size": world, "rows_per_rank": [sum(len(b[1]) for b in part) for part in per_rank]}

    report: dict[str, Any] | None = None
    if rank == 0:  # one process scores and writes; the others receive its report
        try:
            scored, scored_shuffled = score_predictions(predictions), score_predictions(shuffled_all)
            report = _report(benchmark, answer, settings, scored, sampled_all, scored_shuffled,
                             seconds, processes, checkpoint, stage)
            write_report(out_dir, report, scored + scored_shuffled, overwrite=overwrite)
        except Exception as exc:
            if world == 1:
                raise
            error = exc
    if world > 1:
        # the others wait here until the report is written (or has failed): no process ends
        # before the report exists
        import torch.distributed as dist

        box: list[Any] = [(report, None if error is None else f"{type(error).__name__}: {error}")]
        dist.broadcast_object_list(box, src=0)
        report, problem = box[0]
        if error is not None:
            raise error
        if problem is not None:
            raise RuntimeError(f"writing the report failed in process 0: {problem}")
    assert report is not None
    return report


def _report(benchmark: LoadedBenchmark, answer: Answerer, settings: EvalSettings,
            scored: list[dict[str, Any]], sampled: list[dict[str, Any]],
            scored_shuffled: list[dict[str, Any]], seconds: float, processes: dict[str, Any],
            checkpoint: str | os.PathLike[str] | None, stage: str | None) -> dict[str, Any]:
    """The report of an evaluation's gathered predictions (scored, in row order)."""
    from vlmrl.lineage import LINEAGE, lineage_hash, read_manifest

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
        "processes": processes,
    }
    if settings.sampled:
        # the sampled answers are not in predictions.jsonl: their digest (in row order) shows
        # whether two runs sampled the same answers
        digest = hashlib.sha256(json.dumps([p["completion"] for p in sampled]).encode()).hexdigest()
        report["sampled"] = {"temperature": settings.sampled_temperature,
                             "summary": summarize(score_predictions(sampled), seed=seed),
                             "completions_sha256": digest}
    if settings.shuffled_control:
        report["temporal"] = {"summary": summarize(scored_shuffled, seed=seed),
                              "sensitivity": temporal_sensitivity(scored, scored_shuffled, seed=seed)}
    return report

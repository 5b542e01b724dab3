"""Rollout time: vLLM vs transformers `generate` for the same prompts and samples (issue 17).

    .venv-vllm/bin/python bench/bench_vllm.py [--prompts 8] [--samples 8] [--repeats 3]
    .venv-vllm/bin/python bench/bench_vllm.py --gaps [--mrope vllm]

Runs in the vLLM environment (`make vllm`). The tiny recipe's rollout batch: `--prompts`
RL rows of its synthetic set (video, the recipe's frames), `--samples` completions each,
its max_completion_length and temperature, the trainer's suppressed vision tokens. HF
generates the trainer's way (each prompt repeated G times, one `generate` call); vLLM
takes each prompt once with n = G, fed pixels or the HF tower's embeddings (their
computation counted in the vLLM time). One untimed warm-up each, then medians over
interleaved repeats, and the per-token log-prob gap of each vLLM path against the HF
model's recomputation of the same completions.

--gaps prints only the agreement table: per prompt kind (text, image, video at its own
frame rate, at 2 and at 4 fps) and input path, the per-token log-prob gap; --mrope vllm
shows it with vLLM's own M-RoPE rule (see vlmrl/rollout/vllm_engine.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[_var] = "1"


def rollout_speed(num_prompts: int = 8, samples: int = 8, repeats: int = 3,
                  max_tokens: int | None = None, mrope: str = "transformers") -> dict:
    """Medians of HF generate, both colocated vLLM paths and a `vlmrl rollout-serve`
    process (embeddings) on one rollout batch, with their log-prob gaps."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlmrl.models.multimodal import encode_chats
    from vlmrl.rollout import (
        VllmRollout,
        build_rollout_prompts,
        hf_completion_logprobs,
        language_model_weights,
        logprob_gap,
        start_rollout_server,
        vision_token_ids,
    )
    from vlmrl.stages.rollout_demo import build_rollout_demo
    from vlmrl.train.prompts import build_prompt

    work = Path(tempfile.mkdtemp(prefix="bench_vllm_"))
    demo = build_rollout_demo(work, num_rows=num_prompts)
    rl = demo.recipe.rl
    max_tokens = max_tokens or rl.max_completion_length
    convs = [build_prompt(r, rl.prompt) for r in demo.rows[:num_prompts]]
    processor = AutoProcessor.from_pretrained(demo.model_dir)
    model = AutoModelForImageTextToText.from_pretrained(demo.model_dir, dtype=torch.float32).eval()
    banned = vision_token_ids(model.config)
    g = samples

    def hf_rollout() -> int:
        # the trainer's generation: each prompt G times, one call
        encoded = encode_chats(processor, [c for c in convs for _ in range(g)], True)
        inputs = encoded.model_inputs()
        with torch.no_grad():
            out = model.generate(**inputs, do_sample=True, temperature=rl.temperature,
                                 top_p=rl.top_p, max_new_tokens=max_tokens,
                                 suppress_tokens=banned, pad_token_id=processor.tokenizer.pad_token_id)
        completions = out[:, inputs["input_ids"].size(1):]
        eos = processor.tokenizer.eos_token_id
        return sum(_length(row.tolist(), eos) for row in completions)

    start = time.perf_counter()
    engine = VllmRollout(demo.model_dir, max_model_len=4096, seed=0, mrope=mrope)
    init_s = time.perf_counter() - start
    server = start_rollout_server(demo.model_dir, engine_kwargs={"seed": 0, "mrope": mrope})
    client = server.client()

    def vllm_rollout(path: str) -> tuple[int, list, list]:
        vision = "pixels" if path == "pixels" else "embeddings"
        if path == "ungrouped":  # the G copies as G requests (the trainer before grouping)
            prompts = build_rollout_prompts(processor, [c for c in convs for _ in range(g)],
                                            vision=vision, model=model)
        else:
            prompts = build_rollout_prompts(processor, convs, vision=vision, model=model)
        # no per-request seeds: on the CPU backend a seeded request whose prefill is
        # chunked fails ("CPU Generator does not use offset"); the engine seed applies
        outputs = (client if path == "server" else engine).generate(
            prompts, 1 if path == "ungrouped" else g, max_tokens, temperature=rl.temperature,
            top_p=rl.top_p, suppress_token_ids=banned)
        return sum(len(c) for o in outputs for c in o.completion_ids), prompts, outputs

    results: dict[str, dict] = {}
    timings: dict[str, list[float]] = {"hf": [], "pixels": [], "embeddings": [], "ungrouped": [],
                                       "server": []}
    tokens: dict[str, int] = {}
    last: dict[str, tuple] = {}
    hf_rollout()
    for path in ("pixels", "embeddings", "ungrouped", "server"):  # warm-up, untimed
        vllm_rollout(path)
    for _ in range(repeats):
        for name in timings:
            start = time.perf_counter()
            if name == "hf":
                tokens[name] = hf_rollout()
            else:
                tokens[name], prompts, outputs = vllm_rollout(name)
                last[name] = (prompts, outputs)
            timings[name].append(time.perf_counter() - start)
    for name, times in timings.items():
        results[name] = {"median_s": statistics.median(times), "runs_s": times,
                         "tokens": tokens[name],
                         "tokens_per_s": tokens[name] / statistics.median(times)}
    for name, (prompts, outputs) in last.items():
        ours, theirs = [], []
        for prompt, out in zip(prompts, outputs, strict=True):
            ours += out.logprobs
            theirs += hf_completion_logprobs(model, prompt, out.completion_ids,
                                             temperature=rl.temperature, suppress_token_ids=banned)
        gap = logprob_gap(ours, theirs)
        results[name]["gap_max"], results[name]["gap_mean"] = gap.max_abs, gap.mean_abs
    sync = []
    for _ in range(repeats):  # the same weights back: the cost of one in-place sync
        start = time.perf_counter()
        engine.update_weights(language_model_weights(model))
        sync.append(time.perf_counter() - start)
    sync_s = statistics.median(sync)
    start = time.perf_counter()
    client.update_weights(language_model_weights(model))
    server_sync_s = time.perf_counter() - start
    engine.close()
    server.stop()

    return {"init_s": init_s, "sync_s": sync_s, "server_sync_s": server_sync_s,
            "results": results, "prompts": num_prompts,
            "samples": g, "max_tokens": max_tokens, "threads": torch.get_num_threads()}


def measure(quick: bool = False) -> dict:
    """`make bench`'s entry (bench/run.py runs it with .venv-vllm's python)."""
    return rollout_speed(repeats=1 if quick else 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="default: the recipe's max_completion_length")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--gaps", action="store_true", help="only the agreement table")
    parser.add_argument("--mrope", choices=("transformers", "vllm"), default="transformers")
    args = parser.parse_args()
    if args.gaps:
        gap_table(args)
        return
    r = rollout_speed(args.prompts, args.samples, args.repeats, args.max_tokens, args.mrope)
    results, init_s, sync_s = r["results"], r["init_s"], r["sync_s"]
    hf_s = results["hf"]["median_s"]
    print(f"rollout batch: {r['prompts']} prompts x {r['samples']} samples, max {r['max_tokens']} "
          f"tokens, torch threads {r['threads']}, {os.cpu_count()} CPUs; vLLM engine start "
          f"{init_s:.1f} s (once), language-model weight sync {sync_s * 1000:.0f} ms "
          f"(through the server {r['server_sync_s'] * 1000:.0f} ms)")
    print(f"{'path':<22}{'median s':>10}{'tokens':>8}{'tok/s':>9}{'HF / this':>11}"
          f"{'gap max':>11}{'gap mean':>11}")
    for name, label in (("hf", "transformers generate"), ("pixels", "vLLM, pixels"),
                        ("embeddings", "vLLM, HF embeddings"),
                        ("ungrouped", "  same, G requests n=1"), ("server", "vLLM server, embeddings")):
        row = results[name]
        gap = (f"{row['gap_max']:>11.2e}{row['gap_mean']:>11.2e}" if "gap_max" in row
               else f"{'-':>11}{'-':>11}")
        print(f"{label:<22}{row['median_s']:>10.2f}{row['tokens']:>8}{row['tokens_per_s']:>9.0f}"
              f"{hf_s / row['median_s']:>10.2f}x{gap}")
    if args.json:
        args.json.write_text(json.dumps({"init_s": init_s, "sync_s": sync_s, "results": results}, indent=2) + "\n")


def gap_table(args: argparse.Namespace) -> None:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlmrl.rollout import (
        RolloutPrompt,
        VllmRollout,
        build_rollout_prompts,
        hf_completion_logprobs,
        logprob_gap,
        vision_token_ids,
    )
    from vlmrl.stages.rollout_demo import build_rollout_demo
    from vlmrl.train.prompts import build_prompt, sampled_fps

    demo = build_rollout_demo(Path(tempfile.mkdtemp(prefix="bench_vllm_gaps_")), num_rows=4,
                              video_fraction=0.5)
    pc = demo.recipe.rl.prompt
    processor = AutoProcessor.from_pretrained(demo.model_dir)
    model = AutoModelForImageTextToText.from_pretrained(demo.model_dir, dtype=torch.float32).eval()
    banned = vision_token_ids(model.config)
    engine = VllmRollout(demo.model_dir, max_model_len=4096, seed=0, mrope=args.mrope)
    video = next(r for r in demo.rows if r["data_type"] == "video")
    image = next(r for r in demo.rows if r["data_type"] == "image")

    def at_fps(fps: float) -> dict:
        return {**video, "timestamps": [i / fps for i in range(len(video["frames"]))]}

    text = [{"role": "user", "content": [{"type": "text", "text": video["problem"]}]}]
    cases = [("text only", text), ("image", build_prompt(image, pc)),
             (f"video, {sampled_fps(video):.2f} fps", build_prompt(video, pc)),
             ("video, 2 fps", build_prompt(at_fps(2.0), pc)),
             ("video, 4 fps", build_prompt(at_fps(4.0), pc))]
    print(f"per-token |vLLM - HF| log-prob, {args.samples} samples x 32 tokens per prompt, "
          f"M-RoPE rule: {args.mrope}")
    print(f"{'prompt':<20}{'path':<34}{'max':>10}{'mean':>10}")
    for label, conv in cases:
        for vision in ("pixels", "embeddings"):
            prompt = build_rollout_prompts(processor, [conv], vision=vision, model=model)[0]
            variants = [(vision, prompt)]
            if vision == "embeddings" and "video" in prompt.multi_modal_data:
                untimed = {k: v for k, v in prompt.multi_modal_data["video"].items()
                           if k != "second_per_grid_ts"}
                variants.append(("embeddings without second_per_grid_ts", RolloutPrompt(
                    prompt.text, {"video": untimed}, prompt.hf_prompt_ids, prompt.visual)))
            for name, variant in variants:
                out = engine.generate([variant], args.samples, 32, suppress_token_ids=banned)[0]
                hf = hf_completion_logprobs(model, prompt, out.completion_ids,
                                            suppress_token_ids=banned)
                gap = logprob_gap(out.logprobs, hf)
                print(f"{label:<20}{name:<34}{gap.max_abs:>10.2e}{gap.mean_abs:>10.2e}")
            if label == "text only":
                break  # no visual input: the paths are the same
    engine.close()


def _length(ids: list[int], eos: int) -> int:
    # generated tokens up to and including EOS (the rest is padding)
    return ids.index(eos) + 1 if eos in ids else len(ids)


if __name__ == "__main__":
    main()

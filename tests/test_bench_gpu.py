"""bench/bench_gpu.py (measure 8): the GRPO-step bench runs on CPU and its figures hold together.

The 7B-shaped run needs a GPU; here the same code runs on the tiny model (--tiny) and on
the 7B path with narrow dims (--shrink), so neither can rot unseen.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH / "bench_gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu"] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("bench_gpu", None)


def positive(x: float) -> bool:
    return math.isfinite(x) and x > 0


def check_figures(r: dict) -> None:
    parts = r["parts_s"]
    assert set(parts) == {"prepare", "generation", "scoring", "logprobs", "update"}
    for name in (
        "step_s",
        "rollout_tokens_per_s",
        "train_tokens_per_s",
        "step_tokens_per_s",
        "rollout_roofline_tokens_per_s",
        "rollout_roofline_fraction",
        "peak_rss_mb",
    ):
        assert positive(r[name]), (name, r[name])
    for name, value in [*parts.items(), *r["mfu"].items()]:
        assert positive(value), (name, value)
    # the phases are timed on their own, the step around them: they account for the step
    total = sum(parts.values())
    assert total <= r["step_s"] * (1 + 1e-4)
    assert total >= 0.9 * r["step_s"], (total, r["step_s"])
    # (figures carry 6 significant digits: allow their rounding)
    assert math.isclose(r["other_s"], r["step_s"] - total, abs_tol=1e-5 * r["step_s"])
    # the rates are the same token counts over their own times
    generated = r["prompts"] * r["G"] * r["completion_tokens"]
    assert math.isclose(r["rollout_tokens_per_s"] * parts["generation"], generated, rel_tol=1e-3)
    tokens = r["step_tokens_per_s"] * r["step_s"]
    assert math.isclose(r["train_tokens_per_s"] * parts["update"], tokens, rel_tol=1e-3)
    assert tokens >= r["prompts"] * r["G"] * (r["prompt_len"] - 1) + generated
    assert r["mfu"]["update"] > 0 and r["mfu"]["step"] < 1


def test_tiny_cpu_run_gives_consistent_figures(bench):
    r = bench.measure(quick=True, tiny=True)
    assert r["device"] == "cpu" and r["model"] == "tiny" and r["steps"] == 1
    assert (r["frames"], r["G"], r["completion_tokens"]) == (4, 2, 8)
    # 4 frames of 56 x 56: 2 temporal patches x (4 x 4 patches / 2 x 2 merge) = 8 tokens
    assert r["video_tokens"] == 8 and r["prompt_len"] > r["video_tokens"]
    assert "AdamW" in r["optimizer"]
    check_figures(r)


def test_step_trains_the_language_model_not_the_vision_tower(bench):
    def length_reward(completions, **columns):  # varies between random completions
        return [float(len(c)) for c in completions]

    step = bench.setup(bench.Settings.tiny_cpu(), rewards=[length_reward])
    model = step.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = step.run(8)
    assert math.isfinite(out["loss"])
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    visual = {n for n in before if n.startswith("model.visual.")}
    assert visual and not (changed & visual)
    assert any(n.startswith("model.language_model.layers.") for n in changed)


def test_gpu_code_path_runs_shrunk_on_cpu(bench):
    # bf16 weights, checkpointing, 224 x 448 frames, the 7B config builder: only dims differ
    s = replace(bench.Settings.shrunk(), frames=2)
    r = bench.run(s)
    assert r["model"] == "qwen2.5-vl-7b-shape (shrunk)" and r["gradient_checkpointing"]
    assert "bfloat16" in r["optimizer"]
    assert r["video_tokens"] == 128  # one temporal patch of 8 x 16 merged tokens
    check_figures(r)


def test_7b_config_has_the_published_size(bench):
    ids = {"eos": 2, "pad": 0, "image": 5, "video": 6, "vision_start": 3, "vision_end": 4}
    from transformers import Qwen2_5_VLForConditionalGeneration

    config = bench.qwen25vl_7b_config(ids)
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    counts = bench.parameter_counts(model)
    assert abs(counts["n_total"] / 8.29e9 - 1) < 1e-3  # Qwen2.5-VL-7B: 8.29 B parameters
    assert abs(counts["n_vis"] / 0.6766e9 - 1) < 1e-3
    assert counts["n_lm"] + counts["n_vis"] + 152064 * 3584 == counts["n_total"]
    # 28 layers x (K + V) x 4 KV heads x head_dim 128 x 2 bytes
    assert bench.kv_bytes_per_token(config, 2) == 28 * 2 * 4 * 128 * 2
    weights = counts["n_lm"] * 2
    roof = bench.decode_roofline_tokens_per_s(8, weights, 57344, 1534, 4.8e12)
    assert 0.9 * 8 * 4.8e12 / weights < roof < 8 * 4.8e12 / weights  # KV adds a few %


def test_processor_gives_1024_video_tokens_for_16_frames(bench, tmp_path):
    from vlmrl.models import build_tiny_model, encode_chats, load_processor
    from vlmrl.train.prompts import build_prompt

    s = bench.Settings()
    rows = bench.video_rows(1, s)
    model_dir = build_tiny_model(tmp_path / "m", ["a video question"] * 4, bench.processor_spec(s))
    processor = load_processor(model_dir)
    enc = encode_chats(processor, [build_prompt(rows[0])])
    video_id = processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert enc.visual["video_grid_thw"].tolist() == [[8, 16, 32]]  # 16 frames / 2, 224/14, 448/14
    assert int((enc.input_ids == video_id).sum()) == 1024


def test_without_cuda_it_says_so_instead_of_failing(bench, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.main([]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device" in err and "--tiny" in err and "Traceback" not in err
    assert "no CUDA device" in bench.measure(quick=True)["skipped"]

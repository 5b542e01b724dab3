"""vLLM rollouts through the rollout server (`vlmrl rollout-serve`, vlmrl.rollout.server).

One server subprocess on the tiny recipe's checkpoint; the trainer side (HF model,
processor, prompts, agreement checks) lives in this process, as it would in a trainer.
Runs in the vLLM environment: `.venv-vllm/bin/python -m pytest tests/vllm`.
"""

from __future__ import annotations

import copy
import json
import socket
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest

pytest.importorskip(
    "vllm",
    reason="vLLM environment absent: build it with `make vllm`, then run "
    "`.venv-vllm/bin/python -m pytest tests/vllm`",
)

import torch  # noqa: E402
from safetensors.torch import load as st_load  # noqa: E402
from safetensors.torch import save as st_save  # noqa: E402

from tests.vllm.conftest import conversations, hf_gap  # noqa: E402
from vlmrl.rollout import (  # noqa: E402
    PromptIdsMismatch,
    RolloutPrompt,
    build_rollout_prompts,
    language_model_weights,
    vision_token_ids,
)
from vlmrl.rollout.server import (  # noqa: E402
    TOKEN_ENV,
    RolloutRequestError,
    RolloutServerError,
    encode_generate_request,
    start_rollout_server,
    weight_chunks,
)
from vlmrl.train.prompts import build_prompt  # noqa: E402
from vlmrl.train.temporal import non_identity_permutation  # noqa: E402

MAX_GAP = 1e-4  # as tests/vllm/test_vllm_rollout.py: float32 rounding on both sides
MAX_TOKENS = 16


@pytest.fixture(scope="module")
def server(demo):
    with start_rollout_server(demo.model_dir, python=sys.executable, timeout=300,
                              engine_kwargs={"max_model_len": 2048, "seed": 0}) as handle:
        yield handle


@pytest.fixture(scope="module")
def client(server):
    return server.client(timeout=120)


@pytest.fixture(scope="module")
def sample(hf, client):
    banned = vision_token_ids(hf[0].config)

    def run(prompts, n, seed=0):
        return client.generate(prompts, n, MAX_TOKENS, seed=seed, suppress_token_ids=banned)

    return run


def _mixed_prompts(demo, hf, vision: str) -> list[RolloutPrompt]:
    model, processor = hf
    convs = conversations(demo, "video") + conversations(demo, "image")
    return build_rollout_prompts(processor, convs, vision=vision, model=model)


def _post_raw(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url + "/generate", data=body, method="POST")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_health_on_loopback_only(demo, hf, server, client):
    host, port = urlsplit(server.url).hostname, urlsplit(server.url).port
    assert host == "127.0.0.1"
    info = client.health()
    assert info["model_dir"] == str(demo.model_dir)
    assert info["vocab_size"] == client.vocab_size == hf[0].config.get_text_config().vocab_size
    assert info["logprobs_mode"] == "processed_logprobs"
    assert info["mrope"] == "transformers"
    assert isinstance(info["weights_version"], int) and info["vllm_version"]
    # bound to 127.0.0.1 itself, not to every address: another loopback address is refused
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.2", port), timeout=5).close()


@pytest.mark.parametrize("vision", ["embeddings", "pixels"])
def test_video_and_image_rollouts_agree_with_transformers(demo, hf, sample, vision):
    prompts = _mixed_prompts(demo, hf, vision)
    kinds = {k for p in prompts for k in p.multi_modal_data}
    assert kinds == {"video", "image"}
    outputs = sample(prompts, 2, seed=1)
    for prompt, out in zip(prompts, outputs, strict=True):
        assert out.prompt_ids == prompt.hf_prompt_ids  # also checked by the server
        assert len(out.completion_ids) == len(out.logprobs) == len(out.texts) == 2
    gap = hf_gap(hf[0], prompts, outputs)
    assert gap.num_tokens >= 2 * len(prompts)
    assert gap.max_abs <= MAX_GAP, gap


def test_tgrpo_counts_per_prompt(demo, hf, sample):
    model, processor = hf
    row = next(r for r in demo.rows if r["data_type"] == "video")
    order = non_identity_permutation(len(row["frames"]), torch.Generator().manual_seed(0))
    ordered = build_prompt(row, demo.recipe.rl.prompt)
    shuffled = build_prompt(row, demo.recipe.rl.prompt, frames=[row["frames"][i] for i in order])
    prompts = build_rollout_prompts(processor, [ordered, ordered, shuffled, shuffled],
                                    vision="embeddings", model=model)
    outputs = sample(prompts, [4, 4, 1, 1], seed=3)
    assert [len(o.completion_ids) for o in outputs] == [4, 4, 1, 1]
    assert hf_gap(model, prompts, outputs).max_abs <= MAX_GAP


def test_several_clients_at_once(demo, hf, server):
    # trainer processes share the server: concurrent requests queue and all complete
    prompts = _mixed_prompts(demo, hf, "embeddings")
    banned = vision_token_ids(hf[0].config)

    def one(k):
        return server.client(timeout=120).generate(prompts, k, 8, suppress_token_ids=banned)

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(one, [1, 2, 3]))
    for k, outputs in zip([1, 2, 3], results, strict=True):
        assert [len(o.completion_ids) for o in outputs] == [k] * len(prompts)


def test_a_repeated_prompt_travels_once(demo, hf):
    # the G copies of one GRPO prompt share their frames / image: the body holds them once
    for prompt in _mixed_prompts(demo, hf, "pixels"):
        images = prompt.multi_modal_data.get("image", [])
        videos = [frames for frames, _ in prompt.multi_modal_data.get("video", [])]
        pixels = sum(3 * im.width * im.height for im in images) + sum(v.nbytes for v in videos)
        one = len(encode_generate_request([prompt], 1, 4))
        eight = len(encode_generate_request([prompt] * 8, 1, 4))
        assert one > pixels and eight - one < pixels, (pixels, one, eight)


def test_weight_sync_through_the_server(demo, hf, client, sample):
    model, processor = hf
    prompts = build_rollout_prompts(
        processor, conversations(demo, "video")[:1] + conversations(demo, "image")[:1]
    )  # pixels: the server's vision tower must survive a language-model-only update
    outputs = sample(prompts, 2, seed=4)
    updated = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in updated.named_parameters():
            if "visual" not in name:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
    weights = language_model_weights(updated)
    chunk = sum(t.numel() * t.element_size() for _, t in weights) // 4 + 1
    assert len(list(weight_chunks(weights, chunk))) >= 4
    version = client.health()["weights_version"]
    try:
        stale = hf_gap(updated, prompts, outputs)
        assert stale.max_abs > 1e-2, stale  # the update is visible to the check
        # a half-sent update is not applied: generates keep sampling the old weights
        first = next(weight_chunks(weights, chunk))
        assert not client.send_weight_chunk("unfinished", 0, first, final=False)["applied"]
        assert client.health()["pending_update"] == "unfinished"
        assert hf_gap(model, prompts, sample(prompts, 2, seed=4)).max_abs <= MAX_GAP
        # the full update (a new one replaces the unfinished one), in several chunks
        done = client.update_weights(weights, chunk_bytes=chunk)
        assert done.chunks >= 4 and done.tensors == len(weights)
        assert done.weights_version == version + 1 == client.health()["weights_version"]
        fresh_outputs = sample(prompts, 2, seed=4)
        assert client.last_weights_version == version + 1
        assert client.health()["pending_update"] is None
        fresh = hf_gap(updated, prompts, fresh_outputs)
        assert fresh.max_abs <= MAX_GAP, fresh
    finally:
        client.update_weights(language_model_weights(model))
    assert hf_gap(model, prompts, sample(prompts, 2, seed=4)).max_abs <= MAX_GAP


def test_pre_expanded_prompt_raises_on_the_client(demo, hf, client):
    model, processor = hf
    prompt = build_rollout_prompts(processor, conversations(demo, "video")[:1])[0]
    expanded = RolloutPrompt(processor.tokenizer.decode(prompt.hf_prompt_ids),
                             prompt.multi_modal_data, prompt.hf_prompt_ids, prompt.visual)
    with pytest.raises(PromptIdsMismatch, match="prompt 0: .*position"):
        client.generate([expanded], 1, 1)


def test_malformed_requests_are_refused(demo, hf, server, client):
    prompt = _mixed_prompts(demo, hf, "embeddings")[0]
    status, reply = _post_raw(server.url, b"not safetensors at all")
    assert status == 400 and "safetensors" in reply["error"]

    def body(edit):
        good = encode_generate_request([prompt, prompt], 1, 4)
        size = int.from_bytes(good[:8], "little")
        header = json.loads(good[8 : 8 + size])
        request = json.loads(header["__metadata__"]["request"])
        tensors = st_load(good)
        edit(request, tensors)
        return st_save(tensors, metadata={"request": json.dumps(request)})

    def no_text(request, tensors):
        del request["prompts"][1]["text"]

    status, reply = _post_raw(server.url, body(no_text))
    assert status == 400 and "prompt 1" in reply["error"] and "'text'" in reply["error"]

    def float_grid(request, tensors):
        tensors["p0.video.video_grid_thw"] = tensors["p0.video.video_grid_thw"].float()

    status, reply = _post_raw(server.url, body(float_grid))
    assert status == 400 and "prompt 0.video.embeddings.video_grid_thw" in reply["error"]
    assert "dtype" in reply["error"]

    def extra_tensor(request, tensors):
        tensors["stray"] = torch.zeros(2)

    status, reply = _post_raw(server.url, body(extra_tensor))
    assert status == 400 and "stray" in reply["error"]

    def unknown_dtype(request, tensors):
        pass

    raw = body(unknown_dtype)
    size = int.from_bytes(raw[:8], "little")
    header = raw[8 : 8 + size].replace(b'"dtype":"F32"', b'"dtype":"Q32"', 1)
    assert header != raw[8 : 8 + size]
    status, reply = _post_raw(server.url, raw[:8] + header + raw[8 + size :])
    assert status == 400 and "'Q32'" in reply["error"] and "dtype" in reply["error"]

    port = urlsplit(server.url).port
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(b"POST /generate HTTP/1.0\r\nContent-Length: 99999999999999\r\n\r\n")
        answer = conn.makefile("rb").read()
    assert answer.startswith(b"HTTP/1.0 413") and b"limit" in answer

    with pytest.raises(RolloutRequestError, match="sample counts"):
        client.generate([prompt], [1, 2], 4)
    assert client.health()["status"] == "ok"  # still serving


def test_bad_model_dir_fails_with_the_log_tail(tmp_path):
    with pytest.raises(RuntimeError, match="(?s)before it was ready.*no config.json"):
        start_rollout_server(tmp_path / "missing", python=sys.executable, timeout=60)


def test_a_token_guards_every_endpoint(demo, monkeypatch):
    """With VLMRL_ROLLOUT_TOKEN set, the server answers only clients that send it (a client
    reads it from the same variable); the secret never reaches the server's log."""
    monkeypatch.setenv(TOKEN_ENV, "test-secret-4f2a")
    with start_rollout_server(demo.model_dir, timeout=300,
                              engine_kwargs={"max_model_len": 2048}) as handle:
        assert handle.client().health()["vocab_size"] > 0
        for token in ("", "wrong"):
            with pytest.raises(RolloutServerError, match=f"wrong token .*{TOKEN_ENV}"):
                handle.client(token=token).health()
        assert "test-secret-4f2a" not in handle.log_path.read_text()


def test_a_public_address_needs_a_token(demo, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(RuntimeError, match=f"not loopback, so set {TOKEN_ENV}"):
        start_rollout_server(demo.model_dir, host="0.0.0.0", timeout=120)

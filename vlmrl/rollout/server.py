"""vLLM rollouts in their own process, served over HTTP on 127.0.0.1 (server mode).

Why: the colocated engine (`VllmRollout` inside the trainer) serves one training process
only, and vLLM needs its own environment (.venv-vllm). Here one `vlmrl rollout-serve`
process owns the engine and any number of trainer processes share it through
`RolloutClient`, which has the trainer's `VllmRollout` interface and imports without vLLM.

Wire format (no pickle anywhere). A POST body is a safetensors file; its metadata key
"request" holds JSON with everything that is not a tensor, and that JSON names the
tensors it uses (first named by position; a tensor object repeated across prompts, as
for the G copies of a GRPO prompt, travels once):

    p{i}.image.{j}            uint8 [H, W, 3]     pixel image j of prompt i (PIL RGB server-side)
    p{i}.video.{j}            uint8 [T, H, W, 3]  pixel video j (its metadata dict in the JSON)
    p{i}.image.image_embeds, p{i}.image.image_grid_thw
    p{i}.video.video_embeds, p{i}.video.video_grid_thw, p{i}.video.second_per_grid_ts
    <HF checkpoint name>      a weight, in an /update_weights chunk

Responses are JSON. Errors are {"error": message}: 400 malformed request, 404 unknown
path, 409 PromptIdsMismatch (with "type"), 411 / 413 missing / oversized body, 500 engine
failure. The server handles one request at a time (vLLM's LLM is not thread-safe), with
HTTP/1.0 (one request per connection), so a waiting trainer cannot hold the server.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from vlmrl.atomic import atomic_write_text
from vlmrl.rollout.agreement import PromptIdsMismatch
from vlmrl.rollout.inputs import RolloutPrompt
from vlmrl.rollout.vllm_engine import RolloutOutput

log = logging.getLogger(__name__)

DEFAULT_MAX_REQUEST_BYTES = 4 << 30  # one request; a weight update is several (chunk_bytes)
DEFAULT_CHUNK_BYTES = 256 << 20
# A shared secret, when set, both sides read from the environment (never a flag: flags show
# in process lists and logs). The server then answers only requests that carry it.
TOKEN_ENV = "VLMRL_ROLLOUT_TOKEN"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
REQUEST_KEY = "request"

# safetensors dtype names accepted in a request, and the ones each generate field takes
_DTYPES = {"U8", "I8", "I16", "I32", "I64", "F16", "BF16", "F32", "F64"}
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INTS = (torch.int32, torch.int64)
_EMBED_FIELDS = {
    "image": {"image_embeds": _FLOATS, "image_grid_thw": _INTS},
    "video": {"video_embeds": _FLOATS, "video_grid_thw": _INTS, "second_per_grid_ts": _FLOATS},
}
_REQUIRED_EMBED_FIELDS = {"image": ("image_embeds", "image_grid_thw"),
                          "video": ("video_embeds", "video_grid_thw")}
_WEIGHT_DTYPES = (*_FLOATS, *_INTS)
# sampling options forwarded to VllmRollout.generate when the request has them (its defaults
# apply otherwise): name -> JSON type check
_OPTIONS: dict[str, Callable[[Any], bool]] = {
    "temperature": lambda v: _is_number(v),
    "top_p": lambda v: _is_number(v),
    "top_k": lambda v: _is_int(v),
    "seed": lambda v: v is None or _is_int(v),
    "suppress_token_ids": lambda v: isinstance(v, list) and all(_is_int(t) for t in v),
    "check_ids": lambda v: isinstance(v, bool),
}


class BadRequest(ValueError):
    """A request the server refuses (HTTP 400 unless `status` says otherwise)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class RolloutServerError(RuntimeError):
    """The rollout server failed a request (or could not be reached); carries its message."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RolloutRequestError(RolloutServerError, ValueError):
    """The server refused a request as malformed (400 / 413): a ValueError, as the
    colocated engine raises for bad arguments."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _jsonable(value: Any) -> Any:
    """Video metadata as plain JSON (numpy scalars and arrays become numbers and lists)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray | torch.Tensor):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


# ---------------------------------------------------------------------------- encoding


class _TensorTable:
    """The tensors of one request body, contiguous, on the CPU, never sharing memory
    (safetensors refuses shared storage). With dedupe, a tensor object given again (the G
    copies of a GRPO prompt) keeps its first name and travels once."""

    def __init__(self, dedupe: bool = True) -> None:
        self.dedupe = dedupe
        self.tensors: dict[str, torch.Tensor] = {}
        self._names: dict[tuple[Any, ...], str] = {}
        self._storages: set[int] = set()

    def add(self, name: str, tensor: torch.Tensor | Callable[[], torch.Tensor],
            source: Any = None) -> str:
        """tensor: the tensor, or a function making it from `source` (a PIL image, an
        array: the identity that repeats across prompts), called only for a new source."""
        if source is not None:
            key: tuple[Any, ...] = ("object", id(source))
            if self.dedupe and key in self._names:
                return self._names[key]
            tensor = tensor() if callable(tensor) else tensor
        tensor = tensor.detach()
        if source is None:
            key = (tensor.device, tensor.data_ptr(), tuple(tensor.shape), tensor.stride(), tensor.dtype)
        if self.dedupe and tensor.numel() and key in self._names:
            return self._names[key]
        t = tensor.to("cpu")
        if not t.is_contiguous() or (t.numel() and t.untyped_storage().data_ptr() in self._storages):
            t = t.clone(memory_format=torch.contiguous_format)
        self._storages.add(t.untyped_storage().data_ptr())
        self._names[key] = name
        self.tensors[name] = t
        return name


def _pack(request: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> bytes:
    return st_save(dict(tensors), metadata={REQUEST_KEY: json.dumps(request)})


def _as_tensor(data: Any) -> torch.Tensor:
    if isinstance(data, torch.Tensor):
        return data
    array = np.asarray(data)
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def _image_array(image: Any) -> torch.Tensor:
    if hasattr(image, "convert"):  # PIL
        image = np.array(image.convert("RGB"))
    array = _as_tensor(image)
    if array.dtype != torch.uint8 or array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"an image must be PIL or uint8 [H, W, 3], got {array.dtype} "
                         f"{tuple(array.shape)}")
    return array


def _video_array(frames: Any) -> torch.Tensor:
    if isinstance(frames, list | tuple):  # a list of frames (PIL or arrays)
        frames = np.stack([np.asarray(f.convert("RGB") if hasattr(f, "convert") else f)
                           for f in frames])
    array = _as_tensor(frames)
    if array.dtype != torch.uint8 or array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"a video must be uint8 [T, H, W, 3], got {array.dtype} "
                         f"{tuple(array.shape)}")
    return array


def _encode_modality(prefix: str, modality: str, data: Any, table: _TensorTable) -> dict[str, Any]:
    """One modality of one prompt: embeddings (a dict of tensors) or pixel items (a list)."""
    if isinstance(data, dict):
        return {"embeddings": {field: table.add(f"{prefix}.{field}", torch.as_tensor(t))
                               for field, t in data.items()}}
    items = data if isinstance(data, list) else [data]
    if modality == "image":
        return {"pixels": [table.add(f"{prefix}.{j}", lambda im=im: _image_array(im), source=im)
                           for j, im in enumerate(items)]}
    videos = []
    for j, item in enumerate(items):
        frames, meta = item if isinstance(item, tuple) and len(item) == 2 else (item, None)
        name = table.add(f"{prefix}.{j}", lambda f=frames: _video_array(f), source=frames)
        videos.append({"frames": name, "metadata": _jsonable(meta)})
    return {"pixels": videos}


def encode_generate_request(prompts: Sequence[RolloutPrompt], n: int | Sequence[int],
                            max_tokens: int, **options: Any) -> bytes:
    """The /generate body for `VllmRollout.generate`'s arguments (the `visual` tensors stay
    with the trainer: the server needs the text, ids and vLLM's multi_modal_data)."""
    table = _TensorTable()
    entries = []
    for i, prompt in enumerate(prompts):
        entry: dict[str, Any] = {"text": prompt.text,
                                 "hf_prompt_ids": [int(t) for t in prompt.hf_prompt_ids]}
        for modality, data in (prompt.multi_modal_data or {}).items():
            if modality not in _EMBED_FIELDS:
                raise ValueError(f"prompt {i}: unsupported modality {modality!r}")
            entry[modality] = _encode_modality(f"p{i}.{modality}", modality, data, table)
        entries.append(entry)
    counts = n if _is_int(n) else [int(k) for k in n]
    request = {"prompts": entries, "n": counts, "max_tokens": max_tokens,
               **{k: _jsonable(v) for k, v in options.items()}}
    return _pack(request, table.tensors)


def weight_chunks(weights: Iterable[tuple[str, torch.Tensor]],
                  chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[dict[str, torch.Tensor]]:
    """Named weights grouped into chunks of at most chunk_bytes (a larger tensor goes alone)."""
    chunk: dict[str, torch.Tensor] = {}
    size = 0
    seen: set[str] = set()
    for name, tensor in weights:
        if name in seen:
            raise ValueError(f"weight {name!r} given twice")
        seen.add(name)
        nbytes = tensor.numel() * tensor.element_size()
        if chunk and size + nbytes > chunk_bytes:
            yield chunk
            chunk, size = {}, 0
        chunk[name] = tensor
        size += nbytes
    if chunk:
        yield chunk


# ---------------------------------------------------------------------------- decoding


def _unpack(body: bytes) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(request JSON, tensors) of a body; BadRequest for anything but a clean safetensors file."""
    if len(body) < 8:
        raise BadRequest("body is not a safetensors file (shorter than its 8-byte header size)")
    size = int.from_bytes(body[:8], "little")
    if size > len(body) - 8:
        raise BadRequest(f"body is not a safetensors file (header of {size} bytes, body of {len(body)})")
    try:
        header = json.loads(body[8 : 8 + size])
        request = json.loads(header.get("__metadata__", {})[REQUEST_KEY])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BadRequest(f"body needs safetensors metadata {REQUEST_KEY!r} holding a JSON "
                         f"object ({type(exc).__name__}: {exc})") from None
    if not isinstance(request, dict):
        raise BadRequest(f"metadata {REQUEST_KEY!r} must be a JSON object")
    for name, info in header.items():
        if name != "__metadata__" and (not isinstance(info, dict) or info.get("dtype") not in _DTYPES):
            dtype = info.get("dtype") if isinstance(info, dict) else info
            raise BadRequest(f"tensor {name!r}: dtype {dtype!r} not accepted ({sorted(_DTYPES)})")
    try:
        tensors = st_load(body)
    except Exception as exc:  # SafetensorError and friends: the body's fault
        raise BadRequest(f"body is not a valid safetensors file: {exc}") from None
    return request, tensors


def _get(obj: Mapping[str, Any], key: str, check: Callable[[Any], bool], where: str,
         expected: str) -> Any:
    if key not in obj:
        raise BadRequest(f"{where}: missing field {key!r}")
    value = obj[key]
    if not check(value):
        raise BadRequest(f"{where}: field {key!r} must be {expected}, got {type(value).__name__}")
    return value


class _Tensors:
    """The body's tensors as the request JSON references them; reports unused ones."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors
        self.used: set[str] = set()

    def take(self, name: Any, where: str, dtypes: Sequence[torch.dtype]) -> torch.Tensor:
        if not isinstance(name, str) or name not in self.tensors:
            raise BadRequest(f"{where}: names tensor {name!r}, which the body does not hold")
        t = self.tensors[name]
        if t.dtype not in dtypes:
            raise BadRequest(f"{where}: tensor {name!r} has dtype {t.dtype}, expected one of "
                             f"{[str(d) for d in dtypes]}")
        self.used.add(name)
        return t

    def check_all_used(self) -> None:
        unused = sorted(set(self.tensors) - self.used)
        if unused:
            raise BadRequest(f"tensors not referenced by the request: {unused[:5]}")


def _decode_pixels(modality: str, items: Any, where: str, tensors: _Tensors) -> list[Any]:
    from PIL import Image

    if not isinstance(items, list) or not items:
        raise BadRequest(f"{where}: 'pixels' must be a non-empty list")
    out: list[Any] = []
    for j, item in enumerate(items):
        at = f"{where}[{j}]"
        if modality == "image":
            t = tensors.take(item, at, (torch.uint8,))
            if t.ndim != 3 or t.shape[-1] != 3:
                raise BadRequest(f"{at}: an image must be uint8 [H, W, 3], got {tuple(t.shape)}")
            out.append(Image.fromarray(t.numpy()))  # uint8 [H, W, 3]: RGB
            continue
        if not isinstance(item, dict):
            raise BadRequest(f"{at}: a video must be {{'frames': name, 'metadata': {{...}}}}")
        t = tensors.take(item.get("frames"), f"{at}.frames", (torch.uint8,))
        if t.ndim != 4 or t.shape[-1] != 3:
            raise BadRequest(f"{at}.frames: a video must be uint8 [T, H, W, 3], got {tuple(t.shape)}")
        meta = item.get("metadata")
        if meta is not None and not isinstance(meta, dict):
            raise BadRequest(f"{at}.metadata must be an object or null")
        out.append(t.numpy() if meta is None else (t.numpy(), meta))
    return out


def _decode_embeddings(modality: str, fields: Any, where: str, tensors: _Tensors) -> dict[str, Any]:
    if not isinstance(fields, dict):
        raise BadRequest(f"{where}: 'embeddings' must map field names to tensor names")
    allowed = _EMBED_FIELDS[modality]
    for field in _REQUIRED_EMBED_FIELDS[modality]:
        if field not in fields:
            raise BadRequest(f"{where}: missing field {field!r}")
    out = {}
    for field, name in fields.items():
        if field not in allowed:
            raise BadRequest(f"{where}: unknown field {field!r} (known: {sorted(allowed)})")
        out[field] = tensors.take(name, f"{where}.{field}", allowed[field])
    return out


def _decode_prompt(i: int, entry: Any, tensors: _Tensors) -> RolloutPrompt:
    where = f"prompt {i}"
    if not isinstance(entry, dict):
        raise BadRequest(f"{where}: must be an object")
    text = _get(entry, "text", lambda v: isinstance(v, str), where, "a string")
    ids = _get(entry, "hf_prompt_ids", lambda v: isinstance(v, list) and all(_is_int(t) for t in v),
               where, "a list of ints")
    unknown = set(entry) - {"text", "hf_prompt_ids", *_EMBED_FIELDS}
    if unknown:
        raise BadRequest(f"{where}: unknown field(s) {sorted(unknown)}")
    data: dict[str, Any] = {}
    for modality in _EMBED_FIELDS:
        if modality not in entry:
            continue
        spec, at = entry[modality], f"{where}.{modality}"
        if isinstance(spec, dict) and set(spec) == {"pixels"}:
            data[modality] = _decode_pixels(modality, spec["pixels"], f"{at}.pixels", tensors)
        elif isinstance(spec, dict) and set(spec) == {"embeddings"}:
            data[modality] = _decode_embeddings(modality, spec["embeddings"], f"{at}.embeddings", tensors)
        else:
            raise BadRequest(f"{at}: must be {{'pixels': [...]}} or {{'embeddings': {{...}}}}")
    return RolloutPrompt(text, data, list(ids))


def decode_generate_request(body: bytes) -> tuple[list[RolloutPrompt], dict[str, Any]]:
    """(prompts, keyword arguments of VllmRollout.generate) of a /generate body."""
    request, raw = _unpack(body)
    tensors = _Tensors(raw)
    entries = _get(request, "prompts", lambda v: isinstance(v, list), "request", "a list")
    prompts = [_decode_prompt(i, e, tensors) for i, e in enumerate(entries)]
    tensors.check_all_used()
    n = _get(request, "n", lambda v: (_is_int(v) and v >= 1) or (
        isinstance(v, list) and all(_is_int(k) and k >= 1 for k in v)), "request",
        "a positive int or a list of them")
    if isinstance(n, list) and len(n) != len(prompts):
        raise BadRequest(f"request: {len(n)} sample counts in 'n' for {len(prompts)} prompts")
    kwargs: dict[str, Any] = {"n": n, "max_tokens": _get(
        request, "max_tokens", lambda v: _is_int(v) and v >= 1, "request", "a positive int")}
    for key, check in _OPTIONS.items():
        if key in request:
            kwargs[key] = _get(request, key, check, "request", f"a valid {key}")
    unknown = set(request) - {"prompts", "n", "max_tokens", *_OPTIONS}
    if unknown:
        raise BadRequest(f"request: unknown field(s) {sorted(unknown)}")
    return prompts, kwargs


def _output_json(out: RolloutOutput) -> dict[str, Any]:
    return {"prompt_ids": out.prompt_ids, "completion_ids": out.completion_ids,
            "logprobs": out.logprobs, "texts": out.texts}


# ---------------------------------------------------------------------------- server


class _HTTPServer(HTTPServer):
    request_queue_size = 64  # trainers queue while one request runs
    allow_reuse_address = True


class RolloutServer:
    """One `VllmRollout` behind HTTP: /health, /generate, /update_weights, /shutdown.

    Single-threaded on purpose (vLLM's LLM is not thread-safe): requests run one after
    another. A weight update may come in several chunks; they are buffered and applied
    together with the final one, so no generate ever samples from half an update.
    """

    def __init__(self, engine: Any, *, host: str = "127.0.0.1", port: int = 0,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
                 info: Mapping[str, Any] | None = None, token: str | None = None) -> None:
        if host not in LOOPBACK and not token:
            raise ValueError(f"binding {host} exposes an endpoint that takes weights: set {TOKEN_ENV} "
                             "(a shared secret every client sends), or bind 127.0.0.1")
        self.token = token or None
        self.engine = engine
        self.max_request_bytes = int(max_request_bytes)
        self.info = dict(info or {})
        self.weights_version = 0
        self._pending: dict[str, Any] | None = None  # the update being received
        self._stopping = False
        self.httpd = _HTTPServer((host, port), _handler_class(self))
        self.httpd.timeout = 0.5  # how often serve() looks at the stop flag

    @property
    def host(self) -> str:
        return str(self.httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def serve(self) -> None:
        """Handle requests until /shutdown (or an exception, e.g. SystemExit on SIGTERM)."""
        while not self._stopping:
            self.httpd.handle_request()

    def close(self) -> None:
        self.httpd.server_close()

    def __enter__(self) -> RolloutServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # endpoints: each takes the body (None for GET) and returns the JSON payload

    def health(self, body: bytes | None = None) -> dict[str, Any]:
        import vllm

        config = self.engine.llm.llm_engine.model_config
        return {"status": "ok", "model_dir": str(self.engine.model_dir),
                "vocab_size": int(self.engine.vocab_size), "vllm_version": vllm.__version__,
                "logprobs_mode": str(getattr(config, "logprobs_mode", "")),
                "weights_version": self.weights_version,
                "max_request_bytes": self.max_request_bytes,
                "pending_update": None if self._pending is None else self._pending["update"],
                **self.info}

    def generate(self, body: bytes | None) -> dict[str, Any]:
        prompts, kwargs = decode_generate_request(body or b"")
        outputs = self.engine.generate(prompts, **kwargs)
        return {"outputs": [_output_json(o) for o in outputs],
                "weights_version": self.weights_version}

    def update_weights(self, body: bytes | None) -> dict[str, Any]:
        request, tensors = _unpack(body or b"")
        update = _get(request, "update", lambda v: isinstance(v, str) and v, "request",
                      "a non-empty string")
        index = _get(request, "chunk", lambda v: _is_int(v) and v >= 0, "request", "an int >= 0")
        final = _get(request, "final", lambda v: isinstance(v, bool), "request", "a bool")
        for name, t in tensors.items():
            if t.dtype not in _WEIGHT_DTYPES:
                raise BadRequest(f"weight {name!r}: dtype {t.dtype} not accepted")
        if index == 0:  # a new update replaces one a client left unfinished
            if self._pending is not None:
                log.warning("dropping unfinished weight update %s", self._pending["update"])
            self._pending = {"update": update, "next": 0, "weights": {}}
        pending = self._pending
        if pending is None or pending["update"] != update or pending["next"] != index:
            expected = None if pending is None else (pending["update"], pending["next"])
            raise BadRequest(f"request: chunk {index} of update {update!r} out of order "
                             f"(expected (update, chunk) = {expected})")
        repeated = sorted(set(tensors) & set(pending["weights"]))
        if repeated:
            raise BadRequest(f"weights sent twice in update {update!r}: {repeated[:5]}")
        pending["weights"].update(tensors)
        pending["next"] += 1
        if not final:
            return {"update": update, "chunk": index, "buffered": len(pending["weights"]),
                    "applied": False, "weights_version": self.weights_version}
        self._pending = None
        start = time.perf_counter()
        self.engine.update_weights(pending["weights"].items())
        self.weights_version += 1
        return {"update": update, "chunk": index, "buffered": len(pending["weights"]),
                "applied": True, "weights_version": self.weights_version,
                "apply_s": time.perf_counter() - start}

    def shutdown(self, body: bytes | None = None) -> dict[str, Any]:
        self._stopping = True
        return {"status": "stopping"}


def _handler_class(server: RolloutServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.0: one request per connection, so no client keeps the single thread busy
        protocol_version = "HTTP/1.0"
        timeout = 300  # a stalled client cannot hold the server forever

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self._dispatch({"/health": server.health}, read_body=False)

        def do_POST(self) -> None:  # noqa: N802
            self._dispatch({"/generate": server.generate, "/update_weights": server.update_weights,
                            "/shutdown": server.shutdown, "/health": server.health}, read_body=True)

        def _dispatch(self, routes: Mapping[str, Callable[[bytes | None], dict[str, Any]]],
                      read_body: bool) -> None:
            route = routes.get(urlsplit(self.path).path)
            try:
                if server.token is not None and not hmac.compare_digest(
                        self.headers.get("Authorization", ""), f"Bearer {server.token}"):
                    raise BadRequest(f"missing or wrong token (the server requires {TOKEN_ENV})", 401)
                if route is None:
                    raise BadRequest(f"no endpoint {self.command} {self.path}", 404)
                payload = route(self._body() if read_body else None)
                status = 200
            except PromptIdsMismatch as exc:
                status, payload = 409, {"error": str(exc), "type": "PromptIdsMismatch"}
            except BadRequest as exc:
                status, payload = exc.status, {"error": str(exc)}
            except ValueError as exc:  # the engine refused the arguments (vLLM's checks)
                status, payload = 400, {"error": f"{type(exc).__name__}: {exc}"}
            except Exception as exc:
                traceback.print_exc()
                status, payload = 500, {"error": f"{type(exc).__name__}: {exc}"}
            self._send(status, payload)

        def _body(self) -> bytes:
            length = self.headers.get("Content-Length")
            if length is None:
                raise BadRequest("a POST needs a Content-Length", 411)
            if not length.isdigit():
                raise BadRequest(f"bad Content-Length {length!r}")
            if int(length) > server.max_request_bytes:
                raise BadRequest(f"body of {int(length)} bytes > the server's limit of "
                                 f"{server.max_request_bytes} (send weights in chunks)", 413)
            body = self.rfile.read(int(length))
            if len(body) != int(length):
                raise BadRequest(f"body truncated: {len(body)} of {length} bytes")
            return body

        def _send(self, status: int, payload: Mapping[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.info("%s %s", self.address_string(), format % args)

    return Handler


def _write_ready(path: str | os.PathLike[str], server: RolloutServer) -> None:
    """Atomically: a reader sees the whole file or none."""
    atomic_write_text(path, json.dumps({"host": server.host, "port": server.port,
                                        "url": server.url, "pid": os.getpid()}))


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def serve(model_dir: str | os.PathLike[str], *, host: str = "127.0.0.1", port: int = 0,
          ready_file: str | os.PathLike[str] | None = None,
          max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, **engine_kwargs: Any) -> None:
    """Build a VllmRollout (engine_kwargs as its keywords) and serve it until /shutdown or
    SIGTERM; `ready_file` gets {"host", "port", "url", "pid"} once the socket listens."""
    if not (Path(model_dir) / "config.json").is_file():  # before vLLM, and never the hub
        raise FileNotFoundError(f"{model_dir}: no config.json (a local checkpoint directory)")
    from vlmrl.rollout.vllm_engine import VllmRollout

    token = os.environ.get(TOKEN_ENV) or None
    if host not in LOOPBACK and not token:  # before the engine loads
        raise ValueError(f"--host {host}: not loopback, so set {TOKEN_ENV} (clients send it)")
    engine = VllmRollout(model_dir, **engine_kwargs)
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        with RolloutServer(engine, host=host, port=port, max_request_bytes=max_request_bytes,
                           token=token,
                           info={"mrope": engine.mrope}) as server:
            if ready_file is not None:
                _write_ready(ready_file, server)
            print(f"vlmrl rollout server on {server.url} ({model_dir})", file=sys.stderr, flush=True)
            server.serve()
    finally:
        signal.signal(signal.SIGTERM, previous)
        engine.close()


# ---------------------------------------------------------------------------- client


@dataclass(frozen=True)
class WeightUpdate:
    """What one `RolloutClient.update_weights` did."""

    weights_version: int
    chunks: int
    tensors: int
    bytes: int
    seconds: float


class RolloutClient:
    """`VllmRollout`'s trainer-facing interface over HTTP (imports without vLLM).

    PromptIdsMismatch raised by the server comes back as PromptIdsMismatch; malformed
    requests as RolloutRequestError (a ValueError); anything else as RolloutServerError.
    """

    def __init__(self, base_url: str, *, timeout: float = 600.0,
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES, token: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token if token is not None else os.environ.get(TOKEN_ENV)
        self.timeout = timeout
        self.chunk_bytes = int(chunk_bytes)
        # no proxies: the server is local, and a proxy from the environment must not see it
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._info: dict[str, Any] | None = None
        # the server's weights_version when it answered the last generate (a trainer can
        # check that every process sampled from the step's weights)
        self.last_weights_version: int | None = None

    def _call(self, method: str, path: str, body: bytes | None = None) -> dict[str, Any]:
        request = urllib.request.Request(self.base_url + path, data=body, method=method)
        if self._token:
            request.add_header("Authorization", f"Bearer {self._token}")
        if body is not None:
            request.add_header("Content-Type", "application/octet-stream")
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise _server_error(exc) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RolloutServerError(f"rollout server {self.base_url} unreachable: {reason}") from None

    def _post(self, path: str, body: bytes) -> dict[str, Any]:
        limit = self.info()["max_request_bytes"]
        if len(body) > limit:
            raise RolloutRequestError(f"request of {len(body)} bytes > the server's limit of {limit}")
        return self._call("POST", path, body)

    def health(self) -> dict[str, Any]:
        """The server's state now (weights_version, pending update, ...)."""
        self._info = self._call("GET", "/health")
        return self._info

    def info(self) -> dict[str, Any]:
        """The server's health as first seen (model, vocab size, limits: fixed per server)."""
        return self._info if self._info is not None else self.health()

    @property
    def vocab_size(self) -> int:
        return int(self.info()["vocab_size"])

    @property
    def model_dir(self) -> Path:
        return Path(self.info()["model_dir"])

    def generate(
        self,
        prompts: Sequence[RolloutPrompt],
        n: int | Sequence[int],
        max_tokens: int,
        *,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        suppress_token_ids: Sequence[int] = (),
        check_ids: bool = True,
    ) -> list[RolloutOutput]:
        """`VllmRollout.generate` on the server (see there)."""
        body = encode_generate_request(
            prompts, n, max_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
            seed=seed, suppress_token_ids=[int(t) for t in suppress_token_ids], check_ids=check_ids)
        reply = self._post("/generate", body)
        outputs, self.last_weights_version = reply["outputs"], int(reply["weights_version"])
        if len(outputs) != len(prompts):
            raise RolloutServerError(f"{len(outputs)} outputs for {len(prompts)} prompts")
        return [RolloutOutput(**o) for o in outputs]

    def send_weight_chunk(self, update: str, index: int, weights: Mapping[str, torch.Tensor], *,
                          final: bool) -> dict[str, Any]:
        """One chunk of weight update `update` (chunks 0, 1, ...); the server applies the
        update when the final chunk arrives."""
        table = _TensorTable(dedupe=False)  # tied weights: each name gets its tensor
        for name, t in weights.items():
            table.add(name, t)
        body = _pack({"update": update, "chunk": index, "final": final}, table.tensors)
        return self._post("/update_weights", body)

    def update_weights(self, weights: Iterable[tuple[str, torch.Tensor]],
                       chunk_bytes: int | None = None) -> WeightUpdate:
        """`VllmRollout.update_weights` on the server, in chunks of about chunk_bytes (one
        tensor per chunk when larger); generates see the old weights until the last chunk."""
        update, start = uuid.uuid4().hex, time.perf_counter()
        chunks = weight_chunks(weights, chunk_bytes or self.chunk_bytes)
        current = next(chunks, {})
        index = tensors = nbytes = 0
        while True:
            following = next(chunks, None)
            reply = self.send_weight_chunk(update, index, current, final=following is None)
            tensors += len(current)
            nbytes += sum(t.numel() * t.element_size() for t in current.values())
            if following is None:
                return WeightUpdate(int(reply["weights_version"]), index + 1, tensors, nbytes,
                                    time.perf_counter() - start)
            current, index = following, index + 1

    def shutdown(self) -> None:
        """Stop the server (all its clients)."""
        self._call("POST", "/shutdown", b"")

    def close(self) -> None:
        """Nothing to release: the server outlives its clients (see shutdown)."""


def _server_error(exc: urllib.error.HTTPError) -> Exception:
    raw = exc.read()
    try:
        message = json.loads(raw)["error"]
    except (ValueError, KeyError, TypeError):
        message = raw.decode(errors="replace")[:2000] or str(exc)
    if exc.code == 409:
        return PromptIdsMismatch(message)
    if exc.code in (400, 413):
        return RolloutRequestError(message, exc.code)
    return RolloutServerError(f"rollout server error {exc.code}: {message}", exc.code)


# ---------------------------------------------------------------------------- process


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class RolloutServerProcess:
    """A `vlmrl rollout-serve` subprocess: .url, .client(), .stop() (also as a context
    manager, so an exception in the with block still ends the server)."""

    def __init__(self, process: subprocess.Popen[bytes], log_path: Path, ready_file: Path,
                 workdir: Path | None = None) -> None:
        self.workdir = workdir  # ours to remove when the server stops
        self.process = process
        self.log_path = log_path
        self.ready_file = ready_file
        self.url = ""

    def wait_ready(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while not self.ready_file.is_file():
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"rollout server exited with code {self.process.returncode} before it was "
                    f"ready; the end of {self.log_path}:\n{_tail(self.log_path)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"rollout server not ready after {timeout:.0f} s; the end of "
                                   f"{self.log_path}:\n{_tail(self.log_path)}")
            time.sleep(0.1)
        self.url = json.loads(self.ready_file.read_text())["url"]
        return self.url

    def client(self, **kwargs: Any) -> RolloutClient:
        return RolloutClient(self.url, **kwargs)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (the server closes its engine), then SIGKILL after timeout s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.workdir is not None:  # the ready file, and the log unless log_path was given
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        return self.process.returncode

    def __enter__(self) -> RolloutServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_rollout_server(
    model_dir: str | os.PathLike[str],
    *,
    python: str = sys.executable,
    host: str = "127.0.0.1",
    port: int = 0,
    engine_kwargs: Mapping[str, Any] | None = None,
    timeout: float = 600.0,
    log_path: str | os.PathLike[str] | None = None,
    max_request_bytes: int | None = None,
) -> RolloutServerProcess:
    """Start `python -m vlmrl.cli rollout-serve` (python: an interpreter with vLLM, e.g.
    .venv-vllm/bin/python) and wait until it listens; port 0 picks a free port. Its output
    goes to log_path (default: a new temporary directory); a server that dies or times out
    before it is ready raises with the log's last lines."""
    workdir = Path(tempfile.mkdtemp(prefix="vlmrl-rollout-"))
    log_file = Path(log_path) if log_path is not None else workdir / "server.log"
    ready = workdir / "ready.json"
    cmd = [python, "-m", "vlmrl.cli", "rollout-serve", "--model", str(model_dir), "--host", host,
           "--port", str(port), "--ready-file", str(ready),
           "--engine-kwargs", json.dumps(dict(engine_kwargs or {}))]
    if max_request_bytes is not None:
        cmd += ["--max-request-bytes", str(int(max_request_bytes))]
    with open(log_file, "wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    handle = RolloutServerProcess(process, log_file, ready, workdir)
    try:
        handle.wait_ready(timeout)
    except BaseException:
        handle.stop()
        raise
    return handle


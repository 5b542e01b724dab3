"""`vlmrl rollout-serve`: a vLLM rollout server for trainers (vlmrl.rollout.server).

vLLM is imported only when the command runs, so `vlmrl` works without it.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def engine_kwargs_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """--engine-kwargs JSON plus the explicit flags (a key given both ways is refused)."""
    try:
        kwargs = json.loads(args.engine_kwargs)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--engine-kwargs is not JSON: {exc}") from None
    if not isinstance(kwargs, dict):
        raise ValueError("--engine-kwargs must be a JSON object (VllmRollout's keywords)")
    for key in ("mrope", "max_model_len", "seed"):
        value = getattr(args, key)
        if value is None:
            continue
        if key in kwargs:
            raise ValueError(f"{key} given both as --{key.replace('_', '-')} and in --engine-kwargs")
        kwargs[key] = value
    return kwargs


def cmd_rollout_serve(args: argparse.Namespace) -> int:
    from vlmrl.rollout.server import serve

    limit = {} if args.max_request_bytes is None else {"max_request_bytes": args.max_request_bytes}
    serve(args.model, host=args.host, port=args.port, ready_file=args.ready_file, **limit,
          **engine_kwargs_from_args(args))
    return 0


def add_rollout_commands(sub: Any) -> None:
    p = sub.add_parser("rollout-serve", help="serve vLLM rollouts to trainers over HTTP "
                                             "(needs the vLLM environment, make vllm)")
    p.add_argument("--model", required=True, help="local checkpoint directory")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1); any other needs the shared secret "
                        "VLMRL_ROLLOUT_TOKEN in the environment, which clients then send")
    p.add_argument("--port", type=int, default=8000, help="0: a free port (see --ready-file)")
    p.add_argument("--ready-file", default=None,
                   help='written once listening: {"host", "port", "url", "pid"}')
    p.add_argument("--engine-kwargs", default="{}",
                   help="JSON object of VllmRollout keywords (dtype, kv_cache_gib, vLLM's own)")
    p.add_argument("--mrope", choices=("transformers", "vllm"), default=None,
                   help="M-RoPE positions rule (default: VllmRollout's, transformers)")
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--max-request-bytes", type=int, default=None,
                   help="largest request body (default 4 GiB; weight updates come in chunks)")
    p.set_defaults(func=cmd_rollout_serve)

"""Rollout engines for GRPO-family training (issue 17): vLLM generation for video and
image prompts, fed the trainer's frames or its vision embeddings, with agreement checks.

Importable without vLLM; `VllmRollout` imports it when built (`make vllm`, docs/vllm.md).
"""

from vlmrl.rollout.agreement import (
    LogprobGap,
    PromptIdsMismatch,
    check_prompt_ids,
    filter_top_k_top_p,
    hf_completion_logprobs,
    logprob_gap,
    vision_token_ids,
)
from vlmrl.rollout.inputs import (
    RolloutPrompt,
    VisionInput,
    build_rollout_prompts,
    group_repeats,
    rollout_prompts,
)
from vlmrl.rollout.server import RolloutClient, RolloutServerError, start_rollout_server
from vlmrl.rollout.vllm_engine import RolloutOutput, VllmRollout, language_model_weights

__all__ = [
    "LogprobGap",
    "PromptIdsMismatch",
    "RolloutClient",
    "RolloutOutput",
    "RolloutServerError",
    "RolloutPrompt",
    "VisionInput",
    "VllmRollout",
    "build_rollout_prompts",
    "check_prompt_ids",
    "filter_top_k_top_p",
    "group_repeats",
    "hf_completion_logprobs",
    "language_model_weights",
    "logprob_gap",
    "rollout_prompts",
    "start_rollout_server",
    "vision_token_ids",
]

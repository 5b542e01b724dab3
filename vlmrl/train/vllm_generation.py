"""The RL trainer's rollouts through vLLM (``rl.rollout.engine: vllm``, docs/vllm.md).

`VideoGRPOTrainer` hands over the batch it encodes for the loss (ordered and T-GRPO's
shuffled-frame prompts, one processor call); vLLM gets it with unexpanded placeholders
and, with the vision tower frozen, the trainer's own vision embeddings (served by the
vision-embedding cache), so the encoder never disagrees. Every rollout checks that vLLM's
expanded prompt ids equal the processor's; the agreement gate recomputes a few samples'
log-probs with the policy at the first rollout and every ``check_every`` steps, and stops
the run when they disagree (unless the recipe accepts importance-sampling correction).
New weights go to the engine once per optimizer step: all of them the first time, then
the language model only while the tower is frozen.

The engine is a `VllmRollout` in this process (mode "colocate") or a `RolloutClient` of a
`vlmrl rollout-serve` process (mode "server"); both have the same interface.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlmrl.models.multimodal import ChatMedia, EncodedChats
from vlmrl.rollout import (
    LogprobGap,
    RolloutPrompt,
    group_repeats,
    hf_completion_logprobs,
    language_model_weights,
    logprob_gap,
    rollout_prompts,
)
from vlmrl.train.rl_config import RolloutConfig


class RolloutDisagreement(RuntimeError):
    """vLLM's sampled log-probs and the policy's differ beyond rl.rollout.max_logprob_gap."""


def _tower_frozen(model: Any) -> bool:
    tower = getattr(getattr(model, "model", model), "visual", None)
    return tower is not None and not any(p.requires_grad for p in tower.parameters())


def _engine(model: Any, cfg: RolloutConfig, seed: int, max_model_len: int) -> Any:
    if cfg.mode == "server":
        from vlmrl.rollout.server import RolloutClient

        client = RolloutClient(cfg.server_url, timeout=cfg.server_timeout)
        info = client.health()
        vocab = model.get_output_embeddings().weight.shape[0]
        if info["vocab_size"] != vocab:
            raise ValueError(f"the rollout server at {cfg.server_url} serves a model with "
                             f"{info['vocab_size']} tokens, the policy has {vocab}")
        if info["logprobs_mode"] != "processed_logprobs":  # what the trainer's old log-probs are
            raise ValueError(f"the rollout server at {cfg.server_url} returns {info['logprobs_mode']} "
                             "log-probs; the trainer needs processed_logprobs (vlmrl rollout-serve)")
        return client
    source = Path(str(getattr(model.config, "_name_or_path", "") or ""))
    if not (source / "config.json").is_file():
        raise ValueError("rl.rollout.engine = vllm needs the policy loaded from a local checkpoint "
                         f"directory (got {str(source)!r})")
    from vlmrl.rollout import VllmRollout

    return VllmRollout(source, seed=seed, **{"max_model_len": max_model_len, **cfg.vllm_kwargs})


class VllmGeneration:
    """One vLLM engine serving a trainer's rollouts (see the module doc).

    model: the unwrapped policy. Colocated, vLLM starts from the policy's checkpoint
    directory; in server mode from the server's. Either way the first sync sends every
    weight, so the engine then holds the policy's.
    """

    def __init__(self, model: Any, cfg: RolloutConfig, seed: int, max_model_len: int) -> None:
        self.cfg = cfg
        frozen = _tower_frozen(model)
        self.vision = cfg.vision if cfg.vision != "auto" else ("embeddings" if frozen else "pixels")
        if self.vision == "embeddings" and not frozen:
            raise ValueError("rl.rollout.vision = embeddings needs a frozen vision tower "
                             "(model.freeze_vision): a trainable tower's embeddings change every step")
        self.engine = _engine(model, cfg, seed, max_model_len)
        self.synced_step: int | None = None
        self._synced_frozen: bool | None = None  # the tower's state at the last sync sent
        self.weights_version: int | None = None  # a server's, once this run's weights are in
        self.checked_step: int | None = None
        self.last_gap: LogprobGap | None = None

    def _mrope(self) -> str:
        info = self.engine.health() if hasattr(self.engine, "health") else {}
        return str(info.get("mrope", getattr(self.engine, "mrope", "?")))

    def needs_sync(self, step: int) -> bool:
        return step != self.synced_step

    def sync(self, model: Any, step: int, *, send: bool = True) -> None:
        """Mark this step's weights as the engine's; `send` them (the process that owns
        the engine's weights does; other training processes of a server only wait).

        The language model alone only while the tower stays frozen since the last sync
        sent: the first sync, any after the tower trained, and any to a server whose
        weights changed since (restarted, or shared with another run) send every weight.
        """
        if send:
            frozen = _tower_frozen(model)
            if self.weights_version is not None and self.engine.health()["weights_version"] != (
                    self.weights_version):
                self._synced_frozen = None  # the server restarted or served another run: resend all
            if frozen and self._synced_frozen:
                weights = language_model_weights(model)
            else:
                weights = [(n, t.detach()) for n, t in model.state_dict().items()]
            self.engine.update_weights(weights)
            self._synced_frozen = frozen
        self.synced_step = step

    def synced(self) -> None:
        """After every process's sync: a server's weights version is this run's from now
        on (each rollout checks it: a restarted or shared server would serve others)."""
        if self.cfg.mode == "server":
            self.weights_version = int(self.engine.health()["weights_version"])

    def prompts(self, model: Any, texts: Sequence[str], media: Sequence[ChatMedia],
                encoded: EncodedChats) -> list[RolloutPrompt]:
        """vLLM's inputs for the trainer's encoded batch (no second processor call); a
        prompt's G repeated rows share one object (see `generate`)."""
        return rollout_prompts(texts, media, encoded, vision=self.vision, share_repeats=True,
                               model=model if self.vision == "embeddings" else None)

    def generate(self, model: Any, prompts: Sequence[RolloutPrompt], step: int, *,
                 max_tokens: int, temperature: float, top_p: float, top_k: int,
                 suppress_token_ids: Sequence[int],
                 pad_token_id: int | None) -> tuple[list[list[int]], list[list[float]]]:
        """One completion per prompt, with the sampled tokens' log-probs; the agreement
        gate runs when it is due. The rows repeat each prompt G times: a run of one prompt
        object is one request with n = G (samples independent all the same)."""
        unique, counts = group_repeats(prompts)
        outputs = self.engine.generate(unique, counts, max_tokens, temperature=temperature,
                                       top_p=top_p, top_k=top_k, suppress_token_ids=suppress_token_ids)
        got = [len(o.completion_ids) for o in outputs]
        if got != counts:  # rows would receive other prompts' completions
            raise RuntimeError(f"vLLM returned {got} samples per prompt, asked for {counts}")
        version = getattr(self.engine, "last_weights_version", None)
        if self.weights_version is not None and version != self.weights_version:
            raise RolloutDisagreement(
                f"step {step}: the rollout server at {self.cfg.server_url} holds weights version "
                f"{version}, this run synced version {self.weights_version}: it restarted or "
                "another trainer sent it weights")
        ids = [c for o in outputs for c in o.completion_ids]
        logprobs = [lp for o in outputs for lp in o.logprobs]
        if self.checked_step is None or step - self.checked_step >= self.cfg.check_every:
            self.check(model, prompts, ids, logprobs, step, temperature=temperature, top_p=top_p,
                       top_k=top_k, suppress_token_ids=suppress_token_ids, pad_token_id=pad_token_id)
        return ids, logprobs

    def check(self, model: Any, prompts: Sequence[RolloutPrompt], ids: Sequence[list[int]],
              logprobs: Sequence[list[float]], step: int, *, temperature: float, top_p: float,
              top_k: int, suppress_token_ids: Sequence[int], pad_token_id: int | None) -> LogprobGap:
        """The agreement gate: the policy's log-probs of a few vLLM samples vs vLLM's, under
        the same sampling filters (temperature, banned tokens, top-k / top-p). The samples
        come one per distinct prompt first (grouped rows would otherwise all be one prompt's)."""
        nonempty = [i for i, c in enumerate(ids) if c]
        if not nonempty:
            raise RolloutDisagreement("the agreement gate found no non-empty vLLM completion to check")
        firsts = [i for i in nonempty if i == 0 or prompts[i] is not prompts[i - 1]]
        picked = (firsts + [i for i in nonempty if i not in set(firsts)])[: self.cfg.check_samples]
        ours = [hf_completion_logprobs(model, prompts[i], [ids[i]], temperature=temperature,
                                       suppress_token_ids=suppress_token_ids, top_p=top_p,
                                       top_k=top_k, pad_token_id=pad_token_id or 0)[0]
                for i in picked]
        gap = logprob_gap(ours, [logprobs[i] for i in picked])
        self.last_gap, self.checked_step = gap, step
        if gap.max_abs > self.cfg.max_logprob_gap and not self.cfg.accepts_importance_sampling:
            raise RolloutDisagreement(
                f"step {step}: vLLM's sampled log-probs differ from the policy's by up to "
                f"{gap.max_abs:.3g} per token (mean {gap.mean_abs:.3g}, {gap.num_tokens} tokens) > "
                f"rl.rollout.max_logprob_gap = {self.cfg.max_logprob_gap}. Prompt ids agree (checked on "
                f"every rollout), so the difference is in the vision inputs (rl.rollout.vision = "
                f"{self.vision}), the positions ({self._mrope()} M-RoPE rule), or the weights (last synced at step "
                f"{self.synced_step}). To train through it, accept a bounded correction: "
                "rl.rollout.importance_sampling (docs/vllm.md)")
        return gap

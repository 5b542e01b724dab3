"""A vision-embedding cache for a frozen vision tower.

With the vision tower frozen (``freeze_vision``, the usual setting for video RL), its
output for a video depends only on the pixels and the frozen weights. A GRPO step still
runs it G times for generation (each of the G rows of a group carries its own copy of the
frames) and again for every log-prob forward (old, reference, policy, each epoch). The
cache computes each distinct visual item once and hands the stored embeddings to every
later forward, in generation and in the loss alike.

How it plugs in: `attach` replaces the model's ``get_image_features`` /
``get_video_features`` (Qwen2-VL family: the one place the language model asks for
visual embeddings, whether from ``generate`` or a plain forward) on that model instance
only. Items are split by their grid rows; the missing ones are computed in one call of
the original method and stored per item.

Keys, and why they can never be stale:
- the item's content: a 128-bit xxh3 digest of its patch tensor's bytes, its grid row,
  the tower's dtype and the autocast state. Content, not (dataset, row, permutation):
  augmentation perturbs frames and T-GRPO permutes them, and both change the pixels;
- the tower's weights: a digest of every parameter and buffer of the tower. Two models
  whose towers hold the same weights (the policy and the reference model) share entries;
  a different checkpoint never matches.
The weight digest is recomputed whenever any tower tensor was replaced or modified in
place (tensor identity and version counters, checked at every call, which is cheap).
While any tower parameter requires grad, or dropout is active in training mode, the cache
is bypassed: the embeddings then depend on more than pixels and frozen weights.

Entries are detached copies kept on the device that produced them, least recently used
evicted first, so the total stays under ``max_bytes``.
"""

from __future__ import annotations

import functools
import inspect
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
import xxhash
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

MODALITIES = {"image": "get_image_features", "video": "get_video_features"}
# kwargs asking for per-layer outputs: the cache only holds the pooled embeddings
_OUTPUT_REQUESTS = ("output_hidden_states", "output_attentions")


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    bypassed: int = 0  # calls that ran the tower uncached (trainable tower, dropout, ...)
    evicted: int = 0
    invalidations: int = 0  # times the tower's weights changed under the cache

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


def _digest(tensor: torch.Tensor) -> bytes:
    data = tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()
    return xxhash.xxh3_128_digest(memoryview(data))


def _tower_tensors(tower: nn.Module) -> list[torch.Tensor]:
    return [*tower.parameters(), *tower.buffers()]


class VisionEmbeddingCache:
    """Per-item cache of a frozen vision tower's pooled embeddings (see the module docstring).

    >>> cache = VisionEmbeddingCache(max_bytes=512 << 20)
    >>> cache.attach(model)          # doctest: +SKIP  (a Qwen2-VL-family model)
    >>> model.generate(**inputs)     # doctest: +SKIP  (towers run once per distinct video)
    >>> cache.stats.hit_rate         # doctest: +SKIP
    """

    def __init__(self, max_bytes: int = 1 << 30) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.stats = CacheStats()
        self._entries: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._bytes = 0
        # per tower (by id): (tensor identities and versions, weight digest)
        self._weights: dict[int, tuple[tuple, bytes]] = {}
        self._attached: list[tuple[nn.Module, str]] = []

    # ------------------------------------------------------------------ attaching

    def attach(self, model: nn.Module) -> VisionEmbeddingCache:
        """Route `model`'s visual-feature calls through this cache (this instance only)."""
        inner = getattr(model, "model", model)
        if getattr(inner, "visual", None) is None or not all(
            hasattr(inner, name) for name in MODALITIES.values()
        ):
            raise ValueError(
                f"{type(model).__name__} has no Qwen2-VL-style vision tower "
                "(`model.visual` with get_image_features / get_video_features) to cache"
            )
        for modality, name in MODALITIES.items():
            if name in vars(inner):
                raise ValueError(f"{type(model).__name__}.{name} is already wrapped")
            setattr(inner, name, self._wrap(inner, getattr(inner, name), modality))
            self._attached.append((inner, name))
        return self

    def detach(self) -> None:
        """Restore the original methods and drop every entry."""
        for inner, name in self._attached:
            vars(inner).pop(name, None)
        self._attached.clear()
        self.clear()

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    # ------------------------------------------------------------------ lookup

    def usable(self, tower: nn.Module) -> bool:
        """Whether the tower's output depends only on pixels and frozen weights right now."""
        if any(p.requires_grad for p in tower.parameters()):
            return False
        if tower.training:
            if any(isinstance(m, nn.Dropout) and m.p > 0 for m in tower.modules()):
                return False
            if getattr(getattr(tower, "config", None), "attention_dropout", 0.0):
                return False
        return True

    def weights_digest(self, tower: nn.Module) -> bytes:
        """The digest of the tower's weights, recomputed only when a tensor changed."""
        tensors = _tower_tensors(tower)
        signature = tuple((id(t), t.data_ptr(), t._version) for t in tensors)
        known = self._weights.get(id(tower))
        if known is not None and known[0] == signature:
            return known[1]
        digest = xxhash.xxh3_128()
        for t in tensors:
            digest.update(_digest(t))
        if any(t.numel() == 0 for t in tensors):
            # partitioned parameters (DeepSpeed ZeRO-3) hold no data here: their digest
            # cannot tell two towers apart, so entries stay with this tower alone
            digest.update(str(id(tower)).encode())
        if known is not None:
            self.stats.invalidations += 1
        self._weights[id(tower)] = (signature, digest.digest())
        return self._weights[id(tower)][1]

    def _wrap(self, inner: nn.Module, original: Any, modality: str) -> Any:
        # Same parameter names as the original: `generate` reads the signature to pick
        # which model kwargs to pass (pixel_values_videos=..., video_grid_thw=...).
        signature = inspect.signature(original)
        pixels_name, grid_name = list(signature.parameters)[:2]

        @functools.wraps(original)
        def features(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs).arguments
            pixels, grid_thw = bound[pixels_name], bound.get(grid_name)
            extra = bound.get("kwargs", {})
            tower = inner.visual
            if grid_thw is None or any(extra.get(k) for k in _OUTPUT_REQUESTS) or not self.usable(
                tower
            ):
                self.stats.bypassed += 1
                return original(*args, **kwargs)
            return self._lookup(tower, original, modality, pixels, grid_thw, extra)

        return features

    def _lookup(self, tower: nn.Module, original: Any, modality: str, pixels: torch.Tensor,
                grid_thw: torch.Tensor, kwargs: dict[str, Any]) -> BaseModelOutputWithPooling:
        device = pixels.device.type
        autocast = torch.is_autocast_enabled(device)
        context = (modality, self.weights_digest(tower), str(tower.dtype), autocast,
                   str(torch.get_autocast_dtype(device)) if autocast else None)
        patches = grid_thw.prod(-1).tolist()
        items = torch.split(pixels, patches)
        keys = [(*context, tuple(g), _digest(item))
                for g, item in zip(grid_thw.tolist(), items, strict=True)]
        found: dict[tuple, torch.Tensor] = {}
        missing: dict[tuple, int] = {}  # each distinct missing key -> its first item
        for i, key in enumerate(keys):
            if key in found or key in missing:
                continue
            entry = self._entries.get(key)
            if entry is None:
                missing[key] = i
            else:
                self._entries.move_to_end(key)
                found[key] = entry
        self.stats.misses += len(missing)
        self.stats.hits += len(keys) - len(missing)
        if missing:
            first = list(missing.values())
            computed = original(
                torch.cat([items[i] for i in first]), grid_thw[first], **kwargs
            ).pooler_output
            for key, embedding in zip(missing, computed, strict=True):
                found[key] = self._store(key, embedding)
        return BaseModelOutputWithPooling(pooler_output=tuple(found[k] for k in keys))

    def _store(self, key: tuple, embedding: torch.Tensor) -> torch.Tensor:
        embedding = embedding.detach().clone()
        size = embedding.numel() * embedding.element_size()
        if size > self.max_bytes:
            return embedding  # larger than the whole cache: used once, not kept
        while self._bytes + size > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self._bytes -= old.numel() * old.element_size()
            self.stats.evicted += 1
        self._entries[key] = embedding
        self._bytes += size
        return embedding


def vision_tower(model: nn.Module) -> nn.Module | None:
    """The model's vision tower (Qwen2-VL family: ``model.model.visual``), if any."""
    return getattr(getattr(model, "model", model), "visual", None)

"""The vision-embedding cache on a model: never a stale entry, towers share entries only when
their weights agree, and a bounded size. (With the trainer: tests/train/test_grpo.py.)"""

import pytest
import torch

from vlmrl.models import encode_chats, load_model
from vlmrl.models.loading import freeze_vision_tower
from vlmrl.models.vision_cache import VisionEmbeddingCache


def video_inputs(processor, frames):
    return encode_chats(processor, [[{"role": "user", "content": [
        {"type": "text", "text": "What moves?"}, {"type": "video", "video": frames}]}]])


def video_embeddings(model, enc):
    with torch.no_grad():
        out = model.model.get_video_features(
            pixel_values_videos=enc.visual["pixel_values_videos"],
            video_grid_thw=enc.visual["video_grid_thw"],
        )
    return torch.cat(out.pooler_output)


def test_changed_weights_never_read_a_stale_entry(tiny_rl_model_dir, frame_dataset):
    loaded = load_model(tiny_rl_model_dir)
    model, tower = loaded.model, loaded.model.model.visual
    freeze_vision_tower(model)
    enc = video_inputs(loaded.processor, frame_dataset[0]["frames"])
    cache = VisionEmbeddingCache(64 << 20).attach(model)

    first = video_embeddings(model, enc)
    assert torch.equal(video_embeddings(model, enc), first) and cache.stats.hits == 1

    # weights changed in place (as a load_state_dict would): recomputed, never the old entry
    with torch.no_grad():
        tower.merger.mlp[0].weight.mul_(1.5)
    changed = video_embeddings(model, enc)
    assert not torch.allclose(changed, first)
    assert cache.stats.invalidations == 1 and cache.stats.misses == 2
    cache.detach()
    assert torch.allclose(video_embeddings(model, enc), changed, atol=1e-6)  # the true output
    cache.attach(model)

    # unfrozen: the cache steps aside (the tower trains), and takes over again once frozen
    hits = cache.stats.hits
    tower.requires_grad_(True)
    video_embeddings(model, enc)
    assert cache.stats.bypassed == 1 and cache.stats.hits == hits
    freeze_vision_tower(model)
    video_embeddings(model, enc)
    video_embeddings(model, enc)
    assert cache.stats.hits == hits + 1


def test_towers_share_entries_only_when_their_weights_agree(tiny_rl_model_dir, frame_dataset):
    policy, same, other = (load_model(tiny_rl_model_dir) for _ in range(3))
    with torch.no_grad():
        other.model.model.visual.patch_embed.proj.weight.add_(0.01)  # a different checkpoint
    cache = VisionEmbeddingCache(64 << 20)
    for loaded in (policy, same, other):
        freeze_vision_tower(loaded.model)
        cache.attach(loaded.model)
    enc = video_inputs(policy.processor, frame_dataset[0]["frames"])

    reference = video_embeddings(policy.model, enc)
    assert torch.equal(video_embeddings(same.model, enc), reference)  # e.g. the reference model
    assert (cache.stats.misses, cache.stats.hits) == (1, 1)
    assert not torch.allclose(video_embeddings(other.model, enc), reference)
    assert (cache.stats.misses, cache.stats.hits) == (2, 1)


def test_memory_stays_under_the_bound(tiny_rl_model_dir, frame_dataset):
    loaded = load_model(tiny_rl_model_dir)
    freeze_vision_tower(loaded.model)
    frames = frame_dataset[0]["frames"]
    videos = [[frames[i] for i in order] for order in ((0, 1, 2, 3), (1, 0, 2, 3), (0, 1, 3, 2),
                                                        (2, 3, 0, 1))]  # four distinct videos
    encs = [video_inputs(loaded.processor, f) for f in videos]
    unbounded = VisionEmbeddingCache(64 << 20).attach(loaded.model)
    truth = [video_embeddings(loaded.model, e) for e in encs]
    one = unbounded.nbytes // len(unbounded)
    unbounded.detach()

    cache = VisionEmbeddingCache(2 * one + one // 2).attach(loaded.model)  # room for two
    for _ in range(2):
        for enc, expected in zip(encs, truth, strict=True):
            assert torch.equal(video_embeddings(loaded.model, enc), expected)
            assert cache.nbytes <= cache.max_bytes and len(cache) <= 2
    assert cache.stats.evicted == 2 * len(encs) - 2
    assert cache.stats.hits == 0  # LRU over 4 items cycling through room for 2: always evicted


def test_attach_refuses_a_model_without_a_tower():
    with pytest.raises(ValueError, match="no Qwen2-VL-style vision tower"):
        VisionEmbeddingCache().attach(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="max_bytes"):
        VisionEmbeddingCache(0)

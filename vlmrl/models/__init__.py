"""Model loading (local, offline, safetensors only), the tiny demo model, and multimodal inputs."""

from vlmrl.models.loading import (
    CheckpointError,
    LoadedModel,
    check_checkpoint_dir,
    load_model,
    load_processor,
)
from vlmrl.models.multimodal import (
    ChatMedia,
    EncodedChats,
    chat_media,
    collate_visual_rows,
    encode_chats,
    encode_texts,
    mm_token_types,
    split_visual_rows,
)
from vlmrl.models.saving import save_model_dir
from vlmrl.models.tiny import TinyModelSpec, build_tiny_model

__all__ = [
    "ChatMedia",
    "CheckpointError",
    "EncodedChats",
    "LoadedModel",
    "TinyModelSpec",
    "build_tiny_model",
    "chat_media",
    "check_checkpoint_dir",
    "collate_visual_rows",
    "encode_chats",
    "encode_texts",
    "load_model",
    "load_processor",
    "mm_token_types",
    "save_model_dir",
    "split_visual_rows",
]

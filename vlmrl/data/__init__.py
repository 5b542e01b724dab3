"""Records, frame sampling/decoding, frame-dataset building and the synthetic data."""

from vlmrl.data.frames import DecodedVideo, DecodeError, FrameOptions, decode_video, load_image
from vlmrl.data.records import (
    DATA_TYPES,
    PROBLEM_TYPES,
    AnnotationError,
    MediaPathError,
    Record,
    RowError,
    load_annotations,
    resolve_media,
)

__all__ = [
    "DATA_TYPES",
    "PROBLEM_TYPES",
    "AnnotationError",
    "DecodeError",
    "DecodedVideo",
    "FrameOptions",
    "MediaPathError",
    "Record",
    "RowError",
    "decode_video",
    "load_annotations",
    "load_image",
    "resolve_media",
]

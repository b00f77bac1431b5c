"""Data: shard manifests, FLAC decoding, streaming loaders, collation and frame targets.

Names are imported lazily, so ``data_tools`` (which only needs the manifest reader) does not pay for importing torch
and webdataset.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FORMAT": "a2v_het.data.manifest",
    "ManifestError": "a2v_het.data.manifest",
    "read_manifest": "a2v_het.data.manifest",
    "shard_urls": "a2v_het.data.manifest",
    "CorruptSampleError": "a2v_het.data.audio",
    "decode_flac": "a2v_het.data.audio",
    "collate_audio": "a2v_het.data.collate",
    "normalize_wave": "a2v_het.data.collate",
    "znorm": "a2v_het.data.collate",
    "make_eval_loader": "a2v_het.data.stream",
    "make_train_loader": "a2v_het.data.stream",
    "events_to_frame_targets": "a2v_het.data.targets",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'a2v_het.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)

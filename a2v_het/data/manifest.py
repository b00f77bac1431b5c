"""Reading the ``manifest.json`` of a shard folder (format ``a2v-het-shards/1``, see the shard-format spec).

The reader lives in ``a2v_het`` (not ``data_tools``) because the training code needs it and must not depend on the
tooling package; ``data_tools.shard_writer`` re-exports it next to the writer.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
FORMAT = "a2v-het-shards/1"
SPLITS = ("train", "val", "test", "all")


class ManifestError(ValueError):
    """A shard folder whose manifest is missing, unreadable or not in the ``a2v-het-shards/1`` format."""


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in ``chunk_bytes`` pieces (shards can be larger than memory wants)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def _require(cond: bool, path: Path, what: str) -> None:
    if not cond:
        raise ManifestError(f"{path}: {what}")


def read_manifest(shard_dir: str | os.PathLike, verify: bool = False) -> dict[str, Any]:
    """Load and validate ``shard_dir/manifest.json``.

    Args:
        shard_dir: the shard folder.
        verify: also recompute every shard's SHA-256 and compare it with the manifest (reads every byte).
    Returns: the manifest as a dict (``format``, ``classes``, ``splits``, ``sha256``, ``created_by``).
    Raises:
        ManifestError: no manifest, not JSON, a format other than ``a2v-het-shards/1``, missing fields, a listed shard
            that is absent, or (``verify``) a checksum mismatch.
    """
    root = Path(shard_dir)
    path = root / MANIFEST_NAME
    if not path.is_file():
        hint = " (an interrupted writer leaves no manifest)" if root.is_dir() else " (no such folder)"
        raise ManifestError(f"{path} does not exist{hint}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: cannot read manifest: {exc}") from exc
    _require(isinstance(manifest, dict), path, "manifest must be a JSON object")
    fmt = manifest.get("format")
    _require(fmt == FORMAT, path, f"format is {fmt!r}, expected {FORMAT!r}")
    for field in ("classes", "splits", "sha256", "created_by"):
        _require(field in manifest, path, f"missing field {field!r}")
    _require(isinstance(manifest["classes"], list), path, "'classes' must be a list")
    _require(isinstance(manifest["splits"], dict), path, "'splits' must be an object")
    for split, info in manifest["splits"].items():
        has_list = isinstance(info, dict) and isinstance(info.get("shards"), list)
        _require(has_list, path, f"split {split!r} has no shard list")
        for shard in info["shards"]:
            _require(isinstance(shard, str) and "/" not in shard and "\\" not in shard, path,
                     f"shard name {shard!r} must be a plain file name inside the folder")
            _require((root / shard).is_file(), path, f"listed shard {shard!r} is missing")
            _require(shard in manifest["sha256"], path, f"no sha256 for shard {shard!r}")
            if verify:
                actual = sha256_file(root / shard)
                _require(actual == manifest["sha256"][shard], path, f"sha256 mismatch for {shard!r}")
    return manifest


def shard_urls(shard_dir: str | os.PathLike, split: str) -> list[str]:
    """Paths of the shards of ``split`` listed by ``shard_dir``'s manifest, in manifest order.

    Raises: ManifestError when the manifest is invalid or has no such split (the message lists the splits it has).
    """
    manifest = read_manifest(shard_dir)
    splits = manifest["splits"]
    if split not in splits:
        raise ManifestError(f"{Path(shard_dir) / MANIFEST_NAME}: no split {split!r}; available: {sorted(splits)}")
    return [str(Path(shard_dir) / name) for name in splits[split]["shards"]]

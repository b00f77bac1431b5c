"""Atomic file output, the one writer every package uses: write to a new temporary file in the destination folder
(a unique hidden name ``.{name}.<8 hex>.tmp``, created exclusively), fsync, then ``os.replace`` it over the target,
so a reader (or a resumed run) never sees half a file, and two writers of the same target never share a
temporary. On any error the temporary is removed and the target is left as it was.

- :func:`atomic_open` for code that writes through a file object (text or binary);
- :func:`atomic_path` for libraries that write to a file name themselves (safetensors, ``savefig``, ``copyfile``);
- :func:`atomic_write_text`, :func:`atomic_write_bytes`, :func:`atomic_copy` for whole contents;
- :func:`create_temp` for a streaming writer that renames by itself (the shard writer).

The temporary gets the permissions a plain ``open()`` would (umask), not ``mkstemp``'s owner-only 0600.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import shutil
from pathlib import Path
from typing import IO, Iterator

TEMP_SUFFIX = ".tmp"


def create_temp(folder: str | os.PathLike, final_name: str) -> tuple[Path, IO[bytes]]:
    """A new hidden ``.{final_name}.<8 hex>.tmp`` in ``folder``, opened for binary writing (exclusive create)."""
    folder = Path(folder)
    for _ in range(100):
        tmp = folder / f".{final_name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
        try:
            return tmp, open(tmp, "xb")
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a temporary file for {final_name} in {folder}")


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """``with atomic_path(p) as tmp: lib.save(..., tmp)`` -> ``p`` appears whole when the block ends, or not at all.

    ``tmp`` exists (empty) when the block starts; the block may overwrite it by name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, fh = create_temp(path.parent, path.name)
    fh.close()
    try:
        yield tmp
        _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """``with atomic_open(p, "wb") as fh: ...`` -> ``p`` appears whole when the block ends, or not at all."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes a new file: mode 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, raw = create_temp(path.parent, path.name)
    fh: IO = raw if mode == "wb" else io.TextIOWrapper(raw, encoding="utf-8")
    try:
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        fh.close()
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as fh:
        fh.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy ``src`` to ``dst`` (contents only, like ``shutil.copyfile``), atomically."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)

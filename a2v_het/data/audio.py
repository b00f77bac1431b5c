"""Decoding the FLAC members of shards."""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf


class CorruptSampleError(ValueError):
    """A shard sample that cannot be used: undecodable audio, bad JSON, missing members, inconsistent fields.

    The streaming loaders skip and count such samples instead of stopping a training run.
    """


def decode_flac(data: bytes) -> tuple[np.ndarray, int]:
    """Decode FLAC bytes to mono float32.

    Args:
        data: the bytes of a ``.flac`` member.
    Returns:
        ``(wave, sample_rate)``: wave is float32 (T,) in [-1, 1] (multi-channel files are mixed down by averaging
        the channels), sample_rate in Hz.
    Raises:
        CorruptSampleError: the bytes are not a decodable FLAC stream, it holds no samples, or it decodes to fewer
            samples than its header (STREAMINFO) promises (a truncated member).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CorruptSampleError(f"expected FLAC bytes, got {type(data).__name__}")
    try:
        with sf.SoundFile(io.BytesIO(data)) as fh:
            if fh.format != "FLAC":
                raise CorruptSampleError(f"expected a FLAC stream, got {fh.format}")
            sample_rate = int(fh.samplerate)
            promised = int(fh.frames)
            audio = fh.read(dtype="float32", always_2d=True)
    except CorruptSampleError:
        raise
    except Exception as exc:  # libsndfile reports bad data as RuntimeError/LibsndfileError/TypeError
        raise CorruptSampleError(f"undecodable FLAC ({len(data)} bytes): {exc}") from exc
    if audio.shape[0] == 0:
        raise CorruptSampleError("FLAC stream holds no samples")
    if 0 < promised != audio.shape[0]:  # 0: an encoder that did not know the length when it wrote the header
        raise CorruptSampleError(f"FLAC stream decodes to {audio.shape[0]} samples, its header says {promised}")
    wave = audio[:, 0] if audio.shape[1] == 1 else audio.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(wave, dtype=np.float32), sample_rate

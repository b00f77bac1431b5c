"""Streaming shards (format ``a2v-het-shards/1``) into mixed-rate batches with webdataset.

Two loaders, both returning a ``torch.utils.data.DataLoader`` with ``batch_size=None`` over a webdataset pipeline that
batches itself. Batching inside the pipeline means collation (padding a 96 kHz clip to a (B, T) tensor) runs in the
worker processes and each worker hands over whole batches.

* :func:`make_train_loader`: an endless, resampled stream (shards are drawn with replacement, independently per rank
  and worker), a shuffle buffer, a random crop to ``duration_s``, fixed-size batches, cut into epochs of
  ``loader.num_batches`` batches.
* :func:`make_eval_loader`: every sample exactly once over all ranks and workers, in a deterministic order, uncropped
  (or cut to a fixed window from the clip start), with a smaller final batch per worker.

Every batch is the dict of :func:`a2v_het.data.collate.collate_audio`. Corrupt samples (undecodable FLAC, bad JSON,
missing members, malformed events) are skipped, logged, and counted: ``batch["num_skipped"]`` is the number skipped by
the worker that made the batch since its previous batch, so summing it over the batches gives the total (exactly for
eval; in training, skips met while filling a batch that the epoch cut discards go uncounted). A whole shard that
cannot be read as tar is logged and skipped too, but its samples cannot be counted.

Seeding: every random choice (which shard, shuffle order, crop position) comes from ``(seed, rank, worker, epoch)``, so
two runs with the same arguments see the same batches (given the same ``num_workers``) and every rank/worker sees a
different stream.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader

from a2v_het.data.audio import CorruptSampleError, decode_flac
from a2v_het.data.collate import collate_audio
from a2v_het.data.manifest import read_manifest, shard_urls

logger = logging.getLogger(__name__)

ShardSpec = str | os.PathLike | Sequence[str | os.PathLike]


class _Skipped:
    """Marker a decoding stage yields in place of a corrupt sample, so the batching stage can count it."""

    def __repr__(self) -> str:
        return "SKIPPED"


SKIPPED = _Skipped()


# ---------------------------------------------------------------------------------------------------------------------
# Pure helpers (no webdataset, no workers): tested directly.


def decode_sample(raw: dict[str, Any]) -> dict[str, Any]:
    """Turn one raw webdataset sample (``__key__``, ``flac`` bytes, ``json`` bytes) into a decoded clip.

    Returns: dict with ``key`` (str), ``wave`` float32 (T,), ``sample_rate`` (int, Hz), ``events`` (list of dicts,
        seconds from the clip start), ``labelled`` (bool), ``meta`` (dict: the JSON ``meta`` plus ``recording_id``,
        ``group``, ``offset_s`` and ``channel`` of the sample).
    Raises: CorruptSampleError naming the key: missing member, bad JSON, undecodable or truncated FLAC, or a JSON
        ``sample_rate`` or ``duration_s`` that disagrees with the FLAC (by more than one sample).
    """
    key = raw.get("__key__", "?")
    missing = [m for m in ("flac", "json") if m not in raw]
    if missing:
        members = sorted(k for k in raw if not k.startswith("__"))
        raise CorruptSampleError(f"sample {key!r}: missing member(s) {missing} (has {members})")
    try:
        info = json.loads(raw["json"])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptSampleError(f"sample {key!r}: bad JSON: {exc}") from exc
    if not isinstance(info, dict):
        raise CorruptSampleError(f"sample {key!r}: JSON must be an object")
    try:
        wave, sample_rate = decode_flac(raw["flac"])
    except CorruptSampleError as exc:
        raise CorruptSampleError(f"sample {key!r}: {exc}") from exc
    if info.get("sample_rate") != sample_rate:
        raise CorruptSampleError(f"sample {key!r}: JSON sample_rate {info.get('sample_rate')!r} != FLAC {sample_rate}")
    duration_s = info.get("duration_s")
    if isinstance(duration_s, (int, float)) and abs(duration_s * sample_rate - wave.shape[0]) > 1.0:
        # a FLAC cut short (or padded) in a way the decoder did not notice: its events would be misplaced
        raise CorruptSampleError(f"sample {key!r}: {wave.shape[0]} samples decoded, JSON duration_s {duration_s} "
                                 f"s at {sample_rate} Hz says {duration_s * sample_rate:.0f}")
    events = _checked_events(info.get("events", []), key)
    meta = dict(info.get("meta") or {})
    for field in ("recording_id", "group", "offset_s", "channel"):
        if field in info:
            meta.setdefault(field, info[field])
    return {
        "key": key,
        "wave": wave,
        "sample_rate": sample_rate,
        "events": events,
        "labelled": bool(info.get("labelled", False)),
        "meta": meta,
    }


def _checked_events(events: Any, key: str) -> list[dict[str, Any]]:
    """The JSON ``events`` if each is an object with numeric ``onset_s <= offset_s`` and a string ``label``; a
    malformed event would otherwise crash a worker later (cropping, targets) instead of being skipped here."""
    if not isinstance(events, list):
        raise CorruptSampleError(f"sample {key!r}: 'events' must be a list")
    for event in events:
        ok = (isinstance(event, dict) and isinstance(event.get("label"), str)
              and all(isinstance(event.get(f), (int, float)) and not isinstance(event.get(f), bool)
                      for f in ("onset_s", "offset_s"))
              and event["onset_s"] <= event["offset_s"])
        if not ok:
            raise CorruptSampleError(f"sample {key!r}: malformed event {event!r}")
    return events


def clip_events(events: Iterable[dict[str, Any]], start_s: float, end_s: float) -> list[dict[str, Any]]:
    """Events re-timed to a window [start_s, end_s) of the clip: shifted by -start_s, clipped to the window, and
    dropped when they do not overlap it (an instant event is kept when it lies inside). Other fields are kept."""
    out = []
    length = end_s - start_s
    for event in events:
        onset, offset = float(event["onset_s"]) - start_s, float(event["offset_s"]) - start_s
        inside = (onset < length and offset > 0) or (onset == offset and 0 <= onset < length)
        if inside:
            out.append({**event, "onset_s": max(onset, 0.0), "offset_s": min(offset, length)})
    return out


def crop_sample(sample: dict[str, Any], start: int, length: int) -> dict[str, Any]:
    """Window ``wave[start : start + length]`` of a decoded clip, with its events re-timed (see :func:`clip_events`).

    ``start`` and ``length`` are in samples; a window reaching past the end is shortened to the clip.
    """
    total = sample["wave"].shape[0]
    if not 0 <= start <= total or length < 0:
        raise ValueError(f"bad crop start={start} length={length} for a clip of {total} samples")
    stop = min(start + length, total)
    sr = sample["sample_rate"]
    return {
        **sample,
        "wave": sample["wave"][start:stop],
        "events": clip_events(sample["events"], start / sr, stop / sr),
    }


def random_crop(sample: dict[str, Any], duration_s: float, rng: np.random.Generator) -> dict[str, Any]:
    """Random window of ``round(duration_s * sample_rate)`` samples; clips that are not longer are kept whole."""
    length = int(round(duration_s * sample["sample_rate"]))
    total = sample["wave"].shape[0]
    if total <= length:
        return sample
    return crop_sample(sample, int(rng.integers(0, total - length + 1)), length)


def batch_with_skips(
    items: Iterable[Any],
    batch_size: int,
    partial: bool,
    collate: Callable[..., dict[str, Any]] = collate_audio,
) -> Iterator[dict[str, Any]]:
    """Group decoded samples into batches, counting the :data:`SKIPPED` markers between them.

    Each batch carries ``num_skipped`` = markers seen since the previous batch. A finished batch is held back until
    the next one is complete (or the stream ends), so markers after the last full batch are added to the last batch
    instead of being lost; only a stream with no valid sample at all loses its count (it is logged).

    Args:
        items: decoded sample dicts and SKIPPED markers.
        batch_size: samples per batch (>= 1).
        partial: emit a final batch smaller than ``batch_size`` (eval) or drop it (train).
        collate: ``collate(samples, num_skipped=...) -> batch``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ready: list[Any] | None = None
    ready_skips = 0
    buf: list[Any] = []
    skipped = 0
    for item in items:
        if item is SKIPPED:
            skipped += 1
            continue
        buf.append(item)
        if len(buf) == batch_size:
            if ready is not None:
                yield collate(ready, num_skipped=ready_skips)
            ready, ready_skips, buf, skipped = buf, skipped, [], 0
    # End of stream: the trailing markers go to the last batch emitted.
    if partial and buf:
        if ready is not None:
            yield collate(ready, num_skipped=ready_skips)
        yield collate(buf, num_skipped=skipped)
    elif ready is not None:
        yield collate(ready, num_skipped=ready_skips + skipped)
    elif skipped:
        logger.warning("stream ended with %d skipped sample(s) and no batch to report them", skipped)


@dataclass(frozen=True)
class EvalPartition:
    """What one (rank, worker) reads in eval: the shards ``shards`` (indices into the shard list), and of the samples
    they hold, in order, those with ``index % modulus == remainder``."""

    shards: tuple[int, ...]
    modulus: int
    remainder: int


def eval_partition(n_shards: int, rank: int, world_size: int, worker: int, num_workers: int) -> EvalPartition:
    """Split ``n_shards`` shards among ranks, then among each rank's workers, so every sample is read exactly once.

    Shards are dealt round-robin (``shards[rank::world_size]``, then ``[worker::num_workers]``) while there are at
    least as many as readers at that level; below that, all readers of the level read the same shards and keep every
    ``k``-th sample instead (they then read the shards' bytes several times, which only small eval sets hit).
    Sample-level splitting is exact because every reader sees the same deterministic sample order.
    """
    if not (0 <= rank < world_size and 0 <= worker < num_workers and n_shards >= 0):
        raise ValueError(f"bad partition request rank={rank}/{world_size} worker={worker}/{num_workers}")
    shards = list(range(n_shards))
    modulus, remainder = 1, 0
    for index, count in ((rank, world_size), (worker, num_workers)):
        if modulus == 1 and len(shards) >= count:
            shards = shards[index::count]
        else:
            # sample i of the shared stream goes to reader (i // modulus) % count of this level
            remainder += modulus * index
            modulus *= count
    return EvalPartition(tuple(shards), modulus, remainder)


# ---------------------------------------------------------------------------------------------------------------------
# Pipeline plumbing.


def _worker_info() -> tuple[int, int]:
    """(worker id, number of workers) of the current DataLoader worker; (0, 1) in the main process."""
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def _resample_seed(rank: int) -> int:
    """Per-(rank, worker) part of the shard-resampling seed (webdataset mixes in the seed and its epoch)."""
    worker, _ = _worker_info()
    return rank * 100_003 + worker


def _log_and_continue(exn: Exception) -> bool:
    """webdataset handler for shard-level errors (unreadable tar): log and go on with the next shard."""
    logger.warning("skipping unreadable shard data: %r", exn)
    return True


def _export_dist_env(rank: int, world_size: int, worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: webdataset's own helpers read RANK/WORLD_SIZE from the worker's environment.

    Set in the worker, not the main process, so building a loader never changes the trainer's environment.
    """
    os.environ["RANK"] = str(rank)
    os.environ["WORLD_SIZE"] = str(world_size)


def _decode_or_skip(src: Iterable[dict[str, Any]], max_consecutive_skips: int | None) -> Iterator[Any]:
    """Decode raw samples; a corrupt one becomes a logged SKIPPED marker. Too many in a row raise, because a stream
    of nothing but corrupt samples would otherwise spin forever in a resampled loader."""
    consecutive = 0
    for raw in src:
        try:
            sample = decode_sample(raw)
        except CorruptSampleError as exc:
            logger.warning("skipping corrupt sample from %s: %s", raw.get("__url__", "?"), exc)
            consecutive += 1
            if max_consecutive_skips is not None and consecutive > max_consecutive_skips:
                raise RuntimeError(f"{consecutive} corrupt samples in a row; last: {exc}") from exc
            yield SKIPPED
            continue
        consecutive = 0
        yield sample


class _TrainSamples:
    """Train stage: raw samples -> shuffle buffer -> decode -> random crop (decoded samples and SKIPPED markers).

    A fresh RNG per call from (seed, rank, worker, epoch): the stage is called once per epoch inside each worker
    (persistent workers keep the counter), so epochs differ and runs repeat.
    """

    def __init__(self, seed: int, rank: int, duration_s: float, shuffle_buffer: int, max_consecutive_skips: int):
        self.seed, self.rank, self.duration_s = seed, rank, duration_s
        self.shuffle_buffer, self.max_consecutive_skips = shuffle_buffer, max_consecutive_skips
        self.epoch = -1

    def __call__(self, src: Iterable[dict[str, Any]]) -> Iterator[Any]:
        self.epoch += 1
        worker, _ = _worker_info()
        rng = np.random.default_rng([self.seed, self.rank, worker, self.epoch])
        if self.shuffle_buffer > 1:
            # Shuffle raw (FLAC) samples: ~3x smaller in the buffer than decoded float32.
            py_rng = random.Random(int(rng.integers(2**63)))
            src = wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=py_rng)(src)
        for item in _decode_or_skip(src, self.max_consecutive_skips):
            yield item if item is SKIPPED else random_crop(item, self.duration_s, rng)


class _EvalSource:
    """First eval stage: this (rank, worker)'s share of the raw samples (see :func:`eval_partition`)."""

    def __init__(self, urls: list[str], rank: int, world_size: int):
        self.urls, self.rank, self.world_size = urls, rank, world_size

    def __call__(self) -> Iterator[dict[str, Any]]:
        worker, num_workers = _worker_info()
        part = eval_partition(len(self.urls), self.rank, self.world_size, worker, num_workers)
        shards = ({"url": self.urls[i]} for i in part.shards)
        for index, raw in enumerate(wds.tarfile_to_samples(handler=_log_and_continue)(shards)):
            if index % part.modulus == part.remainder:
                yield raw


class _EvalSamples:
    """Eval stage: decode, then optionally cut to the first ``max_duration_s`` seconds."""

    def __init__(self, max_duration_s: float | None):
        self.max_duration_s = max_duration_s

    def __call__(self, src: Iterable[dict[str, Any]]) -> Iterator[Any]:
        for item in _decode_or_skip(src, None):
            if item is SKIPPED or self.max_duration_s is None:
                yield item
            else:
                yield crop_sample(item, 0, int(round(self.max_duration_s * item["sample_rate"])))


def _batches(batch_size: int, partial_batches: bool) -> Callable[[Iterable[Any]], Iterator[dict[str, Any]]]:
    return partial(batch_with_skips, batch_size=batch_size, partial=partial_batches)


def resolve_shards(shards: ShardSpec, split: str) -> list[str]:
    """Shard paths from a shard folder (its manifest's ``split``), a list of tar paths, or one path / brace pattern
    (``data/x-train-{000000..000009}.tar``).

    Raises: ManifestError for a folder with a bad manifest or no such split; FileNotFoundError for a local shard that
        does not exist; ValueError when nothing is left.
    """
    if isinstance(shards, (str, os.PathLike)) and Path(shards).is_dir():
        urls = shard_urls(shards, split)
    elif isinstance(shards, (str, os.PathLike)):
        urls = wds.shardlists.expand_urls(str(shards))
    else:
        urls = [str(s) for s in shards]
    if not urls:
        raise ValueError(f"no shards in {shards!r} (split {split!r})")
    for url in urls:
        if "://" not in url and not url.startswith("pipe:") and not Path(url).is_file():
            raise FileNotFoundError(f"shard {url!r} does not exist")
    return urls


def _split_samples(shards: ShardSpec, split: str) -> int | None:
    """Samples of ``split`` from the manifest when ``shards`` is a shard folder, else None (unknown)."""
    if isinstance(shards, (str, os.PathLike)) and Path(shards).is_dir():
        return int(read_manifest(shards)["splits"][split]["samples"])
    return None


def _dist_info(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Rank and world size from the arguments, else RANK/WORLD_SIZE, else torch.distributed, else (0, 1)."""
    if rank is None or world_size is None:
        env_rank, env_world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
        if env_rank is not None and env_world is not None:
            default = int(env_rank), int(env_world)
        elif torch.distributed.is_available() and torch.distributed.is_initialized():
            default = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            default = 0, 1
        rank = default[0] if rank is None else rank
        world_size = default[1] if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank} world_size={world_size}")
    return rank, world_size


def _loader(dataset: wds.DataPipeline, num_workers: int, rank: int, world_size: int, pin_memory: bool) -> DataLoader:
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    return DataLoader(
        dataset,
        # Its own generator: creating an iterator must not draw from the global torch RNG (masks and dropout use
        # it, and a resumed run has to see the same global RNG sequence as an uninterrupted one).
        generator=torch.Generator().manual_seed(rank),
        batch_size=None,  # the pipeline batches itself
        num_workers=num_workers,
        # persistent workers keep the per-epoch counters of the pipeline stages (fresh shards/crops every epoch)
        persistent_workers=num_workers > 0,
        worker_init_fn=partial(_export_dist_env, rank, world_size) if num_workers > 0 else None,
        pin_memory=pin_memory,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Public loaders.


def make_train_loader(
    shards: ShardSpec,
    batch_size: int,
    duration_s: float,
    num_workers: int = 2,
    seed: int = 0,
    samples_per_epoch: int = 10_000,
    *,
    split: str = "train",
    rank: int | None = None,
    world_size: int | None = None,
    shuffle_buffer: int = 256,
    max_consecutive_skips: int = 1000,
    pin_memory: bool = False,
) -> DataLoader:
    """Endless resampled training stream, cut into epochs.

    Args:
        shards: a shard folder (uses its manifest's ``split``), a list of tar paths, or a brace pattern.
        batch_size: clips per batch (per rank).
        duration_s: crop length in seconds; each clip gets a random window of ``round(duration_s * sr)`` samples,
            clips that are not longer are kept whole (``lengths`` tells).
        num_workers: DataLoader worker processes (0 = decode in the main process).
        seed: base seed; with ``rank`` and the worker id it fixes shard choice, shuffle order and crops.
        samples_per_epoch: samples per epoch summed over all ranks; each rank yields
            ``loader.num_batches = W * ceil(samples_per_epoch / (world_size * W * batch_size))`` batches per epoch
            (W = max(1, num_workers)), the same on every rank.
        split: manifest split when ``shards`` is a folder.
        rank, world_size: this process's place in distributed training; default RANK/WORLD_SIZE, then
            torch.distributed, then 0/1.
        shuffle_buffer: raw samples held for shuffling per worker (consecutive windows of one recording sit next to
            each other in a shard); 0 or 1 disables it.
        max_consecutive_skips: raise RuntimeError after this many corrupt samples in a row (a broken data set would
            otherwise spin forever).
        pin_memory: passed to the DataLoader.
    Returns:
        DataLoader yielding :func:`collate_audio` dicts of exactly ``batch_size`` clips; attributes ``num_batches``
        (per epoch on this rank) and ``num_samples`` (``num_batches * batch_size``).

    Shards are drawn with replacement (``wds.ResampledShards``) independently on every rank and worker, so no node or
    worker splitter is needed and ranks never run out of data at different times. The pipeline is a
    ``wds.DataPipeline`` rather than ``wds.WebDataset(resampled=True)`` because webdataset 1.0.2 builds the resampled
    shard list of the latter without a seed (it mixes in pid and time), which would make runs unrepeatable.
    """
    if batch_size < 1 or duration_s <= 0 or samples_per_epoch < 1:
        raise ValueError("need batch_size >= 1, duration_s > 0 and samples_per_epoch >= 1")
    rank, world_size = _dist_info(rank, world_size)
    urls = resolve_shards(shards, split)
    workers = max(1, num_workers)
    batches_per_worker = math.ceil(samples_per_epoch / (world_size * workers * batch_size))
    dataset = wds.DataPipeline(
        wds.ResampledShards(urls, seed=seed, worker_seed=partial(_resample_seed, rank), deterministic=True),
        wds.tarfile_to_samples(handler=_log_and_continue),
        _TrainSamples(seed, rank, duration_s, shuffle_buffer, max_consecutive_skips),
        _batches(batch_size, partial_batches=False),
    ).with_epoch(batches_per_worker)
    loader = _loader(dataset, num_workers, rank, world_size, pin_memory)
    loader.num_batches = workers * batches_per_worker
    loader.num_samples = loader.num_batches * batch_size
    return loader


def make_eval_loader(
    shards: ShardSpec,
    batch_size: int,
    num_workers: int = 2,
    *,
    split: str = "val",
    rank: int | None = None,
    world_size: int | None = None,
    max_duration_s: float | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """Every sample of the split exactly once over all ranks and workers, in a deterministic order.

    Args:
        shards: a shard folder (uses its manifest's ``split``), a list of tar paths, or a brace pattern.
        batch_size: clips per batch; each worker's last batch may be smaller.
        num_workers: DataLoader worker processes (0 = main process).
        split: manifest split when ``shards`` is a folder.
        rank, world_size: as in :func:`make_train_loader`.
        max_duration_s: None keeps clips whole; otherwise the first ``max_duration_s`` seconds (events clipped).
        pin_memory: passed to the DataLoader.
    Returns:
        DataLoader of :func:`collate_audio` dicts; attribute ``num_samples`` = samples of the split over all ranks
        (from the manifest, None for a plain shard list).

    Shards are split by rank, then by worker (:func:`eval_partition`); with fewer shards than readers at a level,
    the readers of that level share the shards and split by sample index modulo instead. Ranks may receive different
    numbers of batches; a distributed trainer should gather results rather than step in lockstep.
    """
    if batch_size < 1 or (max_duration_s is not None and max_duration_s <= 0):
        raise ValueError("need batch_size >= 1 and max_duration_s None or > 0")
    rank, world_size = _dist_info(rank, world_size)
    urls = resolve_shards(shards, split)
    dataset = wds.DataPipeline(
        _EvalSource(urls, rank, world_size),
        _EvalSamples(max_duration_s),
        _batches(batch_size, partial_batches=True),
    )
    loader = _loader(dataset, num_workers, rank, world_size, pin_memory)
    loader.num_samples = _split_samples(shards, split)
    return loader

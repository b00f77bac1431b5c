"""``a2v-het bench frontend``: forward+backward cost of the frontends at several input sample rates.

For each rate, one batch of ``--batch`` clips of ``--seconds`` s of noise + tones at that rate goes through each
frontend (default :class:`FrontendConfig`, D = 256, train mode):

* every frontend of the zoo (``heterodyne``, ``conv``, ``logmel``, ``sincnet``, ``gabor_strf``, ``logmel_patch``,
  ``aape``), and ``heterodyne_fft`` (the heterodyne with ``band_extraction: fft``, the long FFT per clip):
  ``out = fe(wave, sample_rate, lengths)``, then
  ``(out.tokens.float().square().mean() + sum(out.aux_losses)).backward()`` (the wave does not require grad, as in
  training);
* ``bare_logmel``: :func:`bare_log_mel` on a leaf wave with ``requires_grad=True``, then ``.sum().backward()``:
  the floor cost of any STFT-based frontend.

Time: one warm-up step of each, then ``--repeats`` rounds in which every frontend runs one step in turn (the order
reversed every other round), and the median wall time of each (``torch.cuda.synchronize`` around each step on
GPU). Interleaved, every frontend meets the same machine conditions, so the ratios hold on a shared machine whose
speed drifts by up to 2-3x over seconds (measured on this project's 2-core VMs), where timing one frontend after
another does not. The price: no frontend keeps the warm memory of its own previous step (on CPU the bare log-mel
measured 10-40 % slower this way than back to back; BENCHMARKS.md reports both). Peak memory, measured in a separate step so the measurement does not perturb the timing:

* CUDA: ``torch.cuda.max_memory_allocated`` minus the allocation before the step (activations, gradients and
  workspace of the caching allocator, excluding the model and the input that already existed).
* CPU: the peak of live bytes from the torch profiler's memory events (``profile_memory=True``): every tensor
  allocation and free made during the step, in time order, summed cumulatively. This counts exactly the tensors of
  the step, like the CUDA number; it excludes scratch that libraries allocate outside torch's allocator (FFT/BLAS
  workspaces), and adds the buffers a frontend keeps from step to step (the heterodyne's CPU workspace,
  :func:`workspace_bytes`), which a warm step uses without allocating. ``ru_maxrss`` was rejected: it is a
  process-wide high-water mark that never goes down, so every frontend measured after the hungriest one would read
  0, and the allocator's page reuse blurs it further.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from a2v_het.frontend import FRONTEND_NAMES, build_frontend
from a2v_het.frontend.config import FrontendConfig
from a2v_het.frontend.logmel import bare_log_mel

VARIANTS = {"heterodyne_fft": ("heterodyne", {"band_extraction": "fft"})}
"""Bench rows that are a zoo frontend with other ``frontend.<name>`` settings: name -> (frontend, overrides)."""
FRONTENDS = FRONTEND_NAMES + tuple(VARIANTS) + ("bare_logmel",)
REFERENCE = "heterodyne"


def bench_config(base: FrontendConfig, name: str) -> FrontendConfig:
    """The FrontendConfig of bench row ``name``: a zoo frontend as it is, or a :data:`VARIANTS` entry."""
    frontend, overrides = VARIANTS.get(name, (name, {}))
    cfg = dataclasses.replace(base, name=frontend)
    if overrides:
        section = getattr(cfg, frontend)
        cfg = dataclasses.replace(cfg, **{frontend: dataclasses.replace(section, **overrides)})
    return cfg


def add_args(parser: argparse.ArgumentParser) -> None:
    """Options of ``a2v-het bench frontend``; :func:`run` reads them as ``args.json``, ``args.batch``,
    ``args.seconds``, ``args.rates``, ``args.repeats``, ``args.device``, ``args.frontends``, ``args.seed``."""
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    parser.add_argument("--batch", type=int, default=4, help="clips per batch (default 4)")
    parser.add_argument("--seconds", type=float, default=3.0, help="clip duration in seconds (default 3)")
    parser.add_argument("--rates", type=str, default="8000,16000,48000,96000",
                        help="comma-separated sample rates in Hz (default 8000,16000,48000,96000)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per cell, median reported (default 5)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="default: cuda when available, else cpu")
    parser.add_argument("--frontends", type=str, default=",".join(FRONTENDS),
                        help=f"comma-separated subset of {','.join(FRONTENDS)}")
    parser.add_argument("--seed", type=int, default=0)


# ------------------------------------------------------------------------------------------------------- inputs


def make_batch(batch: int, seconds: float, sample_rate: int, seed: int = 0) -> np.ndarray:
    """(batch, round(seconds * sample_rate)) float32 clips: white noise (std 0.05) plus three tones of amplitude
    0.2 at random frequencies in [100 Hz, 0.45 * sample_rate] with random phases. Built in float64 so the phase
    of long tones is exact."""
    rng = np.random.default_rng(seed + sample_rate)
    n = int(round(seconds * sample_rate))
    t = np.arange(n, dtype=np.float64) / sample_rate
    out = 0.05 * rng.standard_normal((batch, n))
    for b in range(batch):
        for f in rng.uniform(100.0, 0.45 * sample_rate, size=3):
            out[b] += 0.2 * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
    return out.astype(np.float32)


# ------------------------------------------------------------------------------------------------------ machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def describe_machine(device: str) -> dict[str, Any]:
    """CPU model, cores, torch/python versions, and the CUDA device name when one is used."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda_device": None,
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(torch.device(device) if device == "cuda" else 0)
        info["cuda_runtime"] = torch.version.cuda
    return info


# ---------------------------------------------------------------------------------------------------- measuring


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(step: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 1) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``step`` after ``warmup`` untimed calls (device-synchronised)."""
    for _ in range(warmup):
        step()
    _sync(device)
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def time_steps_interleaved(steps: dict[str, Callable[[], Any]], device: torch.device, repeats: int,
                           warmup: int = 1) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Wall seconds of ``repeats`` calls of every step, taken round-robin (one call of each, in turn, reversed every
    other round), after ``warmup`` untimed calls of each. On a shared machine whose speed drifts over seconds, every
    step then sees the same conditions, so their ratios hold even when the absolute times do not.

    Returns (times per name, error text per name): a step that raises is dropped from the rounds with its error."""
    errors: dict[str, str] = {}
    live = dict(steps)
    for name, step in list(live.items()):
        try:
            for _ in range(warmup):
                step()
        except Exception as exc:  # e.g. CUDA OOM at 96 kHz: record it and go on
            errors[name] = f"{type(exc).__name__}: {exc}"
            del live[name]
    times: dict[str, list[float]] = {name: [] for name in live}
    for i in range(repeats):
        order = list(live.items()) if i % 2 == 0 else list(live.items())[::-1]
        for name, step in order:
            if name in errors:
                continue
            try:
                _sync(device)
                t0 = time.perf_counter()
                step()
                _sync(device)
                times[name].append(time.perf_counter() - t0)
            except Exception as exc:
                errors[name] = f"{type(exc).__name__}: {exc}"
    return {k: v for k, v in times.items() if k not in errors}, errors


def peak_cpu_bytes_from_profiler(step: Callable[[], Any]) -> int | None:
    """Peak live tensor bytes allocated during one ``step`` on CPU: cumulative sum of the profiler's memory
    events (allocations positive, frees negative) in time order. None if this torch build exposes no events."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    try:
        events = prof.profiler.kineto_results.events()
        mem = sorted((e.start_ns(), e.nbytes()) for e in events
                     if e.name() == "[memory]" and str(e.device_type()).endswith("CPU"))
    except AttributeError:  # private API moved: report "unknown" rather than a wrong number
        return None
    live = peak = 0
    for _, nbytes in mem:
        live += nbytes
        peak = max(peak, live)
    return int(peak)


def _workspace(module: Any) -> Any:
    """A frontend's CPU workspace (:class:`a2v_het.frontend.cpu_chunks.CpuWorkspace`), or None."""
    return getattr(module, "workspace", None)


def workspace_bytes(module: Any) -> int:
    """Bytes of a frontend's CPU workspace (0 without one): its buffers live from step to step, so the profiler sees
    no allocation of them in a warm step, but the step uses them all."""
    workspace = _workspace(module)
    return int(workspace.nbytes) if workspace is not None else 0


def peak_cuda_bytes(step: Callable[[], Any], device: torch.device) -> int:
    """Peak CUDA bytes allocated during one ``step`` above what was allocated before it."""
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    step()
    _sync(device)
    return int(torch.cuda.max_memory_allocated(device) - base)


def _module_step(fe: torch.nn.Module, wave: torch.Tensor, sr: torch.Tensor, lengths: torch.Tensor,
                 n_tokens: list[int]) -> Callable[[], None]:
    def step() -> None:
        out = fe(wave, sr, lengths)
        loss = out.tokens.float().square().mean()
        for v in out.aux_losses.values():
            loss = loss + v.float()
        loss.backward()
        n_tokens[:] = [int(out.tokens.shape[1])]
        # Fresh gradient buffers each step, as with optimizer.zero_grad(), freed inside the step: a step then starts
        # with no tensor of an earlier one left to free (whose frees the memory profiler would count against it).
        fe.zero_grad(set_to_none=True)

    return step


def _bare_step(cfg: FrontendConfig, wave: torch.Tensor, sr: torch.Tensor, lengths: torch.Tensor,
               n_tokens: list[int]) -> Callable[[], None]:
    def step() -> None:
        leaf = wave.detach().requires_grad_(True)
        lm = bare_log_mel(leaf, sr, lengths, cfg)
        lm.sum().backward()
        n_tokens[:] = [int(lm.shape[2])]

    return step


def _parse_list(text: str | list | tuple, cast: Callable[[str], Any]) -> list:
    if isinstance(text, (list, tuple)):
        return [cast(v) for v in text]
    return [cast(v.strip()) for v in str(text).split(",") if v.strip()]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark, print it (JSON if ``args.json`` else a table), and return the result dict.

    Reads ``args.batch`` (int), ``args.seconds`` (float), ``args.rates`` ("8000,16000" or a list of ints),
    ``args.repeats`` (int), ``args.device`` ("cpu", "cuda" or None = auto), ``args.json`` (bool), and optionally
    ``args.frontends`` (comma list, default all), ``args.seed`` (int, default 0), ``args.quiet`` (bool: do not
    print). Returns ``{"benchmark", "machine", "settings", "rows"}``; each row has ``sample_rate``, ``frontend``,
    ``tokens_per_clip``, ``time_ms`` (median), ``times_ms``, ``ratio_to_heterodyne``, ``peak_mem_mb``, ``params``
    and ``error`` (None, or the exception text when that frontend failed at that rate).
    """
    batch = int(getattr(args, "batch", 4))
    seconds = float(getattr(args, "seconds", 3.0))
    rates = _parse_list(getattr(args, "rates", "8000,16000,48000,96000"), int)
    repeats = max(1, int(getattr(args, "repeats", 5)))
    seed = int(getattr(args, "seed", 0) or 0)
    names = _parse_list(getattr(args, "frontends", None) or ",".join(FRONTENDS), str)
    unknown = [n for n in names if n not in FRONTENDS]
    if unknown:
        raise ValueError(f"unknown frontend(s) {unknown}; choose from {list(FRONTENDS)}")
    dev_name = getattr(args, "device", None) or ("cuda" if torch.cuda.is_available() else "cpu")
    if dev_name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but torch.cuda.is_available() is False")
    device = torch.device(dev_name)

    base_cfg = FrontendConfig()
    modules: dict[str, torch.nn.Module | None] = {}
    build_errors: dict[str, str] = {}
    for name in names:
        if name == "bare_logmel":
            continue
        try:
            torch.manual_seed(seed)
            modules[name] = build_frontend(bench_config(base_cfg, name)).to(device).train()
        except Exception as exc:  # a frontend that cannot be built is reported, the others still run
            modules[name] = None
            build_errors[name] = f"{type(exc).__name__}: {exc}"

    rows: list[dict[str, Any]] = []
    for rate in rates:
        wave = torch.from_numpy(make_batch(batch, seconds, rate, seed)).to(device)
        sr = torch.full((batch,), rate, dtype=torch.long, device=device)
        lengths = torch.full((batch,), wave.shape[1], dtype=torch.long, device=device)
        rate_rows = []
        for module in modules.values():  # each rate's workspace its own (it keeps the largest batch it has seen)
            workspace = _workspace(module)
            if workspace is not None:
                workspace.release()
        steps: dict[str, Callable[[], None]] = {}
        tokens: dict[str, list[int]] = {}
        for name in names:
            row: dict[str, Any] = {"sample_rate": rate, "frontend": name, "tokens_per_clip": None, "time_ms": None,
                                   "times_ms": [], "ratio_to_heterodyne": None, "peak_mem_mb": None,
                                   "params": None, "error": build_errors.get(name)}
            rate_rows.append(row)
            if row["error"] is not None:
                continue
            tokens[name] = []
            if name == "bare_logmel":
                steps[name] = _bare_step(base_cfg, wave, sr, lengths, tokens[name])
                row["params"] = 0
            else:
                fe = modules[name]
                steps[name] = _module_step(fe, wave, sr, lengths, tokens[name])
                row["params"] = sum(p.numel() for p in fe.parameters())
        # Every frontend's steps in turn: the ratios are taken under the same machine conditions.
        times, errors = time_steps_interleaved(steps, device, repeats, warmup=1)
        for row in rate_rows:
            name = row["frontend"]
            if name not in steps:
                continue
            if name in errors:
                row["error"] = errors[name]
                continue
            try:
                peak = peak_cuda_bytes(steps[name], device) if device.type == "cuda" else \
                    peak_cpu_bytes_from_profiler(steps[name])
                if peak is not None and device.type == "cpu":
                    peak += workspace_bytes(modules.get(name))
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            row["times_ms"] = [1e3 * t for t in times[name]]
            row["time_ms"] = 1e3 * statistics.median(times[name])
            row["peak_mem_mb"] = None if peak is None else peak / 2**20
            row["tokens_per_clip"] = tokens[name][0] if tokens[name] else None
        ref = next((r for r in rate_rows if r["frontend"] == REFERENCE and r["time_ms"]), None)
        for r in rate_rows:
            if ref is not None and r["time_ms"] is not None:
                r["ratio_to_heterodyne"] = r["time_ms"] / ref["time_ms"]
        rows.extend(rate_rows)

    result = {
        "benchmark": "frontend",
        "machine": describe_machine(dev_name),
        "settings": {
            "device": dev_name,
            "batch": batch,
            "seconds": seconds,
            "rates": rates,
            "repeats": repeats,
            "warmup": 1,
            "seed": seed,
            "frontends": names,
            "dim": base_cfg.dim,
            "token_rate": base_cfg.token_rate,
            "step": "forward + backward of tokens.square().mean() + aux losses (bare_logmel: log-mel sum, "
                    "grad w.r.t. the wave); median wall time",
            "memory": ("torch.cuda.max_memory_allocated above the pre-step allocation" if device.type == "cuda"
                       else "peak live tensor bytes from torch.profiler memory events (profile_memory=True)"),
        },
        "rows": rows,
    }
    if not getattr(args, "quiet", False):
        print(json.dumps(result, indent=2) if getattr(args, "json", False) else format_table(result))
    return result


# ---------------------------------------------------------------------------------------------------- reporting


def _fmt(v: Any, spec: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(v, spec)


def _cells(row: dict[str, Any]) -> list[str]:
    return [
        str(row["sample_rate"]),
        row["frontend"],
        _fmt(row["tokens_per_clip"], "d"),
        _fmt(row["time_ms"], ".1f"),
        _fmt(row["ratio_to_heterodyne"], ".2f"),
        _fmt(row["peak_mem_mb"], ".1f"),
    ]


_HEADER = ["rate Hz", "frontend", "tokens/clip", "fwd+bwd ms", "x heterodyne", "peak MB"]


def _machine_line(result: dict[str, Any]) -> str:
    m, s = result["machine"], result["settings"]
    dev = f"CUDA {m['cuda_device']}" if s["device"] == "cuda" else f"CPU {m['cpu']}"
    return (f"{dev}; {m['cpu_cores']} cores, {m['torch_threads']} torch threads; torch {m['torch']}; "
            f"batch {s['batch']} x {s['seconds']:g} s, median of {s['repeats']} after {s['warmup']} warm-up")


def format_table(result: dict[str, Any]) -> str:
    """Plain-text table of :func:`run`'s result (aligned columns), with the machine line and any errors."""
    body = [_cells(r) for r in result["rows"]]
    widths = [max(len(h), *(len(c[i]) for c in body)) if body else len(h) for i, h in enumerate(_HEADER)]
    line = lambda cells: "  ".join(c.rjust(w) if i != 1 else c.ljust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    out = [_machine_line(result), f"memory: {result['settings']['memory']}", "", line(_HEADER),
           line(["-" * w for w in widths])]
    out += [line(c) for c in body]
    errors = [f"  {r['sample_rate']} Hz {r['frontend']}: {r['error']}" for r in result["rows"] if r["error"]]
    if errors:
        out += ["", "errors:"] + errors
    return "\n".join(out)


def format_markdown(result: dict[str, Any]) -> str:
    """Markdown section for BENCHMARKS.md: machine/settings line, a table (one row per rate x frontend), notes."""
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    out = [
        f"**Machine:** {esc(_machine_line(result))}.",
        "",
        f"**Memory:** {esc(result['settings']['memory'])}.",
        "",
        "| " + " | ".join(_HEADER) + " |",
        "|" + "|".join(["---:", ":---", "---:", "---:", "---:", "---:"]) + "|",
    ]
    out += ["| " + " | ".join(esc(c) for c in _cells(r)) + " |" for r in result["rows"]]
    errors = [f"- {r['sample_rate']} Hz `{r['frontend']}`: {esc(r['error'])}" for r in result["rows"] if r["error"]]
    if errors:
        out += ["", "Failed cells:", ""] + errors
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Stand-alone entry (``python -m a2v_het.bench.frontend``) until the CLI wires it in."""
    parser = argparse.ArgumentParser(prog="a2v-het bench frontend", description=__doc__.split("\n")[0])
    add_args(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    main()

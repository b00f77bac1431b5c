"""``a2v-het``: the command line.

    a2v-het pretrain RECIPE [key=value ...]        train (or resume) the recipe; the run folder is train.run_dir
                                                   (the synthetic shards a recipe names are written first: make_data)
    a2v-het launch RECIPE --nodes N --gpus-per-node G [...] [key=value ...]   the same job through submitit
    a2v-het coverage --checkpoint C --data DIR     the heterodyne frontend's coverage table by sample rate
                     [--picker NAME]               ... or of its untrained start or a non-learned picker
    a2v-het export RUN_DIR OUT                     safetensors + config of the latest checkpoint, for fine-tuning
    a2v-het finetune RECIPE [key=value ...]        fine-tune a call detector (finetune.init=EXPORT or scratch)
    a2v-het evaluate --checkpoint C --data DIR     frame mAP, event P/R/F1 (IoU and collar rules), PR-curve PNGs
    a2v-het predict --checkpoint C IN... --out D   long recordings -> Raven Pro selection tables + events.csv
    a2v-het embed --checkpoint C IN... --out D     frozen per-window embeddings (.npy) + index.csv
    a2v-het probe --embeddings D --labels CSV      logistic-regression probe: accuracy, macro F1, mAP per class
    a2v-het bench frontend [--json]                frontends side by side: time, memory, tokens
    a2v-het bench step [--json]                    training step, heterodyne vs conv frontend, same encoder
    a2v-het bench data [--json]                    loader audio s/s per worker (shard -> batch), sharding h/min
    a2v-het bench infer [--json]                   predict / embed throughput (audio h per wall h)
    a2v-het bench probe --checkpoint NAME=C ...    probe table: pretrained vs random init, synthetic + pykanto
    a2v-het bench gpu [--device cuda|cpu]          the GPU check: smoke bf16, 2-rank NCCL, bench step/frontend
    a2v-het bench pickers --data DIR [--checkpoint C ...]   every band picker's coverage by sample rate
"""

from __future__ import annotations

import argparse
import json
import sys

from a2v_het.bench import data as bench_data
from a2v_het.bench import frontend as bench_frontend
from a2v_het.bench import gpu as bench_gpu
from a2v_het.bench import infer as bench_infer
from a2v_het.bench import pickers as bench_pickers
from a2v_het.bench import probe as bench_probe
from a2v_het.bench import step as bench_step
from a2v_het.bench import zoo as bench_zoo
from a2v_het.config import ConfigError, load_config
from a2v_het.eval import embed as embed_cmd
from a2v_het.eval import evaluate as evaluate_cmd
from a2v_het.eval import predict as predict_cmd
from a2v_het.eval import probe as probe_cmd
from a2v_het.eval.coverage import coverage_report, format_table, load_frontend
from a2v_het.eval.pickers import PICKERS, build_picker
from a2v_het.frontend import FrontendConfig, build_frontend
from a2v_het.recipe import FinetuneConfig, PretrainConfig
from a2v_het.train import finetune as finetune_cmd
from a2v_het.train import launch, preemption
from a2v_het.train.distributed import default_to_cpu_accelerator, dist_env_from
from a2v_het.train.export import export_run
from a2v_het.train.loop import eval_shards, main_from_cli


def make_data(cfg, is_main: bool | None = None) -> bool:
    """The data step before training: the synthetic shards a recipe names (``data.synthesize_if_missing``: train at
    ``data.shards``, eval at unseen rates beside it, see :func:`a2v_het.train.loop.eval_shards`) where they are
    missing, written by :func:`data_tools.synth.ensure_synth_shards`; nothing for any other recipe. Every rank of a
    job runs it (srun tasks, torchrun): rank 0 writes, the others wait for the manifests (``is_main``: None = from
    the rank variables). The training loop itself writes no data.

    A SIGUSR2/SIGTERM that comes meanwhile does not kill the writer (the loop's flag-setting handlers are in place);
    the step finishes, then nothing trains and rank 0 asks SLURM for the requeue, as the loop would. Returns False
    then (stop), else True."""
    # lazy: data_tools.synth (+80 ms: scipy.signal) is only for pretrain / finetune / launch, not every command
    from data_tools.synth import ensure_synth_shards

    d = cfg.data
    if not d.synthesize_if_missing:
        return True
    is_main = dist_env_from().is_main if is_main is None else is_main
    preemption.install_handlers()
    try:
        ensure_synth_shards(d.shards, eval_shards(cfg), d.synth_preset, d.synth_clips, d.synth_eval_clips,
                            d.synth_sample_rates, d.synth_eval_sample_rates, d.duration_s, seed=d.synth_seed,
                            train_split=d.train_split, eval_split=d.eval_split, is_main=is_main)
    finally:
        preemption.restore_handlers()  # the loop installs its own (one call per run)
    if preemption.stop_requested():
        print(f"[a2v-het] stopped by {preemption.stop_reason()} while writing the data, before training", flush=True)
        preemption.requeue_if_preempted(is_main)
        return False
    return True


def _cmd_pretrain(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(PretrainConfig, args.recipe, args.overrides)
        cfg.validate()
        if not make_data(cfg):
            return 0
        run_dir = main_from_cli(args.recipe, args.overrides)
    except ConfigError as e:
        print(f"a2v-het pretrain: {e}", file=sys.stderr)
        return 2
    print(f"[a2v-het] run folder: {run_dir}")
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    try:  # the data section is the recipe's own (an init export replaces only model and frontend)
        cfg = load_config(FinetuneConfig, args.recipe, args.overrides)
    except ConfigError as e:
        print(f"a2v-het finetune: {e}", file=sys.stderr)
        return 2
    if not make_data(cfg):
        return 0
    return finetune_cmd.run(args)


def _cmd_launch(args: argparse.Namespace) -> int:
    # at submission, in this one process: the job's ranks (submitit) find the data in place
    return launch.run(args, prepare=lambda cfg: make_data(cfg, is_main=True))


def _hz_range(text: str) -> tuple[float, float]:
    try:
        low, high = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH in Hz (e.g. 15000,120000), got {text!r}") from None
    if not 0 <= low < high:
        raise argparse.ArgumentTypeError(f"expected 0 <= LOW < HIGH, got {low:g},{high:g}")
    return low, high


def _cmd_coverage(args: argparse.Namespace) -> int:
    if args.checkpoint is None and args.picker == "learned":
        print("a2v-het coverage: --picker learned needs --checkpoint (or --picker untrained for the default "
              "config's untrained start)", file=sys.stderr)
        return 2
    # Without a checkpoint: the default heterodyne config (K, widths, gamma, statistics), fresh weights.
    frontend = load_frontend(args.checkpoint)[0] if args.checkpoint else build_frontend(FrontendConfig()).eval()
    frontend = build_picker(args.picker, frontend, seed=args.seed)
    report = coverage_report(frontend, args.data, args.split, batch_size=args.batch_size,
                             plot_dir=args.plot_dir, plot_tag=args.plot_tag, num_workers=args.num_workers,
                             progress=not args.json, transient_hz=args.transient_hz)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_table(report))
        if "plots" in report:
            print("plots: " + ", ".join(report["plots"].values()))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    out = export_run(args.run_dir, args.out)
    print(f"[a2v-het] exported to {out}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    args.bench_run(args)  # prints its own table (or JSON with --json)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="a2v-het", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    pt = sub.add_parser("pretrain", help="train or resume a recipe")
    pt.add_argument("recipe", help="YAML recipe (overrides of the defaults), e.g. recipes/smoke.yaml")
    pt.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=100")
    pt.set_defaults(func=_cmd_pretrain)

    cv = sub.add_parser("coverage", help="coverage table of a heterodyne checkpoint on a shard folder")
    cv.add_argument("--checkpoint", default=None,
                    help="run folder (uses its latest checkpoint) or export folder; optional for non-learned pickers")
    cv.add_argument("--picker", choices=PICKERS, default="learned",
                    help="learned (the checkpoint's), untrained (same config, fresh weights) or a non-learned baseline")
    cv.add_argument("--seed", type=int, default=0, help="seed of the untrained and random pickers")
    cv.add_argument("--data", required=True, help="shard folder with manifest.json")
    cv.add_argument("--split", default="val")
    cv.add_argument("--batch-size", type=int, default=16)
    cv.add_argument("--num-workers", type=int, default=0)
    cv.add_argument("--plot-dir", default=None, help="write bands/coverage PNGs here")
    cv.add_argument("--plot-tag", default="coverage")
    cv.add_argument("--transient-hz", type=_hz_range, default=None, metavar="LOW,HIGH",
                    help="also report the share of each clip's transient energy in LOW-HIGH Hz inside the bands "
                         "(for recordings without annotations; bats: 15000,120000)")
    cv.add_argument("--json", action="store_true")
    cv.set_defaults(func=_cmd_coverage)

    la = sub.add_parser("launch", help="submit a recipe to SLURM through submitit (requeued on time-out and preemption)")
    launch.add_args(la)
    la.set_defaults(func=_cmd_launch)

    ft = sub.add_parser("finetune", help="fine-tune a call detector (frame-level multi-label) through the training loop")
    finetune_cmd.add_args(ft)
    ft.set_defaults(func=_cmd_finetune)

    ev = sub.add_parser("evaluate", help="frame mAP + event P/R/F1 of a fine-tuned detector (thresholds tuned on val)")
    evaluate_cmd.add_args(ev)
    ev.set_defaults(func=evaluate_cmd.run)

    pr = sub.add_parser("predict", help="detect calls in long recordings -> Raven selection tables + events.csv")
    predict_cmd.add_args(pr)
    pr.set_defaults(func=predict_cmd.run)

    em = sub.add_parser("embed", help="frozen embeddings of recordings -> DIR/embeddings/*.npy + index.csv")
    embed_cmd.add_args(em)
    em.set_defaults(func=embed_cmd.run)

    pb = sub.add_parser("probe", help="logistic-regression probe on frozen embeddings (accuracy, macro F1, mAP)")
    probe_cmd.add_args(pb)
    pb.set_defaults(func=probe_cmd.run)

    ex = sub.add_parser("export", help="export the latest checkpoint of a run as safetensors + config")
    ex.add_argument("run_dir")
    ex.add_argument("out")
    ex.set_defaults(func=_cmd_export)

    bench = sub.add_parser("bench", help="benchmarks")
    bsub = bench.add_subparsers(dest="bench", required=True)
    bf = bsub.add_parser("frontend", help="frontends side by side: fwd+bwd time, peak memory, tokens per clip")
    bench_frontend.add_args(bf)
    bf.set_defaults(func=_cmd_bench, bench_run=bench_frontend.run)

    bs = bsub.add_parser("step", help="data2vec training step: heterodyne vs conv frontend, same encoder")
    bench_step.add_args(bs)
    bs.set_defaults(func=_cmd_bench, bench_run=bench_step.run)

    bd = bsub.add_parser("data", help="data loading: shard -> batch audio s/s per worker; sharding rate in h/min")
    bench_data.add_args(bd)
    bd.set_defaults(func=_cmd_bench, bench_run=bench_data.run)

    bz = bsub.add_parser("zoo", help="every frontend, same budget: pretraining loss, fine-tuned event F1 at seen and "
                                     "unseen sample rates")
    bench_zoo.add_args(bz)
    bz.set_defaults(func=_cmd_bench, bench_run=bench_zoo.run)

    bi = bsub.add_parser("infer", help="predict and embed throughput: audio hours per wall hour, per model size")
    bench_infer.add_args(bi)
    bi.set_defaults(func=_cmd_bench, bench_run=bench_infer.run)

    bp2 = bsub.add_parser("probe", help="linear probes of frozen embeddings (synthetic call types, pykanto) per "
                                        "checkpoint and at random init")
    bench_probe.add_args(bp2)
    bp2.set_defaults(func=_cmd_bench, bench_run=bench_probe.run)

    bg = bsub.add_parser("gpu", help="the GPU check: smoke recipe in bf16, 2-rank NCCL, bench step and frontend on the "
                                     "device, one table (--device cpu: the dry run)")
    bench_gpu.add_args(bg)
    bg.set_defaults(func=bench_gpu.cli)

    bp = bsub.add_parser("pickers", help="every band picker (learned, untrained, non-learned baselines): All Cov by "
                                         "sample rate on the same clips")
    bench_pickers.add_args(bp)
    bp.set_defaults(func=_cmd_bench, bench_run=bench_pickers.run)
    return p


def main(argv: list[str] | None = None) -> int:
    default_to_cpu_accelerator()
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

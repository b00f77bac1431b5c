"""``a2v-het bench gpu --device cpu``: the dry run of the GPU check, so the command works the day a GPU is lent.
The smoke run goes through the real CLI subprocess (DeepSpeed on the CPU accelerator, gloo) in bf16."""

import argparse

import pytest

from a2v_het.bench import gpu as bench_gpu

@pytest.mark.slow
def test_bench_gpu_dry_run_on_cpu(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    bench_gpu.add_args(parser)
    result = bench_gpu.run(parser.parse_args(["--device", "cpu", "--out", str(tmp_path)]))
    checks = result["checks"]
    assert result["ok"], checks
    smoke = checks[0]
    assert smoke["ok"] and smoke["steps"] == 2 and smoke["bf16_steps"] == 2, smoke  # bf16 inside the encoder
    assert checks[1]["ok"] is None and "skipped" in checks[1]["detail"]  # no NCCL row without 2 GPUs
    assert checks[2]["ok"] and "heterodyne 8 kHz" in checks[2]["detail"]
    assert checks[3]["ok"] and "2/2 cells timed" in checks[3]["detail"]
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 4 and "| pass |" in table[2] and "| skipped |" in table[3]


@pytest.mark.parametrize("argv", [["bench", "gpu", "--device", "cpu"], ["bench", "gpu"]])
def test_bench_gpu_is_wired_into_the_cli(argv):
    from a2v_het.cli import build_parser

    args = build_parser().parse_args(argv)
    assert args.func is bench_gpu.cli and args.device in (None, "cpu")

"""Who am I in the job, without a cluster: rank variables from torchrun, SLURM (srun tasks) and submitit
environments, SLURM nodelists, the preemption handlers, the submitit job object, and the USR2 path of a real
one-process CPU training run (checkpoint at the next step, exit 0, the rerun continues the step count)."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from a2v_het.train import preemption
from a2v_het.train.distributed import (dist_env_from, expand_nodelist, first_slurm_host, rank_variables, slurm_port,
                                       submitit_port, visible_device_index)

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "recipes" / "smoke.yaml"


# ----------------------------------------------------------------------------------------------- rank variables

def srun_task(procid: int, ntasks: int, localid: int, nodelist: str, job_id: str = "4242", **extra) -> dict:
    """What srun puts into each task's environment (the variables distributed.py reads)."""
    env = {"SLURM_JOB_ID": job_id, "SLURM_PROCID": str(procid), "SLURM_NTASKS": str(ntasks),
           "SLURM_STEP_NUM_TASKS": str(ntasks), "SLURM_LOCALID": str(localid), "SLURM_STEP_ID": "0",
           "SLURM_JOB_NODELIST": nodelist, "SLURM_STEP_NODELIST": nodelist, "SLURM_NODEID": "0"}
    env.update(extra)
    return env


def test_single_process_without_any_launcher():
    d = dist_env_from({})
    assert (d.rank, d.world_size, d.local_rank, d.source, d.is_main) == (0, 1, 0, "single", True)
    assert d.master_addr == "127.0.0.1" and 0 < d.master_port < 65536


def test_one_visible_gpu_per_task_binds_device_0_on_every_rank():
    """SLURM GPU binding: 4 tasks on a node, each sees only its own GPU (CUDA_VISIBLE_DEVICES=<one id>, so the
    device count is 1). DeepSpeed calls set_device(LOCAL_RANK): the exported LOCAL_RANK must be 0 on every task,
    not the task's SLURM_LOCALID."""
    for localid in range(4):
        env = srun_task(localid, 4, localid, "gpu01", CUDA_VISIBLE_DEVICES=str(localid))
        dist = dist_env_from(env)
        assert dist.local_rank == localid
        device_count = len(env["CUDA_VISIBLE_DEVICES"].split(","))  # what torch.cuda.device_count() reports
        assert rank_variables(dist, device_count)["LOCAL_RANK"] == "0"
    # all 4 GPUs visible to every task: the local rank is the device index
    assert [visible_device_index(r, 4) for r in range(4)] == [0, 1, 2, 3]
    assert [visible_device_index(r, 2) for r in range(4)] == [0, 1, 0, 1]
    assert visible_device_index(3, 0) == 3  # CPU: unchanged


def test_torchrun_variables():
    d = dist_env_from({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "h0", "MASTER_PORT": "29511"})
    assert (d.rank, d.world_size, d.local_rank, d.master_addr, d.master_port, d.source) == \
        (3, 8, 1, "h0", 29511, "torchrun")
    assert not d.is_main


def test_torchrun_wins_over_slurm():
    env = srun_task(1, 2, 1, "n[1-2]")
    env.update(RANK="5", WORLD_SIZE="6", MASTER_ADDR="x", MASTER_PORT="1234")
    assert dist_env_from(env).source == "torchrun"


def test_srun_tasks_on_two_nodes():
    nodelist = "gpu[07-08]"
    ranks = [dist_env_from(srun_task(p, 8, p % 4, nodelist, SLURM_NODEID=str(p // 4))) for p in range(8)]
    assert [d.rank for d in ranks] == list(range(8))
    assert [d.local_rank for d in ranks] == [0, 1, 2, 3] * 2
    assert {d.world_size for d in ranks} == {8}
    assert {d.master_addr for d in ranks} == {"gpu07"}  # rank 0 runs on the first host of the nodelist
    assert {d.master_port for d in ranks} == {slurm_port("4242")}
    assert {d.source for d in ranks} == {"slurm"}


def test_srun_uses_what_pretrain_sh_exports():
    d = dist_env_from(srun_task(1, 2, 1, "n[1-2]", MASTER_ADDR="n1", MASTER_PORT="15999"))
    assert (d.master_addr, d.master_port) == ("n1", 15999)


def test_pretrain_sh_port_formula_matches_distributed_py():
    text = (ROOT / "slurm" / "pretrain.sh").read_text()
    assert "MASTER_PORT=$((15000 + SLURM_JOB_ID % 17000))" in text
    for job in ("1", "16999", "17000", "123456789"):
        assert slurm_port(job) == 15000 + int(job) % 17000 < 32768  # below Linux's ephemeral range


def test_batch_shell_is_one_process_not_a_rank_of_many():
    """The batch script runs outside any srun step: SLURM_NTASKS=4 there must not make it wait for 3 peers."""
    env = srun_task(0, 4, 0, "n1")
    for k in ("SLURM_STEP_ID", "SLURM_STEP_NUM_TASKS", "SLURM_STEP_NODELIST"):
        env.pop(k)
    assert dist_env_from(env).source == "single"


def test_one_task_srun_is_single():
    assert dist_env_from(srun_task(0, 1, 0, "n1")).source == "single"


def submitit_task(procid: int, ntasks: int, localid: int, nodelist: str, job_id: str = "777", **extra) -> dict:
    env = srun_task(procid, ntasks, localid, nodelist, job_id, SUBMITIT_EXECUTOR="slurm",
                    SLURM_JOB_NUM_NODES=str(len(expand_nodelist(nodelist))), **extra)
    return env


def test_submitit_variables_match_submitits_own(monkeypatch):
    """What dist_env_from computes for a submitit task equals submitit's TorchDistributedEnvironment."""
    import submitit

    env = submitit_task(3, 4, 1, "a[3-4]", job_id="91")
    d = dist_env_from(env)
    assert (d.rank, d.world_size, d.local_rank, d.master_addr, d.source) == (3, 4, 1, "a3", "submitit")
    for k in list(os.environ):
        if k.startswith(("SLURM_", "SUBMITIT_")) or k in ("MASTER_PORT", "MASTER_ADDR", "RANK", "WORLD_SIZE"):
            monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    ref = submitit.helpers.TorchDistributedEnvironment()
    assert (ref.rank, ref.world_size, ref.local_rank, ref.master_addr, ref.master_port) == \
        (d.rank, d.world_size, d.local_rank, d.master_addr, d.master_port)
    assert d.master_port == submitit_port("91")


def test_submitit_array_job_port_and_explicit_port():
    array = submitit_task(0, 2, 0, "n1", job_id="100", SLURM_ARRAY_JOB_ID="99", SLURM_ARRAY_TASK_ID="3")
    assert dist_env_from(array).master_port == submitit_port("99_3")
    assert dist_env_from(submitit_task(0, 2, 0, "n1", MASTER_PORT="23456")).master_port == 23456


def test_submitit_local_executor():
    env = {"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_GLOBALID": "1", "SUBMITIT_LOCAL_NTASKS": "2",
           "SUBMITIT_LOCAL_LOCALID": "1", "SUBMITIT_LOCAL_JOB_ID": "555"}
    d = dist_env_from(env)
    assert (d.rank, d.world_size, d.local_rank, d.master_addr, d.source) == (1, 2, 1, "127.0.0.1", "submitit")
    assert d.master_port == submitit_port("555")


# ----------------------------------------------------------------------------------------------- nodelists

@pytest.mark.parametrize("nodelist, hosts", [
    ("n[01-04],m1", ["n01", "n02", "n03", "n04", "m1"]),
    ("node7", ["node7"]),
    ("n[1,3-4]", ["n1", "n3", "n4"]),
    ("gpu-a[1-2],cpu[009-011]", ["gpu-a1", "gpu-a2", "cpu009", "cpu010", "cpu011"]),
    ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
    ("m1,n[01-02]", ["m1", "n01", "n02"]),
    ("n[098-101]", ["n098", "n099", "n100", "n101"]),
])
def test_expand_nodelist(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts
    assert first_slurm_host(nodelist) == hosts[0]
    if shutil.which("scontrol"):  # the reference, where SLURM is installed
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30)
        if out.returncode == 0:
            assert out.stdout.split() == hosts


def test_expand_nodelist_agrees_with_submitit():
    from submitit.slurm.slurm import _parse_node_list

    for nodelist in ("n[01-04],m1", "n[1,3-4]", "gpu-a[1-2],cpu[009-011]", "m1,n[01-02]"):
        assert expand_nodelist(nodelist) == _parse_node_list(nodelist)


@pytest.mark.parametrize("bad", ["n[1-2", "n1-2]", "n[a-b]", "n[3-1]"])
def test_bad_nodelist_is_an_error(bad):
    with pytest.raises(ValueError):
        expand_nodelist(bad)


# ----------------------------------------------------------------------------------------------- handlers

@pytest.fixture
def clean_signals():
    saved = {sig: signal.getsignal(sig) for sig in preemption.STOP_SIGNALS}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)
    preemption._STATE.update(flag=False, signal=None, previous={})


def test_usr2_sets_the_flag_and_nothing_else(clean_signals):
    preemption.install_handlers()
    assert not preemption.stop_requested()
    os.kill(os.getpid(), signal.SIGUSR2)
    time.sleep(0.05)
    assert preemption.stop_requested() and preemption.stop_reason() == "signal SIGUSR2"
    os.kill(os.getpid(), signal.SIGTERM)  # the kill that may follow: still a USR2 stop (requeue wanted)
    time.sleep(0.05)
    assert preemption.stop_signal() == signal.SIGUSR2
    preemption.install_handlers()  # a new run starts clean
    assert not preemption.stop_requested() and preemption.stop_reason() == "time/step limit"


def test_sbatch_job_rank0_requeues_after_the_save(clean_signals, monkeypatch):
    calls = []
    monkeypatch.setattr(preemption.subprocess, "run",
                        lambda cmd, **kw: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0, "", ""))
    monkeypatch.setenv("SLURM_JOB_ID", "31")
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    preemption.install_handlers()
    assert not preemption.requeue_if_preempted(True)  # no signal: nothing
    os.kill(os.getpid(), signal.SIGUSR2)
    time.sleep(0.05)
    assert not preemption.requeue_if_preempted(False)  # other ranks: nothing
    assert preemption.requeue_if_preempted(True)
    assert calls == [["scontrol", "requeue", "31"]]


def test_sigterm_stops_without_requeue(clean_signals, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "31")
    monkeypatch.setattr(preemption.subprocess, "run", lambda *a, **k: pytest.fail("must not requeue"))
    preemption.install_handlers()
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.05)
    assert preemption.stop_requested() and not preemption.requeue_if_preempted(True)


def test_submitit_handler_runs_only_after_the_save_and_only_on_rank0(clean_signals, monkeypatch):
    """submitit's handler is kept, not called by the signal; rank 0 calls it from requeue_if_preempted."""
    called = []

    class SignalHandler:  # stands in for submitit.core.job_environment.SignalHandler
        def checkpoint_and_try_requeue(self, signum, frame=None):
            called.append(signum)

    signal.signal(signal.SIGUSR2, SignalHandler().checkpoint_and_try_requeue)
    monkeypatch.setenv("SLURM_JOB_ID", "32")
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.setattr(preemption.subprocess, "run", lambda *a, **k: pytest.fail("submitit requeues, not us"))
    preemption.install_handlers()
    os.kill(os.getpid(), signal.SIGUSR2)
    time.sleep(0.05)
    assert called == [] and preemption.stop_requested()
    preemption.requeue_if_preempted(False)
    assert called == []
    preemption.requeue_if_preempted(True)
    assert called == [signal.SIGUSR2]
    preemption.restore_handlers()
    assert getattr(signal.getsignal(signal.SIGUSR2), "__name__", "") == "checkpoint_and_try_requeue"


# ----------------------------------------------------------------------------------------------- launch

def test_pretrain_job_is_checkpointable(tmp_path):
    import submitit
    from submitit.core.utils import DelayedSubmission

    from a2v_het.train.launch import PretrainJob

    job = PretrainJob("recipes/smoke.yaml", ["train.max_steps=3"], str(tmp_path))
    assert isinstance(job, submitit.helpers.Checkpointable)
    again = job.checkpoint()
    assert isinstance(again, DelayedSubmission) and again.function is job
    restored = pickle.loads(pickle.dumps(job))
    assert (restored.recipe, restored.overrides, restored.workdir) == (job.recipe, job.overrides, job.workdir)


@pytest.mark.parametrize("latest_step, waits", [(3, False), (2, True)])
def test_other_ranks_wait_for_the_requeue_only_when_unfinished(latest_step, waits, tmp_path, monkeypatch,
                                                                clean_signals):
    """Rank != 0 after a USR2 stop in a submitit job: rank 0 is requeueing, so it must not report a result; but a
    run that reached max_steps as the signal came is finished and nobody requeues."""
    from a2v_het.train import launch, loop

    monkeypatch.chdir(tmp_path)  # __call__ changes into the submit folder; monkeypatch restores the cwd
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints" / f"step_{latest_step:08d}").mkdir(parents=True)
    (run_dir / "checkpoints" / f"step_{latest_step:08d}" / "COMPLETE").write_text("{}")
    (run_dir / "checkpoints" / "latest").write_text(f"step_{latest_step:08d}\n")
    monkeypatch.setattr(loop, "main_from_cli", lambda recipe, overrides: run_dir)
    waited = []
    monkeypatch.setattr(launch, "_wait_for_requeue", lambda p: waited.append(True))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.setenv("SLURM_JOB_ID", "5")
    preemption._STATE.update(flag=True, signal=signal.SIGUSR2)
    result = launch.PretrainJob(str(SMOKE), ["train.max_steps=3"], str(tmp_path))()
    assert waited == ([True] if waits else [])
    assert result["step"] == latest_step and result["finished"] == (not waits)


def test_launch_options_may_follow_the_recipe(monkeypatch):
    import argparse

    from a2v_het.train import launch

    seen = {}
    monkeypatch.setattr(launch, "launch", lambda args, prepare=None: seen.update(vars(args)) or 0)
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    la = sub.add_parser("launch")
    launch.add_args(la)
    la.set_defaults(func=launch.run)
    args = parser.parse_args(["launch", "recipes/meerkat.yaml", "--nodes", "2", "train.max_steps=9",
                              "--gpus-per-node", "8", "optim.lr=1e-4", "--partition", "gpu"])
    assert args.func(args) == 0
    assert seen["recipe"] == "recipes/meerkat.yaml" and seen["overrides"] == ["train.max_steps=9", "optim.lr=1e-4"]
    assert (seen["nodes"], seen["gpus_per_node"], seen["partition"]) == (2, 8, "gpu")
    params = launch.executor_parameters(argparse.Namespace(**seen), "a2v-x")
    assert params["tasks_per_node"] == 8 and params["gpus_per_node"] == 8 and params["slurm_partition"] == "gpu"
    cpu = launch.executor_parameters(argparse.Namespace(**{**seen, "gpus_per_node": 0}), "a2v-x")
    assert cpu["tasks_per_node"] == 1 and "gpus_per_node" not in cpu


# ----------------------------------------------------------------------------------------------- the data step

def _smoke_cfg(tmp_path, *extra):
    from a2v_het.config import load_config
    from a2v_het.recipe import PretrainConfig

    return load_config(PretrainConfig, str(SMOKE), [f"data.shards={tmp_path / 'synth'}", "data.synth_clips=2",
                                                     "data.synth_eval_clips=2", "data.duration_s=0.5", *extra])


def test_cli_data_step_writes_the_recipes_synthetic_shards(tmp_path, monkeypatch, clean_signals):
    from a2v_het import cli

    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "SLURM_PROCID", "SLURM_STEP_ID", "SUBMITIT_EXECUTOR"):
        monkeypatch.delenv(k, raising=False)
    assert cli.make_data(_smoke_cfg(tmp_path, "data.synthesize_if_missing=false"))
    assert not (tmp_path / "synth").exists()  # a recipe without synthesize_if_missing: nothing written
    assert cli.make_data(_smoke_cfg(tmp_path))
    assert (tmp_path / "synth" / "manifest.json").is_file() and (tmp_path / "synth-eval" / "manifest.json").is_file()
    assert signal.getsignal(signal.SIGUSR2) is not preemption._request_stop  # the loop installs its own


def test_cli_data_step_other_ranks_wait(tmp_path, monkeypatch, clean_signals):
    from a2v_het import cli

    seen = {}
    monkeypatch.setattr("data_tools.synth.ensure_synth_shards", lambda *a, **kw: seen.update(kw))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    assert cli.make_data(_smoke_cfg(tmp_path))
    assert seen["is_main"] is False and seen["seed"] == 0 and seen["eval_split"] == "val"


def test_usr2_during_the_data_step_stops_before_training(tmp_path, monkeypatch, capsys, clean_signals):
    """The writer is not killed; once the shards are written nothing trains (outside SLURM: no requeue)."""
    from a2v_het import cli

    def write_then_signal(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGUSR2)
        time.sleep(0.05)

    for k in ("RANK", "SLURM_JOB_ID", "SLURM_PROCID", "SUBMITIT_EXECUTOR"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr("data_tools.synth.ensure_synth_shards", write_then_signal)
    assert cli.make_data(_smoke_cfg(tmp_path)) is False
    assert "stopped by signal SIGUSR2 while writing the data" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGUSR2) is not preemption._request_stop


def test_launch_writes_the_data_at_submission_and_says_when_it_cannot(tmp_path, monkeypatch, capsys):
    from a2v_het import cli
    from a2v_het.train import launch

    shards = tmp_path / "synth"
    seen = []
    monkeypatch.setattr(cli, "make_data", lambda cfg, is_main=None: seen.append((cfg.data.shards, is_main)) and False)
    assert cli.main(["launch", str(SMOKE), "--gpus-per-node", "0", f"data.shards={shards}"]) == 0
    assert seen == [(str(shards), True)]  # ran once, in the submitting process; False: nothing submitted
    # without the CLI's data step (python -m a2v_het.train.launch) a missing synthetic set fails at submission
    assert launch.main([str(SMOKE), "--gpus-per-node", "0", f"data.shards={shards}"]) == 2
    err = capsys.readouterr().err
    assert "no manifest.json" in err and "python -m data_tools synth" in err


# ----------------------------------------------------------------------------------------------- USR2 end to end

@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory):
    from data_tools.synth import write_synth_shards

    root = tmp_path_factory.mktemp("usr2-shards")
    write_synth_shards(root / "synth", "field", 24, [8000, 16000, 22050, 48000], 1.0, seed=3, split="train")
    return root / "synth"


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SUBMITIT_"))
           and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(DS_ACCELERATOR="cpu", WANDB_MODE="offline", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return env


def _args(shards: Path, run_dir: Path, max_steps: int) -> list[str]:
    return [sys.executable, "-m", "a2v_het.cli", "pretrain", str(SMOKE), f"data.shards={shards}",
            f"train.run_dir={run_dir}", "data.duration_s=1.0", "data.batch_size=4", "data.num_workers=0",
            "data.samples_per_epoch=16", "logging.wandb=offline", "train.eval_every=0", "train.log_every=1",
            "train.save_every=1000", f"train.max_steps={max_steps}"]


def _steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "loss" in row:
            out.append(row["step"])
    return out


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigusr2_checkpoints_at_the_next_step_and_the_rerun_continues(tiny_shards, tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(_args(tiny_shards, run_dir, 500), cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300
        while len(_steps(run_dir)) < 2:
            assert proc.poll() is None, proc.stdout.read()[-4000:]
            assert time.time() < deadline, "no training steps within 300 s"
            time.sleep(0.1)
        proc.send_signal(signal.SIGUSR2)
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-4000:]
    stop = re.search(r"stopping at step (\d+) \(signal SIGUSR2\); checkpoint saved", out)
    assert stop, out[-4000:]
    n = int(stop.group(1))
    assert 2 <= n < 500
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{n:08d}"
    assert (run_dir / "checkpoints" / f"step_{n:08d}" / "COMPLETE").is_file()
    assert _steps(run_dir) == list(range(1, n + 1))  # it stopped at the step after the signal, saved there

    rerun = subprocess.run(_args(tiny_shards, run_dir, n + 3), cwd=tmp_path, env=_env(), capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert f"resumed from step_{n:08d} (step {n})" in rerun.stdout
    assert _steps(run_dir) == list(range(1, n + 4))  # the step count continues
    runs = sorted(p.name for p in (run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and len({name.rsplit("-", 1)[1] for name in runs}) == 1, runs  # the same wandb run id

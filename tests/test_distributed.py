"""More than one process, for real: torchrun starts gloo ranks on this machine's CPU."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import qkv
from qkv.cli import main
from qkv.train.metrics import read_metrics

from .conftest import CHAR_CONFIG, TINY


def train_command(out: Path, *extra: str, nproc: int = 1) -> list[str]:
    sets = [a for kv in (*TINY, f"out_dir={out}", *extra) for a in ("--set", kv)]
    return [sys.executable, "-m", "qkv", "train", str(CHAR_CONFIG), "--no-progress", *sets,
            "--nproc", str(nproc)]


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r}


def val_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["val_loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "val_loss" in r}


def run(command, data_root, **kw):
    env = {**os.environ, "QKV_DATA": str(data_root)}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture(scope="module")
def one(data_root, tmp_path_factory):
    """The reference: one process, 10 steps."""
    out = tmp_path_factory.mktemp("one") / "run"
    assert main(["train", str(CHAR_CONFIG), "--no-progress",
                 *(a for kv in (*TINY, f"out_dir={out}", "train.max_steps=10") for a in ("--set", kv))]) == 0
    return out


def test_two_processes_take_the_steps_of_one_and_resume_on_another_count(one, data_root, tmp_path):
    two = tmp_path / "two"
    done = run(train_command(two, "train.max_steps=6", nproc=2), data_root)
    assert done.returncode == 0, done.stderr
    assert "on 2 processes" in done.stdout and done.stdout.count("done:") == 1  # rank 0 alone speaks
    reference, got = losses(one), losses(two)
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    for step, loss in got.items():
        assert loss == pytest.approx(reference[step], rel=1e-5, abs=1e-6), step
    assert val_losses(two)[5] == pytest.approx(val_losses(one)[5], rel=1e-5)
    # the 2-process checkpoint at step 6, continued by one process, meets the 1-process curve
    resumed = run(train_command(two, "train.max_steps=10", nproc=1), data_root)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    for step in (7, 8, 9, 10):
        assert losses(two)[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-6), step
    assert val_losses(two)[10] == pytest.approx(val_losses(one)[10], rel=1e-5)


def test_batch_must_split_evenly(data_root, tmp_path):
    done = run(train_command(tmp_path / "odd", "train.batch_size=7", nproc=2), data_root)
    assert done.returncode != 0
    assert "train.batch_size=7 must be divisible by the number of processes (2)" in done.stderr


def _children(pid: int) -> list[int]:
    """The child processes of ``pid``, as the kernel lists them per thread of that process
    (/proc/PID/task/TID/children): no scan of other processes."""
    kids = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:  # the process has ended
        return kids
    for task in tasks:
        try:
            kids += [int(kid) for kid in (task / "children").read_text().split()]
        except OSError:  # the thread has ended
            pass
    return kids


def _rank_pids(launcher: int) -> dict[int, int]:
    """rank -> pid of the ranks of the job that ``launcher`` (the `qkv train --nproc` this test
    started) runs: it starts torchrun, whose children are the ranks, each with RANK set."""
    ranks = {}
    for torchrun in _children(launcher):
        for worker in _children(torchrun):
            env = dict(item.split(b"=", 1) for item in Path(f"/proc/{worker}/environ").read_bytes().split(b"\0")
                       if b"=" in item)
            if b"RANK" in env:
                ranks[int(env[b"RANK"])] = worker
    return ranks


def _stop(launcher: subprocess.Popen) -> None:
    """Kill whatever is left of the job: its ranks, its torchrun, then ``launcher`` itself."""
    if launcher.poll() is None:
        for torchrun in _children(launcher.pid):
            for pid in (*_children(torchrun), torchrun):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        launcher.kill()
    launcher.wait()


def test_a_killed_rank_stops_the_job_and_a_restart_resumes(data_root, tmp_path):
    out = tmp_path / "killed"
    env = {**os.environ, "QKV_DATA": str(data_root)}
    proc = subprocess.Popen(train_command(out, "train.max_steps=100000", nproc=2), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    latest = out / "checkpoints" / "latest"
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None and (
                not latest.is_file() or latest.read_text().strip() < "step-000010"):
            time.sleep(0.1)
        workers = _rank_pids(proc.pid)
        assert set(workers) == {0, 1}, workers
        os.kill(workers[1], signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        _stop(proc)  # on a failure above, no rank is left training 100000 steps
    assert proc.returncode != 0
    assert "lost contact with another process" in stderr or "ChildFailedError" in stderr, stderr[-2000:]
    step = int(latest.read_text().strip()[len("step-"):])
    again = run(train_command(out, f"train.max_steps={step + 3}", nproc=2), data_root)
    assert again.returncode == 0, again.stderr
    assert f"from step {step}" in again.stderr
    assert sorted(losses(out))[-3:] == [step + 1, step + 2, step + 3]


def test_fsdp_trains_checkpoints_resumes_and_exports_what_one_process_trains(one, data_root, tmp_path):
    out = tmp_path / "fsdp"
    first = run(train_command(out, "train.max_steps=6", "train.strategy=fsdp", nproc=2), data_root)
    assert first.returncode == 0, first.stderr
    assert (out / "checkpoints" / "step-000006" / "sharded" / ".metadata").is_file()
    assert not (out / "checkpoints" / "step-000006" / "model.safetensors").exists()
    second = run(train_command(out, "train.max_steps=10", "train.strategy=fsdp", nproc=2), data_root)
    assert second.returncode == 0, second.stderr
    assert "from step 6" in second.stderr
    reference = losses(one)
    assert sorted(losses(out)) == sorted(reference) == list(range(1, 11))
    for step, loss in losses(out).items():
        assert loss == pytest.approx(reference[step], rel=1e-4, abs=1e-5), step
    assert main(["export", str(out)]) == 0
    exported, tokenizer = qkv.load(out / "export")
    expected, _ = qkv.load(one)
    ids = torch.tensor([tokenizer.encode("To be, or not to be")])
    torch.testing.assert_close(exported(ids), expected(ids), atol=1e-4, rtol=0)
    torch.testing.assert_close(qkv.load(out).model(ids), exported(ids), atol=0, rtol=0)

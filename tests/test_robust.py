"""Failures a user meets: a diverging run, a bad config value, a half-written metrics line,
two runs in one directory, a read-only folder or a full disk, file permissions."""
import datetime
import errno
import multiprocessing
import os
import re
import subprocess
import sys
from dataclasses import dataclass, fields
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import qkv
import qkv.files
from qkv.cli import main
from qkv.errors import CheckpointError, ConfigError, TrainingDiverged, WriteError
from qkv.files import atomic_write, atomic_write_text
from qkv.io import save_model
from qkv.train import trainer as trainer_module
from qkv.train.checkpoint import save_checkpoint
from qkv.train.config import RunConfig, TrainConfig
from qkv.train.lock import RunLock
from qkv.train.metrics import MetricsLog, read_metrics
from qkv.train.trainer import Trainer

from .conftest import CHAR_CONFIG, TINY

TORCH_FULL_DISK = "[enforce fail at inline_container.cc:626] . unexpected pos 123 vs 45"


# -- a toy task: linear regression, made to go bad at chosen steps -----------------------
@dataclass
class ToyConfig:
    width: int = 4


class Toy(nn.Module):
    model_type = "toy"

    def __init__(self):
        super().__init__()
        self.config = ToyConfig()
        self.linear = nn.Linear(4, 1)

    def forward(self, x):
        return self.linear(x)


def toy_trainer(run_dir, bad_steps=(), bad="loss", **options):
    """A Trainer whose loss (``bad="loss"``) or gradient (``"grad"``) is NaN at the 1-based
    ``bad_steps``; ``trainer.firsts`` lists the samples asked for, ``trainer.seen`` the
    weights each step started from."""
    cfg = TrainConfig(**{"max_steps": 10, "batch_size": 4, "lr": 0.01, "min_lr": 0.0, "warmup_steps": 0,
                         "log_interval": 1, "eval_interval": 1000, "ckpt_interval": 5, "device": "cpu",
                         **options})
    firsts, seen = [], []

    def batches(first, count):
        firsts.append(first)
        x = torch.randn(count, 4, generator=torch.Generator().manual_seed(first))
        return x, x.sum(1, keepdim=True), first // cfg.batch_size + 1  # the step, 1-based

    def loss(model, batch):
        x, y, step = batch
        seen.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
        out = model(x)
        if step in bad_steps and bad == "grad":
            out.register_hook(lambda g: g * float("inf"))
        value = ((out - y) ** 2).mean()
        return value + float("nan") if step in bad_steps and bad == "loss" else value  # finite grads

    trainer = Trainer(Toy(), cfg, run_dir, batches=batches, loss=loss, progress=False)
    trainer.firsts, trainer.seen = firsts, seen
    return trainer


def finite(model):
    return all(torch.isfinite(p).all() for p in model.parameters())


def latest(run_dir):
    return (run_dir / "checkpoints" / "latest").read_text().strip()


# -- non-finite loss or gradient -------------------------------------------------------------
@pytest.mark.parametrize("bad", ["loss", "grad"])
def test_a_nonfinite_step_stops_the_run_unapplied_and_keeps_the_last_checkpoint(tmp_path, bad):
    trainer = toy_trainer(tmp_path, bad_steps={7}, bad=bad)
    with pytest.raises(TrainingDiverged, match=r"diverged at step 7: .*(nan|inf).*not applied.*"
                       r"step-000005, is kept.*train\.lr.*train\.warmup_steps.*train\.nonfinite=\"skip\""):
        trainer.fit()
    assert finite(trainer.model)  # the optimizer never stepped on the bad gradients
    assert torch.equal(torch.cat([p.detach().flatten() for p in trainer.model.parameters()]), trainer.seen[-1])
    assert latest(tmp_path) == "step-000005"
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*")) == ["step-000005"]
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    resumed = toy_trainer(tmp_path, max_steps=8)  # e.g. after lowering train.lr
    resumed.fit()
    assert resumed.firsts[0] == 5 * 4 and latest(tmp_path) == "step-000008"


def test_a_diverging_run_stops_with_one_line_and_keeps_its_good_checkpoint(data_root, tmp_path, capsys):
    def qkv_train(*sets):
        return main(["train", str(CHAR_CONFIG), "--no-progress",
                     *(a for kv in (*TINY, f"out_dir={tmp_path}", *sets) for a in ("--set", kv))])

    assert qkv_train("train.max_steps=5") == 0
    capsys.readouterr()
    assert qkv_train("train.max_steps=20", "train.lr=1e6") == 2  # resumed at step 5, then diverges
    err = capsys.readouterr().err.strip().splitlines()[-1]
    bad = re.search(r"diverged at step (\d+): .*step-000005, is kept.*train\.lr", err)
    assert bad, err
    assert latest(tmp_path) == "step-000005"
    model, _ = qkv.load(tmp_path)
    assert finite(model)
    logged = [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r]
    assert [s for s, _ in logged] == list(range(1, int(bad[1]))) and None not in dict(logged).values()


def test_skip_drops_nonfinite_updates_counts_them_and_keeps_the_data_order(tmp_path):
    trainer = toy_trainer(tmp_path, bad_steps={3, 4}, max_steps=5, nonfinite="skip")
    trainer.fit()
    assert finite(trainer.model) and trainer.step == 5
    assert trainer.firsts == [0, 4, 8, 12, 16]  # steps 3 and 4 took their samples, as always
    assert torch.equal(trainer.seen[2], trainer.seen[4])  # ...but their updates were dropped
    assert not torch.equal(trainer.seen[1], trainer.seen[2])
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["skipped_steps"] for r in records] == [0, 0, 1, 2, 2]
    assert records[2]["loss"] is None and records[1]["loss"] > 0  # JSON null, not NaN
    resumed = toy_trainer(tmp_path, max_steps=7, nonfinite="skip")  # the count is in the checkpoint
    resumed.fit()
    assert [r["skipped_steps"] for r in read_metrics(tmp_path / "metrics.jsonl")][5:] == [2, 2]


def test_skip_gives_up_after_too_many_bad_steps_in_a_row(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_module, "MAX_SKIPPED_IN_A_ROW", 3)
    trainer = toy_trainer(tmp_path, bad_steps=set(range(2, 11)), nonfinite="skip")
    with pytest.raises(TrainingDiverged, match=r"step 5: 4 steps in a row.*no checkpoint was written"):
        trainer.fit()
    assert finite(trainer.model) and not (tmp_path / "checkpoints").exists()


def _rank(rank, run_dir, results):
    """One of two gloo processes; only rank 1 sees a NaN loss, at step 3."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
    try:  # a file rendezvous: no port to race for; and a timeout, not a hang, if a rank dies
        torch.distributed.init_process_group("gloo", init_method=f"file://{run_dir}/.rendezvous", rank=rank,
                                             world_size=2, timeout=datetime.timedelta(seconds=60))
        trainer = toy_trainer(run_dir, bad_steps={3} if rank else (), ckpt_interval=2)
        trainer.fit()
        results.put((rank, "finished"))
    except TrainingDiverged as e:
        results.put((rank, f"{e} at step {trainer.step}"))
    except BaseException as e:
        results.put((rank, f"{type(e).__name__}: {e}"))
    finally:
        trainer_module.distributed.teardown()


def test_all_ranks_stop_together_when_one_sees_a_nonfinite_loss(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(rank, tmp_path, results)) for rank in (0, 1)]
    for p in procs:
        p.start()
    try:
        got = dict(results.get(timeout=120) for _ in procs)  # before join: a queue's writer waits for it
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    for rank in (0, 1):
        assert "diverged at step 3" in got[rank] and got[rank].endswith("at step 2"), got[rank]
    assert all(p.exitcode == 0 for p in procs), "a rank was left waiting"
    assert latest(tmp_path) == "step-000002"


# -- the config ----------------------------------------------------------------------------
@pytest.mark.parametrize("key, value, message", [
    ("lr", "fast", "train.lr must be a positive number, got 'fast'"),
    ("lr", float("nan"), "train.lr must be a positive number, got nan"),
    ("min_lr", -0.5, "train.min_lr must be a number >= 0, got -0.5"),
    ("min_lr", 0.01, r"train.min_lr \(0.01\) must not exceed train.lr \(0.001\)"),
    ("warmup_steps", -5, "train.warmup_steps must be an integer >= 0, got -5"),
    ("max_steps", True, "train.max_steps must be a positive integer, got True"),
    ("max_steps", 2.5, "train.max_steps must be a positive integer, got 2.5"),
    ("batch_size", 0, "train.batch_size must be a positive integer, got 0"),
    ("weight_decay", -0.1, "train.weight_decay must be a number >= 0"),
    ("beta1", 1.0, r"train.beta1 must be a number in \[0, 1\), got 1.0"),
    ("beta2", -0.1, r"train.beta2 must be a number in \[0, 1\)"),
    ("eps", 0, "train.eps must be a positive number, got 0"),
    ("grad_clip", -1, "train.grad_clip must be a number >= 0"),
    ("compile", "yes", "train.compile must be true or false, got 'yes'"),
    ("nonfinite", "ignore", "train.nonfinite must be one of stop, skip, got 'ignore'"),
])
def test_a_bad_train_value_is_named(key, value, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**{key: value})
    with pytest.raises(ConfigError, match=rf"^train\.{key} "):  # as from a TOML file or --set
        RunConfig.from_tree({"train": {key: value}})


def test_every_train_key_is_checked_and_the_edge_values_pass():
    for f in fields(TrainConfig):
        wrong = 7 if f.type == "str" else "x"
        with pytest.raises(ConfigError, match=f"train.{f.name} must"):
            TrainConfig(**{f.name: wrong})
    TrainConfig(warmup_steps=0, batch_size=None, lr=1, min_lr=0, grad_clip=0, beta1=0, weight_decay=0)


# -- metrics.jsonl ---------------------------------------------------------------------------
def test_a_partial_last_metrics_line_is_dropped_a_broken_middle_one_is_named(tmp_path, capsys):
    file = tmp_path / "metrics.jsonl"
    file.write_text('{"step": 1, "loss": 3.0}\n{"step": 2, "loss": 2.5}\n{"step": 3, "lo')
    assert [r["step"] for r in read_metrics(file)] == [1, 2]  # qkv plot still works
    assert f"{file}" in capsys.readouterr().err
    log = MetricsLog(file, resume_step=5)
    assert "incomplete last line 3" in capsys.readouterr().err
    log.write(step=3, loss=2.0)
    log.close()
    assert [r["step"] for r in read_metrics(file)] == [1, 2, 3]
    file.write_text('{"step": 1, "loss": 3.0}\n{"step": 2, "lo\n{"step": 3, "loss": 2.0}\n')
    with pytest.raises(CheckpointError, match=f"{file} line 2 is not a metrics record"):
        MetricsLog(file, resume_step=5)
    with pytest.raises(CheckpointError, match="line 2"):
        read_metrics(file)


def test_a_run_resumes_past_a_partial_metrics_line(tmp_path):
    toy_trainer(tmp_path, max_steps=5).fit()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "loss": 0.')  # killed while writing step 6's record
    toy_trainer(tmp_path, max_steps=7).fit()
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6, 7]


# -- one process per run directory --------------------------------------------------------
HOLD = """
import sys, time
from qkv.train.lock import RunLock
with RunLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_run_directory_is_locked_while_a_process_trains_in_it(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=f"{tmp_path} is being trained by another process "
                                              f"\\(pid {holder.pid}\\); wait for it or use another out_dir"):
            with RunLock(tmp_path):
                pass
    finally:
        holder.kill()  # however it ends, its lock goes with it
        holder.wait()
    with RunLock(tmp_path):
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
        with pytest.raises(ConfigError, match=f"pid {os.getpid()}"):  # not twice in one process either
            with RunLock(tmp_path):
                pass
    with RunLock(tmp_path):  # released on exit; the file stays
        pass
    assert (tmp_path / ".lock").exists()


# -- read-only folders, full disks, permissions -------------------------------------------
def failing(error):
    def write(tmp):
        tmp.write_bytes(b"half")
        raise error
    return write


def test_write_failures_become_one_clear_error(tmp_path, monkeypatch):
    target = tmp_path / "model.safetensors"
    with pytest.raises(WriteError, match=f"cannot write {target} \\(Permission denied\\): the folder is "
                                         "read-only: choose a writable out_dir"):
        atomic_write(target, failing(PermissionError(errno.EACCES, "Permission denied")))
    with pytest.raises(WriteError, match=rf"No space left on device\): the disk is full: free space on "
                                         rf"{tmp_path} \(\d+ MB free\)"):
        atomic_write(target, failing(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(WriteError, match=r"cannot write .*unexpected pos 123 vs 45.*\d+ MB free"):
        atomic_write(target, failing(RuntimeError(TORCH_FULL_DISK)))  # torch.save on a full disk
    monkeypatch.setattr(qkv.files.shutil, "disk_usage", lambda p: SimpleNamespace(free=2**20))
    with pytest.raises(WriteError, match=r"unexpected pos 123 vs 45\): the disk is full: .*\(1 MB free\)"):
        atomic_write(target, failing(RuntimeError(TORCH_FULL_DISK)))
    with pytest.raises(RuntimeError, match="^a bug$"):  # anything else is not a write failure
        atomic_write(target, failing(RuntimeError("a bug")))
    assert list(tmp_path.iterdir()) == []  # no temporary file left, no half file


def test_a_checkpoints_folder_that_cannot_be_made_is_a_write_error(tmp_path, monkeypatch):
    def read_only(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    model = Toy()
    monkeypatch.setattr(type(tmp_path), "mkdir", read_only)
    with pytest.raises(WriteError, match=r"checkpoints \(Permission denied\): the folder is read-only"):
        save_checkpoint(tmp_path, model, torch.optim.AdamW(model.parameters()), {"step": 1}, keep=2)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        save_model(Toy(), tmp_path)  # safetensors alone would make model.safetensors 0600
        atomic_write_text(tmp_path / "notes.txt", "x")
    finally:
        os.umask(old)
    for name in ("model.safetensors", "config.json", "notes.txt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


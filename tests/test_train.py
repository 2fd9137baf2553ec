import json
import os
import signal

import pytest
import torch

import qkv
from qkv.config import ConfigError
from qkv.errors import CheckpointError
from qkv.tokenizers import BPETokenizer, CharTokenizer
from qkv.train import TrainConfig, TrainingInterrupted, train
from qkv.train import checkpoint as checkpoint_module
from qkv.tasks.lm import LanguageModelTask
from qkv.train.metrics import read_metrics
from qkv.train.optim import Optimizers, learning_rate, make_optimizer

from .conftest import BPE_CONFIG, CHAR_CONFIG, TINY


def run(tmp_path, *extra, config=CHAR_CONFIG, name="run", **kw):
    return train(config, [*TINY, f"out_dir={tmp_path / name}", *extra], progress=False, **kw)


def losses(run_dir, key="loss"):
    return [(r["step"], r[key]) for r in read_metrics(run_dir / "metrics.jsonl") if key in r]


def test_a_run_trains_evaluates_checkpoints_and_loads(data_root, tmp_path):
    run_dir = run(tmp_path, "train.max_steps=30", "train.lr=3e-3", "train.eval_interval=10")
    train_losses = [l for _, l in losses(run_dir)]
    assert len(train_losses) == 30
    val = [l for _, l in losses(run_dir, "val_loss")]
    assert [s for s, _ in losses(run_dir, "val_loss")] == [10, 20, 30]
    assert val[-1] < val[0] - 0.2 and train_losses[-1] < train_losses[0] - 0.5
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step-*")) == ["step-000025", "step-000030"]
    model, tok = qkv.load(run_dir)
    assert isinstance(tok, CharTokenizer) and model.config.n_layer == 2
    assert all("tokens_per_s" in r for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_interrupted_run_resumes_with_the_same_loss_curve(data_root, tmp_path, monkeypatch, optimizer):
    """Ctrl-C at step 7 (dropout on, so the RNG state matters), then the same command again."""
    common = ("train.max_steps=12", "model.dropout=0.1", f"train.optimizer={optimizer}")
    straight = run(tmp_path, *common, name="straight")

    original = LanguageModelTask.batches

    def batches_then_ctrl_c(self, first, count):
        if first == 6 * count:  # during step 7
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, first, count)

    monkeypatch.setattr(LanguageModelTask, "batches", batches_then_ctrl_c)
    with pytest.raises(TrainingInterrupted, match="stopped at step 7"):
        run(tmp_path, *common, name="stopped")
    monkeypatch.setattr(LanguageModelTask, "batches", original)
    assert (tmp_path / "stopped" / "checkpoints" / "latest").read_text().strip() == "step-000007"
    resumed = run(tmp_path, *common, name="stopped")
    assert len(losses(resumed)) == len(losses(straight)) == 12
    assert losses(resumed) == losses(straight)
    assert len(losses(resumed, "val_loss")) == len(losses(straight, "val_loss")) > 0
    assert losses(resumed, "val_loss") == losses(straight, "val_loss")


def test_gradient_accumulation_sees_the_same_samples_as_one_big_batch(data_root, tmp_path):
    big = run(tmp_path, "train.max_steps=4", "train.batch_size=8", name="big")
    accumulated = run(tmp_path, "train.max_steps=4", "train.batch_size=4", "train.grad_accum=2", name="acc")
    assert len(losses(big)) == len(losses(accumulated)) == 4
    for (step_a, a), (step_b, b) in zip(losses(big), losses(accumulated)):
        assert step_a == step_b and a == pytest.approx(b, abs=1e-5)


def test_a_crash_while_checkpointing_leaves_the_previous_checkpoint(data_root, tmp_path, monkeypatch):
    run(tmp_path, "train.max_steps=5")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        run(tmp_path, "train.max_steps=10")
    monkeypatch.undo()
    ckpts = tmp_path / "run" / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step-000005"
    model, _ = qkv.load(tmp_path / "run")  # the previous checkpoint still loads
    run(tmp_path, "train.max_steps=10")
    assert (ckpts / "latest").read_text().strip() == "step-000010"
    assert not list(ckpts.glob(".tmp-*"))


def test_corrupt_checkpoint_is_named(data_root, tmp_path):
    run_dir = run(tmp_path, "train.max_steps=5")
    (run_dir / "checkpoints" / "step-000005" / "optimizer.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="incomplete or corrupt.*older step-"):
        run(tmp_path, "train.max_steps=10")


def test_resume_refuses_an_incompatible_config(data_root, tmp_path):
    run(tmp_path, "train.max_steps=5")
    with pytest.raises(ConfigError, match=r"cannot resume.*model\.n_layer: 2 -> 3.*out_dir"):
        run(tmp_path, "train.max_steps=10", "model.n_layer=3")
    with pytest.raises(ConfigError, match=r"cannot resume.*train\.optimizer: 'adamw' -> 'muon'"):
        run(tmp_path, "train.max_steps=10", "train.optimizer=muon")
    run(tmp_path, "train.max_steps=8", "train.lr=1e-4", "train.min_lr=1e-5")  # a longer or gentler run is fine
    saved = tmp_path / "run" / "run.json"  # a run written before train.optimizer existed resumes with AdamW
    tree = json.loads(saved.read_text())
    del tree["train"]["optimizer"]
    saved.write_text(json.dumps(tree))
    run(tmp_path, "train.max_steps=9")


def test_config_errors_name_the_problem(data_root, tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key \[train\] max_stepz.*max_steps"):
        run(tmp_path, "train.max_stepz=3")
    with pytest.raises(ConfigError, match=r"n_layers.*n_layer"):
        run(tmp_path, "model.n_layers=3")
    with pytest.raises(ConfigError, match=r"data.seq_len=64 exceeds the model's context"):
        run(tmp_path, "data.seq_len=64")
    with pytest.raises(ConfigError, match="no checkpoint to resume"):
        run(tmp_path, name="fresh", resume=True)
    with pytest.raises(ConfigError, match="--set expects key=value"):
        run(tmp_path, "train.max_steps")
    with pytest.raises(ConfigError, match="does not exist"):
        train(tmp_path / "nope.toml")


def test_bf16_on_a_cpu_trains_under_autocast_where_it_multiplies_bf16_natively(monkeypatch):
    """train.precision="bf16" on a CPU: autocast to bf16 where the CPU has AMX or AVX512-BF16
    (matmuls come out bf16, the loss stays near fp32's), refused where it would emulate bf16."""
    import qkv.train.trainer as trainer

    x, w = torch.randn(4, 8), torch.randn(8, 8)
    monkeypatch.setattr(trainer, "cpu_has_bf16_matmul", lambda: True)
    with trainer.autocast_context("bf16", torch.device("cpu"))():
        y = x @ w
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), x @ w, atol=0.1, rtol=0.02)
    with trainer.autocast_context("auto", torch.device("cpu"))():
        assert (x @ w).dtype == torch.float32  # auto keeps CPU runs fp32
    monkeypatch.setattr(trainer, "cpu_has_bf16_matmul", lambda: False)
    with pytest.raises(ConfigError, match="slower than fp32: it has neither AMX nor AVX512-BF16"):
        trainer.autocast_context("bf16", torch.device("cpu"))


def test_bpe_preset_trains_its_tokenizer_on_the_training_split(data_root, tmp_path):
    run_dir = run(tmp_path, "train.max_steps=3", "data.vocab_size=300", config=BPE_CONFIG)
    tok = qkv.load(run_dir).tokenizer
    assert isinstance(tok, BPETokenizer) and tok.vocab_size == 300
    assert (run_dir / "tokenizer.json").is_file()
    assert "tokenizer.json" in {p.name for p in (data_root / "shakespeare" / "tokenizers" / "bpe-300").iterdir()}


def test_compile_failure_falls_back_to_eager(data_root, tmp_path, monkeypatch):
    def broken_compile(model):
        def fail(*a, **k):
            raise RuntimeError("no compiler here")
        return fail

    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.warns(UserWarning, match="continuing uncompiled"):
        run_dir = run(tmp_path, "train.max_steps=3", "train.compile=true")
    assert len(losses(run_dir)) == 3


def test_muon_takes_the_attention_and_feed_forward_matrices_and_adamw_the_rest():
    model = qkv.GPT(qkv.GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16))
    optimizer = make_optimizer(model, TrainConfig(optimizer="muon"), torch.device("cpu"))
    assert isinstance(optimizer, Optimizers)
    muon, adamw = optimizer.optimizers
    names = {id(p): n for n, p in model.named_parameters()}
    on_muon = sorted(names[id(p)] for g in muon.param_groups for p in g["params"])
    assert on_muon == sorted(n for n, p in model.named_parameters() if p.dim() == 2 and ".h." in f".{n}")
    assert len(on_muon) == 2 * 4  # per block: fused q/k/v, output, and the two feed-forward matrices
    on_adamw = [p for g in adamw.param_groups for p in g["params"]]
    assert len(on_adamw) + len(on_muon) == len(list(model.parameters()))
    assert all(g["lr"] == TrainConfig().lr for g in optimizer.param_groups)
    resnet = qkv.ResNet(qkv.ResNetConfig(num_labels=3, num_channels=1, embedding_size=4, hidden_sizes=[4], depths=[1],
                                         layer_type="basic", stem="3x3"))
    with pytest.raises(ConfigError, match="has none; use train.optimizer"):
        make_optimizer(resnet, TrainConfig(optimizer="muon"), torch.device("cpu"))


def test_schedule_warms_up_then_follows_a_cosine():
    cfg = TrainConfig(max_steps=110, warmup_steps=10, lr=1.0, min_lr=0.1)
    assert learning_rate(0, cfg) == pytest.approx(0.1)
    assert learning_rate(9, cfg) == pytest.approx(1.0)
    assert learning_rate(60, cfg) == pytest.approx(0.55)
    assert learning_rate(110, cfg) == pytest.approx(0.1)
    inv = TrainConfig(schedule="inverse_sqrt", warmup_steps=100, lr=1.0)
    assert learning_rate(399, inv) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="linear")

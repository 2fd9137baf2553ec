"""qkv's training step against nanoGPT's on the demo config, in one process, on the same batches.

    git clone https://github.com/karpathy/nanoGPT /tmp/nanogpt      # any checkout of it
    python benchmarks/nanogpt.py --nanogpt /tmp/nanogpt
    python benchmarks/nanogpt.py --nanogpt /tmp/nanogpt --profile   # where qkv's step time goes

nanoGPT's ``model.py`` is imported from the checkout given (nothing of it lives in this
repository). Both models are built from configs/gpt-shakespeare-char.toml ([model] and
[train]: 4 layers x 192, 6 heads, context 128, batch 32, AdamW lr 2e-3, betas (0.9, 0.99),
weight decay 0.1 on matrices and embeddings, gradient clipping at 1.0), and nanoGPT's gets
qkv's initial weights. The one difference in what they compute, nanoGPT's exact GELU against
the config's tanh approximation (GPT-2's ``gelu_new``), is removed by giving nanoGPT's MLPs
the tanh GELU, so both take the very same steps: the losses of the first steps are printed
side by side.

Timed, alternating qkv and nanoGPT step by step: one optimizer step each (forward, loss,
backward, clip the global gradient norm, AdamW, zero the gradients). The config trains with
Muon (``train.optimizer``); nanoGPT has no Muon, so the comparison runs both with AdamW, and
qkv's Muon step is timed beside them for reference. qkv's step is the
Trainer's own (``Trainer._train_step``: learning rate, batch, loss, backward, clipping, the
finite-loss check, AdamW); nanoGPT's is its train.py's. The batches are windows of the
Shakespeare text (the prepared corpus if ``qkv data get shakespeare`` was run, else the
test fixture's pages), made before timing. Peak memory: resident data memory (heap,
tensors; not code) above what the process held before, over two steps, each library in a
fresh process whose malloc hands freed blocks back (``common.MEASURED_MALLOC``).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.util
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import MEASURED_MALLOC, in_child, peak_data_bytes_during  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "gpt-shakespeare-char.toml"
FIXTURE = ROOT / "tests" / "fixtures" / "shakespeare"


def load_nanogpt(checkout: str):
    """nanoGPT's model.py, imported from a checkout as module ``nanogpt_model``."""
    path = Path(checkout).expanduser() / "model.py"
    if not path.is_file():
        raise SystemExit(f"{path} does not exist: --nanogpt takes a checkout of "
                         "https://github.com/karpathy/nanoGPT (the folder holding model.py)")
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def text_tokens():
    """(train tokens, vocabulary size, where they came from): the prepared Shakespeare
    corpus under its char tokenizer, as ``qkv train`` reads it, else the fixture's pages."""
    from qkv.data import DataError, prepared
    from qkv.data.lm import corpus_tokenizer, encode_corpus
    from qkv.tokenizers import CharTokenizer

    try:
        corpus = prepared("shakespeare")
        tokenizer = corpus_tokenizer(corpus, "char")
        return np.asarray(encode_corpus(corpus, tokenizer)["train"]), tokenizer.vocab_size, str(corpus)
    except DataError:
        text = "".join(p.read_text(encoding="utf-8") for p in sorted(FIXTURE.glob("*.txt")))
        tokenizer = CharTokenizer.train([text])
        return np.asarray(tokenizer.encode(text)), tokenizer.vocab_size, f"{FIXTURE} (no prepared corpus)"


def build(checkout: str, quiet: bool = True):
    """qkv's GPT and its Trainer, nanoGPT's GPT with the same weights and its optimizer,
    the batches, and a description of the data."""
    import contextlib
    import io

    from qkv import models
    from qkv.train.config import load_run_config
    from qkv.train.trainer import Trainer

    run = load_run_config(CONFIG)
    run.train = dataclasses.replace(run.train, optimizer="adamw")  # nanoGPT's; the config's Muon is timed apart
    cfg, seq_len = run.train, run.data["seq_len"]
    tokens, vocab, source = text_tokens()
    torch.manual_seed(run.seed)
    model = models.from_section(run.model, "causal_lm", default="gpt", data={"vocab_size": vocab})

    nano_module = load_nanogpt(checkout)
    c = model.config
    nano_cfg = nano_module.GPTConfig(block_size=c.block_size, vocab_size=c.vocab_size, n_layer=c.n_layer,
                                     n_head=c.n_head, n_embd=c.n_embd, dropout=c.dropout, bias=c.bias)
    if c.activation not in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
        raise SystemExit(f"nanoGPT's MLP has a GELU; {CONFIG.name} asks for {c.activation!r}")

    def nanogpt(gelu: str):
        """nanoGPT's GPT with qkv's initial weights and its own optimizer; ``gelu="tanh"``
        gives its MLPs the config's tanh GELU in place of its exact one."""
        with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
            nano = nano_module.GPT(nano_cfg)
            for block in nano.transformer.h:
                block.mlp.gelu = torch.nn.GELU(approximate=gelu)
            nano.load_state_dict(model.state_dict())
            nano.train()
            return nano, nano.configure_optimizers(cfg.weight_decay, cfg.lr, (cfg.beta1, cfg.beta2), "cpu")

    nano, nano_opt = nanogpt("none" if c.activation == "gelu" else "tanh")

    from qkv.data.lm import TokenWindows

    windows = TokenWindows(tokens, seq_len, seed=run.seed)
    batches = [tuple(t.contiguous() for t in windows.batch(i * cfg.batch_size, cfg.batch_size)) for i in range(8)]
    trainer = Trainer(model, cfg, tempfile.mkdtemp(prefix="qkv-bench-"),
                      batches=lambda first, count: batches[first // count % len(batches)],
                      loss=lambda m, batch: m(batch[0], labels=batch[1])[1], progress=False)
    model.train()
    return run, model, trainer, nano, nano_opt, batches, source, nanogpt


class NanoSteps:
    """nanoGPT's train.py step: learning rate, forward, backward, clip, AdamW, zero grads.
    The learning rate follows qkv's schedule (nanoGPT's warmup divides by warmup + 1), so
    that both take the same steps and their losses can be compared."""

    def __init__(self, model, optimizer, batches, cfg):
        self.model, self.optimizer, self.batches, self.cfg, self.step = model, optimizer, batches, cfg, 0

    def __call__(self) -> float:
        from qkv.train.optim import learning_rate

        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.step, self.cfg)
        x, y = self.batches[self.step % len(self.batches)]
        _, loss = self.model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return loss.item()


def child(which: str, checkout: str) -> None:
    """Peak memory of two training steps of one library, in this (fresh) process."""
    run, model, trainer, nano, nano_opt, batches, _, _ = build(checkout)
    if which == "qkv":
        del nano, nano_opt
        fn = trainer._train_step
    else:
        del trainer, model
        fn = NanoSteps(nano, nano_opt, batches, run.train)
    peak = peak_data_bytes_during(lambda: [fn() for _ in range(2)])
    print(json.dumps({"peak_bytes": peak}))


def profile_qkv(trainer, steps: int = 5) -> None:
    """torch.profiler's table of qkv's Trainer step, and the per-step work the Trainer does
    beyond the model's step (timed apart)."""
    from torch.profiler import ProfilerActivity, profile, record_function

    from qkv.train.optim import learning_rate

    trainer._train_step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            with record_function("trainer step"):
                trainer._train_step()
    print(f"\nqkv: where a Trainer step's time goes ({steps} steps, self CPU time)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))

    n = 2000
    t0 = time.perf_counter()
    for i in range(n):
        learning_rate(i, trainer.cfg)
    t_lr = (time.perf_counter() - t0) / n
    from qkv.data.lm import TokenWindows

    windows = TokenWindows(np.random.randint(0, 65, 1_000_000).astype(np.uint16), 128, seed=0)
    t0 = time.perf_counter()
    for i in range(50):
        windows.batch(i * 32, 32)
    t_batch = (time.perf_counter() - t0) / 50
    print(f"Trainer per-step extras: learning-rate schedule {t_lr * 1e6:.1f} us; a batch of 32 text "
          f"windows (TokenWindows.batch) {t_batch * 1e6:.0f} us; the loss and gradient norm are read "
          "once per step (.item(): no device sync on CPU); the progress bar redraws at most once a second")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nanogpt", required=True, metavar="PATH", help="a checkout of karpathy/nanoGPT")
    p.add_argument("--steps", type=int, default=20, help="timed steps of each (alternating)")
    p.add_argument("--profile", action="store_true", help="also print where qkv's step time goes")
    p.add_argument("--child", metavar="IMPL", help=argparse.SUPPRESS)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    if args.child:
        return child(args.child, args.nanogpt)

    run, model, trainer, nano, nano_opt, batches, source, nanogpt = build(args.nanogpt)
    cfg = run.train
    c = model.config
    n_params = sum(q.numel() for q in model.parameters())
    print(f"config: {CONFIG.relative_to(ROOT)}: {c.n_layer} layers x {c.n_embd}, {c.n_head} heads, context "
          f"{c.block_size}, vocab {c.vocab_size}, dropout {c.dropout}; batch {cfg.batch_size} x "
          f"{run.data['seq_len']}; {n_params / 1e6:.2f}M parameters")
    print(f"data: {source}; torch {torch.__version__}, {torch.get_num_threads()} threads")

    nano_steps = NanoSteps(nano, nano_opt, batches, cfg)
    losses = [(trainer._train_step()[0], nano_steps()) for _ in range(3)]  # also the warmup
    print("first losses, qkv / nanoGPT: " + ", ".join(f"{a:.5f} / {b:.5f}" for a, b in losses))

    fns = {"qkv": trainer._train_step, "nanoGPT": nano_steps}
    if c.activation != "gelu":  # nanoGPT as shipped: its exact GELU (another function, for reference)
        fns["nanoGPT, exact GELU"] = NanoSteps(*nanogpt("none"), batches, cfg)
        fns["nanoGPT, exact GELU"]()
    from qkv.train.config import load_run_config
    from qkv.train.trainer import Trainer

    own = load_run_config(CONFIG).train
    if own.optimizer != "adamw":  # the config's own optimizer (Muon), which nanoGPT does not have
        fns[f"qkv, {own.optimizer}"] = Trainer(copy.deepcopy(model), own, tempfile.mkdtemp(prefix="qkv-bench-"),
                                               batches=trainer.batches, loss=trainer.loss_fn,
                                               progress=False)._train_step
    times = {name: [] for name in fns}
    for _ in range(args.steps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {name: sorted(t)[len(t) // 2] for name, t in times.items()}

    script = os.path.abspath(__file__)
    mem = {name: in_child(script, "--nanogpt", args.nanogpt, "--child", name, env=MEASURED_MALLOC)["peak_bytes"] / 2**20
           for name in ("qkv", "nanoGPT")}
    tokens = cfg.batch_size * run.data["seq_len"]
    print(f"\n{'training step (median of ' + str(args.steps) + ')':34s} {'qkv':>10s} {'nanoGPT':>10s} {'qkv/nanoGPT':>12s}")
    print(f"{'ms per step (lower is better)':34s} {med['qkv'] * 1e3:10.1f} {med['nanoGPT'] * 1e3:10.1f} "
          f"{med['qkv'] / med['nanoGPT']:11.2f}x")
    print(f"{'tokens/s':34s} {tokens / med['qkv']:10.0f} {tokens / med['nanoGPT']:10.0f} "
          f"{med['nanoGPT'] / med['qkv']:11.2f}x")
    print(f"{'peak memory MiB, 2 steps':34s} {mem['qkv']:10.1f} {mem['nanoGPT']:10.1f} "
          f"{mem['qkv'] / mem['nanoGPT']:11.2f}x")
    if "nanoGPT, exact GELU" in med:
        exact = med["nanoGPT, exact GELU"]
        print(f"\nnanoGPT as shipped computes the exact GELU, not the config's tanh GELU (gelu_new): "
              f"{exact * 1e3:.1f} ms per step,\nqkv/that {med['qkv'] / exact:.2f}x. The difference is the "
              f"activation's kernel, not the framework: set [model] activation = \"gelu\" for it (other losses).")
    for name in med:
        if name.startswith("qkv, "):
            print(f"\n{name} (the config's optimizer): {med[name] * 1e3:.1f} ms per step, "
                  f"{med[name] / med['qkv']:.2f}x qkv's AdamW step")
    if args.profile:
        profile_qkv(trainer)


if __name__ == "__main__":
    main()

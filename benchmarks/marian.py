"""qkv's Transformer against Hugging Face's MarianMTModel: same config, same weights, one run.

    python benchmarks/marian.py            # the small preset's shape: 3 + 3 layers x 256, vocab 8000
    python benchmarks/marian.py --quick    # fewer repetitions

Prints, as qkv / HF: training-step throughput (32 pairs of 40 + 40 tokens, forward +
backward + Adam, label-smoothed loss) and decoding tokens/s, greedy and beam 4, for 16
sources of 30 tokens and 40 new tokens each. EOS is made impossible (a -1e9 logit bias
in both models) so both decode exactly the same number of steps; greedy tokens are
compared for equality.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from common import compare  # noqa: E402

CONFIG = dict(vocab_size=8000, d_model=256, encoder_layers=3, decoder_layers=3, encoder_attention_heads=4,
              decoder_attention_heads=4, encoder_ffn_dim=1024, decoder_ffn_dim=1024, max_position_embeddings=256,
              pad_token_id=0, decoder_start_token_id=1, eos_token_id=2, activation_function="relu",
              scale_embedding=True, dropout=0.0, forced_eos_token_id=None)
BATCH, SRC, TGT, DECODE_BATCH, NEW = 32, 40, 40, 16, 40


def build():
    from transformers import MarianConfig, MarianMTModel
    from transformers.utils import logging

    import qkv.interop.marian as conv

    logging.set_verbosity_error()
    torch.manual_seed(0)
    hf = MarianMTModel(MarianConfig(**CONFIG))
    with torch.no_grad():
        hf.final_logits_bias[0, CONFIG["eos_token_id"]] = -1e9  # never stop early: equal work
    sd = {**hf.state_dict(), "final_logits_bias": hf.final_logits_bias}
    return conv.from_hf(hf.config.to_dict(), sd), hf


def train_step(model, opt, batch, hf: bool):
    src, tgt_in, labels = batch
    logits = (model(input_ids=src, decoder_input_ids=tgt_in).logits if hf else model(src, tgt_in))
    F.cross_entropy(logits.flatten(0, 1), labels.flatten(), label_smoothing=0.1).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def decode(model, src, beam: int, hf: bool):
    if hf:
        out = model.generate(src, num_beams=beam, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                             length_penalty=0.6, early_stopping=False)
        return out[:, 1:].tolist()  # drop the decoder start token
    from qkv.inference.translate import translate

    return translate(model, src, beam=beam, max_new_tokens=NEW)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    reps = 3 if args.quick else 7
    model, hf = build()
    model.eval()
    hf.eval()
    g = torch.Generator().manual_seed(1)
    src = torch.randint(3, CONFIG["vocab_size"], (DECODE_BATCH, SRC), generator=g)
    print(f"config: {CONFIG}; {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with torch.no_grad():
        tgt = torch.randint(3, CONFIG["vocab_size"], (2, TGT), generator=g)
        diff = (model(src[:2], tgt) - hf(input_ids=src[:2], decoder_input_ids=tgt).logits).abs().max().item()
    print(f"same weights: max |logit difference| = {diff:.2e}")
    rows = []
    with torch.no_grad():
        for beam in (1, 4):
            ours, theirs = decode(model, src, beam, False), decode(hf, src, beam, True)
            same = "same tokens" if ours == theirs else "tokens differ"
            t = compare({"qkv": lambda: decode(model, src, beam, False),
                         "hf": lambda: decode(hf, src, beam, True)}, reps, warmup=0)
            label = f"{'greedy' if beam == 1 else f'beam {beam}'} tokens/s, batch {DECODE_BATCH} ({same})"
            rows.append((label, DECODE_BATCH * NEW / t["qkv"], DECODE_BATCH * NEW / t["hf"]))
    model.train()
    hf.train()
    batch = (torch.randint(3, CONFIG["vocab_size"], (BATCH, SRC), generator=g),
             torch.randint(3, CONFIG["vocab_size"], (BATCH, TGT), generator=g),
             torch.randint(3, CONFIG["vocab_size"], (BATCH, TGT), generator=g))
    opts = {n: torch.optim.Adam(m.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
            for n, m in (("qkv", model), ("hf", hf))}
    t = compare({"qkv": lambda: train_step(model, opts["qkv"], batch, False),
                 "hf": lambda: train_step(hf, opts["hf"], batch, True)}, reps, warmup=2)
    rows.append((f"train target tokens/s ({BATCH}x{SRC}+{TGT})", BATCH * TGT / t["qkv"], BATCH * TGT / t["hf"]))
    print(f"\n{'':48s} {'qkv':>10s} {'HF':>10s} {'qkv/HF':>8s}")
    for label, a, b in rows:
        print(f"{label:48s} {a:10.1f} {b:10.1f} {a / b:7.2f}x")


if __name__ == "__main__":
    main()

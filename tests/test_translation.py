"""Translation end to end on a cut of the real Bible database: data, batches, training,
decoding, evaluation, averaging, and the errors a user can cause."""
import json
from pathlib import Path

import pytest
import safetensors.torch
import torch

import qkv
from qkv import cli, data
from qkv.data import bible
from qkv.data.errors import DataError
from qkv.data.translation import TokenBatches, encode_pairs, read_pairs
from qkv.tokenizers import train_joint_bpe
from qkv.train import train

from .conftest import FIXTURES, ROOT, TINY as LM_TINY

CONFIG = ROOT / "configs" / "transformer-bible-en-de.toml"
TINY = [
    "data.vocab_size=300", "data.max_tokens=400", "model.d_model=16", "model.n_head=2", "model.ffn_dim=32",
    "model.encoder_layers=1", "model.decoder_layers=1", "model.max_position_embeddings=256",
    "train.max_steps=4", "train.warmup_steps=2", "train.log_interval=1", "train.eval_interval=2",
    "train.eval_batches=1", "train.ckpt_interval=1", "train.keep_checkpoints=3",
]


@pytest.fixture(scope="module")
def corpus(data_root):
    """bible-en-de prepared from the fixture: Genesis 1-32, verses 1-6, WEB/KJV/Elberfelder."""
    return data.get("bible-en-de", source=FIXTURES / "bible" / "bible.db", log=lambda *a: None)


@pytest.fixture(scope="module")
def run_dir(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "mt"
    train(CONFIG, [*TINY, f"out_dir={out}"], progress=False)
    return out


def test_split_by_whole_chapters(corpus):
    refs = {s: (corpus / f"{s}.ref").read_text().split("\n")[:-1] for s in bible.SPLITS}
    chapters = {s: {r.rsplit(":", 1)[0] for r in refs[s]} for s in refs}
    assert chapters["dev"] == {"Gen 11"} and chapters["test"] == {"Gen 26"}  # chapter indices 10 and 25
    assert not chapters["train"] & (chapters["dev"] | chapters["test"])
    for s in bible.SPLITS:
        src, tgt = read_pairs(corpus, s, "4", "e")
        assert len(src) == len(tgt) == len(refs[s]) > 0
    assert "In the beginning God created" in read_pairs(corpus, "train", "4", "e")[0][0]
    assert "`" not in (corpus / "train.4").read_text()  # WEB's backtick apostrophe normalised


def test_other_versions_and_missing_ones(corpus):
    data.get("bible-en-de", source=FIXTURES / "bible" / "bible.db", log=lambda *a: None, src="k", tgt="e")
    kjv, _ = read_pairs(corpus, "train", "k", "e")
    assert kjv[0].startswith("In the beginning God created the heaven")
    with pytest.raises(DataError, match="no Bible version"):
        data.get("bible-en-de", source=FIXTURES / "bible" / "bible.db", log=lambda *a: None, src="s")
    with pytest.raises(DataError, match="versions"):
        read_pairs(corpus, "train", "4", "l")


def test_token_batches_are_bounded_and_reproducible(corpus):
    src, tgt = read_pairs(corpus, "train", "4", "e")
    tok = train_joint_bpe(src + tgt, 300)
    pairs = encode_pairs(tok, src, tgt, 256, log=lambda *a: None)
    batches = TokenBatches(*pairs, max_tokens=400, tokenizer=tok, seed=1)
    assert sorted(i for b in batches.batches for i in b) == list(range(len(pairs[0])))
    for j in range(2 * len(batches)):
        b = batches.batch(j)
        assert b["input_ids"].numel() <= 400 or b["input_ids"].size(0) == 1
        assert torch.equal(b["labels"][:, :-1][b["labels"][:, 1:] != -100],
                           b["decoder_input_ids"][:, 1:][b["labels"][:, 1:] != -100])  # shifted by one
    again = TokenBatches(*pairs, max_tokens=400, tokenizer=tok, seed=1)
    assert all(torch.equal(again.batch(7)[k], batches.batch(7)[k]) for k in batches.batch(7))
    epoch = {batches.index(j) for j in range(len(batches))}
    assert epoch == set(range(len(batches)))  # every batch once per epoch


def test_too_long_pairs_are_left_out_and_reported(corpus):
    src, tgt = read_pairs(corpus, "train", "4", "e")
    tok = train_joint_bpe(src + tgt, 300)
    said = []
    kept, _ = encode_pairs(tok, src, tgt, 80, log=said.append)
    assert 0 < len(kept) < len(src) and "longer than 79 tokens" in said[0]


def test_train_translate_evaluate_average(run_dir, capsys):
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3, 4]
    assert any("val_loss" in m for m in metrics)
    model = qkv.load(run_dir).model
    assert isinstance(model, qkv.Transformer) and model.config.vocab_size == 300

    assert cli.main(["translate", str(run_dir), "In the beginning", "--beam", "2", "--max-new-tokens", "5"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1

    out = run_dir / "eval"
    assert cli.main(["evaluate", str(run_dir), "--split", "test", "--beam", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "nrefs:1|case:mixed|eff:no|tok:13a" in printed and "chrf" in printed
    scores = json.loads((out / "hyp.beam2.json").read_text())
    assert scores["sentences"] == 6 and 0 <= scores["bleu"] <= 100
    assert sum(v for k, v in scores.items() if k.startswith("n_src_")) == 6
    assert len((out / "hyp.beam2.txt").read_text().splitlines()) == 6

    assert cli.main(["average", str(run_dir), "--last", "3"]) == 0
    avg_dir = Path(capsys.readouterr().out.strip())
    ckpts = sorted((run_dir / "checkpoints").glob("step-*"))[-3:]
    sds = [safetensors.torch.load_file(str(c / "model.safetensors")) for c in ckpts]
    got = safetensors.torch.load_file(str(avg_dir / "model.safetensors"))
    assert got.keys() == sds[0].keys()
    assert all(torch.allclose(got[k], sum(sd[k] for sd in sds) / 3, atol=1e-6) for k in got)
    assert not torch.equal(sds[0]["decoder.layers.0.mlp.c_fc.weight"], sds[-1]["decoder.layers.0.mlp.c_fc.weight"])
    assert cli.main(["translate", str(avg_dir), "God", "--beam", "1", "--max-new-tokens", "3"]) == 0


def test_translate_reads_stdin_and_keeps_empty_lines(run_dir, capsys, monkeypatch):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("In the beginning\n\nGod saw the light, ü ☃\n"))
    assert cli.main(["translate", str(run_dir), "--beam", "1", "--max-new-tokens", "4"]) == 0
    lines = capsys.readouterr().out.split("\n")
    assert len(lines) == 4 and lines[1] == "" and lines[3] == ""


def test_bad_input_is_a_clear_error(run_dir, data_root, tmp_path, capsys, monkeypatch):
    import io

    assert cli.main(["translate", str(run_dir), "word " * 300]) == 2
    assert "max_position_embeddings" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("In the beginning\n\n" + "word " * 300 + "\n"))
    assert cli.main(["translate", str(run_dir)]) == 2
    assert "line 3 has" in capsys.readouterr().err  # empty lines are counted
    assert cli.main(["translate", str(run_dir), "x", "--beam", "0"]) == 2
    assert "--beam must be at least 1" in capsys.readouterr().err
    lm = tmp_path / "lm"
    train(ROOT / "configs" / "gpt-shakespeare-char.toml",
          [*LM_TINY, "train.max_steps=1", f"out_dir={lm}"], progress=False)
    assert cli.main(["translate", str(lm), "hello"]) == 2
    assert "not a translation (seq2seq) model" in capsys.readouterr().err
    with pytest.raises(qkv.config.ConfigError, match="batches by tokens.*remove train.batch_size"):
        train(CONFIG, [*TINY, "train.batch_size=2", f"out_dir={tmp_path / 'x'}"], progress=False)
    with pytest.raises(qkv.config.ConfigError, match="not a parallel corpus"):
        train(CONFIG, [*TINY, "data.name=shakespeare", f"out_dir={tmp_path / 'y'}"], progress=False)
    assert cli.main(["generate", str(run_dir), "--prompt", "x"]) == 2
    assert "qkv translate" in capsys.readouterr().err
    assert cli.main(["data", "get", "shakespeare", "--src", "k"]) == 2
    assert "not a translation corpus" in capsys.readouterr().err
    assert cli.main(["average", str(run_dir), "--last", "9"]) == 2
    assert "fewer than --last 9" in capsys.readouterr().err


def test_nlp_en_de_aligned_by_index_split_by_file(data_root):
    folder = data.get("nlp-en-de", source=FIXTURES / "nlp-en-de", log=lambda *a: None)
    for split in ("train", "dev", "test"):
        en, de = read_pairs(folder, split, "en", "de")
        assert len(en) == len(de) == 8
    en, de = read_pairs(folder, "train", "en", "de")
    assert en[0].startswith("Creakiness and atmosphere") and de[0].startswith("Knarren und Atmosphäre")
    assert json.loads((folder / "split.json").read_text())["rule"] == "doc-2 test, doc-1 dev, the rest train"
    with pytest.raises(DataError, match="one pair"):
        data.get("nlp-en-de", source=FIXTURES / "nlp-en-de", log=lambda *a: None, src="de", tgt="en")


def test_the_lstm_baseline_trains_and_decodes_through_the_same_task(corpus, tmp_path, capsys):
    out = tmp_path / "lstm"
    tiny = ["data.vocab_size=300", "data.max_tokens=400", "model.d_model=16", "model.hidden_size=32",
            "model.num_layers=1", "train.max_steps=2", "train.warmup_steps=1", "train.eval_interval=2",
            "train.eval_batches=1", "train.ckpt_interval=2", f"out_dir={out}"]
    train(ROOT / "configs" / "lstm-bible-en-de.toml", tiny, progress=False)
    assert isinstance(qkv.load(out).model, qkv.models.LSTMSeq2Seq)
    assert cli.main(["evaluate", str(out), "--split", "test", "--beam", "2", "--out", str(tmp_path / "e")]) == 0
    assert "chrf" in capsys.readouterr().out
    assert cli.main(["translate", str(out), "In the beginning", "--beam", "3", "--max-new-tokens", "4"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1

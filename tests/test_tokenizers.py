import pytest

from qkv.tokenizers import BPETokenizer, CharTokenizer, StreamDecoder, TokenizerError, find_tokenizer

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"


def test_char_round_trip_and_unknown_characters(tmp_path):
    tok = CharTokenizer.train([TEXT])
    assert tok.decode(tok.encode(TEXT)) == TEXT
    assert tok.vocab_size == len(set(TEXT))
    with pytest.raises(TokenizerError, match="'Z'"):
        tok.encode("Zounds")
    tok.save(tmp_path)
    again = find_tokenizer(tmp_path)
    assert isinstance(again, CharTokenizer) and again.encode(TEXT) == tok.encode(TEXT)
    assert again.fingerprint == tok.fingerprint


def test_byte_level_bpe_trains_round_trips_and_saves(tmp_path):
    tok = BPETokenizer.train([TEXT] * 20, vocab_size=300)
    assert 257 <= tok.vocab_size <= 300
    ids = tok.encode(TEXT)
    assert len(ids) < len(TEXT)  # merges were learnt
    assert tok.decode(ids) == TEXT
    assert tok.decode(tok.encode("Zoë — ünïcode ✓")) == "Zoë — ünïcode ✓"  # bytes: nothing unknown
    tok.save(tmp_path)
    again = find_tokenizer(tmp_path)
    assert isinstance(again, BPETokenizer) and again.fingerprint == tok.fingerprint
    assert again.eos_token_id == tok.eos_token_id is not None


def test_stream_decoder_never_splits_a_character():
    tok = BPETokenizer.train([TEXT], vocab_size=260)
    text = "naïve café ✓ done"
    decoder = StreamDecoder(tok)
    out = [decoder.push(i) for i in tok.encode(text)]
    assert "".join(out) + decoder.flush() == text
    assert all("\ufffd" not in piece for piece in out)
    garbage = StreamDecoder(tok)  # bytes that never form a character still come out
    out = "".join(garbage.push(i) for i in tok.encode("\xff")[:1] * 6) + garbage.flush()
    assert out == tok.decode(tok.encode("\xff")[:1] * 6)


def test_find_tokenizer_reads_a_corrupt_file_clearly(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="not a readable tokenizer.json"):
        find_tokenizer(tmp_path)
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    assert find_tokenizer(tmp_path / "a" / "b" / "c") is None  # looks two levels up, no further

"""Tokenizers: characters; byte-level BPE (GPT-2, translation) and WordPiece (BERT), both
trained and run by Hugging Face ``tokenizers`` behind one base class, ``HFTokenizer``.

All expose ``kind``, ``encode(text) -> list[int]``, ``decode(ids) -> str``,
``vocab_size``, ``save(directory)`` and a ``fingerprint`` naming their exact vocabulary
(used to cache encoded corpora). BPE and WordPiece are saved as Hugging Face's
``tokenizer.json``; a character tokenizer as ``char_tokenizer.json``. A Hugging Face
checkpoint's tokenizer is read from its ``tokenizer.json``, GPT-2's ``vocab.json`` +
``merges.txt``, or BERT's ``vocab.txt``.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from .errors import TokenizerError
from .files import atomic_write_text

EOT = "<|endoftext|>"


def _fingerprint(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class CharTokenizer:
    """One token per character; the vocabulary is the set of characters of a corpus."""

    kind = "char"
    filename = "char_tokenizer.json"

    def __init__(self, chars: str):
        if len(set(chars)) != len(chars):
            raise TokenizerError("character vocabulary has duplicates")
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def train(cls, texts: Iterable[str]) -> "CharTokenizer":
        seen: set[str] = set()
        for t in texts:
            seen.update(t)
        return cls("".join(sorted(seen)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    @property
    def eos_token_id(self) -> None:
        return None

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            bad = sorted({c for c in text if c not in self.stoi})
            raise TokenizerError(
                f"text has characters this tokenizer never saw: {''.join(bad)!r}; "
                "remove them (its vocabulary is the training corpus's characters)"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def to_json(self) -> str:
        return json.dumps({"type": "char", "vocab": self.chars}, ensure_ascii=False)

    @property
    def fingerprint(self) -> str:
        return f"char-{_fingerprint(self.to_json())}"

    def save(self, directory: str | Path) -> None:
        atomic_write_text(Path(directory) / self.filename, self.to_json())

    @classmethod
    def load(cls, file: Path) -> "CharTokenizer":
        data = json.loads(file.read_text())
        if data.get("type") != "char":
            raise TokenizerError(f"{file} is not a character tokenizer")
        return cls(data["vocab"])


class HFTokenizer:
    """What every tokenizer backed by a Hugging Face ``tokenizers.Tokenizer`` shares: its
    vocabulary, decoding, a fingerprint of its exact vocabulary, and ``tokenizer.json``."""

    kind: str
    filename = "tokenizer.json"

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def id_to_token(self, i: int) -> str:
        return self.tokenizer.id_to_token(i)

    @property
    def fingerprint(self) -> str:
        return f"{self.kind}-{_fingerprint(self.tokenizer.to_str())}"

    def save(self, directory: str | Path) -> None:
        atomic_write_text(Path(directory) / self.filename, self.tokenizer.to_str())

    @classmethod
    def load(cls, file: Path):
        try:
            return cls(Tokenizer.from_file(str(file)))
        except Exception as e:
            raise TokenizerError(f"{file} is not a readable tokenizer.json ({e})") from e


class BPETokenizer(HFTokenizer):
    """Byte-level BPE (GPT-2 style): any text encodes, nothing is unknown."""

    kind = "bpe"

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> "BPETokenizer":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @property
    def eos_token_id(self) -> int | None:
        return self.tokenizer.token_to_id(EOT)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    @classmethod
    def from_vocab_merges(cls, vocab: Path, merges: Path) -> "BPETokenizer":
        """GPT-2's original files: ``vocab.json`` (token -> id) and ``merges.txt``."""
        try:
            tok = Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
        except Exception as e:
            raise TokenizerError(f"{vocab} / {merges} are not a readable BPE vocabulary ({e})") from e
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        if tok.token_to_id(EOT) is not None:
            tok.add_special_tokens([EOT])
        return cls(tok)


TOKENIZERS = {cls.kind: cls for cls in (CharTokenizer, BPETokenizer)}


def find_tokenizer(directory: str | Path):
    """The tokenizer saved in ``directory`` (or, for a checkpoint, in its run directory)."""
    directory = Path(directory)
    for candidate in (directory, *directory.parents[:2]):
        for cls in TOKENIZERS.values():
            if (candidate / cls.filename).is_file() and _file_kind(candidate / cls.filename) == cls.kind:
                return cls.load(candidate / cls.filename)
        if (candidate / "vocab.json").is_file() and (candidate / "merges.txt").is_file():
            return BPETokenizer.from_vocab_merges(candidate / "vocab.json", candidate / "merges.txt")
        if (candidate / "vocab.txt").is_file():
            return WordPieceTokenizer.from_vocab(candidate / "vocab.txt")
    return None


class StreamDecoder:
    """Turns tokens into text as they arrive, holding back a possibly incomplete UTF-8
    sequence (a byte-level token can end mid-character) for up to 3 more tokens."""

    def __init__(self, tokenizer):
        self.tokenizer, self.ids, self.emitted, self.held = tokenizer, [], 0, 0

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd") and self.held < 3:
            self.held += 1
            return ""
        return self._emit(text)

    def flush(self) -> str:
        """Whatever is held back (invalid bytes come out as U+FFFD, as ``decode`` gives)."""
        return self._emit(self.tokenizer.decode(self.ids))

    def _emit(self, text: str) -> str:
        new, self.emitted, self.held = text[self.emitted :], len(text), 0
        return new


# -- translation: one BPE vocabulary for source and target ----------------------------------
PAD, BOS = "<pad>", "<s>"


def train_joint_bpe(texts: Iterable[str], vocab_size: int) -> BPETokenizer:
    """Byte-level BPE trained on source and target text together: the shared source-target
    vocabulary of Vaswani et al. (Section 5.1), so one embedding matrix serves both sides.
    Special tokens: ``<pad>`` = 0, ``<s>`` = 1 (decoder start), ``<|endoftext|>`` = 2 (EOS).
    Byte-level: every character encodes, nothing is unknown."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, BOS, EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return BPETokenizer(tok)


def special_ids(tokenizer) -> dict[str, int]:
    """pad/bos/eos ids of a translation tokenizer (from ``train_joint_bpe``)."""
    ids = {name: tokenizer.tokenizer.token_to_id(tok) if hasattr(tokenizer, "tokenizer") else None
           for name, tok in (("pad_token_id", PAD), ("bos_token_id", BOS), ("eos_token_id", EOT))}
    if None in ids.values():
        raise TokenizerError(f"this tokenizer lacks the translation special tokens {PAD}, {BOS}, {EOT}")
    return ids


# -- WordPiece (BERT) -------------------------------------------------------------------

def _file_kind(file: Path) -> str:
    """Which qkv tokenizer a file holds: "char", or a tokenizer.json's model ("bpe", "wordpiece")."""
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TokenizerError(f"{file} is not a readable {file.name} ({e})") from e
    if data.get("type") == "char":
        return "char"
    return {"BPE": "bpe", "WordPiece": "wordpiece"}.get((data.get("model") or {}).get("type"), "unknown")


BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


class WordPieceTokenizer(HFTokenizer):
    """BERT's WordPiece (Wu et al., 2016; Devlin et al., 2019): Unicode-normalised,
    optionally lowercased words split greedily into the longest known pieces; pieces
    after the first carry the ``##`` prefix. Unknown words become ``[UNK]``.

    ``encode(text)`` gives the pieces only; ``encode(text, special=True)`` wraps them as
    ``[CLS] ... [SEP]``. A checkpoint's truncation and padding settings are switched off:
    qkv never truncates silently.
    """

    kind = "wordpiece"

    def __init__(self, tokenizer: Tokenizer):
        tokenizer.no_truncation()
        tokenizer.no_padding()
        super().__init__(tokenizer)
        ids = {t: tokenizer.token_to_id(t) for t in BERT_SPECIALS}
        self.pad_token_id, self.unk_token_id, self.cls_token_id, self.sep_token_id, self.mask_token_id = ids.values()
        self.special_ids = sorted(i for i in ids.values() if i is not None)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, lowercase: bool = True) -> "WordPieceTokenizer":
        from tokenizers import normalizers, processors

        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(BERT_SPECIALS),
                                            show_progress=False)
        tok.train_from_iterator(texts, trainer=trainer)
        cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.BertProcessing(("[SEP]", sep_id), ("[CLS]", cls_id))
        return cls(tok)

    @classmethod
    def from_vocab(cls, vocab: Path) -> "WordPieceTokenizer":
        """A checkpoint's ``vocab.txt`` (one piece per line); lowercasing as its
        ``tokenizer_config.json`` says (``do_lower_case``, default true)."""
        from tokenizers import normalizers

        config = vocab.parent / "tokenizer_config.json"
        lowercase = json.loads(config.read_text()).get("do_lower_case", True) if config.is_file() else True
        try:
            tok = Tokenizer(models.WordPiece.from_file(str(vocab), unk_token="[UNK]"))
        except Exception as e:
            raise TokenizerError(f"{vocab} is not a readable WordPiece vocabulary ({e})") from e
        tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        tok.add_special_tokens([t for t in BERT_SPECIALS if tok.token_to_id(t) is not None])
        return cls(tok)

    @property
    def eos_token_id(self) -> None:
        return None

    def encode(self, text: str, special: bool = False) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if special:
            if self.cls_token_id is None or self.sep_token_id is None:
                raise TokenizerError("this vocabulary has no [CLS] / [SEP] tokens")
            return [self.cls_token_id, *ids, self.sep_token_id]
        return ids

    def unknown_words(self, text: str) -> list[str]:
        """The words of ``text`` that encode as [UNK] (nothing is known about them)."""
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        return [text[a:b] for i, (a, b) in zip(enc.ids, enc.offsets) if i == self.unk_token_id]

    def word_starts(self):
        """(vocab_size,) bool numpy array: True for pieces that begin a word (no ``##``)."""
        import numpy as np

        starts = np.ones(self.vocab_size, dtype=bool)
        for piece, i in self.tokenizer.get_vocab().items():
            starts[i] = not piece.startswith("##")
        return starts


TOKENIZERS[WordPieceTokenizer.kind] = WordPieceTokenizer
